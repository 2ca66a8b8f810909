//! The HTTP receiving transports: xhr polling (one frame per request), xhr streaming and
//! eventsource (frames on one response until it has carried `STREAM_LIMIT` bytes; the client
//! then opens the next).
//!
//! What stays true: a request is the session's receiving connection for as long as it is open
//! (the `Receiving` it holds is dropped with the response body, when the client goes too); a
//! second concurrent receiver gets `c[2010,...]` and the first one keeps the session; a
//! streaming response ends after a close frame.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use futures_util::{StreamExt, stream};

use super::frame::{ANOTHER_CONNECTION, Frame};
use super::table::Receiving;
use super::{AppState, Ids, Refusal, answer, find_or_open};

/// Bytes a streaming response carries before it ends and the client reconnects (the protocol's
/// 128 KiB), so a browser never holds an ever-growing response.
const STREAM_LIMIT: usize = 128 * 1024;
/// `Content-Type` of the xhr transports' answers.
const JAVASCRIPT: &str = "application/javascript; charset=UTF-8";

/// How a transport wraps each frame and what it writes before the first.
#[derive(Debug, Clone, Copy)]
enum Style {
    Xhr,
    EventSource,
}

impl Style {
    fn wrap(self, frame: &Frame) -> String {
        match self {
            Style::Xhr => format!("{}\n", frame.encode()),
            Style::EventSource => format!("data: {}\r\n\r\n", frame.encode()),
        }
    }

    /// What comes before the first frame: 2 KiB of `h` for xhr streaming (some browsers show
    /// nothing of a response before that much), an empty line for eventsource.
    fn prelude(self) -> String {
        match self {
            Style::Xhr => format!("{}\n", "h".repeat(2048)),
            Style::EventSource => "\r\n".to_owned(),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Style::Xhr => JAVASCRIPT,
            Style::EventSource => "text/event-stream",
        }
    }
}

/// `POST .../xhr`: one frame (the open frame, queued messages, a heartbeat or the close).
pub(super) async fn xhr(
    State(app): State<Arc<AppState>>,
    ids: Path<Ids>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let frame = match open(&app, &ids, &query, &headers, "xhr-polling") {
        Ok(receiving) => receiving.next(app.config.sockjs_heartbeat).await,
        Err(Refused::Answer(refusal)) => return refusal.answer(&headers),
        Err(Refused::Busy(frame)) => frame,
    };
    typed(&headers, Style::Xhr, Style::Xhr.wrap(&frame))
}

/// `POST .../xhr_streaming`.
pub(super) async fn xhr_streaming(
    State(app): State<Arc<AppState>>,
    ids: Path<Ids>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    streaming(&app, &ids, &query, &headers, Style::Xhr, "xhr-streaming")
}

/// `GET .../eventsource`.
pub(super) async fn eventsource(
    State(app): State<Arc<AppState>>,
    ids: Path<Ids>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    streaming(
        &app,
        &ids,
        &query,
        &headers,
        Style::EventSource,
        "eventsource",
    )
}

/// Why a request does not become the session's receiving connection.
enum Refused {
    /// No session: 404, 403 or 503.
    Answer(Refusal),
    /// A frame to send and end with (another receiver is attached).
    Busy(Frame),
}

fn open(
    app: &Arc<AppState>,
    ids: &Path<Ids>,
    query: &Query<HashMap<String, String>>,
    headers: &HeaderMap,
    transport: &'static str,
) -> Result<Receiving, Refused> {
    let opened = find_or_open(app, ids, query, headers, transport).map_err(Refused::Answer)?;
    opened
        .session()
        .attach()
        .ok_or_else(|| Refused::Busy(Frame::close(ANOTHER_CONNECTION.0, ANOTHER_CONNECTION.1)))
}

fn typed(headers: &HeaderMap, style: Style, body: impl Into<Body>) -> Response {
    let mut response = answer(headers, Response::new(body.into()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(style.content_type()),
    );
    response
}

/// What a streaming response's body carries between chunks.
struct Streaming {
    receiving: Receiving,
    style: Style,
    heartbeat: std::time::Duration,
    sent: usize,
    done: bool,
}

fn streaming(
    app: &Arc<AppState>,
    ids: &Path<Ids>,
    query: &Query<HashMap<String, String>>,
    headers: &HeaderMap,
    style: Style,
    transport: &'static str,
) -> Response {
    let prelude = stream::once(async move { Ok::<_, Infallible>(Bytes::from(style.prelude())) });
    let receiving = match open(app, ids, query, headers, transport) {
        Ok(r) => r,
        Err(Refused::Answer(refusal)) => return refusal.answer(headers),
        Err(Refused::Busy(frame)) => {
            let last = stream::once(async move { Ok(Bytes::from(style.wrap(&frame))) });
            return typed(headers, style, Body::from_stream(prelude.chain(last)));
        }
    };
    let state = Streaming {
        receiving,
        style,
        heartbeat: app.config.sockjs_heartbeat,
        sent: 0,
        done: false,
    };
    let frames = stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let frame = st.receiving.next(st.heartbeat).await;
        let chunk = st.style.wrap(&frame);
        st.sent += chunk.len();
        st.done = frame.is_close() || st.sent >= STREAM_LIMIT;
        Some((Ok(Bytes::from(chunk)), st))
    });
    typed(headers, style, Body::from_stream(prelude.chain(frames)))
}
