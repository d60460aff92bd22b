//! A lab removes only what it made, and refuses what would silently break it: `down`/`up` of lab
//! `X` leaves lab `X-a` alone (every name of `X-a` starts with `X`'s prefix `mnl-X-`), and a
//! topology whose link addresses overlap the pod network is refused before anything is made.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{LabGuard, list_netns, topo};

fn netns_of(lab: &str) -> Vec<String> {
    let pre = format!("mnl-{lab}-");
    let mut v: Vec<String> = list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&pre))
        .collect();
    v.sort();
    v
}

#[test]
fn down_and_up_of_a_lab_spare_a_lab_whose_name_extends_it() {
    let base = LabGuard::new("nodes-pfx");
    // Declared after `base`, so dropped (brought down) first.
    let longer = LabGuard {
        name: format!("{}-a", base.name),
    };
    // The shorter lab's pods live in Kubernetes namespace `a`: their namespaces are named
    // mnl-BASE-a-POD-GEN, which starts like every name of the longer lab.
    let dir = TempDir::new(&base.name);
    let in_a = dir.path().join("in-a.yml");
    std::fs::write(
        &in_a,
        two_pods("192.0.2.100/31", "192.0.2.101/31")
            .replace("metadata: {name: ", "metadata: {namespace: a, name: "),
    )
    .unwrap();
    let in_a = in_a.to_str().unwrap();

    longer.ok(&["up", &topo("2node.yml")]);
    let theirs = netns_of(&longer.name);
    assert!(theirs.len() >= 4, "{theirs:?}");

    // `up` of the shorter name sweeps its own leftovers first: none of the longer lab's.
    base.ok(&["up", in_a]);
    assert!(
        theirs.iter().all(|n| list_netns().contains(n)),
        "up of {} removed namespaces of {}",
        base.name,
        longer.name
    );
    let mut ours: Vec<String> = netns_of(&base.name)
        .into_iter()
        .filter(|n| !theirs.contains(n))
        .collect();
    assert!(
        ours.contains(&format!("mnl-{}-a-p1-1", base.name)),
        "{ours:?}"
    );
    // A namespace a tool made beside the lab, in its prefix (as the benchmark's relay does):
    // no lab that is up claims it, so it goes with the lab.
    let extra = format!("mnl-{}-relay-x", base.name);
    assert!(
        std::process::Command::new("ip")
            .args(["netns", "add", &extra])
            .status()
            .unwrap()
            .success()
    );
    ours.push(extra);
    ours.sort();

    // The longer lab goes: the shorter one's pods in namespace `a` stay, and still work.
    longer.ok(&["down"]);
    assert_eq!(
        netns_of(&base.name),
        ours,
        "down of {} touched {}",
        longer.name,
        base.name
    );
    base.ok(&["verify"]);

    // The other way round: the shorter lab goes, the longer one (up again) stays.
    longer.ok(&["up", &topo("2node.yml")]);
    // (By prefix, the shorter lab's namespace-`a` pods look like the longer lab's too.)
    let theirs: Vec<String> = netns_of(&longer.name)
        .into_iter()
        .filter(|n| !ours.contains(n))
        .collect();
    let said = base.ok(&["down"]);
    assert!(
        said.contains(&format!("removed {} namespaces", ours.len())),
        "{said}"
    );
    assert_eq!(
        netns_of(&longer.name),
        theirs,
        "down of {} touched {}",
        base.name,
        longer.name
    );
    for n in &ours {
        assert!(!list_netns().contains(n), "{n} left behind");
    }
    longer.ok(&["verify"]);
}

/// A scratch directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("{tag}-topologies"));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two pods, one link, addressed from `a`/`b`.
fn two_pods(a: &str, b: &str) -> String {
    let topo = |name: &str, peer: &str, local: &str, remote: &str| {
        format!(
            "apiVersion: networkop.co.uk/v1beta1\nkind: Topology\nmetadata: {{name: {name}}}\n\
             spec:\n  links:\n  - {{uid: 1, peer_pod: {peer}, local_intf: eth1, peer_intf: eth1, \
             local_ip: {local}, peer_ip: {remote}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n\
             spec: {{containers: [{{name: {name}, image: alpine}}]}}\n"
        )
    };
    format!("{}---\n{}", topo("p1", "p2", a, b), topo("p2", "p1", b, a))
}

#[test]
fn link_addresses_in_the_pod_network_are_refused_and_pod_cidr_moves_it() {
    let lab = LabGuard::new("nodes-cidr");
    let dir = TempDir::new(&lab.name);
    let clash = dir.path().join("clash.yml");
    std::fs::write(&clash, two_pods("203.0.113.0/31", "203.0.113.1/31")).unwrap();
    let out = lab.run(&["up", clash.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for part in ["203.0.113.0/31", "203.0.113.0/24", "uid 1", "--pod-cidr"] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }
    assert!(
        netns_of(&lab.name).is_empty(),
        "refused before making anything"
    );

    // The same addresses with the pod network moved out of their way: up and verified.
    let ok = dir.path().join("ok.yml");
    std::fs::write(&ok, two_pods("203.0.113.200/31", "203.0.113.201/31")).unwrap();
    lab.ok(&["up", ok.to_str().unwrap(), "--pod-cidr", "203.0.113.0/25"]);
    lab.ok(&["verify"]);
    let eth0 = std::process::Command::new("ip")
        .args([
            "-n",
            &format!("mnl-{}-default-p1-1", lab.name),
            "-4",
            "-o",
            "addr",
            "show",
            "eth0",
        ])
        .output()
        .unwrap();
    let eth0 = String::from_utf8_lossy(&eth0.stdout);
    assert!(eth0.contains("inet 203.0.113."), "{eth0}");
    let host: u8 = eth0
        .split("inet 203.0.113.")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|h| h.parse().ok())
        .expect("eth0 address");
    assert!(host < 128, "eth0 from --pod-cidr 203.0.113.0/25: {eth0}");

    // `apply` checks against the lab's pod network too.
    let more = dir.path().join("more.yml");
    std::fs::write(
        &more,
        two_pods("203.0.113.8/31", "203.0.113.9/31")
            .replace("p1", "q1")
            .replace("p2", "q2"),
    )
    .unwrap();
    let out = lab.run(&["apply", more.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("203.0.113.8/31") && err.contains("203.0.113.0/25"),
        "{err}"
    );
}
