//! The lab: nodes and pods as network namespaces, one real `meshnetd` per node, and the real
//! CNI chain (reference plugins from the machine, then `meshnet`) run for every pod.
//!
//! Layout of lab `L` (everything it makes carries the prefix `mnl-L-`; `down` removes the
//! namespaces the lab recorded as its own, and others with its prefix only when no lab that is up
//! can claim them — `mnl-L-` is also the start of every name of a lab `L-x`):
//! * `mnl-L-ul` — the underlay: a bridge joining the nodes (198.51.100.0/24, node i = .i; with
//!   `--underlay ipv6`, 2001:db8::/64, node i = 2001:db8::i, and that is each daemon's HOST_IP);
//! * `mnl-L-ext` — a segment outside the cluster: a bridge that every node's `eth0` is on, with
//!   one "external device" at 192.0.2.254 (what `peer_pod: localhost` macvlan links reach);
//! * `mnl-L-nodeI` — node namespaces, each with `ul0` on the underlay, a daemon, and the host ends
//!   of its pods' `eth0` (made by the `ptp` plugin, pod addresses from `--pod-cidr`, default
//!   203.0.113.0/24, which no link address of the topology may overlap);
//! * `mnl-L-NS-POD-GEN` — pod namespaces, a new one per sandbox, as a container runtime does.
//!
//! Nothing connects a lab namespace to the machine's own network. State lives in
//! `$MESHNET_LAB_DIR/L/` (default `/run/meshnet-lab/L/`): `lab.json`, the file store, daemon
//! sockets and logs, and `netns.owned`: every namespace name the lab makes, appended *before* the
//! namespace is made, so that a lab that crashed half-way is still removed exactly. A lock file
//! serialises commands on one lab.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshnet_topology::store::TopologyStore;
use meshnet_topology::store::file::FileStore;
use meshnet_topology::topology::{LOCALHOST, LinkState, PodKey, Topology};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::manifest::{self, PodDecl};
use crate::sys;

/// Underlay network of the lab's nodes (TEST-NET-2).
const UNDERLAY_PREFIX: &str = "198.51.100";
/// The IPv6 underlay (`--underlay ipv6`): documentation space, node i = `2001:db8::i`.
const UNDERLAY6_PREFIX: &str = "2001:db8::";

/// The address family of the lab's underlay (the nodes' `HOST_IP`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Underlay {
    #[default]
    Ipv4,
    Ipv6,
}

impl std::str::FromStr for Underlay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ipv4" => Ok(Underlay::Ipv4),
            "ipv6" => Ok(Underlay::Ipv6),
            _ => Err(format!("underlay {s:?}: want ipv4 or ipv6")),
        }
    }
}

impl Underlay {
    /// Node `i`'s underlay address and its prefix length.
    fn node_address(self, i: usize) -> (String, u8) {
        match self {
            Underlay::Ipv4 => (format!("{UNDERLAY_PREFIX}.{i}"), 24),
            Underlay::Ipv6 => (format!("{UNDERLAY6_PREFIX}{i:x}"), 64),
        }
    }
}
/// The segment outside the cluster that every node's `eth0` is on (TEST-NET-1), and the address
/// of the device that stands for the outside world on it.
pub const EXTERNAL_NET: &str = "192.0.2.0/24";
pub const EXTERNAL_DEVICE: &str = "192.0.2.254";
/// Pod (eth0) addresses, split among nodes (TEST-NET-3), unless `--pod-cidr` says otherwise.
pub const DEFAULT_POD_CIDR: &str = "203.0.113.0/24";
/// The smallest per-node block of the pod network: a /28 (the ptp plugin's gateway, 13 pods).
const MIN_NODE_BLOCK_BITS: u8 = 4;
/// The lab's record of its namespaces (see the module doc).
const OWNED_NETNS: &str = "netns.owned";
/// Most nodes a lab can have (the pod network is split into /28s at most).
pub const MAX_NODES: usize = 16;
/// Port of each daemon's /metrics, /healthz, /readyz inside its node namespace.
pub const HTTP_PORT: u16 = 51112;

/// A lab node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub pod_cidr: String,
    pub socket: PathBuf,
    pub pid: Option<i32>,
    /// The loopback proxy to the API server (kube store only).
    #[serde(default)]
    pub proxy_pid: Option<i32>,
}

/// A running pod (one sandbox).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub container_id: String,
    pub generation: u32,
    /// The chain's ADD result, given back as prevResult on DEL (as libcni caches it).
    pub result: Option<Value>,
}

impl PodState {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }
}

/// Everything the lab made, persisted in `lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub dir: PathBuf,
    pub link: String,
    pub cni_version: String,
    pub underlay_netns: String,
    #[serde(default)]
    pub external_netns: String,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    #[serde(default = "file_store")]
    pub store: LabStore,
    #[serde(default)]
    pub wire_tls: bool,
    /// The pod (eth0) network, split among the nodes.
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: ipnet::Ipv4Net,
    /// The underlay's address family.
    #[serde(default)]
    pub underlay: Underlay,
}

fn default_pod_cidr() -> ipnet::Ipv4Net {
    DEFAULT_POD_CIDR
        .parse()
        .expect("DEFAULT_POD_CIDR is a valid CIDR")
}

fn file_store() -> LabStore {
    LabStore::File
}

/// Options of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: usize,
    pub link: String,
    pub order: Order,
    pub parallel: bool,
    pub timeout: Duration,
    pub cni_version: String,
    /// MTU of the underlay (node `ul0` and the bridge).
    pub underlay_mtu: u32,
    /// `kube`: use the API server of this kubeconfig instead of the file store.
    pub kubeconfig: Option<PathBuf>,
    /// Mutual TLS between the daemons' wire servers (a lab CA, one certificate per node).
    pub wire_tls: bool,
    /// The pod (eth0) network, split among the nodes ([`DEFAULT_POD_CIDR`] by default).
    pub pod_cidr: ipnet::Ipv4Net,
    /// The underlay's address family (the nodes' `HOST_IP`).
    pub underlay: Underlay,
}

/// In which order pods are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    File,
    Reverse,
    Random(u64),
}

impl std::str::FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "file" => Ok(Order::File),
            "reverse" => Ok(Order::Reverse),
            "random" => Ok(Order::Random(rand::rng().random())),
            _ => match s.strip_prefix("random:").map(str::parse) {
                Some(Ok(seed)) => Ok(Order::Random(seed)),
                _ => Err(format!(
                    "order {s:?}: want file, reverse, random or random:SEED"
                )),
            },
        }
    }
}

/// Root of all labs' state (`$MESHNET_LAB_DIR`, default `/run/meshnet-lab`).
pub fn state_root() -> PathBuf {
    std::env::var_os("MESHNET_LAB_DIR")
        .map_or_else(|| PathBuf::from("/run/meshnet-lab"), PathBuf::from)
}

/// Checks a lab name: it becomes part of namespace names.
///
/// # Errors
/// Not 1-20 characters of `[a-z0-9-]`.
pub fn check_lab_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 20
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("lab name {name:?}: want 1-20 characters of a-z, 0-9 and '-'");
    }
    Ok(())
}

/// Holds the lab's lock for the duration of a command.
pub struct Lab {
    pub name: String,
    pub dir: PathBuf,
    rt: tokio::runtime::Runtime,
    store: std::sync::OnceLock<Arc<dyn TopologyStore>>,
    _lock: Flock<File>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn prefix(lab: &str) -> String {
    format!("mnl-{lab}-")
}

/// Where the daemon and CNI binaries are: `$MESHNET_BIN_DIR`, else next to this program.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("MESHNET_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("locating meshnet-lab")?;
    Ok(exe
        .parent()
        .context("meshnet-lab has no directory")?
        .to_path_buf())
}

fn find_bin(name: &str) -> anyhow::Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if p.is_file() {
        return Ok(p);
    }
    bail!(
        "{} not found (build it with `cargo build --workspace` or set MESHNET_BIN_DIR)",
        p.display()
    )
}

/// Directory of the reference CNI plugins (`$CNI_PLUGIN_DIR`, `/usr/lib/cni`, `/opt/cni/bin`).
fn plugin_dir() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("CNI_PLUGIN_DIR") {
        candidates.push(d.into());
    }
    candidates.extend(["/usr/lib/cni", "/opt/cni/bin"].map(PathBuf::from));
    candidates
        .into_iter()
        .find(|d| d.join("ptp").is_file() && d.join("host-local").is_file())
        .context("reference CNI plugins (ptp, host-local, portmap) not found in /usr/lib/cni or /opt/cni/bin: install Debian's containernetworking-plugins")
}

fn random_hex(n: usize) -> String {
    let mut r = rand::rng();
    (0..n)
        .map(|_| char::from(b"0123456789abcdef"[r.random_range(0..16)]))
        .collect()
}

/// Where the lab keeps its Topologies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabStore {
    /// One file per Topology in the lab's directory.
    File,
    /// A Kubernetes API server (the daemons reach it through a loopback proxy in their node).
    Kube {
        kubeconfig: PathBuf,
        server_port: u16,
    },
}

impl Drop for Lab {
    /// With no lab of this name left (never brought up, a refused `up`, or `down`), its lock
    /// file goes too, while still held; `open` copes with a waiter that locked the removed file.
    fn drop(&mut self) {
        if !self.dir.exists() {
            let _ = fs::remove_file(state_root().join(format!("{}.lock", self.name)));
        }
    }
}

impl Lab {
    /// Opens lab `name`, taking its lock (waits for another command on the same lab).
    ///
    /// # Errors
    /// Invalid name or the state directory cannot be made.
    pub fn open(name: &str) -> anyhow::Result<Self> {
        check_lab_name(name)?;
        let root = state_root();
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let lock_path = root.join(format!("{name}.lock"));
        // The lock file is removed when no lab of this name is left (see `Drop`), so a waiter
        // may end up holding the lock of a file that is gone: it checks and starts over.
        let lock = loop {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .with_context(|| format!("opening {}", lock_path.display()))?;
            let lock = Flock::lock(f, FlockArg::LockExclusive)
                .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", lock_path.display()))?;
            let held = lock.metadata().map(|m| m.ino()).ok();
            let current = fs::metadata(&lock_path).map(|m| m.ino()).ok();
            if held.is_some() && held == current {
                break lock;
            }
        };
        Ok(Lab {
            name: name.to_string(),
            dir: root.join(name),
            // One worker thread, not a current-thread runtime: the kube store's cache is filled
            // by a background watch task, which must run between two `block_on`s.
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("tokio runtime")?,
            store: std::sync::OnceLock::new(),
            _lock: lock,
        })
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    /// The lab's state.
    ///
    /// # Errors
    /// The lab is not up.
    pub fn load(&self) -> anyhow::Result<LabState> {
        let p = self.state_path();
        let s = fs::read_to_string(&p)
            .with_context(|| format!("lab {:?} is not up (no {})", self.name, p.display()))?;
        serde_json::from_str(&s).with_context(|| format!("parsing {}", p.display()))
    }

    fn save(&self, st: &LabState) -> anyhow::Result<()> {
        let p = self.state_path();
        let tmp = self.dir.join(".lab.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(st)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The lab's Topology store: the file store, or the API server its state names.
    fn store(&self) -> anyhow::Result<Arc<dyn TopologyStore>> {
        if let Some(s) = self.store.get() {
            return Ok(Arc::clone(s));
        }
        let kind = match self.load() {
            Ok(st) => st.store,
            Err(_) => LabStore::File,
        };
        self.open_store(&kind)
    }

    fn open_store(&self, kind: &LabStore) -> anyhow::Result<Arc<dyn TopologyStore>> {
        let s: Arc<dyn TopologyStore> = match kind {
            LabStore::File => Arc::new(FileStore::open(self.dir.join("store"))?),
            LabStore::Kube { kubeconfig, .. } => Arc::new(
                self.block_on(meshnet_kube::KubeStore::from_kubeconfig(kubeconfig))
                    .with_context(|| format!("connecting with {}", kubeconfig.display()))?,
            ),
        };
        let _ = self.store.set(Arc::clone(&s));
        Ok(s)
    }

    /// Edits the declaration of one link end — `POD:INTF` (or `NAMESPACE/POD:INTF`) — in the
    /// store, as `kubectl edit` would; the daemons follow through their watch.
    ///
    /// # Errors
    /// Unknown pod, no Topology or no link on that interface, or the store refuses.
    pub fn edit_link(
        &self,
        end: &str,
        edit: impl FnOnce(&mut meshnet_topology::topology::Link),
    ) -> anyhow::Result<()> {
        let (pod, intf) = end
            .rsplit_once(':')
            .with_context(|| format!("{end:?}: want POD:INTERFACE"))?;
        let st = self.load()?;
        let key = st.pods[find_pod(&st, pod)?].key();
        let store = self.store()?;
        let mut topo = self
            .block_on(store.get(&key))?
            .with_context(|| format!("pod {key} has no Topology"))?;
        let link = topo
            .spec
            .links
            .iter_mut()
            .find(|l| l.local_intf == intf)
            .with_context(|| format!("pod {key} declares no link on {intf:?}"))?;
        edit(link);
        self.block_on(store.apply(&topo))?;
        Ok(())
    }

    /// `up`: builds the lab and starts every pod of `file`, then waits until every link between
    /// the lab's pods is up.
    ///
    /// # Errors
    /// The lab exists already, the manifest is bad, or a link did not come up in time.
    pub fn up(&self, file: &Path, opts: &UpOptions) -> anyhow::Result<LabState> {
        // Refused before anything is made.
        resync_seconds()?;
        if self.state_path().exists() {
            bail!(
                "lab {:?} is already up; run `meshnet-lab --lab {} down` first",
                self.name,
                self.name
            );
        }
        if opts.link != "vxlan" && opts.link != "grpc" {
            bail!("--link {:?}: want vxlan or grpc", opts.link);
        }
        if opts.nodes == 0 || opts.nodes > MAX_NODES {
            bail!("--nodes {}: want 1..={MAX_NODES}", opts.nodes);
        }
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let m =
            manifest::parse(&text, "default").with_context(|| format!("in {}", file.display()))?;
        if m.pods.is_empty() {
            bail!("{} declares no pods", file.display());
        }
        let mut seen = HashSet::new();
        for p in &m.pods {
            if !seen.insert((p.namespace.clone(), p.name.clone())) {
                bail!(
                    "pod {}/{} is declared twice in {}",
                    p.namespace,
                    p.name,
                    file.display()
                );
            }
        }
        node_blocks(opts.pod_cidr, opts.nodes)?;
        for (what, net) in [
            ("underlay", format!("{UNDERLAY_PREFIX}.0/24")),
            ("outside segment", EXTERNAL_NET.to_string()),
        ] {
            let net: ipnet::Ipv4Net = net.parse().context("a lab constant")?;
            if net.contains(&opts.pod_cidr.network()) || opts.pod_cidr.contains(&net.network()) {
                bail!(
                    "--pod-cidr {} overlaps the lab's {what} {net}",
                    opts.pod_cidr
                );
            }
        }
        check_pod_network(&m.topologies, opts.pod_cidr)
            .with_context(|| format!("in {}", file.display()))?;
        let meshnetd = find_bin("meshnetd")?;
        find_bin("meshnet")?;
        plugin_dir()?;
        // Leftovers of a lab of the same name that crashed before writing its state.
        self.sweep();
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let mut st = LabState {
            name: self.name.clone(),
            dir: self.dir.clone(),
            link: opts.link.clone(),
            cni_version: opts.cni_version.clone(),
            underlay_netns: format!("{}ul", prefix(&self.name)),
            external_netns: format!("{}ext", prefix(&self.name)),
            nodes: Vec::new(),
            pods: Vec::new(),
            wire_tls: opts.wire_tls,
            pod_cidr: opts.pod_cidr,
            underlay: opts.underlay,
            store: match &opts.kubeconfig {
                None => LabStore::File,
                Some(k) => LabStore::Kube {
                    kubeconfig: k.clone(),
                    server_port: kube_server_port(k)?,
                },
            },
        };
        self.open_store(&st.store)?;
        self.save(&st)?;
        self.build_underlay(&mut st, opts.nodes, opts.underlay_mtu)?;
        if st.wire_tls {
            self.make_certificates(&st)?;
        }
        self.save(&st)?;
        for i in 0..st.nodes.len() {
            self.start_daemon(&mut st, i, &meshnetd)?;
            self.save(&st)?;
        }
        let store = self.store()?;
        for t in &m.topologies {
            self.block_on(store.apply(t))
                .with_context(|| format!("storing Topology {}", t.key()))?;
        }
        let mut pods = m.pods.clone();
        match opts.order {
            Order::File => {}
            Order::Reverse => pods.reverse(),
            Order::Random(seed) => {
                use rand::SeedableRng;
                pods.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
            }
        }
        let placed = place(&pods, &st.nodes, 0);
        if opts.parallel {
            let results: Vec<anyhow::Result<PodState>> = std::thread::scope(|s| {
                let handles: Vec<_> = placed
                    .iter()
                    .map(|(p, node)| {
                        let stc = &st;
                        s.spawn(move || self.start_pod(stc, p, node, 1))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("pod start panicked")))
                    })
                    .collect()
            });
            let mut first_err = None;
            for r in results {
                match r {
                    Ok(p) => st.pods.push(p),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            self.save(&st)?;
            if let Some(e) = first_err {
                return Err(e);
            }
        } else {
            for (p, node) in &placed {
                let ps = self.start_pod(&st, p, node, 1)?;
                st.pods.push(ps);
                self.save(&st)?;
            }
        }
        self.wait_links(&st, None, opts.timeout)?;
        Ok(st)
    }

    fn build_underlay(&self, st: &mut LabState, n: usize, mtu: u32) -> anyhow::Result<()> {
        let ul = st.underlay_netns.clone();
        let ext = st.external_netns.clone();
        let mtu_s = mtu.to_string();
        let blocks = node_blocks(st.pod_cidr, n)?;
        for ns in [&ul, &ext] {
            self.add_netns(ns)?;
            sys::run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sys::run(&["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])?;
            sys::run(&["ip", "-n", ns, "link", "set", "br0", "up"])?;
        }
        sys::run(&["ip", "-n", &ul, "link", "set", "br0", "mtu", &mtu_s])?;
        // The external device: a host on the outside segment.
        sys::run(&[
            "ip", "-n", &ext, "link", "add", "dev0", "type", "veth", "peer", "name", "dev0-br",
        ])?;
        sys::run(&[
            "ip", "-n", &ext, "link", "set", "dev0-br", "master", "br0", "up",
        ])?;
        sys::run(&[
            "ip",
            "-n",
            &ext,
            "addr",
            "add",
            &format!("{EXTERNAL_DEVICE}/24"),
            "dev",
            "dev0",
        ])?;
        sys::run(&["ip", "-n", &ext, "link", "set", "dev0", "up"])?;
        for (i, pod_block) in (1..=n).zip(blocks) {
            let name = format!("node{i}");
            let netns = format!("{}{name}", prefix(&self.name));
            self.add_netns(&netns)?;
            sys::run(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
            let ul_end = format!("n{i}");
            sys::run(&[
                "ip", "-n", &ul, "link", "add", &ul_end, "type", "veth", "peer", "name", "ul0",
                "netns", &netns,
            ])?;
            sys::run(&[
                "ip", "-n", &ul, "link", "set", &ul_end, "mtu", &mtu_s, "master", "br0", "up",
            ])?;
            let (ip, plen) = st.underlay.node_address(i);
            // nodad: an IPv6 address is usable at once, not after duplicate address detection
            // (the daemon binds and peers connect right away); the lab assigns them uniquely.
            let cidr = format!("{ip}/{plen}");
            let mut add = vec!["ip", "-n", &netns, "addr", "add", &cidr, "dev", "ul0"];
            if st.underlay == Underlay::Ipv6 {
                add.push("nodad");
            }
            sys::run(&add)?;
            sys::run(&[
                "ip", "-n", &netns, "link", "set", "ul0", "mtu", &mtu_s, "up",
            ])?;
            // The node's interface to the outside segment, for macvlan links.
            sys::run(&[
                "ip", "-n", &ext, "link", "add", &ul_end, "type", "veth", "peer", "name", "eth0",
                "netns", &netns,
            ])?;
            sys::run(&[
                "ip", "-n", &ext, "link", "set", &ul_end, "master", "br0", "up",
            ])?;
            sys::run(&["ip", "-n", &netns, "link", "set", "eth0", "up"])?;
            if st.link == "grpc" {
                // Prove the point of the gRPC wire: VXLAN (UDP 4789) cannot leave a node; only
                // TCP to the daemons' wire port crosses the underlay.
                block_vxlan(&netns)?;
            }
            let pod_cidr = pod_block.to_string();
            let ndir = self.dir.join(&name);
            fs::create_dir_all(&ndir)?;
            st.nodes.push(NodeState {
                name,
                netns,
                ip,
                pod_cidr,
                socket: ndir.join("meshnetd.sock"),
                pid: None,
                proxy_pid: None,
            });
        }
        Ok(())
    }

    fn start_daemon(&self, st: &mut LabState, i: usize, meshnetd: &Path) -> anyhow::Result<()> {
        let node = &st.nodes[i];
        let ndir = self.dir.join(&node.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(ndir.join("meshnetd.log"))
            .context("daemon log")?;
        let _ = fs::remove_file(&node.socket);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.netns])
            .arg(meshnetd)
            .args(["--node-name", &node.name, "--host-ip", &node.ip])
            .arg("--socket")
            .arg(&node.socket)
            .args(["--http-addr", &format!("[::]:{HTTP_PORT}")]);
        if st.wire_tls {
            cmd.arg("--wire-tls-dir").arg(ndir.join("tls"));
        }
        match &st.store {
            LabStore::File => {
                cmd.arg("--store")
                    .arg(format!("file:{}", self.dir.join("store").display()));
            }
            LabStore::Kube { kubeconfig, .. } => {
                // The API server listens on the machine's loopback; the node's own loopback
                // reaches it through the lab's proxy (see `kube_proxy`).
                cmd.args(["--store", "kube"]).env("KUBECONFIG", kubeconfig);
            }
        }
        let resync = resync_seconds()?;
        let child = cmd
            .args(["--resync-seconds", &resync.to_string()])
            .args(["--inter-node-link-type", &st.link])
            .env(
                "RUST_LOG",
                std::env::var("MESHNET_LAB_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting meshnetd")?;
        let pid = i32::try_from(child.id()).context("pid")?;
        st.nodes[i].pid = Some(pid);
        if let LabStore::Kube { server_port, .. } = &st.store
            && st.nodes[i]
                .proxy_pid
                .is_none_or(|p| kill(Pid::from_raw(p), None).is_err())
        {
            let proxy = Command::new(std::env::current_exe().context("locating meshnet-lab")?)
                .args([
                    "kube-proxy",
                    &format!("/run/netns/{}", st.nodes[i].netns),
                    &server_port.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(ndir.join("kube-proxy.log"))?,
                )
                .process_group(0)
                .spawn()
                .context("starting the API server proxy")?;
            st.nodes[i].proxy_pid = Some(i32::try_from(proxy.id()).context("pid")?);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut child = child;
        while !st.nodes[i].socket.exists() {
            // try_wait reaps a daemon that exited at once (a zombie would still answer kill 0).
            if Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) {
                let log = ndir.join("meshnetd.log");
                let text = fs::read_to_string(&log).unwrap_or_default();
                // The daemon's own error line (anyhow prints "Error: ..."), else the last line.
                let last = text
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("Error: "))
                    .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default();
                bail!(
                    "meshnetd on {} did not come up; see {}{last}",
                    st.nodes[i].name,
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The daemon outlives this command; it is stopped by `down`.
        drop(child);
        Ok(())
    }

    /// A lab CA and, per node, `tls.crt`/`tls.key`/`ca.crt` valid for the wire's TLS name, for
    /// both serving and dialling (what a cluster would put in the `meshnet-wire-tls` Secret).
    fn make_certificates(&self, st: &LabState) -> anyhow::Result<()> {
        let ca_dir = self.dir.join("ca");
        fs::create_dir_all(&ca_dir)?;
        let p = |d: &Path, f: &str| d.join(f).display().to_string();
        sys::run(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=meshnet-lab-ca",
            "-keyout",
            &p(&ca_dir, "ca.key"),
            "-out",
            &p(&ca_dir, "ca.crt"),
        ])?;
        let ext = ca_dir.join("ext.cnf");
        fs::write(
            &ext,
            "subjectAltName=DNS:meshnet-wire\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        for n in &st.nodes {
            let d = self.dir.join(&n.name).join("tls");
            fs::create_dir_all(&d)?;
            sys::run(&[
                "openssl",
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={}", n.name),
                "-keyout",
                &p(&d, "tls.key"),
                "-out",
                &p(&d, "tls.csr"),
            ])?;
            sys::run(&[
                "openssl",
                "x509",
                "-req",
                "-days",
                "30",
                "-in",
                &p(&d, "tls.csr"),
                "-CA",
                &p(&ca_dir, "ca.crt"),
                "-CAkey",
                &p(&ca_dir, "ca.key"),
                "-CAcreateserial",
                "-out",
                &p(&d, "tls.crt"),
                "-extfile",
                &ext.display().to_string(),
            ])?;
            fs::copy(ca_dir.join("ca.crt"), d.join("ca.crt"))?;
        }
        Ok(())
    }

    fn conflist(&self, st: &LabState, node: &NodeState) -> Value {
        json!({
            "cniVersion": st.cni_version,
            "name": "kindnet",
            "plugins": [
                {
                    "type": "ptp",
                    "ipMasq": false,
                    "mtu": 1500,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": self.dir.join(&node.name).join("ipam"),
                        "ranges": [[{"subnet": node.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {
                    "name": "meshnet",
                    "type": "meshnet",
                    "ipam": {},
                    "dns": {},
                    "daemon_socket": node.socket,
                    "log_file": self.dir.join(&node.name).join("meshnet-cni.log")
                }
            ]
        })
    }

    /// Runs the node's conflist for `cmd` as a CNI runtime does: each plugin in order (reverse
    /// for DEL), each result passed to the next as `prevResult`. Returns the final result.
    fn run_chain(&self, st: &LabState, pod: &PodState, cmd: &str) -> anyhow::Result<Option<Value>> {
        let node = st
            .nodes
            .iter()
            .find(|n| n.name == pod.node)
            .with_context(|| format!("pod {} on unknown node {}", pod.key(), pod.node))?;
        let conf = self.conflist(st, node);
        let plugins = conf["plugins"].as_array().cloned().unwrap_or_default();
        let pdir = plugin_dir()?;
        let bdir = bin_dir()?;
        let env = vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", pod.container_id.clone()),
            ("CNI_NETNS", pod.netns_path()),
            ("CNI_IFNAME", "eth0".to_string()),
            (
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    pod.namespace, pod.name, pod.container_id
                ),
            ),
            ("CNI_PATH", format!("{}:{}", pdir.display(), bdir.display())),
        ];
        let order: Vec<&Value> = if cmd == "DEL" {
            plugins.iter().rev().collect()
        } else {
            plugins.iter().collect()
        };
        let mut prev = if cmd == "ADD" {
            None
        } else {
            pod.result.clone()
        };
        let mut errors = Vec::new();
        for plugin in order {
            let ty = plugin["type"].as_str().unwrap_or_default().to_string();
            let mut nc = plugin.clone();
            nc["cniVersion"] = json!(st.cni_version);
            nc["name"] = conf["name"].clone();
            if let Some(p) = &prev {
                nc["prevResult"] = p.clone();
            }
            let exe = if ty == "meshnet" {
                bdir.join("meshnet")
            } else {
                pdir.join(&ty)
            };
            let exe_s = exe.display().to_string();
            let argv = ["ip", "netns", "exec", node.netns.as_str(), exe_s.as_str()];
            let (ok, out, err) = sys::run_with_input(&argv, &env, &serde_json::to_vec(&nc)?)?;
            if !ok {
                let msg = format!(
                    "CNI {cmd} of pod {} failed in plugin {ty}: {} {}",
                    pod.key(),
                    out.trim(),
                    err.trim()
                );
                if cmd == "DEL" {
                    // DEL goes on through the whole chain, as runtimes do.
                    errors.push(msg);
                    continue;
                }
                bail!(msg);
            }
            if cmd == "ADD" {
                prev = Some(serde_json::from_str(&out).with_context(|| {
                    format!("plugin {ty} returned a result that is not JSON: {out:?}")
                })?);
            }
        }
        if !errors.is_empty() {
            bail!(errors.join("; "));
        }
        Ok(prev)
    }

    fn start_pod(
        &self,
        st: &LabState,
        p: &PodDecl,
        node: &str,
        generation: u32,
    ) -> anyhow::Result<PodState> {
        let mut pod = PodState {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            node: node.to_string(),
            netns: format!(
                "{}{}-{}-{generation}",
                prefix(&self.name),
                p.namespace,
                p.name
            ),
            container_id: random_hex(64),
            generation,
            result: None,
        };
        self.add_netns(&pod.netns)?;
        sys::run(&["ip", "-n", &pod.netns, "link", "set", "lo", "up"])?;
        match self.run_chain(st, &pod, "ADD") {
            Ok(r) => {
                pod.result = r;
                Ok(pod)
            }
            Err(e) => {
                // Leave nothing half-built: undo the chain and drop the sandbox.
                let _ = self.run_chain(st, &pod, "DEL");
                sys::run_quiet(&["ip", "netns", "delete", &pod.netns]);
                Err(e)
            }
        }
    }

    fn stop_pod(&self, st: &LabState, pod: &PodState) -> anyhow::Result<()> {
        let r = self.run_chain(st, pod, "DEL");
        sys::run_quiet(&["ip", "netns", "delete", &pod.netns]);
        r.map(|_| ())
    }

    /// `apply FILE`: stores the file's Topologies and starts its pods that are not running yet,
    /// then waits for their links (what `kubectl apply` of more objects does to a cluster).
    ///
    /// # Errors
    /// The lab is not up, the manifest is bad, or links did not come up in time.
    pub fn apply(&self, file: &Path, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let mut st = self.load()?;
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let m =
            manifest::parse(&text, "default").with_context(|| format!("in {}", file.display()))?;
        check_pod_network(&m.topologies, st.pod_cidr)
            .with_context(|| format!("in {}", file.display()))?;
        let store = self.store()?;
        for t in &m.topologies {
            self.block_on(store.apply(t))
                .with_context(|| format!("storing Topology {}", t.key()))?;
        }
        let running: HashSet<PodKey> = st.pods.iter().map(PodState::key).collect();
        let new: Vec<PodDecl> = m
            .pods
            .into_iter()
            .filter(|p| !running.contains(&PodKey::new(&p.namespace, &p.name)))
            .collect();
        let mut started = Vec::new();
        for (p, node) in place(&new, &st.nodes, st.pods.len()) {
            let ps = self.start_pod(&st, &p, &node, 1)?;
            started.push(format!("{}/{}", ps.namespace, ps.name));
            st.pods.push(ps);
            self.save(&st)?;
        }
        self.wait_links(&st, None, timeout)?;
        Ok(started)
    }

    /// `daemon NODE stop|start|kill`: SIGTERM (and wait), start again, or SIGKILL a node's
    /// daemon. Pods and their interfaces are left alone.
    ///
    /// # Errors
    /// Unknown node or action; the daemon does not come up.
    pub fn daemon(&self, node: &str, action: &str) -> anyhow::Result<String> {
        let mut st = self.load()?;
        let i = st
            .nodes
            .iter()
            .position(|n| n.name == node)
            .with_context(|| format!("no node {node:?} in lab {:?}", self.name))?;
        let pid = st.nodes[i]
            .pid
            .filter(|p| kill(Pid::from_raw(*p), None).is_ok());
        let msg = match (action, pid) {
            ("stop", Some(p)) => {
                stop_process(p);
                st.nodes[i].pid = None;
                format!("meshnetd on {node} stopped (pid {p})")
            }
            ("kill", Some(p)) => {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while kill(Pid::from_raw(p), None).is_ok() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                st.nodes[i].pid = None;
                format!("meshnetd on {node} killed (pid {p})")
            }
            ("stop" | "kill", None) => format!("meshnetd on {node} is not running"),
            ("start", Some(p)) => format!("meshnetd on {node} is already running (pid {p})"),
            ("start", None) => {
                self.start_daemon(&mut st, i, &find_bin("meshnetd")?)?;
                format!(
                    "meshnetd on {node} started (pid {})",
                    st.nodes[i].pid.unwrap_or_default()
                )
            }
            (other, _) => bail!("daemon action {other:?}: want stop, start or kill"),
        };
        self.save(&st)?;
        Ok(msg)
    }

    /// `node NODE down|up`: cuts (or restores) a node's underlay, as a failed NIC or switch port
    /// would; the daemon keeps running.
    ///
    /// # Errors
    /// Unknown node or action.
    pub fn node(&self, node: &str, action: &str) -> anyhow::Result<String> {
        let st = self.load()?;
        let n = st
            .nodes
            .iter()
            .find(|n| n.name == node)
            .with_context(|| format!("no node {node:?} in lab {:?}", self.name))?;
        let state = match action {
            "down" | "up" => action,
            other => bail!("node action {other:?}: want down or up"),
        };
        sys::run(&[
            "ip",
            "-n",
            &st.underlay_netns,
            "link",
            "set",
            &format!("n{}", &n.name["node".len()..]),
            state,
        ])?;
        Ok(format!("underlay of {node} {state}"))
    }

    /// `metrics NODE`: the Prometheus exposition of a node's daemon.
    ///
    /// # Errors
    /// Unknown node, or the daemon does not answer.
    pub fn metrics(&self, node: &str) -> anyhow::Result<String> {
        let st = self.load()?;
        let n = st
            .nodes
            .iter()
            .find(|n| n.name == node)
            .with_context(|| format!("no node {node:?} in lab {:?}", self.name))?;
        sys::run_in(
            &n.netns,
            &[
                "curl",
                "-sSf",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{HTTP_PORT}/metrics"),
            ],
        )
    }

    /// `restart POD`: DEL, a new sandbox (new namespace and container id), ADD; waits for the
    /// pod's links.
    ///
    /// # Errors
    /// Unknown pod, a failing chain, or links not up in time.
    pub fn restart(&self, pod: &str, timeout: Duration) -> anyhow::Result<()> {
        let mut st = self.load()?;
        let i = find_pod(&st, pod)?;
        let old = st.pods[i].clone();
        self.stop_pod(&st, &old)?;
        let decl = PodDecl {
            namespace: old.namespace.clone(),
            name: old.name.clone(),
            node_name: None,
        };
        let new = self.start_pod(&st, &decl, &old.node, old.generation + 1);
        match new {
            Ok(p) => st.pods[i] = p,
            Err(e) => {
                st.pods.remove(i);
                self.save(&st)?;
                return Err(e);
            }
        }
        self.save(&st)?;
        let key = st.pods[i].key();
        self.wait_links(&st, Some(&key), timeout)
    }

    /// Link view of the lab: every link with at least one end on a lab pod.
    ///
    /// # Errors
    /// The store cannot be read.
    pub fn links(&self, st: &LabState) -> anyhow::Result<Vec<LinkView>> {
        let topos = self.block_on(self.store()?.list())?;
        Ok(link_views(st, &topos))
    }

    fn wait_links(
        &self,
        st: &LabState,
        only: Option<&PodKey>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut errored_since: Option<Instant> = None;
        loop {
            let views = self.links(st)?;
            let waiting: Vec<&LinkView> = views
                .iter()
                // A cable pulled on purpose (`state: down`) is settled too.
                .filter(|l| l.required && l.state != "up" && l.state != "down")
                .filter(|l| only.is_none_or(|k| l.involves(k)))
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            let all_errors = waiting.iter().all(|l| l.state == "error");
            if all_errors {
                let since = *errored_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(3) {
                    bail!("links failed:\n{}", describe(&waiting));
                }
            } else {
                errored_since = None;
            }
            if Instant::now() > deadline {
                bail!(
                    "links not up after {}s:\n{}",
                    timeout.as_secs(),
                    describe(&waiting)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `verify`: pings both ends of every link that has addresses, and checks that every link
    /// without addresses has both ends present and up. Returns one line per check.
    ///
    /// # Errors
    /// The lab is not up.
    pub fn verify(&self) -> anyhow::Result<(Vec<String>, usize)> {
        let st = self.load()?;
        let topos = self.block_on(self.store()?.list())?;
        let mut lines = Vec::new();
        let mut failures = 0;
        for l in link_views(&st, &topos) {
            if !l.required {
                lines.push(format!(
                    "SKIP {} (peer {} is not a lab pod)",
                    l.label(),
                    l.b.pod
                ));
                continue;
            }
            if l.state == "down" {
                lines.push(format!("SKIP {} (declared state: down)", l.label()));
                continue;
            }
            let checks = verify_link(&st, &l);
            for (ok, msg) in checks {
                if !ok {
                    failures += 1;
                }
                lines.push(format!("{} {msg}", if ok { "OK  " } else { "FAIL" }));
            }
        }
        Ok((lines, failures))
    }

    /// Kills the daemons and removes every namespace and file the lab made (also after a crash).
    pub fn down(&self) -> anyhow::Result<Vec<String>> {
        let mut done = Vec::new();
        if let Ok(st) = self.load() {
            for n in &st.nodes {
                if let Some(pid) = n.pid {
                    stop_process(pid);
                    done.push(format!("stopped meshnetd on {} (pid {pid})", n.name));
                }
                if let Some(pid) = n.proxy_pid {
                    stop_process(pid);
                }
            }
        }
        let removed = self.sweep();
        done.push(format!("removed {removed} namespaces"));
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        Ok(done)
    }

    /// Records `name` as this lab's (before making it: a crash in between leaves a name that
    /// `down` tries and skips, never a namespace nobody removes), then makes the namespace.
    fn add_netns(&self, name: &str) -> anyhow::Result<()> {
        let ledger = self.dir.join(OWNED_NETNS);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ledger)
            // One write per name: concurrent pod starts append whole lines.
            .and_then(|mut f| f.write_all(format!("{name}\n").as_bytes()))
            .with_context(|| format!("recording {name} in {}", ledger.display()))?;
        sys::run(&["ip", "netns", "add", name]).map(|_| ())
    }

    /// The namespaces this lab owns: those it recorded (the ledger; for a lab made before the
    /// ledger existed, the names in its state), and those named with its prefix that no other
    /// lab can claim — made beside the lab by a tool (the benchmark's relay namespaces) or left
    /// by a crash. A name is claimed by another lab while that lab is up (its directory is made
    /// before its first namespace and removed after its last) when the other lab recorded it,
    /// or when its prefix `mnl-OTHER-` starts the name: `mnl-frrz-a-ul` is lab `frrz-a`'s, and
    /// `mnl-frrz-a-r1-1` (lab `frrz`'s pod r1 in Kubernetes namespace `a`) is `frrz`'s.
    fn owned_netns(&self) -> HashSet<String> {
        let mut names: HashSet<String> = fs::read_to_string(self.dir.join(OWNED_NETNS))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if let Ok(st) = self.load() {
            names.extend([st.underlay_netns, st.external_netns]);
            names.extend(st.nodes.into_iter().map(|n| n.netns));
            names.extend(st.pods.into_iter().map(|p| p.netns));
        }
        names.remove("");
        let mine = prefix(&self.name);
        let longer = format!("{}-", self.name);
        // Other labs that are up: their recorded names, and the prefixes of those whose name
        // extends this one's.
        let mut claimed: HashSet<String> = HashSet::new();
        let mut others: Vec<String> = Vec::new();
        for e in fs::read_dir(state_root()).into_iter().flatten().flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name == self.name || !e.path().is_dir() {
                continue;
            }
            if let Ok(text) = fs::read_to_string(e.path().join(OWNED_NETNS)) {
                claimed.extend(text.lines().map(str::to_string));
            }
            if name.starts_with(&longer) {
                others.push(prefix(&name));
            }
        }
        names.extend(sys::netns_list().into_iter().filter(|n| {
            n.starts_with(&mine)
                && !claimed.contains(n)
                && !others.iter().any(|o| n.starts_with(o.as_str()))
        }));
        names
    }

    /// Deletes every namespace this lab recorded as its own that still exists; returns how
    /// many. Another lab's namespaces are never touched, whatever their names.
    fn sweep(&self) -> usize {
        let owned = self.owned_netns();
        let mut n = 0;
        // Pods first, then nodes, then the underlay: the order a cluster would go away in.
        let mut names: Vec<String> = sys::netns_list()
            .into_iter()
            .filter(|s| owned.contains(s))
            .collect();
        names.sort_by_key(|s| {
            (
                s.ends_with("-ul") || s.ends_with("-ext"),
                s.contains("-node"),
            )
        });
        let mut left = Vec::new();
        for name in names {
            if sys::run_quiet(&["ip", "netns", "delete", &name]) {
                n += 1;
            } else {
                left.push(name);
            }
        }
        // Keep only what could not be removed, for the next try.
        let ledger = self.dir.join(OWNED_NETNS);
        if left.is_empty() {
            let _ = fs::remove_file(&ledger);
        } else {
            let _ = fs::write(&ledger, left.join("\n") + "\n");
        }
        n
    }
}

/// The pod network split into one block per node: `n` rounded up to a power of two equal
/// blocks, in order.
///
/// # Errors
/// Blocks would be smaller than a /28 (`MIN_NODE_BLOCK_BITS`), naming the largest prefix that fits.
pub fn node_blocks(pod_cidr: ipnet::Ipv4Net, n: usize) -> anyhow::Result<Vec<ipnet::Ipv4Net>> {
    let bits =
        u8::try_from(usize::BITS - n.max(1).saturating_sub(1).leading_zeros()).expect("at most 64");
    let plen = pod_cidr.prefix_len() + bits;
    if plen > 32 - MIN_NODE_BLOCK_BITS {
        bail!(
            "--pod-cidr {pod_cidr} is too small for {n} nodes: each node needs at least a /{}, \
             so the pod network must be a /{} or larger",
            32 - MIN_NODE_BLOCK_BITS,
            32 - MIN_NODE_BLOCK_BITS - bits
        );
    }
    let blocks: Vec<ipnet::Ipv4Net> = pod_cidr
        .trunc()
        .subnets(plen)
        .context("splitting the pod network")?
        .take(n)
        .collect();
    Ok(blocks)
}

/// Refuses link addresses that overlap the lab's pod network: the pods' eth0 routes (and the
/// node's host routes to them) would take their traffic, and `verify` would fail with no hint.
///
/// # Errors
/// The first overlap, naming the pod, the link and both ranges.
pub fn check_pod_network(topologies: &[Topology], pod_cidr: ipnet::Ipv4Net) -> anyhow::Result<()> {
    let pods = ipnet::IpNet::V4(pod_cidr.trunc());
    for t in topologies {
        for l in &t.spec.links {
            for (field, value) in [("local_ip", &l.local_ip), ("peer_ip", &l.peer_ip)] {
                let Ok(net) = value.parse::<ipnet::IpNet>() else {
                    // Not an address the lab can check (empty, or refused later with a reason).
                    continue;
                };
                if pods.contains(&net.trunc().network()) || net.trunc().contains(&pods.network()) {
                    bail!(
                        "Topology {}: link uid {} {field} {value} overlaps the lab's pod network \
                         {pod_cidr} (the pods' eth0); choose link addresses outside it, or \
                         another range with `up --pod-cidr`",
                        t.key(),
                        l.uid
                    );
                }
            }
        }
    }
    Ok(())
}

/// Drops every UDP 4789 (VXLAN) packet a node sends, and counts it.
fn block_vxlan(netns: &str) -> anyhow::Result<()> {
    let nft = |args: &[&str]| {
        let mut full = vec!["ip", "netns", "exec", netns, "nft"];
        full.extend_from_slice(args);
        sys::run(&full)
    };
    nft(&["add", "table", "inet", "meshnet_lab"])?;
    nft(&[
        "add",
        "chain",
        "inet",
        "meshnet_lab",
        "out",
        "{ type filter hook output priority 0; policy accept; }",
    ])?;
    nft(&[
        "add",
        "rule",
        "inet",
        "meshnet_lab",
        "out",
        "udp",
        "dport",
        "4789",
        "counter",
        "drop",
    ])?;
    Ok(())
}

/// The API server's port, from the kubeconfig's `server: https://127.0.0.1:PORT`.
fn kube_server_port(kubeconfig: &Path) -> anyhow::Result<u16> {
    let text = fs::read_to_string(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let v: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", kubeconfig.display()))?;
    let server = v["clusters"][0]["cluster"]["server"]
        .as_str()
        .with_context(|| format!("{}: no clusters[0].cluster.server", kubeconfig.display()))?;
    let rest = server
        .strip_prefix("https://127.0.0.1:")
        .or_else(|| server.strip_prefix("https://localhost:"))
        .with_context(|| {
            format!("the lab runs against an API server on this machine's loopback, not {server}")
        })?;
    rest.trim_end_matches('/')
        .parse()
        .with_context(|| format!("port of {server}"))
}

/// `kube-proxy NETNS PORT`: listens on 127.0.0.1:PORT inside the node namespace NETNS and relays
/// every connection to 127.0.0.1:PORT of the machine, where the API server is. The listening
/// socket is made by a thread that entered the node's namespace (a socket stays in the
/// namespace it was made in); connections out are made from this process's own namespace.
///
/// # Errors
/// The namespace cannot be entered or the port is taken there.
pub fn kube_proxy(netns: &Path, port: u16) -> anyhow::Result<()> {
    use std::net::{TcpListener, TcpStream};
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let listener = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<TcpListener> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            TcpListener::bind(("127.0.0.1", port)).context("binding in the node namespace")
        })
        .join()
        .map_err(|_| anyhow::anyhow!("proxy thread panicked"))?
    })?;
    for conn in listener.incoming() {
        let Ok(down) = conn else { continue };
        std::thread::spawn(move || {
            let Ok(up) = TcpStream::connect(("127.0.0.1", port)) else {
                return;
            };
            let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
                return;
            };
            let a = std::thread::spawn(move || {
                let (mut r, mut w) = (down, up);
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
            let (mut r, mut w) = (up2, down2);
            let _ = std::io::copy(&mut r, &mut w);
            let _ = w.shutdown(std::net::Shutdown::Write);
            let _ = a.join();
        });
    }
    Ok(())
}

fn stop_process(pid: i32) {
    let p = Pid::from_raw(pid);
    if kill(p, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if kill(p, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(p, Signal::SIGKILL);
}

/// Pods to nodes: `spec.nodeName` when it names a lab node, else round-robin, continuing after
/// the `already` pods the lab runs (so pods added later spread like the first ones).
fn place(pods: &[PodDecl], nodes: &[NodeState], already: usize) -> Vec<(PodDecl, String)> {
    let names: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let mut next = already;
    pods.iter()
        .map(|p| {
            let node = match &p.node_name {
                Some(n) if names.contains(n.as_str()) => n.clone(),
                _ => {
                    let n = nodes[next % nodes.len()].name.clone();
                    next += 1;
                    n
                }
            };
            (p.clone(), node)
        })
        .collect()
}

/// Finds a pod by `NAME` (unique across namespaces) or `NAMESPACE/NAME`.
///
/// # Errors
/// No such pod, or the name is ambiguous.
pub fn find_pod(st: &LabState, pod: &str) -> anyhow::Result<usize> {
    let matches: Vec<usize> = st
        .pods
        .iter()
        .enumerate()
        .filter(|(_, p)| match pod.split_once('/') {
            Some((ns, n)) => p.namespace == ns && p.name == n,
            None => p.name == pod,
        })
        .map(|(i, _)| i)
        .collect();
    match matches.as_slice() {
        [i] => Ok(*i),
        [] => bail!("no pod {pod:?} in lab {:?}", st.name),
        _ => bail!("pod name {pod:?} is ambiguous: use NAMESPACE/NAME"),
    }
}

/// One end of a link in the lab's view.
#[derive(Debug, Clone, Serialize)]
pub struct EndView {
    pub pod: String,
    pub interface: String,
    pub ip: String,
    pub state: String,
}

/// A link as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct LinkView {
    pub uid: i64,
    pub namespace: String,
    pub a: EndView,
    pub b: EndView,
    pub kind: String,
    pub state: String,
    pub message: String,
    /// Both ends are lab pods (or the peer is the node, for macvlan): `up` waits for it.
    #[serde(skip)]
    pub required: bool,
}

impl LinkView {
    fn involves(&self, k: &PodKey) -> bool {
        self.namespace == k.namespace && (self.a.pod == k.name || self.b.pod == k.name)
    }
    fn label(&self) -> String {
        format!(
            "{}/uid {}: {}:{} <-> {}:{}",
            self.namespace, self.uid, self.a.pod, self.a.interface, self.b.pod, self.b.interface
        )
    }
}

fn describe(links: &[&LinkView]) -> String {
    links
        .iter()
        .map(|l| format!("  {} [{}] {}", l.label(), l.state, l.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Combines both ends' statuses into one view per link `(namespace, uid)`.
///
/// A uid names one link between two pods: a declaration by any other pod (a third declarer, or
/// a second pair that picked the same uid) is never dropped — the link's view becomes an `error`
/// naming those pods, whatever the ends' statuses say, and `up` waits for it if one of them runs.
pub fn link_views(st: &LabState, topos: &[Topology]) -> Vec<LinkView> {
    let running: HashMap<PodKey, &PodState> = st.pods.iter().map(|p| (p.key(), p)).collect();
    let mut out: BTreeMap<(String, i64), LinkView> = BTreeMap::new();
    // Declarers of a view's uid that are not its two ends.
    let mut extra: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
    for t in topos {
        let key = t.key();
        let Some(pod) = running.get(&key) else {
            continue;
        };
        let current = t.status.container_id == pod.container_id;
        for l in &t.spec.links {
            let s = t.status.links.iter().find(|s| s.uid == l.uid && current);
            let state = s.map_or("pending".to_string(), |s| s.state.to_string());
            let end = EndView {
                pod: key.name.clone(),
                interface: l.local_intf.clone(),
                ip: l.local_ip.clone(),
                state: state.clone(),
            };
            let k = (key.namespace.clone(), l.uid);
            let peer_key = PodKey::new(&key.namespace, &l.peer_pod);
            let peer_running = l.peer_pod == LOCALHOST || running.contains_key(&peer_key);
            match out.get_mut(&k) {
                Some(v) if v.b.pod == key.name => {
                    // The peer's own declaration wins; fall back to what the first end said.
                    let ip = if end.ip.is_empty() {
                        v.b.ip.clone()
                    } else {
                        end.ip.clone()
                    };
                    if v.a.ip.is_empty() {
                        v.a.ip = l.peer_ip.clone();
                    }
                    v.b = EndView { ip, ..end };
                    merge_state(v, s.map(|s| (&s.kind, s.state, &s.message)));
                }
                // A pod declaring the uid twice is its own error, which its status reports.
                Some(v) if v.a.pod == key.name => {}
                Some(v) => {
                    if running.contains_key(&key) {
                        v.required = true;
                    }
                    extra.entry(k).or_default().push(key.name.clone());
                }
                None => {
                    let (kind, message) = s.map_or((String::new(), String::new()), |s| {
                        (s.kind.clone(), s.message.clone())
                    });
                    let localhost = l.peer_pod == LOCALHOST;
                    out.insert(
                        k,
                        LinkView {
                            uid: l.uid,
                            namespace: key.namespace.clone(),
                            a: end,
                            b: EndView {
                                pod: l.peer_pod.clone(),
                                interface: l.peer_intf.clone(),
                                ip: l.peer_ip.clone(),
                                state: if localhost {
                                    "up".into()
                                } else {
                                    "pending".into()
                                },
                            },
                            kind,
                            state: String::new(),
                            message,
                            required: peer_running,
                        },
                    );
                }
            }
        }
    }
    // A link is up when both ends say so.
    for (k, v) in &mut out {
        if let Some(pods) = extra.get(k) {
            v.state = "error".into();
            v.message = format!(
                "uid {} is also declared by {} (besides {} and {}): a uid names one link between two pods",
                v.uid,
                pods.join(", "),
                v.a.pod,
                v.b.pod
            );
        } else if v.a.state == "error" || v.b.state == "error" {
            v.state = "error".into();
        } else if v.a.state == "up" && v.b.state == "up" {
            v.state = "up".into();
        } else if ["up", "down"].contains(&v.a.state.as_str())
            && ["up", "down"].contains(&v.b.state.as_str())
        {
            // Built, and its cable pulled by a declared `state: down`.
            v.state = "down".into();
        } else {
            v.state = "pending".into();
        }
    }
    out.into_values().collect()
}

fn merge_state(v: &mut LinkView, s: Option<(&String, LinkState, &String)>) {
    if let Some((kind, state, message)) = s {
        if v.kind.is_empty() {
            v.kind = kind.clone();
        }
        if state != LinkState::Up && !message.is_empty() && v.message.is_empty() {
            v.message = message.clone();
        }
    }
}

fn addr_of(cidr: &str) -> Option<String> {
    cidr.split_once('/').map(|(a, _)| a.to_string())
}

fn ping(netns: &str, ip: &str) -> bool {
    (0..3).any(|_| {
        sys::run(&[
            "ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", ip,
        ])
        .is_ok()
    })
}

fn iface_up(netns: &str, ifname: &str) -> Result<(), String> {
    let out = sys::run(&["ip", "-n", netns, "-j", "link", "show", "dev", ifname])
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let flags: Vec<&str> = v[0]["flags"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if flags.contains(&"UP") && flags.contains(&"LOWER_UP") {
        Ok(())
    } else {
        Err(format!("{ifname} flags {flags:?}"))
    }
}

fn verify_link(st: &LabState, l: &LinkView) -> Vec<(bool, String)> {
    let pod_ns = |name: &str| {
        st.pods
            .iter()
            .find(|p| p.namespace == l.namespace && p.name == name)
            .map(|p| p.netns.clone())
    };
    let mut out = Vec::new();
    let (Some(ns_a), Some(ns_b)) = (
        pod_ns(&l.a.pod),
        if l.b.pod == LOCALHOST {
            None
        } else {
            pod_ns(&l.b.pod)
        },
    ) else {
        // macvlan: the pod end must be present and up.
        if let Some(ns_a) = pod_ns(&l.a.pod) {
            let r = iface_up(&ns_a, &l.a.interface);
            out.push((
                r.is_ok(),
                format!(
                    "{} present and up {}",
                    l.label(),
                    r.err().unwrap_or_default()
                ),
            ));
            // Addressed on the external segment: it must reach the external device.
            let on_ext = l.a.ip.parse::<ipnet::IpNet>().is_ok_and(|n| {
                EXTERNAL_NET
                    .parse::<ipnet::IpNet>()
                    .is_ok_and(|e| e.contains(&n.addr()))
            });
            if on_ext {
                out.push((
                    ping(&ns_a, EXTERNAL_DEVICE),
                    format!(
                        "{} ping {} -> {EXTERNAL_DEVICE} (external device)",
                        l.label(),
                        l.a.pod
                    ),
                ));
            }
        }
        return out;
    };
    let (ip_a, ip_b) = (addr_of(&l.a.ip), addr_of(&l.b.ip));
    match (ip_a, ip_b) {
        (Some(a), Some(b)) => {
            out.push((
                ping(&ns_a, &b),
                format!("{} ping {} -> {b}", l.label(), l.a.pod),
            ));
            out.push((
                ping(&ns_b, &a),
                format!("{} ping {} -> {a}", l.label(), l.b.pod),
            ));
        }
        _ => {
            for (ns, ifname, pod) in [
                (&ns_a, &l.a.interface, &l.a.pod),
                (&ns_b, &l.b.interface, &l.b.pod),
            ] {
                let r = iface_up(ns, ifname);
                out.push((
                    r.is_ok(),
                    format!(
                        "{} {pod}:{ifname} up {}",
                        l.label(),
                        r.err().unwrap_or_default()
                    ),
                ));
            }
        }
    }
    out
}

/// The daemons' `--resync-seconds`: `MESHNET_LAB_RESYNC_SECONDS`, else 10.
fn resync_seconds() -> anyhow::Result<u64> {
    match std::env::var("MESHNET_LAB_RESYNC_SECONDS") {
        Ok(v) => v.parse::<u64>().ok().filter(|n| *n > 0).with_context(|| {
            format!("MESHNET_LAB_RESYNC_SECONDS={v:?} is not a positive number of seconds")
        }),
        Err(_) => Ok(10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> ipnet::Ipv4Net {
        s.parse().expect("CIDR")
    }

    #[test]
    fn the_pod_network_is_split_into_equal_node_blocks() {
        let blocks = |cidr, n| {
            node_blocks(net(cidr), n)
                .expect("fits")
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(blocks("203.0.113.0/24", 1), ["203.0.113.0/24"]);
        assert_eq!(
            blocks("203.0.113.0/24", 3),
            ["203.0.113.0/26", "203.0.113.64/26", "203.0.113.128/26"]
        );
        assert_eq!(blocks("10.9.0.0/16", 16).len(), 16);
        let e = node_blocks(net("203.0.113.0/26"), 16).expect_err("16 /28s need a /24");
        assert!(e.to_string().contains("must be a /24 or larger"), "{e}");
    }

    #[test]
    fn link_addresses_in_the_pod_network_are_refused_naming_both() {
        let m = manifest::parse(
            "apiVersion: networkop.co.uk/v1beta1\nkind: Topology\nmetadata: {name: r1}\n\
             spec:\n  links:\n  - {uid: 7, peer_pod: r2, local_intf: eth1, peer_intf: eth1,\n\
             \x20    local_ip: 198.51.100.9/31, peer_ip: 203.0.113.1/31}\n",
            "default",
        )
        .expect("manifest");
        let e = check_pod_network(&m.topologies, net("203.0.113.0/24")).expect_err("overlap");
        let msg = e.to_string();
        for part in [
            "default/r1",
            "uid 7",
            "peer_ip 203.0.113.1/31",
            "203.0.113.0/24",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg}");
        }
        check_pod_network(&m.topologies, net("203.0.113.128/25")).expect("no overlap");
        // A link network that contains the whole pod network overlaps it too.
        assert!(check_pod_network(&m.topologies, net("198.51.100.8/30")).is_err());
    }
}
