//! Smoke test of the `tcp-relay` baseline (root; about two seconds): two pod namespaces with a
//! relay side each, both relay processes in a third namespace joined over its loopback. Frames
//! must cross both ways, and a TCP transfer must work — which it only does if the virtio-net
//! header crosses with the frames (the pods' TSO/checksum offloads are on). The full harness
//! (labs, iperf3 figures) is `make bench`; it is not run here. The same again behind the wire's
//! port (`tcp-relay-port`: TAPs in the node's namespace, `relay::patch_port`).

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
    check_relay(false, 0);
}

/// `tcp-relay-port`: the TAPs in the node's namespace, each pod's `eth1` a veth whose node end
/// is patched to its TAP (`meshnet_bench::relay::patch_port`).
#[test]
fn relay_behind_the_port_carries_frames_and_tcp_both_ways() {
    check_relay(true, 1);
}

/// Two relay sides in one "node" namespace joined over its loopback, pods `a` and `b`; with
/// `ported` each TAP stays in the node's namespace behind a port. `slot` keeps the two tests'
/// ports apart.
fn check_relay(ported: bool, slot: u16) {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let tag = if ported { "p" } else { "t" };
    let node = Ns::new(&format!("{tag}node"));
    let a = Ns::new(&format!("{tag}a"));
    let b = Ns::new(&format!("{tag}b"));
    let port = 20000 + (std::process::id() % 10000) as u16 * 2 + slot;
    let addr = format!("127.0.0.1:{port}");
    let exe = env!("CARGO_BIN_EXE_meshnet-bench");
    let side = |pod: &Ns, tap: &str, role: &str| {
        let tap_ns = if ported { &node.0 } else { &pod.0 };
        Proc(
            Command::new("ip")
                .args(["netns", "exec", &node.0, exe, "relay", "--tap-netns"])
                .arg(format!("/run/netns/{tap_ns}"))
                .args(["--tap", tap, role, &addr])
                .stdout(Stdio::null())
                .spawn()
                .expect("start relay"),
        )
    };
    let sides = [
        (&a, "10.77.0.1/24", "mbrta", "mbrpa"),
        (&b, "10.77.0.2/24", "mbrtb", "mbrpb"),
    ];
    let tap_of = |t: &'static str| if ported { t } else { "eth1" };
    let _listen = side(&a, tap_of(sides[0].2), "--listen");
    std::thread::sleep(Duration::from_millis(200));
    let _connect = side(&b, tap_of(sides[1].2), "--connect");
    // The TAPs appear once each side has made its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (ns, ip, tap, node_end) in sides {
        let (where_, name) = if ported { (&node, tap) } else { (ns, "eth1") };
        while Command::new("ip")
            .args(["-n", &where_.0, "link", "show", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "relay TAP never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        if ported {
            meshnet_bench::relay::patch_port(&node.0, &ns.0, tap, node_end).expect("patch port");
            let link = sh(&["ip", "-n", &ns.0, "-d", "link", "show", "eth1"]);
            assert!(
                link.contains("veth"),
                "the pod's eth1 is not the port: {link}"
            );
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
    let iperf_port = (5209 + slot).to_string();
    let server = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &b.0,
                "iperf3",
                "-s",
                "-1",
                "-p",
                &iperf_port,
            ])
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
        &iperf_port,
        "-t",
        "1",
        "-J",
    ]);
    drop(server);
    let r = meshnet_bench::parse::iperf_tcp(&out).expect("iperf3 result");
    assert!(r.bytes > 1_000_000, "only {} bytes crossed", r.bytes);
}
