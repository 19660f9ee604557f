//! The admin listener (axum, HTTP/1.1): `/metrics`, `/healthz`, `/readyz`,
//! and on the relay that keeps the statistics store `/stats/report`.
//!
//! It binds to 127.0.0.1 by default and has no other routes; it has no
//! authentication, so it belongs on loopback or a private network. `/metrics`
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
    /// On the relay that keeps the statistics store: its `[stats]`.
    pub stats: Option<Arc<crate::config::Stats>>,
}

/// `/stats/report?from=YYYY-MM&to=YYYY-MM&format=html|table|csv|json|svg`:
/// the report `fluister stats report` prints, small numbers hidden.
async fn stats_report(
    State(state): State<AdminState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> axum::response::Response {
    let bad = |status: StatusCode, message: String| {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            message + "\n",
        )
            .into_response()
    };
    let Some(stats) = state.stats.clone() else {
        return bad(
            StatusCode::NOT_FOUND,
            "this relay keeps no statistics store".into(),
        );
    };
    let (mut from, mut to, mut format) = (None, None, crate::stats::Format::Html);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "from" => from = Some(value.into_owned()),
            "to" => to = Some(value.into_owned()),
            "format" => match crate::stats::Format::parse(&value) {
                Some(f) => format = f,
                None => {
                    return bad(
                        StatusCode::BAD_REQUEST,
                        format!("format {value:?}: one of table, csv, json, svg, html"),
                    );
                }
            },
            other => {
                return bad(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}: from, to and format are known"),
                );
            }
        }
    }
    let (from, to) = match crate::stats::report::months(from.as_deref(), to.as_deref()) {
        Ok(range) => range,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    let built = tokio::task::spawn_blocking(move || {
        let path = stats.store.clone().ok_or("no store")?;
        let counts = crate::stats::Store::open_read_only(&path)
            .and_then(|s| s.counts(from, to))
            .map_err(|e| e.to_string())?;
        let report = crate::stats::Report::build(&stats, &counts, from, to);
        Ok::<_, String>(crate::stats::render(&report, format))
    })
    .await;
    match built {
        Ok(Ok(body)) => (
            [
                (header::CONTENT_TYPE, format.content_type()),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Ok(Err(e)) => bad(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(_) => bad(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the report failed".into(),
        ),
    }
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
        .route("/stats/report", get(stats_report))
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
