//! The real `meshnet` CNI binary against a running `meshnetd`: ADD → CHECK → DEL → DEL for every
//! supported cniVersion, with golden result JSON, and real veth links between real namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meshnet_topology::store::TopologyStore;
use meshnet_topology::store::file::FileStore;
use meshnet_topology::topology::{Link, Topology};
use serde_json::{Value, json};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Namespaces, a store and a daemon made for one test; all removed on drop.
struct Node {
    tag: String,
    dir: PathBuf,
    daemon: Child,
}

impl Node {
    fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.tag)
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("meshnetd.sock")
    }

    fn start(tag: &str, pods: &[&str]) -> Node {
        let tag = format!("mnc-{tag}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).unwrap();
        let mut names = vec![format!("{tag}-node")];
        names.extend(pods.iter().map(|p| format!("{tag}-{p}")));
        for n in &names {
            run(&["ip", "netns", "add", n]);
            run(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        let log = std::fs::File::create(dir.join("meshnetd.log")).unwrap();
        let daemon = Command::new("ip")
            .args(["netns", "exec", &names[0]])
            .arg(common::bin("meshnetd"))
            .args([
                "--node-name",
                "node1",
                "--host-ip",
                "198.51.100.1",
                "--http-addr",
                "",
            ])
            .arg("--socket")
            .arg(dir.join("meshnetd.sock"))
            .arg("--store")
            .arg(format!("file:{}", dir.join("store").display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let node = Node { tag, dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !node.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "meshnetd did not start: {}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("meshnetd.log")).unwrap_or_default()
    }

    fn store(&self) -> FileStore {
        FileStore::open(self.dir.join("store")).unwrap()
    }

    /// Runs the CNI plugin for `pod` with `netconf`; returns (exit ok, stdout).
    fn cni(&self, cmd: &str, pod: &str, container_id: &str, netconf: &Value) -> (bool, String) {
        let mut child = Command::new(common::bin("meshnet"))
            .env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", format!("/run/netns/{}", self.ns(pod)))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(netconf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        for n in common::list_netns() {
            if n.starts_with(&format!("{}-", self.tag)) {
                let _ = Command::new("ip").args(["netns", "delete", &n]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn link(uid: i64, peer: &str, ip: &str, peer_ip: &str) -> Link {
    Link {
        uid,
        peer_pod: peer.into(),
        local_intf: "eth1".into(),
        peer_intf: "eth1".into(),
        local_ip: ip.into(),
        peer_ip: peer_ip.into(),
        ..Default::default()
    }
}

/// What `ptp` + `host-local` hand over in this version's format.
fn prev_result(version: &str) -> Value {
    let mut ip = json!({"address": "203.0.113.5/26", "gateway": "203.0.113.1", "interface": 1});
    if version.starts_with("0.") {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "veth1a2b3c4d", "mac": "66:0f:9a:1b:2c:3d"},
            {"name": "eth0", "mac": "a2:55:01:02:03:04", "sandbox": "/run/netns/x"}
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
}

fn netconf(node: &Node, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "kindnet",
        "type": "meshnet",
        "ipam": {},
        "dns": {},
        "daemon_socket": node.socket(),
        "log_file": node.dir.join("meshnet-cni.log"),
        "prevResult": prev_result(version),
    })
}

fn golden(version: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/add-{version}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn has_iface(netns: &str, ifname: &str) -> bool {
    Command::new("ip")
        .args(["-n", netns, "link", "show", "dev", ifname])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn add_check_del_del_for_every_version() {
    let node = Node::start("ver", &["r1", "r2"]);
    let store = node.store();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        store
            .apply(&Topology::new(
                "default",
                "r1",
                vec![link(1, "r2", "192.0.2.1/24", "192.0.2.2/24")],
            ))
            .await
            .unwrap();
        store
            .apply(&Topology::new(
                "default",
                "r2",
                vec![link(1, "r1", "192.0.2.2/24", "192.0.2.1/24")],
            ))
            .await
            .unwrap();
    });
    for (i, v) in VERSIONS.iter().enumerate() {
        let nc = netconf(&node, v);
        let (c1, c2) = (format!("c1v{i}"), format!("c2v{i}"));
        let (ok, out) = node.cni("ADD", "r1", &c1, &nc);
        assert!(ok, "ADD r1 {v}: {out}\n{}", node.log());
        let got: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(got, golden(v), "ADD result for {v}");
        // r1's peer is not alive yet: no error; r1 has its port already (carrier off).
        assert!(has_iface(&node.ns("r1"), "eth1"));
        let (ok, out) = node.cni("ADD", "r2", &c2, &nc);
        assert!(ok, "ADD r2 {v}: {out}\n{}", node.log());
        assert!(
            has_iface(&node.ns("r1"), "eth1") && has_iface(&node.ns("r2"), "eth1"),
            "{v}: both ports there after r2's ADD"
        );
        run(&[
            "ip",
            "netns",
            "exec",
            &node.ns("r1"),
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "192.0.2.2",
        ]);
        if *v != "0.3.0" && *v != "0.3.1" {
            let (ok, out) = node.cni("CHECK", "r1", &c1, &nc);
            assert!(ok && out.is_empty(), "CHECK {v}: {out}");
            // CHECK notices a missing link.
            run(&["ip", "-n", &node.ns("r2"), "link", "del", "eth1"]);
            let (ok, out) = node.cni("CHECK", "r1", &c1, &nc);
            assert!(!ok, "CHECK {v} must fail with the link gone");
            let err: Value = serde_json::from_str(&out).unwrap();
            assert!(err["msg"].as_str().unwrap().contains("eth1"), "{err}");
            // The next ADD (or resync) repairs it; re-ADD is idempotent.
            let (ok, _) = node.cni("ADD", "r1", &c1, &nc);
            assert!(ok);
            let (ok, out) = node.cni("CHECK", "r1", &c1, &nc);
            assert!(ok, "CHECK after repair {v}: {out}");
        }
        for _ in 0..2 {
            let (ok, out) = node.cni("DEL", "r1", &c1, &nc);
            assert!(ok && out.is_empty(), "DEL r1 {v}: {out}");
            // r1's port goes with it; r2 keeps its own while it lives (issue 12).
            assert!(!has_iface(&node.ns("r1"), "eth1") && has_iface(&node.ns("r2"), "eth1"));
        }
        for _ in 0..2 {
            let (ok, out) = node.cni("DEL", "r2", &c2, &nc);
            assert!(ok && out.is_empty(), "DEL r2 {v}: {out}");
        }
        let st = rt.block_on(store.list()).unwrap();
        assert!(
            st.iter().all(|t| !t.status.is_alive()),
            "{v}: DEL cleared the status"
        );
    }
}

#[test]
fn del_tolerates_missing_topology_stale_sandbox_and_missing_netns() {
    let node = Node::start("del", &["r1", "r2"]);
    let store = node.store();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        store
            .apply(&Topology::new("default", "r1", vec![link(1, "r2", "", "")]))
            .await
            .unwrap();
        store
            .apply(&Topology::new("default", "r2", vec![link(1, "r1", "", "")]))
            .await
            .unwrap();
    });
    let nc = netconf(&node, "1.0.0");
    // No Topology at all: DEL succeeds.
    let (ok, out) = node.cni("DEL", "nosuchpod", "c0", &nc);
    assert!(ok, "{out}");
    assert!(node.cni("ADD", "r1", "c1", &nc).0);
    assert!(node.cni("ADD", "r2", "c2", &nc).0);
    assert!(has_iface(&node.ns("r1"), "eth1"));
    // A DEL for an older sandbox of r1 (same netns path) must not tear down the current one.
    let (ok, _) = node.cni("DEL", "r1", "c-old", &nc);
    assert!(ok);
    assert!(
        has_iface(&node.ns("r1"), "eth1"),
        "stale DEL removed the live link"
    );
    let t = rt
        .block_on(store.get(&meshnet_topology::topology::PodKey::new("default", "r1")))
        .unwrap()
        .unwrap();
    assert_eq!(t.status.container_id, "c1");
    // The netns vanished before DEL (as when a node reboots): DEL still succeeds, status cleared.
    run(&["ip", "netns", "delete", &node.ns("r2")]);
    let (ok, out) = node.cni("DEL", "r2", "c2", &nc);
    assert!(ok, "{out}");
    let (ok, _) = node.cni("DEL", "r2", "c2", &nc);
    assert!(ok);
    let t = rt
        .block_on(store.get(&meshnet_topology::topology::PodKey::new("default", "r2")))
        .unwrap()
        .unwrap();
    assert!(!t.status.is_alive());
}

#[test]
fn add_with_a_netns_that_does_not_exist_is_refused_cleanly() {
    let node = Node::start("badns", &["r1"]);
    let store = node.store();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store.apply(&Topology::new("default", "r1", vec![link(1, "r2", "", "")])))
        .unwrap();
    let mut child = Command::new(common::bin("meshnet"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/run/netns/does-not-exist-meshnet-test")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=r1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(netconf(&node, "1.0.0").to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["code"], 4, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("does-not-exist-meshnet-test"),
        "{err}"
    );
    // Nothing was recorded for the pod.
    let t = rt
        .block_on(store.get(&meshnet_topology::topology::PodKey::new("default", "r1")))
        .unwrap()
        .unwrap();
    assert!(!t.status.is_alive(), "{:?}", t.status);
}
