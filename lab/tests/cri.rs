//! A real container runtime drives meshnet, as a kubelet does (needs root; no network).
//!
//! containerd (Debian's 1.6, from `scripts/install-deps.sh`) runs with its CRI plugin inside a
//! network namespace this test makes — the "node": ptp's host ends and routes live there, not in
//! the machine's namespace — with its root, state, socket, runc state and config under a
//! directory of its own. Its sandbox image is a pause image built here (`scripts/pause-image.sh`:
//! a static C program packed as an OCI archive) and imported with `ctr`: no registry. Its CNI
//! config directory holds a primary ptp + host-local + portmap conflist (the reference plugins
//! from containernetworking-plugins), and meshnetd (file store, `--cni-conf-dir`) chains itself in
//! front of it as on a node. Pods are driven through the CRI API (`k8s-cri`):
//! RunPodSandbox / StopPodSandbox / RemovePodSandbox, each retried with backoff on failure as
//! the kubelet does, so containerd runs the real plugin chain (ptp, portmap, meshnet) through
//! libcni.
//!
//! Cleanup removes every sandbox through the CRI API and then checks that nothing is left: no
//! pod network namespace, no mount and no process of the runtime. On a panic, `Drop` does what it
//! can (kills the processes under the test's directory, unmounts, removes the node namespace).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest, VersionRequest,
};
use meshnet_topology::store::TopologyStore;
use meshnet_topology::store::file::FileStore;
use meshnet_topology::topology::{Link, PodKey, Topology};
use tonic::transport::{Channel, Endpoint};

/// Kubernetes namespace of the test's pods.
const POD_NS: &str = "cri";
/// The node's address (meshnetd's `--host-ip`).
const NODE_IP: &str = "203.0.113.1";
const SANDBOX_IMAGE: &str = "meshnet.local/pause:1";
/// Addresses of the link r1:eth1 <-> r2:eth1.
const R1_IP: &str = "198.51.100.1";
const R2_IP: &str = "198.51.100.2";

fn prerequisites() {
    let missing: Vec<&str> = [
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "runc",
        "gcc",
    ]
    .into_iter()
    .filter(|c| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .collect();
    assert!(
        missing.is_empty() && cni_plugins().is_some(),
        "the CRI test needs containerd (with its runc shim), gcc and the reference CNI plugins \
         (missing: {missing:?}); run scripts/install-deps.sh as root"
    );
}

/// Where the reference CNI plugins are (Debian's containernetworking-plugins, or upstream's).
fn cni_plugins() -> Option<PathBuf> {
    ["/usr/lib/cni", "/opt/cni/bin"]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.join("ptp").is_file() && d.join("host-local").is_file())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| pid.to_string() != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    let mut m: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    m.sort_by_key(|p| std::cmp::Reverse(p.len()));
    m
}

fn kill(pid: i32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `within` for `child` to exit; SIGKILL after that.
fn reap(child: &mut Child, within: Duration) {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn topology(name: &str, peer: &str, ip: &str, peer_ip: &str) -> Topology {
    Topology::new(
        POD_NS,
        name,
        vec![Link {
            uid: 1,
            peer_pod: peer.into(),
            local_intf: "eth1".into(),
            peer_intf: "eth1".into(),
            local_ip: format!("{ip}/24"),
            peer_ip: format!("{peer_ip}/24"),
            ..Default::default()
        }],
    )
}

/// One node: its namespace, containerd, meshnetd and the CRI client.
struct Node {
    netns: String,
    dir: PathBuf,
    rt: tokio::runtime::Runtime,
    cri: RuntimeServiceClient<Channel>,
    containerd: Mutex<Option<Child>>,
    meshnetd: Mutex<Option<Child>>,
    store: FileStore,
    /// Sandboxes not removed yet, by id: their pause pids (for `Drop`).
    sandboxes: Mutex<HashMap<String, Option<i32>>>,
}

impl Node {
    fn start() -> Node {
        let netns = format!("cri-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("meshnet-{netns}"));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["net.d", "cni-bin", "store", "logs"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        run(Command::new("ip").args(["netns", "add", &netns]));
        // From here on `Drop` cleans up, also on a panic.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sock = dir.join("containerd.sock");
        let cri = RuntimeServiceClient::new(lazy_unix_channel(&rt, sock));
        let node = Node {
            store: FileStore::open(dir.join("store")).expect("file store"),
            netns,
            dir,
            rt,
            cri,
            containerd: Mutex::new(None),
            meshnetd: Mutex::new(None),
            sandboxes: Mutex::new(HashMap::new()),
        };
        node.ip(&["link", "set", "lo", "up"]);
        // The node's own address on an underlay interface (a veth pair: no dummy module here).
        node.ip(&[
            "link", "add", "node0", "type", "veth", "peer", "name", "node0p",
        ]);
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "node0"]);
        node.ip(&["link", "set", "node0p", "up"]);
        node.ip(&["link", "set", "node0", "up"]);
        node.write_cni_config();
        node.start_containerd();
        node
    }

    fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.netns).args(args));
    }

    /// A command run in the node's network namespace (only that: the mount namespace stays the
    /// machine's, so the pods' namespace files are visible to meshnetd).
    fn in_node(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(program);
        c
    }

    fn write_cni_config(&self) {
        let plugins = cni_plugins().expect("checked by prerequisites");
        for e in std::fs::read_dir(&plugins).unwrap() {
            let e = e.unwrap();
            std::os::unix::fs::symlink(e.path(), self.dir.join("cni-bin").join(e.file_name()))
                .unwrap();
        }
        let primary = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "cri-test",
            "plugins": [
                {
                    "type": "ptp",
                    "ipMasq": false,
                    "mtu": 1500,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "192.0.2.0/24"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.dir.join("ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(
            self.dir.join("net.d/10-ptp.conflist"),
            serde_json::to_vec_pretty(&primary).unwrap(),
        )
        .unwrap();
    }

    fn start_containerd(&self) {
        let d = self.dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  # the pods' namespace files under the state dir, not /run/netns
  netns_mounts_under_state_dir = true
  # the pause container's oom_score_adj no lower than containerd's: lowering it needs
  # CAP_SYS_RESOURCE, which a CI container may not grant
  restrict_oom_score_adj = true
  # no AppArmor profile to load on hosts that have AppArmor on (the test is about networking)
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    # plain copies: works on any filesystem the temp dir is on (overlay on overlay does not)
    snapshotter = "native"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
"#
        );
        std::fs::write(self.dir.join("containerd.toml"), config).unwrap();
        let log = std::fs::File::create(self.dir.join("containerd.log")).unwrap();
        let child = self
            .in_node("containerd")
            .arg("--config")
            .arg(self.dir.join("containerd.toml"))
            // libcni passes its environment to the plugins: meshnet logs here, not in /var/log
            .env("MESHNET_CNI_LOG", self.dir.join("meshnet-cni.log"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        *self.containerd.lock().unwrap() = Some(child);
        // Ready when the CRI answers.
        let t = Instant::now();
        loop {
            let mut cri = self.cri.clone();
            let v = self
                .rt
                .block_on(cri.version(VersionRequest::default()))
                .map(tonic::Response::into_inner);
            match v {
                Ok(v) => {
                    eprintln!("containerd up: {} {}", v.runtime_name, v.runtime_version);
                    break;
                }
                Err(e) if t.elapsed() > Duration::from_secs(30) => {
                    panic!("containerd's CRI did not answer: {e}\n{}", self.logs())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let image = self.dir.join("pause.tar");
        run(Command::new(common::repo().join("scripts/pause-image.sh"))
            .arg(&image)
            .arg(SANDBOX_IMAGE));
        run(Command::new("ctr")
            .arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", "k8s.io", "images", "import"])
            .args(["--snapshotter", "native"])
            .arg(&image));
    }

    fn start_meshnetd(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("meshnetd.log"))
            .unwrap();
        let d = &self.dir;
        let child = self
            .in_node(common::bin("meshnetd"))
            .args([
                "--node-name",
                "node1",
                "--host-ip",
                NODE_IP,
                "--http-addr",
                "",
            ])
            .arg("--socket")
            .arg(d.join("meshnetd.sock"))
            .arg("--store")
            .arg(format!("file:{}", d.join("store").display()))
            .arg("--cni-conf-dir")
            .arg(d.join("net.d"))
            .arg("--cni-bin-dir")
            .arg(d.join("cni-bin"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn meshnetd");
        *self.meshnetd.lock().unwrap() = Some(child);
        let conflist = d.join("net.d/00-meshnet.conflist");
        let t = Instant::now();
        while !(conflist.is_file() && d.join("meshnetd.sock").exists()) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "meshnetd did not install {}\n{}",
                conflist.display(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as a DaemonSet rollout does, and wait for the exit.
    fn stop_meshnetd(&self) {
        if let Some(mut c) = self.meshnetd.lock().unwrap().take() {
            kill(i32::try_from(c.id()).unwrap(), "-TERM");
            reap(&mut c, Duration::from_secs(10));
        }
    }

    fn apply(&self, t: &Topology) {
        self.rt.block_on(self.store.apply(t)).expect("store apply");
    }

    fn topology(&self, pod: &str) -> Topology {
        self.rt
            .block_on(self.store.get(&PodKey::new(POD_NS, pod)))
            .expect("store get")
            .expect("topology exists")
    }

    /// RunPodSandbox, retried with backoff (200 ms doubling to 2 s) until `within` has passed,
    /// as the kubelet retries a failed sandbox creation.
    fn run_pod(&self, name: &str, attempt: u32, within: Duration) -> String {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: POD_NS.into(),
                attempt,
            }),
            hostname: name.into(),
            log_directory: self.dir.join("logs").join(name).display().to_string(),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        };
        let id = self.retry(&format!("RunPodSandbox {name}"), within, || {
            let mut cri = self.cri.clone();
            let req = RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            };
            self.rt
                .block_on(cri.run_pod_sandbox(req))
                .map(|r| r.into_inner().pod_sandbox_id)
        });
        let pid = self.pause_pid(&id);
        self.sandboxes.lock().unwrap().insert(id.clone(), pid);
        id
    }

    fn pause_pid(&self, id: &str) -> Option<i32> {
        let mut cri = self.cri.clone();
        let status = self
            .rt
            .block_on(cri.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }))
            .ok()?
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(status.info.get("info")?).ok()?;
        info["pid"].as_i64().and_then(|p| i32::try_from(p).ok())
    }

    /// StopPodSandbox then RemovePodSandbox, each retried as the kubelet does.
    fn remove_pod(&self, id: &str, within: Duration) {
        self.retry(&format!("StopPodSandbox {id}"), within, || {
            let mut cri = self.cri.clone();
            self.rt
                .block_on(cri.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.into(),
                }))
                .map(drop)
        });
        self.retry(&format!("RemovePodSandbox {id}"), within, || {
            let mut cri = self.cri.clone();
            self.rt
                .block_on(cri.remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.into(),
                }))
                .map(drop)
        });
        self.sandboxes.lock().unwrap().remove(id);
    }

    fn retry<T>(
        &self,
        what: &str,
        within: Duration,
        mut f: impl FnMut() -> Result<T, tonic::Status>,
    ) -> T {
        let t = Instant::now();
        let mut backoff = Duration::from_millis(200);
        let mut failures = 0;
        loop {
            match f() {
                Ok(v) => {
                    if failures > 0 {
                        eprintln!("{what}: ok after {failures} failed attempts");
                    }
                    return v;
                }
                Err(e) if t.elapsed() + backoff > within => {
                    panic!("{what} kept failing for {within:?}: {e}\n{}", self.logs())
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("{what} failed (retrying in {backoff:?}): {}", e.message());
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Interface names in a pod's namespace.
    fn interfaces(&self, netns: &str) -> Vec<String> {
        let out = run(Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["ip", "-o", "link", "show"]));
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    fn ping_ok(netns: &str, to: &str) -> bool {
        Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["ping", "-c", "1", "-W", "1", to])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Pings until it answers or `deadline`; returns when it answered.
    fn ping_until(&self, netns: &str, to: &str, deadline: Instant) -> Instant {
        loop {
            if Self::ping_ok(netns, to) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "no answer from {to} in {netns}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        let tail = |f: &str| {
            let s = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        format!(
            "--- containerd.log (tail)\n{}\n--- meshnetd.log (tail)\n{}\n--- meshnet-cni.log (tail)\n{}",
            tail("containerd.log"),
            tail("meshnetd.log"),
            tail("meshnet-cni.log")
        )
    }

    /// Files of the pods' network namespaces (containerd keeps them under its state dir).
    fn pod_netns_files(&self) -> Vec<PathBuf> {
        let dir = self.dir.join("state/io.containerd.grpc.v1.cri/netns");
        std::fs::read_dir(dir)
            .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// Removes every sandbox, stops meshnetd and containerd, and checks that nothing of theirs
    /// is left.
    fn shut_down(&self) {
        let ids: Vec<String> = self.sandboxes.lock().unwrap().keys().cloned().collect();
        for id in ids {
            self.remove_pod(&id, Duration::from_secs(30));
        }
        self.stop_meshnetd();
        if let Some(mut c) = self.containerd.lock().unwrap().take() {
            kill(i32::try_from(c.id()).unwrap(), "-TERM");
            reap(&mut c, Duration::from_secs(10));
        }
        let needle = self.dir.display().to_string();
        let t = Instant::now();
        // Shims exit once their sandbox is removed; give them a moment.
        while !processes_mentioning(&needle).is_empty() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            processes_mentioning(&needle),
            Vec::<i32>::new(),
            "processes left"
        );
        assert_eq!(mounts_under(&self.dir), Vec::<String>::new(), "mounts left");
        assert_eq!(
            self.pod_netns_files(),
            Vec::<PathBuf>::new(),
            "pod namespaces left"
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Normally `shut_down` left nothing; after a panic, remove what is left by force.
        let unpoisoned = std::sync::PoisonError::into_inner;
        if let Some(mut c) = self.meshnetd.get_mut().unwrap_or_else(unpoisoned).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut c) = self.containerd.get_mut().unwrap_or_else(unpoisoned).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self
            .sandboxes
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .flatten()
        {
            kill(*pid, "-KILL");
        }
        for pid in processes_mentioning(&self.dir.display().to_string()) {
            kill(pid, "-KILL");
        }
        std::thread::sleep(Duration::from_millis(200));
        for m in mounts_under(&self.dir) {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A channel to containerd's unix socket, connected on first use.
fn lazy_unix_channel(rt: &tokio::runtime::Runtime, sock: PathBuf) -> Channel {
    let _guard = rt.enter();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::from_static("http://[::1]:0")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?))
            }
        }))
}

/// Two pods with a link get it at ADD and ping across; meshnetd is stopped (SIGTERM, as in a
/// DaemonSet rollout), r2 is stopped, removed and created again meanwhile, meshnetd comes back,
/// and within 10 s r2 has its link and pings r1. Cleanup leaves nothing behind.
#[test]
fn containerd_drives_meshnet_through_a_daemon_restart() {
    prerequisites();
    let node = Node::start();
    node.start_meshnetd();
    node.apply(&topology("r1", "r2", R1_IP, R2_IP));
    node.apply(&topology("r2", "r1", R2_IP, R1_IP));

    let r1 = node.run_pod("r1", 0, Duration::from_secs(30));
    let r2 = node.run_pod("r2", 0, Duration::from_secs(30));
    // Links at ADD: when r2's RunPodSandbox returns, both ends exist.
    let (t1, t2) = (node.topology("r1"), node.topology("r2"));
    assert_eq!(t1.status.container_id, r1, "r1 recorded with its sandbox");
    assert_eq!(t2.status.container_id, r2, "r2 recorded with its sandbox");
    let (ns1, ns2) = (t1.status.net_ns, t2.status.net_ns);
    assert!(
        node.interfaces(&ns1).contains(&"eth1".to_string()),
        "r1 eth1"
    );
    assert!(
        node.interfaces(&ns2).contains(&"eth1".to_string()),
        "r2 eth1"
    );
    assert!(
        node.interfaces(&ns2).contains(&"eth0".to_string()),
        "r2 eth0 from ptp"
    );
    node.ping_until(&ns1, R2_IP, Instant::now() + Duration::from_secs(5));

    // The rollout: meshnetd goes away; r2 is replaced while it is away.
    node.stop_meshnetd();
    assert!(
        node.dir.join("net.d/00-meshnet.conflist").is_file(),
        "the chain entry stays across a restart"
    );
    let (back, r2_new) = std::thread::scope(|s| {
        // The kubelet: stop and remove r2, then create it again, each retried until it works.
        let kubelet = s.spawn(|| {
            node.remove_pod(&r2, Duration::from_secs(60));
            let removed = Instant::now();
            (removed, node.run_pod("r2", 1, Duration::from_secs(60)))
        });
        std::thread::sleep(Duration::from_secs(3));
        node.start_meshnetd();
        let back = Instant::now();
        let (removed, id) = kubelet.join().expect("kubelet thread");
        // With a DEL that cannot finish while meshnetd is away, the runtime's stop waits for it;
        // with one that can, r2 is gone and its new sandbox waits for the daemon.
        eprintln!(
            "r2 stopped and removed {} meshnetd came back",
            if removed < back { "before" } else { "after" }
        );
        (back, id)
    });
    assert_ne!(r2_new, r2, "a new sandbox");
    let t2 = node.topology("r2");
    assert_eq!(
        t2.status.container_id, r2_new,
        "r2 recorded with its new sandbox"
    );
    let ns2 = t2.status.net_ns;
    let pinged = node.ping_until(&ns2, R1_IP, back + Duration::from_secs(10));
    assert!(node.interfaces(&ns2).contains(&"eth1".to_string()));
    eprintln!(
        "r2 recreated: links up and pinging {:.1} s after meshnetd came back",
        (pinged - back).as_secs_f64()
    );
    assert!(Node::ping_ok(&ns1, R2_IP), "and back from r1");

    node.shut_down();
    let netns = node.netns.clone();
    drop(node);
    assert!(
        !common::list_netns().contains(&netns),
        "the node namespace {netns} is left"
    );
}
