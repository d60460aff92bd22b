//! Stable ports (needs root): a pod's port is never replaced while the pod lives and the link
//! stays declared; its carrier follows the far end (issue 12, `daemon/src/ports.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{LabGuard, carrier, port_identity as identity, two_pods, until, yaml_file};

/// A peer restarted 20 times: the survivor's port keeps its ifindex and MAC, every restart is
/// a link-down the survivor's kernel reports (seen by `ip monitor`), and the carrier and
/// traffic come back each time.
fn peer_restarted_20_times(tag: &str, r2_node: &str, up_args: &[&str], ips: (&str, &str)) {
    let lab = LabGuard::pair(tag, r2_node, ips, &[], up_args);
    lab.assert_links_up(1);
    let n1 = lab.pod_netns("r1");
    let before = identity(&n1, "eth1");
    until("carrier", Duration::from_secs(5), || carrier(&n1, "eth1"));
    for i in 0..20 {
        let mut mon = Command::new("ip")
            .args(["-n", &n1, "monitor", "link"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        lab.ok(&["restart", "r2"]);
        until("carrier back", Duration::from_secs(5), || {
            carrier(&n1, "eth1")
        });
        std::thread::sleep(Duration::from_millis(50));
        mon.kill().unwrap();
        let out = mon.wait_with_output().unwrap();
        let events = String::from_utf8_lossy(&out.stdout);
        assert!(
            events
                .lines()
                .any(|l| l.contains("eth1") && l.contains("NO-CARRIER")),
            "restart {i}: r1 saw no link-down:\n{events}"
        );
        assert_eq!(identity(&n1, "eth1"), before, "restart {i}: port replaced");
    }
    lab.assert_links_up(1);
    lab.ok(&["verify"]);
    assert_eq!(identity(&n1, "eth1"), before);
}

#[test]
fn a_same_node_peer_restarted_20_times_never_replaces_the_survivors_port() {
    peer_restarted_20_times("prt", "node1", &[], ("192.0.2.21/30", "192.0.2.22/30"));
}

#[test]
fn a_vxlan_peer_restarted_20_times_never_replaces_the_survivors_port() {
    peer_restarted_20_times(
        "prx",
        "node2",
        &["--nodes", "2"],
        ("192.0.2.29/30", "192.0.2.30/30"),
    );
}

#[test]
fn a_grpc_wire_peer_restarted_20_times_never_replaces_the_survivors_port() {
    peer_restarted_20_times(
        "prg",
        "node2",
        &["--nodes", "2", "--link", "grpc"],
        ("192.0.2.33/30", "192.0.2.34/30"),
    );
}

/// GRPC mode with both pods on one node: a same-node link, patched ports as under VXLAN.
#[test]
fn a_same_node_peer_in_grpc_mode_restarted_20_times_never_replaces_the_survivors_port() {
    peer_restarted_20_times(
        "prgs",
        "node1",
        &["--link", "grpc"],
        ("192.0.2.37/30", "192.0.2.38/30"),
    );
}

/// In GRPC mode a pod whose peer is not there yet gets its port at once (a wire half, carrier
/// off); when the peer lands on the same node the link becomes a same-node patch and the port
/// stays — the wire's TAP in the node goes instead.
#[test]
fn a_wire_half_becomes_a_same_node_link_without_replacing_the_port() {
    let lab = LabGuard::new("prw");
    let both = two_pods(
        ("r1", "node1"),
        ("r2", "node1"),
        &[(1, "eth1", "192.0.2.41/30", "192.0.2.42/30")],
    );
    // r1's Topology and pod alone first.
    let docs: Vec<&str> = both.split("---\n").collect();
    let r1_only = format!("{}---\n{}---\n", docs[0], docs[2]);
    let f1 = yaml_file("prw1", &r1_only);
    let f2 = yaml_file("prw2", &both);
    lab.ok(&["up", f1.to_str().unwrap(), "--link", "grpc"]);
    let n1 = lab.pod_netns("r1");
    let before = identity(&n1, "eth1");
    assert!(!carrier(&n1, "eth1"), "no carrier without a peer");
    let node1 = format!("mnl-{}-node1", lab.name);
    assert!(
        LabGuard::interfaces(&node1)
            .iter()
            .any(|i| i.starts_with("mt")),
        "the wire's TAP is in the node: {:?}",
        LabGuard::interfaces(&node1)
    );
    lab.ok(&["apply", f2.to_str().unwrap()]);
    lab.assert_links_up(1);
    until("carrier", Duration::from_secs(5), || carrier(&n1, "eth1"));
    lab.ok(&["verify"]);
    assert_eq!(identity(&n1, "eth1"), before, "port replaced");
    until("the wire's TAP removed", Duration::from_secs(5), || {
        !LabGuard::interfaces(&node1)
            .iter()
            .any(|i| i.starts_with("mt"))
    });
    let _ = std::fs::remove_file(f1);
    let _ = std::fs::remove_file(f2);
}

/// What the status of a port whose far router shut its port says.
const SHUT: &str = "far router shut its port";

/// The far router shutting its port takes this port's carrier off within a second and keeps it
/// off across a full resync, and this end's status is no longer `up` (it says `says`); turning
/// it back on restores both.
fn far_port_shut(tag: &str, r2_node: &str, up_args: &[&str], ips: (&str, &str), says: &str) {
    let lab = LabGuard::pair(
        tag,
        r2_node,
        ips,
        &[("MESHNET_LAB_RESYNC_SECONDS", "1")],
        up_args,
    );
    lab.assert_links_up(1);
    let (n1, n2) = (lab.pod_netns("r1"), lab.pod_netns("r2"));
    until("carrier", Duration::from_secs(5), || carrier(&n1, "eth1"));
    let before = identity(&n1, "eth1");
    let ip = |ns: &str, state: &str| {
        assert!(
            Command::new("ip")
                .args(["-n", ns, "link", "set", "eth1", state])
                .status()
                .unwrap()
                .success()
        );
    };
    ip(&n2, "down");
    let took = until("carrier off", Duration::from_secs(2), || {
        !carrier(&n1, "eth1")
    });
    eprintln!("{tag}: r1 lost carrier {took:?} after r2 shut its port");
    until("r1's status follows", Duration::from_secs(3), || {
        let st = lab.end_status("r1", 1);
        st["state"] != "up" && st["message"].as_str().unwrap_or_default().contains(says)
    });
    eprintln!("{tag}: r1's status: {}", lab.end_status("r1", 1));
    // Full resyncs come and go: the router's shut stays, and so does the far carrier loss.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!carrier(&n1, "eth1"), "carrier came back while r2 is shut");
    assert_ne!(lab.end_status("r1", 1)["state"], "up", "after the resyncs");
    ip(&n2, "up");
    until("carrier back", Duration::from_secs(2), || {
        carrier(&n1, "eth1") && carrier(&n2, "eth1")
    });
    until("r1's status up", Duration::from_secs(3), || {
        lab.end_status("r1", 1)["state"] == "up"
    });
    lab.ok(&["verify"]);
    assert_eq!(identity(&n1, "eth1"), before);
}

#[test]
fn a_far_port_shut_takes_the_carrier_off_until_it_is_back() {
    far_port_shut(
        "prs",
        "node1",
        &[],
        ("192.0.2.25/30", "192.0.2.26/30"),
        SHUT,
    );
}

/// On the gRPC wire the shut port's half is unbound, its Unbind saying why: the far half loses
/// its peer and its status says the far router shut its port.
#[test]
fn a_far_port_shut_on_the_grpc_wire_takes_the_carrier_off_until_it_is_back() {
    far_port_shut(
        "prsg",
        "node2",
        &["--nodes", "2", "--link", "grpc"],
        ("192.0.2.45/30", "192.0.2.46/30"),
        SHUT,
    );
}

/// A peer that moves to another node and back: the survivor's port keeps its ifindex and MAC
/// while the link is carried across the nodes (a vxlan device, or the gRPC wire) and then
/// patched on one node again; traffic passes after every move.
fn peer_moves(tag: &str, up_args: &[&str], ips: (&str, &str), across: &str) {
    let lab = LabGuard::pair(tag, "node1", ips, &[], up_args);
    lab.assert_links_up(1);
    let n1 = lab.pod_netns("r1");
    let before = identity(&n1, "eth1");
    for (node, kind) in [("node2", across), ("node1", "veth"), ("node2", across)] {
        lab.ok(&["restart", "r2", "--node", node]);
        until("carrier back", Duration::from_secs(5), || {
            carrier(&n1, "eth1")
        });
        assert_eq!(lab.end_status("r1", 1)["kind"], kind, "r2 on {node}");
        lab.ok(&["verify"]);
        assert_eq!(
            identity(&n1, "eth1"),
            before,
            "r2 moved to {node}: port replaced"
        );
    }
}

#[test]
fn a_peer_moving_between_nodes_under_vxlan_never_replaces_the_survivors_port() {
    peer_moves(
        "pmvx",
        &["--nodes", "2"],
        ("192.0.2.53/30", "192.0.2.54/30"),
        "vxlan",
    );
}

#[test]
fn a_peer_moving_between_nodes_under_the_grpc_wire_never_replaces_the_survivors_port() {
    peer_moves(
        "pmvg",
        &["--nodes", "2", "--link", "grpc"],
        ("192.0.2.57/30", "192.0.2.58/30"),
        "grpc",
    );
}

/// Over VXLAN the far router's shut reaches this node through the daemons' beacons.
#[test]
fn a_far_port_shut_over_vxlan_takes_the_carrier_off_until_it_is_back() {
    far_port_shut(
        "prsx",
        "node2",
        &["--nodes", "2"],
        ("192.0.2.61/30", "192.0.2.62/30"),
        SHUT,
    );
}

/// The node's interfaces in lab `lab` whose names start with `prefix` (node ends `mp`, wire
/// TAPs `mt`).
fn node_ifaces(lab: &LabGuard, node: &str, prefix: &str) -> Vec<String> {
    LabGuard::interfaces(&format!("mnl-{}-{node}", lab.name))
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// What is undone in the node behind the daemon's back — a node end's patch removed, a wire's
/// TAP deleted — the next full resync puts back without replacing the pod's port. (A full run
/// reads the node's namespace in one dump and verifies each port, patch and TAP from it; this
/// checks that what it finds changed it does not take from the dump.)
fn node_side_undone_is_put_back(tag: &str, r2_node: &str, up_args: &[&str], ips: (&str, &str)) {
    let lab = LabGuard::pair(tag, r2_node, ips, &[], up_args);
    lab.assert_links_up(1);
    let n1 = lab.pod_netns("r1");
    let node = format!("mnl-{}-node1", lab.name);
    let before = identity(&n1, "eth1");
    let far = ips.1.split('/').next().unwrap();
    let ping = || {
        lab.run(&["exec", "r1", "--", "ping", "-c", "1", "-W", "1", far])
            .status
            .success()
    };
    until("traffic", Duration::from_secs(10), ping);
    let patched = |dev: &str| {
        let out = Command::new("tc")
            .args(["-n", &node, "filter", "show", "dev", dev, "ingress"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("mirred")
    };
    let ends = node_ifaces(&lab, "node1", "mp");
    assert!(!ends.is_empty(), "no node end in {node}");
    for end in &ends {
        assert!(patched(end), "{end} is not patched");
        let st = Command::new("tc")
            .args(["-n", &node, "filter", "del", "dev", end, "ingress"])
            .status()
            .unwrap();
        assert!(st.success());
        assert!(!patched(end), "{end}: the patch was not removed");
        // The lab's resync is 10 s.
        until("patch put back", Duration::from_secs(15), || patched(end));
    }
    until("traffic after the patches", Duration::from_secs(5), ping);
    for tap in node_ifaces(&lab, "node1", "mt") {
        let st = Command::new("ip")
            .args(["-n", &node, "link", "del", &tap])
            .status()
            .unwrap();
        assert!(st.success());
        until("TAP made again", Duration::from_secs(15), || {
            node_ifaces(&lab, "node1", "mt").contains(&tap)
        });
        until("traffic after the TAP", Duration::from_secs(10), ping);
    }
    assert_eq!(identity(&n1, "eth1"), before, "port replaced");
    lab.ok(&["verify"]);
}

#[test]
fn a_same_node_patch_removed_in_the_node_is_put_back() {
    node_side_undone_is_put_back("pubs", "node1", &[], ("192.0.2.117/30", "192.0.2.118/30"));
}

#[test]
fn a_wire_patch_and_tap_removed_in_the_node_are_put_back() {
    node_side_undone_is_put_back(
        "pubg",
        "node2",
        &["--nodes", "2", "--link", "grpc"],
        ("192.0.2.121/30", "192.0.2.122/30"),
    );
}
