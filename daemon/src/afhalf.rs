//! A wire half on AF_PACKET (`meshnetd --wire-endpoint afpacket`): the pod's interface is one
//! end of a veth pair, created directly inside the pod's namespace under its final name; the
//! other end (the *host end*, named by [`host_name`]) stays in the node's namespace, where the
//! daemon reads and writes it with a [`PacketSocket`]. `PACKET_VNET_HDR` carries GSO
//! super-frames and partial checksums whole, as a TAP's `IFF_VNET_HDR` does, so the rest of the
//! wire (batches, streams) is the same as with a TAP.
//!
//! * **Carrier**: a veth has carrier only while its peer is administratively up, so the carrier
//!   the pod sees is the host end's up/down state, set by netlink. [`HalfIo::set_carrier`] is
//!   synchronous and called from the wire's tasks; it records the wanted state in a `watch`
//!   channel and one task per half applies the latest one (so a quick down/up ends up).
//! * **Receiving**: [`RxMode::Read`] (one `recvmsg` per frame), not the `TPACKET_V3` ring: the
//!   ring holds a lone frame until its block retires (≥ 1 ms), which would add a millisecond to
//!   every request/response exchange on the link. The socket buffer is [`RCVBUF`].
//! * **Lifetime**: the pair lives with the pod's namespace (deleting the pod end, or the
//!   namespace, deletes the host end too). A restarted daemon attaches a new socket to the host
//!   end of the existing pair. Both ends carry the link's alias.
//! * **The host end** has IPv6 disabled (no link-local address, no ND/MLD chatter into the pod)
//!   and no IPv4 address; the socket does not see what leaves it (`PACKET_IGNORE_OUTGOING`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use meshnet_wire::endpoint::FrameEndpoint;
use meshnet_wire::sys::afpacket::{PacketOptions, PacketSocket, RxMode};
use meshnet_wire::vnet::VnetBytes;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec};
use tokio::sync::watch;

use crate::gwire::WireKey;
use crate::links::{self, ALIAS_PREFIX, Kernel, LinkError};
use crate::netns;
use crate::tapio::{HalfIo, WireSpec};

/// Receive buffer of a half's socket (forced past `rmem_max`; the daemon has `CAP_NET_ADMIN`):
/// what arrives from the pod while the reader is busy waits here.
pub const RCVBUF: usize = 4 << 20;

/// Name of a wire's host end in the node's namespace: `mw` and 12 hex digits of FNV-1a-64 over
/// the link identity (namespace, `0xff`, uid little-endian), folded to 48 bits — 14 bytes, within
/// the kernel's 15. Both a daemon restart and a rebuilt pod find the same name.
pub fn host_name(key: &WireKey) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key
        .0
        .as_bytes()
        .iter()
        .chain(&[0xff])
        .chain(&key.1.to_le_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("mw{:012x}", (h ^ (h >> 48)) & 0xffff_ffff_ffff)
}

/// The host end's socket: reads through the [`PacketSocket`] (only the reader task takes its
/// lock), writes through a duplicate of its fd (`writev` of `[vnet][frame]`, as the socket's own
/// `send` does), carrier through the applier task.
struct PacketHalf {
    socket: Mutex<PacketSocket>,
    writer: OwnedFd,
    carrier: watch::Sender<bool>,
}

impl HalfIo for PacketHalf {
    fn dup_fd(&self) -> io::Result<OwnedFd> {
        self.writer.try_clone()
    }

    fn recv(&self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let mut s = self
            .socket
            .lock()
            .map_err(|_| io::Error::other("packet socket lock poisoned"))?;
        match s.recv(buf) {
            Ok(n) => Ok(n),
            // The host end went down (the carrier): the socket reports it once, as an error of
            // the next read. No frame was lost; nothing is ready.
            Err(e) if e.raw_os_error() == Some(libc::ENETDOWN) => Ok(None),
            Err(e) => {
                // Take any other pending error too, or the socket polls ready forever.
                let _ = s.take_error();
                Err(e)
            }
        }
    }

    fn send(&self, vnet: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        let iov = [io::IoSlice::new(vnet), io::IoSlice::new(frame)];
        // The kernel returns the frame's length, without the header.
        let n = nix::sys::uio::writev(&self.writer, &iov).map_err(io::Error::from)?;
        if n < frame.len() {
            return Err(io::Error::other(format!(
                "short AF_PACKET write: {n} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }

    fn set_carrier(&self, up: bool) -> io::Result<()> {
        self.carrier.send_replace(up);
        Ok(())
    }
}

fn io_mismatch(what: &str, e: impl std::fmt::Display) -> LinkError {
    LinkError::Mismatch(format!("{what}: {e}"))
}

/// A netlink handle in the daemon's own namespace (the node's), and its connection task.
fn node_netlink() -> io::Result<(Handle, tokio::task::JoinHandle<()>)> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    Ok((handle, tokio::spawn(conn)))
}

/// Sets the host end `index` up or down.
async fn set_host_state(index: u32, up: bool) -> Result<(), LinkError> {
    let (h, conn) = node_netlink().map_err(|e| io_mismatch("netlink socket in the node", e))?;
    let msg = LinkUnspec::new_with_index(index);
    let msg = if up { msg.up() } else { msg.down() };
    let r = h.link().set(msg.build()).execute().await;
    conn.abort();
    r.map_err(|e| io_mismatch(&format!("setting host end {index} up={up}"), e))
}

/// Makes the veth pair of a half: the host end in the node's namespace, down, the pod end inside
/// the pod's namespace under its final name. A leftover host end of the same name (a pod end
/// deleted while the daemon was down cannot leave one; a crash between steps can) is replaced if
/// it is meshnet's.
async fn create_pair(h: &Handle, spec: &WireSpec, host: &str) -> Result<(), LinkError> {
    let node_ns = std::path::Path::new("/proc/self/ns/net");
    match links::get_iface(h, host).await {
        Ok(None) => {}
        Ok(Some(st))
            if st
                .alias
                .as_deref()
                .is_some_and(|a| a.starts_with(ALIAS_PREFIX)) =>
        {
            h.link()
                .del(st.index)
                .execute()
                .await
                .map_err(|e| LinkError::Netlink {
                    op: "delete stale host end",
                    ifname: host.to_string(),
                    netns: node_ns.display().to_string(),
                    source: e,
                })?;
        }
        Ok(Some(_)) => {
            return Err(LinkError::Occupied {
                ifname: host.to_string(),
                netns: "the node".into(),
            });
        }
        Err(e) => return Err(io_mismatch(&format!("looking up {host} in the node"), e)),
    }
    let end = &spec.end;
    let pod_ns = netns::open(&end.netns)?;
    let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(end.ifname.clone())
        .alias(spec.alias.clone())
        .mtu(spec.mtu)
        .setns_by_fd(pod_ns.as_raw_fd());
    if let Some(mac) = end.mac {
        peer = peer.address(mac.0.to_vec());
    }
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(host.to_string())
        .alias(spec.alias.clone())
        .mtu(spec.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
    let r = h.link().add(msg.build()).execute().await;
    // The namespace fd must outlive the request.
    drop(pod_ns);
    r.map_err(|e| LinkError::Netlink {
        op: "create veth",
        ifname: format!("{host} / {}", end.ifname),
        netns: end.netns.display().to_string(),
        source: e,
    })?;
    // Best effort: in a container /proc/sys may be read-only; the wire works without it.
    let path = format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(%path, error = %e, "cannot disable IPv6 on the host end");
    }
    Ok(())
}

/// Makes (if `create`) or attaches to the veth pair of a half, opens the AF_PACKET socket on its
/// host end, and returns the half's I/O and the pod end's ifindex. The caller configures the pod
/// end (address, MTU, up) as for a TAP.
///
/// # Errors
/// The host end's name is taken by something meshnet did not make, a netlink call failed, the
/// pair is not whole, or the socket cannot be opened.
pub async fn open(spec: &WireSpec, create: bool) -> Result<(Arc<dyn HalfIo>, u32), LinkError> {
    let host = host_name(&spec.key);
    let (h, conn) = node_netlink().map_err(|e| io_mismatch("netlink socket in the node", e))?;
    let r = async {
        if create {
            create_pair(&h, spec, &host).await?;
        }
        links::get_iface(&h, &host)
            .await
            .map_err(|e| io_mismatch(&format!("looking up {host} in the node"), e))?
            .ok_or_else(|| {
                LinkError::Mismatch(format!(
                    "host end {host} of {} is missing from the node",
                    spec.end.ifname
                ))
            })
    }
    .await;
    conn.abort();
    let host_st = r?;
    let pod_st = Kernel::lookup(&spec.end.netns, &spec.end.ifname)
        .await?
        .ok_or_else(|| {
            LinkError::Mismatch(format!(
                "{} vanished from {}",
                spec.end.ifname,
                spec.end.netns.display()
            ))
        })?;
    if pod_st.link != Some(host_st.index) {
        return Err(LinkError::Mismatch(format!(
            "{} is not paired with host end {host}",
            spec.end.ifname
        )));
    }
    // This thread is in the node's namespace (the daemon never moves its own threads), where the
    // host end is.
    let opts = PacketOptions {
        rx: RxMode::Read { rcvbuf: RCVBUF },
        ..PacketOptions::default()
    };
    let socket = PacketSocket::open(host_st.index, &opts)
        .map_err(|e| io_mismatch(&format!("AF_PACKET on {host}"), e))?;
    let writer = socket
        .readiness_fd()
        .ok_or_else(|| LinkError::Mismatch("AF_PACKET socket without an fd".into()))?
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| io_mismatch(&format!("dup of the socket on {host}"), e))?;
    let (carrier, mut wanted) = watch::channel(host_st.up);
    let index = host_st.index;
    tokio::spawn(async move {
        // Ends when the half (the sender) is dropped.
        while wanted.changed().await.is_ok() {
            let up = *wanted.borrow_and_update();
            if let Err(e) = set_host_state(index, up).await {
                tracing::warn!(host_end = index, up, error = %e, "cannot set the wire's carrier");
            }
        }
    });
    Ok((
        Arc::new(PacketHalf {
            socket: Mutex::new(socket),
            writer,
            carrier,
        }),
        pod_st.index,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_and_differ() {
        let a = host_name(&("default".into(), 1));
        let b = host_name(&("default".into(), 2));
        let c = host_name(&("other".into(), 1));
        for n in [&a, &b, &c] {
            assert!(n.len() <= 15, "{n}");
            assert!(n.starts_with("mw"));
        }
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            host_name(&("default".into(), 1)),
            "stable across restarts"
        );
    }
}
