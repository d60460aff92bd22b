//! The gRPC wire, daemon side: each node daemon owns its half of every cross-node link, reads
//! frames from the pod's TAP and streams them to the peer node's daemon, which writes them into
//! the peer pod's TAP (DESIGN.md §5).
//!
//! * **Halves** ([`Half`]) are keyed by link identity `(namespace, uid)`; a half exists as soon as
//!   its pod is alive, whether or not the peer exists, with the TAP's carrier down until the
//!   peer's half is bound on a connected stream.
//! * **Peers** ([`Peer`]): one per peer node, with `shards` bidirectional streams, each over its own
//!   HTTP/2 connection; a wire always travels on shard `hash(key) % shards`. The node with the lower
//!   address dials (with backoff); the other accepts. A wire id is announced with `Bind` on each
//!   stream before it is used and re-announced after every reconnect.
//! * **Flow**: a half's reader fills one batch from the TAP until nothing more is ready (or the
//!   batch is full) and queues it on its shard's bounded queue; when the queue is full the reader
//!   waits, so the TAP's queue and then the pod's qdisc and TCP see back-pressure. No queue in this
//!   module is unbounded. Frames that cannot be delivered are counted per link with a reason.
//! * **Security**: a node accepts streams only from nodes that are the peer of one of its halves
//!   (the dialler's `Hello` must match the connection's source address), and accepts frames only
//!   for wire ids bound to such halves. Nothing received names a namespace path or an interface.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use meshnet_proto::v1::wire_client::WireClient;
use meshnet_proto::v1::wire_server::Wire;
use meshnet_proto::v1::{
    Ack, Batches, Bind, Hello, UnaryFrame, Unbind, WireMessage, wire_message::Body,
};
use meshnet_wire::WireId;
use meshnet_wire::batch::{self, BatchEncoder, Filled};
use meshnet_wire::table::DropReason;
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::tapio::HalfIo;

/// Bound of each shard's outbound queue, in messages (a batch is at most [`BATCH_BYTES`]).
const SHARD_QUEUE: usize = 64;
/// Bytes in one batch read from a TAP before it is queued.
const BATCH_BYTES: usize = 256 * 1024;
/// Frames in one batch read from a TAP before it is queued.
const BATCH_FRAMES: usize = 128;
/// Most bytes of batches combined into one gRPC message.
const MESSAGE_BYTES: usize = 1024 * 1024;
/// Largest gRPC message accepted from a peer.
pub const MAX_MESSAGE: usize = 4 * MESSAGE_BYTES;
/// Most shards a peer may ask for.
const MAX_SHARDS: u32 = 64;
/// HTTP/2 windows sized for throughput (a 1 ms underlay at 10 Gbit/s holds ~1.25 MB in flight).
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame we accept: a combined message travels in few DATA frames instead of one
/// per 16 KiB (h2's default), which costs a header, a buffer and a wake-up each on both sides.
pub const MAX_FRAME: u32 = 1024 * 1024;
/// Keepalive: a peer that stops answering is declared gone within about two seconds.
pub const KEEPALIVE: Duration = Duration::from_millis(700);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Mutual TLS for the node-to-node API, from a directory laid out like a Kubernetes TLS Secret
/// plus its CA: `tls.crt`, `tls.key` (this node's certificate and key) and `ca.crt` (the CA that
/// signs every node's certificate). Each side requires the other's certificate to chain to the
/// CA; the server certificate must be valid for the name [`WIRE_TLS_NAME`] (node addresses change,
/// the name does not). Without TLS a node still accepts streams only from the address of a node
/// it shares a wire with.
#[derive(Clone)]
pub struct WireTls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// The name every node's wire certificate carries (as a DNS subject alternative name).
pub const WIRE_TLS_NAME: &str = "meshnet-wire";

impl std::fmt::Debug for WireTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireTls { .. }")
    }
}

impl WireTls {
    /// Reads `tls.crt`, `tls.key` and `ca.crt` from `dir`; `Ok(None)` when `dir` holds no
    /// `tls.crt` (an optional Secret that is not there).
    ///
    /// # Errors
    /// A certificate file exists but the set is incomplete or unreadable.
    pub fn load(dir: &std::path::Path) -> std::io::Result<Option<Self>> {
        if !dir.join("tls.crt").exists() {
            return Ok(None);
        }
        let read = |f: &str| {
            std::fs::read(dir.join(f)).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(f).display()))
            })
        };
        Ok(Some(WireTls {
            ca: read("ca.crt")?,
            cert: read("tls.crt")?,
            key: read("tls.key")?,
        }))
    }

    fn identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert, &self.key)
    }

    fn ca(&self) -> tonic::transport::Certificate {
        tonic::transport::Certificate::from_pem(&self.ca)
    }

    /// The server side: our certificate, and client certificates required to chain to the CA.
    pub fn server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(self.ca())
    }

    fn client(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(self.ca())
            .identity(self.identity())
            .domain_name(WIRE_TLS_NAME)
    }
}

/// Identity of a wire: the link's namespace and uid.
pub type WireKey = (String, i64);

/// Labels of a link's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkLabels {
    pub namespace: String,
    pub pod: String,
    pub interface: String,
    pub peer_pod: String,
    pub uid: i64,
}

/// Pre-registered metric handles of one link: the hot path only touches these.
#[derive(Clone)]
struct LinkMetrics {
    tx_frames: metrics::Counter,
    tx_bytes: metrics::Counter,
    rx_frames: metrics::Counter,
    rx_bytes: metrics::Counter,
    drops: [metrics::Counter; 5],
    carrier: metrics::Gauge,
}

impl LinkMetrics {
    fn new(l: &LinkLabels) -> Self {
        let labels = [
            ("namespace", l.namespace.clone()),
            ("pod", l.pod.clone()),
            ("interface", l.interface.clone()),
            ("peer_pod", l.peer_pod.clone()),
            ("uid", l.uid.to_string()),
            ("kind", "grpc".to_string()),
        ];
        let drops = DropReason::ALL.map(|r| {
            let mut ls = labels.to_vec();
            ls.push(("reason", r.as_label().to_string()));
            metrics::counter!("meshnet_link_drops_total", &ls)
        });
        LinkMetrics {
            tx_frames: metrics::counter!("meshnet_link_tx_frames_total", &labels),
            tx_bytes: metrics::counter!("meshnet_link_tx_bytes_total", &labels),
            rx_frames: metrics::counter!("meshnet_link_rx_frames_total", &labels),
            rx_bytes: metrics::counter!("meshnet_link_rx_bytes_total", &labels),
            drops,
            carrier: metrics::gauge!("meshnet_link_carrier", &labels),
        }
    }

    fn drop(&self, reason: DropReason, n: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.drops[i].increment(n);
    }
}

/// One node's half of one wire.
pub struct Half {
    key: WireKey,
    io: Arc<dyn HalfIo>,
    peer: StdMutex<Option<IpAddr>>,
    carrier: AtomicBool,
    metrics: LinkMetrics,
    reader: StdMutex<Option<tokio::task::JoinHandle<()>>>,
    ifindex: u32,
    /// The interface's `tx_dropped` when its carrier last went down (or was last accounted):
    /// what the pod sends while the peer is away is dropped by the kernel at the TAP, and counted
    /// here as `peer_down`.
    dropped_base: StdMutex<Option<u64>>,
}

impl Half {
    /// Adds the frames the kernel dropped at the interface since the last look to `peer_down`,
    /// and remembers the new baseline (`keep`) or forgets it.
    fn account_peer_down(self: &Arc<Self>, keep: bool) {
        let half = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let Some(now) = half.io.kernel_tx_dropped() else {
                return;
            };
            let mut base = half.dropped_base.lock().expect("dropped_base lock");
            if let Some(b) = *base
                && now > b
            {
                half.metrics.drop(DropReason::PeerDown, now - b);
            }
            *base = keep.then_some(now);
        });
    }

    /// Sets the carrier; whether it changed. Use [`WireNode::set_carrier`], which also keeps
    /// the set of down halves.
    fn set_carrier(self: &Arc<Self>, up: bool, changed: &Notify) -> bool {
        let flipped = self.carrier.swap(up, Ordering::AcqRel) != up;
        if flipped {
            // Down: take the baseline; up: count what was dropped meanwhile.
            self.account_peer_down(!up);
            if let Err(e) = self.io.set_carrier(up) {
                tracing::warn!(wire = ?self.key, error = %e, "cannot set carrier");
            }
            self.metrics.carrier.set(if up { 1.0 } else { 0.0 });
            tracing::info!(namespace = %self.key.0, link_uid = self.key.1, up, "wire carrier");
            changed.notify_one();
        }
        flipped
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

impl Drop for Half {
    fn drop(&mut self) {
        if let Ok(mut r) = self.reader.lock()
            && let Some(h) = r.take()
        {
            h.abort();
        }
    }
}

/// What a shard queues for its stream.
#[derive(Debug)]
enum Outbound {
    Bind(u32, WireKey),
    Unbind(u32),
    Batch(Bytes),
}

/// One stream's worth of state toward one peer node.
struct Shard {
    index: u32,
    tx: mpsc::Sender<Outbound>,
    rx: Arc<Mutex<mpsc::Receiver<Outbound>>>,
    connected: AtomicBool,
    /// Bumped when a new stream takes over: the previous stream's sender stops.
    generation: watch::Sender<u64>,
    /// Our wire ids on this shard (outbound direction).
    out_ids: StdMutex<HashMap<WireKey, u32>>,
    next_id: AtomicU32,
    /// The peer's wire ids (inbound direction), bound to our halves.
    in_ids: StdMutex<HashMap<u32, Arc<Half>>>,
}

impl Shard {
    fn new(index: u32) -> Self {
        let (tx, rx) = mpsc::channel(SHARD_QUEUE);
        Shard {
            index,
            tx,
            rx: Arc::new(Mutex::new(rx)),
            connected: AtomicBool::new(false),
            generation: watch::channel(0).0,
            out_ids: StdMutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            in_ids: StdMutex::new(HashMap::new()),
        }
    }

    fn out_id(&self, key: &WireKey) -> u32 {
        let mut ids = self.out_ids.lock().expect("out_ids lock");
        *ids.entry(key.clone())
            .or_insert_with(|| self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// A peer node and its shards.
pub struct Peer {
    ip: IpAddr,
    shards: Vec<Arc<Shard>>,
    dialer: StdMutex<Option<tokio::task::JoinHandle<()>>>,
    connects: metrics::Counter,
    reconnects: metrics::Counter,
    unknown: metrics::Counter,
    malformed: metrics::Counter,
    batch_frames: metrics::Histogram,
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

fn shard_of(key: &WireKey, shards: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

/// The gRPC wire of one node: its halves, its peers, the server and the diallers.
pub struct WireNode {
    me: IpAddr,
    port: u16,
    shards: u32,
    halves: StdMutex<HashMap<WireKey, Arc<Half>>>,
    /// Halves whose carrier is down, for [`WireNode::account_loop`] (so that an idle node with
    /// every wire up does not look at each half every second).
    down: StdMutex<HashMap<WireKey, std::sync::Weak<Half>>>,
    peers: StdMutex<HashMap<IpAddr, Arc<Peer>>>,
    allowed: StdMutex<HashSet<IpAddr>>,
    /// Signalled when a carrier changes, so the reconciler updates link status.
    pub changed: Arc<Notify>,
    /// Mutual TLS toward peers (see [`WireTls`]); plain HTTP/2 when unset.
    client_tls: std::sync::OnceLock<tonic::transport::ClientTlsConfig>,
    /// The endpoint kind and, for benchmarks, a legacy design ([`set_design`]).
    design: WireDesign,
    /// Legacy unary design only: one client per peer node (see "Legacy wire designs").
    unary: StdMutex<HashMap<IpAddr, WireClient<tonic::transport::Channel>>>,
}

impl std::fmt::Debug for WireNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireNode")
            .field("me", &self.me)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl WireNode {
    /// A wire node for this node's address; peers are dialled on `port`.
    pub fn new(me: IpAddr, port: u16, shards: u32) -> Arc<Self> {
        Arc::new(WireNode {
            me,
            port,
            shards: shards.clamp(1, MAX_SHARDS),
            halves: StdMutex::new(HashMap::new()),
            down: StdMutex::new(HashMap::new()),
            peers: StdMutex::new(HashMap::new()),
            allowed: StdMutex::new(HashSet::new()),
            changed: Arc::new(Notify::new()),
            client_tls: std::sync::OnceLock::new(),
            design: design(),
            unary: StdMutex::new(HashMap::new()),
        })
    }

    /// How this node's wire is built (endpoint kind, legacy design).
    pub fn design(&self) -> WireDesign {
        self.design
    }

    /// Default shard count: one per core, at most 4.
    pub fn default_shards() -> u32 {
        std::thread::available_parallelism().map_or(2, |n| n.get().min(4) as u32)
    }

    /// Every second, counts what the pods of down wires sent meanwhile (see `Half::dropped_base`),
    /// so `peer_down` grows during an outage, not only after it.
    pub async fn account_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let down: Vec<Arc<Half>> = {
                let mut down = self.down.lock().expect("down lock");
                down.retain(|_, h| h.strong_count() > 0);
                down.values()
                    .filter_map(std::sync::Weak::upgrade)
                    .filter(|h| !h.carrier.load(Ordering::Acquire))
                    .collect()
            };
            for h in down {
                h.account_peer_down(true);
            }
        }
    }

    /// Sets a half's carrier and keeps the set of down halves (under its lock, so that two
    /// concurrent changes leave the set matching the last one).
    fn set_carrier(&self, half: &Arc<Half>, up: bool) {
        let mut down = self.down.lock().expect("down lock");
        if half.set_carrier(up, &self.changed) {
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
    }

    /// Dials peers with mutual TLS from now on.
    pub fn use_tls(&self, tls: &WireTls) {
        let _ = self.client_tls.set(tls.client());
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

    /// The ifindex of the half's TAP, if the half is registered.
    pub fn ifindex(&self, key: &WireKey) -> Option<u32> {
        self.halves
            .lock()
            .expect("halves lock")
            .get(key)
            .map(|h| h.ifindex)
    }

    /// Registers (or updates) a half: starts its reader, binds it toward `peer`.
    pub fn register(
        self: &Arc<Self>,
        key: WireKey,
        io: Arc<dyn HalfIo>,
        ifindex: u32,
        labels: &LinkLabels,
        peer: Option<IpAddr>,
    ) {
        let existing = self.halves.lock().expect("halves lock").get(&key).cloned();
        if let Some(h) = existing
            && h.ifindex == ifindex
        {
            self.set_peer(&h, peer);
            return;
        }
        let half = Arc::new(Half {
            key: key.clone(),
            io,
            peer: StdMutex::new(None),
            carrier: AtomicBool::new(true),
            metrics: LinkMetrics::new(labels),
            reader: StdMutex::new(None),
            ifindex,
            dropped_base: StdMutex::new(None),
        });
        self.set_carrier(&half, false);
        let reader = tokio::spawn(Arc::clone(self).read_loop(Arc::clone(&half)));
        *half.reader.lock().expect("reader lock") = Some(reader);
        if let Some(old) = self
            .halves
            .lock()
            .expect("halves lock")
            .insert(key, Arc::clone(&half))
        {
            self.unbind(&old);
        }
        self.set_peer(&half, peer);
    }

    /// Points a registered half at `peer` (its peer pod moved, came or went).
    pub fn update_peer(self: &Arc<Self>, key: &WireKey, peer: Option<IpAddr>) {
        let half = self.halves.lock().expect("halves lock").get(key).cloned();
        if let Some(h) = half {
            self.set_peer(&h, peer);
        }
    }

    fn set_peer(self: &Arc<Self>, half: &Arc<Half>, peer: Option<IpAddr>) {
        let old = std::mem::replace(&mut *half.peer.lock().expect("peer lock"), peer);
        if old == peer {
            return;
        }
        if let Some(old) = old {
            self.unbind_from(half, old);
        }
        self.set_carrier(half, false);
        if let Some(p) = peer {
            let peer = self.peer(p);
            let shard = &peer.shards[shard_of(&half.key, peer.shards.len())];
            let id = shard.out_id(&half.key);
            if shard.connected.load(Ordering::Acquire) {
                let _ = shard.tx.try_send(Outbound::Bind(id, half.key.clone()));
            }
        }
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
            self.unbind(&h);
            tracing::info!(namespace = %h.key.0, link_uid = h.key.1, "wire half removed");
        }
    }

    fn unbind(&self, half: &Arc<Half>) {
        if let Some(p) = *half.peer.lock().expect("peer lock") {
            self.unbind_from(half, p);
        }
    }

    fn unbind_from(&self, half: &Arc<Half>, peer: IpAddr) {
        let Some(peer) = self.peers.lock().expect("peers lock").get(&peer).cloned() else {
            return;
        };
        let shard = &peer.shards[shard_of(&half.key, peer.shards.len())];
        if let Some(id) = shard
            .out_ids
            .lock()
            .expect("out_ids lock")
            .remove(&half.key)
        {
            let _ = shard.tx.try_send(Outbound::Unbind(id));
        }
        shard
            .in_ids
            .lock()
            .expect("in_ids lock")
            .retain(|_, h| !Arc::ptr_eq(h, half));
    }

    /// The peer record for `ip`, created (and, if we dial, its diallers started) on first use.
    fn peer(self: &Arc<Self>, ip: IpAddr) -> Arc<Peer> {
        self.peer_with(ip, self.shards)
    }

    fn peer_with(self: &Arc<Self>, ip: IpAddr, shards: u32) -> Arc<Peer> {
        let mut peers = self.peers.lock().expect("peers lock");
        if let Some(p) = peers.get(&ip) {
            return Arc::clone(p);
        }
        let label = ip.to_string();
        let p = Arc::new(Peer {
            ip,
            shards: (0..shards).map(|i| Arc::new(Shard::new(i))).collect(),
            dialer: StdMutex::new(None),
            connects: metrics::counter!("meshnet_wire_connects_total", "peer" => label.clone()),
            reconnects: metrics::counter!("meshnet_wire_reconnects_total", "peer" => label.clone()),
            unknown: metrics::counter!("meshnet_wire_unknown_wire_frames_total", "peer" => label.clone()),
            malformed: metrics::counter!("meshnet_wire_malformed_batches_total", "peer" => label.clone()),
            batch_frames: metrics::histogram!("meshnet_wire_batch_frames", "peer" => label),
        });
        peers.insert(ip, Arc::clone(&p));
        drop(peers);
        if self.me < ip {
            let node = Arc::clone(self);
            let peer = Arc::clone(&p);
            let h = tokio::spawn(async move { node.dial(peer).await });
            *p.dialer.lock().expect("dialer lock") = Some(h);
        }
        p
    }

    /// Keeps `shards` streams to a peer we dial, reconnecting with backoff.
    async fn dial(self: Arc<Self>, peer: Arc<Peer>) {
        let mut tasks = Vec::new();
        for shard in &peer.shards {
            let (node, peer, shard) = (Arc::clone(&self), Arc::clone(&peer), Arc::clone(shard));
            tasks.push(tokio::spawn(
                async move { node.dial_shard(peer, shard).await },
            ));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn dial_shard(self: Arc<Self>, peer: Arc<Peer>, shard: Arc<Shard>) {
        let tls = self.client_tls.get().cloned();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = match peer.ip {
            IpAddr::V4(a) => format!("{scheme}://{a}:{}", self.port),
            IpAddr::V6(a) => format!("{scheme}://[{a}]:{}", self.port),
        };
        let mut backoff = Duration::from_millis(50);
        let mut first = true;
        loop {
            let endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(peer = %peer.ip, error = %e, "bad peer address");
                    return;
                }
            }
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
            let endpoint = match &tls {
                None => endpoint,
                Some(t) => match endpoint.tls_config(t.clone()) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(peer = %peer.ip, error = %e, "wire TLS configuration refused");
                        return;
                    }
                },
            };
            let hello = WireMessage {
                body: Some(Body::Hello(Hello {
                    node_ip: self.me.to_string(),
                    shard: shard.index,
                    shards: peer.shards.len() as u32,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                })),
            };
            let r = Arc::clone(&self)
                .open_stream(endpoint, Arc::clone(&shard), hello)
                .await;
            match r {
                Ok(inbound) => {
                    backoff = Duration::from_millis(50);
                    if !first {
                        peer.reconnects.increment(1);
                    }
                    first = false;
                    peer.connects.increment(1);
                    Arc::clone(&self)
                        .on_stream(Arc::clone(&peer), Arc::clone(&shard), inbound)
                        .await;
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.ip, shard = shard.index, error = %e, "wire connect failed");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Dials one stream: connect, then start the bidirectional call.
    async fn open_stream(
        self: Arc<Self>,
        endpoint: tonic::transport::Endpoint,
        shard: Arc<Shard>,
        hello: WireMessage,
    ) -> Result<Streaming<WireMessage>, String> {
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        let mut client = WireClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let out = self.outbound(shard, Some(hello)).await;
        let inbound = client
            .carry(Request::new(out))
            .await
            .map_err(|s| s.message().to_string())?;
        Ok(inbound.into_inner())
    }

    /// The outbound message stream of a shard for a new stream: the Hello (when dialling), a Bind
    /// for every wire on the shard, then the shard's queue, combining ready batches into one
    /// message. Takes over from any previous stream of the shard.
    async fn outbound(&self, shard: Arc<Shard>, hello: Option<WireMessage>) -> OutboundStream {
        let gen_now = {
            let mut g = 0;
            shard.generation.send_modify(|v| {
                *v += 1;
                g = *v;
            });
            g
        };
        let guard = Arc::clone(&shard.rx).lock_owned().await;
        let mut first: Vec<WireMessage> = hello.into_iter().collect();
        let binds: Vec<(WireKey, u32)> = {
            let halves = self.halves.lock().expect("halves lock");
            let ids = shard.out_ids.lock().expect("out_ids lock");
            ids.iter()
                .filter(|(k, _)| halves.contains_key(*k))
                .map(|(k, id)| (k.clone(), *id))
                .collect()
        };
        first.extend(binds.into_iter().map(|(k, id)| bind_msg(id, &k)));
        let mut gen_rx = shard.generation.subscribe();
        OutboundStream {
            pending: first.into(),
            queue: guard,
            superseded: Box::pin(async move { superseded(&mut gen_rx, gen_now).await }),
            combine: self.design.legacy == WireLegacy::None,
        }
    }

    /// Runs one connected stream's inbound side until it ends; the shard is connected meanwhile.
    async fn on_stream(
        self: Arc<Self>,
        peer: Arc<Peer>,
        shard: Arc<Shard>,
        mut inbound: Streaming<WireMessage>,
    ) {
        shard.connected.store(true, Ordering::Release);
        metrics::gauge!("meshnet_wire_connected", "peer" => peer.ip.to_string(), "shard" => shard.index.to_string())
            .set(1.0);
        tracing::info!(peer = %peer.ip, shard = shard.index, "wire stream up");
        loop {
            match inbound.message().await {
                Ok(Some(m)) => self.on_message(&peer, &shard, m),
                Ok(None) => break,
                Err(s) => {
                    tracing::info!(peer = %peer.ip, shard = shard.index, error = %s.message(), "wire stream failed");
                    break;
                }
            }
        }
        // End our side of the stream too (before the shard is free for a new one, so this
        // never ends a successor's stream).
        shard.generation.send_modify(|g| *g += 1);
        shard.connected.store(false, Ordering::Release);
        metrics::gauge!("meshnet_wire_connected", "peer" => peer.ip.to_string(), "shard" => shard.index.to_string())
            .set(0.0);
        let bound: Vec<Arc<Half>> = shard
            .in_ids
            .lock()
            .expect("in_ids lock")
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in bound {
            self.set_carrier(&h, false);
        }
        tracing::info!(peer = %peer.ip, shard = shard.index, "wire stream down");
    }

    fn on_message(&self, peer: &Arc<Peer>, shard: &Arc<Shard>, m: WireMessage) {
        match m.body {
            Some(Body::Bind(b)) => {
                let key = (b.namespace, b.uid);
                let half = self.halves.lock().expect("halves lock").get(&key).cloned();
                // Only a half whose peer is this node may receive this node's frames.
                let ours = half.filter(|h| *h.peer.lock().expect("peer lock") == Some(peer.ip));
                match ours {
                    Some(h) => {
                        let fresh = shard
                            .in_ids
                            .lock()
                            .expect("in_ids lock")
                            .insert(b.wire_id, Arc::clone(&h))
                            .is_none_or(|old| !Arc::ptr_eq(&old, &h));
                        if fresh {
                            // Answer with our own Bind so the peer knows our half is there too.
                            let id = shard.out_id(&key);
                            let _ = shard.tx.try_send(Outbound::Bind(id, key));
                        }
                        self.set_carrier(&h, true);
                    }
                    None => {
                        shard.in_ids.lock().expect("in_ids lock").remove(&b.wire_id);
                    }
                }
            }
            Some(Body::Unbind(u)) => {
                if let Some(h) = shard.in_ids.lock().expect("in_ids lock").remove(&u.wire_id) {
                    self.set_carrier(&h, false);
                }
            }
            Some(Body::Batches(bs)) => {
                for b in bs.batch {
                    self.deliver(peer, shard, b);
                }
            }
            Some(Body::Hello(_)) | None => {}
        }
    }

    /// Writes a batch's frames into the halves they are bound to; counts what cannot be.
    fn deliver(&self, peer: &Arc<Peer>, shard: &Arc<Shard>, b: Bytes) {
        // Held for the batch (no await inside; only this shard's bindings are locked) instead of
        // cloning the map per batch, which cost time in proportion to the number of wires.
        let ids = shard.in_ids.lock().expect("in_ids lock");
        let mut frames = 0u64;
        for f in batch::decode(b) {
            let f = match f {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(peer = %peer.ip, error = %e, "malformed batch");
                    peer.malformed.increment(1);
                    break;
                }
            };
            frames += 1;
            let Some(h) = ids.get(&f.wire.0) else {
                peer.unknown.increment(1);
                continue;
            };
            match h.io.send(&f.vnet, &f.data) {
                Ok(()) => {
                    h.metrics.rx_frames.increment(1);
                    h.metrics.rx_bytes.increment(f.data.len() as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    h.metrics.drop(DropReason::QueueFull, 1)
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL)
                        || e.raw_os_error() == Some(libc::EMSGSIZE) =>
                {
                    h.metrics.drop(DropReason::Oversize, 1)
                }
                Err(_) => h.metrics.drop(DropReason::IoError, 1),
            }
        }
        peer.batch_frames.record(frames as f64);
    }

    /// Reads frames from a half's TAP, batches them and queues them toward the peer.
    async fn read_loop(self: Arc<Self>, half: Arc<Half>) {
        let afd = match half.io.dup_fd().and_then(crate::pollfd::readable) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(wire = ?half.key, error = %e, "cannot poll the wire's interface");
                return;
            }
        };
        loop {
            let mut guard = match afd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(wire = ?half.key, error = %e, "wire interface gone");
                    return;
                }
            };
            let target = {
                let peer = *half.peer.lock().expect("peer lock");
                peer.and_then(|p| self.peers.lock().expect("peers lock").get(&p).cloned())
                    .map(|p| Arc::clone(&p.shards[shard_of(&half.key, p.shards.len())]))
                    .filter(|s| {
                        s.connected.load(Ordering::Acquire) && half.carrier.load(Ordering::Acquire)
                    })
            };
            let id = target.as_ref().map_or(0, |s| s.out_id(&half.key));
            let mut enc = BatchEncoder::new(BATCH_BYTES);
            let mut bytes = 0u64;
            let mut drained = false;
            while enc.frames() < self.design.batch_frames() {
                match enc.push_with(WireId(id), |buf: &mut BytesMut| half.io.recv(buf)) {
                    Ok(Filled::Frame(n)) => bytes += n as u64,
                    Ok(Filled::NotReady) => {
                        drained = true;
                        break;
                    }
                    Ok(Filled::Full) => break,
                    Ok(Filled::BadLength(_)) => half.metrics.drop(DropReason::Oversize, 1),
                    Err(e) => {
                        half.metrics.drop(DropReason::IoError, 1);
                        tracing::debug!(wire = ?half.key, error = %e, "wire read failed");
                        drained = true;
                        break;
                    }
                }
            }
            if drained {
                guard.clear_ready();
            }
            let n = enc.frames() as u64;
            if n == 0 {
                continue;
            }
            match target {
                Some(s) if self.design.legacy == WireLegacy::Unary => {
                    let peer = *half.peer.lock().expect("peer lock");
                    let sent = match peer {
                        Some(p) => {
                            self.unary_send(p, s.index, self.design.message_body(enc.finish()))
                                .await
                        }
                        None => false,
                    };
                    if sent {
                        half.metrics.tx_frames.increment(n);
                        half.metrics.tx_bytes.increment(bytes);
                    } else {
                        half.metrics.drop(DropReason::PeerDown, n);
                    }
                }
                Some(s) => {
                    // Bounded queue: when full, this await is the back-pressure.
                    let body = self.design.message_body(enc.finish());
                    if s.tx.send(Outbound::Batch(body)).await.is_ok() {
                        half.metrics.tx_frames.increment(n);
                        half.metrics.tx_bytes.increment(bytes);
                    } else {
                        half.metrics.drop(DropReason::PeerDown, n);
                    }
                }
                None => half.metrics.drop(DropReason::PeerDown, n),
            }
        }
    }
}

/// A stream's outbound messages, polled directly by tonic's HTTP/2 body (no task or channel in
/// between): first the Hello and Binds queued for it, then the shard's queue, combining batches
/// already queued into one message. Ends when a newer stream takes over the shard.
///
/// A named type rather than a combinator chain: tonic's client needs the request stream to be
/// provably `Send`, which rustc cannot show for `async` closures inside `unfold`.
struct OutboundStream {
    pending: std::collections::VecDeque<WireMessage>,
    queue: tokio::sync::OwnedMutexGuard<mpsc::Receiver<Outbound>>,
    superseded: Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    /// Combine queued batches into one message (not in a legacy design: one frame per message).
    combine: bool,
}

impl OutboundStream {
    fn control(item: Outbound) -> WireMessage {
        match item {
            Outbound::Bind(id, k) => bind_msg(id, &k),
            Outbound::Unbind(id) => WireMessage {
                body: Some(Body::Unbind(Unbind { wire_id: id })),
            },
            Outbound::Batch(b) => WireMessage {
                body: Some(Body::Batches(Batches { batch: vec![b] })),
            },
        }
    }
}

impl Stream for OutboundStream {
    type Item = WireMessage;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WireMessage>> {
        use std::task::Poll;
        if self.superseded.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if let Some(m) = self.pending.pop_front() {
            return Poll::Ready(Some(m));
        }
        let first = match self.queue.poll_recv(cx) {
            Poll::Ready(Some(item)) => item,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let Outbound::Batch(b) = first else {
            return Poll::Ready(Some(Self::control(first)));
        };
        let mut size = b.len();
        let mut batch = vec![b];
        // Combine what is already queued, up to a bound: no waiting for more.
        while size < MESSAGE_BYTES && self.combine {
            match self.queue.try_recv() {
                Ok(Outbound::Batch(b)) => {
                    size += b.len();
                    batch.push(b);
                }
                Ok(other) => {
                    // Keep order: a Bind/Unbind goes right after the combined message.
                    self.pending.push_back(Self::control(other));
                    break;
                }
                Err(_) => break,
            }
        }
        Poll::Ready(Some(WireMessage {
            body: Some(Body::Batches(Batches { batch })),
        }))
    }
}

/// Resolves when a newer stream took over the shard (its generation moved past `mine`).
async fn superseded(rx: &mut watch::Receiver<u64>, mine: u64) {
    loop {
        if *rx.borrow_and_update() != mine {
            return;
        }
        if rx.changed().await.is_err() {
            // The shard is gone: its queue ends the stream instead.
            std::future::pending::<()>().await;
        }
    }
}

fn bind_msg(id: u32, k: &WireKey) -> WireMessage {
    WireMessage {
        body: Some(Body::Bind(Bind {
            wire_id: id,
            namespace: k.0.clone(),
            uid: k.1,
        })),
    }
}

/// The server side: accepts streams from peer nodes.
#[derive(Clone, Debug)]
pub struct WireService(pub Arc<WireNode>);

#[tonic::async_trait]
impl Wire for WireService {
    type CarryStream = Pin<Box<dyn Stream<Item = Result<WireMessage, Status>> + Send>>;

    async fn carry(
        &self,
        request: Request<Streaming<WireMessage>>,
    ) -> Result<Response<Self::CarryStream>, Status> {
        let node = &self.0;
        let remote: Option<SocketAddr> = request.remote_addr();
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(WireMessage {
                body: Some(Body::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a Hello",
                ));
            }
        };
        let claimed: IpAddr = hello
            .node_ip
            .parse()
            .map_err(|_| Status::invalid_argument("Hello.node_ip is not an IP address"))?;
        // The listener is dual-stack ([::]): an IPv4 peer arrives as ::ffff:a.b.c.d.
        if remote.map(|r| r.ip().to_canonical()) != Some(claimed) {
            return Err(Status::permission_denied(format!(
                "Hello says node {claimed}, but the connection comes from {remote:?}"
            )));
        }
        if !node
            .allowed
            .lock()
            .expect("allowed lock")
            .contains(&claimed)
        {
            return Err(Status::permission_denied(format!(
                "node {claimed} carries no wire with this node"
            )));
        }
        if hello.shards == 0 || hello.shards > MAX_SHARDS || hello.shard >= hello.shards {
            return Err(Status::invalid_argument("Hello.shard/shards out of range"));
        }
        let peer = node.peer_with(claimed, hello.shards);
        let Some(shard) = peer.shards.get(hello.shard as usize).cloned() else {
            return Err(Status::invalid_argument(format!(
                "shard {} unknown: this node uses {} shards toward {claimed}",
                hello.shard,
                peer.shards.len()
            )));
        };
        // A live stream is never displaced: a second connection for a busy shard is refused
        // (a restarted peer's old stream ends at once with its TCP connection, or within the
        // keepalive timeout, and the peer's dialler retries).
        if shard
            .connected
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Status::already_exists(format!(
                "shard {} of node {claimed} already has a live stream",
                hello.shard
            )));
        }
        peer.connects.increment(1);
        let out = node.outbound(Arc::clone(&shard), None).await;
        let (n2, p2, s2) = (Arc::clone(node), Arc::clone(&peer), Arc::clone(&shard));
        tokio::spawn(n2.on_stream(p2, s2, inbound));
        Ok(Response::new(Box::pin(out.map(Ok))))
    }

    /// Legacy unary design only (see "Legacy wire designs").
    async fn send(&self, request: Request<UnaryFrame>) -> Result<Response<Ack>, Status> {
        self.0.unary_receive(request).map(Response::new)
    }
}

// ================================================================================================
// Legacy wire designs — for the benchmarks only (`meshnet-bench`), never the default.
//
// `--wire-legacy per-frame|unary` (env MESHNET_WIRE_LEGACY) makes this wire reproduce, in our
// own code, the designs earlier gRPC wires use, so that `bench/` can show what batching and the
// virtio-net header are worth, measured against the same endpoints, daemons and lab:
//
// * `per-frame`: one frame per gRPC message on the long-lived stream — a batch holds one frame
//   and queued batches are never combined — and the TAP opened without offloads
//   (`Offloads::NONE`: the pod's stack segments and checksums every frame itself). Run it with
//   `--wire-shards 1` for one stream per node pair.
// * `unary`: as `per-frame`, but each frame goes in its own unary `Send` call, awaited before the
//   half reads its next frame, as the Go meshnet-cni wire did (one call per packet). Wire ids are
//   still bound on the `Carry` stream, which also carries the carrier state.
//
// Nothing above changes unless a legacy design is set: the default path only reads
// `design.legacy == WireLegacy::None` and `design.batch_frames()` (= BATCH_FRAMES).
// ================================================================================================

/// A legacy wire design to reproduce (benchmarks only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireLegacy {
    /// The product's design: batches, combined messages, offloads, sharded streams.
    #[default]
    None,
    /// One frame per stream message, no offloads on the TAP.
    PerFrame,
    /// One unary call per frame, no offloads on the TAP.
    Unary,
}

impl std::str::FromStr for WireLegacy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "none" => Ok(WireLegacy::None),
            "per-frame" => Ok(WireLegacy::PerFrame),
            "unary" => Ok(WireLegacy::Unary),
            other => Err(format!(
                "wire legacy design {other:?}: want none, per-frame or unary"
            )),
        }
    }
}

/// The frame endpoint of a wire half in the pod (`--wire-endpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointKind {
    /// A TAP in the pod (`tapio`).
    #[default]
    Tap,
    /// A veth whose pod end is the link and whose host end, in the node, is read and written
    /// with AF_PACKET (`afhalf`).
    AfPacket,
}

impl std::str::FromStr for EndpointKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "tap" => Ok(EndpointKind::Tap),
            "afpacket" | "af_packet" | "af-packet" => Ok(EndpointKind::AfPacket),
            other => Err(format!("wire endpoint {other:?}: want tap or afpacket")),
        }
    }
}

/// How this daemon's wire is built, beyond its addresses and shard count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireDesign {
    pub endpoint: EndpointKind,
    pub legacy: WireLegacy,
}

impl WireDesign {
    /// Frames read from a half into one batch.
    fn batch_frames(&self) -> usize {
        match self.legacy {
            WireLegacy::None => BATCH_FRAMES,
            WireLegacy::PerFrame | WireLegacy::Unary => 1,
        }
    }

    /// A finished batch as it goes into a message. The product sends the batch as it is; a
    /// legacy design copies its single frame into a buffer of its own size, as a per-frame
    /// protobuf message does — a batch shares the reader's 256 KiB arena, and one queued
    /// per-frame message would otherwise pin a whole arena.
    fn message_body(&self, batch: Bytes) -> Bytes {
        match self.legacy {
            WireLegacy::None => batch,
            WireLegacy::PerFrame | WireLegacy::Unary => Bytes::copy_from_slice(&batch),
        }
    }

    /// Offloads a half's TAP negotiates: all of them, or none in a legacy design.
    pub fn tap_offloads(&self) -> meshnet_wire::sys::tap::Offloads {
        match self.legacy {
            WireLegacy::None => meshnet_wire::sys::tap::Offloads::ALL,
            WireLegacy::PerFrame | WireLegacy::Unary => meshnet_wire::sys::tap::Offloads::NONE,
        }
    }
}

static DESIGN: OnceLock<WireDesign> = OnceLock::new();

/// Sets the process's wire design, once, before the daemon starts ([`WireNode::new`] reads it).
/// The binary calls it from its flags; a library user that never calls it gets the default.
///
/// # Errors
/// The design was set already (the one in effect is returned).
pub fn set_design(d: WireDesign) -> Result<(), WireDesign> {
    DESIGN.set(d)?;
    Ok(())
}

/// The process's wire design (default unless [`set_design`] was called).
pub fn design() -> WireDesign {
    DESIGN.get().copied().unwrap_or_default()
}

impl WireNode {
    /// Legacy unary design: sends one record in its own `Send` call and waits for the answer.
    /// Returns whether the peer took it.
    async fn unary_send(&self, peer: IpAddr, shard: u32, batch: Bytes) -> bool {
        let client = {
            let mut clients = self.unary.lock().expect("unary lock");
            match clients.get(&peer) {
                Some(c) => c.clone(),
                None => {
                    let url = match peer {
                        IpAddr::V4(a) => format!("http://{a}:{}", self.port),
                        IpAddr::V6(a) => format!("http://[{a}]:{}", self.port),
                    };
                    let Ok(ep) = tonic::transport::Endpoint::from_shared(url) else {
                        return false;
                    };
                    let c = WireClient::new(
                        ep.connect_timeout(Duration::from_secs(2))
                            .tcp_nodelay(true)
                            .connect_lazy(),
                    );
                    clients.insert(peer, c.clone());
                    c
                }
            }
        };
        let mut client = client;
        client
            .send(Request::new(UnaryFrame { shard, batch }))
            .await
            .is_ok()
    }

    /// Legacy unary design: a frame from a peer node, checked as a stream's would be (the caller
    /// must be a peer of one of our halves, and wire ids resolve only through that peer's binds).
    fn unary_receive(&self, request: Request<UnaryFrame>) -> Result<Ack, Status> {
        if self.design.legacy != WireLegacy::Unary {
            return Err(Status::unimplemented(
                "Send is the legacy unary design; this node does not run it",
            ));
        }
        let remote = request
            .remote_addr()
            .map(|a| a.ip().to_canonical())
            .ok_or_else(|| Status::permission_denied("no remote address"))?;
        if !self.allowed.lock().expect("allowed lock").contains(&remote) {
            return Err(Status::permission_denied(format!(
                "node {remote} carries no wire with this node"
            )));
        }
        let frame = request.into_inner();
        let peer = self
            .peers
            .lock()
            .expect("peers lock")
            .get(&remote)
            .cloned()
            .ok_or_else(|| Status::failed_precondition("no stream with this node yet"))?;
        let shard = peer
            .shards
            .get(frame.shard as usize)
            .cloned()
            .ok_or_else(|| Status::invalid_argument("shard out of range"))?;
        self.deliver(&peer, &shard, frame.batch);
        Ok(Ack {})
    }
}

#[cfg(test)]
mod legacy_tests {
    use super::*;

    #[test]
    fn parses_designs() {
        assert_eq!("".parse::<WireLegacy>(), Ok(WireLegacy::None));
        assert_eq!("per-frame".parse::<WireLegacy>(), Ok(WireLegacy::PerFrame));
        assert_eq!("UNARY".parse::<WireLegacy>(), Ok(WireLegacy::Unary));
        assert!("batch".parse::<WireLegacy>().is_err());
        assert_eq!(
            "afpacket".parse::<EndpointKind>(),
            Ok(EndpointKind::AfPacket)
        );
        assert_eq!("tap".parse::<EndpointKind>(), Ok(EndpointKind::Tap));
        assert!("xdp".parse::<EndpointKind>().is_err());
    }

    #[test]
    fn legacy_designs_send_single_frames_without_offloads() {
        let product = WireDesign::default();
        assert_eq!(product.batch_frames(), BATCH_FRAMES);
        assert_eq!(
            product.tap_offloads(),
            meshnet_wire::sys::tap::Offloads::ALL
        );
        for legacy in [WireLegacy::PerFrame, WireLegacy::Unary] {
            let d = WireDesign {
                legacy,
                ..WireDesign::default()
            };
            assert_eq!(d.batch_frames(), 1);
            assert_eq!(d.tap_offloads(), meshnet_wire::sys::tap::Offloads::NONE);
            // A legacy message owns a buffer of its own size, not a share of the arena.
            let arena = Bytes::from(vec![7u8; 4096]).slice(0..100);
            let body = d.message_body(arena.clone());
            assert_eq!(body, arena);
            assert_ne!(body.as_ptr(), arena.as_ptr());
        }
        let arena = Bytes::from(vec![7u8; 4096]).slice(0..100);
        assert_eq!(
            product.message_body(arena.clone()).as_ptr(),
            arena.as_ptr(),
            "the product sends the batch as it is"
        );
    }
}
