//! Sign-in: with `--auth-public-key-file`, a WebSocket needs a JWT signed with the key's
//! private half (keys made by `openssl`, as an identity service would have them), the
//! name on every message is the token's, refusals are close codes a page can read, and a
//! connection ends when its token expires. Real redis-server, real chat-server processes,
//! real WebSocket clients.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Event, KeyPair, Redis, Server, unix_now};
use serde_json::{Value, json};

fn claims(sub: &str, name: &str, ttl_secs: u64) -> Value {
    json!({"sub": sub, "name": name, "exp": unix_now() + ttl_secs})
}

/// A server verifying tokens with `key`'s public half, and what it needs (bind every
/// field: what is left out is dropped, and a dropped Redis is stopped).
struct SignedIn {
    server: Server,
    key: KeyPair,
    _dir: tempfile::TempDir,
    _redis: Redis,
}

impl SignedIn {
    fn start(make_key: fn(&std::path::Path, &str) -> KeyPair, extra: &[&str]) -> SignedIn {
        let redis = Redis::start();
        let dir = tempfile::tempdir().unwrap();
        let key = make_key(dir.path(), "identity");
        let mut flags = vec!["--auth-public-key-file", key.public_pem_path()];
        flags.extend_from_slice(extra);
        let server = Server::start("auth-1", &redis.url(), &flags);
        SignedIn {
            server,
            key,
            _dir: dir,
            _redis: redis,
        }
    }
}

#[tokio::test]
async fn the_token_names_every_message_and_a_client_name_cannot_impersonate() {
    let SignedIn {
        server,
        key,
        _dir,
        _redis,
    } = SignedIn::start(KeyPair::ed25519, &[]);

    let alice_token = key.token(&claims("u-alice", "Alice", 3600));
    let mut alice = Client::connect(&server, &format!("?room=lobby&token={alice_token}")).await;
    assert_eq!(alice.hello["user"]["sub"], "u-alice");
    assert_eq!(alice.hello["user"]["name"], "Alice");
    // A browser's way: the token in a subprotocol entry beside `chat`, and only `chat`
    // comes back.
    let bob_token = key.token(&claims("u-bob", "Bob", 3600));
    let bearer = format!("bearer.{bob_token}");
    let (mut bob, chosen, _) = Client::open(&server, "?room=lobby", &["chat", &bearer]).await;
    assert_eq!(chosen.as_deref(), Some("chat"));
    assert_eq!(bob.hello["user"]["name"], "Bob");

    // Alice claims to be Bob: the message is hers all the same, down to her `sub`.
    alice.send("Bob", "it is me, Bob").await;
    for client in [&mut alice, &mut bob] {
        let first = client.next_message().await;
        assert_eq!(
            (&first["name"], &first["text"], &first["sub"]),
            (&json!("Alice"), &json!("it is me, Bob"), &json!("u-alice"))
        );
    }
    bob.send_raw(r#"{"type":"send","text":"no name needed"}"#)
        .await;
    for client in [&mut alice, &mut bob] {
        let second = client.next_message().await;
        assert_eq!(
            (&second["name"], &second["text"]),
            (&json!("Bob"), &json!("no name needed"))
        );
    }
    // What Redis keeps, and replays, is the token's name too.
    let mut late = Client::connect(
        &server,
        &format!("?room=lobby&history=10&token={alice_token}"),
    )
    .await;
    let replayed = late.next_message().await;
    assert_eq!(
        (&replayed["name"], &replayed["sub"]),
        (&json!("Alice"), &json!("u-alice"))
    );
    assert!(
        !server.logged(&alice_token) && !server.logged(&bob_token),
        "a token was logged"
    );

    // A `cid` is its author's: another user with Alice's name and her `cid` is stored too.
    let other_alice = key.token(&claims("u-alice-2", "Alice", 3600));
    let mut other = Client::connect(&server, &format!("?room=lobby&token={other_alice}")).await;
    let mut stored = Vec::new();
    for client in [&mut alice, &mut other] {
        client.send_cid("Alice", "same cid", "k-1").await;
        loop {
            let frame = client.next_json().await;
            if frame["type"] == "ack" {
                stored.push(frame["id"].clone());
                break;
            }
        }
    }
    assert_ne!(
        stored[0], stored[1],
        "two users' messages were taken for one"
    );
}

#[tokio::test]
async fn missing_forged_and_expired_tokens_are_refused_with_their_close_codes() {
    let SignedIn {
        server,
        key,
        _dir: dir,
        _redis,
    } = SignedIn::start(KeyPair::ed25519, &[]);
    let other = KeyPair::ed25519(dir.path(), "other");
    let refused = |query: String| {
        let server = &server;
        async move { Client::refused(server, &query, &[]).await }
    };

    assert_eq!(
        refused("?room=lobby".into()).await,
        (4401, "token required".into())
    );
    assert_eq!(
        refused("?token=".into()).await,
        (4401, "token required".into())
    );
    assert_eq!(
        refused("?token=not.a.jwt".into()).await,
        (4401, "malformed token".into())
    );
    let forged = other.token(&claims("u-alice", "Alice", 3600));
    assert_eq!(
        refused(format!("?token={forged}")).await,
        (4401, "invalid token signature".into())
    );
    // A valid token's payload swapped for another: the signature no longer matches.
    let genuine = key.token(&claims("u-alice", "Alice", 3600));
    let impostor = key.token(&claims("u-root", "Root", 3600));
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        impostor.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_eq!(
        refused(format!("?token={tampered}")).await,
        (4401, "invalid token signature".into())
    );
    // The key decides the algorithm: a token saying HS256 (signed with the public key's
    // bytes as the secret, the classic confusion) is refused.
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("u-alice", "Alice", 3600),
        &jsonwebtoken::EncodingKey::from_secret(&std::fs::read(&key.public_pem).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        refused(format!("?token={hs256}")).await,
        (4401, "token signed with another algorithm".into())
    );
    let nameless = key.token(&json!({"sub": "u-alice", "exp": unix_now() + 3600}));
    assert_eq!(refused(format!("?token={nameless}")).await.0, 4401);
    let long_name = key.token(&claims("u-alice", &"A".repeat(33), 3600));
    assert_eq!(refused(format!("?token={long_name}")).await.0, 4401);
    let audience =
        key.token(&json!({"sub": "u", "name": "U", "exp": unix_now() + 60, "aud": "billing"}));
    assert_eq!(
        refused(format!("?token={audience}")).await,
        (4401, "token for another audience".into())
    );
    // Expired beyond the default allowance for clock skew (5 s).
    let expired = key.token(&json!({"sub": "u-alice", "name": "Alice", "exp": unix_now() - 60}));
    assert_eq!(
        refused(format!("?token={expired}")).await,
        (4440, "token expired".into())
    );
    let bearer = format!("bearer.{expired}");
    assert_eq!(
        Client::refused(&server, "", &["chat", &bearer]).await,
        (4440, "token expired".into())
    );
    assert_eq!(server.metric("chat_auth_refused_total").await, 11.0);
    assert!(!server.logged(&genuine), "a token was logged");
}

#[tokio::test]
async fn a_token_expiring_mid_connection_closes_it_with_4440_at_exp() {
    let SignedIn {
        server,
        key,
        _dir,
        _redis,
    } = SignedIn::start(
        KeyPair::ed25519,
        &["--ping-secs", "1", "--auth-leeway-secs", "1"],
    );

    let exp = unix_now() + 3;
    let token = key.token(&json!({"sub": "u-alice", "name": "Alice", "exp": exp}));
    let mut alice = Client::connect(&server, &format!("?token={token}")).await;
    alice.send("ignored", "before it expires").await;
    assert_eq!(alice.next_message().await["text"], "before it expires");
    let (close, _) = alice.read_until_closed_with_reason().await;
    let closed_at = unix_now();
    assert_eq!(close, Some((4440, "token expired".to_owned())));
    // At `exp` plus the allowance for clock skew (1 s here).
    assert!(
        closed_at > exp && closed_at <= exp + 3,
        "closed at {closed_at}, the token expired at {exp}"
    );
    assert_eq!(
        server.metric("chat_token_expired_disconnects_total").await,
        1.0
    );
    // With a new token, the page reconnects with `since` and misses nothing.
    let fresh = key.token(&claims("u-alice", "Alice", 3600));
    let reconnected = Client::connect(&server, &format!("?token={fresh}")).await;
    assert_eq!(reconnected.hello["user"]["sub"], "u-alice");
}

/// An identity service whose clock runs a little ahead sets `nbf` (and `iat`) a second
/// or two in our future: its fresh tokens are taken, within the allowance for clock
/// skew (default 5 s), while a token not valid for another minute is still refused.
#[tokio::test]
async fn a_token_from_a_clock_a_little_ahead_is_accepted() {
    let SignedIn {
        server,
        key,
        _dir,
        _redis,
    } = SignedIn::start(KeyPair::ed25519, &[]);
    let from_the_future = |ahead: u64| {
        let issued = unix_now() + ahead;
        key.token(&json!({
            "sub": "u-alice", "name": "Alice", "iat": issued, "nbf": issued, "exp": issued + 600,
        }))
    };
    let fresh = from_the_future(2);
    let alice = Client::connect(&server, &format!("?token={fresh}")).await;
    assert_eq!(alice.hello["user"]["sub"], "u-alice");
    let early = from_the_future(60);
    assert_eq!(
        Client::refused(&server, &format!("?token={early}"), &[]).await,
        (4401, "token not valid yet".into())
    );
}

#[tokio::test]
async fn room_patterns_limit_the_rooms_a_token_may_join() {
    let SignedIn {
        server,
        key,
        _dir,
        _redis,
    } = SignedIn::start(KeyPair::p256, &[]);
    let token = key.token(&json!({
        "sub": "u-alice", "name": "Alice", "exp": unix_now() + 3600,
        "rooms": ["team-*", "lobby"],
    }));
    for room in ["lobby", "team-red", "team-"] {
        let client = Client::connect(&server, &format!("?room={room}&token={token}")).await;
        assert_eq!(client.hello["room"], room);
    }
    for room in ["lobby2", "general", "my-team-red"] {
        assert_eq!(
            Client::refused(&server, &format!("?room={room}&token={token}"), &[]).await,
            (4403, "room not allowed by the token".into()),
            "{room}"
        );
    }
    // A `join` frame is held to the same patterns, with an error frame rather than a
    // close: the connection keeps the rooms it has.
    let mut sidebar = Client::connect(&server, &format!("?room=lobby&token={token}")).await;
    for (room, answer) in [("team-blue", "joined"), ("general", "error")] {
        sidebar
            .send_raw(&json!({"type": "join", "room": room}).to_string())
            .await;
        let frame = sidebar.next_json().await;
        assert_eq!(
            (frame["type"].as_str(), frame["room"].as_str()),
            (Some(answer), Some(room))
        );
        if answer == "error" {
            assert_eq!(frame["code"], "room_not_allowed");
        }
    }
    sidebar
        .send_raw(&json!({"type": "send", "room": "team-blue", "text": "still here"}).to_string())
        .await;
    assert_eq!(sidebar.next_message().await["room"], "team-blue");
    // `room` defaults to lobby, which the patterns admit; an empty list admits nothing.
    Client::connect(&server, &format!("?token={token}")).await;
    let nowhere = key.token(&json!({"sub": "u", "name": "U", "exp": unix_now() + 60, "rooms": []}));
    assert_eq!(
        Client::refused(&server, &format!("?token={nowhere}"), &[])
            .await
            .0,
        4403
    );
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let SignedIn {
        server,
        key,
        _dir,
        _redis,
    } = SignedIn::start(
        KeyPair::p256,
        &[
            "--auth-issuer",
            "https://id.example",
            "--auth-audience",
            "chat",
        ],
    );
    let with = |iss: Option<&str>, aud: Option<Value>| {
        let mut claims = claims("u-alice", "Alice", 3600);
        if let Some(iss) = iss {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            claims["aud"] = aud;
        }
        key.token(&claims)
    };
    let good = with(Some("https://id.example"), Some(json!(["chat", "billing"])));
    Client::connect(&server, &format!("?token={good}")).await;
    for (token, reason) in [
        (
            with(Some("https://evil.example"), Some(json!("chat"))),
            "token from another issuer",
        ),
        (
            with(Some("https://id.example"), Some(json!("billing"))),
            "token for another audience",
        ),
        (with(None, Some(json!("chat"))), "token has no iss"),
    ] {
        assert_eq!(
            Client::refused(&server, &format!("?token={token}"), &[]).await,
            (4401, reason.to_owned())
        );
    }
}

#[tokio::test]
async fn only_ed25519_and_p256_public_keys_start_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let p384 = KeyPair::p384(dir.path(), "p384");
    let private = dir.path().join("p384.pem");
    for (key, expected) in [
        (
            p384.public_pem.clone(),
            "not an Ed25519 or ECDSA P-256 public key",
        ),
        (private, "not an Ed25519 or ECDSA P-256 public key"),
        (
            dir.path().join("missing.pem"),
            "reading the auth public key",
        ),
    ] {
        let started = Instant::now();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", "127.0.0.1:0", "--auth-public-key-file"])
            .arg(&key)
            .env_remove("CHAT_AUTH_PUBLIC_KEY_FILE")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

#[tokio::test]
async fn an_open_server_ignores_tokens_and_takes_the_clients_name() {
    let redis = Redis::start();
    let server = Server::start("open-1", &redis.url(), &[]);
    let (mut client, chosen, first) = Client::open(&server, "?token=whatever", &["chat"]).await;
    assert!(matches!(first, Event::Json(_)));
    assert_eq!(chosen.as_deref(), Some("chat"));
    assert!(client.hello.get("user").is_none());
    client.send("anyone", "hello").await;
    assert_eq!(client.next_message().await["name"], "anyone");
}
