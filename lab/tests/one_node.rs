//! End to end on one node: the real daemons, the real CNI chain, real namespaces (needs root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{LabGuard, topo};

#[test]
fn triangle_verifies_and_down_leaves_nothing() {
    let lab = LabGuard::new("tri");
    lab.ok(&["up", &topo("3node.yml")]);
    lab.assert_links_up(3);
    let st = lab.status();
    for l in st["links"].as_array().unwrap() {
        assert_eq!(l["kind"], "veth");
    }
    let out = lab.ok(&["verify"]);
    assert_eq!(out.matches("OK ").count(), 6, "{out}");
    // Each pod has lo, eth0 and its two links, nothing else.
    for p in st["pods"].as_array().unwrap() {
        let mut ifs = LabGuard::interfaces(p["netns"].as_str().unwrap());
        ifs.sort();
        assert_eq!(ifs, ["eth0", "eth1", "eth2", "lo"], "pod {}", p["name"]);
    }
    // A ping across r1's eth2 really goes to r3.
    lab.ok(&[
        "exec",
        "r1",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "13.13.13.3",
    ]);
    lab.ok(&["down"]);
    assert!(
        lab.namespaces().is_empty(),
        "namespaces left: {:?}",
        lab.namespaces()
    );
    assert_eq!(common::lab_processes(&lab.name), 0, "daemon processes left");
    assert!(
        !std::path::Path::new("/run/meshnet-lab")
            .join(&lab.name)
            .exists()
    );
    assert!(
        !std::path::Path::new("/run/meshnet-lab")
            .join(format!("{}.lock", lab.name))
            .exists(),
        "the lab's lock file is left"
    );
}

#[test]
fn quincunx_verifies() {
    let lab = LabGuard::new("quin");
    lab.ok(&["up", &topo("5node.yml")]);
    lab.assert_links_up(8);
    let out = lab.ok(&["verify"]);
    assert_eq!(out.matches("OK ").count(), 16, "{out}");
}

#[test]
fn parallel_links_in_a_namespace_verify() {
    let lab = LabGuard::new("mlink");
    lab.ok(&["up", &topo("3node-mlink.yml")]);
    lab.assert_links_up(12);
    let st = lab.status();
    assert!(
        st["pods"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["namespace"] == "mlink")
    );
    let out = lab.ok(&["verify"]);
    assert_eq!(out.matches("OK ").count(), 24, "{out}");
}

#[test]
fn reverse_and_random_orders_converge() {
    for order in ["reverse", "random:1", "random:7", "random:42"] {
        let lab = LabGuard::new("order");
        lab.ok(&["up", &topo("5node.yml"), "--order", order]);
        lab.assert_links_up(8);
        lab.ok(&["verify"]);
    }
}

#[test]
fn concurrent_adds_converge() {
    let lab = LabGuard::new("par");
    lab.ok(&["up", &topo("5node.yml"), "--parallel"]);
    lab.assert_links_up(8);
    lab.ok(&["verify"]);
}

#[test]
fn restart_restores_links_and_leaves_no_stray_interface() {
    let lab = LabGuard::new("rst");
    lab.ok(&["up", &topo("3node.yml")]);
    let node = format!("mnl-{}-node1", lab.name);
    let before = LabGuard::interfaces(&node).len();
    for _ in 0..3 {
        lab.ok(&["restart", "r2"]);
        lab.assert_links_up(3);
        lab.ok(&["verify"]);
    }
    let st = lab.status();
    let r2 = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "r2")
        .unwrap();
    assert!(
        r2["netns"].as_str().unwrap().ends_with("-4"),
        "r2 got a new sandbox each time"
    );
    let mut ifs = LabGuard::interfaces(r2["netns"].as_str().unwrap());
    ifs.sort();
    assert_eq!(ifs, ["eth0", "eth1", "eth2", "lo"]);
    // The node keeps one host-side eth0 end per pod: the restarted sandboxes' ends are gone.
    assert_eq!(LabGuard::interfaces(&node).len(), before);
    assert_eq!(
        lab.namespaces().len(),
        3 + 3,
        "underlay, outside segment, node and three pods: {:?}",
        lab.namespaces()
    );
}

#[test]
fn pod_without_topology_is_left_alone() {
    let lab = LabGuard::new("pass");
    lab.ok(&["up", &topo("2node.yml")]);
    let st = lab.status();
    let r4 = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "r4")
        .unwrap();
    assert_eq!(r4["managed"], false);
    let mut ifs = LabGuard::interfaces(r4["netns"].as_str().unwrap());
    ifs.sort();
    assert_eq!(ifs, ["eth0", "lo"]);
    let out = lab.ok(&["verify"]);
    assert_eq!(out.matches("OK ").count(), 2, "{out}");
}

#[test]
fn bad_topology_content_is_reported_and_spares_other_links() {
    let dir = tempfile_dir();
    let f = dir.join("bad.yml");
    std::fs::write(
        &f,
        r#"
apiVersion: networkop.co.uk/v1beta1
kind: Topology
metadata: {name: a}
spec:
  links:
  - {uid: 1, peer_pod: b, local_intf: eth1, peer_intf: eth1, local_ip: 10.0.0.300/24, peer_ip: 198.51.100.2/24}
  - {uid: 2, peer_pod: b, local_intf: eth2, peer_intf: eth2, local_ip: 192.0.2.1/24, peer_ip: 192.0.2.2/24}
  - {uid: 3, peer_pod: b, local_intf: averyveryverylongname, peer_intf: eth3}
  - {uid: 4, peer_pod: a, local_intf: eth4, peer_intf: eth5}
---
apiVersion: networkop.co.uk/v1beta1
kind: Topology
metadata: {name: b}
spec:
  links:
  - {uid: 1, peer_pod: a, local_intf: eth1, peer_intf: eth1, local_ip: 198.51.100.2/24, peer_ip: 10.0.0.300/24}
  - {uid: 2, peer_pod: a, local_intf: eth2, peer_intf: eth2, local_ip: 192.0.2.2/24, peer_ip: 192.0.2.1/24}
  - {uid: 3, peer_pod: a, local_intf: eth3, peer_intf: averyveryverylongname}
  - {uid: 5, peer_pod: c, local_intf: eth5, peer_intf: eth1}
  - {uid: 5, peer_pod: c, local_intf: eth6, peer_intf: eth2}
---
{apiVersion: v1, kind: Pod, metadata: {name: a}}
---
{apiVersion: v1, kind: Pod, metadata: {name: b}}
"#,
    )
    .unwrap();
    let lab = LabGuard::new("bad");
    let out = lab.run(&["up", f.to_str().unwrap(), "--timeout", "20"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid CIDR"), "{err}");
    assert!(err.contains("longer than 15"), "{err}");
    let st = lab.status();
    let links = st["links"].as_array().unwrap();
    let by_uid = |u: i64| links.iter().find(|l| l["uid"] == u).unwrap();
    assert_eq!(
        by_uid(2)["state"],
        "up",
        "the good link is built: {links:#?}"
    );
    assert_eq!(by_uid(1)["state"], "error");
    assert!(by_uid(1)["message"].as_str().unwrap().contains("CIDR"));
    assert_eq!(by_uid(3)["state"], "error");
    assert_eq!(by_uid(4)["state"], "error");
    assert!(by_uid(4)["message"].as_str().unwrap().contains("itself"));
    let dup = by_uid(5);
    assert_eq!(dup["state"], "error");
    assert!(
        dup["message"].as_str().unwrap().contains("duplicate uid"),
        "{dup:#}"
    );
    // The good link really carries traffic.
    lab.ok(&["exec", "a", "--", "ping", "-c", "1", "-W", "2", "192.0.2.2"]);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("meshnet-lab-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
