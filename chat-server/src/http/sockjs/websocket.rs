//! The SockJS `websocket` transport: SockJS frames over a raw WebSocket at
//! `/ws/{server}/{session}/websocket`. The socket is the session's one receiving connection for
//! its whole life; the session is in no table (no other request can reach it).
//!
//! What stays true: every client message is a SockJS message body (a JSON array of strings, or
//! one string); a broken one closes this socket only; when the socket goes, the STOMP session
//! ends with it, and when the STOMP session ends, the socket gets its close frame and closes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tracing::debug;

use super::frame::{Frame, GO_AWAY, decode_messages};
use super::table::{Receiving, Session};
use super::{AppState, Ids, spawn_stomp};
use crate::http::{ConnectionGuard, READ_BUFFER, admit, transport_limit};

pub(super) async fn websocket(
    State(app): State<Arc<AppState>>,
    Path(ids): Path<Ids>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !ids.valid() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let guard: ConnectionGuard = match admit(&app, &headers) {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    let limit = transport_limit(app.config.max_frame_bytes);
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| {
            // Tracked like the STOMP session, so a drain waits for the close frame to go out.
            let tracker = app.tracker.clone();
            tracker.track_future(async move {
                let (session, inbound) = Session::new(app.config.outbound_queue);
                let Some(receiving) = session.attach() else {
                    return;
                };
                app.metrics.sockjs_session("websocket");
                spawn_stomp(&app, session.clone(), inbound, guard, &query);
                pump(socket, &session, receiving, &app).await;
                // However the socket went, its STOMP session goes too.
                session.end(Frame::close(GO_AWAY.0, GO_AWAY.1));
            })
        })
}

/// Moves frames between the socket and the session until either ends.
async fn pump(mut socket: WebSocket, session: &Arc<Session>, receiving: Receiving, app: &AppState) {
    let heartbeat = app.config.sockjs_heartbeat;
    // Kept across client messages, so a chatty client does not postpone the heartbeat.
    let mut next = Box::pin(receiving.next(heartbeat));
    loop {
        tokio::select! {
            frame = &mut next => {
                let close = frame.is_close();
                if socket.send(Message::Text(frame.encode().into())).await.is_err() || close {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                next = Box::pin(receiving.next(heartbeat));
            }
            msg = socket.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                };
                if text.trim().is_empty() {
                    continue;
                }
                let messages = match decode_messages(text.as_bytes()) {
                    Ok(m) => m,
                    Err(e) => {
                        debug!(error = %e, "broken SockJS websocket message: closing");
                        return;
                    }
                };
                let Some(tx) = session.sender() else { return };
                for m in messages {
                    if tx.send(Message::Text(m.into())).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
