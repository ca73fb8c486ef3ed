//! `realtime-stack token` as a process: the token it prints verifies with the stack's
//! public key alone, as the chat server verifies it, and it refuses what would only
//! give tokens the server refuses. Keys are made by `openssl`, as a user's would be. No
//! LocalStack, no AWS: the command calls nothing.

use std::path::Path;
use std::process::{Command, Output};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

const STACK: &str = "\
name: chat
domain:
  name: chat.example.com
  hosted_zone: example.com
";

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("openssl is needed: apt-get install -y openssl");
    assert!(status.success(), "openssl {args:?}");
}

/// `private.pem` and `public.pem` in `dir`, made by openssl with `algorithm` (genpkey's
/// options).
fn key_pair(dir: &Path, algorithm: &[&str]) {
    let mut genpkey = vec!["genpkey"];
    genpkey.extend_from_slice(algorithm);
    genpkey.extend(["-out", "private.pem"]);
    openssl(dir, &genpkey);
    openssl(
        dir,
        &[
            "pkey",
            "-in",
            "private.pem",
            "-pubout",
            "-out",
            "public.pem",
        ],
    );
}

/// `realtime-stack -f <dir>/stack.yaml token <args>`, with the local state under `dir`.
fn token(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_realtime-stack"))
        .arg("-f")
        .arg(dir.join("stack.yaml"))
        .arg("token")
        .args(args)
        .env("LOCALSTACK_HOME", dir.join("localstack"))
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    assert!(!output.status.success(), "token succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The public half of a PEM private key, as the chat server reads it.
/// The claims of `token`, verified as the chat server verifies them; `iss` and `aud`
/// are checked when `claims_checked` (the stack names them).
fn verify(token: &str, public_pem: &Path, algorithm: Algorithm, claims_checked: bool) -> Value {
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    let pem = std::fs::read_to_string(public_pem).unwrap();
    let key = match algorithm {
        Algorithm::EdDSA => DecodingKey::from_ed_der(
            ed25519_dalek::VerifyingKey::from_public_key_pem(&pem)
                .unwrap()
                .as_bytes(),
        ),
        _ => DecodingKey::from_ec_der(
            &p256::PublicKey::from_public_key_pem(&pem)
                .unwrap()
                .to_sec1_bytes(),
        ),
    };
    let mut validation = Validation::new(algorithm);
    if claims_checked {
        validation.set_audience(&["chat"]);
        validation.set_issuer(&["https://id.example"]);
    } else {
        validation.validate_aud = false;
    }
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("the token verifies with the public key")
        .claims
}

#[test]
fn a_token_signed_with_the_identity_key_verifies_with_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    key_pair(
        d,
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    openssl(
        d,
        &["genpkey", "-algorithm", "ed25519", "-out", "other.pem"],
    );
    std::fs::write(
        d.join("stack.yaml"),
        format!(
            "{STACK}chat:\n  auth:\n    public_key_file: public.pem\n    issuer: https://id.example\n    audience: chat\n"
        ),
    )
    .unwrap();
    let key = d.join("private.pem");
    let key = key.to_str().unwrap();
    let printed = stdout(&token(
        d,
        &[
            "--sub",
            "alice",
            "--name",
            "Alice",
            "--rooms",
            "team-*,lobby",
            "--ttl",
            "30m",
            "--key",
            key,
        ],
    ));
    let claims = verify(
        printed.trim(),
        &d.join("public.pem"),
        Algorithm::ES256,
        true,
    );
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["name"], "Alice");
    assert_eq!(claims["rooms"], serde_json::json!(["team-*", "lobby"]));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        1800
    );
    assert_eq!(printed.lines().count(), 1, "the token alone on stdout");

    let other = d.join("other.pem");
    let message = stderr(&token(
        d,
        &[
            "--sub",
            "a",
            "--name",
            "A",
            "--key",
            other.to_str().unwrap(),
        ],
    ));
    assert!(message.contains("is not the private half"), "{message}");
    let message = stderr(&token(d, &["--sub", "a", "--name", "A"]));
    assert!(message.contains("pass --key"), "{message}");
    let message = stderr(&token(
        d,
        &["--sub", "a", "--name", &"x".repeat(40), "--key", key],
    ));
    assert!(message.contains("--name must be 1 to 32"), "{message}");
}

#[test]
fn without_key_it_signs_with_the_development_pair_of_up_local() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("stack.yaml"),
        format!("{STACK}chat:\n  auth: {{generate: true}}\n"),
    )
    .unwrap();
    let message = stderr(&token(d, &["--sub", "alice", "--name", "Alice"]));
    assert!(message.contains("up --local"), "{message}");
    // Where `up --local` keeps the pair for the stack `chat`.
    let auth = d.join("localstack/local-stack/chat/auth");
    std::fs::create_dir_all(&auth).unwrap();
    key_pair(&auth, &["-algorithm", "ed25519"]);
    let printed = stdout(&token(d, &["--sub", "alice", "--name", "Alice"]));
    let claims = verify(
        printed.trim(),
        &auth.join("public.pem"),
        Algorithm::EdDSA,
        false,
    );
    assert_eq!(claims["name"], "Alice");
    assert!(claims.get("rooms").is_none() && claims.get("aud").is_none());
}

#[test]
fn an_open_stack_takes_no_tokens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stack.yaml"), STACK).unwrap();
    let message = stderr(&token(dir.path(), &["--sub", "a", "--name", "A"]));
    assert!(message.contains("has no chat.auth"), "{message}");
}

#[test]
fn with_api_it_mints_a_server_api_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    key_pair(d, &["-algorithm", "ed25519"]);
    std::fs::write(
        d.join("stack.yaml"),
        format!("{STACK}chat:\n  auth:\n    public_key_file: public.pem\n"),
    )
    .unwrap();
    let key = d.join("private.pem");
    let key = key.to_str().unwrap();
    let printed = stdout(&token(d, &["--api", "--key", key, "--ttl", "10m"]));
    let claims = verify(
        printed.trim(),
        &d.join("public.pem"),
        Algorithm::EdDSA,
        false,
    );
    // Who calls, and the API's scope; no name, so it opens no WebSocket.
    assert_eq!(
        (&claims["sub"], &claims["scope"]),
        (&"operator".into(), &"api".into())
    );
    assert!(claims.get("name").is_none());
    let printed = stdout(&token(d, &["--api", "--sub", "backend", "--key", key]));
    assert_eq!(
        verify(
            printed.trim(),
            &d.join("public.pem"),
            Algorithm::EdDSA,
            false
        )["sub"],
        "backend"
    );
    let message = stderr(&token(d, &["--api", "--name", "A", "--key", key]));
    assert!(message.contains("cannot be used with"), "{message}");
    let message = stderr(&token(d, &["--key", key]));
    assert!(message.contains("--sub"), "{message}");
}
