//! `tcp-relay`: the smallest userspace relay with the gRPC wire's endpoints — the baseline that
//! says what any userspace design pays before its own costs. Not part of the product.
//!
//! Each side is a process in a node's namespace (`meshnet-bench relay …` under
//! `ip netns exec NODE`) with a TAP inside a pod's namespace (created by a thread that entered
//! it; the fd keeps working from the node) and one plain TCP connection to the other side over
//! the underlay. Frames keep their virtio-net header (TAP `IFF_VNET_HDR`, all offloads), so GSO
//! super-frames cross whole, exactly as on the wire. One thread per direction:
//!
//! * TAP → TCP: one TAP `read` and one socket `write` per frame, a record
//!   `[length u32 LE][virtio-net header][frame]`;
//! * TCP → TAP: records read through a buffer, one TAP `write` per frame.
//!
//! No batching, no protocol, no flow control beyond TCP's, no reconnects: the process exits when
//! the connection ends.
//!
//! `tcp-relay-port` runs the same relay with the wire's port in front of it ([`patch_port`]):
//! the TAP in the node's namespace, the pod's `eth1` one end of a veth pair whose other end is
//! patched to the TAP by tc `mirred` both ways — what every gRPC-wire link has since ports
//! (README: ports). The pair of baselines splits the wire's distance to the bare relay into the
//! port's share and the wire's own.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use meshnet_wire::batch::MAX_FRAME;
use meshnet_wire::endpoint::FrameEndpoint;
use meshnet_wire::sys::tap::{Offloads, Tap, TapOptions};
use meshnet_wire::vnet::VNET_HDR_LEN;

/// Bytes of a record's length prefix.
pub const LEN_BYTES: usize = 4;
/// Longest record body: a virtio-net header and a largest frame.
pub const MAX_RECORD: usize = VNET_HDR_LEN + MAX_FRAME;

/// Which end of the TCP connection this side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Listen(SocketAddr),
    Connect(SocketAddr),
}

/// One side of the relay.
#[derive(Debug, Clone)]
pub struct RelaySide {
    /// The pod's namespace file (`/run/netns/NAME`), where the TAP is made.
    pub tap_netns: PathBuf,
    pub tap: String,
    pub role: Role,
}

/// The length prefix of a record whose body (header and frame) is `body` bytes.
pub fn record_header(body: usize) -> [u8; LEN_BYTES] {
    (body as u32).to_le_bytes()
}

/// The body length a prefix announces, checked against what a record can hold.
///
/// # Errors
/// Shorter than a virtio-net header, or longer than [`MAX_RECORD`]: the stream is corrupt.
pub fn record_len(prefix: [u8; LEN_BYTES]) -> anyhow::Result<usize> {
    let n = u32::from_le_bytes(prefix) as usize;
    if !(VNET_HDR_LEN..=MAX_RECORD).contains(&n) {
        bail!("relay record of {n} bytes: corrupt stream");
    }
    Ok(n)
}

/// Puts the wire's port in front of a relay TAP `tap` in namespace `node_ns`: a veth pair with
/// `eth1` in `pod_ns` and `node_end` in `node_ns` (MTU 65535, IPv6 off, as the daemon makes
/// them), and on each of `node_end` and `tap` an ingress qdisc with one match-all u32 filter
/// redirecting every frame out of the other (`mirred egress redirect`). The pod's `eth1` is left
/// down and unaddressed.
///
/// # Errors
/// A command fails (its stderr is in the error); what was made before stays for the namespaces'
/// removal to take.
pub fn patch_port(node_ns: &str, pod_ns: &str, tap: &str, node_end: &str) -> anyhow::Result<()> {
    let ip = |args: &[&str]| {
        let mut argv = vec!["ip", "-n", node_ns];
        argv.extend_from_slice(args);
        crate::system::run(&argv)
    };
    ip(&[
        "link", "add", node_end, "type", "veth", "peer", "name", "eth1", "netns", pod_ns,
    ])?;
    crate::system::run_in(
        node_ns,
        &[
            "sysctl",
            "-q",
            &format!("net.ipv6.conf.{node_end}.disable_ipv6=1"),
        ],
    )?;
    ip(&["link", "set", node_end, "mtu", "65535", "up"])?;
    ip(&["link", "set", tap, "up"])?;
    for (from, to) in [(node_end, tap), (tap, node_end)] {
        crate::system::run_in(node_ns, &["tc", "qdisc", "add", "dev", from, "ingress"])?;
        crate::system::run_in(
            node_ns,
            &[
                "tc", "filter", "add", "dev", from, "ingress", "protocol", "all", "prio", "1",
                "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev",
                to,
            ],
        )?;
    }
    Ok(())
}

/// Runs one side until the connection ends. Prints `ready` on stdout once the TAP exists and the
/// connection is up.
///
/// # Errors
/// The TAP or the connection cannot be made; the stream is corrupt.
pub fn run(side: &RelaySide) -> anyhow::Result<()> {
    let ns = File::open(&side.tap_netns)
        .with_context(|| format!("opening {}", side.tap_netns.display()))?;
    let name = side.tap.clone();
    let opts = TapOptions {
        queues: 1,
        offloads: Offloads::ALL,
        persist: false,
        carrier: true,
    };
    let tap = meshnet_wire::sys::netns::in_netns(&ns, move || Tap::create(&name, opts))
        .context("entering the pod's namespace")?
        .with_context(|| format!("TAP {} in {}", side.tap, side.tap_netns.display()))?;
    let stream = match side.role {
        Role::Listen(addr) => {
            let l = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
            l.accept().context("accepting the peer relay")?.0
        }
        Role::Connect(addr) => {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() > deadline => {
                        return Err(e).with_context(|| format!("connecting to {addr}"));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    };
    stream.set_nodelay(true)?;
    println!("ready");
    std::io::stdout().flush()?;
    let tap_writer: OwnedFd = tap
        .readiness_fd()
        .context("TAP without an fd")?
        .try_clone_to_owned()?;
    let inbound = stream.try_clone()?;
    let back = std::thread::Builder::new()
        .name("tcp-to-tap".into())
        .spawn(move || {
            let r = tcp_to_tap(inbound, &tap_writer);
            if let Err(e) = &r {
                eprintln!("relay: TCP → TAP stopped: {e:#}");
            }
            r
        })?;
    let r = tap_to_tcp(tap, stream);
    let b = back
        .join()
        .map_err(|_| anyhow::anyhow!("tcp-to-tap thread panicked"))?;
    r.and(b)
}

fn tap_to_tcp(mut tap: Tap, mut stream: TcpStream) -> anyhow::Result<()> {
    let mut buf = BytesMut::with_capacity(LEN_BYTES + MAX_RECORD);
    loop {
        buf.clear();
        buf.extend_from_slice(&[0; LEN_BYTES]);
        match tap.recv(&mut buf) {
            Ok(Some(_)) => {
                let body = buf.len() - LEN_BYTES;
                buf[..LEN_BYTES].copy_from_slice(&record_header(body));
                if let Err(e) = stream.write_all(&buf) {
                    // The peer went away: the relay is over.
                    return if e.kind() == std::io::ErrorKind::BrokenPipe {
                        Ok(())
                    } else {
                        Err(e.into())
                    };
                }
            }
            Ok(None) => {
                let fd = tap.readiness_fd().context("TAP without an fd")?;
                meshnet_wire::sys::wait_readable(&[fd.as_fd()], Duration::from_secs(1))?;
            }
            Err(e) => return Err(e).context("reading the TAP"),
        }
    }
}

fn tcp_to_tap(stream: TcpStream, tap: &OwnedFd) -> anyhow::Result<()> {
    let mut r = BufReader::with_capacity(1 << 20, stream);
    let mut rec = vec![0u8; MAX_RECORD];
    let mut dropped = 0u64;
    loop {
        let mut prefix = [0u8; LEN_BYTES];
        match r.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                eprintln!("relay: connection closed; {dropped} frames dropped at the TAP");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let n = record_len(prefix)?;
        r.read_exact(&mut rec[..n])?;
        // A frame the TAP does not take is dropped, as a NIC would: queue full (EAGAIN,
        // ENOBUFS), interface down (EIO, e.g. before it is configured), a header it refuses
        // (EINVAL). Only a corrupt stream ends the relay.
        if nix::unistd::write(tap, &rec[..n]).is_err() {
            dropped += 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn record_prefix_round_trips_and_is_bounded() {
        assert_eq!(record_len(record_header(1510)).unwrap(), 1510);
        assert_eq!(record_len(record_header(MAX_RECORD)).unwrap(), MAX_RECORD);
        assert!(record_len(record_header(MAX_RECORD + 1)).is_err());
        assert!(record_len(record_header(VNET_HDR_LEN - 1)).is_err());
        assert_eq!(record_header(0x0102), [2, 1, 0, 0], "little-endian");
    }
}
