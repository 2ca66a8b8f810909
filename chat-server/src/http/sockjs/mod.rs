//! The SockJS endpoint beside the raw WebSocket: what Spring front-ends reach with
//! `new SockJS('/ws')`. Each SockJS session runs one STOMP session (`session::run`) over an
//! adapter (`adapter`), so everything a `/ws` connection has (limits, auth, drain) holds here.
//!
//! `frame` is the protocol's framing, `table` the sessions and their reaping, `receive` the
//! HTTP receiving transports (xhr polling, xhr streaming, eventsource), `send` is `xhr_send`,
//! `websocket` the SockJS-framed WebSocket. Every session takes one place under the connection
//! limit for as long as its STOMP session runs; bad input is answered on its own request only.

mod adapter;
mod frame;
mod receive;
mod send;
mod table;
mod websocket;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tracing::debug;

pub(crate) use table::Table;

use self::adapter::Transport;
use self::table::Session;
use super::{AppState, admit};

/// `Cache-Control` of every answer that must not be cached.
const NO_STORE: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
/// How long a browser may keep a CORS preflight's answer (the protocol's one year).
const PREFLIGHT_MAX_AGE: &str = "31536000";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ws/", get(|| async { "Welcome to SockJS!\n" }))
        .route("/ws/info", get(info).options(preflight_get))
        .route(
            "/ws/{server}/{session}/xhr",
            post(receive::xhr).options(preflight_post),
        )
        .route(
            "/ws/{server}/{session}/xhr_streaming",
            post(receive::xhr_streaming).options(preflight_post),
        )
        .route(
            "/ws/{server}/{session}/eventsource",
            get(receive::eventsource),
        )
        .route(
            "/ws/{server}/{session}/xhr_send",
            post(send::xhr_send).options(preflight_post),
        )
        .route(
            "/ws/{server}/{session}/websocket",
            get(websocket::websocket),
        )
}

/// The CORS headers of every SockJS answer: the caller's origin (or `*`) with credentials, as
/// the protocol asks (sockjs-client sends its XHRs with credentials).
fn cors(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let origin = headers
        .get(header::ORIGIN)
        .filter(|o| o.as_bytes() != b"null")
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    let mut out = vec![
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin),
        (
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ),
    ];
    if let Some(h) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone()));
    }
    out
}

fn with_headers(mut response: Response, headers: Vec<(HeaderName, HeaderValue)>) -> Response {
    response.headers_mut().extend(headers);
    response
}

/// An answer to a SockJS request: CORS and no caching.
fn answer(request: &HeaderMap, response: impl IntoResponse) -> Response {
    let mut h = cors(request);
    h.push((header::CACHE_CONTROL, HeaderValue::from_static(NO_STORE)));
    with_headers(response.into_response(), h)
}

async fn info(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let body = serde_json::json!({
        "websocket": true,
        "cookie_needed": false,
        "origins": ["*:*"],
        "entropy": rand::random::<u32>(),
    });
    debug!(sessions = app.sockjs.len(), "SockJS info");
    answer(&headers, axum::Json(body))
}

fn preflight(headers: &HeaderMap, methods: &'static str) -> Response {
    let mut h = cors(headers);
    h.extend([
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        ),
        (
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        ),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000"),
        ),
    ]);
    with_headers(StatusCode::NO_CONTENT.into_response(), h)
}

async fn preflight_get(headers: HeaderMap) -> Response {
    preflight(&headers, "OPTIONS, GET")
}

async fn preflight_post(headers: HeaderMap) -> Response {
    preflight(&headers, "OPTIONS, POST")
}

/// The server and session ids of a transport URL; the protocol forbids empty ids and dots.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Ids {
    server: String,
    session: String,
}

impl Ids {
    fn valid(&self) -> bool {
        [&self.server, &self.session]
            .iter()
            .all(|id| !id.is_empty() && !id.contains('.'))
    }
}

/// A session found by id, or a new one, registered and running its STOMP session.
enum Opened {
    Found(Arc<Session>),
    New(Arc<Session>),
}

impl Opened {
    fn session(&self) -> &Arc<Session> {
        match self {
            Opened::Found(s) | Opened::New(s) => s,
        }
    }
}

/// Why a session could not be found or opened.
#[derive(Debug)]
enum Refusal {
    NotFound,
    Api(super::ApiError),
}

impl Refusal {
    fn answer(self, headers: &HeaderMap) -> Response {
        match self {
            Refusal::NotFound => answer(headers, StatusCode::NOT_FOUND),
            Refusal::Api(e) => answer(headers, e),
        }
    }
}

/// Finds the session of `ids` or, for a receiving transport, opens it: admitted like a
/// WebSocket (drain, origin, connection limit) and authenticated by the URL's `access_token`.
fn find_or_open(
    app: &Arc<AppState>,
    Path(ids): &Path<Ids>,
    query: &Query<HashMap<String, String>>,
    headers: &HeaderMap,
    transport: &'static str,
) -> Result<Opened, Refusal> {
    if !ids.valid() {
        return Err(Refusal::NotFound);
    }
    if let Some(s) = app.sockjs.get(&ids.session) {
        return Ok(Opened::Found(s));
    }
    let guard = admit(app, headers).map_err(Refusal::Api)?;
    let (session, inbound) = Session::new(app.config.outbound_queue);
    if !app.sockjs.insert(&ids.session, session.clone()) {
        // Another request opened it first.
        return app
            .sockjs
            .get(&ids.session)
            .map(Opened::Found)
            .ok_or(Refusal::NotFound);
    }
    app.sockjs.start_reaper(app.config.sockjs_disconnect);
    app.metrics.sockjs_session(transport);
    spawn_stomp(app, session.clone(), inbound, guard, query);
    Ok(Opened::New(session))
}

/// Runs the STOMP session of a SockJS session, holding its connection place until it ends.
fn spawn_stomp(
    app: &Arc<AppState>,
    session: Arc<Session>,
    inbound: tokio::sync::mpsc::Receiver<axum::extract::ws::Message>,
    guard: super::ConnectionGuard,
    query: &Query<HashMap<String, String>>,
) {
    let token = query.get("access_token").cloned();
    let cx = app.session.clone();
    app.tracker.spawn(async move {
        let _guard = guard;
        crate::session::run(Transport::new(session, inbound), cx, token).await;
    });
}
