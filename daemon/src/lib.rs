//! `meshnetd`, the meshnet node daemon, as a library: the binary parses configuration and calls
//! [`run`] with already-bound listeners and a shutdown future, so tests can run a daemon on a
//! temporary socket.
//!
//! Modules: [`topology`] (the resource and its checks), [`store`] (where topologies live),
//! [`plan`] (pure: what this node must build), [`links`] and [`netns`] (the kernel),
//! [`reconcile`] (driving the kernel toward the plan), [`api`] (the CNI-facing gRPC service),
//! [`http`] (metrics, health and [`view`], the node's links as JSON).
#![deny(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;

pub mod afhalf;
pub mod api;
pub mod beacon;
pub mod capture;
pub mod gwire;
pub mod http;
pub mod install;
pub mod links;
pub mod linkstats;
pub mod metrics_desc;
pub mod netns;
pub mod pcapng;
pub mod plan;
pub mod ports;
pub mod portwatch;
pub mod qdisc;
pub mod reconcile;
pub mod tapio;
#[cfg(test)]
mod testns;
pub mod underlay;
pub mod view;
pub use meshnet_topology::{store, topology};

use reconcile::{Depth, NodeIdentity, Reconciler};
use store::SharedStore;

/// How cross-node links are carried (`INTER_NODE_LINK_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterNodeLink {
    Vxlan,
    Grpc,
}

impl std::str::FromStr for InterNodeLink {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "vxlan" | "" => Ok(InterNodeLink::Vxlan),
            "grpc" => Ok(InterNodeLink::Grpc),
            other => Err(format!(
                "INTER_NODE_LINK_TYPE {other:?}: want VXLAN or GRPC"
            )),
        }
    }
}

/// Where topologies are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The file store in this directory (the lab).
    File(PathBuf),
    /// The Kubernetes API: in-cluster config, else `KUBECONFIG`.
    Kube,
}

impl std::str::FromStr for StoreConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("file", dir)) if !dir.is_empty() => Ok(StoreConfig::File(dir.into())),
            None if s == "kube" => Ok(StoreConfig::Kube),
            _ => Err(format!("store {s:?}: want kube or file:DIR")),
        }
    }
}

/// Daemon configuration (see `meshnetd --help`).
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    /// The node's address: written as `src_ip`, and how daemons tell nodes apart.
    pub host_ip: IpAddr,
    pub store: StoreConfig,
    /// Full reconcile (verify every link in the kernel) at this interval.
    pub resync: Duration,
    pub inter_node_link: InterNodeLink,
    /// Underlay interface for VXLAN (`HOST_INTF`); default: the one that holds `host_ip`.
    pub host_intf: Option<String>,
    /// `MESHNET_DEFAULT_MTU`: the MTU of links that declare none.
    pub default_mtu: Option<u32>,
    /// Port peers' wire servers listen on (all nodes use the same).
    pub wire_port: u16,
    /// Streams (each its own HTTP/2 connection) per peer node at most; two nodes use the
    /// smaller of their counts.
    pub wire_shards: u32,
    /// Queues of a wire's TAP (each its own reader and stream); see
    /// `meshnet_wire::transport::WireOptions::queues`.
    pub wire_queues: usize,
    /// The pod's interface of a gRPC wire.
    pub wire_endpoint: gwire::EndpointKind,
    /// Benchmarks only: a legacy wire design.
    pub wire_legacy: gwire::WireLegacy,
    /// The wire's low-latency mode: poll this long after frames moved (zero: off). See
    /// `meshnet_wire::transport::WireOptions::poll`.
    pub wire_poll: std::time::Duration,
    /// Chain meshnet into the node's CNI config and copy the plugin (the DaemonSet does).
    pub install: Option<install::InstallConfig>,
    /// Leave the CNI config and binary in place on shutdown (meshnetd's default: a restart is
    /// not an uninstall; `meshnetd uninstall` is).
    pub keep_cni_config: bool,
    /// Mutual TLS for the node-to-node API.
    pub wire_tls: Option<gwire::WireTls>,
    /// Between two beacon datagrams to a peer node (VXLAN links' far-end state).
    pub beacon_interval: Duration,
}

/// Sockets the daemon serves on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// The local API for the CNI plugin.
    pub local: UnixListener,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub http: Option<TcpListener>,
    /// The node-to-node gRPC wire (needed when the inter-node link type is GRPC).
    pub wire: Option<TcpListener>,
    /// The beacon's UDP socket ([`beacon`]): VXLAN links' carrier follows their far end. All
    /// nodes use the same port.
    pub beacon: Option<std::net::UdpSocket>,
}

/// Opens the configured store.
///
/// # Errors
/// The store cannot be opened.
pub async fn open_store(cfg: &StoreConfig) -> anyhow::Result<SharedStore> {
    match cfg {
        StoreConfig::File(dir) => Ok(Arc::new(
            store::file::FileStore::open(dir)
                .with_context(|| format!("opening file store {}", dir.display()))?,
        )),
        StoreConfig::Kube => Ok(Arc::new(meshnet_kube::KubeStore::connect().await.context(
            "connecting to the Kubernetes API (in-cluster config or KUBECONFIG)",
        )?)),
    }
}

/// Runs the daemon until `shutdown` resolves.
///
/// # Errors
/// Start-up failures (store, netlink); a server that stops with an error.
pub async fn run(
    config: Config,
    listeners: Listeners,
    metrics_handle: Option<PrometheusHandle>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = open_store(&config.store).await?;
    let wire = match config.inter_node_link {
        InterNodeLink::Grpc => Some(gwire::WireNode::new(
            meshnet_wire::transport::WireOptions {
                shards: config.wire_shards,
                queues: config.wire_queues,
                legacy: config.wire_legacy,
                tls: config.wire_tls.clone(),
                poll: config.wire_poll,
                ..meshnet_wire::transport::WireOptions::new(config.host_ip, config.wire_port)
            },
            config.wire_endpoint,
        )),
        InterNodeLink::Vxlan => None,
    };
    let ops = Arc::new(
        links::Kernel::new()
            .context("netlink socket in the node namespace")?
            .with_wire(wire.clone()),
    );
    let mut reconciler = Reconciler::new(
        NodeIdentity {
            name: config.node_name.clone(),
            ip: config.host_ip,
        },
        Arc::clone(&store),
        ops,
        config.inter_node_link,
        config.host_intf.clone(),
    );
    if let Some(socket) = listeners.beacon {
        let b = beacon::Beacon::start(
            socket,
            beacon::BeaconOptions {
                timing: beacon::Timing::new(config.beacon_interval),
            },
        )
        .context("starting the beacon")?;
        reconciler = reconciler.with_beacon(b);
    }
    let reconciler = Arc::new(reconciler);
    reconciler.set_default_mtu(config.default_mtu);
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let capture = capture::CaptureConfig {
        metrics: metrics_handle.clone(),
        stop: Some(stop_rx.clone()),
    };
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let installer = config.install.clone().map(|cfg| {
        match install::install(&cfg) {
            Ok(r) => {
                tracing::info!(primary = ?r.primary, changed = r.changed(), "CNI config installed")
            }
            // The primary CNI may come up after us: the watch installs as soon as it does.
            Err(e) => tracing::warn!(error = %e, "CNI config not installed yet"),
        }
        let s = stopped();
        let c = cfg.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = install::watch_and_refresh(c, s).await {
                tracing::error!(error = %e, "CNI config watch ended");
            }
        });
        (cfg, task)
    });

    // Initial sync: until it succeeds the daemon is not ready.
    {
        let (reconciler, ready) = (Arc::clone(&reconciler), Arc::clone(&ready));
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                match reconciler.run(Depth::Full).await {
                    Ok(_) => {
                        ready.store(true, Ordering::Release);
                        tracing::info!("initial sync complete");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "initial sync failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }
    let watch = tokio::spawn(Arc::clone(&reconciler).watch_loop(config.resync, stopped()));

    let http = listeners.http.map(|l| {
        // The wire's counters are copied into the registry right before each scrape.
        let refresh: Option<http::Refresh> = wire.clone().map(|w| {
            let f: http::Refresh = Arc::new(move || {
                w.export_metrics();
                w.link_rows()
            });
            f
        });
        let app = http::router(
            metrics_handle,
            Arc::clone(&ready),
            Some(Arc::clone(&reconciler)),
            refresh,
        );
        let s = stopped();
        tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(s).await })
    });

    let wire_server = match (&wire, listeners.wire) {
        (Some(node), Some(l)) => {
            if config.wire_tls.is_some() {
                tracing::info!("node-to-node API: mutual TLS");
            } else {
                tracing::warn!(
                    "node-to-node API without TLS: peers are checked by address only (set MESHNET_WIRE_TLS_DIR)"
                );
            }
            let server =
                meshnet_wire::transport::grpc::serve(Arc::clone(node.transport()), l, stopped());
            Some(tokio::spawn(server))
        }
        (Some(_), None) => {
            anyhow::bail!("INTER_NODE_LINK_TYPE=GRPC needs the wire listener (--wire-addr)")
        }
        _ => None,
    };

    let api = api::LocalApi::new(Arc::clone(&reconciler), Arc::clone(&ready)).with_capture(capture);
    let grpc = tonic::transport::Server::builder()
        .add_service(meshnet_proto::v1::local_server::LocalServer::new(api))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listeners.local), stopped());
    tracing::info!(node = %config.node_name, host_ip = %config.host_ip, ?config.inter_node_link, "meshnetd serving");

    let grpc = tokio::spawn(grpc);
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    grpc.await?.context("local API server")?;
    if let Some(h) = http {
        h.await?.context("HTTP server")?;
    }
    if let Some(w) = wire_server {
        w.await?.context("wire server")?;
    }
    watch.await?;
    if let Some((cfg, task)) = installer {
        let _ = task.await;
        if config.keep_cni_config {
            tracing::info!(
                "keeping the CNI config and binary for the next meshnetd (uninstall: `meshnetd uninstall`)"
            );
        } else {
            match install::uninstall(&cfg) {
                Ok(_) => tracing::info!("CNI config and binary removed"),
                Err(e) => tracing::warn!(error = %e, "cannot remove the CNI config"),
            }
        }
    }
    Ok(())
}
