//! The real `meshnet` binary, run as a container runtime runs it, against an in-process fake
//! meshnetd (a tonic `meshnet.v1.Local` server on a temporary unix socket).
//!
//! Checks ADD → CHECK → DEL → DEL for every supported version against the golden results in
//! `tests/golden/`, every error path's code and that stdout holds nothing but the one JSON
//! object, that non-Kubernetes pods never reach the daemon, and that logs go to the log file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshnet_proto::v1::local_server::{Local, LocalServer};
use meshnet_proto::v1::{
    Attachment, GcReply, GcRequest, PodReply, PodRequest, StatusReply, StatusRequest,
};
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const CONTAINER: &str = "5f3a1c2e8b9d4e7fa1b2c3d4e5f60718";
const NETNS: &str = "/var/run/netns/cni-5f3a1c2e-8b9d-4e7f-a1b2-c3d4e5f60718";
const POD_ARGS: &str =
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=r1;K8S_POD_INFRA_CONTAINER_ID=abc";

/// What the fake daemon saw.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Add(PodRequest),
    Del(PodRequest),
    Check(PodRequest),
    Status,
    Gc(Vec<Attachment>),
}

#[derive(Debug, Clone, Default)]
struct FakeLocal {
    calls: Arc<Mutex<Vec<Call>>>,
    not_ready: Arc<AtomicBool>,
}

impl FakeLocal {
    fn record(&self, c: Call) {
        self.calls.lock().expect("lock").push(c);
    }
}

#[tonic::async_trait]
impl Local for FakeLocal {
    async fn add(&self, r: Request<PodRequest>) -> Result<Response<PodReply>, Status> {
        self.record(Call::Add(r.into_inner()));
        Ok(Response::new(PodReply {
            managed: true,
            links: vec![],
        }))
    }
    async fn del(&self, r: Request<PodRequest>) -> Result<Response<PodReply>, Status> {
        self.record(Call::Del(r.into_inner()));
        Ok(Response::new(PodReply::default()))
    }
    async fn check(&self, r: Request<PodRequest>) -> Result<Response<PodReply>, Status> {
        self.record(Call::Check(r.into_inner()));
        Ok(Response::new(PodReply {
            managed: true,
            links: vec![],
        }))
    }
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.record(Call::Status);
        let ready = !self.not_ready.load(Ordering::SeqCst);
        Ok(Response::new(StatusReply {
            ready,
            message: if ready {
                ""
            } else {
                "topology store not synced"
            }
            .into(),
            node_name: "node1".into(),
            version: "test".into(),
        }))
    }
    async fn gc(&self, r: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        self.record(Call::Gc(r.into_inner().valid_attachments));
        Ok(Response::new(GcReply::default()))
    }
    type CaptureStream = tokio_stream::Empty<Result<meshnet_proto::v1::CaptureChunk, Status>>;
    async fn capture(
        &self,
        _: Request<meshnet_proto::v1::CaptureRequest>,
    ) -> Result<Response<Self::CaptureStream>, Status> {
        Err(Status::unimplemented("capture is not faked"))
    }
}

/// A fake meshnetd serving on `<tempdir>/meshnetd.sock`, and where the plugin should log.
struct Harness {
    dir: tempfile::TempDir,
    fake: FakeLocal,
    runtime: tokio::runtime::Runtime,
}

impl Harness {
    fn new() -> Harness {
        let h = Harness::without_daemon();
        h.serve_at(&h.socket());
        h
    }

    /// A harness whose fake meshnetd does not serve yet (see [`Harness::serve_at`]).
    fn without_daemon() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        Harness {
            dir,
            fake: FakeLocal::default(),
            runtime,
        }
    }

    /// Starts serving the fake meshnetd on `socket`.
    fn serve_at(&self, socket: &Path) {
        let listener = {
            let _guard = self.runtime.enter();
            tokio::net::UnixListener::bind(socket).expect("bind")
        };
        self.runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(LocalServer::new(self.fake.clone()))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("meshnetd.sock")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("meshnet-cni.log")
    }

    /// Where the plugin logs when stdin names no `log_file` (`MESHNET_CNI_LOG`).
    fn env_log_file(&self) -> PathBuf {
        self.dir.path().join("env.log")
    }

    fn calls(&self) -> Vec<Call> {
        self.fake.calls.lock().expect("lock").clone()
    }

    /// The network config a runtime would pass at `version`, pointing at this harness.
    fn netconf(&self, version: &str, prev: Option<&Value>) -> Value {
        let mut conf = json!({
            "cniVersion": version,
            "name": "kindnet",
            "type": "meshnet",
            "ipam": {},
            "dns": {},
            "daemon_socket": self.socket(),
            "log_file": self.log_file(),
            "timeout_seconds": 10,
        });
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    /// Runs the binary with a clean environment plus `env`, feeding `stdin`.
    fn run(&self, env: &[(&str, &str)], stdin: &[u8]) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshnet"))
            .env_clear()
            .env("MESHNET_CNI_LOG", self.env_log_file())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meshnet");
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(stdin).expect("write stdin");
        drop(pipe);
        let out = child.wait_with_output().expect("wait");
        Run {
            code: out.status.code().expect("exit code"),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn run_json(&self, env: &[(&str, &str)], conf: &Value) -> Run {
        self.run(env, &serde_json::to_vec(conf).expect("json"))
    }
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn assert_silent_success(&self) {
        assert_eq!((self.code, self.stdout.as_str()), (0, ""), "{self:?}");
    }

    /// Asserts exit 1 and that stdout is exactly one error object with the spec's four keys.
    fn assert_error(&self, code: u32, version: &str) -> Value {
        assert_eq!(self.code, 1, "{self:?}");
        let v: Value = serde_json::from_str(&self.stdout).expect("stdout is one JSON value");
        assert_eq!(self.stdout, format!("{v}\n"), "nothing else on stdout");
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["cniVersion", "code", "details", "msg"], "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["cniVersion"], version, "{v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v
    }
}

fn golden(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("json")
}

/// Environment variables for one run.
type Env = Vec<(&'static str, &'static str)>;

fn cni_env(command: &'static str, args: &'static str) -> Env {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", CONTAINER),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn pod_request() -> PodRequest {
    PodRequest {
        namespace: "default".into(),
        name: "r1".into(),
        container_id: CONTAINER.into(),
        net_ns: NETNS.into(),
        ifname: "eth0".into(),
    }
}

#[test]
fn add_check_del_del_every_version() {
    for version in VERSIONS {
        let h = Harness::new();
        let expected = golden(&format!("ptp-{version}.json"));
        let conf = h.netconf(version, Some(&expected));

        let add = h.run_json(&cni_env("ADD", POD_ARGS), &conf);
        assert_eq!(add.code, 0, "{version}: {add:?}");
        assert_eq!(add.stdout, format!("{expected}\n"), "{version}");

        let check = h.run_json(&cni_env("CHECK", POD_ARGS), &conf);
        let check_allowed = version >= "0.4.0";
        if check_allowed {
            check.assert_silent_success();
        } else {
            let e = check.assert_error(1, version);
            assert_eq!(
                e["msg"],
                format!("config version {version} does not allow CHECK")
            );
        }
        h.run_json(&cni_env("DEL", POD_ARGS), &conf)
            .assert_silent_success();
        h.run_json(&cni_env("DEL", POD_ARGS), &conf)
            .assert_silent_success();

        let mut expected_calls = vec![Call::Add(pod_request())];
        if check_allowed {
            expected_calls.push(Call::Check(pod_request()));
        }
        expected_calls.extend([Call::Del(pod_request()), Call::Del(pod_request())]);
        assert_eq!(h.calls(), expected_calls, "{version}");
    }
}

#[test]
fn add_converts_prev_result_between_versions() {
    let h = Harness::new();
    for (from, to) in [("1.1.0", "0.3.0"), ("0.3.1", "1.0.0"), ("0.4.0", "1.1.0")] {
        let conf = h.netconf(to, Some(&golden(&format!("ptp-{from}.json"))));
        let add = h.run_json(&cni_env("ADD", POD_ARGS), &conf);
        assert_eq!(
            add.stdout,
            format!("{}\n", golden(&format!("ptp-{to}.json"))),
            "{from} -> {to}"
        );
    }
}

#[test]
fn add_without_prev_result_prints_the_minimal_result() {
    let h = Harness::new();
    for version in VERSIONS {
        let add = h.run_json(&cni_env("ADD", POD_ARGS), &h.netconf(version, None));
        let expected = golden(&format!("no-prev-result-{version}.json"));
        assert_eq!(add.stdout, format!("{expected}\n"), "{version}");
    }
}

#[test]
fn a_pod_without_k8s_pod_name_never_reaches_the_daemon() {
    let h = Harness::new();
    let prev = golden("ptp-1.1.0.json");
    let conf = h.netconf("1.1.0", Some(&prev));
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default";
    let add = h.run_json(&cni_env("ADD", args), &conf);
    assert_eq!((add.code, add.stdout), (0, format!("{prev}\n")));
    h.run_json(&cni_env("CHECK", args), &conf)
        .assert_silent_success();
    h.run_json(&cni_env("DEL", args), &conf)
        .assert_silent_success();
    assert_eq!(h.calls(), []);
}

#[test]
fn error_cases_print_only_the_error_json() {
    let h = Harness::new();
    let prev = golden("ptp-1.0.0.json");
    let good = serde_json::to_vec(&h.netconf("1.0.0", Some(&prev))).expect("json");
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let mut number_version = h.netconf("1.0.0", Some(&prev));
    number_version["cniVersion"] = json!(1.0);
    let number_version = serde_json::to_vec(&number_version).expect("json");
    let unknown_version = serde_json::to_vec(&h.netconf("9.9.9", Some(&prev))).expect("json");
    let bad_prev = serde_json::to_vec(&h.netconf(
        "1.0.0",
        Some(&json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.1.1"}]})),
    ))
    .expect("json");
    let add = cni_env("ADD", POD_ARGS);
    let without = |name: &str| -> Vec<(&str, &str)> {
        add.iter().copied().filter(|(k, _)| *k != name).collect()
    };
    let with = |name: &'static str, value: &'static str| -> Vec<(&'static str, &'static str)> {
        let mut env: Vec<(&str, &str)> = add.iter().copied().filter(|(k, _)| *k != name).collect();
        env.push((name, value));
        env
    };

    // (case, environment, stdin, expected code, expected cniVersion of the error)
    let cases: Vec<(&str, Env, &[u8], u32, &str)> = vec![
        ("malformed JSON", add.clone(), b"{not json", 6, "1.1.0"),
        ("truncated JSON", add.clone(), &truncated, 6, "1.1.0"),
        ("empty stdin", add.clone(), b"", 6, "1.1.0"),
        (
            "cniVersion a number",
            add.clone(),
            &number_version,
            6,
            "1.1.0",
        ),
        (
            "unknown cniVersion",
            add.clone(),
            &unknown_version,
            1,
            "1.1.0",
        ),
        (
            "missing CNI_COMMAND",
            without("CNI_COMMAND"),
            &good,
            4,
            "1.0.0",
        ),
        (
            "unknown CNI_COMMAND",
            with("CNI_COMMAND", "SPLAT"),
            &good,
            4,
            "1.0.0",
        ),
        (
            "missing CNI_CONTAINERID",
            without("CNI_CONTAINERID"),
            &good,
            4,
            "1.0.0",
        ),
        (
            "CNI_CONTAINERID with ';'",
            with("CNI_CONTAINERID", "a;b"),
            &good,
            4,
            "1.0.0",
        ),
        ("missing CNI_NETNS", without("CNI_NETNS"), &good, 4, "1.0.0"),
        (
            "relative CNI_NETNS",
            with("CNI_NETNS", "netns/x"),
            &good,
            4,
            "1.0.0",
        ),
        (
            "CNI_IFNAME with '/'",
            with("CNI_IFNAME", "eth/0"),
            &good,
            4,
            "1.0.0",
        ),
        (
            "CNI_IFNAME of 16 bytes",
            with("CNI_IFNAME", "abcdefghijklmnop"),
            &good,
            4,
            "1.0.0",
        ),
        (
            "hostile K8S_POD_NAME",
            with("CNI_ARGS", "K8S_POD_NAME=../../x"),
            &good,
            4,
            "1.0.0",
        ),
        ("bad prevResult", add.clone(), &bad_prev, 6, "1.0.0"),
    ];
    for (name, env, stdin, code, version) in cases {
        let run = h.run(&env, stdin);
        let e = run.assert_error(code, version);
        if name.starts_with("missing") {
            let var = name.trim_start_matches("missing ");
            assert!(
                e["msg"].as_str().is_some_and(|m| m.contains(var)),
                "{name}: {e}"
            );
        }
    }
    assert_eq!(h.calls(), [], "no error case reaches the daemon");
}

#[test]
fn an_unreachable_daemon_is_try_again_later_after_a_bounded_wait() {
    let h = Harness::new();
    let mut conf = h.netconf("0.4.0", Some(&golden("ptp-0.4.0.json")));
    let missing = h.dir.path().join("nobody-listens.sock");
    conf["daemon_socket"] = json!(missing);
    // timeout_seconds 2: the plugin waits half of it (1 s) for the daemon, then answers 11.
    conf["timeout_seconds"] = json!(2);
    for command in ["ADD", "CHECK", "DEL"] {
        let started = Instant::now();
        let e = h
            .run_json(&cni_env(command, POD_ARGS), &conf)
            .assert_error(11, "0.4.0");
        let took = started.elapsed();
        assert_eq!(
            e["msg"],
            format!("meshnetd is not reachable at {}", missing.display())
        );
        assert!(
            e["details"]
                .as_str()
                .is_some_and(|d| d.contains("waited 1.0s for meshnetd")),
            "{e}"
        );
        assert!(
            took >= Duration::from_millis(900),
            "{command}: answered after {took:?}, before the 1 s wait was over"
        );
    }
    // A socket file nobody listens on (a daemon killed without cleaning up) is waited for too.
    let stale = h.dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    conf["daemon_socket"] = json!(stale);
    h.run_json(&cni_env("ADD", POD_ARGS), &conf)
        .assert_error(11, "0.4.0");
    assert_eq!(h.calls(), [], "nothing reached the fake daemon");
}

#[test]
fn a_daemon_back_within_the_wait_serves_the_add() {
    // The rollout case: the conflist stays, meshnetd restarts, an ADD comes in meanwhile.
    let h = Harness::without_daemon();
    let mut conf = h.netconf("1.0.0", Some(&golden("ptp-1.0.0.json")));
    conf["timeout_seconds"] = json!(6);
    let socket = h.socket();
    let run = std::thread::scope(|s| {
        let plugin = s.spawn(|| h.run_json(&cni_env("ADD", POD_ARGS), &conf));
        std::thread::sleep(Duration::from_millis(800));
        h.serve_at(&socket);
        plugin.join().expect("plugin thread")
    });
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(h.calls(), [Call::Add(pod_request())]);
}

#[test]
fn check_and_status_need_their_versions() {
    let h = Harness::new();
    h.run_json(
        &cni_env("CHECK", POD_ARGS),
        &h.netconf("0.3.1", Some(&golden("ptp-0.3.1.json"))),
    )
    .assert_error(1, "0.3.1");
    let status = [("CNI_COMMAND", "STATUS")];
    h.run_json(&status, &h.netconf("1.0.0", None))
        .assert_error(1, "1.0.0");
    h.run_json(&[("CNI_COMMAND", "GC")], &h.netconf("1.0.0", None))
        .assert_error(1, "1.0.0");
    assert_eq!(h.calls(), []);
}

#[test]
fn status_reports_readiness() {
    let h = Harness::new();
    let status = [("CNI_COMMAND", "STATUS")];
    let conf = h.netconf("1.1.0", None);
    h.run_json(&status, &conf).assert_silent_success();
    h.fake.not_ready.store(true, Ordering::SeqCst);
    let e = h.run_json(&status, &conf).assert_error(50, "1.1.0");
    assert_eq!(e["msg"], "meshnetd is not ready: topology store not synced");
    assert_eq!(h.calls(), [Call::Status, Call::Status]);

    let mut gone = conf.clone();
    gone["daemon_socket"] = json!(h.dir.path().join("gone.sock"));
    let e = h.run_json(&status, &gone).assert_error(50, "1.1.0");
    assert!(
        e["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("meshnetd is not reachable at ")),
        "{e}"
    );
}

#[test]
fn gc_sends_the_valid_attachments() {
    let h = Harness::new();
    let mut conf = h.netconf("1.1.0", None);
    conf["cni.dev/valid-attachments"] = json!([
        {"containerID": "c1", "ifname": "eth0"},
        {"containerID": "c2", "ifname": "net1"}
    ]);
    h.run_json(&[("CNI_COMMAND", "GC")], &conf)
        .assert_silent_success();
    assert_eq!(
        h.calls(),
        [Call::Gc(vec![
            Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            },
            Attachment {
                container_id: "c2".into(),
                ifname: "net1".into()
            },
        ])]
    );
}

#[test]
fn version_needs_nothing_but_the_command() {
    let h = Harness::new();
    let expected =
        |v: &str| json!({"cniVersion": v, "supportedVersions": VERSIONS}).to_string() + "\n";
    let run = h.run(&[("CNI_COMMAND", "VERSION")], b"");
    assert_eq!((run.code, run.stdout), (0, expected("1.1.0")));
    let run = h.run(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"0.3.1"}"#);
    assert_eq!((run.code, run.stdout), (0, expected("0.3.1")));
}

#[test]
fn logs_go_to_the_log_file_and_never_to_stdout() {
    let h = Harness::new();
    let conf = h.netconf("1.0.0", Some(&golden("ptp-1.0.0.json")));
    let add = h.run_json(&cni_env("ADD", POD_ARGS), &conf);
    assert_eq!(add.code, 0);
    assert_eq!(add.stdout, format!("{}\n", golden("ptp-1.0.0.json")));
    assert_eq!(add.stderr, "", "the log file opened, so nothing on stderr");
    let log = std::fs::read_to_string(h.log_file()).expect("log file written");
    assert!(log.contains("CNI request"), "{log}");
    assert!(log.contains(CONTAINER), "{log}");
    assert!(log.contains("default/r1"), "{log}");
    assert!(
        !h.env_log_file().exists(),
        "the netconf's log_file wins over MESHNET_CNI_LOG"
    );

    // Unparsable stdin: the log falls back to MESHNET_CNI_LOG, and records the failure.
    h.run(&cni_env("ADD", POD_ARGS), b"{oops")
        .assert_error(6, "1.1.0");
    let log = std::fs::read_to_string(h.env_log_file()).expect("fallback log written");
    assert!(log.contains("failed") && log.contains("code=6"), "{log}");

    // A log file that cannot be opened: logs go to stderr, stdout still carries only the result.
    let mut conf = conf;
    conf["log_file"] = json!(h.dir.path().join("no/such/dir/x.log"));
    let add = h.run_json(&cni_env("ADD", POD_ARGS), &conf);
    assert_eq!(add.stdout, format!("{}\n", golden("ptp-1.0.0.json")));
    assert!(
        add.stderr.contains("cannot open the log file"),
        "{}",
        add.stderr
    );
}
