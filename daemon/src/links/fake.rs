//! A recording [`LinkOps`] for the reconciler's unit tests: a model of the interfaces meshnet
//! made in each namespace (name → alias), which namespaces exist, the underlay, wire carriers —
//! and the list of calls the reconciler made, so tests assert what it decided to touch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::snapshot::Snapshot;
use super::{EndSpec, LinkError, LinkOps, Mode, NodeIface, Outcome, OwnedAlias, SingleSpec};
use crate::gwire::WireKey;
use crate::ports::{Cable, PortSpec};
use crate::qdisc::{Applied, QdiscError};
use crate::tapio::WireSpec;
use meshnet_topology::impairment::ImpairSpec;

/// One side effect (or lookup) the reconciler asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A pod's port (its alias names the pod's sandbox).
    EnsurePort {
        alias: String,
        mode: Mode,
    },
    /// Two node ends patched to each other.
    EnsurePatch {
        a: String,
        b: String,
        mode: Mode,
    },
    EnsureSingle {
        alias: String,
        mode: Mode,
    },
    EnsureHalf {
        alias: String,
        mode: Mode,
    },
    Delete {
        netns: PathBuf,
        ifname: String,
    },
    RetainHalves {
        keep: Vec<WireKey>,
    },
    /// The carrier of a kernel link end switched off (`down`) or back on.
    ProtoDown {
        netns: PathBuf,
        ifname: String,
        down: bool,
    },
    /// The impairment of what the peer sends, put on a wire half.
    ImpairHalf {
        key: WireKey,
        spec: Option<String>,
    },
    /// A wire half's cable pulled or plugged back.
    PullHalf {
        key: WireKey,
        pulled: bool,
    },
    /// A declared impairment put on (`Some`, as text) or taken off (`None`) a port.
    Impair {
        netns: PathBuf,
        ifname: String,
        spec: Option<String>,
    },
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    /// netns → ifname → alias of the interfaces meshnet made there.
    ifaces: HashMap<PathBuf, BTreeMap<String, String>>,
    /// Namespaces that no longer exist.
    gone: HashSet<PathBuf>,
    underlay: Option<NodeIface>,
    carrier: HashMap<WireKey, bool>,
    /// The node's kernel lacks `sch_netem` (as this project's CI machine does).
    no_netem: bool,
    /// The last cable table handed to the patchbay.
    cables: Vec<Cable>,
    /// Ports' admin state as the pods set it (absent: not known).
    admin: HashMap<(PathBuf, String), bool>,
    /// The namespaces whose ports the reconciler last asked to watch.
    watched: HashSet<PathBuf>,
    /// Node ends whose far router shut its port (as the patchbay would find).
    far_shut: HashSet<String>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct FakeOps(Mutex<State>);

impl FakeOps {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeOps::default())
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// Makes the fake kernel lack `sch_netem`.
    pub fn without_netem(&self) {
        self.st().no_netem = true;
    }

    /// The calls made since the last `take_calls`.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.st().calls)
    }

    /// Puts an interface with `alias` into the model (as a former run or daemon left it).
    pub fn add_iface(&self, netns: &str, ifname: &str, alias: &str) {
        self.st()
            .ifaces
            .entry(netns.into())
            .or_default()
            .insert(ifname.into(), alias.into());
    }

    /// The interfaces of `netns`: name → alias.
    pub fn ifaces(&self, netns: &str) -> BTreeMap<String, String> {
        self.st()
            .ifaces
            .get(Path::new(netns))
            .cloned()
            .unwrap_or_default()
    }

    /// The namespace disappears, with everything in it.
    pub fn remove_netns(&self, netns: &str) {
        let mut st = self.st();
        st.ifaces.remove(Path::new(netns));
        st.gone.insert(netns.into());
    }

    pub fn set_underlay(&self, u: NodeIface) {
        self.st().underlay = Some(u);
    }

    /// The last cable table the reconciler handed to the patchbay, sorted by node end.
    pub fn cables(&self) -> Vec<Cable> {
        let mut c = self.st().cables.clone();
        c.sort_by(|a, b| a.node.cmp(&b.node));
        c
    }

    pub fn set_carrier(&self, key: WireKey, up: bool) {
        self.st().carrier.insert(key, up);
    }

    /// The pod sets its port `ifname` in `netns` up or down (`ip link set`).
    pub fn set_admin(&self, netns: &str, ifname: &str, up: bool) {
        self.st().admin.insert((netns.into(), ifname.into()), up);
    }

    /// The router at the far port of the same-node port whose node end is `node_end` shuts it
    /// (`true`) or opens it.
    pub fn set_far_shut(&self, node_end: &str, shut: bool) {
        let mut st = self.st();
        if shut {
            st.far_shut.insert(node_end.to_string());
        } else {
            st.far_shut.remove(node_end);
        }
    }

    /// The namespaces whose ports are watched.
    pub fn watched(&self) -> HashSet<PathBuf> {
        self.st().watched.clone()
    }

    /// Makes or checks the ends `ends` of one link with `alias`.
    fn ensure(&self, alias: &str, ends: &[&EndSpec], mode: Mode) -> Result<Outcome, LinkError> {
        let mut st = self.st();
        let present = ends.iter().all(|e| {
            st.ifaces
                .get(&e.netns)
                .and_then(|m| m.get(&e.ifname))
                .is_some_and(|a| a == alias)
        });
        if present {
            return Ok(Outcome::Unchanged);
        }
        if mode == Mode::Verify {
            return Err(LinkError::differs(ends[0], None, "link"));
        }
        for e in ends {
            if st.gone.contains(&e.netns) {
                return Err(gone(&e.netns));
            }
            st.ifaces
                .entry(e.netns.clone())
                .or_default()
                .insert(e.ifname.clone(), alias.to_string());
        }
        Ok(Outcome::Created)
    }
}

/// What opening a removed namespace fails with.
fn gone(netns: &Path) -> LinkError {
    LinkError::Netns(crate::netns::NetnsError::Open {
        path: netns.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

#[async_trait]
impl LinkOps for FakeOps {
    async fn snapshot(&self, _netns: Vec<PathBuf>) -> Snapshot {
        Snapshot::default()
    }

    async fn ensure_port(
        &self,
        _snap: &Snapshot,
        spec: &PortSpec,
        mode: Mode,
    ) -> Result<Outcome, LinkError> {
        self.st().calls.push(Call::EnsurePort {
            alias: spec.alias.clone(),
            mode,
        });
        self.ensure(&spec.alias, &[&spec.end], mode)
    }

    async fn ensure_patch(
        &self,
        _snap: &Snapshot,
        a: &str,
        b: &str,
        mode: Mode,
    ) -> Result<Outcome, LinkError> {
        self.st().calls.push(Call::EnsurePatch {
            a: a.to_string(),
            b: b.to_string(),
            mode,
        });
        Ok(Outcome::Unchanged)
    }

    fn set_cables(&self, cables: Vec<Cable>) {
        self.st().cables = cables;
    }

    async fn ensure_single(
        &self,
        _snap: &Snapshot,
        spec: &SingleSpec,
        mode: Mode,
    ) -> Result<Outcome, LinkError> {
        self.st().calls.push(Call::EnsureSingle {
            alias: spec.alias.clone(),
            mode,
        });
        self.ensure(&spec.alias, &[&spec.end], mode)
    }

    async fn ensure_half(
        &self,
        _snap: &Snapshot,
        spec: &WireSpec,
        mode: Mode,
    ) -> Result<Outcome, LinkError> {
        self.st().calls.push(Call::EnsureHalf {
            alias: spec.alias.clone(),
            mode,
        });
        // The pod's interface is the half's port.
        self.ensure(&spec.port.alias, &[&spec.end], mode)
    }

    fn half_carrier(&self, key: &WireKey) -> Option<bool> {
        Some(self.st().carrier.get(key).copied().unwrap_or(false))
    }

    fn impair_half(&self, key: &WireKey, spec: Option<ImpairSpec>) {
        self.st().calls.push(Call::ImpairHalf {
            key: key.clone(),
            spec: spec.map(|s| s.to_string()),
        });
    }

    fn pull_half(&self, key: &WireKey, pulled: bool) {
        self.st().calls.push(Call::PullHalf {
            key: key.clone(),
            pulled,
        });
    }

    fn retain_halves(&self, keep: &HashSet<WireKey>, _peers: HashSet<IpAddr>) {
        let mut keep: Vec<WireKey> = keep.iter().cloned().collect();
        keep.sort();
        self.st().calls.push(Call::RetainHalves { keep });
    }

    fn carrier_changed(&self) -> Option<Arc<Notify>> {
        None
    }

    async fn node_iface(
        &self,
        _name: Option<&str>,
        _addr: IpAddr,
    ) -> Result<Option<NodeIface>, LinkError> {
        Ok(self.st().underlay.clone())
    }

    async fn owned(
        &self,
        _snap: &Snapshot,
        netns: &Path,
    ) -> Result<Vec<(String, OwnedAlias)>, LinkError> {
        let st = self.st();
        if st.gone.contains(netns) {
            return Err(gone(netns));
        }
        Ok(st
            .ifaces
            .get(netns)
            .map(|m| {
                m.iter()
                    .filter_map(|(n, a)| Some((n.clone(), OwnedAlias::parse(a)?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn delete_owned(&self, netns: &Path, ifname: &str) -> Result<(), LinkError> {
        let mut st = self.st();
        st.calls.push(Call::Delete {
            netns: netns.to_path_buf(),
            ifname: ifname.to_string(),
        });
        if let Some(m) = st.ifaces.get_mut(netns) {
            m.remove(ifname);
        }
        Ok(())
    }

    fn netns_exists(&self, netns: &Path) -> bool {
        !self.st().gone.contains(netns)
    }

    fn watch_ports(&self, netns: HashSet<PathBuf>) {
        self.st().watched = netns;
    }

    fn far_port_shut(&self, node_end: &str) -> bool {
        self.st().far_shut.contains(node_end)
    }

    fn port_admin_up(&self, netns: &Path, ifname: &str) -> Option<bool> {
        self.st()
            .admin
            .get(&(netns.to_path_buf(), ifname.to_string()))
            .copied()
    }

    async fn set_protodown(&self, netns: &Path, ifname: &str, down: bool) -> Result<(), LinkError> {
        self.st().calls.push(Call::ProtoDown {
            netns: netns.to_path_buf(),
            ifname: ifname.to_string(),
            down,
        });
        Ok(())
    }

    async fn impair(
        &self,
        netns: &Path,
        ifname: &str,
        spec: Option<ImpairSpec>,
    ) -> Result<Applied, QdiscError> {
        let mut st = self.st();
        st.calls.push(Call::Impair {
            netns: netns.to_path_buf(),
            ifname: ifname.to_string(),
            spec: spec.map(|s| s.to_string()),
        });
        Ok(match spec {
            None => Applied::None,
            Some(s) if s.needs_netem() && st.no_netem => match s.rate_bps {
                None => {
                    return Err(QdiscError::Unsupported {
                        kind: "netem",
                        what: s.to_string(),
                    });
                }
                Some(_) => Applied::RateOnly {
                    missing: "no sch_netem".into(),
                },
            },
            Some(s) if s.needs_netem() => Applied::Full("netem"),
            Some(_) => Applied::Full("tbf"),
        })
    }
}
