//! The server API on rooms: post a message, read pages of history, list who is there,
//! delete a message.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::caller::ApiCaller;
use super::error::{ApiError, ErrorBody, Refusals};
use super::{json_body, path, query};
use crate::history::{self, HistoryPage, PageError};
use crate::protocol::{
    self, HistoryRequest, MAX_TOKEN_LEN, Member, Rejection, SendRequest, StreamId,
};
use crate::state::AppState;
use crate::store::Deletion;

/// A message to post, as a WebSocket `send` carries it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// The name shown as its author: 1 to 32 characters, no control characters.
    #[schema(example = "Deploy bot")]
    name: String,
    /// 1 to 2000 characters; no control characters but newlines.
    #[schema(example = "v42 is live")]
    text: String,
    /// Your id for this message, 1 to 64 characters of `A-Z a-z 0-9 _ - : .`: a retry
    /// with the same `cid` within 300 s is not stored again and gets the same `id`.
    /// Each caller (`sub`) has its own.
    #[schema(example = "deploy-42")]
    cid: Option<String>,
}

/// A message stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Posted {
    /// Its stream id.
    #[schema(example = "1700000000000-0")]
    id: String,
    #[schema(example = "lobby")]
    room: String,
    /// `true`: the `cid` had been stored before, as `id`; nothing new was posted.
    duplicate: bool,
}

/// Where a page of history starts and how long it is.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Messages before this stream id (a message's `id`, or the previous page's
    /// `cursor`), newest first.
    #[param(example = "1700000000000-0")]
    before: Option<String>,
    /// Messages after this stream id, oldest first (paging forward).
    after: Option<String>,
    /// Messages per page, 1 to 200; 50 when absent.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The room's `epoch` from the previous page: if the room's history was lost since,
    /// the answer is 409 `epoch_changed` rather than a page of another history.
    epoch: Option<String>,
}

/// Who is in a room now, across every instance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PresenceBody {
    #[schema(example = "lobby")]
    room: String,
    /// Users in the room, each once however many connections they have.
    count: usize,
    /// The first 1000 of them, by name.
    members: Vec<Member>,
}

const ROOM: &str = "a room name: 1 to 64 characters of A-Z a-z 0-9 _ -";

/// Posts a message to a room.
///
/// Stored and delivered to the room's clients on every instance as a WebSocket `send`
/// would be, under the same limits, its frame marked `"from":"api"` with the caller's
/// `sub`. A room is created by its first message.
#[utoipa::path(
    post,
    path = "/api/v1/rooms/{room}/messages",
    tag = "rooms",
    params(("room" = String, Path, description = ROOM)),
    request_body = PostMessage,
    responses(
        (status = 200, description = "Stored (or stored before, for a repeated `cid`)", body = Posted),
        Refusals,
    ),
)]
pub async fn post_message(
    State(state): State<Arc<AppState>>,
    caller: ApiCaller,
    room: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<Posted>, ApiError> {
    let room = protocol::parse_room(&path(room)?)?;
    let post: PostMessage = json_body(&body)?;
    protocol::validate_name(&post.name)?;
    protocol::validate_text(&post.text)?;
    if let Some(cid) = &post.cid
        && !protocol::valid_token(cid)
    {
        return Err(Rejection::new(
            "invalid_cid",
            format!("\"cid\" must be 1 to {MAX_TOKEN_LEN} characters of A-Z a-z 0-9 _ - : ."),
        )
        .into());
    }
    let message = SendRequest {
        room: Some(room.clone()),
        name: post.name,
        text: post.text,
        cid: post.cid,
        sub: Some(caller.sub),
        from: Some("api".to_owned()),
    };
    let stored = state.store.append(&room, &message).await?;
    if !stored.duplicate {
        state.metrics.messages_in.increment(1);
    }
    Ok(Json(Posted {
        id: stored.id.to_string(),
        room,
        duplicate: stored.duplicate,
    }))
}

/// Reads a page of a room's history.
///
/// Newest first from the newest message or before `before`; oldest first after `after`.
/// Pages are cut by stream id: pass the answer's `cursor` as the next `before` (or
/// `after`) to get the next page, with no gap and no duplicate. A deleted message is a
/// `deleted` frame in its place. A room that has no history has an empty page.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room}/messages",
    tag = "rooms",
    params(("room" = String, Path, description = ROOM), HistoryQuery),
    responses(
        (status = 200, description = "A page of messages", body = HistoryPage),
        (status = 409, description = "`epoch` is not the room's any more (`epoch_changed`)", body = ErrorBody),
        Refusals,
    ),
)]
pub async fn history(
    State(state): State<Arc<AppState>>,
    _caller: ApiCaller,
    room: Result<Path<String>, PathRejection>,
    params: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let room = protocol::parse_room(&path(room)?)?;
    let params = query(params)?;
    let limit = match params.limit.as_deref() {
        None => None,
        Some(limit) => Some(
            limit
                .parse::<u64>()
                .map_err(|_| protocol::limit_rejection())?,
        ),
    };
    let request = HistoryRequest {
        room,
        bound: protocol::parse_bound(params.before.as_deref(), params.after.as_deref())?,
        limit: protocol::parse_limit(limit)?,
        epoch: params
            .epoch
            .as_deref()
            .map(protocol::parse_epoch)
            .transpose()?,
    };
    match history::read(&state.store, &request).await {
        Ok(page) => Ok(Json(page.body()).into_response()),
        Err(PageError::Store(error)) => Err(error.into()),
        Err(PageError::EpochChanged) => Err(epoch_changed()),
    }
}

pub fn epoch_changed() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "epoch_changed",
        "the room's history is not the one the epoch names any more (it was lost): \
         start again from the newest messages, without before/after and epoch",
    )
}

/// Lists who is in a room now.
///
/// Users with a connection in the room on any instance, each once; an instance that
/// stopped answering is forgotten within `--presence-ttl-secs`.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room}/presence",
    tag = "rooms",
    params(("room" = String, Path, description = ROOM)),
    responses(
        (status = 200, description = "The room's members", body = PresenceBody),
        Refusals,
    ),
)]
pub async fn presence(
    State(state): State<Arc<AppState>>,
    _caller: ApiCaller,
    room: Result<Path<String>, PathRejection>,
) -> Result<Json<PresenceBody>, ApiError> {
    let room = protocol::parse_room(&path(room)?)?;
    // The count of every user, and the first MAX_LISTED_MEMBERS of them by name.
    let (count, members) = state.presence.members(&room).await?;
    Ok(Json(PresenceBody {
        room,
        count,
        members,
    }))
}

/// Deletes a message.
///
/// Every client of the room, on every instance, gets `{"type":"deleted","room":..,"id":..}`
/// at once; replays and history send `deleted` in its place, never its text again.
/// Recovery with `since` is not affected. Deleting it again changes nothing.
#[utoipa::path(
    delete,
    path = "/api/v1/rooms/{room}/messages/{id}",
    tag = "rooms",
    params(
        ("room" = String, Path, description = ROOM),
        ("id" = String, Path, description = "the message's stream id", example = "1700000000000-0"),
    ),
    responses(
        (status = 204, description = "Deleted (now or before)"),
        (status = 404, description = "No such message in the room (or trimmed from its history)", body = ErrorBody),
        Refusals,
    ),
)]
pub async fn delete_message(
    State(state): State<Arc<AppState>>,
    caller: ApiCaller,
    params: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (room, id) = path(params)?;
    let room = protocol::parse_room(&room)?;
    let id: StreamId = id
        .parse()
        .map_err(|e| Rejection::new("invalid_id", format!("invalid message id: {e}")))?;
    match state.store.delete(&room, id).await? {
        Deletion::Deleted(tombstone) => {
            tracing::info!(room, %id, %tombstone, by = caller.sub, "message deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Deletion::Already => Ok(StatusCode::NO_CONTENT),
        Deletion::NotFound => Err(ApiError::not_found(
            "not_found",
            format!("room {room:?} has no message {id} (never, or trimmed from its history)"),
        )),
    }
}
