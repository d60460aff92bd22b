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

/// Median RTT (ms) and loss (%) of `count` pings from `from` to `to_ip`, `interval` apart.
fn ping(lab: &LabGuard, from: &str, to_ip: &str, count: &str, interval: &str) -> (f64, f64) {
    let out = lab.run(&[
        "exec", from, "--", "ping", "-n", "-q", "-c", count, "-i", interval, "-W", "1", to_ip,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let loss: f64 = text
        .split(" packet loss")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|s| s.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no loss figure in {text}"));
    // rtt min/avg/max/mdev = a/b/c/d ms: the average stands in for the median when the
    // spread is small; the median is taken from a second, per-reply run where it matters.
    let avg: f64 = text
        .split(" = ")
        .nth(1)
        .and_then(|s| s.split('/').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    (avg, loss)
}

/// Median RTT in ms of `count` pings (from the per-reply times).
fn median_rtt(lab: &LabGuard, from: &str, to_ip: &str, count: &str) -> f64 {
    let out = lab.ok(&[
        "exec", from, "--", "ping", "-n", "-c", count, "-i", "0.05", "-W", "1", to_ip,
    ]);
    let mut rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").parse().ok())
        .collect();
    assert!(!rtts.is_empty(), "no replies: {out}");
    rtts.sort_by(f64::total_cmp);
    rtts[rtts.len() / 2]
}

/// Over the gRPC wire the impairment is the wire's own (no netem on this kernel): delay, loss and
/// rate measured, then the cable pulled and plugged back.
#[test]
fn the_grpc_wire_delays_loses_and_limits_as_declared() {
    let lab = LabGuard::new("impg");
    let f = yaml_file(
        "impg",
        &two_pods(
            ("r1", "node1"),
            ("r2", "node2"),
            &[(1, "eth1", "192.0.2.17/30", "192.0.2.18/30")],
        ),
    );
    lab.ok(&["up", f.to_str().unwrap(), "--nodes", "2", "--link", "grpc"]);
    lab.assert_links_up(1);
    let base = median_rtt(&lab, "r1", "192.0.2.18", "40");

    // delay 10ms on what r1 sends: the round trip grows by 10 ms.
    lab.ok(&["impair", "r1:eth1", "--delay", "10ms", "--side", "local"]);
    await_note(&lab, "r1", |n| n == "delay 10ms (wire)");
    std::thread::sleep(Duration::from_millis(300));
    let delayed = median_rtt(&lab, "r1", "192.0.2.18", "40");
    let added = delayed - base;
    eprintln!("median RTT {base:.3} ms -> {delayed:.3} ms (+{added:.3} ms)");
    assert!(
        (8.0..=12.0).contains(&added),
        "delay 10ms added {added:.3} ms"
    );

    // loss 10% on what r1 sends: 10 % ± 3 % of 10 000 pings.
    lab.ok(&["impair", "r1:eth1", "--loss", "10", "--side", "local"]);
    await_note(&lab, "r1", |n| n == "loss 10% (wire)");
    std::thread::sleep(Duration::from_millis(300));
    let (_, lost) = ping(&lab, "r1", "192.0.2.18", "10000", "0.001");
    eprintln!("loss 10% declared: {lost}% of 10000 pings lost");
    assert!((7.0..=13.0).contains(&lost), "loss 10 lost {lost}%");
    let m = lab.ok(&["metrics", "node2"]);
    assert!(
        m.lines().any(|l| l.starts_with("meshnet_link_drops_total")
            && l.contains("reason=\"impairment\"")
            && !l.ends_with(" 0")),
        "impairment drops are counted as their own reason"
    );

    // rate 50mbit both ways: TCP within 45-55 Mbit/s.
    lab.ok(&["impair", "r1:eth1", "--rate", "50mbit"]);
    await_note(&lab, "r2", |n| n == "rate 50mbit (wire)");
    std::thread::sleep(Duration::from_millis(300));
    let r = tcp_rate(&lab, "r2", "r1", "192.0.2.18", "4");
    eprintln!("rate 50mbit declared: TCP {:.1} Mbit/s", r / 1e6);
    assert!(
        (45e6..=55e6).contains(&r),
        "50mbit declared, TCP got {r} bit/s"
    );

    lab.ok(&["impair", "r1:eth1", "--clear"]);
    await_note(&lab, "r1", str::is_empty);
    std::thread::sleep(Duration::from_millis(300));
    let after = median_rtt(&lab, "r1", "192.0.2.18", "20");
    assert!(after < base + 3.0, "cleared: {after} ms (base {base} ms)");

    // state: down pulls the cable: both carriers off, the halves stay; up plugs it back.
    let carrier = |pod: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", &lab.pod_netns(pod), "-o", "link", "show", "eth1"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("LOWER_UP")
    };
    lab.ok(&["link", "r2:eth1", "down"]);
    let t = Instant::now();
    while carrier("r1") || carrier("r2") {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "carriers still up after 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "gRPC cable pulled: both carriers down after {:?}",
        t.elapsed()
    );
    lab.ok(&["link", "r2:eth1", "up"]);
    let t = Instant::now();
    while !(carrier("r1") && carrier("r2")) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "carriers not back after 2 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    lab.assert_links_up(1);
    let _ = std::fs::remove_file(f);
}
