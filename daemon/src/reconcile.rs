//! The node's reconciler: drives the kernel toward [`plan::plan_node`]'s plan and records the
//! outcome in each pod's status.
//!
//! Level-based, never edge-based: every run looks at the whole store, so it does not matter which
//! pod started first, whether an event was missed, or whether the daemon restarted in between
//! (DESIGN.md §4). Runs are serialised by one lock; CNI ADD/DEL/CHECK take the same lock, so a
//! pod is never plumbed and released at the same time. A memo of links known to be built keeps
//! event-driven runs from touching the kernel for links that did not change; the periodic
//! resync verifies every link against the kernel, rebuilds what is missing and applies a changed
//! declaration — never what the pod changed on its port (admin state, MTU, its own addresses;
//! see [`crate::links`]). Every side effect goes through [`LinkOps`] (unit tests: `tests.rs` on
//! the recording fake); a pod of this node whose namespace is gone is released like a DEL.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Mutex;

use crate::InterNodeLink;
use crate::beacon::{Beacon, FarEnd};
use crate::gwire::LinkLabels;
use crate::links::snapshot::Snapshot;
use crate::links::{
    self, EndSpec, LinkError, LinkFault, LinkOps, Mode, NodeIface, Outcome, SingleKind, SingleSpec,
    VethSpec,
};
use crate::plan::{self, Action, PodPlan};
use crate::ports::{self, Cable, Far, PortSpec};
use crate::qdisc::{Applied, QdiscError};
use crate::tapio::{DEFAULT_WIRE_MTU, WireSpec};
use crate::topology::{LOCALHOST, LinkDecl};
use meshnet_topology::impairment::{self, ImpairSpec};

/// UDP port of meshnet's VXLAN links (IANA).
pub const VXLAN_PORT: u16 = 4789;
use crate::store::{self, SharedStore, StoreError};
use crate::topology::{LinkState, LinkStatus, PodKey, Topology, TopologyStatus};

/// How many link operations run at once during a reconcile.
const PARALLEL_LINK_OPS: usize = 16;
/// A run over at least this many links reads the node's namespace in one dump up front.
const NODE_DUMP_FROM: usize = 32;

/// This node as the store knows it.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub name: String,
    pub ip: IpAddr,
}

/// Outcome of one link end in one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkResult {
    Up {
        kind: &'static str,
    },
    Pending(String),
    /// Declaration problem: reported, never retried until the Topology changes.
    Invalid(String),
    /// The kernel or the node refused; retried on the next run.
    Failed {
        kind: &'static str,
        fault: LinkFault,
        message: String,
    },
}

impl LinkResult {
    fn state(&self) -> LinkState {
        match self {
            LinkResult::Up { .. } => LinkState::Up,
            LinkResult::Pending(_) => LinkState::Pending,
            LinkResult::Invalid(_) | LinkResult::Failed { .. } => LinkState::Error,
        }
    }
    fn kind(&self) -> &'static str {
        match self {
            LinkResult::Up { kind } | LinkResult::Failed { kind, .. } => kind,
            _ => "",
        }
    }
    fn message(&self) -> String {
        match self {
            LinkResult::Up { .. } => String::new(),
            LinkResult::Pending(m) | LinkResult::Invalid(m) => m.clone(),
            LinkResult::Failed { message, .. } => message.clone(),
        }
    }
}

/// The result of one pod's links.
#[derive(Debug, Clone)]
pub struct PodReport {
    pub key: PodKey,
    pub links: Vec<(plan::LinkPlan, LinkResult)>,
    /// What each link end's declared impairment came to (by uid; absent: none declared).
    pub impairments: HashMap<i64, String>,
    /// State and message that replace a built link's `up` (by uid): a declared `state: down`.
    pub overrides: HashMap<i64, (LinkState, String)>,
}

impl PodReport {
    /// Status entries for the pod's Topology.
    pub fn statuses(&self) -> Vec<LinkStatus> {
        self.links
            .iter()
            .map(|(p, r)| LinkStatus {
                uid: p.uid,
                local_intf: p.local_intf.clone(),
                peer_pod: p.peer_pod.clone(),
                kind: r.kind().to_string(),
                state: self.overrides.get(&p.uid).map_or(r.state(), |o| o.0),
                message: self
                    .overrides
                    .get(&p.uid)
                    .map_or_else(|| r.message(), |o| o.1.clone()),
                impairment: self.impairments.get(&p.uid).cloned().unwrap_or_default(),
            })
            .collect()
    }
}

/// Errors of a reconcile run or a CNI operation; the local API maps each to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("link uid {uid} ({local_intf}) of pod {pod}: {message}")]
    Link {
        pod: PodKey,
        uid: i64,
        local_intf: String,
        fault: LinkFault,
        message: String,
    },
    /// CHECK for a sandbox that is not the one recorded (or a pod not alive).
    #[error("pod {pod} is not recorded with sandbox {container_id} (status has {recorded:?})")]
    NotRecorded {
        pod: PodKey,
        container_id: String,
        recorded: String,
    },
    #[error("pod {pod} is recorded on node {src_ip}, not this node")]
    NotOnThisNode { pod: PodKey, src_ip: String },
    /// The pod's Topology was deleted while its ADD ran.
    #[error("pod {pod} vanished from the store during ADD")]
    VanishedDuringAdd { pod: PodKey },
}

#[derive(Debug, Default)]
struct Memo {
    /// Links known built on this node, by (namespace, uid).
    built: HashMap<(String, i64), Work>,
    /// CNI_IFNAME per pod, learned from ADD.
    primary_if: HashMap<PodKey, String>,
    /// (container id, spec) per pod at its last stale-interface sweep.
    swept: HashMap<PodKey, (String, String)>,
    /// The node-side devices planned at the last sweep of the node's namespace.
    node_swept: Option<Vec<(String, String)>>,
    /// Per kernel link end (netns, ifname): the impairment last put on its egress and the
    /// status note it gave, so that a resync does not replace a qdisc (and lose its queue)
    /// whose declaration did not change. Forgotten when the end's link is rebuilt.
    impaired: HashMap<(PathBuf, String), (Option<ImpairSpec>, String)>,
    /// Per kernel link end: whether its cable is pulled (`state: down`, protodown set).
    pulled: HashMap<(PathBuf, String), bool>,
}

impl Memo {
    /// Forgets the links with an end in `net_ns`, so the next run checks them in the kernel.
    fn forget_netns(&mut self, namespace: &str, net_ns: &str) {
        self.built.retain(|(ns, _), w| {
            let touches = match w {
                Work::Patch(s) => {
                    s.a.netns.as_os_str() == net_ns || s.b.netns.as_os_str() == net_ns
                }
                Work::Port(s, _) | Work::Carried(s, _) => s.end.netns.as_os_str() == net_ns,
                Work::Single(s) => s.end.netns.as_os_str() == net_ns,
                Work::Wire(s) => s.end.netns.as_os_str() == net_ns,
                Work::Done(_) => false,
            };
            !(ns == namespace && touches)
        });
    }
}

/// See the module documentation.
pub struct Reconciler {
    node: NodeIdentity,
    store: SharedStore,
    ops: Arc<dyn LinkOps>,
    inter_node: InterNodeLink,
    /// `HOST_INTF`: the underlay for VXLAN; else the interface holding the node address.
    host_intf: Option<String>,
    /// `MESHNET_DEFAULT_MTU`: the MTU of links that declare none (set once, at start).
    default_mtu: std::sync::OnceLock<u32>,
    memo: Mutex<Memo>,
    /// The pod ends of the kernel links (veth, vxlan, macvlan) that are up, as of the last run:
    /// what `/metrics` reports (its own lock, so a scrape never waits for a run).
    kernel_links: std::sync::Mutex<Vec<crate::linkstats::KernelLink>>,
    /// VXLAN links' far ends ([`crate::beacon`]); `None`: their carrier does not follow them.
    beacon: Option<Arc<Beacon>>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Whether a run trusts its memo or checks every link in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Touch the kernel only for links whose spec changed.
    Changes,
    /// Verify (and repair) every link and sweep every pod for stale interfaces.
    Full,
}

impl Reconciler {
    /// `ops` carries every side effect, the gRPC wire's halves included (see [`LinkOps`]).
    pub fn new(
        node: NodeIdentity,
        store: SharedStore,
        ops: Arc<dyn LinkOps>,
        inter_node: InterNodeLink,
        host_intf: Option<String>,
    ) -> Self {
        Reconciler {
            node,
            store,
            ops,
            inter_node,
            host_intf,
            default_mtu: std::sync::OnceLock::new(),
            memo: Mutex::new(Memo::default()),
            kernel_links: std::sync::Mutex::new(Vec::new()),
            beacon: None,
        }
    }

    /// VXLAN ends' carrier follows their far end as `beacon` judges it (peers are told on the
    /// beacon's own port).
    #[must_use]
    pub fn with_beacon(mut self, beacon: Arc<Beacon>) -> Self {
        self.beacon = Some(beacon);
        self
    }

    /// The pod ends of the kernel links that were up after the last run.
    pub fn kernel_links(&self) -> Vec<crate::linkstats::KernelLink> {
        self.kernel_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Links that declare no MTU get `mtu` (see [`crate::underlay::apply_default_mtu`]). A
    /// node-wide setting: only the first call counts.
    pub fn set_default_mtu(&self, mtu: Option<u32>) {
        if let Some(m) = mtu {
            let _ = self.default_mtu.set(m);
        }
    }

    pub fn node(&self) -> &NodeIdentity {
        &self.node
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// One reconcile run over every pod of this node.
    ///
    /// # Errors
    /// Only if the store cannot be listed; link failures are reported per link.
    pub async fn run(&self, depth: Depth) -> Result<Vec<PodReport>, ReconcileError> {
        let mut memo = self.memo.lock().await;
        self.run_locked(&mut memo, depth).await
    }

    /// A link's result, with a wire's carrier taken into account: a wire is up only when the
    /// peer's half is connected.
    fn wire_result(&self, w: Work, failed: &HashMap<String, (LinkFault, String)>) -> LinkResult {
        if let Work::Wire(spec) = &w
            && !failed.contains_key(&spec.alias)
        {
            return match self.ops.half_carrier(&spec.key) {
                Some(true) => LinkResult::Up { kind: "grpc" },
                _ => LinkResult::Pending(match spec.peer {
                    Some(ip) => format!(
                        "half ready, carrier down: waiting for the peer's half on node {ip}"
                    ),
                    None => "half ready, carrier down: waiting for the peer pod".to_string(),
                }),
            };
        }
        w.result(failed)
    }

    /// Turns the pure plan into work for this node: applies the inter-node link type, the
    /// underlay, node interfaces for macvlan and the VNI uniqueness rule. Parallel to `plans`.
    async fn resolve(&self, plans: &[PodPlan]) -> Vec<Vec<Work>> {
        let mut defaulted = Vec::new();
        let plans = match self.default_mtu.get().copied() {
            Some(mtu) => {
                defaulted.extend_from_slice(plans);
                crate::underlay::apply_default_mtu(&mut defaulted, mtu);
                &defaulted[..]
            }
            None => plans,
        };
        let mut underlay: Option<Result<NodeIface, String>> = None;
        let mut parents: HashMap<String, Result<NodeIface, String>> = HashMap::new();
        let mut out = Vec::with_capacity(plans.len());
        for p in plans {
            let mut works = Vec::with_capacity(p.links.len());
            for l in &p.links {
                let w = match &l.action {
                    Action::Veth(spec) => Work::Patch(spec.clone()),
                    // With the gRPC wire a half needs no peer: the pod gets its interface now,
                    // carrier down until the peer's half connects.
                    Action::Pending { decl, .. } if self.inter_node == InterNodeLink::Grpc => {
                        wire_work(p, l, decl, None)
                    }
                    // The pod's port is there while the link is declared, carrier off until the
                    // far end is (a survivor keeps its port while its peer is away).
                    Action::Pending { reason, decl } => {
                        Work::Port(port_work(p, l, decl), reason.clone())
                    }
                    Action::Invalid(m) => Work::Done(LinkResult::Invalid(m.clone())),
                    Action::Macvlan { parent, end, mtu } => {
                        if !parents.contains_key(parent) {
                            let r = match self.ops.node_iface(Some(parent), self.node.ip).await {
                                Ok(Some(i)) => Ok(i),
                                Ok(None) => {
                                    Err(format!("node interface {parent:?} (peer_intf) not found"))
                                }
                                Err(e) => Err(e.to_string()),
                            };
                            parents.insert(parent.clone(), r);
                        }
                        match &parents[parent] {
                            Err(m) => Work::Done(LinkResult::Failed {
                                kind: "macvlan",
                                fault: LinkFault::Node,
                                message: m.clone(),
                            }),
                            Ok(i) => Work::Single(SingleSpec {
                                alias: links::alias(
                                    &p.key.namespace,
                                    l.uid,
                                    "macvlan",
                                    &format!("{}-{}", i.index, plan::short(&p.container_id)),
                                ),
                                kind: SingleKind::Macvlan { parent: i.index },
                                mtu: *mtu,
                                end: end.clone(),
                            }),
                        }
                    }
                    Action::Remote { peer_node_ip, decl } => match self.inter_node {
                        InterNodeLink::Grpc => match peer_node_ip.parse::<IpAddr>() {
                            Ok(ip) => wire_work(p, l, decl, Some(ip)),
                            Err(_) => Work::Done(LinkResult::Failed {
                                kind: "grpc",
                                fault: LinkFault::Node,
                                message: format!(
                                    "peer node address {peer_node_ip:?} is not an IP address"
                                ),
                            }),
                        },
                        InterNodeLink::Vxlan => {
                            if underlay.is_none() {
                                underlay = Some(
                                    match self
                                        .ops
                                        .node_iface(self.host_intf.as_deref(), self.node.ip)
                                        .await
                                    {
                                        Ok(Some(i)) => Ok(i),
                                        Ok(None) => Err(match &self.host_intf {
                                            Some(n) => format!(
                                                "underlay interface {n:?} (HOST_INTF) not found"
                                            ),
                                            None => format!(
                                                "no interface holds the node address {} (set HOST_INTF)",
                                                self.node.ip
                                            ),
                                        }),
                                        Err(e) => Err(e.to_string()),
                                    },
                                );
                            }
                            match underlay.as_ref().expect("set just above") {
                                Err(m) => Work::Done(LinkResult::Failed {
                                    kind: "vxlan",
                                    fault: LinkFault::Node,
                                    message: m.clone(),
                                }),
                                Ok(u) => vxlan_work(&self.node.ip, p, l.uid, peer_node_ip, decl, u),
                            }
                        }
                    },
                };
                works.push(w);
            }
            out.push(works);
        }
        refuse_vni_clashes(plans, &mut out);
        out
    }

    async fn run_locked(
        &self,
        memo: &mut Memo,
        depth: Depth,
    ) -> Result<Vec<PodReport>, ReconcileError> {
        let started = Instant::now();
        let mut topos = self.store.list().await?;
        self.release_vanished(memo, &mut topos).await;
        let plans = plan::plan_node(&self.node.ip, &topos, &memo.primary_if);
        let works = self.resolve(&plans).await;

        // Build each distinct link once (a veth appears in both pods' plans).
        let mut todo: Vec<(LinkKey, Work)> = Vec::new();
        let mut seen = HashSet::new();
        for (p, ws) in plans.iter().zip(&works) {
            for (l, w) in p.links.iter().zip(ws) {
                if matches!(w, Work::Done(_)) {
                    continue;
                }
                let k = (p.key.namespace.clone(), l.uid);
                if seen.insert(k.clone()) && (depth == Depth::Full || memo.built.get(&k) != Some(w))
                {
                    todo.push((k, w.clone()));
                }
            }
        }
        // Every namespace this run touches is read once up front instead of once per link; the
        // node's too when the run looks at many links (every full run): its node ends, devices
        // and TAPs are then looked up in one dump instead of two requests each.
        let mut namespaces: HashSet<PathBuf> =
            todo.iter().flat_map(|(_, w)| w.netns()).cloned().collect();
        if depth == Depth::Full || todo.len() >= NODE_DUMP_FROM {
            namespaces.insert(PathBuf::from(ports::NODE_NETNS));
        }
        let snapshot = self.ops.snapshot(namespaces.into_iter().collect()).await;
        let snap = &snapshot;
        let results: Vec<(LinkKey, Work, Result<Outcome, LinkError>)> = futures::stream::iter(todo)
            .map(|(k, w)| async move {
                let r = self.ensure(snap, &w, Mode::Repair).await;
                (k, w, r)
            })
            .buffer_unordered(PARALLEL_LINK_OPS)
            .collect()
            .await;
        let mut failed: HashMap<String, (LinkFault, String)> = HashMap::new();
        for (k, w, r) in results {
            if !matches!(r, Ok(Outcome::Unchanged)) {
                // Every kind of link has node-side interfaces (node ends, devices, TAPs).
                snapshot.touched(Path::new(ports::NODE_NETNS));
                for ns in w.netns() {
                    snapshot.touched(ns);
                    memo.impaired.retain(|(n, _), _| n != ns);
                    memo.pulled.retain(|(n, _), _| n != ns);
                }
            }
            let (kind, alias) = (w.kind(), w.alias().unwrap_or_default().to_string());
            match r {
                Ok(outcome) => {
                    if outcome != Outcome::Unchanged {
                        tracing::info!(%alias, kind, ?outcome, "link ready");
                        metrics::counter!("meshnet_links_plumbed_total", "kind" => kind)
                            .increment(1);
                    }
                    memo.built.insert(k, w);
                }
                Err(e) => {
                    tracing::warn!(%alias, kind, error = %e, "link failed");
                    metrics::counter!("meshnet_link_errors_total", "kind" => kind).increment(1);
                    memo.built.remove(&k);
                    failed.insert(alias, (e.fault(), e.to_string()));
                }
            }
        }
        // Forget memo entries for links no longer planned (peer gone, spec changed).
        memo.built.retain(|k, _| seen.contains(k));
        let planned: HashSet<LinkKey> = plans
            .iter()
            .flat_map(|p| p.links.iter().map(|l| (p.key.namespace.clone(), l.uid)))
            .collect();
        self.sweep_node(&snapshot, memo, &works, &planned, depth)
            .await;
        if self.inter_node == InterNodeLink::Grpc {
            let mut halves = HashSet::new();
            let mut peers = HashSet::new();
            for w in works.iter().flatten() {
                if let Work::Wire(spec) = w {
                    halves.insert(spec.key.clone());
                    peers.extend(spec.peer);
                }
            }
            self.ops.retain_halves(&halves, peers);
        }

        let mut reports = Vec::new();
        let mut kernel_links = Vec::new();
        let mut cables: Vec<Cable> = Vec::new();
        let mut impaired_seen = HashSet::new();
        let mut far_ends = FarEnds::default();
        for (p, ws) in plans.iter().zip(works) {
            self.sweep_stale(&snapshot, memo, p, &ws, &topos, depth)
                .await;
            let first_cable = cables.len();
            for w in &ws {
                let (mine, far) = match w {
                    Work::Patch(s) => {
                        let i = usize::from(s.a.netns.as_os_str() != p.net_ns.as_str());
                        let far = (!failed.contains_key(&s.alias))
                            .then(|| Far::Port(s.ports[1 - i].1.clone()));
                        (s.port(i), far)
                    }
                    Work::Port(s, _) => (s.clone(), None),
                    Work::Carried(port, dev) => {
                        let far = (!failed.contains_key(&dev.alias))
                            .then(|| Far::Device(dev.end.ifname.clone()));
                        (port.clone(), far)
                    }
                    Work::Wire(s) => (
                        s.port.clone(),
                        (!failed.contains_key(&s.alias)).then_some(Far::Wire),
                    ),
                    _ => continue,
                };
                cables.push(Cable {
                    node: mine.node,
                    pod: (mine.end.netns, mine.end.ifname),
                    far,
                    pulled: false,
                });
            }
            // VXLAN links' far nodes: the beacon tells them this end's state and hears theirs.
            let remotes: HashMap<i64, IpAddr> = p
                .links
                .iter()
                .zip(&ws)
                .filter_map(|(l, w)| match w {
                    Work::Carried(
                        _,
                        SingleSpec {
                            kind: SingleKind::Vxlan { remote, .. },
                            ..
                        },
                    ) => Some((l.uid, *remote)),
                    _ => None,
                })
                .collect();
            let mut report = PodReport {
                key: p.key.clone(),
                links: p
                    .links
                    .iter()
                    .cloned()
                    .zip(ws.into_iter().map(|w| self.wire_result(w, &failed)))
                    .collect(),
                impairments: HashMap::new(),
                overrides: HashMap::new(),
            };
            for (l, r) in &report.links {
                if let LinkResult::Up {
                    kind: kind @ ("veth" | "vxlan" | "macvlan"),
                } = r
                {
                    let end = (PathBuf::from(&p.net_ns), l.local_intf.clone());
                    let note = self.impair_end(memo, &end, &topos, &p.key, l).await;
                    if !note.is_empty() {
                        report.impairments.insert(l.uid, note);
                    }
                    let key = (p.key.namespace.clone(), l.uid);
                    let far = match remotes.get(&l.uid) {
                        Some(remote) => {
                            self.track_far_end(
                                &mut far_ends,
                                &key,
                                *remote,
                                &end,
                                &topos,
                                &p.key,
                                l,
                            );
                            self.far_end_down(&key)
                        }
                        // A same-node port: the patchbay says whether the far router shut
                        // its port.
                        None => cables[first_cable..]
                            .iter()
                            .find(|c| c.pod == end && self.ops.far_port_shut(&c.node))
                            .map(|_| FarNote::Off(FAR_PORT_SHUT.to_string())),
                    };
                    if let Some(o) = self
                        .cable_state(memo, &end, kind, &topos, &p.key, l, far)
                        .await
                    {
                        report.overrides.insert(l.uid, o);
                    }
                    impaired_seen.insert(end);
                } else if matches!(r, LinkResult::Pending(_))
                    && self.ops.half_far_shut(&(p.key.namespace.clone(), l.uid))
                {
                    // A wire half the peer unbound because its router shut its port.
                    report
                        .overrides
                        .insert(l.uid, (LinkState::Down, FAR_PORT_SHUT.to_string()));
                } else if let LinkResult::Up { kind: "grpc" } = r {
                    let end = (PathBuf::from(&p.net_ns), l.local_intf.clone());
                    let key = (p.key.namespace.clone(), l.uid);
                    let (note, over) = self.drive_half(memo, &end, &key, &topos, &p.key, l);
                    if !note.is_empty() {
                        report.impairments.insert(l.uid, note);
                    }
                    if let Some(o) = over {
                        report.overrides.insert(l.uid, o);
                    }
                    impaired_seen.insert(end);
                }
            }
            for c in &mut cables[first_cable..] {
                c.pulled = memo.pulled.get(&c.pod) == Some(&true);
            }
            self.write_status(p, &report).await;
            for (l, r) in &report.links {
                if let LinkResult::Up {
                    kind: kind @ ("veth" | "vxlan" | "macvlan"),
                } = r
                {
                    kernel_links.push(crate::linkstats::KernelLink {
                        labels: crate::linkstats::Labels {
                            namespace: p.key.namespace.clone(),
                            pod: p.key.name.clone(),
                            interface: l.local_intf.clone(),
                            peer_pod: l.peer_pod.clone(),
                            uid: l.uid,
                            kind,
                        },
                        netns: PathBuf::from(&p.net_ns),
                    });
                }
            }
            reports.push(report);
        }
        memo.impaired.retain(|k, _| impaired_seen.contains(k));
        memo.pulled.retain(|k, _| impaired_seen.contains(k));
        self.ops.set_cables(cables);
        if let Some(b) = &self.beacon {
            b.retain(&far_ends.links);
            self.ops.watch_ports(far_ends.netns);
        }
        *self
            .kernel_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = kernel_links;
        metrics::counter!("meshnet_reconcile_runs_total").increment(1);
        metrics::histogram!("meshnet_reconcile_seconds").record(started.elapsed().as_secs_f64());
        Ok(reports)
    }

    /// Puts what the two ends declare for this end's egress on a kernel link end (`end` =
    /// its namespace and interface), unless the memo says it is already there; returns the
    /// status note: what is in place and how, or why it is not. An invalid or clashing
    /// declaration removes meshnet's qdisc and says why; the link itself stays up.
    async fn impair_end(
        &self,
        memo: &mut Memo,
        end: &(PathBuf, String),
        topos: &[Topology],
        pod: &PodKey,
        l: &plan::LinkPlan,
    ) -> String {
        let [(own, _), (peer, _)] = Self::declarations(topos, pod, l);
        let (want, refused) = match impairment::egress(own, peer) {
            Ok(w) => (w, None),
            Err(e) => (None, Some(e)),
        };
        let refused_note = refused.as_ref().map(|e| format!("not applied: {e}"));
        match memo.impaired.get(end) {
            Some((spec, note)) if *spec == want && refused.is_none() => return note.clone(),
            // The same refusal as last run: already taken off and said.
            Some((None, note)) if refused_note.as_ref() == Some(note) => return note.clone(),
            // First sight of an end with nothing declared: nothing to take off (a qdisc of ours
            // from before a daemon restart stays until the port is rebuilt or a declaration comes).
            None if want.is_none() && refused.is_none() => {
                memo.impaired.insert(end.clone(), (None, String::new()));
                return String::new();
            }
            _ => {}
        }
        let applied = self.ops.impair(&end.0, &end.1, want).await;
        let (note, settled) = match (applied, refused) {
            (Ok(_), Some(_)) => (refused_note.unwrap_or_default(), true),
            (Ok(Applied::None), None) => (String::new(), true),
            (Ok(Applied::Full(kind)), None) => {
                (format!("{} ({kind})", want.unwrap_or_default()), true)
            }
            (Ok(Applied::RateOnly { missing }), None) => {
                let rate = ImpairSpec {
                    rate_bps: want.and_then(|w| w.rate_bps),
                    ..ImpairSpec::default()
                };
                (format!("{rate} (tbf); not applied: {missing}"), true)
            }
            // Permanent for this port: remembered, not retried every run.
            (Err(e @ (QdiscError::Unsupported { .. } | QdiscError::Foreign { .. })), _) => {
                (format!("not applied: {e}"), true)
            }
            (Err(e), _) => (format!("not applied: {e}"), false),
        };
        if !note.is_empty() {
            tracing::info!(netns = %end.0.display(), ifname = %end.1, impairment = %note, "impairment");
        }
        if settled {
            memo.impaired.insert(end.clone(), (want, note.clone()));
        } else {
            memo.impaired.remove(end);
        }
        note
    }

    /// The two declarations of a link, as (own, peer's) `(impairment, state)`.
    fn declarations<'t>(
        topos: &'t [Topology],
        pod: &PodKey,
        l: &plan::LinkPlan,
    ) -> [(Option<&'t impairment::Impairment>, &'t str); 2] {
        let declared = |key: &PodKey| {
            topos
                .iter()
                .find(|t| t.key() == *key)
                .and_then(|t| t.spec.links.iter().find(|x| x.uid == l.uid))
                .map_or((None, ""), |x| (x.impairment.as_ref(), x.state.as_str()))
        };
        let peer = if l.peer_pod == LOCALHOST {
            (None, "")
        } else {
            declared(&PodKey::new(&pod.namespace, &l.peer_pod))
        };
        [declared(pod), peer]
    }

    /// A gRPC wire end: the wire applies, in this node, the impairment of what the *peer*
    /// sends (before our endpoint) — the peer's node does the same for what we send, from the
    /// same two declarations — and pulls this half's cable on a declared `state: down`. Returns
    /// the status note (this end's egress, as for kernel links) and the state override.
    fn drive_half(
        &self,
        memo: &mut Memo,
        end: &(PathBuf, String),
        key: &crate::gwire::WireKey,
        topos: &[Topology],
        pod: &PodKey,
        l: &plan::LinkPlan,
    ) -> (String, Option<(LinkState, String)>) {
        let [(own_i, own_s), (peer_i, peer_s)] = Self::declarations(topos, pod, l);
        let incoming = impairment::egress(peer_i, own_i).ok().flatten();
        let note = match impairment::egress(own_i, peer_i) {
            Ok(Some(out)) => format!("{out} (wire)"),
            Ok(None) => String::new(),
            Err(e) => format!("not applied: {e}"),
        };
        if memo.impaired.get(end).map(|(s, _)| *s) != Some(incoming) {
            if incoming.is_some() || memo.impaired.contains_key(end) {
                self.ops.impair_half(key, incoming);
            }
            memo.impaired.insert(end.clone(), (incoming, note.clone()));
        }
        let who = match pulled_by(pod, l, own_s, peer_s) {
            Ok(who) => who,
            Err(e) => return (note, Some((LinkState::Error, e))),
        };
        let down = who.is_some();
        if memo.pulled.get(end) != Some(&down) {
            if down || memo.pulled.contains_key(end) {
                self.ops.pull_half(key, down);
            }
            memo.pulled.insert(end.clone(), down);
        }
        (
            note,
            who.map(|who| (LinkState::Down, format!("state: down (declared by {who})"))),
        )
    }

    /// A declared `state: down` (on either end's declaration) pulls the cable: the end's
    /// carrier goes off without touching its admin state, which stays the pod's — by the
    /// protocol-down flag on a macvlan end, by the node end's admin state on a port (same-node
    /// and VXLAN links: recorded here, applied by [`ports::Patchbay`]). Returns the state and
    /// message that replace `up`: `down` where the cable is pulled.
    ///
    /// `far` is why a VXLAN link's far end takes this end's carrier off
    /// ([`Self::far_end_down`]), if it does: the port's node end goes down as for a pulled
    /// cable; a declaration is named first.
    #[allow(clippy::too_many_arguments)]
    async fn cable_state(
        &self,
        memo: &mut Memo,
        end: &(PathBuf, String),
        kind: &str,
        topos: &[Topology],
        pod: &PodKey,
        l: &plan::LinkPlan,
        far: Option<FarNote>,
    ) -> Option<(LinkState, String)> {
        let [(_, own), (_, peer)] = Self::declarations(topos, pod, l);
        let who = match pulled_by(pod, l, own, peer) {
            Ok(who) => who,
            Err(e) => return Some((LinkState::Error, e)),
        };
        let declared = who.is_some();
        let far_down = matches!(far, Some(FarNote::Down(_)));
        let down = declared || far_down;
        let who = who.unwrap_or_default();
        if kind == "veth" || kind == "vxlan" {
            // The patchbay takes the port's node end down (see `ports`), from the cable table
            // this run hands it.
            memo.pulled.insert(end.clone(), down);
        } else {
            match memo.pulled.get(end) {
                Some(&d) if d == down => {}
                // First sight of an end nobody pulled: nothing to switch back on.
                None if !down => {
                    memo.pulled.insert(end.clone(), false);
                }
                _ => match self.ops.set_protodown(&end.0, &end.1, down).await {
                    Ok(()) => {
                        tracing::info!(netns = %end.0.display(), ifname = %end.1, down, "cable");
                        memo.pulled.insert(end.clone(), down);
                    }
                    Err(e) => {
                        memo.pulled.remove(end);
                        return Some((LinkState::Error, format!("state: down not applied: {e}")));
                    }
                },
            }
        }
        if declared {
            return Some((LinkState::Down, format!("state: down (declared by {who})")));
        }
        match far {
            Some(FarNote::Down(m) | FarNote::Off(m)) => Some((LinkState::Down, m)),
            Some(FarNote::Unheard(m)) => Some((LinkState::Up, m)),
            None => None,
        }
    }

    /// Tells the beacon about a VXLAN end toward `remote`: this side's port is up unless the
    /// pod shut it (admin down), it is missing, or this pod declares `state: down`.
    #[allow(clippy::too_many_arguments)]
    fn track_far_end(
        &self,
        far_ends: &mut FarEnds,
        key: &LinkKey,
        remote: IpAddr,
        end: &(PathBuf, String),
        topos: &[Topology],
        pod: &PodKey,
        l: &plan::LinkPlan,
    ) {
        let Some(b) = &self.beacon else { return };
        let [(_, own), _] = Self::declarations(topos, pod, l);
        let admin = self.ops.port_admin_up(&end.0, &end.1);
        let local_up = admin.unwrap_or(true) && own != "down";
        let h = meshnet_wire::table::link_hash(&key.0, key.1);
        b.track(h, std::net::SocketAddr::new(remote, b.port()), local_up);
        far_ends.links.insert(h);
        far_ends.netns.insert(end.0.clone());
    }

    /// Why link `key`'s far end takes this end's carrier off (`Down`), or a note that it is not
    /// heard at all (`Unheard`, after a grace period: the carrier stays on, see
    /// [`crate::beacon`]); `None` when the far end is up or no beacon runs. The one place the
    /// beacon's judgement becomes a carrier decision.
    fn far_end_down(&self, key: &LinkKey) -> Option<FarNote> {
        let b = self.beacon.as_ref()?;
        let v = b.verdict(meshnet_wire::table::link_hash(&key.0, key.1))?;
        let since = crate::beacon::clock(v.since);
        match v.far {
            FarEnd::Up => None,
            FarEnd::Silent => Some(FarNote::Down(format!(
                "carrier off: far end silent since {since} (no beacon from its node on UDP {})",
                b.port()
            ))),
            FarEnd::PortDown => Some(FarNote::Down(format!(
                "{FAR_PORT_SHUT}, or it has none (since {since})"
            ))),
            FarEnd::Unknown => {
                (v.since.elapsed().unwrap_or_default() >= UNHEARD_GRACE).then(|| {
                    FarNote::Unheard(format!(
                        "far end not heard on UDP {} (its daemon predates beacons, or the port is \
                     blocked): carrier does not follow it",
                        b.port()
                    ))
                })
            }
        }
    }

    /// Treats a pod of this node whose recorded namespace no longer exists (its sandbox was
    /// removed while the daemon was down, so no DEL reached us) as gone: its status is cleared
    /// as a DEL would, and `topos` shows it not alive, so its peers go pending instead of its
    /// links failing with "No such file or directory" on every run.
    async fn release_vanished(&self, memo: &mut Memo, topos: &mut [Topology]) {
        for t in topos.iter_mut() {
            let s = &t.status;
            if !s.is_alive()
                || !crate::topology::same_node(&s.src_ip, &self.node.ip)
                || self.ops.netns_exists(Path::new(&s.net_ns))
            {
                continue;
            }
            let key = t.key();
            tracing::info!(pod = %key, net_ns = %s.net_ns, container_id = %s.container_id,
                "the pod's network namespace is gone: releasing it");
            if let Err(e) = clear_status(self.store.as_ref(), &key, &s.container_id).await {
                tracing::warn!(pod = %key, error = %e, "cannot release a vanished pod");
            }
            memo.forget_netns(&key.namespace, &s.net_ns);
            memo.swept.remove(&key);
            memo.primary_if.remove(&key);
            t.status = TopologyStatus {
                skipped: std::mem::take(&mut t.status.skipped),
                ..TopologyStatus::default()
            };
        }
    }

    /// Builds (or checks) one link through [`LinkOps`].
    async fn ensure(&self, snap: &Snapshot, w: &Work, mode: Mode) -> Result<Outcome, LinkError> {
        match w {
            Work::Patch(spec) => {
                let (a, b) = (spec.port(0), spec.port(1));
                let oa = self.ops.ensure_port(snap, &a, mode).await?;
                let ob = self.ops.ensure_port(snap, &b, mode).await?;
                let op = self.ops.ensure_patch(snap, &a.node, &b.node, mode).await?;
                Ok(most(&[oa, ob, op]))
            }
            Work::Port(spec, _) => self.ops.ensure_port(snap, spec, mode).await,
            Work::Carried(port, dev) => {
                let op = self.ops.ensure_port(snap, port, mode).await?;
                let od = self.ops.ensure_single(snap, dev, mode).await?;
                let pp = self
                    .ops
                    .ensure_patch(snap, &port.node, &dev.end.ifname, mode)
                    .await?;
                Ok(most(&[op, od, pp]))
            }
            Work::Single(spec) => self.ops.ensure_single(snap, spec, mode).await,
            Work::Wire(spec) => self.ops.ensure_half(snap, spec, mode).await,
            Work::Done(_) => Ok(Outcome::Unchanged),
        }
    }

    /// Removes meshnet interfaces in a pod that its plan no longer has (link removed from the
    /// Topology, peer gone, peer sandbox replaced). Done when the pod's spec, sandbox or set of
    /// built links changed, and on full runs.
    async fn sweep_stale(
        &self,
        snap: &Snapshot,
        memo: &mut Memo,
        p: &PodPlan,
        works: &[Work],
        topos: &[Topology],
        depth: Depth,
    ) {
        let mut keep: Vec<(String, String)> = p
            .links
            .iter()
            .zip(works)
            .filter_map(|(l, w)| {
                w.iface_alias(Path::new(&p.net_ns))
                    .map(|a| (l.local_intf.clone(), a.to_string()))
            })
            .collect();
        keep.sort();
        let spec = topos
            .iter()
            .find(|t| t.key() == p.key)
            .map(|t| serde_json::to_string(&t.spec).unwrap_or_default())
            .unwrap_or_default();
        let fingerprint = (p.container_id.clone(), format!("{spec}{keep:?}"));
        if depth == Depth::Changes && memo.swept.get(&p.key) == Some(&fingerprint) {
            return;
        }
        let netns = Path::new(&p.net_ns);
        match self.ops.owned(snap, netns).await {
            Ok(owned) => {
                for (ifname, alias) in owned {
                    let full = links::alias(&alias.namespace, alias.uid, &alias.kind, &alias.tag);
                    // `keep` is sorted: a thousand ports are a thousand lookups, not a million.
                    let kept = keep.binary_search_by(|(i, a)| {
                        (i.as_str(), a.as_str()).cmp(&(ifname.as_str(), full.as_str()))
                    });
                    if kept.is_ok() {
                        continue;
                    }
                    tracing::info!(pod = %p.key, ifname, alias = %full, "removing stale link end");
                    if let Err(e) = self.ops.delete_owned(netns, &ifname).await {
                        tracing::warn!(pod = %p.key, ifname, error = %e, "cannot remove stale link end");
                    }
                }
                memo.swept.insert(p.key.clone(), fingerprint);
            }
            Err(e) => tracing::debug!(pod = %p.key, error = %e, "cannot list pod interfaces"),
        }
    }

    /// Removes meshnet's link-carrying devices in the node's namespace (vxlan devices and wire
    /// TAPs of ports, host ends of wire halves from before ports) that no link plans any more
    /// (peer gone, moved to this node, link removed). Done when the set of planned devices
    /// changed, and on full runs. A device of a link that no pod of this node plans at all (its
    /// pod is between two sandboxes, or gone) is left to the next full run: a restarted pod
    /// takes its devices over ([`crate::tapio`]) instead of waiting for them to be deleted and
    /// made again (tens of milliseconds each in the kernel).
    async fn sweep_node(
        &self,
        snap: &Snapshot,
        memo: &mut Memo,
        works: &[Vec<Work>],
        planned: &HashSet<LinkKey>,
        depth: Depth,
    ) {
        let mut keep: Vec<(String, String)> = works
            .iter()
            .flatten()
            .filter_map(|w| match w {
                Work::Carried(_, d) => Some((d.end.ifname.clone(), d.alias.clone())),
                Work::Wire(s) => Some((ports::wire_tap_name(&s.key.0, s.key.1), s.alias.clone())),
                _ => None,
            })
            .collect();
        keep.sort();
        if depth == Depth::Changes && memo.node_swept.as_ref() == Some(&keep) {
            return;
        }
        let node = Path::new(ports::NODE_NETNS);
        match self.ops.owned(snap, node).await {
            Ok(owned) => {
                for (ifname, alias) in owned {
                    if alias.kind != "vxlan" && alias.kind != "grpc" {
                        continue;
                    }
                    let full = links::alias(&alias.namespace, alias.uid, &alias.kind, &alias.tag);
                    // A device whose name a planned link uses is that link's to take over or
                    // replace (`ensure_half`, `ensure_single`), not this sweep's.
                    // `keep` is sorted by name first.
                    if keep
                        .binary_search_by(|(i, _)| i.as_str().cmp(ifname.as_str()))
                        .is_ok()
                        || (depth == Depth::Changes
                            && !planned.contains(&(alias.namespace.clone(), alias.uid)))
                    {
                        continue;
                    }
                    tracing::info!(ifname, alias = %full, "removing a node-side device no link plans");
                    if let Err(e) = self.ops.delete_owned(node, &ifname).await {
                        tracing::warn!(ifname, error = %e, "cannot remove a node-side device");
                    }
                }
                memo.node_swept = Some(keep);
            }
            Err(e) => tracing::debug!(error = %e, "cannot list the node's interfaces"),
        }
    }

    async fn write_status(&self, p: &PodPlan, report: &PodReport) {
        let links = report.statuses();
        let cid = p.container_id.clone();
        let r = store::update_status(self.store.as_ref(), &p.key, |s| {
            // Only the sandbox this plan was made for; a newer ADD owns the status otherwise.
            if s.container_id != cid || s.links == links {
                return false;
            }
            s.links = links.clone();
            true
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(pod = %p.key, error = %e, "cannot write link status");
            metrics::counter!("meshnet_store_errors_total", "op" => "status", "reason" => e.metric_label())
                .increment(1);
        }
    }

    /// CNI ADD: records the pod alive on this node, then plumbs every link whose peer is alive.
    /// Returns `None` when the pod has no Topology (nothing to do).
    ///
    /// # Errors
    /// Store failure, or a link to an alive peer that could not be built (the message names it).
    pub async fn add(
        &self,
        key: &PodKey,
        container_id: &str,
        net_ns: &str,
        ifname: &str,
    ) -> Result<Option<PodReport>, ReconcileError> {
        let mut memo = self.memo.lock().await;
        let node = self.node.clone();
        let updated = store::update_status(self.store.as_ref(), key, |s| {
            let want = TopologyStatus {
                src_ip: node.ip.to_string(),
                net_ns: net_ns.to_string(),
                container_id: container_id.to_string(),
                node: node.name.clone(),
                skipped: Vec::new(),
                links: if s.container_id == container_id {
                    s.links.clone()
                } else {
                    Vec::new()
                },
            };
            if *s == want {
                return false;
            }
            *s = want;
            true
        })
        .await?;
        if updated.is_none() {
            return Ok(None);
        }
        if !ifname.is_empty() {
            memo.primary_if.insert(key.clone(), ifname.to_string());
        }
        // An ADD checks this pod's links in the kernel instead of trusting the memo: a re-ADD is
        // how a runtime asks for repair.
        memo.forget_netns(&key.namespace, net_ns);
        memo.swept.remove(key);
        let reports = self.run_locked(&mut memo, Depth::Changes).await?;
        let report = reports
            .into_iter()
            .find(|r| r.key == *key)
            .ok_or_else(|| ReconcileError::VanishedDuringAdd { pod: key.clone() })?;
        for (l, r) in &report.links {
            if let LinkResult::Failed { message, fault, .. } = r {
                return Err(ReconcileError::Link {
                    pod: key.clone(),
                    uid: l.uid,
                    local_intf: l.local_intf.clone(),
                    fault: *fault,
                    message: message.clone(),
                });
            }
        }
        Ok(Some(report))
    }

    /// CNI DEL: removes the pod's link ends and marks it not alive. Tolerates a missing
    /// Topology, a missing namespace, a repeated DEL and a stale sandbox id.
    ///
    /// # Errors
    /// Store failure.
    pub async fn del(
        &self,
        key: &PodKey,
        container_id: &str,
        net_ns: &str,
    ) -> Result<bool, ReconcileError> {
        let mut memo = self.memo.lock().await;
        let Some(topo) = self.store.get(key).await? else {
            return Ok(false);
        };
        let current = topo.status.container_id.clone();
        let stale = !container_id.is_empty() && !current.is_empty() && current != container_id;
        // Release interfaces in the namespace being torn down (the request's, else the recorded).
        let ns = if stale && net_ns == topo.status.net_ns {
            // The runtime reused the path for the new sandbox: its interfaces are not ours to free.
            String::new()
        } else if !net_ns.is_empty() {
            net_ns.to_string()
        } else if !stale {
            topo.status.net_ns.clone()
        } else {
            String::new()
        };
        if !ns.is_empty() && Path::new(&ns).exists() {
            // The ports first, all in one request (see `ports::PORT_GROUP`); what remains
            // (ports made before groups, macvlan ends) one by one.
            if let Err(e) = self.ops.delete_ports(Path::new(&ns)).await {
                tracing::debug!(pod = %key, error = %e, "DEL: ports not deleted as a group");
            }
            match self.ops.owned(&Snapshot::default(), Path::new(&ns)).await {
                Ok(owned) => {
                    for (ifname, alias) in owned {
                        if alias.namespace != key.namespace {
                            continue;
                        }
                        if let Err(e) = self.ops.delete_owned(Path::new(&ns), &ifname).await {
                            tracing::warn!(pod = %key, ifname, error = %e, "DEL: cannot remove link end");
                        }
                    }
                }
                Err(e) => tracing::debug!(pod = %key, error = %e, "DEL: namespace not usable"),
            }
        }
        if stale {
            tracing::info!(pod = %key, container_id, current, "DEL for a replaced sandbox: status kept");
            return Ok(true);
        }
        clear_status(self.store.as_ref(), key, container_id).await?;
        memo.forget_netns(&key.namespace, &topo.status.net_ns);
        memo.swept.remove(key);
        memo.primary_if.remove(key);
        // Peers on this node see their links go pending.
        self.run_locked(&mut memo, Depth::Changes).await?;
        Ok(true)
    }

    /// CNI CHECK: verifies, without changing anything, that each link whose peer is alive is
    /// present and as declared. Returns `None` when the pod has no Topology.
    ///
    /// # Errors
    /// The pod is not recorded with this sandbox, or a link is missing or wrong.
    pub async fn check(
        &self,
        key: &PodKey,
        container_id: &str,
    ) -> Result<Option<PodReport>, ReconcileError> {
        let memo = self.memo.lock().await;
        let topos = self.store.list().await?;
        let Some(topo) = topos.iter().find(|t| t.key() == *key) else {
            return Ok(None);
        };
        if topo.status.container_id != container_id || !topo.status.is_alive() {
            return Err(ReconcileError::NotRecorded {
                pod: key.clone(),
                container_id: container_id.to_string(),
                recorded: topo.status.container_id.clone(),
            });
        }
        let plans = plan::plan_node(&self.node.ip, &topos, &memo.primary_if);
        drop(memo);
        let Some(i) = plans.iter().position(|p| p.key == *key) else {
            return Err(ReconcileError::NotOnThisNode {
                pod: key.clone(),
                src_ip: topo.status.src_ip.clone(),
            });
        };
        let mut works = self.resolve(&plans).await;
        let (p, ws) = (&plans[i], std::mem::take(&mut works[i]));
        let mut links = Vec::new();
        for (l, w) in p.links.iter().zip(ws) {
            let verified = self.ensure(&Snapshot::default(), &w, Mode::Verify).await;
            if let Err(e) = verified {
                return Err(ReconcileError::Link {
                    pod: key.clone(),
                    uid: l.uid,
                    local_intf: l.local_intf.clone(),
                    fault: e.fault(),
                    message: e.to_string(),
                });
            }
            links.push((l.clone(), self.wire_result(w, &HashMap::new())));
        }
        Ok(Some(PodReport {
            key: key.clone(),
            links,
            impairments: HashMap::new(),
            overrides: HashMap::new(),
        }))
    }

    /// CNI GC: releases pods recorded on this node whose sandbox is not in `valid`.
    ///
    /// # Errors
    /// Store failure.
    pub async fn gc(&self, valid: &HashSet<String>) -> Result<Vec<PodKey>, ReconcileError> {
        let topos = self.store.list().await?;
        let mut released = Vec::new();
        for t in topos {
            let s = &t.status;
            if s.is_alive()
                && crate::topology::same_node(&s.src_ip, &self.node.ip)
                && !valid.contains(&s.container_id)
            {
                let key = t.key();
                tracing::info!(pod = %key, container_id = %s.container_id, "GC: releasing stale sandbox");
                self.del(&key, &s.container_id, &s.net_ns).await?;
                released.push(key);
            }
        }
        Ok(released)
    }

    /// Runs until `shutdown`: a run after every batch of store events, and a full run every
    /// `resync`.
    pub async fn watch_loop(
        self: Arc<Self>,
        resync: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut events = self.store.watch();
        let mut tick = tokio::time::interval(resync);
        let carrier = self.ops.carrier_changed();
        let far_end = self.beacon.as_ref().map(|b| b.changed());
        let ports = self.ops.ports_changed();
        tokio::pin!(shutdown);
        let notified = |n: &Option<Arc<tokio::sync::Notify>>| {
            let n = n.clone();
            async move {
                match n {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            }
        };
        loop {
            let carrier_changed = notified(&carrier);
            let depth = tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => Depth::Full,
                // A VXLAN link's far end, or a router's port of one, changed: the carrier
                // follows at once.
                _ = notified(&far_end) => Depth::Changes,
                _ = notified(&ports) => Depth::Changes,
                // A wire's carrier changed: its link's status follows.
                _ = carrier_changed => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Depth::Changes
                }
                ev = events.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = ev {
                        tracing::error!("store watch closed; relying on periodic resync");
                        events = self.store.watch();
                    }
                    // Coalesce a burst of events into one run.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while events.try_recv().is_ok() {}
                    Depth::Changes
                }
            };
            if let Err(e) = self.run(depth).await {
                tracing::warn!(error = %e, "reconcile failed; will retry");
                metrics::counter!("meshnet_reconcile_errors_total").increment(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Marks a pod not alive (DEL, or its namespace vanished): clears what ADD recorded, unless the
/// status now belongs to another sandbox than `container_id` (`""`: any).
async fn clear_status(
    store: &dyn store::TopologyStore,
    key: &PodKey,
    container_id: &str,
) -> Result<(), StoreError> {
    store::update_status(store, key, |s| {
        if !container_id.is_empty() && !s.container_id.is_empty() && s.container_id != container_id
        {
            return false;
        }
        if s.net_ns.is_empty()
            && s.container_id.is_empty()
            && s.src_ip.is_empty()
            && s.links.is_empty()
        {
            return false;
        }
        s.net_ns.clear();
        s.container_id.clear();
        s.src_ip.clear();
        s.node.clear();
        s.links.clear();
        true
    })
    .await
    .map(|_| ())
}

/// A link's identity on this node: (namespace, uid).
type LinkKey = (String, i64);

/// Why a port's carrier is off when its far router shut its port (the status message).
const FAR_PORT_SHUT: &str = "carrier off: far router shut its port";

/// How long a VXLAN link's far end may stay unheard before its status says so.
const UNHEARD_GRACE: Duration = Duration::from_secs(2);

/// What a link's far end does to this end's carrier: [`Reconciler::far_end_down`] for VXLAN links,
/// the patchbay for same-node ports.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FarNote {
    /// The carrier goes off, for this reason.
    Down(String),
    /// The carrier is off already (the patchbay holds it off), for this reason: status only.
    Off(String),
    /// The carrier stays on; the status notes that the far end is not heard.
    Unheard(String),
}

/// The VXLAN links a run handed to the beacon.
#[derive(Debug, Default)]
struct FarEnds {
    links: HashSet<u64>,
    netns: HashSet<PathBuf>,
}

/// What one link end needs after node facts are applied to the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Work {
    /// Two ports of this node, patched to each other.
    Patch(VethSpec),
    /// The pod's port alone (the far end is not there); the pending reason.
    Port(PortSpec, String),
    /// The pod's port patched to a device in the node's namespace that carries the link to
    /// another node (a vxlan device).
    Carried(PortSpec, SingleSpec),
    Single(SingleSpec),
    Wire(WireSpec),
    /// Nothing to build: the result is already known.
    Done(LinkResult),
}

impl Work {
    fn alias(&self) -> Option<&str> {
        match self {
            Work::Patch(s) => Some(&s.alias),
            Work::Port(s, _) => Some(&s.alias),
            Work::Single(s) | Work::Carried(_, s) => Some(&s.alias),
            Work::Wire(s) => Some(&s.alias),
            Work::Done(_) => None,
        }
    }

    /// The alias of the link's interface in the pod namespace `netns`.
    fn iface_alias(&self, netns: &Path) -> Option<&str> {
        match self {
            Work::Patch(s) if s.a.netns == netns => Some(&s.ports[0].0),
            Work::Patch(s) => Some(&s.ports[1].0),
            Work::Carried(p, _) => Some(&p.alias),
            Work::Wire(s) => Some(&s.port.alias),
            w => w.alias(),
        }
    }

    /// The namespaces the link's ends live in.
    fn netns(&self) -> Vec<&PathBuf> {
        match self {
            Work::Patch(s) => vec![&s.a.netns, &s.b.netns],
            Work::Port(s, _) => vec![&s.end.netns],
            Work::Carried(p, d) => vec![&p.end.netns, &d.end.netns],
            Work::Wire(s) => vec![&s.end.netns],
            Work::Single(s) => vec![&s.end.netns],
            Work::Done(_) => Vec::new(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Work::Patch(_) | Work::Port(..) => "veth",
            Work::Single(s) | Work::Carried(_, s) => s.kind.name(),
            Work::Wire(_) => "grpc",
            Work::Done(r) => r.kind(),
        }
    }

    /// The link's result once the build outcomes (`failed`: alias -> fault, message) are known.
    fn result(self, failed: &HashMap<String, (LinkFault, String)>) -> LinkResult {
        match self {
            Work::Done(r) => r,
            Work::Port(s, reason) if !failed.contains_key(&s.alias) => LinkResult::Pending(reason),
            w => match w.alias().and_then(|a| failed.get(a)) {
                Some((fault, m)) => LinkResult::Failed {
                    kind: w.kind(),
                    fault: *fault,
                    message: m.clone(),
                },
                None => LinkResult::Up { kind: w.kind() },
            },
        }
    }
}

/// The pod's half of a gRPC wire (its TAP); `peer` is the peer pod's node once it is alive.
/// Who declares `state: down` on a link (`own` is `pod`'s declaration, `peer` the peer's), if
/// anyone; `Err` names a value that is neither `up` nor `down`.
fn pulled_by<'a>(
    pod: &'a PodKey,
    l: &'a plan::LinkPlan,
    own: &str,
    peer: &str,
) -> Result<Option<&'a str>, String> {
    for s in [own, peer] {
        if !matches!(s, "" | "up" | "down") {
            return Err(format!("state {s:?}: want up or down"));
        }
    }
    Ok(if own == "down" {
        Some(pod.name.as_str())
    } else if peer == "down" {
        Some(l.peer_pod.as_str())
    } else {
        None
    })
}

fn wire_work(p: &PodPlan, l: &plan::LinkPlan, decl: &LinkDecl, peer: Option<IpAddr>) -> Work {
    let mtu = decl.mtu.unwrap_or(DEFAULT_WIRE_MTU);
    let mut port = port_work(p, l, decl);
    port.mtu = Some(mtu);
    Work::Wire(WireSpec {
        port,
        key: (p.key.namespace.clone(), l.uid),
        alias: links::alias(
            &p.key.namespace,
            l.uid,
            "grpc",
            plan::short(&p.container_id),
        ),
        end: EndSpec {
            netns: p.net_ns.clone().into(),
            ifname: decl.local_intf.clone(),
            ip: decl.local_ip,
            mac: decl.local_mac,
        },
        mtu: decl.mtu.unwrap_or(DEFAULT_WIRE_MTU),
        peer,
        labels: LinkLabels {
            namespace: p.key.namespace.clone(),
            pod: p.key.name.clone(),
            interface: decl.local_intf.clone(),
            peer_pod: decl.peer_pod.clone(),
            uid: l.uid,
        },
    })
}

/// The largest of several outcomes (created > repaired > unchanged).
fn most(outcomes: &[Outcome]) -> Outcome {
    let rank = |o: &Outcome| match o {
        Outcome::Unchanged => 0,
        Outcome::Repaired => 1,
        Outcome::Created => 2,
    };
    outcomes
        .iter()
        .copied()
        .max_by_key(rank)
        .unwrap_or(Outcome::Unchanged)
}

/// The pod's port for link `l`, alone (nothing patched to it yet).
fn port_work(p: &PodPlan, l: &plan::LinkPlan, decl: &LinkDecl) -> PortSpec {
    PortSpec {
        alias: ports::port_alias(&p.key.namespace, l.uid, &p.container_id),
        end: EndSpec {
            netns: p.net_ns.clone().into(),
            ifname: decl.local_intf.clone(),
            ip: decl.local_ip,
            mac: decl.local_mac,
        },
        mtu: decl.mtu,
        node: ports::node_end_name(&p.key.namespace, l.uid, &p.key.name),
    }
}

/// Bytes VXLAN adds on the underlay: outer IPv4 (20) or IPv6 (40) + UDP (8) + VXLAN (8) +
/// inner Ethernet (14).
pub fn vxlan_overhead(underlay_ip: &IpAddr) -> u32 {
    if underlay_ip.is_ipv4() { 50 } else { 70 }
}

/// The pod's half of a cross-node VXLAN link.
fn vxlan_work(
    node_ip: &IpAddr,
    p: &PodPlan,
    uid: i64,
    peer_node_ip: &str,
    decl: &LinkDecl,
    u: &NodeIface,
) -> Work {
    let fail = |message: String| {
        Work::Done(LinkResult::Failed {
            kind: "vxlan",
            fault: LinkFault::Node,
            message,
        })
    };
    let remote: IpAddr = match peer_node_ip.parse() {
        Ok(ip) => ip,
        Err(_) => {
            return fail(format!(
                "peer node address {peer_node_ip:?} is not an IP address"
            ));
        }
    };
    let overhead = vxlan_overhead(node_ip);
    let room = u.mtu.saturating_sub(overhead);
    let mtu = match decl.mtu {
        Some(m) if m > room => {
            return Work::Done(LinkResult::Invalid(format!(
                "mtu {m} does not fit the underlay: {} has mtu {}, VXLAN needs {overhead} bytes, so at most {room}",
                u.name, u.mtu
            )));
        }
        Some(m) => m,
        None => room,
    };
    let vni = plan::vni(&p.key.namespace, uid);
    let port = PortSpec {
        alias: ports::port_alias(&p.key.namespace, uid, &p.container_id),
        end: EndSpec {
            netns: p.net_ns.clone().into(),
            ifname: decl.local_intf.clone(),
            ip: decl.local_ip,
            mac: decl.local_mac,
        },
        mtu: Some(mtu),
        node: ports::node_end_name(&p.key.namespace, uid, &p.key.name),
    };
    // The vxlan device lives in the node's namespace, named from the link identity; the pod
    // never sees it, so a peer that moves only rebuilds it (its alias names the remote).
    Work::Carried(
        port,
        SingleSpec {
            alias: links::alias(
                &p.key.namespace,
                uid,
                "vxlan",
                &format!("{vni}-{remote}-{}", u.index),
            ),
            kind: SingleKind::Vxlan {
                vni,
                local: *node_ip,
                remote,
                underlay: u.index,
                port: VXLAN_PORT,
            },
            mtu: Some(mtu),
            end: EndSpec {
                netns: PathBuf::from(ports::NODE_NETNS),
                ifname: ports::device_name(&p.key.namespace, uid),
                ip: None,
                mac: None,
            },
        },
    )
}

/// Two links of this node must never share a VNI (the kernel would refuse the second device,
/// or worse, a reused one would join two links). The lowest (namespace, uid) keeps the VNI; the
/// others are reported, naming the link they clash with.
fn refuse_vni_clashes(plans: &[PodPlan], works: &mut [Vec<Work>]) {
    let mut owner: HashMap<u32, (String, i64)> = HashMap::new();
    for (p, ws) in plans.iter().zip(works.iter()) {
        for (l, w) in p.links.iter().zip(ws) {
            if let Work::Carried(
                _,
                SingleSpec {
                    kind: SingleKind::Vxlan { vni, .. },
                    ..
                },
            ) = w
            {
                let me = (p.key.namespace.clone(), l.uid);
                owner
                    .entry(*vni)
                    .and_modify(|o| {
                        if me < *o {
                            *o = me.clone()
                        }
                    })
                    .or_insert(me);
            }
        }
    }
    for (p, ws) in plans.iter().zip(works.iter_mut()) {
        for (l, w) in p.links.iter().zip(ws.iter_mut()) {
            if let Work::Carried(
                _,
                SingleSpec {
                    kind: SingleKind::Vxlan { vni, .. },
                    ..
                },
            ) = w
            {
                let o = &owner[vni];
                if *o != (p.key.namespace.clone(), l.uid) {
                    *w = Work::Done(LinkResult::Failed {
                        kind: "vxlan",
                        fault: LinkFault::Node,
                        message: format!(
                            "VNI {vni} of this link clashes with link {}/uid {} on this node; change one uid",
                            o.0, o.1
                        ),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
