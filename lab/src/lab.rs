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

mod nodes;
mod place;
mod pods;
mod state;
mod verify;
mod views;

pub use nodes::kube_proxy;
use nodes::*;
use place::place;
pub use place::{check_pod_network, find_pod, node_blocks};
pub use state::*;
use verify::*;
pub use views::*;

/// Underlay network of the lab's nodes (TEST-NET-2).
const UNDERLAY_PREFIX: &str = "198.51.100";
/// The IPv6 underlay (`--underlay ipv6`): documentation space, node i = `2001:db8::i`.
const UNDERLAY6_PREFIX: &str = "2001:db8::";

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
