//! `xhr_send`: the client's messages, a JSON array of strings, each one a chunk of STOMP text
//! for the session.
//!
//! What stays true: a bad body is refused with the protocol's 500 and text and changes nothing;
//! an unknown or ended session is a 404; the body is bounded by the router's limit (the frame
//! limit); a full inbound channel makes this request wait, not the others.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::Message;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::debug;

use super::frame::decode_messages;
use super::{AppState, Ids, answer};

pub(super) async fn xhr_send(
    State(app): State<Arc<AppState>>,
    Path(ids): Path<Ids>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(tx) = ids
        .valid()
        .then(|| app.sockjs.get(&ids.session))
        .flatten()
        .and_then(|s| s.sender())
    else {
        return answer(&headers, StatusCode::NOT_FOUND);
    };
    let messages = match decode_messages(&body) {
        Ok(m) => m,
        Err(e) => {
            debug!(error = %e, "refused a SockJS send");
            return answer(&headers, (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
        }
    };
    for m in messages {
        if tx.send(Message::Text(m.into())).await.is_err() {
            // The STOMP session ended while this request waited.
            return answer(&headers, StatusCode::NOT_FOUND);
        }
    }
    let mut response = answer(&headers, StatusCode::NO_CONTENT.into_response());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}
