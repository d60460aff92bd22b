//! Smoke test of the `tcp-relay` baseline (root; about two seconds): two pod namespaces with a
//! relay side each, both relay processes in a third namespace joined over its loopback. Frames
//! must cross both ways, and a TCP transfer must work — which it only does if the virtio-net
//! header crosses with the frames (the pods' TSO/checksum offloads are on). The full harness
//! (labs, iperf3 figures) is `make bench`; it is not run here.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("mbt-{}-{tag}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Ns(name)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn relay_carries_frames_and_tcp_both_ways() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let node = Ns::new("node");
    let a = Ns::new("a");
    let b = Ns::new("b");
    let port = 20000 + (std::process::id() % 20000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let exe = env!("CARGO_BIN_EXE_meshnet-bench");
    let side = |pod: &Ns, role: &str| {
        Proc(
            Command::new("ip")
                .args(["netns", "exec", &node.0, exe, "relay", "--tap-netns"])
                .arg(format!("/run/netns/{}", pod.0))
                .args(["--tap", "eth1", role, &addr])
                .stdout(Stdio::null())
                .spawn()
                .expect("start relay"),
        )
    };
    let _listen = side(&a, "--listen");
    std::thread::sleep(Duration::from_millis(200));
    let _connect = side(&b, "--connect");
    // The TAPs appear once each side has made its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (ns, ip) in [(&a, "10.77.0.1/24"), (&b, "10.77.0.2/24")] {
        while Command::new("ip")
            .args(["-n", &ns.0, "link", "show", "eth1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "relay TAP never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        sh(&["ip", "-n", &ns.0, "addr", "add", ip, "dev", "eth1"]);
        sh(&["ip", "-n", &ns.0, "link", "set", "eth1", "up"]);
    }
    let ping = |from: &Ns, to: &str| {
        (0..20).any(|_| {
            Command::new("ip")
                .args(["netns", "exec", &from.0, "ping", "-c", "1", "-W", "1", to])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    };
    assert!(ping(&a, "10.77.0.2"), "a cannot reach b through the relay");
    assert!(ping(&b, "10.77.0.1"), "b cannot reach a through the relay");
    // TCP with the pods' offloads on: GSO super-frames and partial checksums must cross whole.
    let server = Proc(
        Command::new("ip")
            .args(["netns", "exec", &b.0, "iperf3", "-s", "-1", "-p", "5209"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 installed (scripts/install-deps.sh)"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &a.0,
        "iperf3",
        "-c",
        "10.77.0.2",
        "-p",
        "5209",
        "-t",
        "1",
        "-J",
    ]);
    drop(server);
    let r = meshnet_bench::parse::iperf_tcp(&out).expect("iperf3 result");
    assert!(r.bytes > 1_000_000, "only {} bytes crossed", r.bytes);
}
