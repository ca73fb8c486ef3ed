//! Failure and lifecycle: Redis killed and restarted mid-conversation, Redis over TLS,
//! and the SIGTERM drain.

mod common;

use std::time::Instant;

use common::{Client, Redis, Server, texts};

/// Redis dies hard (SIGKILL) mid-conversation and comes back on the same port with its
/// AOF: `/healthz` goes 503 then 200 on every instance, sends in between are refused
/// with `unavailable` (never silently dropped), clients stay connected, a message
/// stored while the servers are still reconnecting is delivered (readers resume from
/// their last id), and every stored message reaches every client exactly once and in
/// order; a client that reconnects with `since` across the outage misses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn redis_restart_loses_nothing() {
    let mut redis = Redis::start_persistent();
    let a = Server::start("a", &redis.url(), &[]);
    let b = Server::start("b", &redis.url(), &[]);
    a.wait_health(200).await;
    b.wait_health(200).await;
    let mut alice = Client::connect(&a, "?room=ops").await;
    let mut bob = Client::connect(&b, "?room=ops").await;

    alice.send("alice", "before 1").await;
    alice.send("alice", "before 2").await;
    let mut bob_seen = vec![bob.next_message().await, bob.next_message().await];
    for _ in 0..2 {
        alice.next_message().await;
    }
    let resume_from = bob_seen[1]["id"].as_str().unwrap().to_owned();

    redis.kill();
    a.wait_health(503).await;
    b.wait_health(503).await;
    assert_eq!(a.metric("chat_redis_up").await, 0.0);

    // While Redis is down a send is refused, not acknowledged and lost.
    alice.send("alice", "during").await;
    assert_eq!(alice.next_error_code().await, "unavailable");

    redis.restart();
    // Stored while the servers' readers are still backing off: they must resume from
    // the last id they delivered, not from "now", to see it.
    let mut direct = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Written as the server writes: linked to the entry before it.
    let top: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg("chat:{ops}:log")
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut direct)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("chat:{ops}:log")
        .arg("*")
        .arg("name")
        .arg("ops")
        .arg("text")
        .arg("while reconnecting")
        .arg("prev")
        .arg(&top.ids[0].id)
        .query_async(&mut direct)
        .await
        .unwrap();
    a.wait_health(200).await;
    b.wait_health(200).await;
    assert_eq!(alice.next_message().await["text"], "while reconnecting");

    // The same connections carry on. The first sends after a restart may still meet
    // the old connection; the client is told and retries, as the page's user would.
    for text in ["after 1", "after 2"] {
        loop {
            alice.send("alice", text).await;
            let frame = alice.next_json().await;
            match frame["type"].as_str() {
                Some("message") => {
                    assert_eq!(frame["text"], text);
                    break;
                }
                Some("error") => assert_eq!(frame["code"], "unavailable"),
                _ => panic!("unexpected {frame}"),
            }
        }
    }
    for _ in 0..3 {
        bob_seen.push(bob.next_message().await);
    }
    assert_eq!(
        texts(&bob_seen),
        [
            "before 1",
            "before 2",
            "while reconnecting",
            "after 1",
            "after 2"
        ]
    );

    // A client that was away during the outage resumes from its last id.
    let mut carol = Client::connect(&a, &format!("?room=ops&since={resume_from}")).await;
    let mut replay = Vec::new();
    for _ in 0..3 {
        replay.push(carol.next_message().await);
    }
    assert_eq!(texts(&replay), ["while reconnecting", "after 1", "after 2"]);
    // ...and the history from before the crash survived in Redis.
    let mut dave = Client::connect(&b, "?room=ops&since=0").await;
    let mut all = Vec::new();
    for _ in 0..5 {
        all.push(dave.next_message().await);
    }
    assert_eq!(
        texts(&all),
        [
            "before 1",
            "before 2",
            "while reconnecting",
            "after 1",
            "after 2"
        ]
    );
}

/// `rediss://` to a redis-server that only speaks TLS, trusting the test's CA through
/// `--redis-ca-file`; two instances exchange messages through it.
#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls() {
    let redis = Redis::start_tls();
    assert!(redis.url().starts_with("rediss://"));
    let ca = redis.ca_file().display().to_string();
    let a = Server::start("a", &redis.url(), &["--redis-ca-file", &ca]);
    let b = Server::start("b", &redis.url(), &["--redis-ca-file", &ca]);
    a.wait_health(200).await;
    b.wait_health(200).await;
    let mut alice = Client::connect(&a, "").await;
    let mut bob = Client::connect(&b, "").await;
    alice.send("alice", "over tls").await;
    assert_eq!(bob.next_message().await["text"], "over tls");

    // Without the CA the certificate is not trusted: joining a room needs Redis, so the
    // client is told and closed with 1013 (try again later).
    let untrusting = Server::start("c", &redis.url(), &[]);
    let mut carol = Client::connect(&untrusting, "").await;
    assert_eq!(carol.next_error_code().await, "unavailable");
    assert_eq!(carol.read_until_closed().await.0, Some(1013));
    let (status, body) = untrusting.get("/healthz").await;
    assert_eq!((status, body.trim()), (503, "redis unavailable"));
}

/// SIGTERM: `/healthz` is 503 at once; the open connections get close 1012 one by one,
/// spread over the drain minus its margin (6 s drain: closes within 3 s), not all at
/// the same instant; the process exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_spreads_1012_closes_then_exits() {
    let redis = Redis::start();
    let mut server = Server::start("a", &redis.url(), &["--drain-secs", "6"]);
    server.wait_health(200).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(Client::connect(&server, "").await);
    }

    let signalled = Instant::now();
    server.sigterm();
    server.wait_health(503).await;
    let (_, body) = server.get("/healthz").await;
    assert_eq!(body.trim(), "draining");
    assert_eq!(server.metric("chat_draining").await, 1.0);

    let closes = futures_util::future::join_all(clients.iter_mut().map(|client| async move {
        let (code, _) = client.read_until_closed().await;
        assert_eq!(code, Some(1012));
        signalled.elapsed().as_secs_f64()
    }))
    .await;
    let first = closes.iter().cloned().fold(f64::MAX, f64::min);
    let last = closes.iter().cloned().fold(0.0, f64::max);
    eprintln!("1012 closes from {first:.2} s to {last:.2} s after SIGTERM");
    assert!(
        last <= 3.0 + 1.5,
        "last close at {last:.2} s, after the window"
    );
    assert!(
        last - first >= 1.0,
        "closes not spread: {first:.2}..{last:.2} s"
    );
    let status = server.wait_exit().await;
    assert!(status.success(), "exit status {status}");
}
