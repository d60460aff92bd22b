//! The node-wide default link MTU (`MESHNET_DEFAULT_MTU`) on real daemons: links that declare no
//! MTU get it, and a value the VXLAN underlay cannot carry stops the daemon at start, with the
//! numbers; and `HOST_INTF` naming a second NIC moves the VXLAN links onto it (the choice itself
//! is unit-tested in `meshnet_daemon::underlay`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::{LabGuard, topo};

/// `meshnet-lab --lab NAME ARGS` with `MESHNET_DEFAULT_MTU` set for its daemons.
fn run_with_mtu(lab: &LabGuard, mtu: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshnet-lab"))
        .arg("--lab")
        .arg(&lab.name)
        .args(args)
        .env("MESHNET_DEFAULT_MTU", mtu)
        .output()
        .unwrap()
}

fn mtu_of(netns: &str, ifname: &str) -> u32 {
    let out = Command::new("ip")
        .args(["-n", netns, "-o", "link", "show", ifname])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(" mtu ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no mtu for {ifname} in {netns}: {text}"))
}

#[test]
fn links_without_an_mtu_get_the_node_default() {
    let lab = LabGuard::new("nodes-mtu");
    let out = run_with_mtu(&lab, "1400", &["up", &topo("2node.yml")]);
    assert!(out.status.success(), "{out:?}\n{}", lab.logs());
    for pod in ["r1", "r2"] {
        let ns = format!("mnl-{}-default-{pod}-1", lab.name);
        assert_eq!(mtu_of(&ns, "eth1"), 1400, "{pod} eth1");
    }
    lab.ok(&["verify"]);
}

#[test]
fn a_default_mtu_vxlan_cannot_carry_is_refused_with_the_numbers() {
    let lab = LabGuard::new("nodes-mtu9k");
    let out = run_with_mtu(
        &lab,
        "9000",
        &["up", &topo("2node.yml"), "--nodes", "2", "--timeout", "10"],
    );
    assert!(
        !out.status.success(),
        "9000 over a 1500 underlay was accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "MESHNET_DEFAULT_MTU 9000 does not fit the underlay: ul0 has mtu 1500, VXLAN needs \
             50 bytes, so at most 1450"
        ),
        "{err}"
    );
}

/// `HOST_INTF` naming a second NIC that does not hold `HOST_IP` (each node's `eth0`, on the
/// lab's outside segment, given an address here): the daemons use its address as the VXLAN
/// source and as the `src_ip` their peers send to, so the link rides that NIC.
#[test]
fn host_intf_moves_vxlan_onto_a_second_nic() {
    let lab = LabGuard::new("nodes-hif");
    lab.ok(&["up", &topo("2node.yml"), "--nodes", "2"]);
    for n in 1..=2 {
        let ns = format!("mnl-{}-node{n}", lab.name);
        let ok = Command::new("ip")
            .args(["-n", &ns, "addr", "add", &format!("192.0.2.{}/24", 10 + n)])
            .args(["dev", "eth0", "nodad"])
            .status()
            .unwrap();
        assert!(ok.success());
        lab.ok(&["daemon", &format!("node{n}"), "stop"]);
        let out = Command::new(env!("CARGO_BIN_EXE_meshnet-lab"))
            .args(["--lab", &lab.name, "daemon", &format!("node{n}"), "start"])
            .env("HOST_INTF", "eth0")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}\n{}", lab.logs());
    }
    // New sandboxes: their ADDs record the new node addresses, and the link follows.
    for pod in ["r1", "r2"] {
        lab.ok(&["restart", pod, "--timeout", "30"]);
    }
    lab.ok(&["verify"]);
    // r1's port is patched to the link's vxlan device in node1's namespace.
    let node1 = format!("mnl-{}-node1", lab.name);
    let out = Command::new("ip")
        .args(["-n", &node1, "-d", "-o", "link", "show", "type", "vxlan"])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains(" remote 192.0.2.12 ") && line.contains(" local 192.0.2.11 "),
        "r1's VXLAN device does not ride eth0: {line}"
    );
}
