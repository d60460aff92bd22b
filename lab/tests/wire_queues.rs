//! Multi-queue wire TAPs in the lab (needs root): a link whose TAPs have several queues carries
//! iperf3 with 4 streams, its frames travel on more than one of the peer's streams (the
//! per-shard counters), and the link's own counters are the sum over its queues; with one
//! queue per TAP every frame takes one stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::collections::BTreeMap;
use std::time::Duration;

use common::{LabGuard, metric, until};

/// Frames node1 queued toward its peer, per shard.
fn shard_tx(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("meshnet_wire_shard_tx_frames_total{"))
        .filter_map(|l| {
            let shard = l.split("shard=\"").nth(1)?.split('"').next()?.to_string();
            Some((shard, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// node1's metrics once two scrapes in a row agree on the frames sent (nothing in flight).
fn settled_metrics(lab: &LabGuard) -> String {
    let mut last = String::new();
    let mut text = String::new();
    until("node1's counters settle", Duration::from_secs(10), || {
        text = lab.ok(&["metrics", "node1"]);
        let now = format!("{:?}", shard_tx(&text));
        let same = now == last;
        last = now;
        if !same {
            std::thread::sleep(Duration::from_millis(200));
        }
        same
    });
    text
}

/// iperf3 from r1 to r2 (192.0.2.2) with 4 streams for 2 s; the bytes received.
fn iperf_p4(lab: &LabGuard, port: &str) -> f64 {
    let v = lab.iperf3("r2", "r1", "192.0.2.2", port, &["-P", "4", "-t", "2"]);
    v["end"]["sum_received"]["bytes"].as_f64().unwrap()
}

fn lab_with_queues(tag: &str, queues: &str) -> LabGuard {
    let lab = LabGuard::pair(
        tag,
        "node2",
        ("192.0.2.1/24", "192.0.2.2/24"),
        &[
            ("MESHNET_WIRE_SHARDS", "4"),
            ("MESHNET_WIRE_QUEUES", queues),
        ],
        &["--nodes", "2", "--link", "grpc"],
    );
    lab.assert_links_up(1);
    lab
}

/// Shards that carried at least 1000 frames.
fn busy_shards(text: &str) -> usize {
    shard_tx(text).values().filter(|n| **n >= 1000.0).count()
}

#[test]
fn four_queues_spread_four_tcp_streams_over_several_streams() {
    let lab = lab_with_queues("wq-four", "4");
    // The kernel hashes each TCP flow to one of the 4 queues: 4 flows all land on one queue
    // with probability 1/64, so try again (new source ports) before calling it a failure.
    let mut busy = 0;
    for port in ["5311", "5312", "5313"] {
        let bytes = iperf_p4(&lab, port);
        assert!(
            bytes > 1e6,
            "iperf3 -P 4 over a 4-queue wire: {bytes} bytes"
        );
        busy = busy_shards(&settled_metrics(&lab));
        if busy > 1 {
            break;
        }
    }
    let text = settled_metrics(&lab);
    assert!(
        busy > 1,
        "one link's flows used one stream: {:?}",
        shard_tx(&text)
    );
    // The link counts each frame once, whichever queue read it.
    let link_tx = metric(&text, "meshnet_link_tx_frames_total", &[("pod", "r1")]);
    let shards: f64 = shard_tx(&text).values().sum();
    assert_eq!(link_tx, shards, "link tx = sum over its queues' streams");
    eprintln!("frames per shard, node1 → node2: {:?}", shard_tx(&text));
}

#[test]
fn one_queue_keeps_a_link_on_one_stream() {
    let lab = lab_with_queues("wq-one", "1");
    let bytes = iperf_p4(&lab, "5321");
    assert!(
        bytes > 1e6,
        "iperf3 -P 4 over a 1-queue wire: {bytes} bytes"
    );
    let text = settled_metrics(&lab);
    let used = shard_tx(&text).values().filter(|n| **n > 0.0).count();
    assert_eq!(used, 1, "{:?}", shard_tx(&text));
}

/// The wire TAPs of `node`'s namespace, as `ip -d link` shows them.
fn node_taps(lab: &LabGuard, node: &str) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &format!("mnl-{}-{node}", lab.name),
            "-d",
            "link",
            "show",
            "type",
            "tun",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_daemon_restarted_with_more_queues_makes_its_tap_again_and_the_port_stays() {
    let lab = lab_with_queues("wq-kind", "1");
    let n1 = lab.pod_netns("r1");
    let port = common::port_identity(&n1, "eth1");
    assert!(node_taps(&lab, "node1").contains("tap"));
    assert!(!node_taps(&lab, "node1").contains("multi_queue"));
    lab.ok(&["daemon", "node1", "stop"]);
    lab.ok_env(
        &[("MESHNET_WIRE_SHARDS", "4"), ("MESHNET_WIRE_QUEUES", "4")],
        &["daemon", "node1", "start"],
    );
    until("the link carries again", Duration::from_secs(20), || {
        lab.run(&[
            "exec",
            "r1",
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "192.0.2.2",
        ])
        .status
        .success()
    });
    assert!(
        node_taps(&lab, "node1").contains("multi_queue"),
        "{}",
        node_taps(&lab, "node1")
    );
    assert_eq!(
        common::port_identity(&n1, "eth1"),
        port,
        "the pod's port stayed"
    );
    // The peer has one queue: everything travels on the link's primary stream.
    let bytes = iperf_p4(&lab, "5331");
    assert!(bytes > 1e6, "{bytes} bytes");
}
