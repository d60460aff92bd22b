//! The gRPC wire's control under load (needs root, iperf3, tc): one wire saturated with 64-byte
//! UDP over an underlay slower than the wire (a tbf; see [`underlay_rate`]), and another pod of the same node
//! pair restarted 20 times; every time, every wire of the restarted pod must be up within 2 s —
//! its status, the carrier of both ends, and traffic across it.
//!
//! The restarted pod has four wires: three hash to the saturated wire's shard (uids 3, 5, 7 with
//! uid 1 under `link_hash % 2`), one to the other. Before control had its own path, Bind/Unbind
//! shared the shard's bounded data queue and were dropped when it was full, and nothing re-sent
//! them: restarts left wires down for good.
//!
//! Run twice: both nodes on `MESHNET_WIRE_SHARDS=2`, and node1 on 1 with node2 on 4 (the Hello
//! negotiates the smaller count).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{LabGuard, carrier};

const TOPOLOGY: &str = r#"
apiVersion: networkop.co.uk/v1beta1
kind: Topology
metadata: {name: s1}
spec:
  links:
  - {uid: 1, peer_pod: d1, local_intf: eth1, peer_intf: eth1, local_ip: 192.0.2.1/30, peer_ip: 192.0.2.2/30}
---
apiVersion: networkop.co.uk/v1beta1
kind: Topology
metadata: {name: d1}
spec:
  links:
  - {uid: 1, peer_pod: s1, local_intf: eth1, peer_intf: eth1, local_ip: 192.0.2.2/30, peer_ip: 192.0.2.1/30}
---
apiVersion: networkop.co.uk/v1beta1
kind: Topology
metadata: {name: s2}
spec:
  links:
  - {uid: 2, peer_pod: d2, local_intf: eth1, peer_intf: eth1, local_ip: 192.0.2.101/30, peer_ip: 192.0.2.102/30}
  - {uid: 3, peer_pod: d2, local_intf: eth2, peer_intf: eth2, local_ip: 192.0.2.105/30, peer_ip: 192.0.2.106/30}
  - {uid: 5, peer_pod: d2, local_intf: eth3, peer_intf: eth3, local_ip: 192.0.2.109/30, peer_ip: 192.0.2.110/30}
  - {uid: 7, peer_pod: d2, local_intf: eth4, peer_intf: eth4, local_ip: 192.0.2.113/30, peer_ip: 192.0.2.114/30}
---
apiVersion: networkop.co.uk/v1beta1
kind: Topology
metadata: {name: d2}
spec:
  links:
  - {uid: 2, peer_pod: s2, local_intf: eth1, peer_intf: eth1, local_ip: 192.0.2.102/30, peer_ip: 192.0.2.101/30}
  - {uid: 3, peer_pod: s2, local_intf: eth2, peer_intf: eth2, local_ip: 192.0.2.106/30, peer_ip: 192.0.2.105/30}
  - {uid: 5, peer_pod: s2, local_intf: eth3, peer_intf: eth3, local_ip: 192.0.2.110/30, peer_ip: 192.0.2.109/30}
  - {uid: 7, peer_pod: s2, local_intf: eth4, peer_intf: eth4, local_ip: 192.0.2.114/30, peer_ip: 192.0.2.113/30}
---
{apiVersion: v1, kind: Pod, metadata: {name: s1}, spec: {nodeName: node1}}
---
{apiVersion: v1, kind: Pod, metadata: {name: d1}, spec: {nodeName: node2}}
---
{apiVersion: v1, kind: Pod, metadata: {name: s2}, spec: {nodeName: node1}}
---
{apiVersion: v1, kind: Pod, metadata: {name: d2}, spec: {nodeName: node2}}
"#;

/// s2's wires: (interface, s2's address, d2's address).
const WIRES: [(&str, &str, &str); 4] = [
    ("eth1", "192.0.2.101", "192.0.2.102"),
    ("eth2", "192.0.2.105", "192.0.2.106"),
    ("eth3", "192.0.2.109", "192.0.2.110"),
    ("eth4", "192.0.2.113", "192.0.2.114"),
];

const RESTARTS: usize = 20;
const UP_WITHIN: Duration = Duration::from_secs(2);
/// Traffic (ARP included) behind the saturated shard's queued batches: the wire is up within
/// [`UP_WITHIN`]; its first frames may wait longer on a loaded 2-core runner (1 run in 4 took
/// more than 2 s there while the carrier was up in time).
const TRAFFIC_WITHIN: Duration = Duration::from_secs(5);

/// Runs `meshnet-lab` with extra environment (the daemons it starts inherit it).
fn lab_env(lab: &LabGuard, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_meshnet-lab"))
        .arg("--lab")
        .arg(&lab.name)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "meshnet-lab {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.logs()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Frames `ifname` in `netns` has received so far.
fn rx_packets(netns: &str, ifname: &str) -> u64 {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "-s", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap_or(0)
}

/// Pings `to` from `netns` in the background (ARP and ICMP: frames both ways), killed on drop.
struct Pinger(Child);

impl Pinger {
    fn start(netns: &str, to: &str) -> Self {
        let c = Command::new("ip")
            .args([
                "netns", "exec", netns, "ping", "-q", "-i", "0.2", "-c", "15", to,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Pinger(c)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rate of the underlay: `MESHNET_TEST_UNDERLAY_RATE` (tc syntax), else 40 Mbit/s. It must be
/// below what the wire can carry, so that the shard's data queue stays full (the test checks that
/// the tbf pushes back): release daemons carry several hundred Mbit/s of 64-byte frames (run them
/// with `MESHNET_BIN_DIR` and a rate of `200mbit`), the debug daemons of `cargo test` about
/// 60 Mbit/s. Lower rates make the flood's queued batches (a shard's queue is FIFO) take longer
/// than 2 s to drain, which delays the other wires' frames on that shard, not their control.
fn underlay_rate() -> String {
    std::env::var("MESHNET_TEST_UNDERLAY_RATE").unwrap_or_else(|_| "40mbit".into())
}

/// The node namespaces' underlay ends (`ul0`) limited by a tbf, as a slower physical network.
fn limit_underlay(lab: &LabGuard) {
    for node in ["node1", "node2"] {
        let ns = format!("mnl-{}-{node}", lab.name);
        let st = Command::new("ip")
            .args([
                "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "ul0", "root",
            ])
            .args([
                "tbf",
                "rate",
                &underlay_rate(),
                "burst",
                "64kb",
                "latency",
                "50ms",
            ])
            .status()
            .unwrap();
        assert!(st.success(), "tbf on {ns}/ul0");
    }
}

/// Packets node1's tbf held back or dropped so far (`overlimits` + `dropped`): growing means the
/// underlay, not the daemon, is the bottleneck.
fn underlay_pushback(lab: &LabGuard) -> u64 {
    let ns = format!("mnl-{}-node1", lab.name);
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns, "tc", "-s", "-j", "qdisc", "show", "dev", "ul0",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|q| q["kind"] == "tbf")
        .map(|q| q["overlimits"].as_u64().unwrap_or(0) + q["drops"].as_u64().unwrap_or(0))
        .sum()
}

/// An iperf3 client flooding 64-byte UDP from s1 to d1, killed on drop.
struct Flood(Child);

impl Flood {
    fn start(lab: &LabGuard, seconds: u64) -> Self {
        let d1 = lab.pod_netns("d1");
        let st = Command::new("ip")
            .args([
                "netns", "exec", &d1, "iperf3", "-s", "-1", "-D", "-p", "5201",
            ])
            .status()
            .unwrap();
        assert!(st.success(), "iperf3 server");
        std::thread::sleep(Duration::from_millis(300));
        let s1 = lab.pod_netns("s1");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &s1,
                "iperf3",
                "-c",
                "192.0.2.2",
                "-p",
                "5201",
            ])
            .args(["-u", "-b", "0", "-l", "64", "-t", &seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Flood(child)
    }

    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rate of UDP frames s1's wire sent in the last second, from node1's metrics.
fn flood_pps(lab: &LabGuard) -> f64 {
    let read = || {
        lab.ok(&["metrics", "node1"])
            .lines()
            .find(|l| {
                l.starts_with("meshnet_link_tx_frames_total{")
                    && l.contains("pod=\"s1\"")
                    && l.contains("uid=\"1\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let a = read();
    std::thread::sleep(Duration::from_secs(1));
    read() - a
}

/// One flooded lab at a time. Two at once (four debug daemons and two 64-byte floods on a
/// 2-core runner: the machine 100 % busy, no daemon above 35 % of a core) measure the machine,
/// not control behind a saturated wire: every run on a 2-core AMD EPYC VM then failed in one of
/// rounds 1–4 while each test alone passed (worst 0.5–1.2 s). What the starved runs showed was a
/// stale reconcile pass on the far node: it unbound the wires the restarted pod had just bound,
/// 1.5–2 s down (fixed: such a half now stays attached, quiet — `WireNode::update_peer`); and,
/// left after the fix, the far pod's status lags the carrier by whole reconcile passes (the
/// wires were up in 0.4 s, the status not within 2 s).
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn restarts_keep_every_wire_up(tag: &str, node1_shards: &str, node2_shards: &str) {
    let _one = ONE_LAB
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = LabGuard::new(tag);
    let f = std::env::temp_dir().join(format!("{tag}-{}.yml", std::process::id()));
    std::fs::write(&f, TOPOLOGY).unwrap();
    lab_env(
        &lab,
        &[("MESHNET_WIRE_SHARDS", node1_shards)],
        &["up", f.to_str().unwrap(), "--nodes", "2", "--link", "grpc"],
    );
    let _ = std::fs::remove_file(&f);
    if node2_shards != node1_shards {
        // node2's daemon again, with its own count (pods and wires stay).
        lab.ok(&["daemon", "node2", "stop"]);
        lab_env(
            &lab,
            &[("MESHNET_WIRE_SHARDS", node2_shards)],
            &["daemon", "node2", "start"],
        );
    }
    lab.assert_links_up(5);
    limit_underlay(&lab);
    let mut flood = Flood::start(&lab, 40 + RESTARTS as u64 * 10);
    std::thread::sleep(Duration::from_secs(2));
    let pps = flood_pps(&lab);
    assert!(
        pps > 1000.0,
        "the flood runs ({pps:.0} frames/s on s1's wire)"
    );
    let pushback = underlay_pushback(&lab);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        underlay_pushback(&lab) > pushback,
        "the underlay is saturated (tbf at {})",
        underlay_rate()
    );
    let d2 = lab.pod_netns("d2");
    let mut worst = Duration::ZERO;
    for round in 1..=RESTARTS {
        assert!(flood.running(), "round {round}: the flood ended early");
        // `restart --timeout 2`: the new sandbox's ADD, then every link of s2 up in its status
        // within 2 s.
        let out = lab.run(&["restart", "s2", "--timeout", "2"]);
        assert!(
            out.status.success(),
            "round {round}: s2's wires not up within 2 s of its ADD: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            lab.logs()
        );
        let t = Instant::now();
        let s2 = lab.pod_netns("s2");
        // Carrier of both ends within 2 s, then traffic across every wire (a ping
        // on a wire of the saturated shard waits behind the flood's queued batches).
        loop {
            let down: Vec<&str> = WIRES
                .iter()
                .filter(|(ifname, _, _)| !(carrier(&s2, ifname) && carrier(&d2, ifname)))
                .map(|w| w.0)
                .collect();
            if down.is_empty() {
                break;
            }
            assert!(
                t.elapsed() < UP_WITHIN,
                "round {round}: {down:?} without carrier after {:?}\n{}",
                t.elapsed(),
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Traffic: frames s2 sends into each wire reach d2's end, and d2's answers reach s2's
        // (one crossing each way: a ping's round trip would also wait behind the flood's
        // queued batches twice, ARP included).
        let before: Vec<(u64, u64)> = WIRES
            .iter()
            .map(|(ifname, _, _)| (rx_packets(&s2, ifname), rx_packets(&d2, ifname)))
            .collect();
        let _pingers: Vec<Pinger> = WIRES.iter().map(|w| Pinger::start(&s2, w.2)).collect();
        loop {
            let silent: Vec<&str> = WIRES
                .iter()
                .zip(&before)
                .filter(|((ifname, _, _), (s, d))| {
                    rx_packets(&s2, ifname) <= *s || rx_packets(&d2, ifname) <= *d
                })
                .map(|(w, _)| w.0)
                .collect();
            if silent.is_empty() {
                break;
            }
            if t.elapsed() >= TRAFFIC_WITHIN {
                let counts: Vec<String> = WIRES
                    .iter()
                    .zip(&before)
                    .map(|((ifname, _, _), (s, d))| {
                        format!(
                            "{ifname}: s2 rx +{} d2 rx +{}",
                            rx_packets(&s2, ifname) - s,
                            rx_packets(&d2, ifname) - d
                        )
                    })
                    .collect();
                let m = lab.ok(&["metrics", "node1"]);
                let s2_metrics: Vec<&str> = m
                    .lines()
                    .filter(|l| l.contains("pod=\"s2\"") && !l.ends_with(" 0"))
                    .collect();
                panic!(
                    "round {round}: no traffic both ways across {silent:?} within {TRAFFIC_WITHIN:?}: \
                     {counts:?}\nnode1 metrics of s2: {s2_metrics:#?}\n{}",
                    lab.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        worst = worst.max(t.elapsed());
    }
    // The saturated wire is still carrying, and still up.
    assert!(flood.running(), "the flood ran throughout");
    let pps = flood_pps(&lab);
    assert!(pps > 1000.0, "the flood still runs ({pps:.0} frames/s)");
    lab.assert_links_up(5);
    eprintln!(
        "{tag}: {RESTARTS} restarts, carrier and traffic both ways on every wire within {worst:?} of the status; \
         flood {pps:.0} frames/s over a {} underlay",
        underlay_rate()
    );
}

#[test]
fn restarts_under_a_saturated_wire_keep_every_wire_up_with_two_shards() {
    restarts_keep_every_wire_up("wire-ctl2", "2", "2");
}

#[test]
fn restarts_under_a_saturated_wire_keep_every_wire_up_with_one_and_four_shards() {
    restarts_keep_every_wire_up("wire-ctl14", "1", "4");
}
