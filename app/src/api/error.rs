//! The server API's errors: a status and a JSON body with a stable `code` and a
//! `message` saying what to do, as the WebSocket's error frames have.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::connection::StoreError;
use crate::protocol::Rejection;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// `WWW-Authenticate` for a 401/403 (RFC 6750), `Retry-After` seconds for a 429.
    challenge: Option<&'static str>,
    retry_after: Option<u64>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable and machine-readable, e.g. `invalid_text`, `insufficient_scope`.
    #[schema(example = "invalid_text")]
    pub code: &'static str,
    /// What went wrong and what to do, for a person.
    #[schema(example = "text must not be empty")]
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code,
                message: message.into(),
            },
            challenge: None,
            retry_after: None,
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 401 (no valid token) or 403 (a valid token without the API's scope), with the
    /// `WWW-Authenticate` challenge that says which.
    pub fn unauthorized(status: StatusCode, code: &'static str, message: String) -> ApiError {
        let challenge = if status == StatusCode::FORBIDDEN {
            r#"Bearer error="insufficient_scope", scope="api""#
        } else if code == "token_required" {
            r#"Bearer scope="api""#
        } else {
            r#"Bearer error="invalid_token""#
        };
        ApiError {
            challenge: Some(challenge),
            ..ApiError::new(status, code, message)
        }
    }

    pub fn rate_limited(message: String, retry_after_secs: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after_secs),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }
}

/// Bad input: 400 with the same code a WebSocket client would get.
impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, rejection.code, rejection.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::warn!(%error, "server API: redis failed");
        let (status, message) = match &error {
            StoreError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "chat storage is unreachable; nothing was changed, try again",
            ),
            StoreError::Full(_) => (
                StatusCode::INSUFFICIENT_STORAGE,
                "chat storage is full; nothing was stored",
            ),
            StoreError::Refused(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "chat storage refused the request",
            ),
        };
        ApiError::new(status, error.code(), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        let headers = response.headers_mut();
        if let Some(challenge) = self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The error answers every operation may give, for the OpenAPI document (each
/// operation lists its own others).
pub struct Refusals;

impl utoipa::IntoResponses for Refusals {
    fn responses() -> BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        [
            (
                "400",
                "Bad input (the `code` says which); nothing was changed",
            ),
            (
                "401",
                "No valid token: `token_required`, `token_expired`, `invalid_token`",
            ),
            (
                "403",
                "A valid token without the `api` scope: `insufficient_scope`",
            ),
            (
                "429",
                "Over the caller's budget: `rate_limited`; see `Retry-After`",
            ),
            (
                "503",
                "Redis unreachable: `unavailable`; nothing was changed, send again",
            ),
        ]
        .into_iter()
        .map(|(status, description)| {
            let body = Content::new(Some(Ref::from_schema_name("ErrorBody")));
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", body)
                .build();
            (status.to_owned(), response.into())
        })
        .collect()
    }
}
