//! The server API on users: disconnect (and ban) a user everywhere, lift a ban.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::caller::ApiCaller;
use super::error::{ApiError, Refusals};
use super::{json_body, path};
use crate::moderation::Moderation;
use crate::protocol::Rejection;
use crate::state::AppState;

/// Longest ban: a year.
const MAX_BAN_SECONDS: u64 = 365 * 86_400;
/// Longest reason, in characters: it travels in a close frame (123 bytes at most).
const MAX_REASON_CHARS: usize = 80;
/// Longest `sub`, in bytes.
const MAX_SUB_BYTES: usize = 1024;

/// How to disconnect a user. An empty body (or none) disconnects without a ban.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Disconnect {
    /// Also refuse the user's new connections and joins for this long (1 to 31536000).
    #[schema(example = 600)]
    ban_seconds: Option<u64>,
    /// Shown to the user in the close frame's reason (at most 80 characters).
    #[schema(example = "spamming")]
    reason: Option<String>,
}

/// A disconnect on its way to every instance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Disconnected {
    #[schema(example = "u-alice")]
    sub: String,
    /// Unix milliseconds at which the ban ends; absent without a ban.
    #[serde(skip_serializing_if = "Option::is_none")]
    banned_until_ms: Option<u64>,
}

const SUB: &str = "the user's `sub`, as in their sign-in tokens";

/// Disconnects a user everywhere, and optionally bans them.
///
/// Every connection of the user, on every instance, is closed: with 4001 ("disconnected
/// by the operator", or the `reason`), or with `ban_seconds` with 4003 ("banned for N s:
/// <reason>"), and until the ban ends their new connections are closed with 4003 at
/// once and their joins refused. Answered once the request is recorded in Redis; the
/// instances close the connections within a second.
#[utoipa::path(
    post,
    path = "/api/v1/users/{sub}/disconnect",
    tag = "users",
    params(("sub" = String, Path, description = SUB)),
    request_body(content = Disconnect, description = "optional"),
    responses(
        (status = 202, description = "Every instance is closing the user's connections", body = Disconnected),
        Refusals,
    ),
)]
pub async fn disconnect(
    State(state): State<Arc<AppState>>,
    caller: ApiCaller,
    sub: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<(StatusCode, Json<Disconnected>), ApiError> {
    let sub = user(path(sub)?)?;
    let request: Disconnect = if body.iter().all(u8::is_ascii_whitespace) {
        Disconnect::default()
    } else {
        json_body(&body)?
    };
    let ban = match request.ban_seconds {
        None => None,
        Some(seconds @ 1..=MAX_BAN_SECONDS) => Some(Duration::from_secs(seconds)),
        Some(_) => {
            return Err(Rejection::new(
                "invalid_ban",
                format!("ban_seconds must be 1 to {MAX_BAN_SECONDS}"),
            )
            .into());
        }
    };
    if let Some(reason) = &request.reason
        && (reason.trim().is_empty()
            || reason.chars().count() > MAX_REASON_CHARS
            || reason.chars().any(char::is_control))
    {
        return Err(Rejection::new(
            "invalid_reason",
            format!("reason must be 1 to {MAX_REASON_CHARS} characters without control characters"),
        )
        .into());
    }
    let ban = Moderation::disconnect(&state.store, &sub, ban, request.reason).await?;
    tracing::info!(
        sub,
        banned = ban.is_some(),
        by = caller.sub,
        "disconnect requested"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(Disconnected {
            sub,
            banned_until_ms: ban.map(|ban| ban.until_ms),
        }),
    ))
}

/// Lifts a user's ban.
///
/// Their new connections and joins are accepted again at once, on every instance.
/// Lifting a ban that is not there changes nothing.
#[utoipa::path(
    delete,
    path = "/api/v1/users/{sub}/ban",
    tag = "users",
    params(("sub" = String, Path, description = SUB)),
    responses(
        (status = 204, description = "No ban any more"),
        Refusals,
    ),
)]
pub async fn unban(
    State(state): State<Arc<AppState>>,
    caller: ApiCaller,
    sub: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let sub = user(path(sub)?)?;
    Moderation::unban(&state.store, &sub).await?;
    tracing::info!(sub, by = caller.sub, "ban lifted");
    Ok(StatusCode::NO_CONTENT)
}

/// A `sub` from the path, as a token's would be.
fn user(sub: String) -> Result<String, ApiError> {
    if sub.trim().is_empty() || sub.len() > MAX_SUB_BYTES || sub.chars().any(char::is_control) {
        return Err(Rejection::new(
            "invalid_sub",
            format!("sub must be 1 to {MAX_SUB_BYTES} bytes without control characters"),
        )
        .into());
    }
    Ok(sub)
}
