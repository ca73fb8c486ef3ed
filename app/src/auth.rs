//! Identity: who is speaking, proven by a JWT that the operator's own identity service
//! signs and this server verifies with its public key (`--auth-public-key-file`).
//!
//! With no key configured the server is open, as it always was, and nothing here runs.
//! With one, every `/ws` upgrade needs a token ([`token_from_request`]): the `token`
//! query parameter, or a `bearer.<token>` WebSocket subprotocol offered beside `chat`
//! (browsers cannot set headers on a WebSocket, and a subprotocol stays out of access
//! logs). The token must be signed with the key's algorithm (`EdDSA` for an Ed25519 key,
//! `ES256` for a P-256 one: the key decides, never the token's header), not expired,
//! not before its `nbf`, from the configured issuer and for the configured audience
//! when those are set, and carry `sub`, `name` and `exp`; an optional `rooms` list of
//! patterns limits the rooms it may join. The [`Identity`] it yields names the author of
//! every message the connection sends, and the connection closes at `exp`.
//!
//! Refusals are close frames after the upgrade, not HTTP statuses: a browser's page
//! cannot read the status of a failed upgrade, but it can read a close code
//! ([`Refusal::close`]). Tokens are never logged.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use axum::http::{HeaderMap, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::protocol;

/// The subprotocol a browser offers beside its token and gets back: the token itself is
/// a secret and must not be echoed.
pub const SUBPROTOCOL: &str = "chat";
/// The prefix of the subprotocol entry carrying the token: `bearer.<jwt>`.
pub const BEARER_PREFIX: &str = "bearer.";

/// No valid token: missing, malformed, forged, signed with another algorithm, from
/// another issuer or for another audience, or lacking a required claim.
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// A valid token that may not join the room asked for (its `rooms` patterns).
pub const CLOSE_FORBIDDEN_ROOM: u16 = 4403;
/// The token's `exp` has passed, at the upgrade or while connected: fetch a new token
/// and reconnect (with `since`, to miss nothing). The mnemonic is HTTP 440, login
/// time-out.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4440;

/// Longest token accepted; real ones are a few hundred bytes.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most room patterns a token may carry.
const MAX_ROOM_PATTERNS: usize = 100;

/// Checks tokens against the operator's public key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    leeway: Duration,
}

/// What a token must satisfy besides its signature.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rules<'a> {
    /// The `iss` tokens must carry.
    pub issuer: Option<&'a str>,
    /// The `aud` tokens must name.
    pub audience: Option<&'a str>,
    /// How far the identity service's clock may be from ours, both ways.
    pub leeway: Duration,
}

/// The claims a token must have; others are ignored.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    name: String,
    exp: u64,
    /// Patterns of the rooms the token may join (`*` matches any run of characters);
    /// absent: every room.
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// Who a connection speaks for, from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    pub name: String,
    /// Seconds since the Unix epoch after which the token is no longer valid.
    pub exp: u64,
    rooms: Option<Vec<String>>,
    /// The verifier's allowance for clock skew, which `exp` is read with.
    leeway: Duration,
}

/// Why a connection is refused or ended for its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid(&'static str),
    Expired,
    Room,
}

impl Refusal {
    /// The close code and reason the client is sent.
    pub fn close(self) -> (u16, &'static str) {
        match self {
            Refusal::Missing => (CLOSE_UNAUTHORIZED, "token required"),
            Refusal::Invalid(reason) => (CLOSE_UNAUTHORIZED, reason),
            Refusal::Expired => (CLOSE_TOKEN_EXPIRED, "token expired"),
            Refusal::Room => (CLOSE_FORBIDDEN_ROOM, "room not allowed by the token"),
        }
    }
}

impl Verifier {
    /// Reads a PEM public key (SubjectPublicKeyInfo, `-----BEGIN PUBLIC KEY-----`): an
    /// Ed25519 key verifies `EdDSA` tokens, a P-256 key `ES256` ones.
    pub fn from_file(path: &Path, rules: Rules<'_>) -> anyhow::Result<Verifier> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading the auth public key {}", path.display()))?;
        let (key, algorithm) =
            public_key(&pem).with_context(|| format!("the auth public key {}", path.display()))?;
        Ok(Verifier::new(key, algorithm, rules))
    }

    fn new(key: DecodingKey, algorithm: Algorithm, rules: Rules<'_>) -> Verifier {
        let Rules {
            issuer,
            audience,
            leeway,
        } = rules;
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // The identity service's clock and ours differ by a little: a token is taken
        // that far before its `nbf` and after its `exp` (and the connection closes
        // that long after `exp`), so that a service a second ahead, which sets
        // `nbf = iat`, does not have its fresh tokens refused.
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        if let Some(audience) = audience {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        Verifier {
            key,
            validation,
            leeway,
        }
    }

    /// Verifies a token and the room it is used for.
    pub fn verify(&self, token: Option<&str>, room: &str) -> Result<Identity, Refusal> {
        let mut identity = identity(self.claims(token)?)?;
        identity.leeway = self.leeway;
        if identity.may_join(room) {
            Ok(identity)
        } else {
            Err(Refusal::Room)
        }
    }
}

impl Verifier {
    /// The claims of a token that verifies (signature, algorithm, `exp`, `nbf`, issuer
    /// and audience): a WebSocket user's, or a server API caller's
    /// ([`crate::api`]).
    pub fn claims<T: serde::de::DeserializeOwned>(
        &self,
        token: Option<&str>,
    ) -> Result<T, Refusal> {
        let token = token.filter(|t| !t.is_empty()).ok_or(Refusal::Missing)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Invalid("token too long"));
        }
        jsonwebtoken::decode::<T>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| refusal(e.kind()))
    }
}

/// What is wrong with a token, in words that tell its issuer what to fix and say
/// nothing about the key.
fn refusal(kind: &ErrorKind) -> Refusal {
    Refusal::Invalid(match kind {
        ErrorKind::ExpiredSignature => return Refusal::Expired,
        ErrorKind::InvalidSignature => "invalid token signature",
        ErrorKind::InvalidAlgorithm => "token signed with another algorithm",
        ErrorKind::ImmatureSignature => "token not valid yet",
        ErrorKind::InvalidIssuer => "token from another issuer",
        ErrorKind::InvalidAudience => "token for another audience",
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => "token has no iss",
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => "token has no aud",
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
            "token lacks sub, name or exp, or has a malformed claim"
        }
        _ => "malformed token",
    })
}

fn identity(claims: Claims) -> Result<Identity, Refusal> {
    if claims.sub.trim().is_empty() || claims.sub.chars().any(char::is_control) {
        return Err(Refusal::Invalid(
            "token sub is empty or has control characters",
        ));
    }
    if protocol::validate_name(&claims.name).is_err() {
        return Err(Refusal::Invalid(
            "token name is empty, too long or has control characters",
        ));
    }
    if claims
        .rooms
        .as_ref()
        .is_some_and(|rooms| rooms.len() > MAX_ROOM_PATTERNS)
    {
        return Err(Refusal::Invalid("token has too many room patterns"));
    }
    Ok(Identity {
        sub: claims.sub,
        name: claims.name,
        exp: claims.exp,
        rooms: claims.rooms,
        leeway: Duration::ZERO,
    })
}

impl Identity {
    /// Who this is, as `hello` says it.
    pub fn signed_in(&self) -> protocol::SignedIn<'_> {
        protocol::SignedIn {
            sub: &self.sub,
            name: &self.name,
            exp: self.exp,
        }
    }

    /// Whether the token's `rooms` patterns (all rooms when it has none) admit `room`.
    pub fn may_join(&self, room: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(patterns) => patterns.iter().any(|p| matches_pattern(p, room)),
        }
    }

    /// How long until the token expires, with the clock-skew allowance it was accepted
    /// with (zero once it has).
    pub fn expires_in(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (Duration::from_secs(self.exp) + self.leeway).saturating_sub(now)
    }
}

/// A room pattern: `*` matches any run of characters (none included), everything else
/// itself. `team-*` admits `team-` and `team-red`, `*` every room.
fn matches_pattern(pattern: &str, room: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = room.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole room must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The key and the one algorithm it verifies, from a PEM public key.
fn public_key(pem: &str) -> anyhow::Result<(DecodingKey, Algorithm)> {
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
        return Ok((DecodingKey::from_ed_der(key.as_bytes()), Algorithm::EdDSA));
    }
    if let Ok(key) = p256::PublicKey::from_public_key_pem(pem) {
        let point = key.to_sec1_bytes();
        return Ok((DecodingKey::from_ec_der(&point), Algorithm::ES256));
    }
    bail!(
        "not an Ed25519 or ECDSA P-256 public key in PEM (-----BEGIN PUBLIC KEY-----); \
         make one with `openssl pkey -in private.pem -pubout`"
    )
}

/// Where a request carries its token: a `bearer.<token>` subprotocol entry, else the
/// `token` query parameter.
pub fn token_from_request<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let from_protocol = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|entry| entry.trim().strip_prefix(BEARER_PREFIX));
    from_protocol.or(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_patterns() {
        let cases = [
            ("lobby", "lobby", true),
            ("lobby", "lobby2", false),
            ("team-*", "team-red", true),
            ("team-*", "team-", true),
            ("team-*", "tea", false),
            ("*", "anything", true),
            ("*-ops", "eu-ops", true),
            ("*-ops", "eu-opsx", false),
            ("a*b*c", "a-b-c", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
        ];
        for (pattern, room, expected) in cases {
            assert_eq!(matches_pattern(pattern, room), expected, "{pattern} {room}");
        }
    }

    #[test]
    fn the_token_comes_from_the_subprotocol_first() {
        let mut headers = HeaderMap::new();
        assert_eq!(token_from_request(&headers, Some("q")), Some("q"));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "chat, bearer.abc.def.ghi".parse().unwrap(),
        );
        assert_eq!(token_from_request(&headers, Some("q")), Some("abc.def.ghi"));
        assert_eq!(token_from_request(&HeaderMap::new(), None), None);
    }

    #[test]
    fn a_key_must_be_a_pem_public_key() {
        assert!(public_key("not a key").is_err());
        let private = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEIDq+4BqeFbJJ0LvT0lMi2AVt1HxkKqYIq4oBQzhA2cmx\n\
            -----END PRIVATE KEY-----\n";
        assert!(public_key(private).is_err());
    }
}
