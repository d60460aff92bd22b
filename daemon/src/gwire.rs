//! The daemon's glue to the gRPC wire, which lives in `meshnet_wire::transport` (sessions,
//! pump, streams, TLS): this module only adapts it to the reconciler's vocabulary (link keys as
//! `(namespace, uid)`, the [`WireSpec`] of a half), says which endpoint kind the daemon makes
//! in pods, and exports the wire's counters as Prometheus metrics.
//!
//! Dependencies point one way: `reconcile` → `tapio` (make a half in a pod) → `afhalf` (the
//! AF_PACKET variant) → this module's types; this module imports neither.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use meshnet_wire::table::WireKey as LinkKey;
use meshnet_wire::transport::{self, HalfIo, WireOptions};
use tokio::sync::Notify;

use crate::links::EndSpec;
use meshnet_topology::impairment::ImpairSpec;

pub use meshnet_wire::transport::{Legacy as WireLegacy, LinkLabels, WireTls};

/// Identity of a wire as the reconciler names it: the link's namespace and uid.
pub type WireKey = (String, i64);

fn link_key(k: &WireKey) -> LinkKey {
    LinkKey::new(k.0.clone(), k.1)
}

/// The pod's half of a gRPC wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireSpec {
    pub key: WireKey,
    pub alias: String,
    pub end: EndSpec,
    pub mtu: u32,
    /// The peer pod's node, once the peer is alive.
    pub peer: Option<IpAddr>,
    pub labels: LinkLabels,
    /// The pod's port (`end` as a port): the wire is patched to its node end.
    pub port: crate::ports::PortSpec,
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

/// The node's wire, as the reconciler uses it.
#[derive(Debug)]
pub struct WireNode {
    inner: Arc<transport::WireNode>,
    endpoint: EndpointKind,
    /// Signalled when a carrier changes, so the reconciler updates link status.
    pub changed: Arc<Notify>,
}

impl WireNode {
    /// The node's wire with these options, making halves of `endpoint` kind. Starts the wire's
    /// background loops (peer-down accounting, re-announce tick, the low-latency mode's poll
    /// loop when it is on); needs a runtime.
    pub fn new(opts: WireOptions, endpoint: EndpointKind) -> Arc<Self> {
        let inner = transport::WireNode::new(opts);
        tokio::spawn(Arc::clone(&inner).account_loop());
        tokio::spawn(Arc::clone(&inner).tick_loop());
        tokio::spawn(Arc::clone(&inner).poll_loop());
        Arc::new(WireNode {
            changed: Arc::clone(&inner.changed),
            inner,
            endpoint,
        })
    }

    /// The transport, to serve (`meshnet_wire::transport::grpc::serve`).
    pub fn transport(&self) -> &Arc<transport::WireNode> {
        &self.inner
    }

    pub fn endpoint(&self) -> EndpointKind {
        self.endpoint
    }

    pub fn legacy(&self) -> WireLegacy {
        self.inner.options().legacy
    }

    /// Queues of the TAPs this node opens (one in a legacy design, which has one stream).
    pub fn tap_queues(&self) -> usize {
        match self.legacy() {
            WireLegacy::None => self.inner.options().queues.max(1),
            WireLegacy::PerFrame | WireLegacy::Unary => 1,
        }
    }

    /// Nodes allowed to connect: the peer nodes of every planned wire.
    pub fn set_allowed(&self, peers: HashSet<IpAddr>) {
        self.inner.set_allowed(peers);
    }

    /// Whether the half of `key` is present and its carrier up.
    pub fn carrier(&self, key: &WireKey) -> Option<bool> {
        self.inner.carrier(&link_key(key))
    }

    /// Whether the half of `key` is unbound because the far router shut its port.
    pub fn far_shut(&self, key: &WireKey) -> bool {
        self.inner.far_shut(&link_key(key))
    }

    /// Our router shut (or opened) the port of the half of `key`: see
    /// [`transport::WireNode::set_shut`].
    pub fn set_shut(&self, key: &WireKey, shut: bool, peer: Option<IpAddr>) {
        self.inner.set_shut(&link_key(key), shut, peer);
    }

    /// The ifindex of the half's interface, if the half is registered.
    pub fn ifindex(&self, key: &WireKey) -> Option<u32> {
        self.inner.ifindex(&link_key(key))
    }

    /// Registers (or updates) a half made by `tapio`/`afhalf`.
    pub fn register(&self, spec: &WireSpec, io: Arc<dyn HalfIo>, ifindex: u32) {
        self.inner.register(
            link_key(&spec.key),
            io,
            ifindex,
            spec.labels.clone(),
            spec.peer,
        );
    }

    /// Points a registered half at `peer`.
    pub fn update_peer(&self, key: &WireKey, peer: Option<IpAddr>) {
        self.inner.update_peer(&link_key(key), peer);
    }

    /// Puts the declared impairment of what the peer sends on the half of `key` (the wire
    /// applies it before our endpoint), or takes it off.
    pub fn set_impairment(&self, key: &WireKey, spec: Option<ImpairSpec>) {
        let spec = spec.map(|s| meshnet_wire::impair::Impairment {
            delay: s.delay,
            jitter: s.jitter,
            loss: s.loss,
            duplicate: s.duplicate,
            corrupt: s.corrupt,
            reorder: s.reorder,
            rate_bps: s.rate_bps,
        });
        self.inner.set_impairment(&link_key(key), spec);
    }

    /// Pulls (or plugs back) the cable of the half of `key`: its carrier goes off.
    pub fn set_pulled(&self, key: &WireKey, pulled: bool) {
        self.inner.set_pulled(&link_key(key), pulled);
    }

    /// Removes every half whose key is not in `keep`.
    pub fn retain(&self, keep: &HashSet<WireKey>) {
        let keep: HashSet<LinkKey> = keep.iter().map(link_key).collect();
        self.inner.retain(&keep);
    }

    /// Copies the wire's per-peer counters into the metrics registry (called before each
    /// scrape, so a scrape sees exactly what the wire counted); per-link series are
    /// [`Self::link_rows`].
    pub fn export_metrics(&self) {
        for p in self.inner.peer_stats() {
            let peer = p.peer.to_string();
            let set = |name: &'static str, v: u64| {
                metrics::counter!(name, "peer" => peer.clone()).absolute(v);
            };
            set("meshnet_wire_connects_total", p.connects);
            set("meshnet_wire_reconnects_total", p.reconnects);
            set("meshnet_wire_unknown_wire_frames_total", p.unknown_wire);
            set("meshnet_wire_malformed_batches_total", p.malformed);
            set("meshnet_wire_batches_total", p.batches);
            set("meshnet_wire_batch_frames_total", p.batch_frames);
            for (i, (tx, rx)) in p.shard_tx_frames.iter().zip(&p.shard_rx_frames).enumerate() {
                let labels = [("peer", peer.clone()), ("shard", i.to_string())];
                metrics::counter!("meshnet_wire_shard_tx_frames_total", &labels).absolute(*tx);
                metrics::counter!("meshnet_wire_shard_rx_frames_total", &labels).absolute(*rx);
            }
            for (i, up) in p.connected.iter().enumerate() {
                metrics::gauge!("meshnet_wire_connected", "peer" => peer.clone(), "shard" => i.to_string())
                    .set(if *up { 1.0 } else { 0.0 });
            }
        }
    }

    /// Every half's series as of now ([`crate::linkstats::families`] renders them at each
    /// scrape, so a half that goes takes its series with it). With TAP endpoints each row also
    /// carries `tap_queue`: the frames the kernel dropped at the link's TAP in the node because
    /// the wire did not read them in time (the TAP's `tx_dropped`; the pod's frames never
    /// reached the wire, so they are not in `tx`).
    pub fn link_rows(&self) -> Vec<crate::linkstats::Row> {
        let taps = (self.endpoint == EndpointKind::Tap)
            .then(|| std::fs::read_to_string("/proc/thread-self/net/dev").ok())
            .flatten()
            .map(|t| meshnet_wire::sys::tap::tx_dropped_all(&t))
            .unwrap_or_default();
        self.inner
            .link_stats()
            .into_iter()
            .map(|l| {
                let c = &l.counters;
                let tap = crate::ports::wire_tap_name(&l.labels.namespace, l.labels.uid);
                let mut drops: Vec<(&'static str, u64)> = c
                    .drops_by_reason()
                    .map(|(r, n)| (r.as_label(), n))
                    .collect();
                if let Some(n) = taps.get(&tap) {
                    drops.push(("tap_queue", *n));
                }
                crate::linkstats::Row {
                    labels: crate::linkstats::Labels {
                        namespace: l.labels.namespace,
                        pod: l.labels.pod,
                        interface: l.labels.interface,
                        peer_pod: l.labels.peer_pod,
                        uid: l.labels.uid,
                        kind: "grpc",
                    },
                    tx_frames: c.tx_frames,
                    tx_bytes: c.tx_bytes,
                    rx_frames: c.rx_frames,
                    rx_bytes: c.rx_bytes,
                    drops,
                    carrier: l.carrier,
                    admin_up: None,
                }
            })
            .collect()
    }
}
