//! Multi-queue halves over real streams on loopback (no root): a half with several endpoint
//! queues travels on one shard per queue (its lanes), frames arrive on the same-numbered queue
//! at the far end, in order per queue; with a peer that has fewer queues or fewer shards the
//! lanes shrink to what both have and nothing is lost; the carrier follows the primary shard; a
//! half whose peer pod is gone by the plan stays attached, quiet, and binds a returning far half.
//!
//! The endpoints are in memory: each queue is a datagram socket pair (the socket the wire
//! polls and reads, and the "pod" side the test writes frames into); frames the wire writes
//! are recorded with the queue they were written on.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use meshnet_wire::table::WireKey;
use meshnet_wire::transport::grpc::serve;
use meshnet_wire::transport::{HalfIo, LinkLabels, WireNode, WireOptions};
use meshnet_wire::vnet::VnetBytes;

/// A fake multi-queue endpoint (see the module doc).
struct QueuedIo {
    wire: Vec<UnixDatagram>,
    pod: Vec<UnixDatagram>,
    /// (queue written on, frame) in the order written.
    written: Mutex<Vec<(usize, Vec<u8>)>>,
}

impl QueuedIo {
    fn new(queues: usize) -> Arc<Self> {
        let (wire, pod) = (0..queues)
            .map(|_| {
                let (w, p) = UnixDatagram::pair().unwrap();
                w.set_nonblocking(true).unwrap();
                (w, p)
            })
            .unzip();
        Arc::new(QueuedIo {
            wire,
            pod,
            written: Mutex::new(Vec::new()),
        })
    }

    /// The pod sends a 60-byte frame tagged (origin queue, seq) on queue `q`.
    fn inject(&self, q: usize, seq: u16) {
        let mut f = vec![0u8; 10 + 60];
        f[10] = q as u8;
        f[11..13].copy_from_slice(&seq.to_be_bytes());
        self.pod[q].send(&f).unwrap();
    }

    fn written(&self) -> Vec<(usize, Vec<u8>)> {
        self.written.lock().unwrap().clone()
    }
}

impl HalfIo for QueuedIo {
    fn queues(&self) -> usize {
        self.wire.len()
    }
    fn dup_fd(&self, queue: usize) -> io::Result<OwnedFd> {
        self.wire[queue].as_fd().try_clone_to_owned()
    }
    fn recv(&self, queue: usize, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let mut tmp = [0u8; 2048];
        match self.wire[queue].recv(&mut tmp) {
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                Ok(Some(n - 10))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn send(&self, queue: usize, _: &VnetBytes, frame: &[u8]) -> io::Result<()> {
        let q = queue % self.wire.len();
        self.written.lock().unwrap().push((q, frame.to_vec()));
        Ok(())
    }
    fn set_carrier(&self, _: bool) -> io::Result<()> {
        Ok(())
    }
}

const A: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

fn key() -> WireKey {
    WireKey::new("lanes", 7)
}

fn labels() -> LinkLabels {
    LinkLabels {
        namespace: "lanes".into(),
        pod: "p".into(),
        interface: "eth1".into(),
        peer_pod: "q".into(),
        uid: 7,
    }
}

/// Two nodes on loopback: A (127.0.0.1, which dials) and B (127.0.0.3, which serves), each
/// with one half of the link, of `qa` / `qb` queues, running `sa` / `sb` shards.
struct Pair {
    a: Arc<WireNode>,
    b: Arc<WireNode>,
    io_a: Arc<QueuedIo>,
    io_b: Arc<QueuedIo>,
}

async fn pair(sa: u32, qa: usize, sb: u32, qb: usize) -> Pair {
    let listener = tokio::net::TcpListener::bind((B, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let node = |me, shards| {
        let n = WireNode::new(WireOptions {
            shards,
            queues: 1,
            connect_timeout: Duration::from_millis(200),
            ..WireOptions::new(me, port)
        });
        tokio::spawn(Arc::clone(&n).tick_loop());
        n
    };
    let (a, b) = (node(A, sa), node(B, sb));
    b.set_allowed(HashSet::from([A]));
    a.set_allowed(HashSet::from([B]));
    tokio::spawn(serve(Arc::clone(&b), listener, std::future::pending()));
    let (io_a, io_b) = (QueuedIo::new(qa), QueuedIo::new(qb));
    a.register(key(), io_a.clone(), 1, labels(), Some(B));
    b.register(key(), io_b.clone(), 1, labels(), Some(A));
    until("both carriers up", || {
        a.carrier(&key()) == Some(true) && b.carrier(&key()) == Some(true)
    })
    .await;
    Pair { a, b, io_a, io_b }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shards on which `node` queued frames toward `peer`.
fn shards_used(node: &WireNode, peer: IpAddr) -> BTreeSet<usize> {
    let stats = node.peer_stats();
    let p = stats.iter().find(|p| p.peer == peer).unwrap();
    p.shard_tx_frames
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, _)| i)
        .collect()
}

/// Sequence numbers of [`carry`]'s frames start here; smaller ones are warm-up frames.
const CARRIED: u16 = 10_000;

/// What `to` got of [`carry`]'s frames.
fn carried(to: &QueuedIo) -> Vec<(usize, Vec<u8>)> {
    to.written()
        .into_iter()
        .filter(|(_, f)| u16::from_be_bytes([f[1], f[2]]) >= CARRIED)
        .collect()
}

/// Sends `rounds` frames on every queue of `from` and returns what `to` got of them.
async fn carry(from: &QueuedIo, to: &QueuedIo, rounds: u16) -> Vec<(usize, Vec<u8>)> {
    to.written.lock().unwrap().clear();
    let queues = from.wire.len();
    for seq in CARRIED..CARRIED + rounds {
        for q in 0..queues {
            from.inject(q, seq);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let want = usize::from(rounds) * queues;
    until("every frame delivered", || carried(to).len() >= want).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = carried(to);
    assert_eq!(got.len(), want, "no frame duplicated");
    got
}

/// Per origin queue, the frames' sequence numbers are in order.
fn in_order_per_queue(got: &[(usize, Vec<u8>)]) {
    let mut last: std::collections::HashMap<u8, u16> = Default::default();
    for (_, f) in got {
        let seq = u16::from_be_bytes([f[1], f[2]]);
        if let Some(prev) = last.insert(f[0], seq) {
            assert!(seq > prev, "origin queue {}: {seq} after {prev}", f[0]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_queues_travel_on_four_shards_and_land_on_the_same_queue() {
    let p = pair(4, 4, 4, 4).await;
    // Every secondary lane binds shortly after the primary: wait until the last round's
    // frames of each queue landed on the same-numbered queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seq = 0;
    loop {
        for q in 0..4 {
            p.io_a.inject(q, seq);
        }
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = p.io_b.written();
        let tail = &got[got.len().saturating_sub(4)..];
        if tail.len() == 4 && tail.iter().all(|(q, f)| usize::from(f[0]) == *q) {
            break;
        }
        assert!(Instant::now() < deadline, "lanes never all bound: {tail:?}");
    }
    let got = carry(&p.io_a, &p.io_b, 50).await;
    for (q, f) in &got {
        assert_eq!(
            usize::from(f[0]),
            *q,
            "A's queue {} landed on B's queue {q}",
            f[0]
        );
    }
    in_order_per_queue(&got);
    assert_eq!(shards_used(&p.a, B).len(), 4, "one shard per queue");
    // And back: B's queues travel on the same lanes.
    let back = carry(&p.io_b, &p.io_a, 20).await;
    assert!(back.iter().all(|(q, f)| usize::from(f[0]) == *q));
    assert_eq!(shards_used(&p.b, A).len(), 4);
    // A counts each frame once, on the link (sum over its queues).
    let link = p.a.link_stats();
    let sent = link[0].counters.tx_frames;
    assert!(sent >= 4 * 50, "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_one_queue_binds_the_primary_only_and_gets_everything() {
    let p = pair(4, 4, 4, 1).await;
    let got = carry(&p.io_a, &p.io_b, 30).await;
    assert!(got.iter().all(|(q, _)| *q == 0));
    in_order_per_queue(&got);
    assert_eq!(
        shards_used(&p.a, B).len(),
        1,
        "A's other lanes are never bound by a one-queue peer: all on the primary"
    );
    let back = carry(&p.io_b, &p.io_a, 30).await;
    assert!(back.iter().all(|(q, _)| *q == 0), "the primary's lane is 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_shards_agreed_means_fewer_lanes() {
    let p = pair(4, 4, 2, 4).await;
    until("lanes bound", || {
        p.io_a.inject(1, 0);
        p.io_b.written().iter().any(|(q, f)| f[0] == 1 && *q == 1)
    })
    .await;
    let got = carry(&p.io_a, &p.io_b, 30).await;
    for (q, f) in &got {
        assert_eq!(
            usize::from(f[0]) % 2,
            *q,
            "two lanes: queue q travels on lane q % 2"
        );
    }
    in_order_per_queue(&got);
    let used = shards_used(&p.a, B);
    assert!(used.iter().all(|s| *s < 2), "{used:?}");
    assert_eq!(used.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_far_half_takes_the_carrier_down_and_back_up() {
    let p = pair(4, 4, 4, 4).await;
    p.b.retain(&HashSet::new());
    until("A's carrier down", || p.a.carrier(&key()) == Some(false)).await;
    let io_b = QueuedIo::new(4);
    p.b.register(key(), io_b.clone(), 2, labels(), Some(A));
    until("A's carrier up again", || p.a.carrier(&key()) == Some(true)).await;
    // Every queue's frames arrive again.
    let got = carry(&p.io_a, &io_b, 10).await;
    in_order_per_queue(&got);
    drop(p.io_b);
}

/// "No peer" from the plan (the far pod is gone, or so a slow daemon's plan says) leaves the
/// half attached toward its last node, quiet: still bound if it was (carrier up, frames
/// flowing); once the far half is gone its carrier drops, and a far half that comes back on
/// that node binds it at once — without this side ever being pointed at it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_peer_leaves_the_half_quiet_toward_its_last_node() {
    let p = pair(2, 1, 2, 1).await;
    p.a.update_peer(&key(), None);
    assert_eq!(p.a.carrier(&key()), Some(true), "a bound half stays up");
    let got = carry(&p.io_a, &p.io_b, 10).await;
    assert_eq!(got.len(), 10, "frames still flow");
    assert_eq!(p.b.carrier(&key()), Some(true));

    p.b.retain(&HashSet::new());
    until("A's carrier down", || p.a.carrier(&key()) == Some(false)).await;
    p.a.update_peer(&key(), None);
    // The far pod restarts on B: its new half announces, A's quiet half answers.
    let io_b = QueuedIo::new(1);
    p.b.register(key(), io_b.clone(), 2, labels(), Some(A));
    until("both carriers up again", || {
        p.a.carrier(&key()) == Some(true) && p.b.carrier(&key()) == Some(true)
    })
    .await;
    let got = carry(&p.io_a, &io_b, 10).await;
    assert_eq!(got.len(), 10);
    // The plan catches up: A points at B again, nothing changes.
    p.a.update_peer(&key(), Some(B));
    assert_eq!(p.a.carrier(&key()), Some(true));
    drop(p.io_b);
}
