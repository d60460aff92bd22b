//! meshnetd's listeners with their defaults, in a network namespace of their own (needs root):
//! `/healthz` answers over IPv4 and IPv6 on the default `[::]:51112`, and the gRPC wire's default
//! `[::]:51111` accepts both families too — one socket each, `IPV6_V6ONLY` off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A network namespace made for this test, deleted on drop (with whatever runs in it killed).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("nodes-listen-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "delete", &name]).status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        let ns = Netns(name);
        assert!(ns.ip(&["link", "set", "lo", "up"]));
        ns
    }
    fn ip(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .status()
            .unwrap()
            .success()
    }
    fn exec(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(argv);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn default_listeners_accept_ipv4_and_ipv6() {
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("skipped: needs root for a network namespace");
        return;
    }
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let _d = Daemon(
        ns.exec(&[env!("CARGO_BIN_EXE_meshnetd")])
            .args(["--node-name", "n1", "--host-ip", "127.0.0.1"])
            .args(["--inter-node-link-type", "GRPC"])
            .arg("--socket")
            .arg(dir.path().join("meshnetd.sock"))
            .arg("--store")
            .arg(format!("file:{}", dir.path().join("store").display()))
            .env_remove("MESHNET_HTTP_ADDR")
            .env_remove("MESHNET_WIRE_ADDR")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("meshnetd.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let healthz = |url: &str| {
        ns.exec(&["curl", "-sf", "--max-time", "2", url])
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout == b"ok\n")
    };
    let t = Instant::now();
    while !healthz("http://127.0.0.1:51112/healthz") {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no /healthz over IPv4: {}",
            std::fs::read_to_string(dir.path().join("meshnetd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        healthz("http://[::1]:51112/healthz"),
        "no /healthz over IPv6"
    );
    // The wire port: a TCP connection over each family is accepted.
    for addr in ["127.0.0.1", "::1"] {
        let ok = ns
            .exec(&["bash", "-c", &format!("exec 3<>/dev/tcp/{addr}/51111")])
            .status()
            .unwrap()
            .success();
        assert!(ok, "wire port not reachable over {addr}");
    }
    let ss = ns.exec(&["ss", "-ltnH"]).output().unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    for port in [51111, 51112] {
        assert!(
            ss.contains(&format!("*:{port} ")),
            "one dual-stack socket on {port}: {ss}"
        );
    }
}
