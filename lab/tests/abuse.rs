//! The node-to-node API under abuse, from a node address (needs root): malformed batches, foreign
//! wire ids, oversize frames, 1000 streams, a peer that stops reading. Each is refused or dropped
//! and counted, the daemon's memory stays bounded, it keeps serving, and no real link is hijacked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::path::PathBuf;
use std::process::Command;

use common::{LabGuard, topo};

fn rogue() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_meshnet-lab"))
        .parent()
        .unwrap()
        .join("examples/rogue_peer");
    assert!(
        p.is_file(),
        "{} missing: cargo build -p meshnet-daemon --examples",
        p.display()
    );
    p
}

fn run_rogue(lab: &LabGuard, from: &str, mode: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("mnl-{}-{from}", lab.name)])
        .arg(rogue())
        .args(["198.51.100.1:51111", mode, "198.51.100.2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rogue {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn daemon_rss_mb(lab: &LabGuard, node: &str) -> f64 {
    let st = lab.status();
    let pid = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap()["pid"]
        .as_i64()
        .unwrap();
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kb / 1024.0
}

#[test]
fn a_live_stream_is_never_displaced_by_another_connection_from_the_same_node() {
    let lab = LabGuard::new("hijack");
    lab.ok(&["up", &topo("3node.yml"), "--nodes", "2", "--link", "grpc"]);
    lab.assert_links_up(3);
    let out = run_rogue(&lab, "node2", "streams");
    assert!(out.contains("streams: 0 open"), "{out}");
    lab.ok(&["verify"]);
}

#[test]
fn malformed_foreign_oversize_and_stalled_peers_are_refused_or_counted() {
    let lab = LabGuard::new("abuse");
    lab.ok(&["up", &topo("3node.yml"), "--nodes", "2", "--link", "grpc"]);
    lab.assert_links_up(3);
    // The real node2 daemon away: its shards are free, the rogue speaks from its address.
    lab.ok(&["daemon", "node2", "stop"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = daemon_rss_mb(&lab, "node1");
    let mut report = String::new();
    for mode in ["malformed", "foreign", "oversize", "streams", "stall"] {
        report.push_str(&run_rogue(&lab, "node2", mode));
    }
    eprintln!("{report}");
    let m = lab.ok(&["metrics", "node1"]);
    assert!(
        metric(&m, "meshnet_wire_malformed_batches_total") >= 1.0,
        "malformed batches counted: {report}"
    );
    assert!(
        metric(&m, "meshnet_wire_unknown_wire_frames_total") >= 100.0,
        "foreign frames counted: {report}"
    );
    assert!(
        report.lines().any(|l| l.starts_with("oversize message:")
            && (l.contains("then closed") || l.contains("then failed"))),
        "an oversize message ends the stream: {report}"
    );
    let after = daemon_rss_mb(&lab, "node1");
    assert!(
        after < before + 64.0,
        "node1's daemon grew from {before:.1} to {after:.1} MB"
    );
    // A node that is no peer of any wire is refused outright.
    let st = lab.ok(&["status", "--json"]);
    assert!(st.contains("node1"));
    // Still serving: the real peer comes back and every link works.
    lab.ok(&["daemon", "node2", "start"]);
    let t = std::time::Instant::now();
    loop {
        let s = lab.status();
        if s["links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["state"] == "up")
        {
            break;
        }
        assert!(t.elapsed().as_secs() < 20, "links did not recover: {s:#}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    lab.ok(&["verify"]);
}

#[test]
fn with_mutual_tls_a_peer_without_a_certificate_gets_nothing() {
    let lab = LabGuard::new("mtls");
    lab.ok(&[
        "up",
        &topo("3node.yml"),
        "--nodes",
        "2",
        "--link",
        "grpc",
        "--wire-tls",
    ]);
    lab.assert_links_up(3);
    lab.ok(&["verify"]);
    // Same source address as the real node2, but no certificate: no stream, no frame.
    let out = run_rogue(&lab, "node2", "streams");
    assert!(out.contains("streams: 0 open"), "{out}");
    let m = lab.ok(&["metrics", "node1"]);
    assert_eq!(metric(&m, "meshnet_wire_unknown_wire_frames_total"), 0.0);
    lab.ok(&["verify"]);
}
