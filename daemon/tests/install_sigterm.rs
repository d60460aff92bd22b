//! The installer as the DaemonSet runs it: meshnetd started with a CNI conf dir writes
//! `00-meshnet.conflist` and copies the plugin, refreshes the conflist when the primary config
//! changes, and keeps both on SIGTERM (a rollout is not an uninstall: pods created meanwhile
//! must still reach the plugin, which waits for the daemon or answers "try again later").
//! `--remove-cni-config-on-exit` removes them on exit; `meshnetd uninstall` removes exactly
//! meshnet's own files and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KINDNET: &str = include_str!("install/10-kindnet.conflist");

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn meshnetd() -> &'static str {
    env!("CARGO_BIN_EXE_meshnetd")
}

fn plugin() -> PathBuf {
    let plugin = Path::new(meshnetd()).with_file_name("meshnet");
    assert!(
        plugin.is_file(),
        "{} missing: cargo build --workspace --bins",
        plugin.display()
    );
    plugin
}

fn start(dir: &Path, extra: &[&str]) -> Child {
    Command::new(meshnetd())
        .args([
            "--node-name",
            "n1",
            "--host-ip",
            "192.0.2.1",
            "--http-addr",
            "",
        ])
        .arg("--socket")
        .arg(dir.join("meshnetd.sock"))
        .arg("--store")
        .arg(format!("file:{}", dir.join("store").display()))
        .arg("--cni-conf-dir")
        .arg(dir.join("net.d"))
        .arg("--cni-bin-dir")
        .arg(dir.join("bin"))
        .arg("--cni-binary")
        .arg(plugin())
        .args(extra)
        .env_remove("MESHNET_REMOVE_CNI_CONFIG_ON_EXIT")
        .env_remove("MESHNET_KEEP_CNI_CONFIG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("meshnetd.log")).unwrap())
        .spawn()
        .unwrap()
}

fn sigterm(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "meshnetd exits cleanly on SIGTERM: {status}"
    );
}

struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    /// A node's CNI dirs with kindnet as the primary network.
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net.d")).unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("net.d/10-kindnet.conflist"), KINDNET).unwrap();
        Node { dir }
    }
    fn conf(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }
    fn ours(&self) -> PathBuf {
        self.conf().join("00-meshnet.conflist")
    }
    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin/meshnet")
    }
    fn wait_installed(&self) {
        wait_for("00-meshnet.conflist and the plugin", || {
            self.ours().exists() && self.bin().exists()
        });
    }
    fn uninstall(&self) -> std::process::Output {
        Command::new(meshnetd())
            .arg("uninstall")
            .arg("--cni-conf-dir")
            .arg(self.conf())
            .arg("--cni-bin-dir")
            .arg(self.dir.path().join("bin"))
            .output()
            .unwrap()
    }
}

#[test]
fn installs_refreshes_and_keeps_its_files_across_a_sigterm() {
    let node = Node::new();
    let mut d = start(node.dir.path(), &[]);
    node.wait_installed();
    let ours = node.ours();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ours).unwrap()).unwrap();
    let plugins = v["plugins"].as_array().unwrap();
    assert_eq!(plugins.last().unwrap()["type"], "meshnet");
    assert_eq!(v["cniVersion"], "0.3.1", "the primary's cniVersion is kept");
    // The primary config changes (a CNI upgrade): meshnet's copy follows.
    let mut changed: serde_json::Value = serde_json::from_str(KINDNET).unwrap();
    changed["plugins"][0]["mtu"] = serde_json::json!(1400);
    std::fs::write(node.conf().join("10-kindnet.conflist"), changed.to_string()).unwrap();
    wait_for("the refreshed conflist", || {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&ours).unwrap_or_default()).unwrap_or_default();
        v["plugins"][0]["mtu"] == 1400
    });
    let before = std::fs::read(&ours).unwrap();
    sigterm(&mut d);
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        before,
        "the conflist stays, unchanged, when meshnetd is stopped (a rollout)"
    );
    assert!(node.bin().exists(), "the plugin binary stays too");

    // The next meshnetd (the rollout's new pod) finds them and leaves them as they are.
    let mut d = start(node.dir.path(), &[]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read(&ours).unwrap(), before);
    sigterm(&mut d);
    assert!(ours.exists() && node.bin().exists());
}

#[test]
fn remove_on_exit_removes_them() {
    let node = Node::new();
    let mut d = start(node.dir.path(), &["--remove-cni-config-on-exit"]);
    node.wait_installed();
    sigterm(&mut d);
    assert!(!node.ours().exists(), "the conflist is removed on SIGTERM");
    assert!(
        !node.bin().exists(),
        "the plugin binary is removed on SIGTERM"
    );
    assert!(
        node.conf().join("10-kindnet.conflist").exists(),
        "the primary config is never touched"
    );
}

#[test]
fn uninstall_removes_exactly_meshnets_files() {
    let node = Node::new();
    let mut d = start(node.dir.path(), &[]);
    node.wait_installed();
    sigterm(&mut d);
    // Neighbours that must survive: the primary, another plugin, a file whose name merely
    // starts like ours, and a leftover temporary file of an interrupted install (ours: goes).
    let bin_dir = node.dir.path().join("bin");
    std::fs::write(bin_dir.join("ptp"), b"ptp").unwrap();
    std::fs::write(bin_dir.join("meshnet-old"), b"x").unwrap();
    std::fs::write(node.conf().join("00-meshnet.conflist.bak"), b"{}").unwrap();
    let temp = node.conf().join(".00-meshnet.conflist.1.2.3.meshnet-tmp");
    std::fs::write(&temp, b"{}").unwrap();

    let out = node.uninstall();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("removed {}", node.ours().display())),
        "{said}"
    );
    assert!(!node.ours().exists() && !node.bin().exists() && !temp.exists());
    for kept in [
        node.conf().join("10-kindnet.conflist"),
        node.conf().join("00-meshnet.conflist.bak"),
        bin_dir.join("ptp"),
        bin_dir.join("meshnet-old"),
    ] {
        assert!(kept.exists(), "{} was removed", kept.display());
    }
    assert_eq!(
        std::fs::read_to_string(node.conf().join("10-kindnet.conflist")).unwrap(),
        KINDNET
    );
    // Again: nothing left to remove, still a success.
    let out = node.uninstall();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to remove"));
}

#[test]
fn uninstall_hold_removes_then_waits_for_sigterm() {
    let node = Node::new();
    let mut d = start(node.dir.path(), &[]);
    node.wait_installed();
    sigterm(&mut d);
    let mut hold = Command::new(meshnetd())
        .args(["uninstall", "--hold"])
        .env("MESHNET_CNI_CONF_DIR", node.conf())
        .env("MESHNET_CNI_BIN_DIR", node.dir.path().join("bin"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the cleanup", || {
        !node.ours().exists() && !node.bin().exists()
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(hold.try_wait().unwrap().is_none(), "--hold keeps running");
    sigterm(&mut hold);
}

#[test]
fn the_plugins_log_file_and_timeout_come_from_meshnetd_flags() {
    let node = Node::new();
    let mut d = start(
        node.dir.path(),
        &[
            "--cni-log-file",
            "/var/log/meshnet/cni.log",
            "--cni-timeout-seconds",
            "30",
        ],
    );
    node.wait_installed();
    sigterm(&mut d);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.ours()).unwrap()).unwrap();
    let entry = v["plugins"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(entry["type"], "meshnet");
    assert_eq!(entry["log_file"], "/var/log/meshnet/cni.log");
    assert_eq!(entry["timeout_seconds"], 30);
    assert_eq!(
        entry["daemon_socket"],
        node.dir.path().join("meshnetd.sock").display().to_string(),
        "a socket other than the plugin's default is written too"
    );

    // Values the plugin would refuse are refused here, naming the flag.
    for (flag, value) in [
        ("--cni-timeout-seconds", "0"),
        ("--cni-timeout-seconds", "3601"),
        ("--cni-log-file", "relative.log"),
    ] {
        let out = Command::new(meshnetd())
            .args([
                "--node-name",
                "n1",
                "--host-ip",
                "192.0.2.1",
                "--store",
                "file:/nonexistent",
            ])
            .args([flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

/// The rollout, end to end with the real binaries: meshnetd is SIGTERMed, a pod's ADD arrives
/// through the chain it left in place, the next meshnetd comes up a second later — and the ADD,
/// waiting for it, succeeds instead of leaving the pod without its links.
#[test]
fn an_add_during_a_daemon_restart_is_served_by_the_next_daemon() {
    let node = Node::new();
    let mut d = start(node.dir.path(), &[]);
    node.wait_installed();
    sigterm(&mut d);

    // The runtime's view: the meshnet entry of the conflist meshnetd left, as libcni feeds it.
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.ours()).unwrap()).unwrap();
    let mut conf = list["plugins"].as_array().unwrap().last().unwrap().clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    conf["prevResult"] = serde_json::json!({"cniVersion": "0.3.1", "interfaces": [], "ips": []});
    conf["log_file"] = serde_json::json!(node.dir.path().join("cni.log"));
    let mut plugin = Command::new(node.bin())
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c0ffee")
        // A real network namespace the daemon can check; the pod has no Topology, so nothing
        // is built in it.
        .env("CNI_NETNS", "/proc/self/ns/net")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", node.dir.path().join("bin"))
        .env("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=r2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(plugin.stdin.as_mut().unwrap(), conf.to_string().as_bytes()).unwrap();
    drop(plugin.stdin.take());
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        plugin.try_wait().unwrap().is_none(),
        "the plugin waits for the daemon instead of failing at once"
    );
    let mut d = start(node.dir.path(), &[]);
    let out = plugin.wait_with_output().unwrap();
    sigterm(&mut d);
    assert!(
        out.status.success(),
        "ADD after the restart: {out:?}\n{}",
        std::fs::read_to_string(node.dir.path().join("cni.log")).unwrap_or_default()
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["cniVersion"], "0.3.1", "{result}");
}
