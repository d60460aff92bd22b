//! The node's reconciler: drives the kernel toward [`plan::plan_node`]'s plan and records the
//! outcome in each pod's status.
//!
//! Level-based, never edge-based: every run looks at the whole store, so it does not matter which
//! pod started first, whether an event was missed, or whether the daemon restarted in between
//! (DESIGN.md §4). Runs are serialised by one lock; CNI ADD/DEL/CHECK take the same lock, so a
//! pod is never plumbed and released at the same time. A memo of links known to be built keeps
//! event-driven runs from touching the kernel for links that did not change; the periodic
//! resync verifies every link against the kernel and repairs drift.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Mutex;

use crate::links::{LinkError, LinkOps, Mode, Outcome, VethSpec};
use crate::plan::{self, Action, PodPlan};
use crate::store::{self, SharedStore, StoreError};
use crate::topology::{LinkState, LinkStatus, PodKey, Topology, TopologyStatus};

/// How many link operations run at once during a reconcile.
const PARALLEL_LINK_OPS: usize = 16;

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
    /// The kernel refused; retried on the next run.
    Failed {
        kind: &'static str,
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
                state: r.state(),
                message: r.message(),
            })
            .collect()
    }
}

/// Errors of a reconcile run or a CNI operation.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("link uid {uid} ({local_intf}) of pod {pod}: {message}")]
    Link {
        pod: PodKey,
        uid: i64,
        local_intf: String,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Default)]
struct Memo {
    /// Veth pairs known built, by (namespace, uid).
    veths: HashMap<(String, i64), VethSpec>,
    /// CNI_IFNAME per pod, learned from ADD.
    primary_if: HashMap<PodKey, String>,
    /// (container id, spec) per pod at its last stale-interface sweep.
    swept: HashMap<PodKey, (String, String)>,
}

impl Memo {
    /// Forgets the links with an end in `net_ns`, so the next run checks them in the kernel.
    fn forget_netns(&mut self, namespace: &str, net_ns: &str) {
        self.veths.retain(|(ns, _), spec| {
            !(ns == namespace
                && (spec.a.netns.as_os_str() == net_ns || spec.b.netns.as_os_str() == net_ns))
        });
    }
}

/// See the module documentation.
pub struct Reconciler {
    node: NodeIdentity,
    store: SharedStore,
    ops: Arc<dyn LinkOps>,
    memo: Mutex<Memo>,
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
    pub fn new(node: NodeIdentity, store: SharedStore, ops: Arc<dyn LinkOps>) -> Self {
        Reconciler {
            node,
            store,
            ops,
            memo: Mutex::new(Memo::default()),
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

    async fn run_locked(
        &self,
        memo: &mut Memo,
        depth: Depth,
    ) -> Result<Vec<PodReport>, ReconcileError> {
        let started = Instant::now();
        let topos = self.store.list().await?;
        let plans = plan::plan_node(&self.node.ip, &topos, &memo.primary_if);

        // Build each distinct veth once (it appears in both pods' plans).
        let mut todo: Vec<VethSpec> = Vec::new();
        let mut seen = HashSet::new();
        for p in &plans {
            for l in &p.links {
                if let Action::Veth(spec) = &l.action {
                    let k = (p.key.namespace.clone(), l.uid);
                    if seen.insert(k.clone())
                        && (depth == Depth::Full || memo.veths.get(&k) != Some(spec))
                    {
                        todo.push(spec.clone());
                    }
                }
            }
        }
        let ops = Arc::clone(&self.ops);
        let results: Vec<(VethSpec, Result<Outcome, LinkError>)> = futures::stream::iter(todo)
            .map(|spec| {
                let ops = Arc::clone(&ops);
                async move {
                    let r = ops.ensure_veth(&spec, Mode::Repair).await;
                    (spec, r)
                }
            })
            .buffer_unordered(PARALLEL_LINK_OPS)
            .collect()
            .await;
        let mut failed: HashMap<String, String> = HashMap::new();
        for (spec, r) in results {
            let k = key_of_alias(&spec);
            match r {
                Ok(outcome) => {
                    if outcome != Outcome::Unchanged {
                        tracing::info!(alias = %spec.alias, a = %spec.a.ifname, b = %spec.b.ifname,
                            ?outcome, "veth link ready");
                        metrics::counter!("meshnet_links_plumbed_total", "kind" => "veth")
                            .increment(1);
                    }
                    memo.veths.insert(k, spec);
                }
                Err(e) => {
                    tracing::warn!(alias = %spec.alias, error = %e, "veth link failed");
                    metrics::counter!("meshnet_link_errors_total", "kind" => "veth").increment(1);
                    memo.veths.remove(&k);
                    failed.insert(spec.alias.clone(), e.to_string());
                }
            }
        }
        // Forget memo entries for links no longer planned (peer gone, spec changed).
        memo.veths.retain(|k, _| seen.contains(k));

        let mut reports = Vec::new();
        for p in &plans {
            self.sweep_stale(memo, p, &topos, depth).await;
            let links = p
                .links
                .iter()
                .map(|l| {
                    let r = match &l.action {
                        Action::Veth(spec) => match failed.get(&spec.alias) {
                            Some(m) => LinkResult::Failed {
                                kind: "veth",
                                message: m.clone(),
                            },
                            None => LinkResult::Up { kind: "veth" },
                        },
                        Action::Remote { peer_node_ip, .. } => LinkResult::Failed {
                            kind: "",
                            message: format!(
                                "peer is on node {peer_node_ip}: cross-node links are not supported by this build"
                            ),
                        },
                        Action::Pending(m) => LinkResult::Pending(m.clone()),
                        Action::Invalid(m) => LinkResult::Invalid(m.clone()),
                    };
                    (l.clone(), r)
                })
                .collect();
            let report = PodReport {
                key: p.key.clone(),
                links,
            };
            self.write_status(p, &report).await;
            reports.push(report);
        }
        metrics::counter!("meshnet_reconcile_runs_total").increment(1);
        metrics::histogram!("meshnet_reconcile_seconds").record(started.elapsed().as_secs_f64());
        Ok(reports)
    }

    /// Removes meshnet interfaces in a pod that its plan no longer has (link removed from the
    /// Topology, peer sandbox replaced). Done when the pod's spec or sandbox changed, and on
    /// full runs.
    async fn sweep_stale(&self, memo: &mut Memo, p: &PodPlan, topos: &[Topology], depth: Depth) {
        let spec = topos
            .iter()
            .find(|t| t.key() == p.key)
            .map(|t| serde_json::to_string(&t.spec).unwrap_or_default())
            .unwrap_or_default();
        let fingerprint = (p.container_id.clone(), spec);
        if depth == Depth::Changes && memo.swept.get(&p.key) == Some(&fingerprint) {
            return;
        }
        let keep: HashSet<(&str, &str)> = p
            .links
            .iter()
            .filter_map(|l| match &l.action {
                Action::Veth(s) => Some((l.local_intf.as_str(), s.alias.as_str())),
                _ => None,
            })
            .collect();
        let netns = Path::new(&p.net_ns);
        match self.ops.owned(netns).await {
            Ok(owned) => {
                for (ifname, alias) in owned {
                    let full =
                        crate::links::alias(&alias.namespace, alias.uid, &alias.kind, &alias.tag);
                    if keep.contains(&(ifname.as_str(), full.as_str())) {
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
        let report = reports.into_iter().find(|r| r.key == *key).ok_or_else(|| {
            ReconcileError::Invalid(format!("pod {key} vanished from the store during ADD"))
        })?;
        for (l, r) in &report.links {
            if let LinkResult::Failed { message, .. } = r {
                return Err(ReconcileError::Link {
                    pod: key.clone(),
                    uid: l.uid,
                    local_intf: l.local_intf.clone(),
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
            match self.ops.owned(Path::new(&ns)).await {
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
        store::update_status(self.store.as_ref(), key, |s| {
            if !container_id.is_empty()
                && !s.container_id.is_empty()
                && s.container_id != container_id
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
        .await?;
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
            return Err(ReconcileError::Invalid(format!(
                "pod {key} is not recorded with sandbox {container_id} (status has {:?})",
                topo.status.container_id
            )));
        }
        let plans = plan::plan_node(&self.node.ip, &topos, &memo.primary_if);
        drop(memo);
        let Some(p) = plans.into_iter().find(|p| p.key == *key) else {
            return Err(ReconcileError::Invalid(format!(
                "pod {key} is recorded on node {}, not this node",
                topo.status.src_ip
            )));
        };
        let mut links = Vec::new();
        for l in p.links {
            let r = match &l.action {
                Action::Veth(spec) => match self.ops.ensure_veth(spec, Mode::Verify).await {
                    Ok(_) => LinkResult::Up { kind: "veth" },
                    Err(e) => {
                        return Err(ReconcileError::Link {
                            pod: key.clone(),
                            uid: l.uid,
                            local_intf: l.local_intf.clone(),
                            message: e.to_string(),
                        });
                    }
                },
                Action::Remote { peer_node_ip, .. } => LinkResult::Failed {
                    kind: "",
                    message: format!("peer on node {peer_node_ip}: cross-node links unsupported"),
                },
                Action::Pending(m) => LinkResult::Pending(m.clone()),
                Action::Invalid(m) => LinkResult::Invalid(m.clone()),
            };
            links.push((l, r));
        }
        Ok(Some(PodReport {
            key: key.clone(),
            links,
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
        tokio::pin!(shutdown);
        loop {
            let depth = tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => Depth::Full,
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

fn key_of_alias(spec: &VethSpec) -> (String, i64) {
    let a = crate::links::OwnedAlias::parse(&spec.alias);
    a.map(|a| (a.namespace, a.uid)).unwrap_or_default()
}
