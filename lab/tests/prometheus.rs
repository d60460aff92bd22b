//! The daemons' metrics as Prometheus sees them: `promtool check metrics` passes, and a real
//! Prometheus server (Debian's package) started by the test inside a lab node scrapes every
//! daemon and answers a `rate()` query with the per-link series (needs root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{LabGuard, topo};

/// A Prometheus server in a node's namespace, killed on drop.
struct Prometheus {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn query(netns: &str, q: &str) -> serde_json::Value {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-G",
        ])
        .arg("http://127.0.0.1:19090/api/v1/query")
        .args(["--data-urlencode", &format!("query={q}")])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn promtool_accepts_the_exposition_and_prometheus_scrapes_per_link_rates() {
    let lab = LabGuard::new("prom");
    lab.ok(&["up", &topo("3node.yml"), "--nodes", "2", "--link", "grpc"]);
    lab.assert_links_up(3);
    lab.ok(&[
        "exec",
        "r1",
        "--",
        "ping",
        "-c",
        "20",
        "-i",
        "0.05",
        "-q",
        "12.12.12.2",
    ]);
    for node in ["node1", "node2"] {
        let text = lab.ok(&["metrics", node]);
        assert!(
            text.contains("meshnet_link_tx_frames_total{"),
            "{node}: {text}"
        );
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .output_with_stdin(text.as_bytes());
        assert!(check.0, "promtool check metrics on {node}: {}", check.1);
        check.1.clear();
    }
    let dir = std::env::temp_dir().join(format!("meshnet-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n\
         scrape_configs:\n\
         - job_name: meshnet\n  \
           static_configs:\n  \
           - targets: ['198.51.100.1:51112', '198.51.100.2:51112']\n",
    )
    .unwrap();
    let node1 = format!("mnl-{}-node1", lab.name);
    let child = Command::new("ip")
        .args(["netns", "exec", &node1, "prometheus"])
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .args(["--web.listen-address=127.0.0.1:19090", "--log.level=warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _prom = Prometheus { child, dir };
    // Traffic while Prometheus scrapes, so rate() has something to show.
    let mut ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("mnl-{}-default-r1-1", lab.name),
            "ping",
            "-c",
            "100",
            "-i",
            "0.05",
            "12.12.12.2",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let q = "rate(meshnet_link_tx_frames_total{kind=\"grpc\",pod=\"r1\",uid=\"1\"}[5s])";
    let t = Instant::now();
    let found = loop {
        let last = query(&node1, q);
        let results = last["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(r) = results.first() {
            let v: f64 = r["value"][1].as_str().unwrap_or("0").parse().unwrap_or(0.0);
            if v > 0.0 {
                break r.clone();
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no rate from Prometheus: {last:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let m = &found["metric"];
    for (k, v) in [
        ("namespace", "default"),
        ("pod", "r1"),
        ("interface", "eth1"),
        ("peer_pod", "r2"),
        ("uid", "1"),
        ("kind", "grpc"),
    ] {
        assert_eq!(m[k], v, "label {k}: {found:#}");
    }
    // Both daemons are scraped.
    let up = query(&node1, "up{job=\"meshnet\"}");
    let ups = up["data"]["result"].as_array().cloned().unwrap_or_default();
    assert_eq!(ups.len(), 2, "{up:#}");
    assert!(ups.iter().all(|r| r["value"][1] == "1"), "{up:#}");
    let _ = ping.kill();
    let _ = ping.wait();
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> (bool, String);
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> (bool, String) {
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
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
}
