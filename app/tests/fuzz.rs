//! Fuzzed input against a real server: arbitrary query strings at the `/ws` upgrade,
//! arbitrary text and binary frames on an open connection, and arbitrary paths, queries
//! and bodies at the server API. The server never panics, answers every upgrade with a
//! status (101, or 400/403/429 with a reason), answers every frame or closes cleanly
//! with a code, answers the API with JSON, and stays healthy.

mod common;

use common::{Client, Event, Redis, Server};
use futures_util::SinkExt as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

/// Percent-encodes every byte that is not unreserved, so that any value reaches the
/// server as the parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Query strings: known and unknown keys with arbitrary values, or raw visible ASCII.
fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("room".to_owned()),
        Just("since".to_owned()),
        Just("epoch".to_owned()),
        Just("history".to_owned()),
        any::<String>(),
    ];
    let value = prop_oneof![
        any::<String>(),
        "[0-9]{1,20}-[0-9]{1,20}",
        any::<u64>().prop_map(|n| n.to_string()),
    ];
    let pairs = prop::collection::vec((key, value), 0..5).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    });
    let raw = prop::collection::vec(0x21u8..0x7f, 0..200).prop_map(|bytes| {
        bytes
            .into_iter()
            .filter(|b| *b != b'#')
            .map(char::from)
            .collect()
    });
    prop_oneof![pairs, raw]
}

/// Sends a WebSocket upgrade for `/ws?{query}` by hand and returns the status code.
async fn upgrade_status(server: &Server, query: &str) -> u16 {
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /ws?{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(common::WAIT, tcp.read(&mut buffer))
            .await
            .expect("no answer to an upgrade")
            .unwrap();
        assert!(n > 0, "connection closed without a response for ?{query}");
        head.extend_from_slice(&buffer[..n]);
    }
    let status_line = String::from_utf8_lossy(&head);
    status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

/// Runs a proptest strategy whose check is async, on the test's runtime.
fn run_async<S: Strategy>(cases: u32, strategy: S, check: impl AsyncFn(S::Value)) {
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config::with_cases(cases));
    runner
        .run(&strategy, |value| {
            tokio::task::block_in_place(|| handle.block_on(check(value)));
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn arbitrary_query_strings_get_a_status_never_a_crash() {
    let redis = Redis::start();
    let server = Server::start(
        "a",
        &redis.url(),
        &["--max-connections-per-address", "100000"],
    );
    server.wait_health(200).await;
    run_async(300, query(), async |query: String| {
        let status = upgrade_status(&server, &query).await;
        assert!(matches!(status, 101 | 400), "?{query} answered {status}");
    });
    assert!(!server.panicked(), "the server panicked");
    assert_eq!(server.get("/healthz").await.0, 200);
}

/// Any frame: arbitrary text (often JSON-ish), binary, or a `send` with arbitrary
/// fields, then a sentinel frame the server must refuse as `unknown_type`: every frame
/// before it was processed (the sentinel's answer comes after theirs) and answered with
/// allowed frames, or the connection was closed with a code (1008 abuse, 1009 too big,
/// 4029 rate); never dropped, never a crash.
#[tokio::test(flavor = "multi_thread")]
async fn arbitrary_frames_are_answered_or_closed_cleanly() {
    let redis = Redis::start();
    let server = Server::start(
        "a",
        &redis.url(),
        &[
            "--rate-burst",
            "1000",
            "--rate-per-sec",
            "1000",
            "--new-rooms-per-minute",
            "1000",
        ],
    );
    server.wait_health(200).await;
    let frame = prop_oneof![
        any::<String>().prop_map(Message::text),
        prop::collection::vec(any::<u8>(), 0..512).prop_map(Message::binary),
        (
            any::<String>(),
            any::<String>(),
            prop::option::of("[A-Za-z0-9]{1,70}")
        )
            .prop_map(|(name, text, cid)| Message::text(
                serde_json::json!({"type": "send", "name": name, "text": text, "cid": cid})
                    .to_string()
            )),
    ];
    let frames = prop::collection::vec(frame, 1..12);
    let case = std::sync::atomic::AtomicUsize::new(0);
    run_async(64, frames, async |frames: Vec<Message>| {
        let room = case.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut client = Client::connect(&server, &format!("?room=fuzz{room}")).await;
        let count = frames.len();
        for frame in frames {
            if client.ws.send(frame).await.is_err() {
                break;
            }
        }
        let _ = client
            .ws
            .send(Message::text(r#"{"type":"sentinel"}"#))
            .await;
        let mut replies = 0;
        loop {
            match client.next_event().await {
                Event::Json(value)
                    if value["type"] == "error"
                        && value["message"].as_str().unwrap().contains("sentinel") =>
                {
                    break;
                }
                Event::Json(value) => {
                    let kind = value["type"].as_str().unwrap();
                    assert!(["error", "ack", "message"].contains(&kind), "{value}");
                    replies += usize::from(kind != "message");
                }
                Event::Closed(frame) => {
                    let code = frame.map(|f| u16::from(f.code));
                    assert!(
                        matches!(code, Some(1008 | 1009 | 4029)),
                        "closed with {code:?}"
                    );
                    break;
                }
            }
        }
        assert!(replies <= count, "{replies} replies to {count} frames");
    });
    assert!(!server.panicked(), "the server panicked");
    assert_eq!(server.get("/healthz").await.0, 200);
}

/// The server API under arbitrary input: arbitrary path segments, query strings and
/// bodies (JSON shaped like its requests with arbitrary fields, or any JSON value) for
/// each endpoint. Every answer has a documented status and, unless empty, is JSON with
/// a `code` and a `message`; the server never panics and stays healthy.
#[tokio::test(flavor = "multi_thread")]
async fn the_server_api_answers_arbitrary_input_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::KeyPair::ed25519(dir.path(), "identity");
    let redis = Redis::start();
    let server = Server::start(
        "a",
        &redis.url(),
        &[
            "--auth-public-key-file",
            key.public_pem_path(),
            "--api-rate-burst",
            "100000",
        ],
    );
    server.wait_health(200).await;
    let token = key.token(&common::api_claims("fuzzer", 3600));
    let segment = prop_oneof![any::<String>(), "[a-z]{1,8}", "[0-9]{1,15}-[0-9]{1,3}",];
    let value = prop_oneof![
        any::<String>().prop_map(serde_json::Value::String),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        Just(serde_json::Value::Null),
    ];
    let body = prop_oneof![
        (value.clone(), value.clone(), value.clone()).prop_map(|(name, text, cid)| {
            serde_json::json!({"name": name, "text": text, "cid": cid})
        }),
        (value.clone(), value.clone()).prop_map(|(ban, reason)| {
            serde_json::json!({"ban_seconds": ban, "reason": reason})
        }),
        value,
    ];
    let endpoint = 0..5usize;
    run_async(
        150,
        (endpoint, segment.clone(), segment, query(), body),
        async |(endpoint, first, second, query, body)| {
            let (first, second) = (encode(&first), encode(&second));
            let (method, path, allowed): (&str, String, &[u16]) = match endpoint {
                0 => (
                    "POST",
                    format!("/api/v1/rooms/{first}/messages"),
                    &[200, 400],
                ),
                1 => (
                    "GET",
                    format!("/api/v1/rooms/{first}/messages?{query}"),
                    &[200, 400, 409],
                ),
                2 => (
                    "GET",
                    format!("/api/v1/rooms/{first}/presence"),
                    &[200, 400],
                ),
                3 => (
                    "DELETE",
                    format!("/api/v1/rooms/{first}/messages/{second}"),
                    &[204, 400, 404],
                ),
                _ => (
                    "POST",
                    format!("/api/v1/users/{first}/disconnect"),
                    &[202, 400],
                ),
            };
            // An empty segment matches no endpoint: 404 `not_found`, as JSON too.
            let allowed = [allowed, &[404]].concat();
            let body = (method == "POST").then_some(&body);
            let (status, answer, _) = common::api(&server, method, &path, Some(&token), body).await;
            assert!(
                allowed.contains(&status),
                "{method} {path}: {status} {answer}"
            );
            if status >= 400 {
                assert!(
                    answer["code"].is_string() && answer["message"].is_string(),
                    "{method} {path}: {answer}"
                );
            }
        },
    );
    assert!(!server.panicked(), "the server panicked");
    assert_eq!(server.get("/healthz").await.0, 200);
}
