//! `meshnetd` binary: configuration, logging, listeners, then [`meshnet_daemon::run`].
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use meshnet_daemon::{Config, InterNodeLink, Listeners, StoreConfig};

/// The meshnet node daemon.
#[derive(Debug, Parser)]
#[command(name = "meshnetd", version, about)]
struct Args {
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// This node's address (written as `src_ip`; peers reach this node's links there).
    #[arg(long, env = "HOST_IP")]
    host_ip: IpAddr,
    /// Unix socket of the local API (mode 0600).
    #[arg(
        long,
        env = "MESHNET_SOCKET",
        default_value = "/run/meshnet/meshnetd.sock"
    )]
    socket: PathBuf,
    /// Address for /metrics, /healthz and /readyz ("" disables). `[::]` also accepts IPv4.
    #[arg(long, env = "MESHNET_HTTP_ADDR", default_value = "[::]:51112")]
    http_addr: String,
    /// Topology store: `kube` (in-cluster config or KUBECONFIG) or `file:DIR`.
    #[arg(long, env = "MESHNET_STORE")]
    store: StoreConfig,
    /// Seconds between full reconciles (every link verified in the kernel).
    #[arg(long, env = "MESHNET_RESYNC_SECONDS", default_value_t = 30)]
    resync_seconds: u64,
    /// How cross-node links are carried: VXLAN or GRPC.
    #[arg(long, env = "INTER_NODE_LINK_TYPE", default_value = "VXLAN")]
    inter_node_link_type: InterNodeLink,
    /// Underlay interface of the node's links (default: the interface that holds --host-ip).
    /// When it does not hold --host-ip, its own address becomes the node's link address: the
    /// VXLAN source and the `src_ip` peers send to (a dedicated data NIC).
    #[arg(long, env = "HOST_INTF")]
    host_intf: Option<String>,
    /// MTU of every link that declares none (default: VXLAN links get the underlay's MTU less
    /// the encapsulation, others 1500). Refused at start if VXLAN cannot carry it.
    #[arg(long, env = "MESHNET_DEFAULT_MTU",
          value_parser = clap::value_parser!(u32).range(68..=65535))]
    default_mtu: Option<u32>,
    /// Listen address of the node-to-node gRPC wire (used with INTER_NODE_LINK_TYPE=GRPC).
    /// `[::]` also accepts IPv4.
    #[arg(long, env = "MESHNET_WIRE_ADDR", default_value = "[::]:51111")]
    wire_addr: SocketAddr,
    /// UDP port of the beacon that tells VXLAN links' far ends this node's port states (all
    /// nodes use the same; used with INTER_NODE_LINK_TYPE=VXLAN). `[::]` also receives IPv4.
    /// 0 turns the beacon off; a port that cannot be bound is logged and the daemon runs
    /// without it.
    #[arg(long, env = "MESHNET_BEACON_PORT", default_value_t = meshnet_daemon::beacon::DEFAULT_PORT)]
    beacon_port: u16,
    /// Milliseconds between two beacon datagrams to a peer node; a far end unheard for 3 of them
    /// (+100 ms) takes its links' carrier off.
    #[arg(long, env = "MESHNET_BEACON_INTERVAL_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(10..=10_000))]
    beacon_interval_ms: u64,
    /// Streams per peer node (each its own HTTP/2 connection) at most; default: one per core, at
    /// most 4. Two nodes use the smaller of their counts.
    #[arg(long, env = "MESHNET_WIRE_SHARDS")]
    wire_shards: Option<u32>,
    /// Queues of a gRPC wire's TAP: the kernel spreads the pod's flows over them and each
    /// travels on its own stream (up to the agreed shard count), so one link's flows can use
    /// several cores. Default 1: one queue, one stream per link (several cost start-up time at
    /// scale: README, Benchmarks). The AF_PACKET endpoint always has one.
    #[arg(long, env = "MESHNET_WIRE_QUEUES",
          value_parser = clap::value_parser!(u32).range(1..=meshnet_wire::transport::MAX_QUEUES as i64))]
    wire_queues: Option<u32>,
    /// The pod's interface of a gRPC wire: `tap` (a TAP), or `afpacket` (a veth whose host end
    /// in the node is read and written with AF_PACKET).
    #[arg(long, env = "MESHNET_WIRE_ENDPOINT", default_value = "tap")]
    wire_endpoint: meshnet_daemon::gwire::EndpointKind,
    /// Benchmarks only: reproduce a legacy wire design in our code — `per-frame` (one frame
    /// per stream message, no offloads) or `unary` (one unary call per frame). Default: none.
    #[arg(long, env = "MESHNET_WIRE_LEGACY", default_value = "none")]
    wire_legacy: meshnet_daemon::gwire::WireLegacy,
    /// Low-latency mode of the gRPC wire: after frames moved, keep polling the TAPs and the
    /// streams for up to this many microseconds before sleeping (0: off). The daemon then runs
    /// on one thread (the one that spins is the one that polls every fd), as it does by default.
    /// It pays off when it outlasts the gaps between the frames to be met (5000 for a ping every
    /// 2 ms: 0.61–0.75× the default's round trip here), at the price of a core kept busy while
    /// frames keep coming that often; idle wires do not spin (README, Benchmarks).
    #[arg(long, env = "MESHNET_WIRE_POLL_US", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    wire_poll_us: u32,
    /// Threads that run the daemon's async work, the wire's readers and streams included.
    /// Default: one, or one per core when the wire's TAPs have several queues (`--wire-queues`).
    /// On one thread a frame crosses the wire without waking another thread: 0.6x the round
    /// trip and 1.6x the small-frame rate of a worker per core (README, Benchmarks).
    /// More let several busy links, or the queues of one, use several cores.
    #[arg(long, env = "MESHNET_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Install meshnet into the node's CNI config found in this directory (and keep it there
    /// while the primary config changes). Unset: no installation (the lab).
    #[arg(long, env = "MESHNET_CNI_CONF_DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// Where the `meshnet` plugin binary is copied.
    #[arg(long, env = "MESHNET_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The `meshnet` plugin binary to copy (default: next to meshnetd).
    #[arg(long, env = "MESHNET_CNI_BINARY")]
    cni_binary: Option<PathBuf>,
    /// The plugin's log file, written as `log_file` into meshnet's conflist entry (default: the
    /// plugin's own, /var/log/meshnet-cni.log on the node).
    #[arg(long, env = "MESHNET_CNI_LOG_FILE", value_parser = absolute_path)]
    cni_log_file: Option<PathBuf>,
    /// Bound on one plugin→daemon call in seconds (1-3600), written as `timeout_seconds` into
    /// meshnet's conflist entry (default: the plugin's own, 120). The plugin waits up to half of
    /// it for an absent daemon.
    #[arg(long, env = "MESHNET_CNI_TIMEOUT_SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    cni_timeout_seconds: Option<u64>,
    /// Remove the CNI config and binary when meshnetd exits. Default: keep them, so that a
    /// restart or a DaemonSet rollout loses no pod (the plugin waits for the daemon, then answers
    /// "try again later" and the runtime retries). `meshnetd uninstall` removes them for good.
    #[arg(long, env = "MESHNET_REMOVE_CNI_CONFIG_ON_EXIT")]
    remove_cni_config_on_exit: bool,
    /// Accepted for old manifests; keeping the CNI config is the default now.
    #[arg(long, env = "MESHNET_KEEP_CNI_CONFIG", hide = true)]
    keep_cni_config: bool,
    /// Directory with `tls.crt`, `tls.key` and `ca.crt` for mutual TLS on the node-to-node API
    /// (e.g. a mounted Secret; without `tls.crt` in it the wire runs without TLS).
    #[arg(long, env = "MESHNET_WIRE_TLS_DIR")]
    wire_tls_dir: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "MESHNET_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

/// A path the plugin can use wherever it runs: absolute.
fn absolute_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("{s:?} is not an absolute path"))
    }
}

/// `meshnetd uninstall`: removes meshnet from this node's CNI chain for good — its own
/// `00-meshnet.conflist` and `meshnet` binary, nothing else. `make uninstall` runs it on every node
/// (manifests/uninstall) after the DaemonSet is gone.
#[derive(Debug, Parser)]
#[command(name = "meshnetd uninstall")]
struct UninstallArgs {
    /// The CNI conf dir that holds `00-meshnet.conflist`.
    #[arg(long, env = "MESHNET_CNI_CONF_DIR", default_value = meshnet_daemon::install::DEFAULT_CONF_DIR)]
    cni_conf_dir: PathBuf,
    /// The CNI bin dir that holds the `meshnet` plugin.
    #[arg(long, env = "MESHNET_CNI_BIN_DIR", default_value = meshnet_daemon::install::DEFAULT_BIN_DIR)]
    cni_bin_dir: PathBuf,
    /// After removing, keep running until SIGTERM/SIGINT (a DaemonSet's container cannot
    /// complete; the removal itself is done by then).
    #[arg(long)]
    hold: bool,
}

async fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let cfg = meshnet_daemon::install::InstallConfig::new(
        &args.cni_conf_dir,
        &args.cni_bin_dir,
        PathBuf::new(),
    );
    let report =
        meshnet_daemon::install::uninstall(&cfg).context("removing meshnet's CNI files")?;
    if report.removed.is_empty() {
        println!(
            "meshnet is not installed in {} / {}: nothing to remove",
            cfg.conf_dir.display(),
            cfg.bin_dir.display()
        );
    }
    for p in &report.removed {
        println!("removed {}", p.display());
    }
    if args.hold {
        shutdown.await;
    }
    Ok(())
}

fn bind_unix(path: &PathBuf) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()));
        }
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(l)
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when the future is
/// first polled: the daemon installs its CNI config early in `run`, and a SIGTERM in between
/// would otherwise kill it with the default action and leave that config behind.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn main() -> anyhow::Result<()> {
    // A subcommand by hand rather than clap's: the daemon's required options come from the
    // DaemonSet's environment, which clap would also demand of `uninstall`.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("uninstall")) {
        let argv = std::iter::once("meshnetd uninstall".into()).chain(std::env::args_os().skip(2));
        return runtime(1)?.block_on(uninstall(UninstallArgs::parse_from(argv)));
    }
    let args = Args::parse();
    // Before any thread allocates: the wire's large short-lived buffers stay mapped for reuse
    // instead of being faulted in again page by page (see the function's doc).
    if !meshnet_wire::sys::keep_freed_buffers() {
        eprintln!("meshnetd: the allocator refused the buffer settings; running with its defaults");
    }
    runtime(threads(&args)?)?.block_on(daemon(args))
}

/// The runtime's threads: `--threads`, else one, or one per core with multi-queue TAPs. The
/// low-latency mode needs one (the thread that spins must be the one that polls every fd).
fn threads(args: &Args) -> anyhow::Result<usize> {
    match (args.threads, args.wire_poll_us > 0) {
        (Some(n), true) if n > 1 => anyhow::bail!(
            "--threads {n} with --wire-poll-us: the low-latency mode runs the daemon on one thread"
        ),
        (Some(n), _) => Ok(usize::from(n)),
        (None, false) if args.wire_queues.is_some_and(|q| q > 1) => {
            Ok(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
        }
        (None, _) => Ok(1),
    }
}

/// The async runtime: a single-threaded one for one thread (no cross-thread wake-ups, no work
/// stealing), else a work-stealing one with `threads` workers.
fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().context("starting the async runtime")
}

async fn daemon(args: Args) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
    if args.wire_legacy != meshnet_daemon::gwire::WireLegacy::None
        || args.wire_endpoint != meshnet_daemon::gwire::EndpointKind::Tap
    {
        tracing::info!(legacy = ?args.wire_legacy, endpoint = ?args.wire_endpoint, "wire design");
    }
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0])
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    meshnet_daemon::metrics_desc::describe();
    // Before any socket is bound: a refused underlay leaves nothing behind.
    let host_intf = args.host_intf.clone().filter(|s| !s.is_empty());
    let host_ip = meshnet_daemon::underlay::node_link_address(
        args.host_ip,
        host_intf.as_deref(),
        args.default_mtu,
        args.inter_node_link_type,
    )?;
    let local = bind_unix(&args.socket)?;
    let http = if args.http_addr.is_empty() {
        None
    } else {
        let addr: SocketAddr = args.http_addr.parse().context("--http-addr")?;
        Some(meshnet_daemon::http::bind_tcp(addr).with_context(|| format!("binding {addr}"))?)
    };
    let wire = if args.inter_node_link_type == InterNodeLink::Grpc {
        Some(
            meshnet_daemon::http::bind_tcp(args.wire_addr)
                .with_context(|| format!("binding the wire port {}", args.wire_addr))?,
        )
    } else {
        None
    };
    // Without its beacon a node still serves every link (their carrier just does not follow the
    // far end, as with a peer that has none), so a taken port is said loudly but not fatal.
    let beacon = if args.inter_node_link_type == InterNodeLink::Vxlan && args.beacon_port != 0 {
        let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, args.beacon_port));
        match meshnet_daemon::beacon::bind_udp(addr) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(%addr, error = %e,
                    "cannot bind the beacon port: VXLAN links' carrier will not follow their far end");
                None
            }
        }
    } else {
        None
    };
    let install = match &args.cni_conf_dir {
        None => None,
        Some(conf) => {
            let binary = match &args.cni_binary {
                Some(b) => b.clone(),
                None => std::env::current_exe()
                    .context("locating meshnetd")?
                    .with_file_name("meshnet"),
            };
            let mut cfg =
                meshnet_daemon::install::InstallConfig::new(conf, &args.cni_bin_dir, binary);
            cfg.plugin =
                meshnet_daemon::install::meshnet_plugin(&meshnet_daemon::install::PluginOptions {
                    // The plugin's default needs no key.
                    daemon_socket: Some(args.socket.clone())
                        .filter(|s| s != std::path::Path::new("/run/meshnet/meshnetd.sock")),
                    log_file: args.cni_log_file.clone(),
                    timeout_seconds: args.cni_timeout_seconds,
                });
            Some(cfg)
        }
    };
    let config = Config {
        node_name: args.node_name,
        host_ip,
        default_mtu: args.default_mtu,
        store: args.store,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        inter_node_link: args.inter_node_link_type,
        host_intf,
        wire_port: args.wire_addr.port(),
        install,
        keep_cni_config: args.keep_cni_config || !args.remove_cni_config_on_exit,
        wire_tls: match &args.wire_tls_dir {
            Some(d) => meshnet_daemon::gwire::WireTls::load(d)
                .with_context(|| format!("reading the wire TLS files in {}", d.display()))?,
            None => None,
        },
        wire_shards: args
            .wire_shards
            .unwrap_or_else(meshnet_wire::transport::default_shards),
        // One TAP queue per link unless told: more cost 3x the time to bring 1000 wires up.
        wire_queues: args.wire_queues.map_or(1, |q| q as usize),
        wire_endpoint: args.wire_endpoint,
        wire_legacy: args.wire_legacy,
        wire_poll: Duration::from_micros(u64::from(args.wire_poll_us)),
        beacon_interval: Duration::from_millis(args.beacon_interval_ms),
    };
    let r = meshnet_daemon::run(
        config,
        Listeners {
            local,
            http,
            wire,
            beacon,
        },
        Some(metrics),
        shutdown,
    )
    .await;
    let _ = std::fs::remove_file(&args.socket);
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        let base = [
            "meshnetd",
            "--node-name",
            "n1",
            "--host-ip",
            "192.0.2.1",
            "--store",
        ];
        Args::try_parse_from(base.iter().chain(&["file:/nonexistent"]).chain(extra))
    }

    #[test]
    fn one_thread_unless_queues_or_told() {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        assert_eq!(threads(&args(&[]).unwrap()).unwrap(), 1);
        assert_eq!(threads(&args(&["--wire-queues", "1"]).unwrap()).unwrap(), 1);
        assert_eq!(
            threads(&args(&["--wire-queues", "2"]).unwrap()).unwrap(),
            cores
        );
        assert_eq!(threads(&args(&["--threads", "3"]).unwrap()).unwrap(), 3);
        let told = args(&["--threads", "1", "--wire-queues", "4"]).unwrap();
        assert_eq!(threads(&told).unwrap(), 1);
        assert_eq!(
            threads(&args(&["--wire-poll-us", "50", "--wire-queues", "2"]).unwrap()).unwrap(),
            1
        );
    }

    #[test]
    fn bad_thread_counts_are_refused_with_the_reason() {
        assert!(args(&["--threads", "0"]).is_err());
        let spin = args(&["--threads", "2", "--wire-poll-us", "50"]).unwrap();
        let e = threads(&spin).unwrap_err().to_string();
        assert!(
            e.contains("--threads 2") && e.contains("--wire-poll-us"),
            "{e}"
        );
    }

    #[test]
    fn the_runtime_has_the_threads_asked_for() {
        let rt = runtime(1).unwrap();
        assert_eq!(
            rt.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let rt = runtime(3).unwrap();
        assert_eq!(
            rt.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
        assert_eq!(rt.metrics().num_workers(), 3);
    }
}
