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
    /// Pings per round-trip measurement (2 ms apart).
    #[arg(long)]
    pings: Option<u32>,
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
    if let Some(s) = cli.scale {
        o.scale = s.into_iter().filter(|n| *n > 0).collect();
    }
    clean_up_on_signal();
    harness::run_bench(o)?;
    Ok(())
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
