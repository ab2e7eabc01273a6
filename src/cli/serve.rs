//! The metrics endpoint of `--metrics-addr`: `/metrics` (Prometheus text format, see
//! [`crate::metrics`]), `/healthz` (the process is up) and `/readyz` (its job has restored its
//! state and reads its input), served by axum on a thread of its own so that scrapes never wait
//! on the dataflow.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::METRICS;

/// Binds `addr` (port 0: any free port) and serves the endpoints until the process ends; returns
/// the address bound.
pub fn serve_metrics(addr: SocketAddr) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding the metrics address {addr}"))?;
    listener.set_nonblocking(true).context("making the metrics listener non-blocking")?;
    let bound = listener.local_addr().context("reading the metrics address")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().context("starting the metrics server")?;
    std::thread::Builder::new()
        .name("metrics-server".into())
        .spawn(move || {
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, router()).await
            });
            if let Err(error) = served {
                tracing::error!("the metrics server stopped: {error}");
            }
        })
        .context("starting the metrics server thread")?;
    tracing::info!("metrics on http://{bound}/metrics");
    Ok(bound)
}

fn router() -> Router {
    Router::new()
        .route("/metrics", get(|| async { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], METRICS.render()) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
}

async fn readyz() -> impl IntoResponse {
    if METRICS.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: restoring, starting or finished\n")
    }
}
