//! `meshnet-lab capture`: live pcapng of a pod's interface from its node's daemon, on a gRPC
//! wire and on a veth, read back with tcpdump; `-c`; a stalled reader does not slow the link
//! (needs root, tcpdump, iperf3, python3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{LabGuard, topo};

/// Pings r2 from r1 `count` times, 0.2 s apart.
fn ping_r2(lab: &LabGuard, count: &str) {
    lab.ok(&[
        "exec",
        "r1",
        "--",
        "ping",
        "-c",
        count,
        "-i",
        "0.2",
        "-W",
        "2",
        "12.12.12.2",
    ]);
}

fn mac(netns: &str, ifname: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "cat"])
        .arg(format!("/sys/class/net/{ifname}/address"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Sends one raw frame out of `ifname` in `netns`: `dst`, the interface's MAC, then `rest`
/// (hex), padded to the minimum Ethernet size.
fn send_raw(netns: &str, ifname: &str, dst: &str, rest: &str) {
    let src = mac(netns, ifname).replace(':', "");
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('{ifname}', 0))\n\
         s.send((bytes.fromhex('{dst}{src}{rest}') + b'meshnet-capture-test').ljust(60, b'.'))\n"
    );
    let st = Command::new("ip")
        .args(["netns", "exec", netns, "python3", "-c", &script])
        .status()
        .unwrap();
    assert!(st.success(), "sending a raw frame in {netns}");
}

/// Sends one LLDP-like frame (ethertype 0x88cc to the nearest-bridge group address).
fn send_lldp(netns: &str, ifname: &str) {
    send_raw(netns, ifname, "0180c200000e", "88cc");
}

/// A `meshnet-lab capture` child process, interrupted and reaped on drop.
struct Capture(Child);

impl Capture {
    fn start(lab: &LabGuard, args: &[&str], stdout: Stdio) -> Capture {
        let c = Command::new(env!("CARGO_BIN_EXE_meshnet-lab"))
            .arg("--lab")
            .arg(&lab.name)
            .arg("capture")
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Capture(c)
    }

    fn interrupt(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    }

    /// Waits for the process to exit (at most `limit`), returning its stderr.
    fn wait(&mut self, limit: Duration) -> String {
        let t = Instant::now();
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                let mut err = String::new();
                self.0
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                assert!(st.success(), "capture failed: {err}");
                return err;
            }
            assert!(t.elapsed() < limit, "capture still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits until `path` holds the stream's header (the capture socket is open by then).
fn wait_started(path: &std::path::Path) {
    let t = Instant::now();
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "capture did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tcpdump(path: &std::path::Path, filter: &[&str]) -> Vec<String> {
    let out = Command::new("tcpdump")
        .args(["-nn", "-e", "-r"])
        .arg(path)
        .args(filter)
        .output()
        .expect("tcpdump installed (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One line per frame (tcpdump adds hex lines, indented, for an unknown ethertype).
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('\t'))
        .map(str::to_string)
        .collect()
}

/// What the test reads back from pcapng: each EPB's (source MAC, outbound?) and each ISB's
/// `isb_ifdrop`.
#[derive(Default)]
struct Parsed {
    frames: Vec<(String, bool)>,
    drops: Vec<u64>,
}

fn parse_pcapng(b: &[u8]) -> Parsed {
    let u32le = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let options = |mut o: &[u8]| {
        let mut v = Vec::new();
        while o.len() >= 4 {
            let code = u16::from_le_bytes([o[0], o[1]]);
            let len = usize::from(u16::from_le_bytes([o[2], o[3]]));
            if code == 0 {
                break;
            }
            v.push((code, o[4..4 + len].to_vec()));
            o = &o[4 + len.next_multiple_of(4)..];
        }
        v
    };
    let mut p = Parsed::default();
    let mut at = 0;
    assert_eq!(u32le(b, 0), 0x0A0D_0D0A, "starts with a section header");
    while at + 12 <= b.len() {
        let (ty, len) = (u32le(b, at), u32le(b, at + 4) as usize);
        assert!(
            len >= 12 && at + len <= b.len(),
            "block at {at} of {len} bytes"
        );
        let body = &b[at + 8..at + len - 4];
        match ty {
            6 => {
                let caplen = u32le(body, 12) as usize;
                let data = &body[20..20 + caplen];
                let src = data[6..12]
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                let flags = options(&body[20 + caplen.next_multiple_of(4)..])
                    .into_iter()
                    .find(|(c, _)| *c == 2)
                    .map(|(_, v)| u32le(&v, 0))
                    .unwrap();
                p.frames.push((src, flags & 3 == 2));
            }
            5 => {
                if let Some((_, v)) = options(&body[12..]).into_iter().find(|(c, _)| *c == 5) {
                    p.drops.push(u64::from_le_bytes(v[..8].try_into().unwrap()));
                }
            }
            _ => {}
        }
        at += len;
    }
    p
}

/// LLDP out, three pings, LLDP in — captured on r1:eth1 and read back in order, each frame's
/// direction matching who sent it.
fn exchange_is_captured(lab: &LabGuard, kind: &str) {
    let st = lab.status();
    let link = &st["links"].as_array().unwrap()[0];
    assert_eq!(link["kind"], kind, "{link:#}");
    let (r1, r2) = (lab.pod_netns("r1"), lab.pod_netns("r2"));
    let (m1, m2) = (mac(&r1, "eth1"), mac(&r2, "eth1"));
    // Resolve ARP first, so the capture holds exactly the exchange below.
    ping_r2(lab, "1");
    let file = std::env::temp_dir().join(format!("{}-{kind}.pcapng", lab.name));
    let _ = std::fs::remove_file(&file);
    let mut cap = Capture::start(
        lab,
        &["r1:eth1", "-w", file.to_str().unwrap()],
        Stdio::null(),
    );
    wait_started(&file);
    send_lldp(&r1, "eth1");
    ping_r2(lab, "3");
    send_lldp(&r2, "eth1");
    std::thread::sleep(Duration::from_millis(500));
    cap.interrupt();
    let summary = cap.wait(Duration::from_secs(10));
    assert!(summary.contains("interrupted"), "{summary}");

    let lines = tcpdump(&file, &["icmp or ether proto 0x88cc"]);
    let text = lines.join("\n");
    eprintln!("{kind}: tcpdump -r {}:\n{text}", file.display());
    assert_eq!(lines.len(), 8, "{text}");
    assert!(
        lines[0].contains(&format!("{m1} > 01:80:c2:00:00:0e")) && lines[0].contains("0x88cc"),
        "{text}"
    );
    for i in 0..3 {
        let (req, rep) = (&lines[1 + 2 * i], &lines[2 + 2 * i]);
        assert!(
            req.contains(&format!("{m1} > {m2}")) && req.contains("ICMP echo request"),
            "{text}"
        );
        assert!(
            rep.contains(&format!("{m2} > {m1}")) && rep.contains("ICMP echo reply"),
            "{text}"
        );
    }
    assert!(
        lines[7].contains(&format!("{m2} > 01:80:c2:00:00:0e")),
        "{text}"
    );

    let p = parse_pcapng(&std::fs::read(&file).unwrap());
    let _ = std::fs::remove_file(&file);
    let mut out = 0;
    for (src, outbound) in &p.frames {
        // What r1 sent is outbound on r1:eth1, everything else (r2's, IPv6 ND of both) in.
        assert_eq!(*outbound, *src == m1, "direction of a frame from {src}");
        out += usize::from(*outbound);
    }
    assert!(
        out >= 4 && p.frames.len() - out >= 4,
        "both directions: {out} out of {}",
        p.frames.len()
    );
    assert!(
        !p.drops.is_empty(),
        "statistics blocks are written periodically"
    );
}

#[test]
fn grpc_wire_capture_reads_back_in_order_both_directions() {
    let lab = LabGuard::new("capture-g");
    lab.ok(&["up", &topo("2node.yml"), "--nodes", "2", "--link", "grpc"]);
    exchange_is_captured(&lab, "grpc");
}

#[test]
fn veth_capture_reads_back_and_ends_on_count_reader_gone_and_daemon_stop() {
    let lab = LabGuard::new("capture-v");
    lab.ok(&["up", &topo("2node.yml"), "--nodes", "1"]);
    exchange_is_captured(&lab, "veth");

    // An 802.1Q-tagged frame: the receive path takes the tag out before the tap sees it; the
    // capture puts it back.
    let file = std::env::temp_dir().join(format!("{}-vlan.pcapng", lab.name));
    let _ = std::fs::remove_file(&file);
    let mut cap = Capture::start(
        &lab,
        &["r2:eth1", "-w", file.to_str().unwrap()],
        Stdio::null(),
    );
    wait_started(&file);
    let r2mac = mac(&lab.pod_netns("r2"), "eth1").replace(':', "");
    send_raw(&lab.pod_netns("r1"), "eth1", &r2mac, "8100006488b5");
    std::thread::sleep(Duration::from_millis(300));
    cap.interrupt();
    cap.wait(Duration::from_secs(10));
    let lines = tcpdump(&file, &["vlan"]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("vlan 100") && lines[0].contains("0x88b5"),
        "{lines:#?}"
    );

    // -c 4 to stdout: the capture ends by itself after 4 frames, and tcpdump reads 4 frames.
    let mut ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.pod_netns("r1"),
            "ping",
            "-c",
            "30",
            "-i",
            "0.1",
            "12.12.12.2",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut cap = Capture::start(&lab, &["r2:eth1", "-c", "4"], Stdio::piped());
    let mut bytes = Vec::new();
    cap.0
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let summary = cap.wait(Duration::from_secs(10));
    let _ = ping.kill();
    let _ = ping.wait();
    assert!(summary.contains("ended: 4 frames written"), "{summary}");
    let file = std::env::temp_dir().join(format!("{}-count.pcapng", lab.name));
    std::fs::write(&file, &bytes).unwrap();
    let lines = tcpdump(&file, &[]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(parse_pcapng(&bytes).frames.len(), 4);

    // The reader going away (a closed pipe) ends the capture by itself: the next chunk (at the
    // latest the periodic statistics block) meets the broken pipe.
    let mut cap = Capture::start(&lab, &["r1:eth1"], Stdio::piped());
    let mut head = [0u8; 64];
    cap.0.stdout.take().unwrap().read_exact(&mut head).unwrap();
    assert_eq!(
        &head[..4],
        &[0x0a, 0x0d, 0x0d, 0x0a],
        "pcapng section header first"
    );
    let summary = cap.wait(Duration::from_secs(5));
    assert!(summary.contains("reader gone"), "{summary}");

    // Requests the daemon refuses say why.
    let out = lab.run(&["capture", "r1:eth9"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no interface eth9"),
        "{err}"
    );
    let out = lab.run(&["capture", "r9:eth1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no pod \"r9\""),
        "{err}"
    );

    // A capture in progress does not hold the daemon's stop (the local API server waits for
    // open streams): the daemon ends it and exits.
    let file = std::env::temp_dir().join(format!("{}-stop.pcapng", lab.name));
    let mut cap = Capture::start(
        &lab,
        &["r1:eth1", "-w", file.to_str().unwrap()],
        Stdio::null(),
    );
    wait_started(&file);
    let t = Instant::now();
    lab.ok(&["daemon", "node1", "stop"]);
    let stop_took = t.elapsed();
    let summary = cap.wait(Duration::from_secs(5));
    let _ = std::fs::remove_file(&file);
    assert!(summary.contains(" ended: "), "{summary}");
    assert!(
        stop_took < Duration::from_secs(4),
        "daemon stop took {stop_took:?}"
    );
    lab.ok(&["daemon", "node1", "start"]);
}

/// An iperf3 server in a pod, killed on drop.
struct Iperf(Child);

impl Drop for Iperf {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf_gbps(lab: &LabGuard) -> f64 {
    let out = lab.ok(&[
        "exec",
        "r1",
        "--",
        "iperf3",
        "-c",
        "12.12.12.2",
        "-p",
        "5311",
        "-t",
        "3",
        "-J",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9
}

#[test]
fn stalled_reader_does_not_slow_the_grpc_wire() {
    let lab = LabGuard::new("capture-s");
    lab.ok(&["up", &topo("2node.yml"), "--nodes", "2", "--link", "grpc"]);
    let _server = Iperf(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.pod_netns("r2"),
                "iperf3",
                "-s",
                "-p",
                "5311",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = iperf_gbps(&lab);

    // A capture whose stdout nobody reads while iperf3 runs.
    let mut cap = Capture::start(&lab, &["r1:eth1"], Stdio::piped());
    let mut pipe = cap.0.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stalled = iperf_gbps(&lab);
    // Now read: the backlog drains, then periodic statistics blocks carry the drop count.
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        pipe.read_to_end(&mut b).unwrap();
        b
    });
    std::thread::sleep(Duration::from_secs(3));
    cap.interrupt();
    let summary = cap.wait(Duration::from_secs(20));
    let bytes = reader.join().unwrap();
    let after = iperf_gbps(&lab);

    let baseline = (before + after) / 2.0;
    eprintln!(
        "iperf3 over the gRPC wire: {before:.2} Gbit/s without capture, {stalled:.2} with a \
         stalled capture, {after:.2} without again ({:.2}x of their mean); {summary}",
        stalled / baseline
    );
    // Back-pressure from the stalled reader into the link would stop it (near 0). What is
    // left is CPU: the daemon still reads and drops every cloned frame, next to two debug
    // daemons and iperf3 on 2 cores — 0.62–0.72× on the AMD host, 0.89–1.27× on the Xeon.
    assert!(
        stalled >= 0.5 * baseline,
        "a stalled capture slowed the link: {stalled:.2} vs {baseline:.2} Gbit/s"
    );
    let p = parse_pcapng(&bytes);
    let dropped = p.drops.iter().copied().max().unwrap_or(0);
    assert!(
        dropped > 0,
        "the stalled capture dropped frames and said so: {:?}",
        p.drops
    );
    let reported: u64 = summary
        .split(", ")
        .find_map(|s| s.strip_suffix(" capture frames dropped (a slow reader loses capture frames"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        reported > 0,
        "the client reports the dropped count: {summary}"
    );
    eprintln!(
        "{} frames in the file, {dropped} dropped by the capture",
        p.frames.len()
    );
}
