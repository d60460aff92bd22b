//! A declared `state: down` pulls the cable (needs root): both ends lose carrier, the routers'
//! admin state and every interface stay, and `up` plugs it back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::time::Duration;

use common::{LabGuard, two_pods, until, yaml_file};

/// `(admin up, carrier)` of `ifname` in `netns`, and its ifindex.
fn port(netns: &str, ifname: &str) -> (bool, bool, String) {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "-o", "link", "show", ifname])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let flags = s
        .split('<')
        .nth(1)
        .and_then(|f| f.split('>').next())
        .unwrap_or_default();
    let flags: Vec<&str> = flags.split(',').collect();
    let index = s.split(':').next().unwrap_or_default().to_string();
    (flags.contains(&"UP"), flags.contains(&"LOWER_UP"), index)
}

/// `state: down` on r1's declaration: both ports lose carrier within a second, the routers'
/// admin state and the ports stay, the link reports `down`; `up` brings both carriers back.
fn pulled_cable(tag: &str, r2_node: &str, up_args: &[&str], ips: (&str, &str)) {
    let lab = LabGuard::pair(tag, r2_node, ips, &[], up_args);
    let far = ips.1.split('/').next().unwrap();
    lab.assert_links_up(1);
    let (n1, n2) = (lab.pod_netns("r1"), lab.pod_netns("r2"));
    let before = (port(&n1, "eth1").2, port(&n2, "eth1").2);
    assert!(port(&n1, "eth1").1 && port(&n2, "eth1").1);

    lab.ok(&["link", "r1:eth1", "down"]);
    let took = until("both carriers down", Duration::from_secs(5), || {
        !port(&n1, "eth1").1 && !port(&n2, "eth1").1
    });
    eprintln!("both carriers down {took:?} after the edit");
    assert!(
        took < Duration::from_secs(1),
        "carriers went down after {took:?}"
    );
    // The routers' admin state and the ports themselves are untouched.
    assert!(port(&n1, "eth1").0 && port(&n2, "eth1").0);
    assert_eq!((port(&n1, "eth1").2, port(&n2, "eth1").2), before);
    until("status down on both ends", Duration::from_secs(5), || {
        lab.end_status("r1", 1)["state"] == "down" && lab.end_status("r2", 1)["state"] == "down"
    });
    assert!(
        lab.end_status("r2", 1)["message"]
            .as_str()
            .unwrap()
            .contains("declared by r1")
    );
    let ping = lab.run(&["exec", "r1", "--", "ping", "-c", "1", "-W", "1", far]);
    assert!(!ping.status.success(), "a pulled cable carries nothing");
    assert!(
        lab.ok(&["verify"]).contains("SKIP"),
        "verify skips a pulled cable"
    );

    lab.ok(&["link", "r1:eth1", "up"]);
    let took = until("both carriers up", Duration::from_secs(5), || {
        port(&n1, "eth1").1 && port(&n2, "eth1").1
    });
    eprintln!("both carriers up {took:?} after the edit");
    lab.assert_links_up(1);
    lab.ok(&["exec", "r1", "--", "ping", "-c", "1", "-W", "2", far]);
    assert_eq!((port(&n1, "eth1").2, port(&n2, "eth1").2), before);
}

#[test]
fn a_pulled_vxlan_cable_takes_both_carriers_down_and_back() {
    pulled_cable(
        "cab",
        "node2",
        &["--nodes", "2"],
        ("192.0.2.9/30", "192.0.2.10/30"),
    );
}

/// A same-node link: its ports' node ends go down (see `daemon/src/ports.rs`).
#[test]
fn a_pulled_veth_cable_takes_both_carriers_down_and_back() {
    pulled_cable("cabv", "node1", &[], ("192.0.2.13/30", "192.0.2.14/30"));
}

/// A `state` that is neither `up` nor `down` is refused.
#[test]
fn a_cable_state_other_than_up_or_down_is_refused() {
    let lab = LabGuard::new("cabx");
    let f = yaml_file(
        "cabx",
        &two_pods(
            ("r1", "node1"),
            ("r2", "node1"),
            &[(1, "eth1", "192.0.2.17/30", "192.0.2.18/30")],
        ),
    );
    lab.ok(&["up", f.to_str().unwrap()]);
    assert_eq!(
        lab.run(&["link", "r2:eth1", "sideways"]).status.code(),
        Some(1)
    );
    let _ = std::fs::remove_file(f);
}
