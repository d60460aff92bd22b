//! A real API server for the integration tests (envtest's `KUBEBUILDER_ASSETS` or
//! `shared/k8s/apiserver.sh`, see `script`), with the generated CRD installed by
//! `kubectl apply --server-side`. Needs bash, openssl, curl, xz and kubectl.
//!
//! * [`shared`]: one server per test binary, started by the first test that asks (tests of one
//!   binary run in parallel threads, each with its own tokio runtime and so its own client).
//! * [`Server::start`]: a private server, for tests that stop and restart it.
//!
//! Each server gets a fresh `RUN_DIR` under the temp dir and a free port (the script also uses
//! PORT+10000 and PORT+10001 for etcd). Statics are never dropped, so every server is paired with
//! a reaper: a detached shell that waits for the test process to exit — however it exits — then
//! runs `apiserver.sh stop RUN_DIR` and removes the directory. Private servers also stop in `Drop`.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshnet_kube::KubeStore;

pub const CRD_NAME: &str = "topologies.networkop.co.uk";

/// The API server launcher, found in this order:
/// * `$MESHNET_APISERVER_SH`: any script with the interface of `shared/k8s/apiserver.sh`;
/// * `$KUBEBUILDER_ASSETS` (the envtest convention: a directory with `etcd` and `kube-apiserver`):
///   the repository's `scripts/envtest-apiserver.sh` starts them as envtest does;
/// * `../shared/k8s/apiserver.sh` beside the repository (as CI lays it out).
///
/// Otherwise it panics saying how to get one. No path outside the repository and `../shared`.
fn script() -> PathBuf {
    static SCRIPT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SCRIPT
        .get_or_init(find_script)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_script() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MESHNET_APISERVER_SH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "MESHNET_APISERVER_SH={} is not a file",
                p.display()
            ))
        };
    }
    if let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|a| !a.is_empty()) {
        let assets = PathBuf::from(assets);
        let missing: Vec<_> = ["etcd", "kube-apiserver"]
            .into_iter()
            .filter(|b| !assets.join(b).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "KUBEBUILDER_ASSETS={} lacks {missing:?} (envtest wants etcd and kube-apiserver there)",
                assets.display()
            ));
        }
        return Ok(workspace().join("scripts/envtest-apiserver.sh"));
    }
    let shared = workspace().join("../shared/k8s/apiserver.sh");
    if shared.is_file() {
        return Ok(shared);
    }
    Err(format!(
        "no Kubernetes API server for the tests. Either set KUBEBUILDER_ASSETS to a directory with \
         etcd and kube-apiserver (envtest's convention; e.g. `setup-envtest use -p path` from \
         sigs.k8s.io/controller-runtime/tools/setup-envtest prints one), or put the project's \
         shared/ directory beside the repository ({} is missing; its k8s/apiserver.sh starts etcd \
         and apiextensions-apiserver from bin/*.xz)",
        shared.display()
    ))
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[derive(Debug)]
pub struct Server {
    pub run_dir: PathBuf,
    pub port: u16,
    pub kubeconfig: PathBuf,
    /// Stop in `Drop` (private servers only; the shared one is left to its reaper).
    stop_on_drop: bool,
}

fn port_free(p: u16) -> bool {
    TcpListener::bind(("127.0.0.1", p)).is_ok()
}

/// A port P with P, P+10000 and P+10001 free, starting from a per-process pseudo-random point.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for i in 0..2000u32 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p =
            u16::try_from(20_000 + (seed.wrapping_add(n * 7919).wrapping_add(i)) % 25_000).unwrap();
        if port_free(p) && port_free(p + 10_000) && port_free(p + 10_001) {
            return p;
        }
    }
    panic!("no free port triple found");
}

fn unique_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "meshnet-kube-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Server {
    /// Starts a private server (with the CRD installed), stopped on drop.
    pub fn start() -> Server {
        let mut last = String::new();
        for _ in 0..3 {
            let run_dir = unique_dir();
            let port = free_port();
            spawn_reaper(&run_dir);
            match start_script(&run_dir, port) {
                Ok(kubeconfig) => {
                    let s = Server {
                        run_dir,
                        port,
                        kubeconfig,
                        stop_on_drop: true,
                    };
                    s.install_crd();
                    return s;
                }
                Err(e) => last = e,
            }
        }
        panic!("cannot start the API server: {last}");
    }

    /// Stops etcd and the API server, keeping RUN_DIR (data, certificates, kubeconfig).
    pub fn stop(&self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(&self.run_dir)
            .stdin(Stdio::null())
            .output();
    }

    /// Starts again on the same RUN_DIR and port: same data, same kubeconfig.
    pub fn restart(&self) {
        // The stopped processes release their ports (and etcd its data dir) as they exit.
        let ports = [self.port, self.port + 10_000, self.port + 10_001];
        for _ in 0..300 {
            if ports.iter().all(|p| port_free(*p)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut last = String::new();
        for _ in 0..5 {
            match start_script(&self.run_dir, self.port) {
                Ok(_) => return,
                // The old processes may still be releasing the ports.
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("cannot restart the API server: {last}");
    }

    /// Compacts etcd's history up to its current revision, so that no watch can resume at an
    /// older `resourceVersion` (it gets `410 Gone`), through etcd's HTTP gateway on PORT+10000.
    pub fn compact_etcd(&self) {
        let url = |op: &str| format!("http://127.0.0.1:{}/v3/kv/{op}", self.port + 10_000);
        let post = |op: &str, body: &str| -> serde_json::Value {
            let out = Command::new("curl")
                .args(["-sf", "-X", "POST", &url(op), "-d", body])
                .stdin(Stdio::null())
                .output()
                .expect("run curl");
            assert!(out.status.success(), "etcd {op}: {out:?}");
            serde_json::from_slice(&out.stdout).expect("etcd answers JSON")
        };
        let range = post("range", r#"{"key":"AA=="}"#);
        let rev = range["header"]["revision"]
            .as_str()
            .expect("revision")
            .to_string();
        post(
            "compaction",
            &format!(r#"{{"revision":"{rev}","physical":true}}"#),
        );
    }

    /// `kubectl --kubeconfig … ARGS`, panicking with its output on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.run_dir.join("kubectl-cache"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn install_crd(&self) {
        let crd = workspace().join("manifests/base/topology-crd.yaml");
        self.kubectl(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
        // `kubectl wait`, and a jsonpath filter on the conditions, fail at once ("<nil> is not
        // array or slice") when they read the CRD before the server has written any condition:
        // read the whole object and look for the condition here.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let crd: serde_json::Value = serde_json::from_str(&self.kubectl(&[
                "get",
                &format!("crd/{CRD_NAME}"),
                "-o",
                "json",
            ]))
            .expect("kubectl answers JSON");
            let established = crd["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
            if established {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CRD {CRD_NAME} not Established after 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// A new store (and client) on this server, for the calling test's runtime.
    pub async fn store(&self) -> KubeStore {
        KubeStore::from_kubeconfig(&self.kubeconfig)
            .await
            .expect("store from kubeconfig")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stop_on_drop {
            self.stop();
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// Runs `apiserver.sh start`, returning the kubeconfig it prints.
fn start_script(run_dir: &Path, port: u16) -> Result<PathBuf, String> {
    let out = Command::new(script())
        .arg("start")
        .arg(run_dir)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", script().display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "exit {}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("KUBECONFIG="))
        .map(PathBuf::from)
        .ok_or_else(|| format!("no KUBECONFIG line in {stdout:?}"))
}

/// A detached shell that stops the server of `run_dir` and removes it once this process is gone.
// Never waited for on purpose: it outlives this process (and so never becomes our zombie).
#[allow(clippy::zombie_processes)]
fn spawn_reaper(run_dir: &Path) {
    let pid = std::process::id();
    let cmd = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; '{}' stop '{}'; rm -rf '{}'",
        script().display(),
        run_dir.display(),
        run_dir.display()
    );
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a ^C to the test run must not kill the reaper first.
        .process_group(0)
        .spawn()
        .expect("spawn reaper");
}

/// The server shared by the tests of this binary.
pub fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut s = Server::start();
        s.stop_on_drop = false;
        s
    })
}
