//! Shared helpers for tests that drive the real `meshnet-lab` binary (root needed).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The repository root (tests read `tests/*.yml` from there).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn topo(name: &str) -> String {
    repo().join("tests").join(name).display().to_string()
}

/// Binaries of the workspace live next to meshnet-lab; the daemon and plugin must be built.
pub fn bin(name: &str) -> PathBuf {
    let lab = PathBuf::from(env!("CARGO_BIN_EXE_meshnet-lab"));
    let p = lab.parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A lab with a unique name, removed on drop (also when the test panics).
pub struct LabGuard {
    pub name: String,
}

impl LabGuard {
    pub fn new(tag: &str) -> Self {
        assert!(tag.len() <= 12, "tag too long for a lab name");
        bin("meshnetd");
        bin("meshnet");
        LabGuard {
            name: format!("{tag}-{}", std::process::id() % 100_000),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_meshnet-lab"))
            .arg("--lab")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("meshnet-lab runs")
    }

    /// iperf3 from pod `client` to `dst` (an address of pod `server`, which gets a one-shot
    /// server on `port`) with `args` added; the client's JSON report.
    pub fn iperf3(
        &self,
        server: &str,
        client: &str,
        dst: &str,
        port: &str,
        args: &[&str],
    ) -> serde_json::Value {
        self.ok(&["exec", server, "--", "iperf3", "-s", "-1", "-D", "-p", port]);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut cmd = vec!["exec", client, "--", "iperf3", "-c", dst, "-p", port, "-J"];
        cmd.extend_from_slice(args);
        serde_json::from_str(&self.ok(&cmd)).unwrap()
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "meshnet-lab {args:?} failed:\nstdout: {}\nstderr: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status JSON")
    }

    /// The daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let dir = PathBuf::from("/run/meshnet-lab").join(&self.name);
        let mut s = String::new();
        for n in 1..=4 {
            for f in ["meshnetd.log", "meshnet-cni.log"] {
                if let Ok(t) = std::fs::read_to_string(dir.join(format!("node{n}")).join(f)) {
                    let tail: Vec<&str> = t.lines().rev().take(30).collect();
                    s.push_str(&format!("--- node{n}/{f} (tail)\n"));
                    for l in tail.into_iter().rev() {
                        s.push_str(l);
                        s.push('\n');
                    }
                }
            }
        }
        s
    }

    /// Namespaces of this lab that exist now.
    pub fn namespaces(&self) -> Vec<String> {
        let pre = format!("mnl-{}-", self.name);
        list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&pre))
            .collect()
    }

    /// Interface names in a lab namespace.
    pub fn interfaces(netns: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", netns, "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// Every link in `status` is up, and there are `n` of them — within 2 s: each daemon writes
    /// its ends' status shortly after the kernel changes (a carrier coming up is written after a
    /// 20 ms pause and a reconcile run), so right after an event the store may still be behind.
    pub fn assert_links_up(&self, n: usize) {
        let t = std::time::Instant::now();
        loop {
            let st = self.status();
            let links = st["links"].as_array().unwrap().clone();
            let all_up = links.len() == n && links.iter().all(|l| l["state"] == "up");
            if all_up || t.elapsed() > std::time::Duration::from_secs(2) {
                assert_eq!(links.len(), n, "links: {links:#?}");
                for l in &links {
                    assert_eq!(l["state"], "up", "link not up: {l:#}");
                }
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
        let left = self.namespaces();
        if !left.is_empty() && !std::thread::panicking() {
            panic!("down left namespaces behind: {left:?}");
        }
    }
}

/// Whether `ifname` in `netns` has carrier (`LOWER_UP`, no `NO-CARRIER`); false if it is missing.
pub fn carrier(netns: &str, ifname: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    if !out.status.success() {
        return false;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flags: Vec<&str> = v[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    flags.contains(&"LOWER_UP") && !flags.contains(&"NO-CARRIER")
}

/// `ifindex` and MAC of `ifname` in `netns`: what stays the same while a port is not replaced.
pub fn port_identity(netns: &str, ifname: &str) -> (u64, String) {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", ifname])
        .output()
        .unwrap();
    assert!(out.status.success(), "{ifname} missing in {netns}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v[0]["ifindex"].as_u64().unwrap(),
        v[0]["address"].as_str().unwrap().to_string(),
    )
}

pub fn list_netns() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Processes whose command line mentions the lab's directory (its daemons).
pub fn lab_processes(name: &str) -> usize {
    let needle = format!("/run/meshnet-lab/{name}/");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .count()
}

/// Two pods on two nodes joined by a jumbo link (uid 1, mtu 9000, 192.0.2.1/2) and a plain link
/// without addresses (uid 2).
pub const JUMBO_PAIR: &str = r#"
apiVersion: networkop.co.uk/v1beta1
kind: Topology
metadata: {name: j1}
spec:
  links:
  - {uid: 1, peer_pod: j2, local_intf: eth1, peer_intf: eth1, local_ip: 192.0.2.1/24, peer_ip: 192.0.2.2/24, mtu: 9000}
  - {uid: 2, peer_pod: j2, local_intf: eth2, peer_intf: eth2}
---
apiVersion: networkop.co.uk/v1beta1
kind: Topology
metadata: {name: j2}
spec:
  links:
  - {uid: 1, peer_pod: j1, local_intf: eth1, peer_intf: eth1, local_ip: 192.0.2.2/24, peer_ip: 192.0.2.1/24, mtu: 9000}
  - {uid: 2, peer_pod: j1, local_intf: eth2, peer_intf: eth2}
---
{apiVersion: v1, kind: Pod, metadata: {name: j1}, spec: {nodeName: node1}}
---
{apiVersion: v1, kind: Pod, metadata: {name: j2}, spec: {nodeName: node2}}
"#;

/// Writes [`JUMBO_PAIR`] to a file unique to this process and `tag`.
pub fn jumbo_file(tag: &str) -> PathBuf {
    let f = std::env::temp_dir().join(format!("jumbo-{tag}-{}.yml", std::process::id()));
    std::fs::write(&f, JUMBO_PAIR).unwrap();
    f
}

impl LabGuard {
    /// A pod's `Topology` as the lab's file store holds it (spec and status).
    pub fn topology(&self, namespace: &str, name: &str) -> serde_json::Value {
        let f = PathBuf::from("/run/meshnet-lab")
            .join(&self.name)
            .join("store")
            .join(format!("{namespace}_{name}.json"));
        serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap()
    }

    /// A pod's own status entry for link `uid` (state and message), as its daemon wrote it.
    pub fn end_status(&self, name: &str, uid: i64) -> serde_json::Value {
        let t = self.topology("default", name);
        t["status"]["links"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["uid"] == uid).cloned())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The pod's network namespace, from `status`.
    pub fn pod_netns(&self, pod: &str) -> String {
        let st = self.status();
        st["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .and_then(|p| p["netns"].as_str())
            .unwrap_or_else(|| panic!("no pod {pod}"))
            .to_string()
    }
}

/// Writes `yaml` to a file unique to this process and `tag`.
pub fn yaml_file(tag: &str, yaml: &str) -> PathBuf {
    let f = std::env::temp_dir().join(format!("meshnet-{tag}-{}.yml", std::process::id()));
    std::fs::write(&f, yaml).unwrap();
    f
}

impl LabGuard {
    /// Runs `meshnet-lab ARGS` with extra environment (e.g. `MESHNET_LAB_RESYNC_SECONDS`, read
    /// when a daemon starts) and asserts success; returns stdout.
    pub fn ok_env(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_meshnet-lab"))
            .envs(env.iter().copied())
            .arg("--lab")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("meshnet-lab runs");
        assert!(
            out.status.success(),
            "meshnet-lab {args:?} failed:\nstderr: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Polls `f` every 10 ms until it holds, panicking with `what` after `limit`; returns how long it
/// took.
pub fn until(
    what: &str,
    limit: std::time::Duration,
    f: impl FnMut() -> bool,
) -> std::time::Duration {
    since(std::time::Instant::now(), what, limit, f)
}

/// Waits until `t` + `limit` for `f`; returns how long after `t` it held (`t`: when a fault was
/// made, before the command that makes it, so the command's own time counts).
pub fn since(
    t: std::time::Instant,
    what: &str,
    limit: std::time::Duration,
    mut f: impl FnMut() -> bool,
) -> std::time::Duration {
    while !f() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    t.elapsed()
}

impl LabGuard {
    /// Lab `tag` up with pods r1 (node1) and r2 (`r2_node`) joined by uid 1, `eth1` on both ends,
    /// addressed `ips`; `env` and `up_args` go to `meshnet-lab up`.
    pub fn pair(
        tag: &str,
        r2_node: &str,
        ips: (&str, &str),
        env: &[(&str, &str)],
        up_args: &[&str],
    ) -> Self {
        let lab = LabGuard::new(tag);
        let f = yaml_file(
            tag,
            &two_pods(
                ("r1", "node1"),
                ("r2", r2_node),
                &[(1, "eth1", ips.0, ips.1)],
            ),
        );
        let mut args = vec!["up", f.to_str().unwrap()];
        args.extend_from_slice(up_args);
        lab.ok_env(env, &args);
        let _ = std::fs::remove_file(f);
        lab
    }
}

/// One link between the two pods of [`two_pods`]: uid, interface name on both ends, and the
/// first and second pod's address (`""`: none).
pub type PairLink<'a> = (i64, &'a str, &'a str, &'a str);

/// YAML for two pods `a` (on `a_node`) and `b` (on `b_node`) joined by `links`, each declared from
/// both ends.
pub fn two_pods(a: (&str, &str), b: (&str, &str), links: &[PairLink<'_>]) -> String {
    let mut y = String::new();
    for (me, peer, mine) in [(a.0, b.0, true), (b.0, a.0, false)] {
        y.push_str(&format!(
            "apiVersion: networkop.co.uk/v1beta1\nkind: Topology\nmetadata: {{name: {me}}}\nspec:\n  links:\n"
        ));
        for (uid, intf, ip_a, ip_b) in links {
            let (local, peer_ip) = if mine { (ip_a, ip_b) } else { (ip_b, ip_a) };
            y.push_str(&format!(
                "  - {{uid: {uid}, peer_pod: {peer}, local_intf: {intf}, peer_intf: {intf}, local_ip: \"{local}\", peer_ip: \"{peer_ip}\"}}\n"
            ));
        }
        y.push_str("---\n");
    }
    for (name, node) in [a, b] {
        y.push_str(&format!(
            "{{apiVersion: v1, kind: Pod, metadata: {{name: {name}}}, spec: {{nodeName: {node}}}}}\n---\n"
        ));
    }
    y
}

/// Sum of the samples of metric `name` (and of any metric whose name it begins) whose labels
/// include every one of `labels`, in a Prometheus text exposition.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
