//! The daemon's HTTP endpoints: `/metrics` (Prometheus text: the recorder's metrics plus the
//! kernel links' counters, [`crate::linkstats`]), `/healthz` (the process serves), `/readyz`
//! (initial store sync done: the daemon can serve ADD), `/topology` (this node's links as JSON:
//! see [`crate::view`]); and [`bind_tcp`], how the daemon's TCP listeners (these endpoints and
//! the node-to-node wire) are bound.
//!
//! Listeners default to `[::]:PORT` with `IPV6_V6ONLY` off: one socket that accepts IPv6 and
//! IPv4 (as v4-mapped addresses), so an IPv6-only or IPv6-first node is served like an IPv4 one
//! whatever the host's `net.ipv6.bindv6only` says. A kernel without IPv6 gets `0.0.0.0:PORT`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::linkstats;
use crate::reconcile::Reconciler;

/// Brings values kept outside the metrics registry (the wire's per-peer counters) into it, and
/// returns the per-link rows of links that the reconciler's kernel list does not cover (the
/// wire's halves), rendered fresh at each scrape.
pub type Refresh = Arc<dyn Fn() -> Vec<linkstats::Row> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    reconciler: Option<Arc<Reconciler>>,
    refresh: Option<Refresh>,
}

/// `/topology`: this node's links, as [`crate::view::node_view`] builds them.
async fn topology(State(s): State<AppState>) -> axum::response::Response {
    let Some(r) = &s.reconciler else {
        return (StatusCode::NOT_FOUND, "no topology view\n").into_response();
    };
    match crate::view::node_view(r.store(), &r.node().name, r.node().ip).await {
        Ok(view) => match serde_json::to_string(&view) {
            Ok(body) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        },
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the topology store: {e}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut rows = s.refresh.as_ref().map(|f| f()).unwrap_or_default();
    match &s.metrics {
        Some(h) => {
            let mut text = h.render();
            if let Some(r) = &s.reconciler {
                let ends = linkstats::collect(r.kernel_links()).await;
                rows.extend(ends.iter().map(|(l, e)| linkstats::Row::kernel(l, e)));
            }
            text = linkstats::merge(&text, &linkstats::families(&rows));
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                text,
            )
        }
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics recorder not installed\n".to_string(),
        ),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "initial store sync pending\n",
        )
    }
}

/// The router; serve it with `axum::serve` on an already-bound listener. `reconciler` (when
/// given) supplies the live kernel links whose counters `/metrics` adds, and `/topology`;
/// `refresh` runs before each `/metrics` render.
pub fn router(
    metrics_handle: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    reconciler: Option<Arc<Reconciler>>,
    refresh: Option<Refresh>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/topology", get(topology))
        .with_state(AppState {
            metrics: metrics_handle,
            ready,
            reconciler,
            refresh,
        })
}

/// The backlog of the daemon's TCP listeners (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 1024;

/// Binds a TCP listener on `addr` (`SO_REUSEADDR`, close-on-exec, non-blocking). An IPv6
/// address is bound with `IPV6_V6ONLY` off, so `[::]:PORT` also accepts IPv4. When the kernel has
/// no IPv6 at all and `addr` is `[::]`, binds `0.0.0.0` on the same port instead (and says so).
/// Must be called inside a tokio runtime.
///
/// # Errors
/// The socket cannot be made, bound (address in use, not on this node) or listened on.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    use nix::sys::socket::{Backlog, SockType, listen};
    let fd = bind_dual(addr, SockType::Stream)?;
    listen(&fd, Backlog::new(LISTEN_BACKLOG).map_err(io::Error::from)?)?;
    tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd))
}

/// A socket of type `ty` bound to `addr` (close-on-exec, non-blocking; `SO_REUSEADDR` for
/// streams only: two UDP sockets must not share a port). An IPv6 address is bound with
/// `IPV6_V6ONLY` off; a kernel without IPv6 gets `0.0.0.0` on the same port for `[::]`.
///
/// # Errors
/// The socket cannot be made or bound.
pub(crate) fn bind_dual(addr: SocketAddr, ty: nix::sys::socket::SockType) -> io::Result<OwnedFd> {
    match bound_fd(addr, ty) {
        Err(e)
            if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                && addr.is_ipv6()
                && addr.ip().is_unspecified() =>
        {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(%addr, fallback = %v4, "no IPv6 in this kernel: listening on IPv4 only");
            bound_fd(v4, ty)
        }
        r => r,
    }
}

fn bound_fd(addr: SocketAddr, ty: nix::sys::socket::SockType) -> io::Result<OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt,
    };
    let family = if addr.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let fd = socket(
        family,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if ty == SockType::Stream {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One accepted connection per family, each answered, through one `[::]` listener.
    #[tokio::test]
    async fn an_ipv6_wildcard_listener_accepts_ipv4_and_ipv6() {
        let l = bind_tcp("[::]:0".parse().expect("addr")).expect("bind [::]:0");
        let local = l.local_addr().expect("local addr");
        assert!(local.is_ipv6(), "{local}");
        let port = local.port();
        let server = tokio::spawn(async move {
            let mut peers = Vec::new();
            for _ in 0..2 {
                let (mut s, peer) = l.accept().await.expect("accept");
                s.write_all(b"hi").await.expect("write");
                peers.push(peer);
            }
            peers
        });
        for target in [
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ] {
            let mut c = tokio::net::TcpStream::connect(target)
                .await
                .unwrap_or_else(|e| panic!("connecting to {target}: {e}"));
            let mut buf = [0u8; 2];
            c.read_exact(&mut buf).await.expect("read");
            assert_eq!(&buf, b"hi", "{target}");
        }
        let peers = server.await.expect("server");
        assert!(
            peers[0].to_string().starts_with("[::ffff:127.0.0.1]"),
            "IPv4 arrives v4-mapped: {peers:?}"
        );
        assert_eq!(peers[1].ip(), std::net::Ipv6Addr::LOCALHOST);
    }

    #[tokio::test]
    async fn an_ipv4_address_binds_ipv4_only_and_a_taken_port_is_an_error() {
        let l = bind_tcp("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = l.local_addr().expect("local addr");
        assert!(addr.is_ipv4());
        let again = bind_tcp(addr).expect_err("the port is taken");
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse);
    }
}
