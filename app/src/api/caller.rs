//! Who calls the server API: the `sub` of a JWT from the operator's identity service,
//! in `Authorization: Bearer`, verified with the same public key as sign-in tokens
//! ([`crate::auth::Verifier`]) and carrying the API's scope (`"scope": "api"`, a
//! space-separated list as RFC 9068 has it, or a list). No shared secret: the
//! instances hold only the public key.
//!
//! Each caller has a request budget on each instance (`--api-rate-per-sec`,
//! `--api-rate-burst`), by its `sub`, so that renewing a token does not refill it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use serde::Deserialize;

use super::error::ApiError;
use crate::auth::Refusal;
use crate::limits::quota;
use crate::state::AppState;

/// The scope a token needs for the server API.
pub const SCOPE: &str = "api";

/// A caller whose token verified and holds the API's scope, within its budget.
#[derive(Debug)]
pub struct ApiCaller {
    pub sub: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<Scope>,
}

/// `scope` as RFC 9068 writes it (`"api chat:read"`), or as a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scope {
    Text(String),
    List(Vec<String>),
}

impl Scope {
    fn allows_api(&self) -> bool {
        match self {
            Scope::Text(text) => text.split_whitespace().any(|s| s == SCOPE),
            Scope::List(list) => list.iter().any(|s| s == SCOPE),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for ApiCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let verifier = state.auth.as_ref().ok_or_else(disabled)?;
        let claims: Claims = verifier
            .claims(bearer(&parts.headers))
            .map_err(token_refused)?;
        if claims.sub.trim().is_empty() || claims.sub.chars().any(char::is_control) {
            return Err(token_refused(Refusal::Invalid(
                "token sub is empty or has control characters",
            )));
        }
        if !claims.scope.as_ref().is_some_and(Scope::allows_api) {
            return Err(ApiError::unauthorized(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!(
                    "the token does not carry the server API's scope: the identity service \
                     must issue it with \"scope\": \"{SCOPE}\" (a user's sign-in token is not \
                     an API token)"
                ),
            ));
        }
        state.api_budget.take(&claims.sub)?;
        Ok(ApiCaller { sub: claims.sub })
    }
}

/// The server API without sign-in: there is no key to verify callers with.
pub fn disabled() -> ApiError {
    ApiError::not_found(
        "api_disabled",
        "the server API is off: it needs the sign-in public key (--auth-public-key-file, \
         chat.auth in stack.yaml) to verify its callers",
    )
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn token_refused(refusal: Refusal) -> ApiError {
    let (code, message) = match refusal {
        Refusal::Missing => (
            "token_required",
            "send an API token as `Authorization: Bearer <token>`".to_owned(),
        ),
        Refusal::Expired => (
            "token_expired",
            "the token expired: get a new one from the identity service".to_owned(),
        ),
        Refusal::Invalid(reason) => ("invalid_token", reason.to_owned()),
        // Room patterns are not checked here.
        Refusal::Room => ("invalid_token", "token refused".to_owned()),
    };
    ApiError::unauthorized(StatusCode::UNAUTHORIZED, code, message)
}

/// Requests per caller on this instance: a token bucket per `sub` (governor's keyed
/// limiter, as the WebSocket clients' budgets).
pub struct Budget {
    callers: DefaultKeyedRateLimiter<String>,
    burst: f64,
    per_sec: f64,
    last_sweep: Mutex<Instant>,
}

impl Budget {
    pub fn new(burst: f64, per_sec: f64) -> Budget {
        Budget {
            callers: RateLimiter::keyed(quota(burst, per_sec)),
            burst: burst.max(1.0),
            per_sec,
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// Spends one request of `sub`'s budget, or says when to try again.
    fn take(&self, sub: &str) -> Result<(), ApiError> {
        self.sweep();
        if self.callers.check_key(&sub.to_owned()).is_ok() {
            return Ok(());
        }
        let wait = Duration::from_secs_f64(1.0 / self.per_sec.max(0.001));
        Err(ApiError::rate_limited(
            format!(
                "too many requests: the server API allows {} per second per caller and \
                 instance (bursts of {}); try again after Retry-After",
                self.per_sec, self.burst
            ),
            wait.as_secs_f64().ceil().max(1.0) as u64,
        ))
    }

    /// Forgets callers whose budget has refilled, at most once a second.
    fn sweep(&self) {
        let mut last = self.last_sweep.lock().unwrap();
        if last.elapsed() < Duration::from_secs(1) {
            return;
        }
        *last = Instant::now();
        self.callers.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let allows = |json: &str| {
            serde_json::from_str::<Claims>(json)
                .unwrap()
                .scope
                .is_some_and(|s| s.allows_api())
        };
        assert!(allows(r#"{"sub":"a","scope":"api"}"#));
        assert!(allows(r#"{"sub":"a","scope":"chat:read api"}"#));
        assert!(allows(r#"{"sub":"a","scope":["x","api"]}"#));
        assert!(!allows(r#"{"sub":"a","scope":"apis"}"#));
        assert!(!allows(r#"{"sub":"a"}"#));
    }

    #[test]
    fn the_bearer_scheme_is_read_case_insensitively() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn each_caller_has_its_own_budget() {
        let budget = Budget::new(2.0, 0.5);
        assert!(budget.take("a").is_ok() && budget.take("a").is_ok());
        let refused = budget.take("a").unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(budget.take("b").is_ok());
    }
}
