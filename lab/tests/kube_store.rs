//! The lab on the real Kubernetes API: every daemon uses the kube store against the API server
//! from `shared/k8s` (needs root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../kube/tests/common/mod.rs"]
mod apiserver;
mod common;

use common::{LabGuard, topo};

#[test]
fn five_nodes_across_three_nodes_on_the_kubernetes_store() {
    let server = apiserver::Server::start();
    let kc = server.kubeconfig.to_str().unwrap().to_string();
    let lab = LabGuard::new("kube5");
    lab.ok(&[
        "up",
        &topo("5node.yml"),
        "--nodes",
        "3",
        "--kubeconfig",
        &kc,
    ]);
    lab.assert_links_up(8);
    let out = lab.ok(&["verify"]);
    assert_eq!(out.matches("OK ").count(), 16, "{out}");
    // The daemons wrote the status through the API: kubectl sees each pod's node.
    let wide = server.kubectl(&["get", "topologies", "-o", "wide"]);
    for (pod, node) in [("r1", "node1"), ("r2", "node2"), ("r3", "node3")] {
        assert!(
            wide.lines().any(|l| l.starts_with(pod) && l.contains(node)),
            "{pod} on {node}: {wide}"
        );
    }
}

/// A daemon that was down while things changed catches up from the store when it comes back.
#[test]
fn a_daemon_restarted_midway_catches_up_from_the_watch() {
    let server = apiserver::Server::start();
    let kc = server.kubeconfig.to_str().unwrap().to_string();
    let lab = LabGuard::new("kubecu");
    lab.ok(&[
        "up",
        &topo("3node.yml"),
        "--nodes",
        "3",
        "--link",
        "grpc",
        "--kubeconfig",
        &kc,
    ]);
    lab.assert_links_up(3);
    // node2 (r2) misses r1's restart: its half toward r1 keeps the old peer sandbox's state.
    lab.ok(&["daemon", "node2", "stop"]);
    let out = lab.run(&["restart", "r1", "--timeout", "5"]);
    assert!(
        !out.status.success(),
        "uid 1 cannot come up while node2's daemon is down"
    );
    lab.ok(&["daemon", "node2", "start"]);
    let t = std::time::Instant::now();
    loop {
        let st = lab.status();
        if st["links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["state"] == "up")
        {
            break;
        }
        assert!(
            t.elapsed().as_secs() < 20,
            "links did not converge: {st:#}\n{}",
            lab.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    lab.ok(&["verify"]);
}
