//! What a running job serves over HTTP, with axum on a thread of its own so that a request never
//! waits on the dataflow:
//!
//! - `--metrics-addr`: `/metrics` (Prometheus text format, see [`crate::metrics`]), `/healthz`
//!   (the process is up) and `/readyz` (its job has restored its state and reads its input);
//! - `--console`: a live page (`/`, built into the binary, nothing fetched from elsewhere) fed by
//!   server-sent events (`/events`: every half second, the alerts written since the last update,
//!   see [`crate::recent`], and a snapshot of the metrics). Read-only; on an address other than
//!   loopback it asks for a token (`?token=` or `Authorization: Bearer`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::METRICS;
use crate::recent::RECENT;

/// The console page.
const CONSOLE_PAGE: &str = include_str!("console.html");

/// How often the console's page is updated.
const CONSOLE_PERIOD: Duration = Duration::from_millis(500);

/// Serves the metrics endpoints on `addr` (port 0: any free port) until the process ends;
/// returns the address bound.
pub fn serve_metrics(addr: SocketAddr) -> Result<SocketAddr> {
    let router = Router::new()
        .route("/metrics", get(|| async { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], METRICS.render()) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    let bound = serve(addr, router, "metrics")?;
    tracing::info!("metrics on http://{bound}/metrics");
    Ok(bound)
}

/// Serves the console on `addr`; a token is required when `addr` is not loopback.
pub fn serve_console(addr: SocketAddr, token: Option<String>) -> Result<SocketAddr> {
    if !addr.ip().is_loopback() && token.is_none() {
        bail!("the console on {addr} (not loopback) needs a token: --console-token-file PATH or THREATFLOW_CONSOLE_TOKEN");
    }
    RECENT.enable();
    let token = token.map(Arc::new);
    let router = Router::new().route("/", get(page)).route("/events", get(events)).with_state(token);
    let bound = serve(addr, router, "console")?;
    tracing::info!("console on http://{bound}/");
    Ok(bound)
}

fn serve(addr: SocketAddr, router: Router, what: &'static str) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding the {what} address {addr}"))?;
    listener.set_nonblocking(true).with_context(|| format!("making the {what} listener non-blocking"))?;
    let bound = listener.local_addr().with_context(|| format!("reading the {what} address"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().with_context(|| format!("starting the {what} server"))?;
    std::thread::Builder::new()
        .name(format!("{what}-server"))
        .spawn(move || {
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, router).await
            });
            if let Err(error) = served {
                tracing::error!("the {what} server stopped: {error}");
            }
        })
        .with_context(|| format!("starting the {what} server thread"))?;
    Ok(bound)
}

async fn readyz() -> impl IntoResponse {
    if METRICS.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: restoring, starting or finished\n")
    }
}

/// Whether a request carries the token (always, when there is none).
fn authorized(token: Option<&Arc<String>>, uri: &Uri, headers: &HeaderMap) -> bool {
    let Some(token) = token else { return true };
    let in_query = uri.query().is_some_and(|q| q.split('&').any(|pair| pair.strip_prefix("token=") == Some(token.as_str())));
    let in_header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) == Some(token.as_str());
    in_query || in_header
}

async fn page(State(token): State<Option<Arc<String>>>, uri: Uri, headers: HeaderMap) -> Response {
    if !authorized(token.as_ref(), &uri, &headers) {
        return (StatusCode::UNAUTHORIZED, "the console needs its token: ?token=…\n").into_response();
    }
    Html(CONSOLE_PAGE).into_response()
}

/// The page's updates: one at once with every alert kept, then one per period with what is new.
async fn events(State(token): State<Option<Arc<String>>>, uri: Uri, headers: HeaderMap) -> Response {
    if !authorized(token.as_ref(), &uri, &headers) {
        return (StatusCode::UNAUTHORIZED, "the console needs its token\n").into_response();
    }
    let updates = futures_util::stream::unfold(None, |seen: Option<u64>| async move {
        if seen.is_some() {
            tokio::time::sleep(CONSOLE_PERIOD).await;
        }
        let (last, alerts) = RECENT.after(seen.unwrap_or(0));
        let data = format!("{{\"alerts\":[{}],\"metrics\":{}}}", alerts.join(","), METRICS.snapshot());
        Some((Ok::<_, Infallible>(Event::default().event("update").data(data)), Some(last)))
    });
    Sse::new(updates).keep_alive(KeepAlive::default()).into_response()
}
