//! The daemon's HTTP endpoints: `/metrics` (Prometheus text: the recorder's metrics plus the
//! kernel links' counters, [`crate::linkstats`]), `/healthz` (the process serves), `/readyz`
//! (initial store sync done: the daemon can serve ADD).

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

#[derive(Clone)]
struct AppState {
    metrics: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    reconciler: Option<Arc<Reconciler>>,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    match &s.metrics {
        Some(h) => {
            let mut text = h.render();
            if let Some(r) = &s.reconciler {
                let ends = linkstats::collect(r.kernel_links()).await;
                text = linkstats::merge(&text, &linkstats::families(&ends));
            }
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
/// given) supplies the live kernel links whose counters `/metrics` adds.
pub fn router(
    metrics_handle: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    reconciler: Option<Arc<Reconciler>>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            metrics: metrics_handle,
            ready,
            reconciler,
        })
}
