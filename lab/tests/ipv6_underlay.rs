//! A 3-node lab on an IPv6 underlay (`--underlay ipv6`: nodes at 2001:db8::1..3, each daemon's
//! HOST_IP IPv6): kernel VXLAN and the gRPC wire both verify every link of tests/3node.yml, the
//! VXLAN devices carry IPv6 outer addresses, and the daemons' listeners are dual-stack (`[::]`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{LabGuard, topo};

/// Local listening TCP sockets in a namespace, as `ss -ltnH` prints them ("ADDR:PORT"). ss
/// prints an IPv6 wildcard socket with `IPV6_V6ONLY` off — one socket for both families — as
/// `*:PORT`; an IPv6-only one as `[::]:PORT` and an IPv4-only one as `0.0.0.0:PORT`.
fn listeners(netns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "ss", "-ltnH"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

fn check_nodes(lab: &LabGuard) {
    let st = lab.status();
    let ips: Vec<&str> = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["2001:db8::1", "2001:db8::2", "2001:db8::3"], "{st}");
}

#[test]
fn vxlan_over_an_ipv6_underlay_verifies() {
    let lab = LabGuard::new("nodes-v6vx");
    lab.ok(&[
        "up",
        &topo("3node.yml"),
        "--nodes",
        "3",
        "--link",
        "vxlan",
        "--underlay",
        "ipv6",
    ]);
    check_nodes(&lab);
    lab.assert_links_up(3);
    let out = lab.ok(&["verify"]);
    assert_eq!(out.matches("OK ").count(), 6, "{out}");
    // Every cross-node link rides a VXLAN device in its node's namespace (the pod has a port
    // patched to it) with IPv6 outer addresses and room for the 70-byte IPv6 encapsulation
    // under the 1500-byte underlay.
    let mut vxlan = 0;
    for n in 1..=3 {
        let ns = format!("mnl-{}-node{n}", lab.name);
        let out = Command::new("ip")
            .args(["-n", &ns, "-d", "-o", "link", "show"])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(" vxlan id ") {
                vxlan += 1;
                assert!(line.contains(" remote 2001:db8::"), "{line}");
                assert!(line.contains(" local 2001:db8::"), "{line}");
                assert!(line.contains(" mtu 1430 "), "{line}");
            }
        }
    }
    assert!(vxlan >= 2, "no VXLAN ends found");
    // meshnetd's /metrics listener: one dual-stack socket.
    let node1 = format!("mnl-{}-node1", lab.name);
    let ls = listeners(&node1);
    assert!(
        ls.contains(&"*:51112".to_string()) || ls.contains(&"[::]:51112".to_string()),
        "{ls:?}"
    );
}

#[test]
fn grpc_wire_over_an_ipv6_underlay_verifies_with_dual_stack_listeners() {
    let lab = LabGuard::new("nodes-v6g");
    lab.ok(&[
        "up",
        &topo("3node.yml"),
        "--nodes",
        "3",
        "--link",
        "grpc",
        "--underlay",
        "ipv6",
    ]);
    check_nodes(&lab);
    lab.assert_links_up(3);
    let out = lab.ok(&["verify"]);
    assert_eq!(out.matches("OK ").count(), 6, "{out}");
    for n in 1..=3 {
        let ls = listeners(&format!("mnl-{}-node{n}", lab.name));
        for port in [51111, 51112] {
            assert!(
                ls.contains(&format!("*:{port}")),
                "node{n}: no dual-stack [::]:{port} listener in {ls:?}"
            );
        }
    }
    // The listeners accept IPv4 too: the lab reads /metrics over 127.0.0.1.
    let m = lab.ok(&["metrics", "node1"]);
    assert!(m.contains("meshnet_"), "{m}");
}
