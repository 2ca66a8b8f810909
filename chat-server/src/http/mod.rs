//! HTTP: the chat page, health, readiness, metrics, the WebSocket endpoint, its SockJS
//! endpoint (`sockjs`) and the REST API.

mod api;
mod sockjs;
mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

pub(crate) use api::ApiError;
pub use state::AppState;

/// The chat page, built into the binary: it needs nothing from the network.
const INDEX_HTML: &str = include_str!("../../static/index.html");
/// WebSocket read buffer per connection (client frames are small; larger ones take more reads).
pub(crate) const READ_BUFFER: usize = 512;
/// Bytes of frames gathered before a write; a flush writes whatever is gathered.
const WRITE_BUFFER: usize = 16 * 1024;

pub(crate) fn router(app: Arc<AppState>) -> Router {
    let body_limit = app.config.max_frame_bytes;
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ws", get(websocket))
        .merge(sockjs::routes())
        .merge(api::routes())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let checks = [
        ("draining", !app.drain.is_cancelled()),
        ("broker", app.services.broker.is_ready()),
        ("registry", app.services.registry.is_registered()),
    ];
    let failing: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if failing.is_empty() {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "not ready", "failing": failing})),
        )
            .into_response()
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

/// The largest WebSocket message read at all: 16 frames' worth, at least 1 MiB.
pub(crate) fn transport_limit(max_frame: usize) -> usize {
    max_frame.saturating_mul(16).max(1 << 20)
}

/// Decrements the connection count however the session ends.
pub(crate) struct ConnectionGuard(Arc<AppState>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections.dec();
    }
}

/// Admits one more connection (a WebSocket, or a SockJS session): refused while draining, from
/// an origin not allowed, or past the connection limit. The guard holds its place.
pub(crate) fn admit(app: &Arc<AppState>, headers: &HeaderMap) -> Result<ConnectionGuard, ApiError> {
    if app.drain.is_cancelled() {
        app.metrics.connections_refused.inc();
        return Err(ApiError::Unavailable("server is shutting down".into()));
    }
    if !app.config.allowed_origins.is_empty() {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .map(|o| o.trim_end_matches('/'));
        // Browsers always send Origin, and it is browsers this protects (pages of other sites);
        // other clients may send none, and could forge any.
        let allowed = origin.is_none_or(|o| {
            app.config
                .allowed_origins
                .iter()
                .any(|a| a == o || a == "*")
        });
        if !allowed {
            app.metrics.connections_refused.inc();
            return Err(ApiError::Forbidden("origin not allowed".into()));
        }
    }
    let open = app.connections.fetch_add(1, Ordering::AcqRel);
    if open >= app.config.max_connections {
        app.connections.fetch_sub(1, Ordering::AcqRel);
        app.metrics.connections_refused.inc();
        return Err(ApiError::Unavailable("too many connections".into()));
    }
    app.metrics.connections.inc();
    app.metrics.connections_total.inc();
    Ok(ConnectionGuard(app.clone()))
}

async fn websocket(
    State(app): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let guard = match admit(&app, &headers) {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    let token = query.get("access_token").cloned();
    let max = app.config.max_frame_bytes;
    let tracker = app.tracker.clone();
    ws.protocols(["v12.stomp", "v11.stomp", "v10.stomp"])
        // Well above the frame limit, so the codec answers an oversize frame with a clean ERROR
        // after reading it whole; only far larger messages fail in the transport.
        .max_message_size(transport_limit(max))
        .max_frame_size(transport_limit(max))
        // Small per-connection buffers: most connections are idle most of the time.
        .read_buffer_size(READ_BUFFER)
        // Frames are fed in batches and flushed once: buffered, a batch goes out in one write
        // instead of one `sendto` per frame.
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                let _guard = guard;
                crate::session::run(socket, app.session.clone(), token).await;
            })
        })
}
