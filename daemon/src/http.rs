//! The daemon's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process serves),
//! `/readyz` (initial store sync done: the daemon can serve ADD).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// Brings values kept outside the metrics registry (the wire's counters) into it.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    refresh: Option<Refresh>,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    if let Some(f) = &s.refresh {
        f();
    }
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
/// `refresh` runs before each `/metrics` render.
pub fn router(
    metrics_handle: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    refresh: Option<Refresh>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            metrics: metrics_handle,
            ready,
            refresh,
        })
}
