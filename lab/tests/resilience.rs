//! Nothing lost: daemon restarts, a peer daemon away for 30 s, a cut underlay, and pods started
//! in many orders (needs root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{LabGuard, topo};

fn ifindexes(netns: &str) -> BTreeMap<String, u64> {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "link", "show"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["ifname"].as_str().unwrap().to_string(),
                l["ifindex"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn pod_namespaces(lab: &LabGuard) -> Vec<(String, String)> {
    let st = lab.status();
    st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["netns"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn carrier(netns: &str, ifname: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flags: Vec<&str> = v[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    flags.contains(&"LOWER_UP") && !flags.contains(&"NO-CARRIER")
}

fn ping_ok(netns: &str, ip: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-c", "1", "-W", "1", ip])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn sigkilled_daemon_restarts_without_touching_pods_and_wires_resume_within_2s() {
    let lab = LabGuard::new("rsk");
    lab.ok(&["up", &topo("3node.yml"), "--nodes", "2", "--link", "grpc"]);
    lab.assert_links_up(3);
    let node1 = format!("mnl-{}-node1", lab.name);
    let before: Vec<_> = pod_namespaces(&lab)
        .into_iter()
        .map(|(p, ns)| (p, ifindexes(&ns)))
        .collect();
    let node_before = ifindexes(&node1);
    lab.ok(&["daemon", "node1", "kill"]);
    lab.ok(&["daemon", "node1", "start"]);
    let t = Instant::now();
    let r1 = pod_namespaces(&lab)
        .into_iter()
        .find(|(p, _)| p == "r1")
        .unwrap()
        .1;
    // uid 1 (r1 on node1 <-> r2 on node2) is a wire: it carries traffic again within 2 s.
    while !ping_ok(&r1, "12.12.12.2") {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "wire not carrying traffic 2 s after the restart"
        );
    }
    eprintln!(
        "wire carrying traffic {:?} after the daemon restarted",
        t.elapsed()
    );
    // Same interfaces (ifindex), nothing duplicated or leaked, in the pods and on the node.
    let after: Vec<_> = pod_namespaces(&lab)
        .into_iter()
        .map(|(p, ns)| (p, ifindexes(&ns)))
        .collect();
    assert_eq!(before, after);
    assert_eq!(node_before, ifindexes(&node1));
    lab.assert_links_up(3);
    lab.ok(&["verify"]);
}

#[test]
fn peer_daemon_away_for_30s_drops_carrier_counts_peer_down_and_recovers() {
    let lab = LabGuard::new("away");
    lab.ok(&["up", &topo("3node.yml"), "--nodes", "2", "--link", "grpc"]);
    lab.assert_links_up(3);
    let r1 = pod_namespaces(&lab)
        .into_iter()
        .find(|(p, _)| p == "r1")
        .unwrap()
        .1;
    lab.ok(&["daemon", "node2", "stop"]);
    let t = Instant::now();
    while carrier(&r1, "eth1") {
        assert!(t.elapsed() < Duration::from_secs(2), "carrier still up");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Frames the pod sends meanwhile are dropped by the kernel at the TAP (no carrier): the
    // daemon counts them as peer_down. Raw frames, so nothing waits for ARP.
    let drops = |lab: &LabGuard| {
        let m = lab.ok(&["metrics", "node1"]);
        m.lines()
            .filter(|l| {
                l.starts_with("meshnet_link_drops_total{")
                    && l.contains("reason=\"peer_down\"")
                    && l.contains("pod=\"r1\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = drops(&lab);
    let sent = Command::new("ip")
        .args([
            "netns", "exec", &r1, "python3", "-c",
            "import socket\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('eth1',0))\n\
             f=bytes.fromhex('0180c200000e0200000000aa88cc')+bytes(50)\n\
             for _ in range(50):\n    try: s.send(f)\n    except OSError: pass",
        ])
        .status()
        .unwrap();
    assert!(sent.success());
    std::thread::sleep(Duration::from_millis(1500));
    let counted = drops(&lab) - before;
    assert!(
        counted >= 50.0,
        "frames sent while the peer was away are counted as peer_down: {counted}"
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(t.elapsed()));
    lab.ok(&["daemon", "node2", "start"]);
    let t = Instant::now();
    while !ping_ok(&r1, "12.12.12.2") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the wire did not come back by itself"
        );
    }
    lab.assert_links_up(3);
    lab.ok(&["verify"]);
}

#[test]
fn cut_underlay_drops_carrier_and_heals() {
    let lab = LabGuard::new("cut");
    lab.ok(&["up", &topo("3node.yml"), "--nodes", "2", "--link", "grpc"]);
    lab.assert_links_up(3);
    let r1 = pod_namespaces(&lab)
        .into_iter()
        .find(|(p, _)| p == "r1")
        .unwrap()
        .1;
    lab.ok(&["node", "node2", "down"]);
    let t = Instant::now();
    while carrier(&r1, "eth1") {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "carrier still up with the underlay cut"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("carrier down {:?} after the underlay was cut", t.elapsed());
    lab.ok(&["node", "node2", "up"]);
    let t = Instant::now();
    while !ping_ok(&r1, "12.12.12.2") {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the wire did not heal"
        );
    }
    lab.ok(&["verify"]);
}

#[test]
fn five_nodes_in_twenty_random_orders_across_three_nodes() {
    for seed in 0..20u64 {
        let lab = LabGuard::new("orders");
        let parallel = seed % 4 == 3;
        let order = format!("random:{seed}");
        let file = topo("5node.yml");
        let mut args = vec![
            "up",
            file.as_str(),
            "--nodes",
            "3",
            "--order",
            order.as_str(),
        ];
        if parallel {
            args.push("--parallel");
        }
        lab.ok(&args);
        lab.assert_links_up(8);
        lab.ok(&["verify"]);
    }
}
