//! The upgrade to a WebSocket on `/ws`: the checks that refuse a request with an HTTP
//! status before any WebSocket exists (room, `since`, `epoch`, `history`, Origin, the
//! address's connection cap), the sign-in token when the server verifies them (refused
//! after the upgrade, with a close code a page can read: [`crate::auth`]) and the
//! user's ban ([`crate::moderation`]), then the hand-off to [`crate::session`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth;
use crate::limits;
use crate::protocol::{self, HARD_MAX_MESSAGE_BYTES, JoinRequest, Member, Rejection};
use crate::recovery;
use crate::session::{self, Join};
use crate::state::AppState;

/// tungstenite's default read buffer is 128 KiB, allocated and zeroed per connection:
/// most of an idle connection's memory. Chat frames are small (a `send` is about 100
/// bytes, so a read still takes several), and a larger frame grows the buffer to its
/// size: it costs only more reads of a client that streams big frames.
const READ_BUFFER_BYTES: usize = 1024;

#[derive(Debug, Deserialize)]
pub struct WsParams {
    room: Option<String>,
    since: Option<String>,
    epoch: Option<String>,
    history: Option<String>,
    token: Option<String>,
    /// `1` or `true`: the first room's members, then who joins, leaves and types.
    presence: Option<String>,
    /// On an open server, the name to be listed under in presence.
    name: Option<String>,
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

/// `GET /ws`: refuses bad parameters (400), foreign browser origins (403) and a
/// client over its connection cap (429) before upgrading.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<WsParams>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let first = match first_join(&params) {
        Ok(first) => first,
        Err(rejection) => return bad_request(rejection.message),
    };
    let guest_name = match params.name.as_deref().filter(|n| !n.is_empty()) {
        None => None,
        Some(name) => match protocol::validate_name(name) {
            Ok(()) => Some(name.to_owned()),
            Err(rejection) => return bad_request(format!("invalid name: {}", rejection.message)),
        },
    };
    if !origin_allowed(&headers, &state.allowed_origins) {
        tracing::info!(origin = ?headers.get(header::ORIGIN), "refused websocket from foreign origin");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let address = limits::client_address(peer.ip(), &headers, &state.trusted_proxies);
    let verdict = state.auth.as_ref().map(|verifier| {
        let token = auth::token_from_request(&headers, params.token.as_deref());
        verifier.verify(token, &first.room)
    });
    // A signed-in user's connections count as theirs, wherever they come from; anyone
    // else's (a refused token's too) as their address's.
    let client = match &verdict {
        Some(Ok(identity)) => limits::ClientKey::user(&identity.sub),
        _ => limits::ClientKey::address(address),
    };
    let Some(slot) = state.client_limits.admit(client) else {
        tracing::info!(%address, "refused websocket: too many connections from the client");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from you",
        )
            .into_response();
    };
    let ws = ws
        .protocols([auth::SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(HARD_MAX_MESSAGE_BYTES)
        .max_frame_size(HARD_MAX_MESSAGE_BYTES);
    let identity = match verdict {
        None => None,
        Some(Ok(identity)) => Some(identity),
        Some(Err(refusal)) => {
            let (code, reason) = refusal.close();
            tracing::info!(%address, room = first.room, code, reason, "refused websocket: sign-in");
            state.metrics.auth_refused.increment(1);
            return refuse(ws, state, slot, code, reason.into());
        }
    };
    // Registered before the ban is read: a disconnect from now on reaches it, and one
    // before has its ban in Redis. If Redis does not answer, joining the room will not
    // either, and the connection says so.
    let registration = identity
        .as_ref()
        .map(|identity| state.moderation.register(&identity.sub));
    if let Some(identity) = &identity
        && let Ok(Some(ban)) = state.moderation.ban_of(&state.store, &identity.sub).await
    {
        let close = ban.close();
        tracing::info!(%address, sub = identity.sub, "refused websocket: banned");
        return refuse(ws, state, slot, close.code, close.reason.into());
    }
    // A position is checked against the room now, so that one in the future is an HTTP
    // error rather than a connection that silently drops every live message. If Redis
    // does not answer, the connection reports that itself.
    let mut room_state = None;
    if let Some(since) = first.since
        && let Ok(known) = state.store.room_state(&first.room).await
    {
        if let Err(rejection) = recovery::refuse_future_since(since, &known) {
            return bad_request(rejection.message);
        }
        room_state = Some(known);
    }
    // Who the connection is in presence: the token's user; on an open server, a guest
    // who named themselves (tabs with one name count once).
    let member = match (&identity, guest_name) {
        (Some(identity), _) => Some(Member {
            sub: identity.sub.clone(),
            name: identity.name.clone(),
        }),
        (None, Some(name)) => Some(Member {
            sub: format!("guest:{name}"),
            name,
        }),
        (None, None) => None,
    };
    if !state.client_limits.take_joins(
        &slot.client,
        session::join_cost(&state, &first.room, member.is_some()),
    ) {
        tracing::info!(%address, room = first.room, "refused websocket: too many rooms joined");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many new rooms joined from you; try again in a minute",
        )
            .into_response();
    }
    // Boxed: axum's upgrade task keeps what its callback captured for the connection's
    // whole life, though the callback hands it on at once.
    let join = Box::new(Join {
        slot,
        first,
        room_state,
        identity,
        member,
        registration,
    });
    ws.on_upgrade(move |socket| {
        let tracker = state.tracker.clone();
        tracker.track_future(session::serve(socket, state, *join))
    })
}

/// Upgrades, then closes at once with `code`: a page can read a close code, not the
/// status of a refused upgrade.
fn refuse(
    ws: WebSocketUpgrade,
    state: Arc<AppState>,
    slot: limits::ConnectionSlot,
    code: u16,
    reason: Utf8Bytes,
) -> Response {
    ws.on_upgrade(move |socket| {
        let tracker = state.tracker.clone();
        tracker.track_future(async move {
            session::refuse(socket, slot, CloseFrame { code, reason }, &state.drain).await
        })
    })
}

/// The first room's join, from `?room=&since=&epoch=&history=&presence=`.
fn first_join(params: &WsParams) -> Result<JoinRequest, Rejection> {
    let given = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    Ok(JoinRequest {
        room: protocol::parse_room(
            &given(&params.room).unwrap_or_else(|| protocol::DEFAULT_ROOM.to_owned()),
        )?,
        since: given(&params.since)
            .map(|s| protocol::parse_since(&s))
            .transpose()?,
        epoch: given(&params.epoch)
            .map(|e| protocol::parse_epoch(&e))
            .transpose()?,
        history: given(&params.history)
            .map(|h| protocol::parse_history(&h))
            .transpose()?
            .unwrap_or(0),
        presence: matches!(params.presence.as_deref(), Some("1" | "true")),
    })
}

/// Browsers always send Origin on WebSocket requests; other clients need not, and
/// cannot be stopped by this check anyway.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if !allowed.is_empty() {
        return allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    }
    let origin_authority = origin
        .parse::<Uri>()
        .ok()
        .and_then(|u| u.into_parts().authority);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_authority, host) {
        (Some(a), Some(h)) => a.as_str().eq_ignore_ascii_case(h),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn origin_rules() {
        let none: &[String] = &[];
        assert!(origin_allowed(&headers(None, "chat.example.com"), none));
        assert!(origin_allowed(
            &headers(Some("https://chat.example.com"), "chat.example.com"),
            none
        ));
        assert!(origin_allowed(
            &headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.example"), "chat.example.com"),
            none
        ));
        assert!(!origin_allowed(
            &headers(Some("null"), "chat.example.com"),
            none
        ));
        let list = ["https://app.example".to_owned()];
        assert!(origin_allowed(
            &headers(Some("https://app.example"), "api.example"),
            &list
        ));
        assert!(!origin_allowed(
            &headers(Some("https://api.example"), "api.example"),
            &list
        ));
        assert!(origin_allowed(
            &headers(Some("https://x.example"), "y"),
            &["*".to_owned()]
        ));
    }
}
