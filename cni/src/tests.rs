//! Whole invocations ([`run`]) against an in-process fake meshnetd, with golden results
//! (`tests/golden/`, shared with the binary test `tests/cni_binary.rs`).

use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::json;

use super::*;

/// A fake meshnetd that records every call.
#[derive(Debug, Default)]
struct FakeDaemon {
    calls: Mutex<Vec<(Command, Option<PodRequest>)>>,
    gc_seen: Mutex<Vec<Attachment>>,
    /// Returned by every pod call.
    links: Vec<LinkReport>,
    /// Returned by every call instead of a reply.
    fail: Option<tonic::Code>,
    ready: bool,
}

impl FakeDaemon {
    fn ready() -> Self {
        FakeDaemon {
            ready: true,
            ..Default::default()
        }
    }

    fn record(&self, c: Command, pod: Option<PodRequest>) -> Result<(), DaemonError> {
        self.calls.lock().expect("lock").push((c, pod));
        match self.fail {
            Some(code) => Err(DaemonError::Rpc(tonic::Status::new(code, "injected"))),
            None => Ok(()),
        }
    }

    fn pod_reply(&self, c: Command, pod: PodRequest) -> Result<PodReply, DaemonError> {
        self.record(c, Some(pod))?;
        Ok(PodReply {
            managed: true,
            links: self.links.clone(),
        })
    }

    fn commands(&self) -> Vec<Command> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .map(|(c, _)| *c)
            .collect()
    }
}

#[async_trait]
impl Daemon for FakeDaemon {
    async fn add(&self, pod: PodRequest) -> Result<PodReply, DaemonError> {
        self.pod_reply(Command::Add, pod)
    }
    async fn del(&self, pod: PodRequest) -> Result<PodReply, DaemonError> {
        self.pod_reply(Command::Del, pod)
    }
    async fn check(&self, pod: PodRequest) -> Result<PodReply, DaemonError> {
        self.pod_reply(Command::Check, pod)
    }
    async fn status(&self) -> Result<StatusReply, DaemonError> {
        self.record(Command::Status, None)?;
        Ok(StatusReply {
            ready: self.ready,
            message: if self.ready {
                ""
            } else {
                "initial sync pending"
            }
            .into(),
            ..Default::default()
        })
    }
    async fn gc(&self, valid_attachments: Vec<Attachment>) -> Result<GcReply, DaemonError> {
        self.record(Command::Gc, None)?;
        *self.gc_seen.lock().expect("lock") = valid_attachments;
        Ok(GcReply::default())
    }
}

fn golden(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("golden file");
    serde_json::from_str(&text).expect("golden JSON")
}

const CONTAINER: &str = "5f3a1c2e8b9d4e7fa1b2c3d4e5f60718";
const NETNS: &str = "/var/run/netns/cni-5f3a1c2e-8b9d-4e7f-a1b2-c3d4e5f60718";

fn cni_env(command: &str, args: &str) -> CniEnv {
    CniEnv::from_pairs([
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", CONTAINER),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args),
        ("CNI_PATH", "/opt/cni/bin"),
    ])
}

const POD_ARGS: &str =
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=r1;K8S_POD_INFRA_CONTAINER_ID=abc";

fn netconf(version: CniVersion, prev: Option<&Value>) -> Vec<u8> {
    let mut conf = json!({
        "cniVersion": version.as_str(),
        "name": "kindnet",
        "type": "meshnet",
        "daemon_socket": "/run/test/meshnetd.sock",
        "timeout_seconds": 7,
    });
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    serde_json::to_vec(&conf).expect("json")
}

async fn invoke(daemon: &FakeDaemon, env: &CniEnv, stdin: &[u8]) -> Outcome {
    run(env, stdin, |_| daemon).await
}

/// Asserts a failure with `code`, and that stdout is exactly the error JSON tagged `version`.
fn assert_error(out: &Outcome, code: u32, version: &str) -> Value {
    assert_eq!(out.exit_code, 1, "{out:?}");
    assert!(out.stdout.ends_with('\n') && out.stdout.lines().count() == 1);
    let v: Value = serde_json::from_str(&out.stdout).expect("error JSON");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["cniVersion"], version, "{v}");
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys.len(), 4, "{v}");
    v
}

fn assert_silent_success(out: &Outcome) {
    assert_eq!(
        out,
        &Outcome {
            stdout: String::new(),
            exit_code: 0
        }
    );
}

#[tokio::test]
async fn add_check_del_del_every_version_with_golden_results() {
    for version in CniVersion::ALL {
        let expected = golden(&format!("ptp-{version}.json"));
        // prevResult in every version's format converts to the requested version's golden.
        for from in CniVersion::ALL {
            let daemon = FakeDaemon::ready();
            let prev = golden(&format!("ptp-{from}.json"));
            let out = invoke(
                &daemon,
                &cni_env("ADD", POD_ARGS),
                &netconf(version, Some(&prev)),
            )
            .await;
            assert_eq!(out.exit_code, 0, "{version} from {from}: {out:?}");
            assert_eq!(out.stdout, format!("{expected}\n"), "{version} from {from}");
            assert_eq!(daemon.commands(), [Command::Add]);
        }

        let daemon = FakeDaemon::ready();
        let stdin = netconf(version, Some(&expected));
        let add = invoke(&daemon, &cni_env("ADD", POD_ARGS), &stdin).await;
        assert_eq!(add.stdout, format!("{expected}\n"));
        let check = invoke(&daemon, &cni_env("CHECK", POD_ARGS), &stdin).await;
        if version.allows_check() {
            assert_silent_success(&check);
        } else {
            assert_error(&check, 1, version.as_str());
        }
        for _ in 0..2 {
            assert_silent_success(&invoke(&daemon, &cni_env("DEL", POD_ARGS), &stdin).await);
        }
        let mut expected_calls = vec![Command::Add];
        if version.allows_check() {
            expected_calls.push(Command::Check);
        }
        expected_calls.extend([Command::Del, Command::Del]);
        assert_eq!(daemon.commands(), expected_calls, "{version}");
        let calls = daemon.calls.lock().expect("lock");
        let pod = calls[0].1.as_ref().expect("pod request");
        assert_eq!(
            pod,
            &PodRequest {
                namespace: "default".into(),
                name: "r1".into(),
                container_id: CONTAINER.into(),
                net_ns: NETNS.into(),
                ifname: "eth0".into(),
            }
        );
    }
}

#[tokio::test]
async fn add_without_prev_result_prints_the_golden_minimal_result() {
    for version in CniVersion::ALL {
        let daemon = FakeDaemon::ready();
        let out = invoke(&daemon, &cni_env("ADD", POD_ARGS), &netconf(version, None)).await;
        let expected = golden(&format!("no-prev-result-{version}.json"));
        assert_eq!(out.stdout, format!("{expected}\n"));
        assert_eq!(out.exit_code, 0);
    }
}

#[tokio::test]
async fn a_pod_without_k8s_pod_name_never_reaches_the_daemon() {
    let daemon = FakeDaemon::ready();
    let prev = golden("ptp-1.0.0.json");
    let stdin = netconf(CniVersion::V1_0_0, Some(&prev));
    for args in ["", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default"] {
        let out = invoke(&daemon, &cni_env("ADD", args), &stdin).await;
        assert_eq!(out.stdout, format!("{prev}\n"));
        assert_silent_success(&invoke(&daemon, &cni_env("CHECK", args), &stdin).await);
        assert_silent_success(&invoke(&daemon, &cni_env("DEL", args), &stdin).await);
    }
    assert_eq!(daemon.commands(), []);
}

#[tokio::test]
async fn unmanaged_pods_pass_prev_result_through() {
    #[derive(Debug)]
    struct Unmanaged;
    #[async_trait]
    impl Daemon for Unmanaged {
        async fn add(&self, _: PodRequest) -> Result<PodReply, DaemonError> {
            Ok(PodReply::default())
        }
        async fn del(&self, _: PodRequest) -> Result<PodReply, DaemonError> {
            Ok(PodReply::default())
        }
        async fn check(&self, _: PodRequest) -> Result<PodReply, DaemonError> {
            Ok(PodReply::default())
        }
        async fn status(&self) -> Result<StatusReply, DaemonError> {
            Ok(StatusReply::default())
        }
        async fn gc(&self, _: Vec<Attachment>) -> Result<GcReply, DaemonError> {
            Ok(GcReply::default())
        }
    }
    let prev = golden("ptp-0.4.0.json");
    let out = run(
        &cni_env("ADD", POD_ARGS),
        &netconf(CniVersion::V0_4_0, Some(&prev)),
        |_| Unmanaged,
    )
    .await;
    assert_eq!(out.stdout, format!("{prev}\n"));
}

#[tokio::test]
async fn the_daemon_is_configured_from_the_netconf() {
    let daemon = FakeDaemon::ready();
    let mut seen = None;
    run(
        &cni_env("DEL", POD_ARGS),
        &netconf(CniVersion::V1_1_0, None),
        |c| {
            seen = Some(c.clone());
            &daemon
        },
    )
    .await;
    assert_eq!(
        seen,
        Some(DaemonConfig {
            socket: "/run/test/meshnetd.sock".into(),
            timeout: std::time::Duration::from_secs(7),
        })
    );
}

#[tokio::test]
async fn version_answers_with_the_request_version_or_the_latest() {
    let daemon = FakeDaemon::ready();
    let env = CniEnv::from_pairs([("CNI_COMMAND", "VERSION")]);
    let expect = |v: &str| {
        format!(
            "{}\n",
            json!({"cniVersion": v, "supportedVersions": ["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]})
        )
    };
    for (stdin, v) in [
        ("", "1.1.0"),
        (r#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
        (r#"{"cniVersion":"9.9.9"}"#, "1.1.0"),
        ("{garbage", "1.1.0"),
    ] {
        let out = invoke(&daemon, &env, stdin.as_bytes()).await;
        assert_eq!(out.stdout, expect(v), "{stdin}");
        assert_eq!(out.exit_code, 0);
    }
    assert_eq!(daemon.commands(), []);
}

#[tokio::test]
async fn check_needs_0_4_0_and_a_valid_prev_result() {
    let daemon = FakeDaemon::ready();
    let env = cni_env("CHECK", POD_ARGS);
    let out = invoke(
        &daemon,
        &env,
        &netconf(CniVersion::V0_3_1, Some(&golden("ptp-0.3.1.json"))),
    )
    .await;
    let e = assert_error(&out, 1, "0.3.1");
    assert_eq!(e["msg"], "config version 0.3.1 does not allow CHECK");
    let out = invoke(&daemon, &env, &netconf(CniVersion::V1_0_0, None)).await;
    let e = assert_error(&out, 7, "1.0.0");
    assert_eq!(e["msg"], "CHECK requires prevResult");
    let out = invoke(
        &daemon,
        &env,
        &netconf(CniVersion::V1_0_0, Some(&json!({"ips": [1]}))),
    )
    .await;
    assert_error(&out, 6, "1.0.0");
    assert_eq!(daemon.commands(), []);
}

#[tokio::test]
async fn check_fails_when_a_link_is_in_error() {
    let daemon = FakeDaemon {
        ready: true,
        links: vec![
            LinkReport {
                uid: 1,
                local_intf: "eth1".into(),
                peer_pod: "r2".into(),
                peer_intf: "eth1".into(),
                kind: "veth".into(),
                state: LinkState::Up as i32,
                message: String::new(),
            },
            LinkReport {
                uid: 2,
                local_intf: "eth2".into(),
                peer_pod: "r3".into(),
                peer_intf: "eth1".into(),
                kind: "veth".into(),
                state: LinkState::Error as i32,
                message: "eth2 missing".into(),
            },
        ],
        ..Default::default()
    };
    let stdin = netconf(CniVersion::V1_0_0, Some(&golden("ptp-1.0.0.json")));
    let out = invoke(&daemon, &cni_env("CHECK", POD_ARGS), &stdin).await;
    let e = assert_error(&out, 100, "1.0.0");
    assert_eq!(
        e["msg"],
        "meshnet: CHECK failed: link 2 (eth2 to r3:eth1): eth2 missing"
    );
    // ADD reports, it does not fail: meshnetd answers ADD errors with a status.
    let out = invoke(&daemon, &cni_env("ADD", POD_ARGS), &stdin).await;
    assert_eq!(out.exit_code, 0);
}

#[tokio::test]
async fn daemon_failures_become_cni_errors() {
    for (code, expected) in [
        (tonic::Code::Unavailable, 11),
        (tonic::Code::Internal, 100),
        (tonic::Code::FailedPrecondition, 100),
        (tonic::Code::InvalidArgument, 7),
    ] {
        let daemon = FakeDaemon {
            fail: Some(code),
            ..Default::default()
        };
        let stdin = netconf(CniVersion::V0_4_0, Some(&golden("ptp-0.4.0.json")));
        for cmd in ["ADD", "CHECK", "DEL"] {
            let out = invoke(&daemon, &cni_env(cmd, POD_ARGS), &stdin).await;
            let e = assert_error(&out, expected, "0.4.0");
            assert_eq!(e["msg"], "meshnet: injected");
        }
    }
}

#[tokio::test]
async fn status_and_gc_need_1_1_0() {
    let daemon = FakeDaemon::ready();
    let status = CniEnv::from_pairs([("CNI_COMMAND", "STATUS")]);
    let gc = CniEnv::from_pairs([("CNI_COMMAND", "GC")]);
    let old = netconf(CniVersion::V1_0_0, None);
    let e = assert_error(&invoke(&daemon, &status, &old).await, 1, "1.0.0");
    assert_eq!(e["msg"], "config version 1.0.0 does not allow STATUS");
    assert_error(&invoke(&daemon, &gc, &old).await, 1, "1.0.0");
    assert_eq!(daemon.commands(), []);

    let new = netconf(CniVersion::V1_1_0, None);
    assert_silent_success(&invoke(&daemon, &status, &new).await);
    let not_ready = FakeDaemon::default();
    let e = assert_error(&invoke(&not_ready, &status, &new).await, 50, "1.1.0");
    assert_eq!(e["msg"], "meshnetd is not ready: initial sync pending");
    let down = FakeDaemon {
        fail: Some(tonic::Code::Unavailable),
        ..Default::default()
    };
    assert_error(&invoke(&down, &status, &new).await, 50, "1.1.0");
}

#[tokio::test]
async fn gc_passes_the_valid_attachments() {
    let daemon = FakeDaemon::ready();
    let gc = CniEnv::from_pairs([("CNI_COMMAND", "GC")]);
    let e = assert_error(
        &invoke(&daemon, &gc, &netconf(CniVersion::V1_1_0, None)).await,
        7,
        "1.1.0",
    );
    assert_eq!(e["msg"], "GC requires cni.dev/valid-attachments");
    let mut conf: Value = serde_json::from_slice(&netconf(CniVersion::V1_1_0, None)).expect("json");
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    let out = invoke(&daemon, &gc, &serde_json::to_vec(&conf).expect("json")).await;
    assert_silent_success(&out);
    assert_eq!(
        *daemon.gc_seen.lock().expect("lock"),
        vec![Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into()
        }]
    );
}

#[tokio::test]
async fn errors_are_tagged_with_the_request_version_when_known() {
    let daemon = FakeDaemon::ready();
    let stdin = netconf(CniVersion::V0_3_1, None);
    let env = CniEnv::from_pairs([("CNI_COMMAND", "ADD")]);
    let e = assert_error(&invoke(&daemon, &env, &stdin).await, 4, "0.3.1");
    assert_eq!(
        e["msg"],
        "required env variables CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME missing"
    );
    let env = cni_env("ADD", POD_ARGS);
    let out = invoke(
        &daemon,
        &env,
        br#"{"cniVersion":"9.9.9","name":"n","type":"meshnet"}"#,
    )
    .await;
    assert_error(&out, 1, "1.1.0");
    assert_error(
        &invoke(&daemon, &env, b"{\"cniVersion\":").await,
        6,
        "1.1.0",
    );
    assert_eq!(daemon.commands(), []);
}

#[tokio::test]
async fn oversized_stdin_is_refused() {
    let daemon = FakeDaemon::ready();
    let stdin = vec![b' '; netconf::MAX_STDIN_BYTES + 1];
    assert_error(
        &invoke(&daemon, &cni_env("ADD", POD_ARGS), &stdin).await,
        6,
        "1.1.0",
    );
}
