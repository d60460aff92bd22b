//! The gRPC wire in the lab: cross-node links carried by the daemons over HTTP/2 while VXLAN is
//! blocked on the underlay (needs root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{LabGuard, metric, topo};

fn link_flags(netns: &str, ifname: &str) -> (u32, Vec<String>) {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    assert!(out.status.success(), "{ifname} missing in {netns}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flags = v[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    (v[0]["ifindex"].as_u64().unwrap() as u32, flags)
}

fn carrier(netns: &str, ifname: &str) -> bool {
    let (_, flags) = link_flags(netns, ifname);
    !flags.iter().any(|f| f == "NO-CARRIER") && flags.iter().any(|f| f == "LOWER_UP")
}

/// The Topologies of `file` and only the pods named in `pods`.
fn subset(file: &str, pods: &[&str]) -> std::path::PathBuf {
    let text = std::fs::read_to_string(topo(file)).unwrap();
    let list: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let items: Vec<serde_yaml::Value> = list["items"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] != "Pod" || pods.contains(&o["metadata"]["name"].as_str().unwrap()))
        .cloned()
        .collect();
    let mut out = list.clone();
    out["items"] = serde_yaml::Value::Sequence(items);
    let f = std::env::temp_dir().join(format!(
        "subset-{}-{}.yml",
        pods.join("-"),
        std::process::id()
    ));
    std::fs::write(&f, serde_yaml::to_string(&out).unwrap()).unwrap();
    f
}

#[test]
fn halves_exist_before_their_peers_and_come_up_with_them() {
    let lab = LabGuard::new("wire-early");
    let only_r1 = subset("3node.yml", &["r1"]);
    lab.ok(&[
        "up",
        only_r1.to_str().unwrap(),
        "--nodes",
        "3",
        "--link",
        "grpc",
    ]);
    let r1 = lab.pod_netns("r1");
    // Right after ADD, both of r1's wire interfaces are there, carrier down.
    let (idx1, _) = link_flags(&r1, "eth1");
    let (idx2, _) = link_flags(&r1, "eth2");
    assert!(!carrier(&r1, "eth1") && !carrier(&r1, "eth2"));
    lab.ok(&["apply", &topo("3node.yml")]);
    lab.assert_links_up(3);
    lab.ok(&["verify"]);
    assert!(carrier(&r1, "eth1") && carrier(&r1, "eth2"));
    // The same interfaces, not new ones: a program that listed them at start still has them.
    assert_eq!(link_flags(&r1, "eth1").0, idx1);
    assert_eq!(link_flags(&r1, "eth2").0, idx2);
    let _ = std::fs::remove_file(only_r1);
}

#[test]
fn grpc_across_three_nodes_verifies_every_example_with_vxlan_blocked() {
    for (file, links, checks) in [
        ("3node.yml", 3, 6),
        ("5node.yml", 8, 16),
        ("3node-mlink.yml", 12, 24),
    ] {
        let lab = LabGuard::new("wire-gr3");
        lab.ok(&["up", &topo(file), "--nodes", "3", "--link", "grpc"]);
        lab.assert_links_up(links);
        let st = lab.status();
        let kinds: Vec<&str> = st["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["kind"].as_str().unwrap())
            .collect();
        assert!(
            kinds.contains(&"grpc") && !kinds.contains(&"vxlan"),
            "{file}: {kinds:?}"
        );
        let out = lab.ok(&["verify"]);
        assert_eq!(out.matches("OK ").count(), checks, "{file}: {out}");
        // UDP 4789 really is blocked on every node's underlay.
        let rules = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("mnl-{}-node1", lab.name),
                "nft",
                "list",
                "ruleset",
            ])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&rules.stdout).contains("udp dport 4789"));
    }
}

fn jumbo_lab(tag: &str) -> LabGuard {
    let f = common::jumbo_file(tag);
    let lab = LabGuard::new(tag);
    lab.ok(&["up", f.to_str().unwrap(), "--nodes", "2", "--link", "grpc"]);
    let _ = std::fs::remove_file(f);
    lab
}

/// Sends raw frames out of `ifname` in `src` and checks each arrives unchanged in `dst`.
fn raw_frames_cross(src: &str, dst: &str, ifname: &str) {
    let script = format!(
        r#"
import socket, sys, time, select
frames = [
  bytes.fromhex("0180c200000e" "020000000001" "88cc") + b"LLDP-" + bytes(range(40)),
  bytes.fromhex("0180c2000002" "020000000001" "8809") + b"\x01\x01" + bytes(60),
  bytes.fromhex("0180c2000000" "020000000001" "0026") + b"\x42\x42\x03" + bytes(40),
]
if sys.argv[1] == "rx":
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind(("{ifname}", 0))
    want = set(frames); end = time.time() + 5
    print("ready", flush=True)
    while want and time.time() < end:
        r, _, _ = select.select([s], [], [], 0.2)
        if r:
            f = s.recv(65535)
            want.discard(f)
    sys.exit(0 if not want else 1)
else:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("{ifname}", 0))
    for _ in range(3):
        for f in frames:
            s.send(f)
        time.sleep(0.2)
"#
    );
    let mut rx = Command::new("ip")
        .args(["netns", "exec", dst, "python3", "-c", &script, "rx"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(rx.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let tx = Command::new("ip")
        .args(["netns", "exec", src, "python3", "-c", &script, "tx"])
        .status()
        .unwrap();
    assert!(tx.success());
    assert!(
        rx.wait().unwrap().success(),
        "LLDP/LACP/STP frames did not all cross the wire unchanged"
    );
}

#[test]
fn tcp_jumbo_and_link_local_multicast_cross_a_wire() {
    let lab = jumbo_lab("wire-jumbo");
    lab.assert_links_up(2);
    let (j1, j2) = (lab.pod_netns("j1"), lab.pod_netns("j2"));
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
    assert!(!big.status.success(), "the link MTU is 9000");
    // A TCP transfer completes (offloads on: GSO super-frames travel with their vnet header).
    let v = lab.iperf3("j2", "j1", "192.0.2.2", "5301", &["-t", "2"]);
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    let bytes = v["end"]["sum_received"]["bytes"].as_f64().unwrap();
    eprintln!("iperf3 over the gRPC wire: {:.2} Gbit/s", bps / 1e9);
    assert!(bytes > 1e6, "a TCP transfer completed: {bytes} bytes");
    // Routers rely on link-local multicast: LLDP, LACP and STP cross unchanged.
    raw_frames_cross(&j1, &j2, "eth2");
    raw_frames_cross(&j2, &j1, "eth1");
}

#[test]
fn counters_agree_with_traffic() {
    let lab = jumbo_lab("wire-count");
    lab.assert_links_up(2);
    lab.ok(&[
        "exec",
        "j1",
        "--",
        "ping",
        "-c",
        "300",
        "-i",
        "0.002",
        "-q",
        "192.0.2.2",
    ]);
    let link = |pod| [("uid", "1"), ("pod", pod), ("kind", "grpc")];
    // The two nodes are scraped one after the other: a frame the pods send in between (IPv6 or
    // ARP chatter) counts on one side only. Scrape until two rounds agree (nothing in flight).
    let frames = |m1: &str, m2: &str| {
        [
            "meshnet_link_tx_frames_total",
            "meshnet_link_rx_frames_total",
        ]
        .map(|name| (metric(m1, name, &link("j1")), metric(m2, name, &link("j2"))))
    };
    let (mut m1, mut m2) = (String::new(), String::new());
    common::until(
        "the nodes' counters settle",
        Duration::from_secs(10),
        || {
            std::thread::sleep(Duration::from_millis(300));
            let before = frames(&m1, &m2);
            m1 = lab.ok(&["metrics", "node1"]);
            m2 = lab.ok(&["metrics", "node2"]);
            frames(&m1, &m2) == before
        },
    );
    // A link's drops of frames coming from the peer, by every reason but `peer_down` and
    // `tap_queue`: those count what the link's own pod sent (the other direction) while the
    // peer was away, e.g. IPv6 chatter before the wire came up, or faster than the wire read.
    let from_peer_drops = |m: &str, pod| {
        let own = |reason| {
            metric(
                m,
                "meshnet_link_drops_total",
                &[("uid", "1"), ("pod", pod), ("reason", reason)],
            )
        };
        metric(m, "meshnet_link_drops_total", &link(pod)) - own("peer_down") - own("tap_queue")
    };
    let tx1 = metric(&m1, "meshnet_link_tx_frames_total", &link("j1"));
    let rx2 = metric(&m2, "meshnet_link_rx_frames_total", &link("j2"));
    let drops2 = from_peer_drops(&m2, "j2");
    let unknown2 = metric(&m2, "meshnet_wire_unknown_wire_frames_total", &[]);
    assert!(
        tx1 >= 300.0,
        "j1 sent at least the 300 echo requests: {tx1}"
    );
    // Every frame j1's half sent is received by j2's, dropped with a reason, or counted as for an
    // unknown wire id by node2 — a per-peer counter, which may also hold the other link's (uid 2)
    // frames from before node2 bound it: so it bounds the remainder instead of equalling it.
    assert!(
        rx2 + drops2 <= tx1 && tx1 <= rx2 + drops2 + unknown2,
        "tx on node1 = rx on node2 + counted drops: tx {tx1}, rx {rx2}, drops {drops2}, \
         unknown wire {unknown2}"
    );
    let tx2 = metric(&m2, "meshnet_link_tx_frames_total", &link("j2"));
    let rx1 = metric(&m1, "meshnet_link_rx_frames_total", &link("j1"));
    let drops1 = from_peer_drops(&m1, "j1");
    assert!(tx2 >= 300.0);
    assert_eq!(tx2, rx1 + drops1, "and the other way");
    assert_eq!(metric(&m1, "meshnet_link_carrier", &link("j1")), 1.0);
}

/// Frames a pod sends faster than the wire reads them are dropped by the kernel at the link's
/// TAP in the node; they are counted (`reason="tap_queue"`), so what the pod sent on its port is
/// what the wire took plus what it dropped on the way in.
#[test]
fn a_flood_faster_than_the_wire_counts_what_its_tap_drops() {
    let lab = jumbo_lab("wire-flood");
    lab.assert_links_up(2);
    let n1 = lab.pod_netns("j1");
    lab.iperf3(
        "j2",
        "j1",
        "192.0.2.2",
        "5417",
        &["-u", "-l", "64", "-b", "0", "-t", "2"],
    );
    let pod_tx = || -> f64 {
        let out = Command::new("ip")
            .args(["-n", &n1, "-s", "-j", "link", "show", "eth1"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["stats64"]["tx"]["packets"].as_f64().unwrap()
    };
    let link = [("uid", "1"), ("pod", "j1"), ("kind", "grpc")];
    let counted = |m: &str| {
        metric(m, "meshnet_link_tx_frames_total", &link)
            + metric(
                m,
                "meshnet_link_drops_total",
                &[("uid", "1"), ("pod", "j1"), ("reason", "tap_queue")],
            )
    };
    // Settled: the port's count and the wire's agree across two looks.
    let (mut sent, mut m) = (-1.0, String::new());
    common::until("the counters settle", Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        let before = (sent, counted(&m));
        sent = pod_tx();
        m = lab.ok(&["metrics", "node1"]);
        before == (sent, counted(&m))
    });
    let dropped = metric(
        &m,
        "meshnet_link_drops_total",
        &[("uid", "1"), ("pod", "j1"), ("reason", "tap_queue")],
    );
    eprintln!(
        "port sent {sent}, wire took {}, tap_queue {dropped}",
        counted(&m) - dropped
    );
    assert!(
        dropped > 0.0,
        "a 64-byte flood at full speed overran the TAP: {m}"
    );
    // Frames the pod sent before the wire was up are in neither (the port had no carrier).
    assert!(
        counted(&m) <= sent && sent - counted(&m) < 100.0,
        "port sent {sent}, counted {} (wire + tap_queue)",
        counted(&m)
    );
}

#[test]
fn killed_peer_daemon_drops_carrier_within_2s_and_the_link_comes_back() {
    let lab = jumbo_lab("wire-kill");
    lab.assert_links_up(2);
    let (j1, j2) = (lab.pod_netns("j1"), lab.pod_netns("j2"));
    let before_j2 = link_flags(&j2, "eth1").0;
    lab.ok(&["daemon", "node2", "kill"]);
    let t = Instant::now();
    while carrier(&j1, "eth1") {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "carrier still up {:?} after the peer daemon died",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "carrier down {:?} after SIGKILL of the peer daemon",
        t.elapsed()
    );
    // Frames sent meanwhile are counted as peer_down.
    let _ = lab.run(&[
        "exec",
        "j1",
        "--",
        "ping",
        "-c",
        "3",
        "-W",
        "1",
        "192.0.2.2",
    ]);
    lab.ok(&["daemon", "node2", "start"]);
    let t = Instant::now();
    while !(carrier(&j1, "eth1") && carrier(&j2, "eth1")) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "carrier did not come back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "carrier back {:?} after the peer daemon restarted",
        t.elapsed()
    );
    lab.ok(&[
        "exec",
        "j1",
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        "192.0.2.2",
    ]);
    // The pods were not touched: j2 kept its interface (persistent TAP, re-attached).
    assert_eq!(link_flags(&j2, "eth1").0, before_j2);
    lab.ok(&["verify"]);
}
