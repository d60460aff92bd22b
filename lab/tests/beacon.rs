//! A VXLAN link's carrier follows its far end (needs root): the daemons' beacons carry each
//! port's state, so a router shutting its port, an underlay cut and a dead peer daemon each take
//! the other end's carrier off, and it comes back with the far end. Times are printed (they are
//! measurements, not what the tests check beyond the bounds the design promises).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{LabGuard, carrier, since, until};

/// Two pods on two nodes, one VXLAN link `eth1`, both carriers up; returns the lab and the
/// pods' namespaces.
fn vxlan_pair(tag: &str) -> (LabGuard, String, String) {
    let lab = LabGuard::pair(
        tag,
        "node2",
        ("192.0.2.9/30", "192.0.2.10/30"),
        &[],
        &["--nodes", "2"],
    );
    lab.assert_links_up(1);
    let (n1, n2) = (lab.pod_netns("r1"), lab.pod_netns("r2"));
    until("both carriers up", Duration::from_secs(3), || {
        carrier(&n1, "eth1") && carrier(&n2, "eth1")
    });
    (lab, n1, n2)
}

fn ip(netns: &str, args: &[&str]) {
    let ok = Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .status()
        .unwrap();
    assert!(ok.success(), "ip -n {netns} {args:?}");
}

fn message(lab: &LabGuard, pod: &str) -> String {
    lab.end_status(pod, 1)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_shut_port_takes_the_far_carrier_off_within_1s_and_back() {
    let (lab, n1, n2) = vxlan_pair("bcn-shut");
    let t = Instant::now();
    ip(&n1, &["link", "set", "eth1", "down"]);
    let took = since(t, "r2's carrier off", Duration::from_secs(1), || {
        !carrier(&n2, "eth1")
    });
    eprintln!("far carrier off {took:?} after `ip link set eth1 down` in r1");
    until("status says why", Duration::from_secs(3), || {
        message(&lab, "r2").contains("far router shut its port")
    });
    assert_eq!(lab.end_status("r2", 1)["state"], "down");
    let t = Instant::now();
    ip(&n1, &["link", "set", "eth1", "up"]);
    let took = since(t, "both carriers back", Duration::from_secs(2), || {
        carrier(&n1, "eth1") && carrier(&n2, "eth1")
    });
    eprintln!("carriers back {took:?} after `ip link set eth1 up`");
    // Once more: every shut is a link-down at the far end.
    ip(&n1, &["link", "set", "eth1", "down"]);
    until("r2's carrier off again", Duration::from_secs(1), || {
        !carrier(&n2, "eth1")
    });
    until("status down", Duration::from_secs(3), || {
        lab.end_status("r2", 1)["state"] == "down"
    });
    ip(&n1, &["link", "set", "eth1", "up"]);
    until("back", Duration::from_secs(2), || carrier(&n2, "eth1"));
    lab.assert_links_up(1);
}

#[test]
fn an_underlay_cut_takes_both_carriers_off_and_back() {
    let (lab, n1, n2) = vxlan_pair("bcn-cut");
    let t = Instant::now();
    lab.ok(&["node", "node2", "down"]);
    let took = since(t, "both carriers off", Duration::from_secs(3), || {
        !carrier(&n1, "eth1") && !carrier(&n2, "eth1")
    });
    eprintln!("both carriers off {took:?} after the underlay cut");
    until("status says silent", Duration::from_secs(3), || {
        message(&lab, "r1").contains("far end silent since")
    });
    let t = Instant::now();
    lab.ok(&["node", "node2", "up"]);
    let took = since(t, "both carriers back", Duration::from_secs(3), || {
        carrier(&n1, "eth1") && carrier(&n2, "eth1")
    });
    eprintln!("both carriers back {took:?} after the underlay came back");
    lab.assert_links_up(1);
    lab.ok(&["exec", "r1", "--", "ping", "-c1", "-W2", "192.0.2.10"]);
}

#[test]
fn a_killed_peer_daemon_takes_the_carrier_off_and_a_restart_brings_it_back() {
    let (lab, n1, n2) = vxlan_pair("bcn-kill");
    let t = Instant::now();
    lab.ok(&["daemon", "node2", "kill"]);
    let command = t.elapsed();
    let took = since(t, "r1's carrier off", Duration::from_secs(3), || {
        !carrier(&n1, "eth1")
    });
    eprintln!(
        "r1's carrier off {took:?} after `daemon node2 kill` began (the command took {command:?})"
    );
    let t = Instant::now();
    lab.ok(&["daemon", "node2", "start"]);
    let took = since(t, "both carriers back", Duration::from_secs(5), || {
        carrier(&n1, "eth1") && carrier(&n2, "eth1")
    });
    eprintln!(
        "carriers back {took:?} after `daemon start` began (it waits for the daemon's socket)"
    );
    lab.assert_links_up(1);
}
