//! Links that behave like cables (issue 12), end to end: bad names and clashing uids are per-link
//! errors that leave nothing behind and never show as `up`, a pod whose namespace vanished is
//! gone, and the router owns its port (admin state, MTU and its own addresses survive resyncs).
//! Needs root; every lab is named `cable-*` and removed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{LabGuard, two_pods, yaml_file};
use meshnet_lab::lab::{LabState, link_views};
use meshnet_topology::topology::Topology;

/// Runs `ip ARGS` inside `netns`, asserting success; returns stdout.
fn ip(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {netns} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -j link show dev IFNAME` in `netns`, parsed.
fn link_json(netns: &str, ifname: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&ip(netns, &["-j", "link", "show", "dev", ifname])).unwrap();
    v[0].clone()
}

/// Runs the lab with its daemons resyncing every [`RESYNC`] seconds.
fn with_resync(lab: &LabGuard, args: &[&str]) {
    lab.ok_env(&[("MESHNET_LAB_RESYNC_SECONDS", &RESYNC.to_string())], args);
}

/// The daemons' full resync interval in these tests, seconds.
const RESYNC: u64 = 2;

fn sorted_ifaces(netns: &str) -> Vec<String> {
    let mut v = LabGuard::interfaces(netns);
    v.sort();
    v
}

/// `%` makes a creating request a name template (`p%` became `p0`); with it, a pod's ADD failed
/// as a whole (taking the valid links down) and VXLAN leaked `p0` in the pod. Now each such
/// link is an error of its own, the other links are up, and nothing is made for it.
#[test]
fn percent_names_are_per_link_errors_that_leave_nothing() {
    let f = yaml_file(
        "cable-pct",
        r#"
apiVersion: networkop.co.uk/v1beta1
kind: Topology
metadata: {name: a1}
spec:
  links:
  - {uid: 1, peer_pod: a2, local_intf: eth1, peer_intf: eth1, local_ip: 192.0.2.1/24, peer_ip: 192.0.2.2/24}
  - {uid: 2, peer_pod: a2, local_intf: "p%", peer_intf: "p%"}
  - {uid: 3, peer_pod: a3, local_intf: eth3, peer_intf: eth3, local_ip: 198.51.100.101/30, peer_ip: 198.51.100.102/30}
  - {uid: 4, peer_pod: a3, local_intf: "q%d", peer_intf: "q%d"}
---
apiVersion: networkop.co.uk/v1beta1
kind: Topology
metadata: {name: a2}
spec:
  links:
  - {uid: 1, peer_pod: a1, local_intf: eth1, peer_intf: eth1, local_ip: 192.0.2.2/24, peer_ip: 192.0.2.1/24}
  - {uid: 2, peer_pod: a1, local_intf: "p%", peer_intf: "p%"}
---
apiVersion: networkop.co.uk/v1beta1
kind: Topology
metadata: {name: a3}
spec:
  links:
  - {uid: 3, peer_pod: a1, local_intf: eth3, peer_intf: eth3, local_ip: 198.51.100.102/30, peer_ip: 198.51.100.101/30}
  - {uid: 4, peer_pod: a1, local_intf: "q%d", peer_intf: "q%d"}
---
{apiVersion: v1, kind: Pod, metadata: {name: a1}, spec: {nodeName: node1}}
---
{apiVersion: v1, kind: Pod, metadata: {name: a2}, spec: {nodeName: node2}}
---
{apiVersion: v1, kind: Pod, metadata: {name: a3}, spec: {nodeName: node1}}
"#,
    );
    let lab = LabGuard::new("cable-pct");
    let out = lab.run(&["up", f.to_str().unwrap(), "--nodes", "2", "--timeout", "20"]);
    // `up` waits for every link, so it reports the two refused ones — but every pod started
    // (its ADD succeeded).
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("contains '%'"), "{err}");
    for (pod, uid) in [("a1", 2), ("a2", 2), ("a1", 4), ("a3", 4)] {
        let s = lab.end_status(pod, uid);
        assert_eq!(s["state"], "error", "{pod} uid {uid}: {s:#}");
        assert!(
            s["message"].as_str().unwrap().contains("contains '%'"),
            "{pod} uid {uid}: {s:#}"
        );
    }
    for (pod, uid) in [("a1", 1), ("a2", 1), ("a1", 3), ("a3", 3)] {
        assert_eq!(lab.end_status(pod, uid)["state"], "up", "{pod} uid {uid}");
    }
    // Nothing was made under a template name, in any pod.
    assert_eq!(
        sorted_ifaces(&lab.pod_netns("a1")),
        ["eth0", "eth1", "eth3", "lo"]
    );
    assert_eq!(sorted_ifaces(&lab.pod_netns("a2")), ["eth0", "eth1", "lo"]);
    assert_eq!(sorted_ifaces(&lab.pod_netns("a3")), ["eth0", "eth3", "lo"]);
    // The valid links carry traffic (VXLAN across nodes, veth on the node).
    lab.ok(&[
        "exec",
        "a1",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "192.0.2.2",
    ]);
    lab.ok(&[
        "exec",
        "a3",
        "--",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "198.51.100.101",
    ]);
}

/// r1–r3 and r2–r4 both declare uid 7. Before, r1–r3 got a veth, r2 and r4 got nothing, and all
/// four ends said `up` (and `verify` passed). Now every end is an error naming the others,
/// nothing is built for uid 7, the pods' other links are up, and `verify` fails.
#[test]
fn one_uid_used_by_two_pairs_is_an_error_on_every_end() {
    let mut yaml = String::new();
    for (me, peer) in [("r1", "r3"), ("r3", "r1"), ("r2", "r4"), ("r4", "r2")] {
        yaml.push_str(&format!(
            "apiVersion: networkop.co.uk/v1beta1\nkind: Topology\nmetadata: {{name: {me}}}\nspec:\n  links:\n  - {{uid: 7, peer_pod: {peer}, local_intf: eth1, peer_intf: eth1}}\n"
        ));
        // A good link on each pod, which the clash must spare.
        let good = match me {
            "r1" => "  - {uid: 1, peer_pod: r2, local_intf: eth2, peer_intf: eth2}\n",
            "r2" => "  - {uid: 1, peer_pod: r1, local_intf: eth2, peer_intf: eth2}\n",
            _ => "",
        };
        yaml.push_str(good);
        yaml.push_str(&format!(
            "---\n{{apiVersion: v1, kind: Pod, metadata: {{name: {me}}}}}\n---\n"
        ));
    }
    let f = yaml_file("cable-uid", &yaml);
    let lab = LabGuard::new("cable-uid");
    let out = lab.run(&["up", f.to_str().unwrap(), "--timeout", "20"]);
    assert!(!out.status.success(), "uid 7 cannot be up");
    for (me, others) in [
        ("r1", "r2, r3, r4"),
        ("r2", "r1, r3, r4"),
        ("r3", "r1, r2, r4"),
        ("r4", "r1, r2, r3"),
    ] {
        let s = lab.end_status(me, 7);
        assert_eq!(s["state"], "error", "{me}: {s:#}");
        assert!(
            s["message"]
                .as_str()
                .unwrap()
                .contains(&format!("also declared by pods {others}")),
            "{me}: {s:#}"
        );
        assert!(
            !LabGuard::interfaces(&lab.pod_netns(me)).contains(&"eth1".to_string()),
            "{me} got an eth1 for a clashing uid"
        );
    }
    assert_eq!(lab.end_status("r1", 1)["state"], "up");
    assert_eq!(lab.end_status("r2", 1)["state"], "up");
    let st = lab.status();
    let view = st["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["uid"] == 7)
        .cloned()
        .unwrap();
    assert_eq!(view["state"], "error", "{view:#}");
    assert!(!lab.run(&["verify"]).status.success(), "verify must fail");
}

/// The lab's link view once kept the first two declarations of a uid and dropped any other
/// silently; now the view is an `error` naming the extra declarers.
#[test]
fn link_view_shows_a_third_declaration_of_a_uid() {
    let pods: Vec<serde_json::Value> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            serde_json::json!({
                "namespace": "default", "name": n, "node": "node1", "netns": format!("ns-{n}"),
                "container_id": format!("cid-{n}"), "generation": 1, "result": null,
            })
        })
        .collect();
    let st: LabState = serde_json::from_value(serde_json::json!({
        "name": "cable-view", "dir": "/nonexistent", "link": "vxlan", "cni_version": "0.3.1",
        "underlay_netns": "u", "nodes": [], "pods": pods,
    }))
    .unwrap();
    let topo = |me: &str, peer: &str, intf: &str| -> Topology {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": me, "namespace": "default"},
            "spec": {"links": [{"uid": 5, "peer_pod": peer, "local_intf": intf, "peer_intf": "eth1"}]},
            "status": {"src_ip": "198.51.100.1", "net_ns": format!("/run/netns/ns-{me}"),
                "container_id": format!("cid-{me}"),
                "links": [{"uid": 5, "local_intf": intf, "peer_pod": peer, "state": "up"}]},
        }))
        .unwrap()
    };
    let views = link_views(
        &st,
        &[
            topo("a", "b", "eth1"),
            topo("b", "a", "eth1"),
            topo("c", "a", "eth9"),
        ],
    );
    assert_eq!(views.len(), 1, "{views:#?}");
    let v = &views[0];
    assert_eq!(v.state, "error", "{v:#?}");
    assert!(v.message.contains("also declared by c"), "{v:#?}");
    assert!(v.required);
}

/// A pod whose sandbox namespace was removed while its daemon was down (no DEL reached it) is
/// gone once the daemon is back: its status no longer says alive, its peer's end is pending
/// (waiting for it) with its port kept and no carrier, and no end flips to "No such file or
/// directory" on the resyncs.
#[test]
fn a_pod_whose_namespace_vanished_is_gone() {
    let f = yaml_file(
        "cable-gone",
        &two_pods(("g1", "node1"), ("g2", "node1"), &[(1, "eth1", "", "")]),
    );
    let lab = LabGuard::new("cable-gone");
    with_resync(&lab, &["up", f.to_str().unwrap()]);
    lab.assert_links_up(1);
    let g2_ns = lab.pod_netns("g2");
    lab.ok(&["daemon", "node1", "stop"]);
    let del = Command::new("ip")
        .args(["netns", "del", &g2_ns])
        .output()
        .unwrap();
    assert!(del.status.success());
    with_resync(&lab, &["daemon", "node1", "start"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g2 = lab.topology("default", "g2");
        let gone = g2["status"]["net_ns"].is_null() || g2["status"]["net_ns"] == "";
        let g1 = lab.end_status("g1", 1);
        if gone && g1["state"] == "pending" {
            assert!(
                g1["message"]
                    .as_str()
                    .unwrap()
                    .contains("waiting for peer pod default/g2"),
                "{g1:#}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "g2 still alive or g1 not pending: g2 {:#}, g1 {g1:#}\n{}",
            g2["status"],
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Across two full resyncs nothing turns into an error.
    std::thread::sleep(Duration::from_secs(5));
    let g1 = lab.end_status("g1", 1);
    assert_eq!(g1["state"], "pending", "{g1:#}");
    assert!(
        !lab.logs().contains("No such file or directory"),
        "{}",
        lab.logs()
    );
    // The port stays while the link is declared (issue 12), carrier off: a cable whose far
    // end is gone.
    let g1_ns = lab.pod_netns("g1");
    assert!(
        LabGuard::interfaces(&g1_ns).contains(&"eth1".to_string()),
        "g1 keeps its port"
    );
    assert!(
        !common::carrier(&g1_ns, "eth1"),
        "no carrier without a far end"
    );
}

/// Two pods, `o1` on node1 and `o2` on `o2_node`, joined by uid 1 (`eth1`, addresses
/// `PREFIX.1/24` and `PREFIX.2/24`) and uid 2 (`eth2`, no addresses, no `mtu`, o1's MAC declared
/// as [`O1_ETH2_MAC`]).
fn owned_pair(prefix: &str, o2_node: &str) -> String {
    let (a, b) = (format!("{prefix}.1/24"), format!("{prefix}.2/24"));
    two_pods(
        ("o1", "node1"),
        ("o2", o2_node),
        &[(1, "eth1", &a, &b), (2, "eth2", "", "")],
    )
    .replacen(
        "peer_pod: o2, local_intf: eth2, peer_intf: eth2,",
        &format!("peer_pod: o2, local_intf: eth2, peer_intf: eth2, local_mac: \"{O1_ETH2_MAC}\","),
        1,
    )
}

const O1_ETH2_MAC: &str = "02:00:00:00:00:21";

/// IPv4 addresses of `ifname` in `netns`, sorted.
fn addrs(netns: &str, ifname: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&ip(netns, &["-j", "-4", "addr", "show", "dev", ifname])).unwrap();
    let mut out: Vec<String> = v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect();
    out.sort();
    out
}

/// The router owns its port, on the link kind `up_args` makes: a port shut, an MTU the router
/// chose and an address it added all survive full resyncs (same ifindex); changing `local_ip`
/// removes the address meshnet set — only that one — and adds the new one.
fn router_owns_its_port(tag: &str, up_args: &[&str], o2_node: &str) {
    let f = yaml_file(tag, &owned_pair("10.0.1", o2_node));
    let lab = LabGuard::new(tag);
    let mut args = vec!["up", f.to_str().unwrap()];
    args.extend_from_slice(up_args);
    with_resync(&lab, &args);
    lab.assert_links_up(2);
    let o1 = lab.pod_netns("o1");
    let before = (
        link_json(&o1, "eth1")["ifindex"].clone(),
        link_json(&o1, "eth2")["ifindex"].clone(),
    );
    let mtu0 = link_json(&o1, "eth2")["mtu"].as_u64().unwrap();
    let mtu = (mtu0 - 100).to_string();
    assert_eq!(link_json(&o1, "eth2")["address"], O1_ETH2_MAC);
    ip(&o1, &["link", "set", "eth1", "down"]);
    ip(&o1, &["link", "set", "eth2", "mtu", &mtu]);
    // A router that sets its own MAC (the declared one was only the start).
    ip(
        &o1,
        &["link", "set", "eth2", "address", "02:00:00:00:00:99"],
    );
    ip(&o1, &["addr", "add", "10.7.0.1/24", "dev", "eth1"]);
    // Two full resyncs and a half.
    std::thread::sleep(Duration::from_secs(RESYNC * 5 / 2));
    let (eth1, eth2) = (link_json(&o1, "eth1"), link_json(&o1, "eth2"));
    let flags = eth1["flags"].to_string();
    assert!(
        !flags.contains("\"UP\""),
        "eth1 was brought up again: {flags}\n{}",
        lab.logs()
    );
    assert_eq!(eth2["mtu"].to_string(), mtu, "eth2's MTU was reverted");
    assert_eq!(
        eth2["address"], "02:00:00:00:00:99",
        "eth2's MAC was reverted"
    );
    assert_eq!(
        (eth1["ifindex"].clone(), eth2["ifindex"].clone()),
        before,
        "ports replaced"
    );
    assert_eq!(addrs(&o1, "eth1"), ["10.0.1.1/24", "10.7.0.1/24"]);

    // A changed declaration: meshnet's address moves, the router's stays, the port stays shut.
    let f2 = yaml_file(&format!("{tag}-2"), &owned_pair("10.9.1", o2_node));
    let out = lab.run(&["apply", f2.to_str().unwrap(), "--timeout", "5"]);
    // eth1 is shut, so `apply` may report the link not up; what matters is the kernel.
    let _ = out;
    let deadline = Instant::now() + Duration::from_secs(10);
    while addrs(&o1, "eth1") != ["10.7.0.1/24", "10.9.1.1/24"] {
        assert!(
            Instant::now() < deadline,
            "o1 eth1 has {:?}\n{}",
            addrs(&o1, "eth1"),
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(addrs(&lab.pod_netns("o2"), "eth1"), ["10.9.1.2/24"]);
    std::thread::sleep(Duration::from_secs(RESYNC * 3 / 2));
    let eth1 = link_json(&o1, "eth1");
    assert!(
        !eth1["flags"].to_string().contains("\"UP\""),
        "eth1 brought up"
    );
    assert_eq!(eth1["ifindex"], before.0);
    // The router opens its port again: the link is up with the new addresses.
    ip(&o1, &["link", "set", "eth1", "up"]);
    let mut ok = false;
    for _ in 0..10 {
        if lab
            .run(&["exec", "o1", "--", "ping", "-c", "1", "-W", "1", "10.9.1.2"])
            .status
            .success()
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "no ping over the re-addressed link");
}

#[test]
fn router_owns_its_veth_port() {
    router_owns_its_port("cable-ownv", &[], "node1");
}

#[test]
fn router_owns_its_vxlan_port() {
    router_owns_its_port("cable-ownx", &["--nodes", "2"], "node2");
}

#[test]
fn router_owns_its_grpc_wire_port() {
    router_owns_its_port("cable-ownw", &["--nodes", "2", "--link", "grpc"], "node2");
}

/// `promtool check metrics` on `text`: (passed, its output).
fn promtool(text: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The value of the one series of `family` whose labels contain all of `has`.
fn sample(text: &str, family: &str, has: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| has.iter().all(|h| l.contains(h)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Kernel links (here a veth) get the gRPC links' per-link series, in the same families as a
/// gRPC link on the same node (one block per name, promtool-clean); admin state follows the
/// pod's port, and the series go when the link goes.
#[test]
fn kernel_links_have_per_link_counters_that_go_with_the_link() {
    let m12 = "  - {uid: 1, peer_pod: PEER, local_intf: eth1, peer_intf: eth1, local_ip: LOCAL, peer_ip: REMOTE}\n";
    let decl = |me: &str, links: &[(&str, &str, &str, &str)]| {
        let mut y = format!(
            "apiVersion: networkop.co.uk/v1beta1\nkind: Topology\nmetadata: {{name: {me}}}\nspec:\n  links:\n"
        );
        for (uid_intf, peer, local, remote) in links {
            let (uid, intf) = uid_intf.split_once(':').unwrap();
            y.push_str(
                &m12.replace("uid: 1", &format!("uid: {uid}"))
                    .replace("eth1", intf)
                    .replace("PEER", peer)
                    .replace("LOCAL", local)
                    .replace("REMOTE", remote),
            );
        }
        y.push_str("---\n");
        y
    };
    let pods = "{apiVersion: v1, kind: Pod, metadata: {name: m1}, spec: {nodeName: node1}}\n---\n\
                {apiVersion: v1, kind: Pod, metadata: {name: m2}, spec: {nodeName: node1}}\n---\n\
                {apiVersion: v1, kind: Pod, metadata: {name: m3}, spec: {nodeName: node2}}\n";
    let wire = ("2:eth2", "m3", "10.0.13.1/24", "10.0.13.3/24");
    let wire_back = ("2:eth2", "m1", "10.0.13.3/24", "10.0.13.1/24");
    let full = format!(
        "{}{}{}{pods}",
        decl(
            "m1",
            &[("1:eth1", "m2", "10.0.12.1/24", "10.0.12.2/24"), wire]
        ),
        decl("m2", &[("1:eth1", "m1", "10.0.12.2/24", "10.0.12.1/24")]),
        decl("m3", &[wire_back]),
    );
    let f = yaml_file("cable-ctr", &full);
    let lab = LabGuard::new("cable-ctr");
    lab.ok(&["up", f.to_str().unwrap(), "--nodes", "2", "--link", "grpc"]);
    lab.ok(&[
        "exec",
        "m1",
        "--",
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        "-q",
        "10.0.12.2",
    ]);
    lab.ok(&["exec", "m1", "--", "ping", "-c", "2", "-q", "10.0.13.3"]);
    let text = lab.ok(&["metrics", "node1"]);
    let (ok, msg) = promtool(&text);
    assert!(ok, "promtool: {msg}\n{text}");
    // `,pod=` so that m2's `peer_pod="m1"` does not match.
    let veth = [",pod=\"m1\"", "kind=\"veth\"", "uid=\"1\""];
    let tx = sample(&text, "meshnet_link_tx_frames_total", &veth).unwrap();
    assert!(tx >= 5.0, "{tx}\n{text}");
    assert_eq!(sample(&text, "meshnet_link_carrier", &veth), Some(1.0));
    assert_eq!(sample(&text, "meshnet_link_admin_up", &veth), Some(1.0));
    assert!(sample(&text, "meshnet_link_tx_frames_total", &["kind=\"grpc\""]).is_some());
    assert_eq!(text.matches("# TYPE meshnet_link_carrier ").count(), 1);
    // The router shuts its port: admin state and carrier follow at the next scrape.
    ip(&lab.pod_netns("m1"), &["link", "set", "eth1", "down"]);
    let text = lab.ok(&["metrics", "node1"]);
    assert_eq!(
        sample(&text, "meshnet_link_admin_up", &veth),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "meshnet_link_carrier", &veth),
        Some(0.0),
        "{text}"
    );
    // uid 1 removed from both Topologies: its series go with it.
    let without = format!(
        "{}{}{}{pods}",
        decl("m1", &[wire]),
        "apiVersion: networkop.co.uk/v1beta1\nkind: Topology\nmetadata: {name: m2}\nspec:\n  links: []\n---\n",
        decl("m3", &[wire_back]),
    );
    let f2 = yaml_file("cable-ctr-2", &without);
    lab.ok(&["apply", f2.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = lab.ok(&["metrics", "node1"]);
        let veth_series = text
            .lines()
            .any(|l| l.starts_with("meshnet_link_") && l.contains("kind=\"veth\""));
        if !veth_series {
            assert!(sample(&text, "meshnet_link_carrier", &["kind=\"grpc\""]).is_some());
            break;
        }
        assert!(Instant::now() < deadline, "veth series stayed:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
