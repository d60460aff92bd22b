//! The daemon's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process serves),
//! `/readyz` (initial store sync done: the daemon can serve ADD), `/topology` (this node's links as
//! JSON: see [`crate::view`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use meshnet_topology::store::SharedStore;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone)]
struct AppState {
    metrics: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    view: Option<ViewSource>,
}

/// What `/topology` is built from.
#[derive(Clone)]
pub struct ViewSource {
    pub store: SharedStore,
    pub node: String,
    pub host_ip: IpAddr,
}

impl std::fmt::Debug for ViewSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewSource")
            .field("node", &self.node)
            .field("host_ip", &self.host_ip)
            .finish_non_exhaustive()
    }
}

async fn topology(State(s): State<AppState>) -> axum::response::Response {
    let Some(v) = &s.view else {
        return (StatusCode::NOT_FOUND, "no topology view\n").into_response();
    };
    match crate::view::node_view(&v.store, &v.node, v.host_ip).await {
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
    match &s.metrics {
        Some(h) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        ),
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

/// The router; serve it with `axum::serve` on an already-bound listener.
pub fn router(
    metrics_handle: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    view: Option<ViewSource>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/topology", get(topology))
        .with_state(AppState {
            metrics: metrics_handle,
            ready,
            view,
        })
}
