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
    /// Address for /metrics, /healthz and /readyz ("" disables).
    #[arg(long, env = "MESHNET_HTTP_ADDR", default_value = "0.0.0.0:51112")]
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
    /// Underlay interface for VXLAN links (default: the interface that holds --host-ip).
    #[arg(long, env = "HOST_INTF")]
    host_intf: Option<String>,
    /// Listen address of the node-to-node gRPC wire (used with INTER_NODE_LINK_TYPE=GRPC).
    #[arg(long, env = "MESHNET_WIRE_ADDR", default_value = "0.0.0.0:51111")]
    wire_addr: SocketAddr,
    /// Streams per peer node (each its own HTTP/2 connection) at most; default: one per core, at
    /// most 4. Two nodes use the smaller of their counts.
    #[arg(long, env = "MESHNET_WIRE_SHARDS")]
    wire_shards: Option<u32>,
    /// The pod's interface of a gRPC wire: `tap` (a TAP), or `afpacket` (a veth whose host end
    /// in the node is read and written with AF_PACKET).
    #[arg(long, env = "MESHNET_WIRE_ENDPOINT", default_value = "tap")]
    wire_endpoint: meshnet_daemon::gwire::EndpointKind,
    /// Benchmarks only: reproduce a legacy wire design in our code — `per-frame` (one frame
    /// per stream message, no offloads) or `unary` (one unary call per frame). Default: none.
    #[arg(long, env = "MESHNET_WIRE_LEGACY", default_value = "none")]
    wire_legacy: meshnet_daemon::gwire::WireLegacy,
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
    /// Leave the CNI config and binary in place on shutdown (default: remove them).
    #[arg(long, env = "MESHNET_KEEP_CNI_CONFIG")]
    keep_cni_config: bool,
    /// Directory with `tls.crt`, `tls.key` and `ca.crt` for mutual TLS on the node-to-node API
    /// (e.g. a mounted Secret; without `tls.crt` in it the wire runs without TLS).
    #[arg(long, env = "MESHNET_WIRE_TLS_DIR")]
    wire_tls_dir: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "MESHNET_LOG_FORMAT", default_value = "text")]
    log_format: String,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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
    let local = bind_unix(&args.socket)?;
    let http = if args.http_addr.is_empty() {
        None
    } else {
        let addr: SocketAddr = args.http_addr.parse().context("--http-addr")?;
        Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        )
    };
    let wire = if args.inter_node_link_type == InterNodeLink::Grpc {
        Some(
            tokio::net::TcpListener::bind(args.wire_addr)
                .await
                .with_context(|| format!("binding the wire port {}", args.wire_addr))?,
        )
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
            if args.socket != std::path::Path::new("/run/meshnet/meshnetd.sock") {
                cfg.plugin = meshnet_daemon::install::meshnet_plugin(Some(&args.socket));
            }
            Some(cfg)
        }
    };
    let config = Config {
        node_name: args.node_name,
        host_ip: args.host_ip,
        store: args.store,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        inter_node_link: args.inter_node_link_type,
        host_intf: args.host_intf.filter(|s| !s.is_empty()),
        wire_port: args.wire_addr.port(),
        install,
        keep_cni_config: args.keep_cni_config,
        wire_tls: match &args.wire_tls_dir {
            Some(d) => meshnet_daemon::gwire::WireTls::load(d)
                .with_context(|| format!("reading the wire TLS files in {}", d.display()))?,
            None => None,
        },
        wire_shards: args
            .wire_shards
            .unwrap_or_else(meshnet_wire::transport::default_shards),
        wire_endpoint: args.wire_endpoint,
        wire_legacy: args.wire_legacy,
    };
    let r = meshnet_daemon::run(
        config,
        Listeners { local, http, wire },
        Some(metrics),
        shutdown,
    )
    .await;
    let _ = std::fs::remove_file(&args.socket);
    r
}
