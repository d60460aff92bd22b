//! A link that goes takes its Prometheus series with it (needs root): per-link series are
//! rendered at each scrape from the links that exist then, on the gRPC wire as on kernel links,
//! so a removed link's carrier gauge does not stay at 1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::time::{Duration, Instant};

use common::{LabGuard, two_pods, yaml_file};

/// node1's series of link uid 1.
fn series(lab: &LabGuard) -> Vec<String> {
    lab.ok(&["metrics", "node1"])
        .lines()
        .filter(|l| l.starts_with("meshnet_link_") && l.contains("uid=\"1\""))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_removed_link_leaves_no_series_on_grpc_and_vxlan() {
    for link in ["grpc", "vxlan"] {
        let tag = format!("ser-{link}");
        let lab = LabGuard::new(&tag);
        let one = two_pods(
            ("r1", "node1"),
            ("r2", "node2"),
            &[(1, "eth1", "192.0.2.9/30", "192.0.2.10/30")],
        );
        let f = yaml_file(&tag, &one);
        lab.ok(&["up", f.to_str().unwrap(), "--nodes", "2", "--link", link]);
        lab.assert_links_up(1);
        let t = Instant::now();
        while !series(&lab)
            .iter()
            .any(|l| l.starts_with("meshnet_link_carrier{") && l.ends_with(" 1"))
        {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{link}: no carrier series: {:?}",
                series(&lab)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The link leaves both declarations (uid 2 keeps the pods' Topologies non-empty).
        let other = two_pods(
            ("r1", "node1"),
            ("r2", "node2"),
            &[(2, "eth2", "192.0.2.13/30", "192.0.2.14/30")],
        );
        std::fs::write(&f, other).unwrap();
        lab.ok(&["apply", f.to_str().unwrap()]);
        let t = Instant::now();
        while !series(&lab).is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{link}: series of the removed link remain: {:?}",
                series(&lab)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_file(f);
    }
}
