//! Sign-in keys of the chat (`chat.auth`): reading the public key that verifies tokens
//! (what `stack.yaml` names, and what the instances' boot configuration carries), making
//! the development key pair of `up --local`, and minting development tokens
//! (`realtime-stack token`), a user's or, with the scope `api`, the server API's. The
//! chat server verifies; nothing here knows AWS.
//!
//! A public key is not a secret: it goes into user-data and tags may hash it. A private
//! key only ever lives in a file on this machine: it is read to sign, never logged,
//! never sent anywhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use serde::Serialize;

use crate::spec::{AuthKey, StackSpec};

/// Longest display name the chat server accepts (its `MAX_NAME_CHARS`).
const MAX_NAME_CHARS: usize = 32;

/// A public key that verifies chat tokens: Ed25519 (`EdDSA`) or ECDSA P-256 (`ES256`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::PublicKey),
}

impl PublicKey {
    /// Reads a PEM public key (SubjectPublicKeyInfo); the error says what the text is
    /// instead, in words for a `stack.yaml` problem.
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::Ed25519(key));
        }
        if let Ok(key) = p256::PublicKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P256(key));
        }
        Err(if pem.contains("PRIVATE KEY") {
            "holds a private key: give the public half only (the private key stays with \
             the identity service)"
                .to_owned()
        } else {
            "is not an Ed25519 or ECDSA P-256 public key in PEM (-----BEGIN PUBLIC KEY-----)"
                .to_owned()
        })
    }

    /// The JWT algorithm this key verifies.
    pub fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => "EdDSA",
            PublicKey::P256(_) => "ES256",
        }
    }
}

/// What the instances need to verify tokens: it goes into their boot configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatAuth {
    /// The public key, PEM.
    pub public_key_pem: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Where the chat page fetches tokens, if it can.
    pub token_url: Option<String>,
}

/// The sign-in configuration the instances get, if `chat.auth` asks for one. A key still
/// to be generated is refused: only `up --local` makes one (and puts it in the spec).
pub fn chat_auth(spec: &StackSpec) -> Result<Option<ChatAuth>> {
    let Some(auth) = &spec.chat.auth else {
        return Ok(None);
    };
    match &auth.key {
        AuthKey::File { pem, .. } => Ok(Some(ChatAuth {
            public_key_pem: pem.clone(),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            token_url: auth.token_url.clone(),
        })),
        AuthKey::Generate => bail!(
            "chat.auth.generate makes a development key pair, and only `up --local` does: \
             on AWS, name your identity service's public key in chat.auth.public_key_file"
        ),
    }
}

/// A private key that signs development tokens.
pub enum SigningKey {
    Ed25519(Box<ed25519_dalek::SigningKey>),
    P256(p256::SecretKey),
}

impl SigningKey {
    /// Reads a PEM private key: PKCS#8 (`-----BEGIN PRIVATE KEY-----`, as `openssl
    /// genpkey` writes), Ed25519 or P-256, or a SEC1 P-256 key (`EC PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<SigningKey> {
        if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::Ed25519(Box::new(key)));
        }
        if let Ok(key) = p256::SecretKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::P256(key));
        }
        if let Ok(key) = p256::SecretKey::from_sec1_pem(pem) {
            return Ok(SigningKey::P256(key));
        }
        bail!("not an Ed25519 or ECDSA P-256 private key in PEM")
    }

    pub fn public_key(&self) -> PublicKey {
        match self {
            SigningKey::Ed25519(key) => PublicKey::Ed25519(key.verifying_key()),
            SigningKey::P256(key) => PublicKey::P256(key.public_key()),
        }
    }

    /// A JWT of `claims`, signed with this key.
    pub fn sign(&self, claims: &Claims) -> Result<String> {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let (key, algorithm) = match self {
            SigningKey::Ed25519(key) => (
                EncodingKey::from_ed_der(key.to_pkcs8_der()?.as_bytes()),
                Algorithm::EdDSA,
            ),
            SigningKey::P256(key) => (
                EncodingKey::from_ec_der(key.to_pkcs8_der()?.as_bytes()),
                Algorithm::ES256,
            ),
        };
        jsonwebtoken::encode(&Header::new(algorithm), claims, &key).context("signing the token")
    }
}

/// A development key pair, PEM: the private half (PKCS#8) and the public one.
pub struct KeyPair {
    pub private_pem: String,
    pub public_pem: String,
}

/// A new Ed25519 key pair, from the operating system's random source.
pub fn generate_ed25519() -> Result<KeyPair> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|err| {
        anyhow::anyhow!("reading the system's random source for a new key: {err}")
    })?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(KeyPair {
        private_pem: key.to_pkcs8_pem(LineEnding::LF)?.to_string(),
        public_pem: key.verifying_key().to_public_key_pem(LineEnding::LF)?,
    })
}

/// The scope of a token for the chat's server API (app/README.md, Server API).
pub const API_SCOPE: &str = "api";

/// The claims of a chat token (see app/README.md, Sign-in), or of a server API token.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    pub sub: String,
    /// A user's display name; a server API token has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub iat: u64,
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// `api` for a server API token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// Claims valid from now for `ttl`, checked as the chat server will check them, so
    /// that a token it would refuse is never made.
    pub fn new(sub: &str, name: &str, rooms: Option<Vec<String>>, ttl: Duration) -> Result<Claims> {
        let mut claims = Claims::of(sub, ttl)?;
        let length = name.chars().count();
        if name.trim().is_empty() || length > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            bail!("--name must be 1 to {MAX_NAME_CHARS} characters without control characters");
        }
        for pattern in rooms.iter().flatten() {
            let valid = !pattern.is_empty()
                && pattern
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'*'));
            if !valid {
                bail!(
                    "--rooms: {pattern:?} is not a room pattern (A-Z a-z 0-9 _ - and * for any run of characters)"
                );
            }
        }
        claims.name = Some(name.to_owned());
        claims.rooms = rooms;
        Ok(claims)
    }

    /// Claims of a server API token of the caller `sub`, valid from now for `ttl`.
    pub fn api(sub: &str, ttl: Duration) -> Result<Claims> {
        let mut claims = Claims::of(sub, ttl)?;
        claims.scope = Some(API_SCOPE.to_owned());
        Ok(claims)
    }

    /// Claims of `sub` alone, valid from now for `ttl`.
    fn of(sub: &str, ttl: Duration) -> Result<Claims> {
        if sub.trim().is_empty() || sub.chars().any(char::is_control) {
            bail!("--sub must not be empty or hold control characters");
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        Ok(Claims {
            sub: sub.to_owned(),
            name: None,
            iat: now,
            exp: now + ttl.as_secs().max(1),
            rooms: None,
            scope: None,
            iss: None,
            aud: None,
        })
    }
}

/// A duration as `90s`, `30m`, `1h`, `7d`, or a number of seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: use a number with s, m, h or d, such as 1h"
            ));
        }
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n * scale)),
        _ => Err(format!(
            "{text:?}: use a positive number with s, m, h or d, such as 1h"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the chat server does with a token: verify it with the public key alone.
    fn verify(token: &str, public: &PublicKey) -> serde_json::Value {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let (key, algorithm) = match public {
            PublicKey::Ed25519(key) => (DecodingKey::from_ed_der(key.as_bytes()), Algorithm::EdDSA),
            PublicKey::P256(key) => (
                DecodingKey::from_ec_der(&key.to_sec1_bytes()),
                Algorithm::ES256,
            ),
        };
        let mut validation = Validation::new(algorithm);
        validation.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .unwrap()
            .claims
    }

    #[test]
    fn a_generated_pair_signs_tokens_its_public_half_verifies() {
        let pair = generate_ed25519().unwrap();
        assert!(pair.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let public = PublicKey::from_pem(&pair.public_pem).unwrap();
        assert_eq!(public.algorithm(), "EdDSA");
        let signer = SigningKey::from_pem(&pair.private_pem).unwrap();
        assert_eq!(signer.public_key(), public);
        let claims = Claims::new(
            "alice",
            "Alice",
            Some(vec!["team-*".into()]),
            Duration::from_secs(3600),
        )
        .unwrap();
        let verified = verify(&signer.sign(&claims).unwrap(), &public);
        assert_eq!(verified["sub"], "alice");
        assert_eq!(verified["name"], "Alice");
        assert_eq!(verified["rooms"][0], "team-*");
        assert_eq!(verified["exp"], claims.iat + 3600);
        // Another pair's public half does not match.
        let other = PublicKey::from_pem(&generate_ed25519().unwrap().public_pem).unwrap();
        assert_ne!(signer.public_key(), other);
    }

    #[test]
    fn p256_keys_sign_es256() {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let signer = SigningKey::from_pem(&pem).unwrap();
        let public = signer.public_key();
        assert_eq!(public.algorithm(), "ES256");
        let public_pem = match &public {
            PublicKey::P256(key) => key.to_public_key_pem(LineEnding::LF).unwrap(),
            PublicKey::Ed25519(_) => unreachable!(),
        };
        assert_eq!(PublicKey::from_pem(&public_pem).unwrap(), public);
        let claims = Claims::new("bob", "Bob", None, Duration::from_secs(60)).unwrap();
        assert_eq!(
            verify(&signer.sign(&claims).unwrap(), &public)["name"],
            "Bob"
        );
    }

    #[test]
    fn private_keys_and_other_text_are_not_public_keys() {
        let pair = generate_ed25519().unwrap();
        assert!(
            PublicKey::from_pem(&pair.private_pem)
                .unwrap_err()
                .contains("private key")
        );
        assert!(
            PublicKey::from_pem("hello")
                .unwrap_err()
                .contains("not an Ed25519")
        );
        assert!(SigningKey::from_pem(&pair.public_pem).is_err());
    }

    #[test]
    fn an_api_token_has_the_api_scope_and_no_name() {
        let pair = generate_ed25519().unwrap();
        let signer = SigningKey::from_pem(&pair.private_pem).unwrap();
        let claims = Claims::api("backend", Duration::from_secs(60)).unwrap();
        let verified = verify(&signer.sign(&claims).unwrap(), &signer.public_key());
        assert_eq!(
            (&verified["sub"], &verified["scope"]),
            (&"backend".into(), &"api".into())
        );
        assert!(verified.get("name").is_none() && verified.get("rooms").is_none());
        let user = Claims::new("alice", "Alice", None, Duration::from_secs(60)).unwrap();
        assert!(user.scope.is_none());
        assert!(Claims::api(" ", Duration::from_secs(60)).is_err());
    }

    #[test]
    fn claims_the_server_would_refuse_are_not_made() {
        let hour = Duration::from_secs(3600);
        assert!(Claims::new("", "A", None, hour).is_err());
        assert!(Claims::new("a", &"x".repeat(33), None, hour).is_err());
        assert!(Claims::new("a", "A\u{7}", None, hour).is_err());
        assert!(Claims::new("a", "A", Some(vec!["has space".into()]), hour).is_err());
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
