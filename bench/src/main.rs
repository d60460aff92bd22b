//! `meshnet-bench` command line (see the library's documentation and README "Benchmarks").
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshnet_bench::harness::{self, Condition, Options, PathKind};
use meshnet_bench::relay::{self, RelaySide, Role};

/// Whole-system benchmarks of meshnet's dataplanes in the lab, side by side with the kernel's
/// paths and baseline relays. Needs root, iperf3, ping, ethtool, tc, and release builds of
/// meshnet-lab, meshnetd and meshnet next to this program (or in MESHNET_BIN_DIR).
#[derive(Debug, Parser)]
#[command(name = "meshnet-bench", version, about)]
struct Cli {
    /// A short run (1 s tests, the plain underlay only, 10 and 100 links): under 5 minutes.
    #[arg(long)]
    quick: bool,
    /// Directory of the report (bench.json, bench.md, bench*.svg) and the run's logs.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Write the JSON report here instead of OUT/bench.json.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Paths to measure (comma-separated): veth, vxlan, grpc, grpc-1q, grpc-poll,
    /// grpc-afpacket, tcp-relay, tcp-relay-port, grpc-per-frame, grpc-unary. Default:
    /// all.
    #[arg(long, value_delimiter = ',')]
    paths: Option<Vec<PathKind>>,
    /// Underlay conditions (comma-separated): plain, delay-1ms, underlay-offloads-off.
    #[arg(long, value_delimiter = ',')]
    conditions: Option<Vec<Condition>>,
    /// Repetitions of every figure (at least 1; 3 by default).
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds per throughput test.
    #[arg(long)]
    seconds: Option<u32>,
    /// Pings per round-trip measurement.
    #[arg(long)]
    pings: Option<u32>,
    /// Milliseconds between those pings (`ping -i`; 2 by default, at least 0.2 and at most
    /// 1000). Shorter keeps the CPUs from going idle between pings.
    #[arg(long, value_parser = ping_interval_ms)]
    ping_interval_ms: Option<f64>,
    /// Scale runs: link counts (comma-separated); 0 for none.
    #[arg(long, value_delimiter = ',')]
    scale: Option<Vec<u32>>,
    /// Where meshnet-lab, meshnetd and meshnet are (default: next to this program).
    #[arg(long, env = "MESHNET_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) One side of the tcp-relay baseline, run inside a node's namespace.
    #[command(hide = true)]
    Relay {
        /// The pod's namespace file, where the TAP is made.
        #[arg(long)]
        tap_netns: PathBuf,
        #[arg(long)]
        tap: String,
        #[arg(long, conflicts_with = "connect")]
        listen: Option<SocketAddr>,
        #[arg(long)]
        connect: Option<SocketAddr>,
    },
}

/// Takes every lab down and stops every child on SIGINT/SIGTERM, then exits.
fn clean_up_on_signal() {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                eprintln!("meshnet-bench: interrupted; cleaning up");
                meshnet_bench::system::clean_up_everything();
                std::process::exit(130);
            });
        });
    if let Err(e) = spawned {
        eprintln!("meshnet-bench: no signal handler ({e}); an interrupted run may leave labs up");
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Relay {
        tap_netns,
        tap,
        listen,
        connect,
    }) = cli.cmd
    {
        let role = match (listen, connect) {
            (Some(a), None) => Role::Listen(a),
            (None, Some(a)) => Role::Connect(a),
            _ => anyhow::bail!("relay: give exactly one of --listen and --connect"),
        };
        return relay::run(&RelaySide {
            tap_netns,
            tap,
            role,
        });
    }
    let bin_dir = match cli.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .context("locating meshnet-bench")?
            .parent()
            .context("meshnet-bench has no directory")?
            .to_path_buf(),
    };
    let mut o = if cli.quick {
        Options::quick(cli.out, bin_dir)
    } else {
        Options::full(cli.out, bin_dir)
    };
    o.json = cli.json;
    if let Some(p) = cli.paths {
        o.paths = PathKind::ALL
            .into_iter()
            .filter(|k| p.contains(k))
            .collect();
    }
    if let Some(c) = cli.conditions {
        o.conditions = c;
    }
    if let Some(r) = cli.reps {
        o.reps = r.max(1);
        o.scale_reps = r.max(1);
    }
    if let Some(s) = cli.seconds {
        o.seconds = s.max(1);
    }
    if let Some(p) = cli.pings {
        o.pings = p.max(2);
    }
    if let Some(ms) = cli.ping_interval_ms {
        o.ping_interval_ms = ms;
    }
    if let Some(s) = cli.scale {
        o.scale = s.into_iter().filter(|n| *n > 0).collect();
    }
    clean_up_on_signal();
    harness::run_bench(o)?;
    Ok(())
}

/// `--ping-interval-ms`: milliseconds between pings, from 0.2 (shorter is a flood, which
/// measures queueing, not a round trip; `ping -i` is given four decimals of a second) to 1000.
fn ping_interval_ms(s: &str) -> Result<f64, String> {
    let ms: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of milliseconds"))?;
    if (0.2..=1000.0).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!("{ms} ms is outside 0.2–1000 ms"))
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshnet-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::ping_interval_ms;

    #[test]
    fn ping_interval_is_bounded_and_named_when_wrong() {
        assert_eq!(ping_interval_ms("0.5"), Ok(0.5));
        assert_eq!(ping_interval_ms("10"), Ok(10.0));
        assert!(
            ping_interval_ms("0.1")
                .unwrap_err()
                .contains("0.1 ms is outside")
        );
        assert!(ping_interval_ms("2000").is_err());
        assert!(ping_interval_ms("NaN").is_err());
        assert!(ping_interval_ms("fast").unwrap_err().contains("\"fast\""));
    }
}
