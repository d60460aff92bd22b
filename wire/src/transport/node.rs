//! The wire of one node: its halves, its peers and their shards.
//!
//! * A **half** exists as soon as its pod is alive, whether or not the peer exists, with its
//!   carrier down until the peer's half is bound on a live stream ([`Event::Bound`]).
//! * A half whose peer node is known is *attached* to the session of its shard toward that peer;
//!   the session announces it, answers the peer, and re-announces it on [`WireNode::tick_loop`]
//!   while it stays unbound.
//! * A **peer** has up to [`WireOptions::shards`] shards; the first `active` are used, `active`
//!   being the smaller of the two nodes' counts once a Hello told it (until then, ours). When it
//!   changes every attached half moves to its new shards.
//! * **Lanes** ([`Lanes`]): a half with several endpoint queues (a multi-queue TAP) is attached
//!   on `min(queues, active)` shards, its lanes, starting at its *primary* shard
//!   `link_hash % active`; queue `q` sends on lane `q % lanes` when the peer's half is bound
//!   there, else on the primary. Frames that arrive on lane `l` are written on queue `l`, which
//!   teaches the TAP's flow table to steer that flow's frames from the pod to queue `l`: both
//!   directions of a flow keep to one stream, so its order holds. The carrier follows the
//!   primary alone (an older peer, or one with fewer queues, binds fewer lanes; their queues'
//!   frames then go on the primary).
//!
//! Locks: `halves`, `peers`, a peer's `attached`, a shard's `state` are std mutexes, never held
//! across an await; a shard's `state` may be taken while holding nothing else but the `down` set
//! (carrier changes inside session events).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use std::io;

use bytes::{Bytes, BytesMut};
use futures::task::AtomicWaker;
use tokio::sync::{Notify, mpsc, watch};

use super::{MAX_SHARDS, MAX_WIRES_PER_STREAM, WireOptions};
use crate::endpoint::HalfIo;
use crate::impair::{ImpairDrop, Impairer, Impairment};
use crate::session::{Event, Session};
use crate::table::{CounterSnapshot, DropReason, WireCounters, WireKey};
use crate::vnet::{VNET_HDR_LEN, VnetBytes};

/// Labels of a link's metrics (the daemon's export names them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkLabels {
    pub namespace: String,
    pub pod: String,
    pub interface: String,
    pub peer_pod: String,
    pub uid: i64,
}

/// One node's half of one wire.
pub struct Half {
    pub(crate) key: WireKey,
    pub(crate) io: Arc<dyn HalfIo>,
    peer: Mutex<Option<IpAddr>>,
    pub(crate) carrier: AtomicBool,
    pub(crate) counters: Arc<WireCounters>,
    /// Per endpoint queue, [`HALF_QUEUED`] permits: that queue's share of its shard's data queue.
    pub(crate) queued: Vec<Arc<tokio::sync::Semaphore>>,
    /// `key.hash64()`, which places the half's lanes.
    hash: u64,
    /// Shards (bit = index, [`MAX_SHARDS`] ≤ 64) on which the peer's half is bound.
    bound: AtomicU64,
    /// The primary shard's index (the carrier follows it); `u32::MAX` when not attached.
    primary: AtomicU32,
    /// Removed from the node: its interface may be gone, carrier changes are not applied.
    removed: AtomicBool,
    labels: LinkLabels,
    /// One reader per endpoint queue.
    readers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    ifindex: u32,
    /// The interface's `tx_dropped` when its carrier last went down (or was last accounted):
    /// what the pod sends while the peer is away is dropped by the kernel at the interface, and
    /// counted here as `peer_down`.
    dropped_base: Mutex<Option<u64>>,
    /// The declared impairment of what the peer sends us (applied before our endpoint), with the
    /// task that releases its frames when due.
    impair: Mutex<Option<Impaired>>,
    /// The cable is pulled (`state: down`): the carrier stays off whatever the session says.
    pulled: AtomicBool,
    /// Our router shut this half's port: its Unbinds tell the peer so.
    shut: AtomicBool,
    /// The peer's last Unbind said its router shut its port (cleared by any other unbind or a
    /// bind).
    far_shut: AtomicBool,
    /// The plan says the peer pod is gone, but the half stays attached toward its last peer,
    /// quiet (see [`WireNode::update_peer`]).
    quiet: AtomicBool,
}

/// A half's impairment: the pure engine, and the task that writes what it releases.
struct Impaired {
    engine: Arc<Mutex<Impairer>>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Impaired {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Half {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Half")
            .field("key", &self.key)
            .field("ifindex", &self.ifindex)
            .finish_non_exhaustive()
    }
}

impl Half {
    /// Writes a frame from the peer into our endpoint's queue `queue` — through the declared
    /// impairment, if any, which decides at once whether the frame is dropped (counted as
    /// `impairment`) and otherwise releases it to the endpoint (queue 0) when due.
    pub(crate) fn deliver_frame(
        &self,
        queue: usize,
        vnet: &VnetBytes,
        frame: &[u8],
    ) -> io::Result<()> {
        let imp = self.impair.lock().expect("impair lock");
        let Some(imp) = imp.as_ref() else {
            return self.io.send(queue, vnet, frame);
        };
        let mut buf = BytesMut::with_capacity(vnet.len() + frame.len());
        buf.extend_from_slice(vnet);
        buf.extend_from_slice(frame);
        let pushed = imp
            .engine
            .lock()
            .expect("impairer lock")
            .push(Instant::now(), buf.freeze());
        match pushed {
            Ok(()) => {
                imp.wake.notify_one();
                Ok(())
            }
            Err(why) => Err(io::Error::other(ImpairedDrop(why))),
        }
    }
}

/// The error by which [`super::pump::drop_reason`] tells a frame the declared impairment
/// dropped from a failed write.
#[derive(Debug)]
pub(crate) struct ImpairedDrop(pub(crate) ImpairDrop);

impl std::fmt::Display for ImpairedDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dropped by the declared impairment ({:?})", self.0)
    }
}

impl std::error::Error for ImpairedDrop {}

/// How early a frame may leave: tokio's timer wakes on millisecond ticks, rounding up, so
/// waking this much before a frame's due time and releasing what is due within it centres the
/// release on the due time (±0.5 ms) instead of being late by up to a tick.
const RELEASE_SLACK: Duration = Duration::from_micros(500);

/// Writes what `engine` releases into `io` as it becomes due, until aborted.
async fn release_loop(
    engine: Arc<Mutex<Impairer>>,
    wake: Arc<tokio::sync::Notify>,
    io: Arc<dyn HalfIo>,
    counters: Arc<WireCounters>,
) {
    loop {
        let (due, next) = {
            let mut e = engine.lock().expect("impairer lock");
            let horizon = Instant::now() + RELEASE_SLACK;
            let due: Vec<Bytes> = std::iter::from_fn(|| e.pop(horizon)).collect();
            (due, e.next_due())
        };
        for f in due {
            let (vnet, frame) = f.split_at(VNET_HDR_LEN);
            let vnet: &VnetBytes = vnet.try_into().expect("pushed with a virtio-net header");
            if let Err(e) = io.send(0, vnet, frame) {
                counters.add_drops(super::pump::drop_reason(&e), 1);
            }
        }
        match next {
            Some(at) => {
                let wake_at = at.checked_sub(RELEASE_SLACK).unwrap_or(at);
                tokio::select! {
                    () = tokio::time::sleep_until(wake_at.into()) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

impl Drop for Half {
    fn drop(&mut self) {
        self.stop_reader();
    }
}

impl Half {
    /// Stops the half's reader tasks. A removed half must: a reader holds the half (and with
    /// it the interface's fd) while it waits for a frame, so a silent interface would keep a
    /// removed half alive, and its TAP busy for the next sandbox's half, for ever.
    fn stop_reader(&self) {
        if let Ok(mut r) = self.readers.lock() {
            for h in r.drain(..) {
                h.abort();
            }
        }
    }

    pub(crate) fn peer(&self) -> Option<IpAddr> {
        *self.peer.lock().expect("peer lock")
    }

    /// Whether the peer's half is bound on shard `index`.
    pub(crate) fn bound_on(&self, index: u32) -> bool {
        index < 64 && self.bound.load(Ordering::Acquire) & (1 << index) != 0
    }

    /// The half's lanes under `active` shards.
    pub(crate) fn lanes(&self, active: u32) -> Lanes {
        Lanes::new(self.hash, active, self.io.queues())
    }

    /// Adds the frames the kernel dropped at the interface since the last look (`now`, its
    /// `tx_dropped`; `None`: unknown, nothing changes) to `peer_down`, and remembers the new
    /// baseline (`keep`) or forgets it.
    fn settle_dropped(&self, now: Option<u64>, keep: bool) {
        let Some(now) = now else { return };
        let mut base = self.dropped_base.lock().expect("dropped_base lock");
        if let Some(b) = *base
            && now > b
        {
            self.counters.add_drops(DropReason::PeerDown, now - b);
        }
        *base = keep.then_some(now);
    }
}

/// Where the frames of one half travel toward one peer (see the module doc): `count` lanes on
/// consecutive shards (modulo `active`) from the primary `hash % active`. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lanes {
    primary: u32,
    count: u32,
    active: u32,
}

impl Lanes {
    /// The lanes of a half whose link hashes to `hash`, with `queues` endpoint queues, when
    /// `active` shards are in use (both taken as at least 1).
    pub fn new(hash: u64, active: u32, queues: usize) -> Self {
        let active = active.max(1);
        let queues = u32::try_from(queues).unwrap_or(u32::MAX).max(1);
        Lanes {
            primary: (hash % u64::from(active)) as u32,
            count: queues.min(active),
            active,
        }
    }

    /// The primary shard (lane 0): the carrier follows it, and every queue falls back to it.
    pub fn primary(self) -> u32 {
        self.primary
    }

    /// How many lanes (distinct shards).
    pub fn count(self) -> u32 {
        self.count
    }

    /// The shard of lane `lane` (taken modulo the count).
    pub fn shard(self, lane: u32) -> u32 {
        (self.primary + lane % self.count) % self.active
    }

    /// The shards of every lane, primary first.
    pub fn shards(self) -> impl Iterator<Item = u32> {
        (0..self.count).map(move |l| self.shard(l))
    }

    /// The shard endpoint queue `queue` sends on.
    pub fn shard_of_queue(self, queue: usize) -> u32 {
        self.shard((queue % self.count as usize) as u32)
    }

    /// The lane of shard `shard`, if it is one of this half's: frames that arrive there are
    /// written on the endpoint queue of that number.
    pub fn lane_of(self, shard: u32) -> Option<u32> {
        let lane = (shard % self.active + self.active - self.primary) % self.active;
        (lane < self.count).then_some(lane)
    }
}

/// Per-peer counters (exported by the daemon).
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub connects: AtomicU64,
    pub reconnects: AtomicU64,
    pub malformed: AtomicU64,
    pub batches: AtomicU64,
    pub batch_frames: AtomicU64,
}

/// A batch in a shard's data queue, with its half's queue permit (released when the stream
/// takes the batch).
pub(crate) type Queued = (Bytes, tokio::sync::OwnedSemaphorePermit);

/// Batches one half may have in its shard's data queue at once. The queue is FIFO: without this
/// bound, one saturated wire fills it and every other wire of the shard waits behind all of it;
/// with it, a wire's frames wait behind at most this many batches of each other busy wire.
pub const HALF_QUEUED: usize = 4;

/// The mutable state of one shard's stream.
#[derive(Debug)]
pub(crate) struct ShardState {
    pub session: Session<Arc<Half>>,
    /// The generation of the stream that owns the session now (see [`Shard::generation`]).
    pub owner: u64,
    /// The owner stream's token (its Hellos'; 0: not accounted), see [`crate::tally`].
    pub stream: u64,
    /// The generation whose stream may carry data: the server's at once, the dialler's once
    /// the server answered (data handed to a stream the server then refuses would be lost
    /// uncounted).
    pub open: u64,
    /// Receiver side of the accounting: arrivals of ended streams, awaiting the peer's tallies.
    pub ledger: crate::tally::Ledger,
    /// Sender side: what our ended streams carried, reported on each new stream.
    pub reports: crate::tally::Reports,
}

impl ShardState {
    /// The owner stream has ended (or is being replaced): what it delivered waits in the ledger
    /// for the peer's tallies.
    pub fn end_stream(&mut self) {
        let arrivals = self.session.take_arrivals();
        self.ledger
            .finish(std::mem::take(&mut self.stream), arrivals);
    }
}

/// One stream's worth of state toward one peer node.
#[derive(Debug)]
pub(crate) struct Shard {
    pub index: u32,
    pub tx: mpsc::Sender<Queued>,
    pub rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>,
    pub state: Mutex<ShardState>,
    /// Wakes the live outbound stream when control was queued.
    pub wake: AtomicWaker,
    /// A stream is live (the server refuses a second one for the same shard).
    pub connected: AtomicBool,
    /// Bumped when a new stream takes over: the previous stream's sender stops.
    pub generation: watch::Sender<u64>,
    /// Frames queued toward the peer on this shard, and frames the peer sent on it.
    pub tx_frames: AtomicU64,
    pub rx_frames: AtomicU64,
}

impl Shard {
    fn new(index: u32, queue: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        Shard {
            index,
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            state: Mutex::new(ShardState {
                session: Session::new(MAX_WIRES_PER_STREAM),
                owner: 0,
                stream: 0,
                open: 0,
                ledger: crate::tally::Ledger::default(),
                reports: crate::tally::Reports::default(),
            }),
            wake: AtomicWaker::new(),
            connected: AtomicBool::new(false),
            generation: watch::channel(0).0,
            tx_frames: AtomicU64::new(0),
            rx_frames: AtomicU64::new(0),
        }
    }
}

/// A peer node and its shards.
pub struct Peer {
    pub(crate) ip: IpAddr,
    pub(crate) shards: Vec<Arc<Shard>>,
    /// Shards in use: the smaller of the two nodes' counts once known.
    pub(crate) active: AtomicU32,
    /// Our halves whose peer is this node.
    attached: Mutex<HashMap<WireKey, Arc<Half>>>,
    pub(crate) dialer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) counters: PeerCounters,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("ip", &self.ip)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(mut d) = self.dialer.lock()
            && let Some(h) = d.take()
        {
            h.abort();
        }
    }
}

impl Peer {
    pub(crate) fn active(&self) -> u32 {
        self.active.load(Ordering::Acquire).max(1)
    }

    pub(crate) fn shard(&self, index: u32) -> &Arc<Shard> {
        &self.shards[index as usize % self.shards.len()]
    }
}

/// What the daemon exports per link.
#[derive(Debug, Clone)]
pub struct LinkStats {
    pub labels: LinkLabels,
    pub carrier: bool,
    pub counters: CounterSnapshot,
}

/// What the daemon exports per peer node.
#[derive(Debug, Clone)]
pub struct PeerStats {
    pub peer: IpAddr,
    pub connects: u64,
    pub reconnects: u64,
    pub unknown_wire: u64,
    pub malformed: u64,
    pub batches: u64,
    pub batch_frames: u64,
    /// Shards in use, and which of them have a live stream.
    pub connected: Vec<bool>,
    /// Per shard in use: frames queued toward the peer on it, and frames received on it.
    pub shard_tx_frames: Vec<u64>,
    pub shard_rx_frames: Vec<u64>,
}

/// The gRPC wire of one node: its halves, its peers, the server side and the diallers.
pub struct WireNode {
    pub(crate) opts: WireOptions,
    halves: Mutex<HashMap<WireKey, Arc<Half>>>,
    /// Halves whose carrier is down, for [`WireNode::account_loop`] (so that an idle node with
    /// every wire up does not look at each half every second).
    down: Mutex<HashMap<WireKey, Weak<Half>>>,
    pub(crate) peers: Mutex<HashMap<IpAddr, Arc<Peer>>>,
    pub(crate) allowed: Mutex<HashSet<IpAddr>>,
    /// Signalled when a carrier changes, so the reconciler updates link status.
    pub changed: Arc<Notify>,
    /// Legacy unary design only: one client per peer node.
    pub(crate) unary: Mutex<HashMap<IpAddr, super::grpc::Client>>,
    /// Counters of halves that went away, by link, so that a half made again for the same link
    /// (its pod restarted, its interface rebuilt) counts on from them: a link's counters stay
    /// monotonic as Prometheus expects, and `sent = received + dropped` holds across restarts.
    /// Bounded: the oldest [`RETIRED_COUNTERS`] are kept.
    retired: Mutex<Retired>,
    /// Low-latency mode (see [`WireOptions::poll`]): keep polling until this many nanoseconds
    /// past `epoch`; the poll loop sleeps on `poll_wake` once that has passed.
    hot_until: AtomicU64,
    epoch: Instant,
    poll_wake: Notify,
    /// Halves whose `peer_down` baseline is to be taken (`true`) or settled, in order, for
    /// [`WireNode::account_loop`].
    settle: Mutex<Vec<(Arc<Half>, bool)>>,
    settle_wake: Notify,
}

/// Settles the `peer_down` counts of `work` in order (see [`Half`]'s `dropped_base`), reading
/// each pod namespace's `/proc/net/dev` once. Blocking.
fn settle_all(work: Vec<(Arc<Half>, bool)>) {
    use std::os::unix::fs::MetadataExt;
    /// One pod namespace, open, and its halves to settle: (half, keep, interface).
    type Group = (std::fs::File, Vec<(Arc<Half>, bool, String)>);
    let mut groups: Vec<Group> = Vec::new();
    let mut by_ns: HashMap<(u64, u64), usize> = HashMap::new();
    for (h, keep) in work {
        let Some((ns, name)) = h.io.tx_dropped_source() else {
            let now = h.io.kernel_tx_dropped();
            h.settle_dropped(now, keep);
            continue;
        };
        let id = ns.metadata().map(|m| (m.dev(), m.ino())).ok();
        match id.and_then(|id| by_ns.get(&id).copied()) {
            Some(i) => groups[i].1.push((h, keep, name)),
            None => {
                if let Some(id) = id {
                    by_ns.insert(id, groups.len());
                }
                groups.push((ns, vec![(h, keep, name)]));
            }
        }
    }
    for (ns, halves) in groups {
        let dropped = crate::sys::tap::net_dev_in(&ns)
            .map(|t| crate::sys::tap::tx_dropped_all(&t))
            .unwrap_or_default();
        for (h, keep, name) in halves {
            h.settle_dropped(dropped.get(&name).copied(), keep);
        }
    }
}

/// Retired counters by link, and the order they were retired in (oldest first).
type Retired = (
    HashMap<WireKey, Arc<WireCounters>>,
    std::collections::VecDeque<WireKey>,
);

/// Links whose counters are kept after their half went away (see [`WireNode`]'s `retired`).
pub const RETIRED_COUNTERS: usize = 4096;

impl std::fmt::Debug for WireNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireNode")
            .field("me", &self.opts.me)
            .field("port", &self.opts.port)
            .finish_non_exhaustive()
    }
}

impl WireNode {
    /// A wire node; peers are dialled on `opts.port`. Start [`Self::account_loop`] and
    /// [`Self::tick_loop`] beside it, and serve [`super::WireService`].
    pub fn new(mut opts: WireOptions) -> Arc<Self> {
        opts.shards = opts.shards.clamp(1, MAX_SHARDS);
        Arc::new(WireNode {
            opts,
            halves: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            allowed: Mutex::new(HashSet::new()),
            changed: Arc::new(Notify::new()),
            unary: Mutex::new(HashMap::new()),
            retired: Mutex::new((HashMap::new(), std::collections::VecDeque::new())),
            hot_until: AtomicU64::new(0),
            epoch: Instant::now(),
            poll_wake: Notify::new(),
            settle: Mutex::new(Vec::new()),
            settle_wake: Notify::new(),
        })
    }

    /// Keeps the counters of a half that went away (see `retired`).
    fn retire(&self, half: &Half) {
        let mut r = self.retired.lock().expect("retired lock");
        let (map, order) = &mut *r;
        if map
            .insert(half.key.clone(), Arc::clone(&half.counters))
            .is_none()
        {
            order.push_back(half.key.clone());
        }
        while order.len() > RETIRED_COUNTERS {
            if let Some(k) = order.pop_front() {
                map.remove(&k);
            }
        }
    }

    /// The counters a new half of `key` counts on from: its predecessor's, if any.
    fn counters_for(&self, key: &WireKey) -> Arc<WireCounters> {
        let mut r = self.retired.lock().expect("retired lock");
        let (map, order) = &mut *r;
        match map.remove(key) {
            Some(c) => {
                order.retain(|k| k != key);
                c
            }
            None => Arc::default(),
        }
    }

    pub fn options(&self) -> &WireOptions {
        &self.opts
    }

    fn nanos_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Frames moved: in low-latency mode, keep polling for [`WireOptions::poll`] from now.
    pub(crate) fn touch(&self) {
        if self.opts.poll.is_zero() {
            return;
        }
        let now = self.nanos_since_epoch();
        let until =
            now.saturating_add(u64::try_from(self.opts.poll.as_nanos()).unwrap_or(u64::MAX));
        if self.hot_until.swap(until, Ordering::AcqRel) <= now {
            // It had cooled down, so the loop sleeps (or is about to: the permit wakes it).
            self.poll_wake.notify_one();
        }
    }

    /// Low-latency mode's poll loop (returns at once when [`WireOptions::poll`] is zero): while
    /// frames moved within the last `poll`, yield back to the runtime without sleeping. On a
    /// current-thread runtime every yield polls the I/O driver with a zero timeout, so a frame
    /// ready on a TAP or a stream is picked up at once instead of after a wake-up of a sleeping
    /// thread (tens of µs in a VM). Costs a busy thread for `poll` after each burst of frames,
    /// nothing when the wires are idle.
    pub async fn poll_loop(self: Arc<Self>) {
        if self.opts.poll.is_zero() {
            return;
        }
        loop {
            self.poll_wake.notified().await;
            while self.nanos_since_epoch() < self.hot_until.load(Ordering::Acquire) {
                // Let a runnable thread of this CPU go first (the pod that is to get the frame
                // we just wrote, a daemon of another node on a shared machine): spinning must
                // not delay the very work it waits for.
                std::thread::yield_now();
                tokio::task::yield_now().await;
            }
        }
    }

    /// Counts what the pods of down wires sent meanwhile (see `dropped_base`): at every carrier
    /// change (queued by [`Self::set_carrier`]), and every second for the halves that are down,
    /// so `peer_down` grows during an outage, not only after it. One blocking task per round,
    /// reading `/proc/net/dev` once per pod namespace ([`settle_all`]): a peer node that goes
    /// away takes a thousand wires down at once.
    pub async fn account_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let periodic = tokio::select! {
                _ = tick.tick() => true,
                () = self.settle_wake.notified() => false,
            };
            let mut work = std::mem::take(&mut *self.settle.lock().expect("settle lock"));
            if periodic {
                let mut down = self.down.lock().expect("down lock");
                down.retain(|_, h| h.strong_count() > 0);
                work.extend(
                    down.values()
                        .filter_map(Weak::upgrade)
                        .filter(|h| !h.carrier.load(Ordering::Acquire))
                        .map(|h| (h, true)),
                );
            }
            if !work.is_empty() {
                let _ = tokio::task::spawn_blocking(move || settle_all(work)).await;
            }
        }
    }

    /// Re-announces, on every live stream, the halves that are still not bound (see
    /// [`crate::session::REBIND_INTERVAL`]): a wire whose two halves exist comes up within an
    /// interval of its stream, whatever happened to earlier Binds.
    pub async fn tick_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(crate::session::REBIND_INTERVAL / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let shards: Vec<Arc<Shard>> = self
                .peers
                .lock()
                .expect("peers lock")
                .values()
                .flat_map(|p| p.shards.iter().cloned())
                .collect();
            let now = Instant::now();
            for s in shards {
                let queued = s.state.lock().expect("shard lock").session.tick(now);
                if queued {
                    s.wake.wake();
                }
            }
        }
    }

    /// Sets a half's carrier (and the set of down halves, under its lock, so that two concurrent
    /// changes leave the set matching the last one).
    pub(crate) fn set_carrier(&self, half: &Arc<Half>, up: bool) {
        self.set_carrier_with(half, || up);
    }

    /// [`Self::set_carrier`] to what `verdict` says once the lock is taken: concurrent changes
    /// (the sessions of several shards) then end with the verdict on the latest state.
    fn set_carrier_with(&self, half: &Arc<Half>, verdict: impl FnOnce() -> bool) {
        let mut down = self.down.lock().expect("down lock");
        let up = verdict();
        if half.carrier.swap(up, Ordering::AcqRel) == up {
            return;
        }
        if !half.removed.load(Ordering::Acquire) {
            // Down: take the baseline; up: count what was dropped meanwhile.
            self.settle
                .lock()
                .expect("settle lock")
                .push((Arc::clone(half), !up));
            self.settle_wake.notify_one();
            let light = up && !half.pulled.load(Ordering::Acquire);
            if let Err(e) = half.io.set_carrier(light) {
                tracing::warn!(wire = %half.key, error = %e, "cannot set carrier");
            }
        }
        tracing::info!(namespace = %half.key.namespace, link_uid = half.key.uid, up, "wire carrier");
        self.changed.notify_one();
        if up {
            if down
                .get(&half.key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(half)))
            {
                down.remove(&half.key);
            }
        } else {
            down.insert(half.key.clone(), Arc::downgrade(half));
        }
    }

    /// What an event of shard `shard`'s session means for the half's lanes and carrier.
    pub(crate) fn apply(&self, shard: u32, e: &Event<'_, Arc<Half>>) {
        let (h, up) = match e {
            Event::Bound(h) => (h, true),
            Event::Unbound(h) => (h, false),
            Event::FarShut(h) => {
                if shard == h.primary.load(Ordering::Acquire) {
                    h.far_shut.store(true, Ordering::Release);
                    self.changed.notify_one();
                }
                return;
            }
            _ => return,
        };
        if shard == h.primary.load(Ordering::Acquire) {
            h.far_shut.store(false, Ordering::Release);
        }
        let bit = 1u64 << (shard % 64);
        if up {
            h.bound.fetch_or(bit, Ordering::AcqRel);
        } else {
            h.bound.fetch_and(!bit, Ordering::AcqRel);
        }
        self.follow_primary(h);
    }

    /// Sets the half's carrier to whether the peer's half is bound on its primary shard.
    fn follow_primary(&self, h: &Arc<Half>) {
        self.set_carrier_with(h, || {
            let primary = h.primary.load(Ordering::Acquire);
            primary != u32::MAX && h.bound_on(primary)
        });
    }

    /// Nodes allowed to connect: the peer nodes of every planned wire.
    pub fn set_allowed(&self, peers: HashSet<IpAddr>) {
        *self.allowed.lock().expect("allowed lock") = peers;
    }

    /// Whether the half of `key` is present and its carrier up.
    pub fn carrier(&self, key: &WireKey) -> Option<bool> {
        self.halves
            .lock()
            .expect("halves lock")
            .get(key)
            .map(|h| h.carrier.load(Ordering::Acquire))
    }

    /// Whether the half of `key` is unbound because the far router shut its port (the peer's
    /// Unbind said so): its carrier is off for that reason.
    pub fn far_shut(&self, key: &WireKey) -> bool {
        self.halves
            .lock()
            .expect("halves lock")
            .get(key)
            .is_some_and(|h| {
                h.far_shut.load(Ordering::Acquire) && !h.carrier.load(Ordering::Acquire)
            })
    }

    /// Our router shut (`shut`) or opened the port of the half of `key`: a shut half is unbound
    /// from its peer (telling it why), an opened one points at `peer` again.
    pub fn set_shut(self: &Arc<Self>, key: &WireKey, shut: bool, peer: Option<IpAddr>) {
        let half = self.halves.lock().expect("halves lock").get(key).cloned();
        if let Some(h) = half {
            h.shut.store(shut, Ordering::Release);
            self.set_peer(&h, if shut { None } else { peer });
        }
    }

    /// The ifindex of the half's interface, if the half is registered.
    pub fn ifindex(&self, key: &WireKey) -> Option<u32> {
        self.halves
            .lock()
            .expect("halves lock")
            .get(key)
            .map(|h| h.ifindex)
    }

    /// Registers (or updates) a half: starts its reader, attaches it toward `peer`. A half
    /// registered again with the same ifindex only has its peer updated.
    pub fn register(
        self: &Arc<Self>,
        key: WireKey,
        io: Arc<dyn HalfIo>,
        ifindex: u32,
        labels: LinkLabels,
        peer: Option<IpAddr>,
    ) {
        let existing = self.halves.lock().expect("halves lock").get(&key).cloned();
        if let Some(h) = &existing
            && h.ifindex == ifindex
        {
            self.point(h, peer);
            return;
        }
        let counters = match &existing {
            Some(old) => Arc::clone(&old.counters),
            None => self.counters_for(&key),
        };
        let queues = io.queues().max(1);
        let half = Arc::new(Half {
            hash: key.hash64(),
            key: key.clone(),
            io,
            peer: Mutex::new(None),
            carrier: AtomicBool::new(true),
            counters,
            queued: (0..queues)
                .map(|_| Arc::new(tokio::sync::Semaphore::new(HALF_QUEUED)))
                .collect(),
            bound: AtomicU64::new(0),
            primary: AtomicU32::new(u32::MAX),
            removed: AtomicBool::new(false),
            labels,
            readers: Mutex::new(Vec::new()),
            ifindex,
            dropped_base: Mutex::new(None),
            impair: Mutex::new(None),
            pulled: AtomicBool::new(false),
            shut: AtomicBool::new(false),
            far_shut: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
        });
        self.set_carrier(&half, false);
        let readers = (0..queues)
            .map(|q| {
                tokio::spawn(super::pump::read_loop(
                    Arc::clone(self),
                    Arc::clone(&half),
                    q,
                ))
            })
            .collect();
        *half.readers.lock().expect("readers lock") = readers;
        let old = self
            .halves
            .lock()
            .expect("halves lock")
            .insert(key, Arc::clone(&half));
        if let Some(old) = old {
            old.removed.store(true, Ordering::Release);
            old.stop_reader();
            self.detach(&old);
        }
        self.set_peer(&half, peer);
    }

    /// Points a registered half at `peer` (its peer pod moved, came or went).
    ///
    /// "No peer" (the peer pod is gone by the plan) does not detach a half from the node it
    /// points at: it stays attached there, quiet ([`crate::session::Session::set_quiet`]: it
    /// announces nothing, it answers). A pod restarted on that node binds again the moment its
    /// new half announces, whatever this daemon's plan says meanwhile; a peer gone for good
    /// costs no control. The plan is not the newest evidence: a daemon that reconciles slowly
    /// (a starved node) plans from the store as it was when its pass began, and unbinding a half
    /// the restarted peer had already bound took that live wire down until the next pass
    /// (measured: 1.5–2 s, in the `wire_control` lab test on a starved 2-core runner). The
    /// carrier still follows the peer's half: its Unbind takes it down.
    pub fn update_peer(self: &Arc<Self>, key: &WireKey, peer: Option<IpAddr>) {
        let half = self.halves.lock().expect("halves lock").get(key).cloned();
        if let Some(h) = half {
            self.point(&h, peer);
        }
    }

    /// [`Self::update_peer`] of a registered half.
    fn point(self: &Arc<Self>, h: &Arc<Half>, peer: Option<IpAddr>) {
        let current = h.peer();
        if peer.is_none() && current.is_some() {
            if !h.quiet.swap(true, Ordering::AcqRel) {
                tracing::info!(namespace = %h.key.namespace, link_uid = h.key.uid, "wire peer pod gone: the half waits, quiet, toward its last node");
                self.quiet_on(h, current, true);
            }
            return;
        }
        if h.quiet.swap(false, Ordering::AcqRel) && peer == current {
            self.quiet_on(h, current, false);
        }
        self.set_peer(h, peer);
    }

    /// Quiets (or un-quiets) the half on the shards toward `peer` where it is attached.
    fn quiet_on(&self, h: &Half, peer: Option<IpAddr>, quiet: bool) {
        let Some(peer) = peer.and_then(|p| self.known_peer(p)) else {
            return;
        };
        let now = Instant::now();
        for shard in &peer.shards {
            shard
                .state
                .lock()
                .expect("shard lock")
                .session
                .set_quiet(&h.key, quiet, now);
            if !quiet {
                shard.wake.wake();
            }
        }
    }

    /// Puts `spec` on what the peer sends into this half (`None`: takes it off). Frames held by
    /// a previous impairment are released as due; a changed one keeps them.
    pub fn set_impairment(&self, key: &WireKey, spec: Option<Impairment>) {
        let Some(half) = self.halves.lock().expect("halves lock").get(key).cloned() else {
            return;
        };
        let mut slot = half.impair.lock().expect("impair lock");
        match (slot.as_ref(), spec) {
            (None, None) => {}
            (Some(_), None) => *slot = None,
            (Some(imp), Some(s)) => {
                imp.engine
                    .lock()
                    .expect("impairer lock")
                    .set_spec(s, Instant::now());
                imp.wake.notify_one();
            }
            (None, Some(s)) => {
                let engine = Arc::new(Mutex::new(Impairer::new(
                    s,
                    crate::table::link_hash(&key.namespace, key.uid),
                    Instant::now(),
                )));
                let wake = Arc::new(tokio::sync::Notify::new());
                let task = tokio::spawn(release_loop(
                    Arc::clone(&engine),
                    Arc::clone(&wake),
                    Arc::clone(&half.io),
                    Arc::clone(&half.counters),
                ));
                *slot = Some(Impaired { engine, wake, task });
            }
        }
        tracing::info!(wire = %half.key, impairment = ?spec, "wire impairment");
    }

    /// Pulls (or plugs back) the half's cable: its carrier goes off whatever the session says,
    /// and comes back with the session's state.
    pub fn set_pulled(&self, key: &WireKey, pulled: bool) {
        let Some(half) = self.halves.lock().expect("halves lock").get(key).cloned() else {
            return;
        };
        if half.pulled.swap(pulled, Ordering::AcqRel) == pulled {
            return;
        }
        let light = half.carrier.load(Ordering::Acquire) && !pulled;
        if let Err(e) = half.io.set_carrier(light) {
            tracing::warn!(wire = %half.key, error = %e, "cannot set carrier");
        }
        tracing::info!(wire = %half.key, pulled, "wire cable");
        self.changed.notify_one();
    }

    fn set_peer(self: &Arc<Self>, half: &Arc<Half>, peer: Option<IpAddr>) {
        let old = std::mem::replace(&mut *half.peer.lock().expect("peer lock"), peer);
        if old == peer {
            // Nothing to re-send here: an attached half that is not bound is re-announced by the
            // session's tick.
            return;
        }
        tracing::info!(
            namespace = %half.key.namespace,
            link_uid = half.key.uid,
            from = ?old,
            to = ?peer,
            "wire peer"
        );
        if old.is_some() {
            self.detach_from(half, old);
        }
        half.primary.store(u32::MAX, Ordering::Release);
        half.bound.store(0, Ordering::Release);
        self.set_carrier(half, false);
        if let Some(p) = peer {
            let peer = self.peer(p);
            peer.attached
                .lock()
                .expect("attached lock")
                .insert(half.key.clone(), Arc::clone(half));
            self.attach_on(&peer, half);
        }
    }

    /// Attaches `half` on the shards of its lanes toward `peer` (under the peer's current
    /// count) where it is not attached yet, detaches it from any other shard, and sets its
    /// carrier from its primary.
    fn attach_on(&self, peer: &Peer, half: &Arc<Half>) {
        let lanes = half.lanes(peer.active());
        half.primary.store(lanes.primary(), Ordering::Release);
        for shard in &peer.shards {
            let wanted = lanes.lane_of(shard.index).is_some() && shard.index < peer.active();
            let mut st = shard.state.lock().expect("shard lock");
            let attached = st.session.out_id(&half.key).is_some();
            let changed = match (wanted, attached) {
                (true, false) => {
                    let r = st.session.attach(
                        half.key.clone(),
                        Arc::clone(half),
                        Arc::clone(&half.counters),
                        |e| self.apply(shard.index, &e),
                    );
                    if let Err(e) = &r {
                        tracing::error!(wire = %half.key, shard = shard.index, error = %e, "cannot attach the wire");
                    }
                    if half.quiet.load(Ordering::Acquire) {
                        st.session.set_quiet(&half.key, true, Instant::now());
                    }
                    r.is_ok()
                }
                (false, true) => {
                    st.session
                        .detach(&half.key, |e| self.apply(shard.index, &e));
                    true
                }
                _ => false,
            };
            drop(st);
            if changed {
                shard.wake.wake();
            }
        }
        self.follow_primary(half);
    }

    /// Removes every half whose key is not in `keep`.
    pub fn retain(&self, keep: &HashSet<WireKey>) {
        let gone: Vec<Arc<Half>> = {
            let mut halves = self.halves.lock().expect("halves lock");
            let gone = halves
                .keys()
                .filter(|k| !keep.contains(*k))
                .cloned()
                .collect::<Vec<_>>();
            gone.iter().filter_map(|k| halves.remove(k)).collect()
        };
        for h in gone {
            h.removed.store(true, Ordering::Release);
            h.stop_reader();
            self.retire(&h);
            self.detach(&h);
            tracing::info!(namespace = %h.key.namespace, link_uid = h.key.uid, "wire half removed");
        }
    }

    fn detach(&self, half: &Arc<Half>) {
        self.detach_from(half, half.peer());
    }

    /// Detaches `half` (this very half, not a successor under the same key) from `peer`.
    fn detach_from(&self, half: &Arc<Half>, peer: Option<IpAddr>) {
        let Some(peer) = peer.and_then(|p| self.known_peer(p)) else {
            return;
        };
        {
            let mut attached = peer.attached.lock().expect("attached lock");
            if !attached
                .get(&half.key)
                .is_some_and(|h| Arc::ptr_eq(h, half))
            {
                return;
            }
            attached.remove(&half.key);
        }
        for shard in &peer.shards {
            let mut st = shard.state.lock().expect("shard lock");
            let shut = half.shut.load(Ordering::Acquire);
            let mine = st.session.out_id(&half.key).is_some().then(|| {
                st.session
                    .detach_with(&half.key, shut, |e| self.apply(shard.index, &e))
            });
            drop(st);
            if mine.is_some() {
                shard.wake.wake();
            }
        }
    }

    /// The peer record for `ip`, if there is one.
    pub(crate) fn known_peer(&self, ip: IpAddr) -> Option<Arc<Peer>> {
        self.peers.lock().expect("peers lock").get(&ip).cloned()
    }

    /// The peer record for `ip`, created (and, if we dial, its dialler started) on first use.
    pub(crate) fn peer(self: &Arc<Self>, ip: IpAddr) -> Arc<Peer> {
        let mut peers = self.peers.lock().expect("peers lock");
        if let Some(p) = peers.get(&ip) {
            return Arc::clone(p);
        }
        let p = Arc::new(Peer {
            ip,
            shards: (0..self.opts.shards)
                .map(|i| Arc::new(Shard::new(i, self.opts.queue)))
                .collect(),
            active: AtomicU32::new(self.opts.shards),
            attached: Mutex::new(HashMap::new()),
            dialer: Mutex::new(None),
            counters: PeerCounters::default(),
        });
        peers.insert(ip, Arc::clone(&p));
        drop(peers);
        if self.opts.me < ip {
            let node = Arc::clone(self);
            let peer = Arc::clone(&p);
            let h = tokio::spawn(async move { node.dial(peer).await });
            *p.dialer.lock().expect("dialer lock") = Some(h);
        }
        p
    }

    /// Uses `n` shards toward `peer` from now on (the smaller of the two counts): every attached
    /// half moves to its shard under the new count.
    pub(crate) fn set_active(&self, peer: &Peer, n: u32) {
        let n = n.clamp(1, peer.shards.len() as u32);
        if peer.active.swap(n, Ordering::AcqRel) == n {
            return;
        }
        tracing::info!(peer = %peer.ip, shards = n, "wire shard count agreed");
        let halves: Vec<Arc<Half>> = peer
            .attached
            .lock()
            .expect("attached lock")
            .values()
            .cloned()
            .collect();
        for h in halves {
            self.attach_on(peer, &h);
        }
    }

    /// Every link's labels, carrier and counters (for the daemon's metrics).
    pub fn link_stats(&self) -> Vec<LinkStats> {
        self.halves
            .lock()
            .expect("halves lock")
            .values()
            .map(|h| LinkStats {
                labels: h.labels.clone(),
                carrier: h.carrier.load(Ordering::Acquire),
                counters: h.counters.snapshot(),
            })
            .collect()
    }

    /// Every peer node's stream counters (for the daemon's metrics).
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let peers: Vec<Arc<Peer>> = self
            .peers
            .lock()
            .expect("peers lock")
            .values()
            .cloned()
            .collect();
        peers
            .iter()
            .map(|p| {
                let active = p.active.load(Ordering::Acquire) as usize;
                let unknown_wire = p
                    .shards
                    .iter()
                    .map(|s| {
                        s.state
                            .lock()
                            .expect("shard lock")
                            .session
                            .stray()
                            .snapshot()
                            .drops(DropReason::UnknownWire)
                    })
                    .sum();
                let c = &p.counters;
                let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
                PeerStats {
                    peer: p.ip,
                    connects: load(&c.connects),
                    reconnects: load(&c.reconnects),
                    unknown_wire,
                    malformed: load(&c.malformed),
                    batches: load(&c.batches),
                    batch_frames: load(&c.batch_frames),
                    connected: p.shards[..active]
                        .iter()
                        .map(|s| s.connected.load(Ordering::Acquire))
                        .collect(),
                    shard_tx_frames: p.shards[..active]
                        .iter()
                        .map(|s| load(&s.tx_frames))
                        .collect(),
                    shard_rx_frames: p.shards[..active]
                        .iter()
                        .map(|s| load(&s.rx_frames))
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn node(poll: Duration) -> Arc<WireNode> {
        WireNode::new(WireOptions {
            poll,
            ..WireOptions::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1)
        })
    }

    #[test]
    fn lanes_start_at_the_primary_and_wrap() {
        let l = Lanes::new(6, 4, 4);
        assert_eq!((l.primary(), l.count()), (2, 4));
        assert_eq!(l.shards().collect::<Vec<_>>(), [2, 3, 0, 1]);
        for (lane, shard) in [(0, 2), (1, 3), (2, 0), (3, 1)] {
            assert_eq!(l.shard(lane), shard);
            assert_eq!(l.lane_of(shard), Some(lane));
        }
        // More queues than shards: queue q travels on lane q % lanes.
        assert_eq!(l.shard_of_queue(5), 3);
    }

    #[test]
    fn lanes_are_what_both_counts_allow() {
        // One queue (an AF_PACKET half, a legacy design): the primary alone, as before.
        let one = Lanes::new(7, 4, 1);
        assert_eq!(one.shards().collect::<Vec<_>>(), [3]);
        assert_eq!((one.lane_of(3), one.lane_of(0)), (Some(0), None));
        assert_eq!(one.shard_of_queue(2), 3);
        // Fewer shards agreed than queues: as many lanes as shards.
        let two = Lanes::new(7, 2, 4);
        assert_eq!(two.shards().collect::<Vec<_>>(), [1, 0]);
        assert_eq!(
            (0..4).map(|q| two.shard_of_queue(q)).collect::<Vec<_>>(),
            [1, 0, 1, 0]
        );
        // Degenerate counts are taken as 1.
        let z = Lanes::new(u64::MAX, 0, 0);
        assert_eq!((z.primary(), z.count(), z.shard(9)), (0, 1, 0));
        assert_eq!(z.lane_of(5), Some(0));
    }

    #[test]
    fn both_ends_of_a_link_agree_on_its_lanes() {
        // Each side computes the lanes from the link hash alone: a frame sent on lane l
        // arrives on the shard the far side knows as lane l (so it is written on queue l).
        for hash in [0u64, 1, 5, 1 << 40, u64::MAX] {
            for active in 1..=8 {
                let (near, far) = (Lanes::new(hash, active, 4), Lanes::new(hash, active, 2));
                for lane in 0..far.count() {
                    assert_eq!(far.lane_of(near.shard(lane)), Some(lane));
                }
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_the_option_nothing_spins() {
        let n = node(Duration::ZERO);
        n.touch();
        assert_eq!(n.hot_until.load(Ordering::Acquire), 0);
        // Returns at once instead of waiting for frames.
        tokio::time::timeout(Duration::from_secs(1), Arc::clone(&n).poll_loop())
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_poll_loop_spins_after_frames_and_lets_the_runtime_work_meanwhile() {
        let n = node(Duration::from_millis(300));
        let spinner = tokio::spawn(Arc::clone(&n).poll_loop());
        tokio::task::yield_now().await;
        let start = Instant::now();
        n.touch();
        assert!(n.hot_until.load(Ordering::Acquire) > n.nanos_since_epoch());
        // On this one thread the spinner yields: a timer and this task still run while it is hot.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            start.elapsed() < Duration::from_millis(300),
            "the spinner starved the runtime"
        );
        // Once it has cooled down, touching again heats it up again.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(n.hot_until.load(Ordering::Acquire) < n.nanos_since_epoch());
        n.touch();
        assert!(n.hot_until.load(Ordering::Acquire) > n.nanos_since_epoch());
        assert!(!spinner.is_finished());
        spinner.abort();
    }
}
