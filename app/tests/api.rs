//! The server API (`/api/v1`), across two instances on one Redis: what a product's
//! backend posts reaches the WebSocket clients of both, once per `cid`; history pages
//! backwards with neither gap nor duplicate and follows the room's epoch; a deleted
//! message disappears from live clients, replays and history while `since` recovery
//! still holds; a disconnect closes a user's connections on both instances within a
//! bound, and a ban refuses them until it ends; tokens that are missing, expired or not
//! the API's get their status and change nothing; bad input gets 400 and changes
//! nothing; the OpenAPI document lists what is served. Real redis-server, real
//! chat-server processes, real WebSocket clients, keys made by `openssl`.

mod common;

use std::time::{Duration, Instant};

use common::{
    Client, Event, KeyPair, Redis, RedisCluster, Server, WAIT, api, api_claims, poll_until,
    unix_now,
};
use serde_json::{Value, json};

/// Two servers verifying tokens with one key, on one Redis (bind every field: what is
/// left out is dropped, and a dropped Redis is stopped).
struct Pair {
    a: Server,
    b: Server,
    key: KeyPair,
    redis: Backing,
    _dir: tempfile::TempDir,
}

/// What the servers store in.
enum Backing {
    One(Redis),
    Cluster(RedisCluster),
}

impl Backing {
    fn url(&self) -> String {
        match self {
            Backing::One(redis) => redis.url(),
            Backing::Cluster(cluster) => cluster.url(),
        }
    }
}

impl Pair {
    async fn start(extra: &[&str]) -> Pair {
        Pair::on(Backing::One(Redis::start()), extra).await
    }

    async fn on(redis: Backing, extra: &[&str]) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::ed25519(dir.path(), "identity");
        let mut flags = vec!["--auth-public-key-file", key.public_pem_path()];
        flags.extend_from_slice(extra);
        let a = Server::start("a", &redis.url(), &flags);
        let b = Server::start("b", &redis.url(), &flags);
        a.wait_health(200).await;
        b.wait_health(200).await;
        Pair {
            a,
            b,
            key,
            redis,
            _dir: dir,
        }
    }

    /// A server API token of `sub`.
    fn api_token(&self, sub: &str) -> String {
        self.key.token(&api_claims(sub, 3600))
    }

    /// A user's sign-in token.
    fn user_token(&self, sub: &str, name: &str) -> String {
        self.key
            .token(&json!({"sub": sub, "name": name, "exp": unix_now() + 3600}))
    }

    /// A WebSocket of `sub` on `server`, in `query`'s room.
    async fn connect(&self, server: &Server, sub: &str, query: &str) -> Client {
        let token = self.user_token(sub, sub);
        Client::connect(server, &format!("{query}&token={token}")).await
    }
}

/// Posts `text` to `room` through `server`'s API; returns the answer.
async fn post(server: &Server, token: &str, room: &str, body: Value) -> (u16, Value) {
    let path = format!("/api/v1/rooms/{room}/messages");
    let (status, answer, _) = api(server, "POST", &path, Some(token), Some(&body)).await;
    (status, answer)
}

/// A page of `room`'s history through `server`'s API, with `query` (`?before=...`).
async fn page(server: &Server, token: &str, room: &str, query: &str) -> (u16, Value) {
    let path = format!("/api/v1/rooms/{room}/messages{query}");
    let (status, answer, _) = api(server, "GET", &path, Some(token), None).await;
    (status, answer)
}

/// The ids of a page's messages (and `deleted` frames), in the page's order.
fn ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Has `client` skip frames until the message `text`, failing on anything but message
/// frames on the way: what came before it (in the room's one order) is returned.
async fn messages_until(client: &mut Client, text: &str) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let frame = client.next_json().await;
        if frame["type"] == "message" && frame["text"] == text {
            return before;
        }
        before.push(frame);
    }
}

#[tokio::test]
async fn a_post_reaches_clients_on_both_instances_once_per_cid() {
    let pair = Pair::start(&[]).await;
    let mut on_a = pair.connect(&pair.a, "u-ann", "?room=news").await;
    let mut on_b = pair.connect(&pair.b, "u-bob", "?room=news").await;
    let backend = pair.api_token("backend");

    let body = json!({"name": "Deploy bot", "text": "v42 is live", "cid": "deploy-42"});
    let (status, posted) = post(&pair.a, &backend, "news", body.clone()).await;
    assert_eq!(status, 200, "{posted}");
    assert_eq!(posted["room"], "news");
    assert_eq!(posted["duplicate"], false);
    for client in [&mut on_a, &mut on_b] {
        let frame = client.next_message().await;
        assert_eq!(frame["id"], posted["id"]);
        assert_eq!(
            (
                &frame["name"],
                &frame["text"],
                &frame["from"],
                &frame["sub"]
            ),
            (
                &json!("Deploy bot"),
                &json!("v42 is live"),
                &json!("api"),
                &json!("backend")
            )
        );
    }
    // The backend retries, through the other instance: stored once, the same id.
    let (status, again) = post(&pair.b, &backend, "news", body.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (&again["id"], &again["duplicate"]),
        (&posted["id"], &json!(true))
    );
    // Another caller's cid, and a WebSocket client's, are their own: both stored.
    let (_, other) = post(&pair.b, &pair.api_token("billing"), "news", body).await;
    assert_eq!(other["duplicate"], false);
    on_a.send_cid("ignored", "same cid from a user", "deploy-42")
        .await;
    post(
        &pair.a,
        &backend,
        "news",
        json!({"name": "Deploy bot", "text": "marker"}),
    )
    .await;
    for client in [&mut on_a, &mut on_b] {
        let between = messages_until(client, "marker").await;
        let texts: Vec<&str> = between
            .iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["text"].as_str().unwrap())
            .collect();
        // The retry is not among them: only the other caller's and the user's.
        assert_eq!(
            texts,
            ["v42 is live", "same cid from a user"],
            "{between:?}"
        );
        // The user's own `cid` was acknowledged with the id of the user's message.
        if let Some(ack) = between.iter().find(|f| f["type"] == "ack") {
            assert_ne!(ack["id"], posted["id"]);
        }
    }
    // What Redis keeps says where it came from: a late joiner's replay has `from` too.
    let mut late = pair
        .connect(&pair.b, "u-cat", "?room=news&history=10")
        .await;
    assert_eq!(late.next_message().await["from"], "api");
    assert!(!pair.a.logged(&backend), "a token was logged");
}

#[tokio::test]
async fn history_pages_backwards_without_gap_or_duplicate_and_follows_the_epoch() {
    let pair = Pair::start(&["--api-rate-burst", "1000"]).await;
    let backend = pair.api_token("backend");
    let mut posted = Vec::new();
    for i in 0..120 {
        let (status, answer) = post(
            if i % 2 == 0 { &pair.a } else { &pair.b },
            &backend,
            "archive",
            json!({"name": "bot", "text": format!("m{i}")}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        posted.push(answer["id"].as_str().unwrap().to_owned());
    }
    // One deleted on the way: still in its place, as `deleted`, and paging goes on.
    let gone = posted[70].clone();
    let (status, _, _) = api(
        &pair.b,
        "DELETE",
        &format!("/api/v1/rooms/archive/messages/{gone}"),
        Some(&backend),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let hello = pair.connect(&pair.a, "u-ann", "?room=archive").await.hello;
    let epoch = hello["epoch"].as_str().unwrap().to_owned();

    // Backwards, 50 at a time, alternating instances, following each page's cursor.
    let mut seen: Vec<String> = Vec::new();
    let mut query = format!("?limit=50&epoch={epoch}");
    let mut pages = 0;
    loop {
        let server = if pages % 2 == 0 { &pair.b } else { &pair.a };
        let (status, answer) = page(server, &backend, "archive", &query).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["epoch"], epoch.as_str());
        pages += 1;
        seen.extend(ids(&answer));
        for frame in answer["messages"].as_array().unwrap() {
            if frame["id"] == gone.as_str() {
                assert_eq!(
                    frame,
                    &json!({"type": "deleted", "room": "archive", "id": gone})
                );
            } else {
                assert_eq!(frame["type"], "message");
            }
        }
        match answer["cursor"].as_str() {
            Some(cursor) => query = format!("?limit=50&before={cursor}&epoch={epoch}"),
            None => break,
        }
    }
    let mut newest_first = posted.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "every message once, newest first");
    assert_eq!(pages, 3);

    // Forwards from a position: oldest first, up to the newest.
    let (_, forward) = page(
        &pair.a,
        &backend,
        "archive",
        &format!("?after={}&limit=200", posted[99]),
    )
    .await;
    assert_eq!(ids(&forward), &posted[100..]);
    assert!(forward.get("cursor").is_none(), "{forward}");
    // A room nobody wrote to has an empty page, not an error.
    let (status, empty) = page(&pair.a, &backend, "nobody-here", "").await;
    assert_eq!(
        (status, empty),
        (200, json!({"room": "nobody-here", "messages": []}))
    );

    // Redis loses the room's history: a page asked with the old epoch is refused, and
    // one asked afresh names the new history.
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut common::redis_conn(&pair.redis.url()).await)
        .await
        .unwrap();
    post(
        &pair.a,
        &backend,
        "archive",
        json!({"name": "bot", "text": "after"}),
    )
    .await;
    let (status, refused) = page(
        &pair.b,
        &backend,
        "archive",
        &format!("?before={}&epoch={epoch}", posted[50]),
    )
    .await;
    assert_eq!(
        (status, &refused["code"]),
        (409, &json!("epoch_changed")),
        "{refused}"
    );
    let (_, fresh) = page(&pair.b, &backend, "archive", "").await;
    assert_ne!(fresh["epoch"], epoch.as_str());
    assert_eq!(fresh["messages"].as_array().unwrap().len(), 1);

    // The WebSocket's `history` frame pages the same way, for the page's scrollback.
    let mut client = pair.connect(&pair.a, "u-ann", "?room=archive").await;
    client
        .send_raw(r#"{"type":"history","room":"archive","limit":5}"#)
        .await;
    let frame = client.next_json().await;
    assert_eq!(frame["type"], "history");
    assert_eq!(frame["messages"][0]["text"], "after");
    assert!(frame.get("cursor").is_none(), "{frame}");
    client
        .send_raw(r#"{"type":"history","room":"elsewhere"}"#)
        .await;
    assert_eq!(client.next_error_code().await, "not_joined");
}

#[tokio::test]
async fn a_deleted_message_disappears_from_live_clients_replays_and_history() {
    let pair = Pair::start(&[]).await;
    let backend = pair.api_token("moderator");
    let mut on_a = pair.connect(&pair.a, "u-ann", "?room=team").await;
    let mut on_b = pair.connect(&pair.b, "u-bob", "?room=team").await;
    let mut ids = Vec::new();
    for text in ["first", "the secret", "third"] {
        on_a.send("ann", text).await;
        ids.push(on_a.next_message().await["id"].as_str().unwrap().to_owned());
        on_b.next_message().await;
    }
    // The room was new at hello: its epoch is what a page names now.
    let epoch = page(&pair.a, &backend, "team", "").await.1["epoch"]
        .as_str()
        .unwrap()
        .to_owned();

    let path = format!("/api/v1/rooms/team/messages/{}", ids[1]);
    let (status, body, _) = api(&pair.b, "DELETE", &path, Some(&backend), None).await;
    assert_eq!((status, body), (204, Value::Null));
    let deleted = json!({"type": "deleted", "room": "team", "id": ids[1]});
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.next_json().await, deleted);
    }
    // Deleting it again changes nothing; a message that is not there is a 404.
    assert_eq!(
        api(&pair.a, "DELETE", &path, Some(&backend), None).await.0,
        204
    );
    let missing = api(
        &pair.a,
        "DELETE",
        "/api/v1/rooms/team/messages/1-0",
        Some(&backend),
        None,
    )
    .await;
    assert_eq!((missing.0, &missing.1["code"]), (404, &json!("not_found")));
    let malformed = api(
        &pair.a,
        "DELETE",
        "/api/v1/rooms/team/messages/xyz",
        Some(&backend),
        None,
    )
    .await;
    assert_eq!(
        (malformed.0, &malformed.1["code"]),
        (400, &json!("invalid_id"))
    );
    on_a.send("ann", "after").await;
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.next_message().await["text"], "after");
    }

    // History: in its place, without its text.
    let (_, history) = page(&pair.a, &backend, "team", "").await;
    assert!(!history.to_string().contains("secret"), "{history}");
    assert_eq!(history["messages"][2], deleted);
    // A replay from before it, from it, and of the newest messages: never the text,
    // and a client that saw it learns it is gone; recovery holds across the tombstone.
    for since in [&ids[0], &ids[1]] {
        let query = format!("?room=team&since={since}&epoch={epoch}");
        let mut rejoined = pair.connect(&pair.b, "u-bob", &query).await;
        assert_eq!(rejoined.hello["recovered"], true, "{}", rejoined.hello);
        let replay = messages_until(&mut rejoined, "after").await;
        assert!(replay.contains(&deleted), "{replay:?}");
        assert!(!format!("{replay:?}").contains("secret"), "{replay:?}");
    }
    let mut fresh = pair
        .connect(&pair.a, "u-cat", "?room=team&history=10")
        .await;
    let replay = messages_until(&mut fresh, "after").await;
    assert_eq!(replay[0]["text"], "first");
    assert_eq!(replay[1], deleted);
    assert!(!format!("{replay:?}").contains("secret"), "{replay:?}");
}

/// How long until `client` is closed; its close code and reason.
async fn closed(client: &mut Client) -> (u16, String) {
    let (close, _) = client.read_until_closed_with_reason().await;
    close.expect("a close frame")
}

#[tokio::test]
async fn a_disconnect_closes_the_users_connections_on_both_instances_and_a_ban_refuses_them_until_it_ends()
 {
    let pair = Pair::start(&[]).await;
    let backend = pair.api_token("moderator");
    let mut bob_a = pair.connect(&pair.a, "u-bob", "?room=lobby").await;
    let mut bob_b = pair.connect(&pair.b, "u-bob", "?room=ops").await;
    let mut ann = pair.connect(&pair.a, "u-ann", "?room=lobby").await;

    // A disconnect without a ban: 4001, and bob may come back at once.
    let started = Instant::now();
    let (status, answer, _) = api(
        &pair.b,
        "POST",
        "/api/v1/users/u-bob/disconnect",
        Some(&backend),
        None,
    )
    .await;
    assert_eq!((status, &answer), (202, &json!({"sub": "u-bob"})));
    for client in [&mut bob_a, &mut bob_b] {
        assert_eq!(
            closed(client).await,
            (4001, "disconnected by the operator".into())
        );
    }
    let took = started.elapsed();
    eprintln!("disconnect: both connections closed {took:?} after the request");
    let mut bob_a = pair.connect(&pair.a, "u-bob", "?room=lobby").await;

    // A ban of 4 s: both closed with 4003, saying for how long and why.
    let ban_secs = 4;
    let started = Instant::now();
    let mut bob_b = pair.connect(&pair.b, "u-bob", "?room=ops").await;
    let (status, answer, _) = api(
        &pair.a,
        "POST",
        "/api/v1/users/u-bob/disconnect",
        Some(&backend),
        Some(&json!({"ban_seconds": ban_secs, "reason": "spamming"})),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let until_ms = answer["banned_until_ms"].as_u64().unwrap();
    let mut latest = Duration::ZERO;
    for client in [&mut bob_a, &mut bob_b] {
        let (code, reason) = closed(client).await;
        latest = latest.max(started.elapsed());
        assert_eq!(code, 4003);
        assert!(
            reason.starts_with("banned for ") && reason.ends_with(" s: spamming"),
            "{reason}"
        );
    }
    eprintln!("ban: both connections closed {latest:?} after the request");
    assert!(latest < Duration::from_secs(5), "closed after {latest:?}");
    // Ann, on the same instance and room, is untouched.
    ann.send("ann", "still here").await;
    assert_eq!(ann.next_message().await["text"], "still here");

    // Reconnecting is refused on both instances, at once, until the ban ends.
    for server in [&pair.a, &pair.b] {
        let token = pair.user_token("u-bob", "bob");
        let (code, reason) = Client::refused(server, &format!("?token={token}"), &[]).await;
        assert_eq!(code, 4003);
        assert!(reason.starts_with("banned for "), "{reason}");
    }
    let token = pair.user_token("u-bob", "bob");
    let back = poll_until(WAIT, "bob to be let in after his ban", || async {
        match Client::open(&pair.b, &format!("?token={token}"), &[]).await {
            (client, _, Event::Json(_)) => Some(client),
            (_, _, Event::Closed(_)) => None,
        }
    })
    .await;
    let let_in_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        let_in_ms + 1000 >= until_ms,
        "let in {} ms before the ban ended",
        until_ms.saturating_sub(let_in_ms)
    );
    drop(back);

    // A ban lifted early: let in at once.
    api(
        &pair.a,
        "POST",
        "/api/v1/users/u-bob/disconnect",
        Some(&backend),
        Some(&json!({"ban_seconds": 3600})),
    )
    .await;
    let (code, _) = Client::refused(&pair.a, &format!("?token={token}"), &[]).await;
    assert_eq!(code, 4003);
    let (status, _, _) = api(
        &pair.b,
        "DELETE",
        "/api/v1/users/u-bob/ban",
        Some(&backend),
        None,
    )
    .await;
    assert_eq!(status, 204);
    pair.connect(&pair.a, "u-bob", "?room=lobby").await;
}

#[tokio::test]
async fn missing_expired_and_non_api_tokens_get_their_status_and_change_nothing() {
    let pair = Pair::start(&["--api-rate-burst", "3", "--api-rate-per-sec", "0.2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let stranger = KeyPair::ed25519(dir.path(), "stranger");
    let mut watcher = pair.connect(&pair.a, "u-bob", "?room=lobby").await;
    let expired = pair
        .key
        .token(&json!({"sub": "backend", "scope": "api", "exp": unix_now() - 10}));
    let user = pair.user_token("u-ann", "Ann");
    let forged = stranger.token(&api_claims("backend", 3600));
    let no_scope = pair
        .key
        .token(&json!({"sub": "backend", "scope": "read", "exp": unix_now() + 60}));
    let message = json!({"name": "x", "text": "must not be stored"});
    let cases = [
        (None, 401, "token_required"),
        (Some(expired.as_str()), 401, "token_expired"),
        (Some(forged.as_str()), 401, "invalid_token"),
        (Some("not-a-jwt"), 401, "invalid_token"),
        (Some(user.as_str()), 403, "insufficient_scope"),
        (Some(no_scope.as_str()), 403, "insufficient_scope"),
    ];
    for (token, want, code) in cases {
        for (method, path, body) in [
            ("POST", "/api/v1/rooms/lobby/messages", Some(&message)),
            ("GET", "/api/v1/rooms/lobby/messages", None),
            ("GET", "/api/v1/rooms/lobby/presence", None),
            ("POST", "/api/v1/users/u-bob/disconnect", None),
        ] {
            let (status, answer, headers) = api(&pair.b, method, path, token, body).await;
            assert_eq!(
                (status, &answer["code"]),
                (want, &json!(code)),
                "{method} {path}: {answer}"
            );
            assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(headers.contains_key("www-authenticate"), "{method} {path}");
        }
    }

    // Bad input: 400 and its code, nothing stored.
    let backend = pair.api_token("backend-1");
    let bad = [
        (
            "/api/v1/rooms/no%20room/messages",
            json!({"name": "a", "text": "b"}),
            "invalid_room",
        ),
        (
            "/api/v1/rooms/lobby/messages",
            json!({"name": "a", "text": " "}),
            "invalid_text",
        ),
        (
            "/api/v1/rooms/lobby/messages",
            json!({"name": "a", "text": "b", "cid": "a b"}),
            "invalid_cid",
        ),
        (
            "/api/v1/rooms/lobby/messages",
            json!({"name": "a", "txt": "b"}),
            "invalid_json",
        ),
        (
            "/api/v1/rooms/lobby/messages",
            json!({"name": "a".repeat(40), "text": "b"}),
            "name_too_long",
        ),
    ];
    for (i, (path, body, code)) in bad.iter().enumerate() {
        // Each from its own caller: this is about input, not the budget.
        let token = pair.api_token(&format!("bad-{i}"));
        let (status, answer, _) = api(&pair.a, "POST", path, Some(&token), Some(body)).await;
        assert_eq!(
            (status, &answer["code"]),
            (400, &json!(code)),
            "{path} {body}: {answer}"
        );
    }
    for (i, (query, code)) in [
        ("?limit=0", "invalid_limit"),
        ("?limit=abc", "invalid_limit"),
        ("?before=x", "invalid_before"),
        ("?before=1-0&after=1-0", "invalid_bound"),
        ("?epoch=a%20b", "invalid_epoch"),
    ]
    .iter()
    .enumerate()
    {
        let token = pair.api_token(&format!("query-{i}"));
        let (status, answer) = page(&pair.a, &token, "lobby", query).await;
        assert_eq!(
            (status, &answer["code"]),
            (400, &json!(code)),
            "{query}: {answer}"
        );
    }
    let token = pair.api_token("kicker");
    let (status, answer, _) = api(
        &pair.a,
        "POST",
        "/api/v1/users/u-bob/disconnect",
        Some(&token),
        Some(&json!({"ban_seconds": 0})),
    )
    .await;
    assert_eq!((status, &answer["code"]), (400, &json!("invalid_ban")));

    // The budget: 3 requests, then 429 with Retry-After; another caller is unaffected.
    for _ in 0..3 {
        assert_eq!(page(&pair.a, &backend, "lobby", "").await.0, 200);
    }
    let (status, answer, headers) = api(
        &pair.a,
        "GET",
        "/api/v1/rooms/lobby/messages",
        Some(&backend),
        None,
    )
    .await;
    assert_eq!((status, &answer["code"]), (429, &json!("rate_limited")));
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        page(&pair.a, &pair.api_token("backend-2"), "lobby", "")
            .await
            .0,
        200
    );

    // Nothing was stored, and bob was never disconnected.
    let (_, history) = page(&pair.b, &pair.api_token("auditor"), "lobby", "").await;
    assert_eq!(history["messages"], json!([]));
    watcher.send("bob", "still connected").await;
    assert_eq!(watcher.next_message().await["text"], "still connected");
    // Unknown endpoints and methods are JSON errors too.
    let (status, answer, _) = api(&pair.a, "GET", "/api/v1/nothing", Some(&token), None).await;
    assert_eq!((status, &answer["code"]), (404, &json!("not_found")));
    let (status, answer, _) = api(
        &pair.a,
        "PUT",
        "/api/v1/rooms/lobby/messages",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        (status, &answer["code"]),
        (405, &json!("method_not_allowed"))
    );
}

#[tokio::test]
async fn presence_lists_each_user_once_across_instances() {
    let pair = Pair::start(&[]).await;
    let _ann_a = pair.connect(&pair.a, "u-ann", "?room=desk").await;
    let _ann_b = pair.connect(&pair.b, "u-ann", "?room=desk").await;
    let _bob = pair.connect(&pair.b, "u-bob", "?room=desk").await;
    let token = pair.api_token("backend");
    let (status, answer, _) = api(
        &pair.a,
        "GET",
        "/api/v1/rooms/desk/presence",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({"room": "desk", "count": 2, "members": [
            {"sub": "u-ann", "name": "u-ann"}, {"sub": "u-bob", "name": "u-bob"}
        ]})
    );
}

#[tokio::test]
async fn the_openapi_document_describes_what_is_served_and_without_sign_in_the_api_is_off() {
    let pair = Pair::start(&[]).await;
    let (status, document, _) = api(&pair.a, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let mut operations: Vec<String> = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations.push(format!("{} {path}", method.to_uppercase()));
            let answers = operation["responses"].as_object().unwrap();
            for status in ["400", "401", "403", "429", "503"] {
                let schema = &answers[status]["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/ErrorBody",
                    "{method} {path}"
                );
            }
        }
    }
    assert_eq!(document["security"], json!([{"bearer": []}]));
    assert!(document["components"]["schemas"]["ErrorBody"].is_object());
    operations.sort();
    assert_eq!(
        operations,
        [
            "DELETE /api/v1/rooms/{room}/messages/{id}",
            "DELETE /api/v1/users/{sub}/ban",
            "GET /api/v1/rooms/{room}/messages",
            "GET /api/v1/rooms/{room}/presence",
            "POST /api/v1/rooms/{room}/messages",
            "POST /api/v1/users/{sub}/disconnect",
        ]
    );
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Every operation it lists is served: none answers 404 or 405 to a caller.
    let token = pair.api_token("backend");
    for operation in &operations {
        let (method, path) = operation.split_once(' ').unwrap();
        let path = path
            .replace("{room}", "lobby")
            .replace("{id}", "1-0")
            .replace("{sub}", "nobody");
        let body = (method == "POST").then(|| json!({"name": "n", "text": "t"}));
        let body = if path.ends_with("disconnect") {
            None
        } else {
            body
        };
        let (status, answer, _) = api(&pair.b, method, &path, Some(&token), body.as_ref()).await;
        let missing_message = method == "DELETE" && path.contains("/messages/");
        assert!(
            status < 300 || (missing_message && status == 404 && answer["code"] == "not_found"),
            "{operation}: {status} {answer}"
        );
    }

    let redis = Redis::start();
    let open = Server::start("open", &redis.url(), &[]);
    for (method, path) in [
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/rooms/lobby/messages"),
        ("POST", "/api/v1/users/x/disconnect"),
        ("GET", "/api/v1/elsewhere"),
    ] {
        let (status, answer, _) = api(&open, method, path, Some(&token), None).await;
        assert_eq!(
            (status, &answer["code"]),
            (404, &json!("api_disabled")),
            "{path}"
        );
    }
}

/// On a Redis Cluster the same holds: the deletion's script and the room's channel are
/// in the room's slot (sharded pub/sub), and the control stream is followed on the
/// shard that holds it.
#[tokio::test]
async fn on_a_redis_cluster_posts_deletions_and_disconnects_reach_both_instances() {
    let cluster = Backing::Cluster(RedisCluster::start(3));
    let pair = Pair::on(cluster, &["--redis-cluster", "true"]).await;
    let backend = pair.api_token("backend");
    let mut on_a = pair.connect(&pair.a, "u-ann", "?room=ops").await;
    let mut on_b = pair.connect(&pair.b, "u-bob", "?room=ops").await;
    let (status, posted) = post(
        &pair.a,
        &backend,
        "ops",
        json!({"name": "bot", "text": "hi"}),
    )
    .await;
    assert_eq!(status, 200, "{posted}");
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.next_message().await["id"], posted["id"]);
    }
    let path = format!(
        "/api/v1/rooms/ops/messages/{}",
        posted["id"].as_str().unwrap()
    );
    assert_eq!(
        api(&pair.b, "DELETE", &path, Some(&backend), None).await.0,
        204
    );
    let deleted = json!({"type": "deleted", "room": "ops", "id": posted["id"]});
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(client.next_json().await, deleted);
    }
    assert_eq!(
        page(&pair.a, &backend, "ops", "").await.1["messages"],
        json!([deleted])
    );
    let mut bob_on_a = pair.connect(&pair.a, "u-bob", "?room=lobby").await;
    let (status, _, _) = api(
        &pair.a,
        "POST",
        "/api/v1/users/u-bob/disconnect",
        Some(&backend),
        Some(&json!({"ban_seconds": 60})),
    )
    .await;
    assert_eq!(status, 202);
    for client in [&mut on_b, &mut bob_on_a] {
        assert_eq!(closed(client).await.0, 4003);
    }
    let token = pair.user_token("u-bob", "bob");
    assert_eq!(
        Client::refused(&pair.b, &format!("?token={token}"), &[])
            .await
            .0,
        4003
    );
}

/// An instance whose link to Redis is down when a disconnect is asked misses nothing:
/// the control stream keeps the request, and the instance closes the user's connection
/// once the link is back.
#[tokio::test]
async fn an_instance_cut_off_from_redis_carries_out_a_disconnect_when_the_link_returns() {
    let redis = Redis::start();
    let proxy = common::Proxy::start(redis.port).await;
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::ed25519(dir.path(), "identity");
    let auth = ["--auth-public-key-file", key.public_pem_path()];
    let a = Server::start("a", &redis.url(), &auth);
    let b = Server::start("b", &proxy.url(), &auth);
    a.wait_health(200).await;
    b.wait_health(200).await;
    let token = key.token(&json!({"sub": "u-bob", "name": "bob", "exp": unix_now() + 600}));
    let mut bob = Client::connect(&b, &format!("?token={token}")).await;

    proxy.cut();
    b.wait_health(503).await;
    let backend = key.token(&api_claims("moderator", 600));
    let (status, _, _) = api(
        &a,
        "POST",
        "/api/v1/users/u-bob/disconnect",
        Some(&backend),
        None,
    )
    .await;
    assert_eq!(status, 202);
    // Instance a carried it out; b could not read it.
    poll_until(WAIT, "instance a to carry out the disconnect", || async {
        a.logged("disconnecting a user").then_some(())
    })
    .await;
    assert!(!b.logged("disconnecting a user"));
    proxy.restore();
    assert_eq!(
        closed(&mut bob).await,
        (4001, "disconnected by the operator".into())
    );
    b.wait_health(200).await;
}
