//! The admin listener (axum, HTTP/1.1): `/metrics`, `/healthz`, `/readyz`.
//!
//! It binds to 127.0.0.1 by default and has no other routes. `/metrics`
//! asks the driver for a fresh snapshot of the core's gauges and returns
//! the Prometheus text format; `/healthz` answers while the process runs;
//! `/readyz` answers 200 while the relay accepts connections and 503 from
//! the moment a drain starts, and in a cluster while NATS has been out of
//! reach for more than a few seconds. It logs nothing about its callers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::{mpsc, oneshot, watch};

use super::metrics::Metrics;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// True while the relay accepts connections.
    pub ready: Arc<AtomicBool>,
    /// Asks the driver to refresh the gauges; answered when done.
    pub refresh: mpsc::Sender<oneshot::Sender<()>>,
    /// In a cluster: whether NATS is in reach.
    pub cluster: Option<Arc<super::cluster::Status>>,
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let (done_tx, done_rx) = oneshot::channel();
    // If the driver is gone (draining), the last gauges are served.
    if state.refresh.send(done_tx).await.is_ok() {
        let _ = done_rx.await;
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if !state.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if state.cluster.as_ref().is_some_and(|c| !c.serving()) {
        (StatusCode::SERVICE_UNAVAILABLE, "cluster unreachable\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Binds the admin listener; it serves until `stop` turns true.
pub async fn serve(
    listen: SocketAddr,
    state: AdminState,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await;
    });
    Ok(local)
}
