//! The installer as the DaemonSet runs it: meshnetd started with a CNI conf dir writes
//! `00-meshnet.conflist` and copies the plugin, refreshes the conflist when the primary config
//! changes, and removes its files on SIGTERM (or keeps them with --keep-cni-config).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
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

fn start(dir: &Path, keep: bool) -> Child {
    let meshnetd = env!("CARGO_BIN_EXE_meshnetd");
    let plugin = Path::new(meshnetd).with_file_name("meshnet");
    assert!(
        plugin.is_file(),
        "{} missing: cargo build --workspace --bins",
        plugin.display()
    );
    let mut cmd = Command::new(meshnetd);
    cmd.args([
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
    .arg(&plugin)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join("meshnetd.log")).unwrap());
    if keep {
        cmd.arg("--keep-cni-config");
    }
    cmd.spawn().unwrap()
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

#[test]
fn installs_refreshes_and_cleans_up_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    std::fs::write(conf.join("10-kindnet.conflist"), KINDNET).unwrap();
    let mut d = start(dir.path(), false);
    let ours = conf.join("00-meshnet.conflist");
    let bin = dir.path().join("bin/meshnet");
    wait_for("00-meshnet.conflist", || ours.exists() && bin.exists());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ours).unwrap()).unwrap();
    let plugins = v["plugins"].as_array().unwrap();
    assert_eq!(plugins.last().unwrap()["type"], "meshnet");
    assert_eq!(v["cniVersion"], "0.3.1", "the primary's cniVersion is kept");
    // The primary config changes (a CNI upgrade): meshnet's copy follows.
    let mut changed: serde_json::Value = serde_json::from_str(KINDNET).unwrap();
    changed["plugins"][0]["mtu"] = serde_json::json!(1400);
    std::fs::write(conf.join("10-kindnet.conflist"), changed.to_string()).unwrap();
    wait_for("the refreshed conflist", || {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&ours).unwrap_or_default()).unwrap_or_default();
        v["plugins"][0]["mtu"] == 1400
    });
    sigterm(&mut d);
    assert!(!ours.exists(), "the conflist is removed on SIGTERM");
    assert!(!bin.exists(), "the plugin binary is removed on SIGTERM");
    assert!(
        conf.join("10-kindnet.conflist").exists(),
        "the primary config is never touched"
    );

    let mut d = start(dir.path(), true);
    wait_for("00-meshnet.conflist again", || ours.exists());
    sigterm(&mut d);
    assert!(
        ours.exists() && bin.exists(),
        "--keep-cni-config keeps both"
    );
}
