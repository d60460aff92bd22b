//! Cross-node kernel links in the lab: VXLAN between node namespaces, macvlan to the outside
//! segment (needs root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{LabGuard, topo};

#[test]
fn vxlan_across_three_nodes_verifies_every_example() {
    for (file, links, checks) in [
        ("3node.yml", 3, 6),
        ("5node.yml", 8, 16),
        ("3node-mlink.yml", 12, 24),
    ] {
        let lab = LabGuard::new("vx3");
        lab.ok(&["up", &topo(file), "--nodes", "3", "--link", "vxlan"]);
        lab.assert_links_up(links);
        let st = lab.status();
        let kinds: Vec<&str> = st["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.contains(&"vxlan"), "{file}: {kinds:?}");
        let out = lab.ok(&["verify"]);
        assert_eq!(out.matches("OK ").count(), checks, "{file}: {out}");
    }
}

/// The same Topology objects in two namespaces at once: same uids, same nodes, no VNI clash.
#[test]
fn same_topology_in_two_namespaces_on_the_same_nodes() {
    let text = std::fs::read_to_string(topo("5node.yml")).unwrap();
    let list: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut docs = Vec::new();
    for ns in ["red", "blue"] {
        for item in list["items"].as_sequence().unwrap() {
            let mut o = item.clone();
            o["metadata"]["namespace"] = ns.into();
            docs.push(serde_yaml::to_string(&o).unwrap());
        }
    }
    let f = std::env::temp_dir().join(format!("two-ns-{}.yml", std::process::id()));
    std::fs::write(&f, docs.join("---\n")).unwrap();
    let lab = LabGuard::new("twons");
    lab.ok(&["up", f.to_str().unwrap(), "--nodes", "3"]);
    lab.assert_links_up(16);
    let out = lab.ok(&["verify"]);
    assert_eq!(out.matches("OK ").count(), 32, "{out}");
    let _ = std::fs::remove_file(f);
}

#[test]
fn macvlan_reaches_the_external_device() {
    let lab = LabGuard::new("mac");
    lab.ok(&["up", &topo("macvlan.yml"), "--nodes", "2"]);
    let out = lab.ok(&["verify"]);
    assert!(out.contains("192.0.2.254 (external device)"), "{out}");
    lab.ok(&[
        "exec",
        "r2",
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        "192.0.2.254",
    ]);
    let st = lab.status();
    let mac = st["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["uid"] == 2)
        .unwrap();
    assert_eq!(mac["kind"], "macvlan");
    // Nothing named after the pod's end was left in the node's namespace.
    let r2 = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "r2")
        .unwrap();
    let node = format!("mnl-{}-{}", lab.name, r2["node"].as_str().unwrap());
    assert!(!LabGuard::interfaces(&node).contains(&"eth2".to_string()));
}

#[test]
fn hundred_restarts_of_a_cross_node_pod_leave_nothing_behind() {
    let lab = LabGuard::new("churn");
    lab.ok(&["up", &topo("3node.yml"), "--nodes", "2"]);
    let count = |node: &str| LabGuard::interfaces(&format!("mnl-{}-{node}", lab.name)).len();
    let before = (count("node1"), count("node2"));
    for i in 0..100 {
        let out = lab.run(&["restart", "r2"]);
        assert!(
            out.status.success(),
            "restart {i}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            lab.logs()
        );
    }
    lab.assert_links_up(3);
    lab.ok(&["verify"]);
    assert_eq!(
        (count("node1"), count("node2")),
        before,
        "interfaces left on the nodes"
    );
    let st = lab.status();
    for p in st["pods"].as_array().unwrap() {
        let n = LabGuard::interfaces(p["netns"].as_str().unwrap()).len();
        assert_eq!(n, 4, "pod {} has lo, eth0 and two links", p["name"]);
    }
    let logs = lab.logs();
    assert!(
        !logs.contains("ERROR"),
        "errors in the daemon logs:\n{logs}"
    );
}

#[test]
fn jumbo_vxlan_link_needs_a_jumbo_underlay() {
    let f = common::jumbo_file("vxlan");
    {
        let lab = LabGuard::new("jumbo");
        lab.ok(&[
            "up",
            f.to_str().unwrap(),
            "--nodes",
            "2",
            "--underlay-mtu",
            "9100",
        ]);
        lab.ok(&[
            "exec",
            "j1",
            "--",
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "8972",
            "192.0.2.2",
        ]);
        // One byte more does not fit the link's MTU: the path really is 9000.
        let big = lab.run(&[
            "exec",
            "j1",
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "8973",
            "192.0.2.2",
        ]);
        assert!(!big.status.success());
    }
    let lab = LabGuard::new("jumbo1500");
    let out = lab.run(&["up", f.to_str().unwrap(), "--nodes", "2", "--timeout", "15"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mtu 9000 does not fit the underlay"), "{err}");
    let st = lab.status();
    let l = &st["links"][0];
    assert_eq!(l["state"], "error");
    assert!(
        l["message"].as_str().unwrap().contains("at most 1450"),
        "{l:#}"
    );
    let _ = std::fs::remove_file(f);
}
