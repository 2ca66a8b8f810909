//! The REST API: rooms, history, presence, and publishing from a backend.
//!
//! Every error is JSON `{"error": "..."}` with a fitting status; bodies and query strings are
//! parsed here (not by extractors) so that even malformed ones get a JSON answer.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use chat_wire::body::parse_message_body;

use super::AppState;
use crate::auth::bearer_token;
use crate::broker::BackendError;
use crate::broker::page::{MAX_PAGE, PageError, PageQuery};
use crate::model::{Draft, EventKind, EventRecord, Identity, is_valid_id};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    TooLarge(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        };
        let mut resp = (status, axum::Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        tracing::warn!(error = %e, "backend call failed");
        ApiError::Unavailable("message store unavailable, try again".into())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(format!("bad path: {}", r.body_text()))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge("request body too large".into())
        } else {
            ApiError::BadRequest(format!("bad body: {}", r.body_text()))
        }
    }
}

/// The `{id}` of a room URL; a malformed one is a JSON 400 like every other error.
struct RoomId(String);

impl<S: Send + Sync> FromRequestParts<S> for RoomId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(r)| RoomId(r))
            .map_err(ApiError::from)
    }
}

/// A room of the URL that the caller may use: a valid id their credentials allow. A malformed id
/// or missing credentials are refused before the handler runs, in that order.
struct AllowedRoom(String);

impl FromRequestParts<Arc<AppState>> for AllowedRoom {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let RoomId(room) = RoomId::from_request_parts(parts, app).await?;
        room_access(app, &parts.headers, &room)?;
        Ok(AllowedRoom(room))
    }
}

/// A request body; one over the limit is a JSON 413.
struct Body(Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(ApiError::from)
    }
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/rooms", get(list_rooms).post(create_room))
        .route("/api/rooms/{id}", get(get_room))
        .route("/api/rooms/{id}/messages", get(history).post(publish))
        .route("/api/rooms/{id}/presence", get(presence))
}

fn identity(app: &AppState, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let token = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
            Some(
                bearer_token(v)
                    .ok_or_else(|| ApiError::Unauthorized("expected a Bearer token".into()))?,
            )
        }
    };
    app.auth
        .authenticate(token, None)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))
}

fn room_access(app: &AppState, headers: &HeaderMap, room: &str) -> Result<Identity, ApiError> {
    if !is_valid_id(room) {
        return Err(ApiError::BadRequest(
            "room id must be 1-128 characters of [A-Za-z0-9_.-]".into(),
        ));
    }
    let id = identity(app, headers)?;
    if !id.may_use_room(room) {
        return Err(ApiError::Forbidden(format!("not allowed in room {room:?}")));
    }
    Ok(id)
}

async fn list_rooms(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = identity(&app, &headers)?;
    let rooms: Vec<_> = app
        .services
        .history
        .rooms()
        .await?
        .into_iter()
        .filter(|r| id.may_use_room(&r.id))
        .collect();
    Ok(axum::Json(json!({ "rooms": rooms })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    id: String,
}

/// The request's Content-Type, or "" when it has none (or none in ASCII).
fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    if !content_type(headers).starts_with("application/json") {
        return Err(ApiError::BadRequest(
            "expected Content-Type: application/json".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

async fn create_room(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let req: CreateRoom = json_body(&headers, &body)?;
    room_access(&app, &headers, &req.id)?;
    if !app.services.history.create_room(&req.id).await? {
        return Err(ApiError::Conflict(format!("room {:?} exists", req.id)));
    }
    let info = app.services.history.info(&req.id).await?;
    Ok((StatusCode::CREATED, axum::Json(json!(info))).into_response())
}

async fn get_room(
    State(app): State<Arc<AppState>>,
    AllowedRoom(room): AllowedRoom,
) -> Result<Response, ApiError> {
    let info = app
        .services
        .history
        .info(&room)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no room {room:?}")))?;
    let members = app.services.presence.members(&room).await?;
    Ok(axum::Json(json!({
        "id": info.id, "epoch": info.epoch, "lastOffset": info.last_offset,
        "firstOffset": info.first_offset, "members": members.len(),
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    since: Option<u64>,
    before: Option<u64>,
    limit: Option<usize>,
    epoch: Option<String>,
}

impl From<PageError> for ApiError {
    fn from(e: PageError) -> Self {
        match e {
            PageError::NotFound(m) => ApiError::NotFound(m),
            PageError::ArchiveUnavailable(m) => ApiError::Unavailable(m),
            PageError::Backend(e) => e.into(),
        }
    }
}

async fn history(
    State(app): State<Arc<AppState>>,
    AllowedRoom(room): AllowedRoom,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q: HistoryQuery =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).map_err(|e| {
            ApiError::BadRequest(format!(
                "bad query: {e} (since, before and limit are whole numbers, epoch an epoch)"
            ))
        })?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!("limit must be 1-{MAX_PAGE}")));
    }
    if q.before == Some(0) {
        return Err(ApiError::BadRequest(
            "before must be at least 1 (offsets start at 1)".into(),
        ));
    }
    if let Some(e) = &q.epoch
        && !is_valid_id(e)
    {
        return Err(ApiError::BadRequest(format!("bad epoch {e:?}")));
    }
    let query = PageQuery {
        epoch: q.epoch,
        since: q.since,
        before: q.before,
        limit,
    };
    let page = app.services.history.page(&room, &query).await?;
    let messages: Vec<&EventRecord> = page.events.iter().map(|e| &e.record).collect();
    let mut body = json!({
        "roomId": room, "epoch": page.info.epoch, "firstOffset": page.info.first_offset,
        "lastOffset": page.info.last_offset, "from": page.from, "to": page.to,
        "hasMore": page.has_more, "missing": page.missing, "messages": messages,
    });
    if let Some(previous) = page.previous_epoch {
        body["previousEpoch"] = json!(previous);
    }
    Ok(axum::Json(body).into_response())
}

async fn publish(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    RoomId(room): RoomId,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let id = room_access(&app, &headers, &room)?;
    if headers.get(header::AUTHORIZATION).is_none() && !app.config.allow_anonymous {
        return Err(ApiError::Unauthorized(
            "publishing needs a bearer token".into(),
        ));
    }
    let ct = content_type(&headers);
    if !(ct.starts_with("application/json") || ct.starts_with("text/plain")) {
        return Err(ApiError::BadRequest(
            "expected Content-Type application/json or text/plain".into(),
        ));
    }
    let message = parse_message_body(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let mut draft = Draft::new(
        EventKind::Chat,
        id.sender(),
        message.content,
        &app.config.server_id,
    );
    draft.extra = message.extra;
    let event = app.services.broker.publish(&room, draft).await?;
    app.metrics.messages_published.inc();
    Ok((StatusCode::CREATED, axum::Json(json!(event.record))).into_response())
}

async fn presence(
    State(app): State<Arc<AppState>>,
    AllowedRoom(room): AllowedRoom,
) -> Result<Response, ApiError> {
    let members = app.services.presence.members(&room).await?;
    Ok(axum::Json(json!({ "roomId": room, "members": members })).into_response())
}
