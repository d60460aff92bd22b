//! The kernel endpoints in real network namespaces: TAP and AF_PACKET relays carrying ping,
//! TCP (GSO super-frames through the virtio-net header), jumbo frames, link-local multicast
//! and VLAN-tagged frames; TAP carrier, persistence and re-attach.
//!
//! Needs root (CI runs as root; elsewhere every test skips with a message). Each test makes its
//! own namespaces, named `mnw-<test>-<pid>-<n>`, creates every interface inside them (never in
//! the namespace the tests run in), and deletes them in `Drop` — also when it panics. Tests run
//! in parallel safely: nothing is shared but the kernel.
//!
//! A relay here is a plain thread doing what a daemon does with both halves of a wire at once:
//! wait for either endpoint's readiness fd, read every ready frame straight into a batch
//! (`BatchEncoder::push_with`), decode the batch, write each frame to the other endpoint with
//! its virtio-net header unchanged, and record what it saw.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use meshnet_wire::WireId;
use meshnet_wire::batch::{BatchEncoder, Filled, decode};
use meshnet_wire::endpoint::FrameEndpoint;
use meshnet_wire::sys::afpacket::{PacketOptions, PacketSocket, RxMode};
use meshnet_wire::sys::netns::{in_netns, same_netns};
use meshnet_wire::sys::tap::{Tap, TapError, TapOptions};
use meshnet_wire::sys::wait_readable;
use meshnet_wire::vnet::{VNET_HDR_LEN, VNET_HDR_NONE, VnetBytes, VnetHdr};

// ---------------------------------------------------------------------------------------------
// Namespaces and commands

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping: needs root (network namespaces, TAP, AF_PACKET)");
    false
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A throw-away named network namespace, deleted on drop (with every interface in it).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!(
            "mnw-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        // A leftover of a crashed run with the same pid: take it away first.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn file(&self) -> File {
        meshnet_wire::sys::netns::open_named(&self.name).unwrap()
    }

    /// `ip -n NS ARGS`, which must succeed.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip -n NS ARGS`, whatever its outcome.
    fn try_ip(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap()
    }

    /// `ip netns exec NS PROG ARGS`.
    fn exec(&self, prog: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, prog])
            .args(args)
            .output()
            .unwrap()
    }

    fn spawn(&self, prog: &str, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name, prog])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn link_show(&self, dev: &str) -> String {
        self.ip(&["link", "show", dev])
    }

    fn mac(&self, dev: &str) -> [u8; 6] {
        let out = self.ip(&["-o", "link", "show", dev]);
        let s = out.split("link/ether ").nth(1).expect("an Ethernet link");
        let mut mac = [0u8; 6];
        for (i, part) in s[..17].split(':').enumerate() {
            mac[i] = u8::from_str_radix(part, 16).unwrap();
        }
        mac
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_ok(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn ping(from: &Netns, to: &str, extra: &[&str]) -> String {
    let mut args = vec!["-c", "3", "-i", "0.2", "-W", "2"];
    args.extend_from_slice(extra);
    args.push(to);
    let out = assert_ok(
        &format!("ping {to} from {}", from.name),
        &from.exec("ping", &args),
    );
    let rtt = out.lines().last().unwrap_or_default().to_owned();
    eprintln!("ping {to} {extra:?}: {rtt}");
    out
}

/// Whether something in `ns` listens on TCP `port` (read from the namespace's own
/// `/proc/thread-self/net/tcp{,6}` on a thread inside it).
fn listening(ns: &Netns, port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    in_netns(&ns.file(), || {
        ["tcp", "tcp6"].iter().any(|f| {
            std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
                })
        })
    })
    .unwrap()
}

/// A TCP transfer of `secs` seconds from `client` to `server_addr` (iperf3 in `server`).
fn tcp_transfer(server: &Netns, client: &Netns, server_addr: &str, secs: &str) {
    let mut srv = server.spawn("iperf3", &["-s", "-1", "-p", "5201"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !listening(server, 5201) {
        assert!(Instant::now() < deadline, "iperf3 server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = client.exec(
        "iperf3",
        &[
            "-c",
            server_addr,
            "-p",
            "5201",
            "-t",
            secs,
            "-f",
            "m",
            "--connect-timeout",
            "3000",
        ],
    );
    let _ = srv.kill();
    let _ = srv.wait();
    let text = assert_ok("iperf3 client", &out);
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sender") || l.contains("receiver"))
        .collect();
    assert!(
        summary.iter().any(|l| l.contains("receiver")),
        "no transfer: {text}"
    );
    eprintln!("iperf3 to {server_addr}: {summary:?}");
}

// ---------------------------------------------------------------------------------------------
// The relay

const ETHERTYPE_LLDP: u16 = 0x88cc;
const ETHERTYPE_LOCAL_EXP: u16 = 0x88b5;
const ETHERTYPE_VLAN: u16 = 0x8100;

/// What one direction of a relay saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    frames: u64,
    /// GSO super-frames: longer than a 1500-MTU frame, with a GSO type in the header.
    gso_frames: u64,
    max_frame: usize,
    src_macs: HashSet<[u8; 6]>,
    /// Frames of the EtherTypes the tests look for (LLDP, local experimental, VLAN).
    marked: Vec<(u16, VnetBytes, Vec<u8>)>,
    /// Frames received from the endpoint they had just been sent to.
    echoes: u64,
    send_errors: u64,
}

#[derive(Debug, Default, Clone)]
struct RelayStats {
    a_to_b: Seen,
    b_to_a: Seen,
}

struct Relay<A, B> {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(RelayStats, A, B)>>,
}

/// Identifies a frame well enough to spot an echo: its length and first 128 bytes (headers,
/// with IP id and TCP sequence numbers). Cheap, so the relay keeps up.
fn fingerprint(frame: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    frame.len().hash(&mut h);
    frame[..frame.len().min(128)].hash(&mut h);
    h.finish()
}

/// Moves the ready frames (up to a batch) from `src` to `dst` the way the daemon does: read
/// straight into a batch (`push_with`), decode it, write each frame out. Returns whether any
/// frame was ready.
fn pump(
    src: &mut dyn FrameEndpoint,
    dst: &mut dyn FrameEndpoint,
    enc: &mut BatchEncoder,
    seen: &mut Seen,
    sent_on_src: &HashSet<u64>,
    sent_on_dst: &mut HashSet<u64>,
) -> bool {
    for _ in 0..256 {
        match enc.push_with(WireId(1), |b| src.recv(b)) {
            Ok(Filled::Frame(_)) => {}
            Ok(Filled::NotReady | Filled::Full) => break,
            Ok(Filled::BadLength(n)) => panic!("endpoint produced a {n}-byte frame"),
            Err(e) => panic!("relay recv: {e}"),
        }
    }
    if enc.is_empty() {
        return false;
    }
    for f in decode(enc.finish()) {
        let f = f.expect("a batch the encoder made decodes");
        let (vnet, frame) = (f.vnet, &f.data[..]);
        let n = frame.len();
        seen.frames += 1;
        seen.max_frame = seen.max_frame.max(n);
        if n > 1514 && VnetHdr::new_unchecked(&vnet).is_gso() {
            seen.gso_frames += 1;
        }
        seen.src_macs.insert(frame[6..12].try_into().unwrap());
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        if [ETHERTYPE_LLDP, ETHERTYPE_LOCAL_EXP, ETHERTYPE_VLAN].contains(&ethertype) {
            seen.marked.push((ethertype, vnet, frame.to_vec()));
        }
        let fp = fingerprint(frame);
        if sent_on_src.contains(&fp) {
            seen.echoes += 1;
        }
        if sent_on_dst.len() > 100_000 {
            sent_on_dst.clear();
        }
        sent_on_dst.insert(fp);
        match dst.send(&vnet, frame) {
            Ok(()) => {}
            // A test relay may drop; TCP recovers.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => seen.send_errors += 1,
            Err(e) => panic!("relay send of a {n}-byte frame: {e}"),
        }
    }
    true
}

impl<A: FrameEndpoint + 'static, B: FrameEndpoint + 'static> Relay<A, B> {
    fn start(mut a: A, mut b: B) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut st = RelayStats::default();
            let (mut enc_a, mut enc_b) =
                (BatchEncoder::new(256 << 10), BatchEncoder::new(256 << 10));
            let (mut sent_a, mut sent_b) = (HashSet::new(), HashSet::new());
            while !flag.load(Ordering::Relaxed) {
                {
                    let fds = [a.readiness_fd().unwrap(), b.readiness_fd().unwrap()];
                    wait_readable(&fds, Duration::from_millis(10)).unwrap();
                }
                loop {
                    let x = pump(
                        &mut a,
                        &mut b,
                        &mut enc_a,
                        &mut st.a_to_b,
                        &sent_a,
                        &mut sent_b,
                    );
                    let y = pump(
                        &mut b,
                        &mut a,
                        &mut enc_b,
                        &mut st.b_to_a,
                        &sent_b,
                        &mut sent_a,
                    );
                    if !(x || y) {
                        break;
                    }
                }
            }
            (st, a, b)
        });
        Relay {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (RelayStats, A, B) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("relay panicked")
    }
}

impl<A, B> Drop for Relay<A, B> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Set-ups

const TAP: &str = "wire0";

fn up_with_addr(ns: &Netns, dev: &str, addr: &str, mtu: Option<u32>) {
    if let Some(m) = mtu {
        ns.ip(&["link", "set", dev, "mtu", &m.to_string()]);
    }
    ns.ip(&["addr", "add", addr, "dev", dev]);
    ns.ip(&["link", "set", dev, "up"]);
}

/// Creates a TAP named [`TAP`] directly inside `ns`, on a thread that entered it.
fn tap_in(ns: &Netns, opts: TapOptions) -> Tap {
    in_netns(&ns.file(), || Tap::create(TAP, opts))
        .unwrap()
        .unwrap()
}

fn carrier_on() -> TapOptions {
    TapOptions {
        carrier: true,
        ..TapOptions::default()
    }
}

/// Receives frames on `sock` until one satisfies `want` or `timeout` passes.
fn recv_until(
    sock: &mut PacketSocket,
    timeout: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> Option<(VnetBytes, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::new();
    while Instant::now() < deadline {
        wait_readable(&[sock.readiness_fd().unwrap()], Duration::from_millis(20)).unwrap();
        loop {
            buf.clear();
            match sock.recv(&mut buf).unwrap() {
                None => break,
                Some(_) => {
                    let frame = &buf[VNET_HDR_LEN..];
                    if want(frame) {
                        return Some((buf[..VNET_HDR_LEN].try_into().unwrap(), frame.to_vec()));
                    }
                }
            }
        }
    }
    None
}

fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

// ---------------------------------------------------------------------------------------------
// TAP

/// Pod 1's TAP is created in a "node" namespace and moved into the pod by `ip link set netns`
/// (the fd keeps working); pod 2's is created directly inside the pod on a thread that entered
/// it. A relay of the two carries ping and TCP; TCP arrives as GSO super-frames.
#[test]
fn tap_relay_carries_ping_and_tcp_with_gso() {
    if !root() {
        return;
    }
    let node = Netns::new("tap-node");
    let pod1 = Netns::new("tap-pod1");
    let pod2 = Netns::new("tap-pod2");

    let mut a = tap_in(&node, carrier_on());
    assert_eq!(a.name(), TAP);
    node.ip(&["link", "set", TAP, "netns", &pod1.name]);
    assert!(node.try_ip(&["link", "show", TAP]).status.code() != Some(0));
    a.refresh().unwrap();
    assert!(same_netns(&a.netns().unwrap(), &pod1.file()).unwrap());
    let idx = pod1.ip(&["-o", "link", "show", TAP]);
    assert!(idx.starts_with(&format!("{}: {TAP}", a.ifindex())), "{idx}");
    up_with_addr(&pod1, TAP, "192.0.2.1/24", None);

    let b = tap_in(&pod2, carrier_on());
    up_with_addr(&pod2, TAP, "192.0.2.2/24", None);
    assert_eq!(b.mtu(), 1500);
    assert_ne!(b.offload_flags() & libc::c_ulong::from(libc::TUN_F_TSO4), 0);

    let relay = Relay::start(a, b);
    ping(&pod1, "192.0.2.2", &[]);
    tcp_transfer(&pod2, &pod1, "192.0.2.2", "2");
    let (st, _a, _b) = relay.finish();
    eprintln!(
        "tap relay: a→b {} frames ({} GSO, max {} B), b→a {} frames",
        st.a_to_b.frames, st.a_to_b.gso_frames, st.a_to_b.max_frame, st.b_to_a.frames
    );
    assert!(
        st.a_to_b.gso_frames > 0,
        "no GSO super-frame from the sender: offloads not negotiated"
    );
    assert!(st.a_to_b.max_frame > 1514);
}

#[test]
fn tap_carrier_follows_set_carrier() {
    if !root() {
        return;
    }
    let pod = Netns::new("carrier");
    let mut tap = tap_in(&pod, TapOptions::default());
    pod.ip(&["link", "set", TAP, "up"]);
    assert!(
        pod.link_show(TAP).contains("NO-CARRIER"),
        "a new TAP starts without carrier: {}",
        pod.link_show(TAP)
    );
    tap.set_carrier(true).unwrap();
    let s = pod.link_show(TAP);
    assert!(s.contains("LOWER_UP") && !s.contains("NO-CARRIER"), "{s}");
    tap.set_carrier(false).unwrap();
    let s = pod.link_show(TAP);
    assert!(s.contains("NO-CARRIER") && !s.contains("LOWER_UP"), "{s}");
}

/// A persistent TAP outlives its fd; attaching by name gives a working endpoint back; once
/// made non-persistent, closing it removes the interface.
#[test]
fn tap_persists_and_reattaches() {
    if !root() {
        return;
    }
    let pod1 = Netns::new("persist1");
    let pod2 = Netns::new("persist2");
    let persistent = TapOptions {
        persist: true,
        carrier: true,
        ..TapOptions::default()
    };
    let a = tap_in(&pod1, persistent.clone());
    assert!(a.is_persistent().unwrap());
    up_with_addr(&pod1, TAP, "192.0.2.1/24", None);
    let b = tap_in(&pod2, carrier_on());
    up_with_addr(&pod2, TAP, "192.0.2.2/24", None);

    // Creating it again fails; attaching to a name that is not there fails.
    let again = in_netns(&pod1.file(), || Tap::create(TAP, carrier_on())).unwrap();
    assert!(matches!(again, Err(TapError::Exists { .. })), "{again:?}");
    let missing = in_netns(&pod1.file(), || Tap::attach("nosuch0", carrier_on())).unwrap();
    assert!(
        matches!(missing, Err(TapError::NotFound { .. })),
        "{missing:?}"
    );

    let relay = Relay::start(a, b);
    ping(&pod1, "192.0.2.2", &[]);
    let (_, a, b) = relay.finish();
    let ifindex = a.ifindex();
    drop(a);

    // The fd is closed: the interface, its address and its index are still there.
    let s = pod1.ip(&["-o", "addr", "show", "dev", TAP]);
    assert!(s.contains("192.0.2.1/24"), "{s}");
    assert!(
        pod1.link_show(TAP)
            .starts_with(&format!("{ifindex}: {TAP}"))
    );

    let a = in_netns(&pod1.file(), || Tap::attach(TAP, persistent))
        .unwrap()
        .unwrap();
    assert_eq!(a.ifindex(), ifindex);
    let relay = Relay::start(a, b);
    ping(&pod1, "192.0.2.2", &[]);
    let (st, a, _b) = relay.finish();
    assert!(st.a_to_b.frames > 0 && st.b_to_a.frames > 0);

    a.set_persist(false).unwrap();
    assert!(!a.is_persistent().unwrap());
    drop(a);
    assert!(
        !pod1.try_ip(&["link", "show", TAP]).status.success(),
        "a non-persistent TAP goes with its last fd"
    );
}

#[test]
fn tap_multi_queue() {
    if !root() {
        return;
    }
    let pod = Netns::new("mq");
    let opts = TapOptions {
        queues: 4,
        persist: true,
        ..TapOptions::default()
    };
    let mut tap = tap_in(&pod, opts.clone());
    assert_eq!(tap.queue_count(), 4);
    let extra = tap.take_queues();
    assert_eq!(extra.len(), 3);
    assert_eq!(tap.queue_count(), 1);
    assert!(extra.iter().all(|q| q.readiness_fd().is_some()));
    let s = pod.ip(&["-d", "link", "show", TAP]);
    assert!(s.contains("multi_queue"), "{s}");
    drop(extra);
    drop(tap);
    // A multi-queue TAP cannot be attached as a single-queue one, but can as multi-queue.
    let single = in_netns(&pod.file(), || Tap::attach(TAP, TapOptions::default())).unwrap();
    assert!(matches!(single, Err(TapError::Io { .. })), "{single:?}");
    let tap = in_netns(&pod.file(), || {
        Tap::attach(
            TAP,
            TapOptions {
                queues: 2,
                ..opts.clone()
            },
        )
    })
    .unwrap()
    .unwrap();
    assert_eq!(tap.queue_count(), 2);
    tap.set_persist(false).unwrap();
}

#[test]
fn tap_relay_carries_jumbo_frames() {
    if !root() {
        return;
    }
    let pod1 = Netns::new("jumbo1");
    let pod2 = Netns::new("jumbo2");
    let mut a = tap_in(&pod1, carrier_on());
    up_with_addr(&pod1, TAP, "192.0.2.1/24", Some(9000));
    let mut b = tap_in(&pod2, carrier_on());
    up_with_addr(&pod2, TAP, "192.0.2.2/24", Some(9000));
    a.refresh().unwrap();
    b.refresh().unwrap();
    assert_eq!((a.mtu(), b.mtu()), (9000, 9000));

    let relay = Relay::start(a, b);
    ping(&pod1, "192.0.2.2", &["-M", "do", "-s", "8972"]);
    let (st, _, _) = relay.finish();
    assert!(st.a_to_b.max_frame >= 9014, "max {}", st.a_to_b.max_frame);
    assert!(st.b_to_a.max_frame >= 9014, "max {}", st.b_to_a.max_frame);
}

/// An LLDP frame (link-local multicast 01:80:c2:00:00:0e, which a bridge would not forward)
/// sent in pod 1 arrives in pod 2 byte for byte.
#[test]
fn tap_relay_carries_link_local_multicast() {
    if !root() {
        return;
    }
    let pod1 = Netns::new("lldp1");
    let pod2 = Netns::new("lldp2");
    let a = tap_in(&pod1, carrier_on());
    pod1.ip(&["link", "set", TAP, "up"]);
    let b = tap_in(&pod2, carrier_on());
    pod2.ip(&["link", "set", TAP, "up"]);
    let opts = PacketOptions::default();
    let mut tx = in_netns(&pod1.file(), || PacketSocket::open_by_name(TAP, &opts))
        .unwrap()
        .unwrap();
    let mut rx = in_netns(&pod2.file(), || PacketSocket::open_by_name(TAP, &opts))
        .unwrap()
        .unwrap();

    let relay = Relay::start(a, b);
    let mut lldp = vec![0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
    lldp.extend_from_slice(&[0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc]);
    lldp.extend_from_slice(&ETHERTYPE_LLDP.to_be_bytes());
    // Chassis ID, port ID, TTL and end TLVs.
    lldp.extend_from_slice(&[0x02, 0x07, 0x04, 0x02, 0x00, 0x00, 0xaa, 0xbb, 0xcc]);
    lldp.extend_from_slice(&[0x04, 0x04, 0x05, b'e', b't', b'1']);
    lldp.extend_from_slice(&[0x06, 0x02, 0x00, 0x78, 0x00, 0x00]);
    lldp.resize(60, 0);
    tx.send(&VNET_HDR_NONE, &lldp).unwrap();

    let got = recv_until(&mut rx, Duration::from_secs(3), |f| {
        ethertype(f) == ETHERTYPE_LLDP
    });
    let (st, _, _) = relay.finish();
    let (_, frame) = got.expect("LLDP frame did not reach pod 2");
    assert_eq!(frame, lldp, "carried unchanged");
    assert!(
        st.a_to_b
            .marked
            .iter()
            .any(|(t, _, f)| *t == ETHERTYPE_LLDP && *f == lldp)
    );
}

// ---------------------------------------------------------------------------------------------
// AF_PACKET

/// Two pods, each with a veth whose host end is in a "node" namespace; a relay of two
/// PacketSockets on the host ends.
struct VethSetup {
    pod1: Netns,
    pod2: Netns,
    node: Netns,
}

impl VethSetup {
    fn new(tag: &str) -> Self {
        let s = VethSetup {
            pod1: Netns::new(&format!("{tag}-pod1")),
            pod2: Netns::new(&format!("{tag}-pod2")),
            node: Netns::new(&format!("{tag}-node")),
        };
        for (host, pod, addr) in [
            ("h1", &s.pod1, "192.0.2.1/24"),
            ("h2", &s.pod2, "192.0.2.2/24"),
        ] {
            s.node.ip(&[
                "link", "add", host, "type", "veth", "peer", "name", "eth1", "netns", &pod.name,
            ]);
            s.node.ip(&["link", "set", host, "up"]);
            up_with_addr(pod, "eth1", addr, None);
        }
        s
    }

    fn sockets(&self, opts: PacketOptions) -> (PacketSocket, PacketSocket) {
        in_netns(&self.node.file(), || {
            (
                PacketSocket::open_by_name("h1", &opts).unwrap(),
                PacketSocket::open_by_name("h2", &opts).unwrap(),
            )
        })
        .unwrap()
    }
}

fn read_mode() -> PacketOptions {
    PacketOptions {
        rx: RxMode::Read { rcvbuf: 4 << 20 },
        ..PacketOptions::default()
    }
}

#[test]
fn afpacket_ring_relay_carries_ping_and_tcp_with_gso() {
    if root() {
        afpacket_relay_carries_ping_and_tcp_with_gso("ring", PacketOptions::default());
    }
}

#[test]
fn afpacket_read_relay_carries_ping_and_tcp_with_gso() {
    if root() {
        afpacket_relay_carries_ping_and_tcp_with_gso("read", read_mode());
    }
}

fn afpacket_relay_carries_ping_and_tcp_with_gso(tag: &str, opts: PacketOptions) {
    let s = VethSetup::new(tag);
    let (h1, h2) = s.sockets(opts);
    assert_eq!((h1.name(), h2.name()), ("h1", "h2"));
    assert_eq!(h1.mtu(), 1500);
    let host_macs = [s.node.mac("h1"), s.node.mac("h2")];
    let pod_macs = [s.pod1.mac("eth1"), s.pod2.mac("eth1")];

    let relay = Relay::start(h1, h2);
    ping(&s.pod1, "192.0.2.2", &[]);
    tcp_transfer(&s.pod2, &s.pod1, "192.0.2.2", "2");

    // A frame some other socket sends out of h1 is outgoing there: the relay's socket on h1
    // must not see it (PACKET_IGNORE_OUTGOING), while pod 1 does receive it.
    let mut probe_rx = in_netns(&s.pod1.file(), || {
        PacketSocket::open_by_name("eth1", &PacketOptions::default())
    })
    .unwrap()
    .unwrap();
    let mut injector = in_netns(&s.node.file(), || {
        PacketSocket::open_by_name("h1", &PacketOptions::default())
    })
    .unwrap()
    .unwrap();
    let mut probe = vec![0xff; 6];
    probe.extend_from_slice(&host_macs[0]);
    probe.extend_from_slice(&ETHERTYPE_LOCAL_EXP.to_be_bytes());
    probe.extend_from_slice(b"meshnet outgoing probe");
    probe.resize(60, 0);
    injector.send(&VNET_HDR_NONE, &probe).unwrap();
    let got = recv_until(&mut probe_rx, Duration::from_secs(2), |f| {
        ethertype(f) == ETHERTYPE_LOCAL_EXP
    });
    assert_eq!(
        got.map(|(_, f)| f),
        Some(probe.clone()),
        "pod 1 got the probe"
    );
    std::thread::sleep(Duration::from_millis(100));

    let (st, h1, h2) = relay.finish();
    eprintln!(
        "afpacket {tag} relay: a→b {} frames ({} GSO, max {} B), b→a {} frames; h1 {:?}; h2 {:?}",
        st.a_to_b.frames,
        st.a_to_b.gso_frames,
        st.a_to_b.max_frame,
        st.b_to_a.frames,
        h1.stats(),
        h2.stats()
    );
    eprintln!(
        "kernel: h1 {:?} h2 {:?}",
        h1.kernel_stats(),
        h2.kernel_stats()
    );
    assert!(
        st.a_to_b.gso_frames > 0,
        "no GSO super-frame through AF_PACKET"
    );
    for seen in [&st.a_to_b, &st.b_to_a] {
        assert_eq!(seen.echoes, 0, "the relay received a frame it had sent");
        for mac in host_macs {
            assert!(
                !seen.src_macs.contains(&mac),
                "a frame sent by the host end was received"
            );
        }
        assert!(
            seen.marked
                .iter()
                .all(|(t, _, _)| *t != ETHERTYPE_LOCAL_EXP),
            "another socket's outgoing frame was received"
        );
    }
    assert!(st.a_to_b.src_macs.contains(&pod_macs[0]));
    assert!(st.b_to_a.src_macs.contains(&pod_macs[1]));
    assert_eq!(h1.stats().outgoing + h2.stats().outgoing, 0);
    assert_eq!(h1.stats().truncated + h2.stats().truncated, 0);
    assert_eq!(h1.stats().malformed + h2.stats().malformed, 0);
}

/// The receive path takes the VLAN tag out of every tagged frame (`skb_vlan_untag` runs before
/// AF_PACKET sees it); the socket puts it back, so the relay carries the tag.
#[test]
fn afpacket_ring_relay_keeps_vlan_tags() {
    if root() {
        afpacket_relay_keeps_vlan_tags("vlan-ring", PacketOptions::default());
    }
}

#[test]
fn afpacket_read_relay_keeps_vlan_tags() {
    if root() {
        afpacket_relay_keeps_vlan_tags("vlan-read", read_mode());
    }
}

fn afpacket_relay_keeps_vlan_tags(tag: &str, opts: PacketOptions) {
    let s = VethSetup::new(tag);
    let (h1, h2) = s.sockets(opts);
    let mut tx = in_netns(&s.pod1.file(), || PacketSocket::open_by_name("eth1", &opts))
        .unwrap()
        .unwrap();
    let mut rx = in_netns(&s.pod2.file(), || PacketSocket::open_by_name("eth1", &opts))
        .unwrap()
        .unwrap();
    let relay = Relay::start(h1, h2);

    let mut tagged = vec![0xff; 6];
    tagged.extend_from_slice(&s.pod1.mac("eth1"));
    tagged.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    tagged.extend_from_slice(&[0x20, 0x64]); // PCP 1, VID 100
    tagged.extend_from_slice(&ETHERTYPE_LOCAL_EXP.to_be_bytes());
    tagged.extend_from_slice(b"tagged payload");
    tagged.resize(64, 0x5a);
    tx.send(&VNET_HDR_NONE, &tagged).unwrap();

    let got = recv_until(&mut rx, Duration::from_secs(3), |f| {
        ethertype(f) == ETHERTYPE_VLAN
    });
    let (st, h1, _) = relay.finish();
    assert!(
        st.a_to_b
            .marked
            .iter()
            .any(|(t, _, f)| *t == ETHERTYPE_VLAN && *f == tagged),
        "the relay saw the frame with its tag"
    );
    assert!(h1.stats().vlan_restored > 0);
    let (_, frame) = got.expect("tagged frame did not reach pod 2");
    assert_eq!(frame, tagged, "carried unchanged, tag included");
}
