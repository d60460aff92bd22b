//! Routers in the pods (issue 12): two FRR routers (Debian's `frr`: zebra + ospfd per pod, each
//! with its own config, pid, vty and zserv paths under a temp dir) run OSPF over a meshnet link.
//! Shutting the port on one router must drop the far router's adjacency by carrier (the dead
//! interval is 40 s, so only carrier can do it in 2 s), the port must stay shut across the
//! daemon's full resyncs, and `no shutdown` must bring both adjacencies back. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{LabGuard, two_pods, yaml_file};

/// The daemons' full resync interval in these tests, seconds.
const RESYNC: u64 = 2;
/// OSPF dead interval: far longer than any bound asserted here, so a quick adjacency loss can
/// only come from carrier.
const DEAD_INTERVAL: u32 = 40;

/// zebra + ospfd in one pod's namespace, stopped (by pid) and their files removed on drop.
struct Router {
    dir: PathBuf,
}

impl Router {
    /// `pod_netns` is unique to the lab and the pod, so it also names the router's directory.
    fn start(pod_netns: &str, name: &str, router_id: &str, network: &str) -> Self {
        let zebra = PathBuf::from("/usr/lib/frr/zebra");
        assert!(
            zebra.is_file(),
            "FRR is not installed: run scripts/install-deps.sh (Debian package frr)"
        );
        let dir = std::env::temp_dir().join(format!("frr-{pod_netns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("zebra.conf"), format!("hostname {name}\n")).unwrap();
        std::fs::write(
            dir.join("ospfd.conf"),
            format!(
                "hostname {name}\ninterface eth1\n ip ospf network point-to-point\n \
                 ip ospf hello-interval 1\n ip ospf dead-interval {DEAD_INTERVAL}\n\
                 router ospf\n ospf router-id {router_id}\n network {network} area 0\n"
            ),
        )
        .unwrap();
        // The daemons drop to user frr (whose group may use the vty sockets).
        let chown = Command::new("chown")
            .args(["-R", "frr:frr"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(chown.success());
        let r = Router { dir };
        for d in ["zebra", "ospfd"] {
            let p = |f: &str| r.dir.join(f).display().to_string();
            let out = Command::new("ip")
                .args(["netns", "exec", pod_netns])
                .arg(format!("/usr/lib/frr/{d}"))
                .args(["-d", "-u", "frr", "-g", "frr", "-P", "0"])
                .args(["-f", &p(&format!("{d}.conf"))])
                .args(["-i", &p(&format!("{d}.pid"))])
                .args(["-z", &p("zserv.api")])
                .args(["--vty_socket", &p("")])
                .arg(format!("--log=file:{}", p(&format!("{d}.log"))))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{d} in {pod_netns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        r
    }

    fn vtysh(&self, cmds: &[&str]) -> String {
        let mut c = Command::new("vtysh");
        c.arg("--vty_socket").arg(&self.dir);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "vtysh {cmds:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// OSPF neighbours in state Full.
    fn full_neighbours(&self) -> usize {
        let v: serde_json::Value =
            serde_json::from_str(&self.vtysh(&["show ip ospf neighbor json"])).unwrap_or_default();
        v["neighbors"]
            .as_object()
            .map(|m| {
                m.values()
                    .flat_map(|l| l.as_array().cloned().unwrap_or_default())
                    .filter(|n| n["converged"] == "Full")
                    .count()
            })
            .unwrap_or(0)
    }

    fn set_shutdown(&self, shut: bool) {
        let cmd = if shut { "shutdown" } else { "no shutdown" };
        self.vtysh(&["configure terminal", "interface eth1", cmd]);
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        for d in ["ospfd", "zebra"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("{d}.pid"))) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `f` holds, up to `limit`; returns how long it took.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

/// `ip -j link show dev eth1` flags in `netns`.
fn eth1_flags(netns: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", "eth1"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["flags"].to_string()
}

/// Brings up f1 (node1) and f2 (`f2_node`) with FRR in both, adjacency Full on both sides.
fn frr_lab(tag: &str, up_args: &[&str], f2_node: &str) -> (LabGuard, Router, Router) {
    let yaml = two_pods(
        ("f1", "node1"),
        ("f2", f2_node),
        &[(1, "eth1", "10.0.12.1/24", "10.0.12.2/24")],
    );
    let f = yaml_file(tag, &yaml);
    let lab = LabGuard::new(tag);
    let mut args = vec!["up", f.to_str().unwrap()];
    args.extend_from_slice(up_args);
    lab.ok_env(
        &[("MESHNET_LAB_RESYNC_SECONDS", &RESYNC.to_string())],
        &args,
    );
    let r1 = Router::start(&lab.pod_netns("f1"), "f1", "10.0.0.1", "10.0.12.0/24");
    let r2 = Router::start(&lab.pod_netns("f2"), "f2", "10.0.0.2", "10.0.12.0/24");
    wait_for(Duration::from_secs(30), "OSPF adjacency Full", || {
        r1.full_neighbours() == 1 && r2.full_neighbours() == 1
    });
    (lab, r1, r2)
}

/// A port shut on one router drops the far router's adjacency by carrier within 2 s, stays shut
/// across resyncs, and `no shutdown` brings both adjacencies back.
fn shutdown_drops_the_far_adjacency(tag: &str, up_args: &[&str], f2_node: &str) {
    let (lab, r1, r2) = frr_lab(tag, up_args, f2_node);
    let (ns1, ns2) = (lab.pod_netns("f1"), lab.pod_netns("f2"));
    r1.set_shutdown(true);
    let took = wait_for(
        Duration::from_secs(2),
        "far router's adjacency dropped by carrier",
        || r2.full_neighbours() == 0,
    );
    eprintln!("{tag}: far adjacency dropped {took:?} after shutdown");
    assert!(
        eth1_flags(&ns2).contains("NO-CARRIER"),
        "{}",
        eth1_flags(&ns2)
    );
    // Two full resyncs and a half: the port stays shut, the adjacency stays down.
    std::thread::sleep(Duration::from_secs(RESYNC * 5 / 2));
    let flags = eth1_flags(&ns1);
    assert!(
        !flags.contains("\"UP\""),
        "the resync opened the shut port: {flags}\n{}",
        lab.logs()
    );
    assert_eq!((r1.full_neighbours(), r2.full_neighbours()), (0, 0));
    r1.set_shutdown(false);
    let took = wait_for(Duration::from_secs(20), "both adjacencies back", || {
        r1.full_neighbours() == 1 && r2.full_neighbours() == 1
    });
    eprintln!("{tag}: adjacency Full on both {took:?} after no shutdown");
}

#[test]
fn frr_shutdown_drops_the_far_adjacency_by_carrier_and_survives_resyncs() {
    shutdown_drops_the_far_adjacency("cable-frrv", &[], "node1");
}

/// On the gRPC wire the shut port's half is unbound from its peer (see `daemon/src/ports.rs`).
#[test]
fn frr_shutdown_on_grpc_drops_the_far_adjacency_by_carrier_and_survives_resyncs() {
    shutdown_drops_the_far_adjacency("cable-frrsg", &["--nodes", "2", "--link", "grpc"], "node2");
}

/// A peer pod restarted under the gRPC wire is a link-down its neighbour's OSPF sees by carrier
/// (the dead interval is 40 s), however fast the restart; the new sandbox's router then forms the
/// adjacency again over the same port on the survivor.
#[test]
fn frr_sees_a_restarted_peer_pod_under_the_grpc_wire_by_carrier() {
    let (lab, r1, r2) = frr_lab("cable-frrr", &["--nodes", "2", "--link", "grpc"], "node2");
    let ns1 = lab.pod_netns("f1");
    let before = common::port_identity(&ns1, "eth1");
    let t = Instant::now();
    lab.ok(&["restart", "f2"]);
    wait_for(
        Duration::from_secs(3),
        "f1's adjacency dropped by carrier",
        || r1.full_neighbours() == 0,
    );
    let took = t.elapsed();
    eprintln!("f1's adjacency dropped {took:?} after the restart began");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The old sandbox's routers go; the new sandbox gets its own.
    drop(r2);
    let r2 = Router::start(&lab.pod_netns("f2"), "f2", "10.0.0.2", "10.0.12.0/24");
    wait_for(Duration::from_secs(30), "adjacency Full again", || {
        r1.full_neighbours() == 1 && r2.full_neighbours() == 1
    });
    assert_eq!(
        common::port_identity(&ns1, "eth1"),
        before,
        "f1's port replaced"
    );
}

/// Over VXLAN the far end's carrier follows the shut port through the daemons' beacons (see
/// `daemon/src/beacon.rs`).
#[test]
fn frr_shutdown_on_vxlan_drops_the_far_adjacency_by_carrier_and_survives_resyncs() {
    shutdown_drops_the_far_adjacency("cable-frrx", &["--nodes", "2"], "node2");
}

/// An underlay cut under OSPF over VXLAN: both routers drop the adjacency by carrier within
/// 3 s (the dead interval is 40 s), and it comes back when the underlay does.
#[test]
fn frr_over_vxlan_sees_an_underlay_cut_by_carrier() {
    let (lab, r1, r2) = frr_lab("cable-frrc", &["--nodes", "2"], "node2");
    let t = Instant::now();
    lab.ok(&["node", "node2", "down"]);
    while !(r1.full_neighbours() == 0 && r2.full_neighbours() == 0) {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "adjacencies not dropped within 3 s of the cut"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "vxlan: both adjacencies dropped {:?} after the underlay cut",
        t.elapsed()
    );
    lab.ok(&["node", "node2", "up"]);
    let took = wait_for(Duration::from_secs(20), "both adjacencies back", || {
        r1.full_neighbours() == 1 && r2.full_neighbours() == 1
    });
    eprintln!("vxlan: adjacency Full on both {took:?} after the underlay came back");
}

/// A declared `state: down` is a cable pull the routers see: over VXLAN and over the gRPC wire,
/// both adjacencies drop by carrier (the dead interval is 40 s) and come back on `up`.
#[test]
fn frr_sees_a_pulled_cable_on_vxlan_and_grpc() {
    for (tag, link) in [("cable-frrd", "vxlan"), ("cable-frrg", "grpc")] {
        let (lab, r1, r2) = frr_lab(tag, &["--nodes", "2", "--link", link], "node2");
        lab.ok(&["link", "f1:eth1", "down"]);
        let took = wait_for(Duration::from_secs(2), "both adjacencies dropped", || {
            r1.full_neighbours() == 0 && r2.full_neighbours() == 0
        });
        eprintln!("{link}: both adjacencies dropped {took:?} after state: down");
        lab.ok(&["link", "f1:eth1", "up"]);
        let took = wait_for(Duration::from_secs(20), "both adjacencies back", || {
            r1.full_neighbours() == 1 && r2.full_neighbours() == 1
        });
        eprintln!("{link}: adjacency Full on both {took:?} after state: up");
        drop((r1, r2));
    }
}
