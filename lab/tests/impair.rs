//! Declared impairments, measured (needs root): `meshnet-lab impair` edits the Topology, the
//! daemons follow, and what the link does changes by what was declared — or its status says why
//! the node cannot do it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::time::{Duration, Instant};

use common::{LabGuard, two_pods, yaml_file};

/// iperf3 TCP from `from` to `to_ip` for `secs`; received bits per second.
fn tcp_rate(lab: &LabGuard, server: &str, from: &str, to_ip: &str, secs: &str) -> f64 {
    lab.ok(&["exec", server, "--", "iperf3", "-s", "-1", "-D"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.ok(&["exec", from, "--", "iperf3", "-c", to_ip, "-t", secs, "-J"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
}

/// Waits until `pod`'s status for uid 1 shows an impairment note satisfying `f`; returns how
/// long that took.
fn await_note(lab: &LabGuard, pod: &str, f: impl Fn(&str) -> bool) -> Duration {
    let t = Instant::now();
    loop {
        let s = lab.end_status(pod, 1);
        let note = s["impairment"].as_str().unwrap_or_default().to_string();
        if f(&note) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{pod}: impairment note {note:?} after 5 s\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A same-node veth: a declared rate holds TCP at it (tbf); a delay on this netem-less kernel
/// is named in the status instead of being silently ignored; clearing restores the link.
#[test]
fn a_declared_rate_holds_on_a_veth_and_what_cannot_be_applied_is_named() {
    let lab = LabGuard::new("impv");
    let f = yaml_file(
        "impv",
        &two_pods(
            ("r1", "node1"),
            ("r2", "node1"),
            &[(1, "eth1", "192.0.2.1/30", "192.0.2.2/30")],
        ),
    );
    lab.ok(&["up", f.to_str().unwrap()]);
    lab.assert_links_up(1);
    let before = tcp_rate(&lab, "r2", "r1", "192.0.2.2", "2");

    lab.ok(&["impair", "r1:eth1", "--rate", "50mbit"]);
    let took = await_note(&lab, "r1", |n| n == "rate 50mbit (tbf)");
    eprintln!("status followed the declaration in {took:?}");
    await_note(&lab, "r2", |n| n == "rate 50mbit (tbf)");
    let r = tcp_rate(&lab, "r2", "r1", "192.0.2.2", "3");
    assert!(
        (45e6..=55e6).contains(&r),
        "50mbit declared, TCP got {r} bit/s"
    );
    let back = tcp_rate(&lab, "r1", "r2", "192.0.2.1", "3");
    assert!(
        (45e6..=55e6).contains(&back),
        "both directions: {back} bit/s"
    );

    // A delay needs netem: where the kernel has none, the status says so (and the rate stays).
    lab.ok(&["impair", "r1:eth1", "--delay", "10ms", "--rate", "50mbit"]);
    let has_netem = std::process::Command::new("sh")
        .args(["-c", "grep -q netem /proc/net/psched 2>/dev/null"])
        .status()
        .is_ok_and(|s| s.success());
    let note = {
        await_note(&lab, "r1", |n| n.contains("delay"));
        lab.end_status("r1", 1)["impairment"]
            .as_str()
            .unwrap()
            .to_string()
    };
    if !has_netem {
        assert_eq!(
            note,
            "rate 50mbit (tbf); not applied: this node's kernel has no sch_netem: delay 10ms cannot be applied to kernel links"
        );
        assert_eq!(lab.end_status("r1", 1)["state"], "up");
    }

    lab.ok(&["impair", "r1:eth1", "--clear"]);
    await_note(&lab, "r1", str::is_empty);
    await_note(&lab, "r2", str::is_empty);
    let after = tcp_rate(&lab, "r2", "r1", "192.0.2.2", "2");
    assert!(
        after > 4.0 * 55e6,
        "cleared: {after} bit/s (before any impairment: {before})"
    );
    let _ = std::fs::remove_file(f);
}

/// Across nodes on VXLAN: each daemon puts the declaration on its own end's egress.
#[test]
fn a_declared_rate_holds_across_nodes_on_vxlan() {
    let lab = LabGuard::new("impx");
    let f = yaml_file(
        "impx",
        &two_pods(
            ("r1", "node1"),
            ("r2", "node2"),
            &[(1, "eth1", "192.0.2.5/30", "192.0.2.6/30")],
        ),
    );
    lab.ok(&["up", f.to_str().unwrap(), "--nodes", "2"]);
    lab.assert_links_up(1);
    lab.ok(&["impair", "r2:eth1", "--rate", "50mbit", "--side", "peer"]);
    await_note(&lab, "r1", |n| n == "rate 50mbit (tbf)");
    // side: peer of r2 = what r1 sends; r2's own egress is untouched.
    await_note(&lab, "r2", str::is_empty);
    let r = tcp_rate(&lab, "r2", "r1", "192.0.2.6", "3");
    assert!(
        (45e6..=55e6).contains(&r),
        "50mbit declared, TCP got {r} bit/s"
    );
    let back = tcp_rate(&lab, "r1", "r2", "192.0.2.5", "2");
    assert!(
        back > 4.0 * 55e6,
        "the other direction is not limited: {back}"
    );
    let _ = std::fs::remove_file(f);
}
