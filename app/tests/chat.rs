//! Chat behaviour across real processes: several `chat-server`s sharing one
//! `redis-server`, talked to by real WebSocket clients.

mod common;

use common::{Client, Redis, Server, texts};
use futures_util::SinkExt as _;
use serde_json::Value;

/// Messages from clients on three instances reach every client on every instance, and
/// all clients see them in the same order.
#[tokio::test(flavor = "multi_thread")]
async fn messages_cross_instances_in_one_order() {
    let redis = Redis::start();
    let servers: Vec<Server> = ["a", "b", "c"]
        .iter()
        .map(|id| Server::start(id, &redis.url(), &[]))
        .collect();
    let mut clients = Vec::new();
    for server in &servers {
        let client = Client::connect(server, "").await;
        assert_eq!(client.hello["instance"], server.instance.as_str());
        assert_eq!(client.hello["room"], "lobby");
        clients.push(client);
    }
    // Interleave senders so the order is decided by Redis, not by one connection.
    let per_client = 5;
    for round in 0..per_client {
        for (i, client) in clients.iter_mut().enumerate() {
            client
                .send(&format!("user{i}"), &format!("m{i}-{round}"))
                .await;
        }
    }
    let total = per_client * clients.len();
    let mut orders = Vec::new();
    for client in &mut clients {
        let mut got = Vec::new();
        for _ in 0..total {
            got.push(client.next_message().await);
        }
        orders.push(got);
    }
    for got in &orders {
        assert_eq!(texts(got), texts(&orders[0]), "every client sees one order");
        let ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), total);
        for m in got {
            assert_eq!(m["room"], "lobby");
            assert!(m["ts"].as_u64().unwrap() > 1_600_000_000_000);
        }
    }
    // Each sender's own messages keep the order it sent them in.
    for i in 0..clients.len() {
        let mine: Vec<String> = texts(&orders[0])
            .into_iter()
            .filter(|t| t.starts_with(&format!("m{i}-")))
            .collect();
        let expected: Vec<String> = (0..per_client).map(|r| format!("m{i}-{r}")).collect();
        assert_eq!(mine, expected);
    }
}

/// A message in one room never reaches a client of another room, even on the same
/// instance.
#[tokio::test(flavor = "multi_thread")]
async fn rooms_are_isolated() {
    let redis = Redis::start();
    let a = Server::start("a", &redis.url(), &[]);
    let b = Server::start("b", &redis.url(), &[]);
    let mut red_a = Client::connect(&a, "?room=red").await;
    let mut blue_a = Client::connect(&a, "?room=blue").await;
    let mut blue_b = Client::connect(&b, "?room=blue").await;
    assert_eq!(blue_b.hello["room"], "blue");

    red_a.send("r", "only red").await;
    let m = red_a.next_message().await;
    assert_eq!(
        (m["room"].as_str(), m["text"].as_str()),
        (Some("red"), Some("only red"))
    );
    // Blue's next message must be blue's own, not red's.
    blue_b.send("b", "blue marker").await;
    for client in [&mut blue_a, &mut blue_b] {
        let m = client.next_message().await;
        assert_eq!(m["text"], "blue marker");
        assert_eq!(m["room"], "blue");
    }
    // And red did not get blue's.
    red_a.send("r", "red marker").await;
    assert_eq!(red_a.next_message().await["text"], "red marker");
}

/// Reconnecting with `since` replays exactly the later messages, then goes live with
/// no gap and no duplicate, also on another instance.
#[tokio::test(flavor = "multi_thread")]
async fn since_replays_exactly_once_then_goes_live() {
    let redis = Redis::start();
    // 16 messages in a quick burst: above the default rate limit.
    let flags = ["--rate-burst", "100"];
    let a = Server::start("a", &redis.url(), &flags);
    let b = Server::start("b", &redis.url(), &flags);
    let mut writer = Client::connect(&a, "?room=r1").await;
    let mut reader = Client::connect(&b, "?room=r1").await;
    for i in 0..10 {
        writer.send("w", &format!("m{i}")).await;
    }
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(reader.next_message().await);
    }
    let last_seen_id = seen[4]["id"].as_str().unwrap().to_owned();
    drop(reader);

    // Writes keep coming while the reader reconnects; it must get each exactly once.
    let mut resumed = Client::connect(&a, &format!("?room=r1&since={last_seen_id}")).await;
    for i in 10..15 {
        writer.send("w", &format!("m{i}")).await;
    }
    let mut got = Vec::new();
    for _ in 5..15 {
        got.push(resumed.next_message().await);
    }
    let expected: Vec<String> = (5..15).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&got), expected);
    // The ids are the ones the first connection saw.
    for (old, new) in seen[5..].iter().zip(&got) {
        assert_eq!(old["id"], new["id"]);
    }
    // Nothing extra is queued: the next frame is the next new message.
    writer.send("w", "after").await;
    assert_eq!(resumed.next_message().await["text"], "after");

    // `since` from before the room existed replays the whole history.
    let mut all = Client::connect(&b, "?room=r1&since=0-0").await;
    let mut replay = Vec::new();
    for _ in 0..16 {
        replay.push(all.next_message().await);
    }
    assert_eq!(replay.last().unwrap()["text"], "after");
    assert_eq!(replay[0]["text"], "m0");
}

/// Every kind of bad input gets its error frame and the connection keeps working;
/// sustained invalid input closes it with 1008; a frame over the hard cap closes it
/// with 1009.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_error_frames_then_1008() {
    let redis = Redis::start();
    let server = Server::start(
        "a",
        &redis.url(),
        &["--rate-per-sec", "1", "--rate-burst", "3"],
    );
    let mut client = Client::connect(&server, "").await;
    let long_name = "n".repeat(33);
    let long_text = "t".repeat(2001);
    let too_large = format!(
        r#"{{"type":"send","name":"a","text":"{}"}}"#,
        "x".repeat(20_000)
    );
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "invalid_json"),
        (r#"{"type":"shout","text":"x"}"#.into(), "unknown_type"),
        (r#"{"type":"send","name":"a"}"#.into(), "invalid_field"),
        (
            r#"{"type":"send","name":"","text":"x"}"#.into(),
            "invalid_name",
        ),
        (
            r#"{"type":"send","name":"a","text":" "}"#.into(),
            "invalid_text",
        ),
        (
            format!(r#"{{"type":"send","name":"{long_name}","text":"x"}}"#),
            "name_too_long",
        ),
        (
            format!(r#"{{"type":"send","name":"a","text":"{long_text}"}}"#),
            "text_too_long",
        ),
        (
            r#"{"type":"send","name":"a","text":"bell\u0007"}"#.into(),
            "control_characters",
        ),
        (too_large, "too_large"),
    ];
    for (frame, code) in &cases {
        client.send_raw(frame).await;
        assert_eq!(
            &client.next_error_code().await,
            code,
            "for frame {frame:.60}"
        );
    }
    client
        .ws
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1, 2, 3,
        ]))
        .await
        .unwrap();
    assert_eq!(client.next_error_code().await, "unsupported");

    // Still usable after all that.
    client.send("alice", "still here").await;
    let m = client.next_message().await;
    assert_eq!(
        (m["name"].as_str(), m["text"].as_str()),
        (Some("alice"), Some("still here"))
    );

    // Junk on a fresh connection, without reading the answers: closed with 1008
    // (policy violation) once the abuse allowance is spent.
    let mut client = Client::connect(&server, "").await;
    for _ in 0..30 {
        if client
            .ws
            .send(tokio_tungstenite::tungstenite::Message::text("junk"))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, seen) = client.read_until_closed().await;
    assert_eq!(code, Some(1008), "after {} frames", seen.len());
    assert!(seen.iter().all(|f| f["code"] == "invalid_json"));

    // A frame beyond the WebSocket layer's hard cap ends the connection with 1009.
    let mut big = Client::connect(&server, "").await;
    big.send_raw(&"x".repeat(100_000)).await;
    assert_eq!(big.read_until_closed().await.0, Some(1009));

    assert!(server.metric("chat_rejected_frames_total").await >= cases.len() as f64 + 1.0);
}

/// Frames that break the WebSocket protocol end the connection with the close code RFC
/// 6455 §7.4.1 names for them, so that the client learns why instead of seeing 1006: a
/// text frame that is not UTF-8 with 1007, reserved bits set or an unmasked frame from a
/// client with 1002. The bytes are written to the socket by hand, as a broken client
/// would.
#[tokio::test(flavor = "multi_thread")]
async fn protocol_errors_are_closed_with_1002_and_bad_utf8_with_1007() {
    use tokio::io::AsyncWriteExt as _;
    use tokio_tungstenite::MaybeTlsStream;

    let redis = Redis::start();
    let server = Server::start("a", &redis.url(), &[]);
    // FIN + opcode, then the mask bit + length, the (zero) mask key and the payload.
    let masked_text = |first: u8, payload: &[u8]| {
        let mut frame = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        frame
    };
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("invalid UTF-8", masked_text(0x81, &[0xC3, 0x28]), 1007),
        ("reserved bit", masked_text(0x80 | 0x40 | 0x01, b"{}"), 1002),
        ("unmasked", [&[0x81u8, 0x02][..], b"{}"].concat(), 1002),
    ];
    for (what, bytes, expected) in cases {
        let mut client = Client::connect(&server, "").await;
        let MaybeTlsStream::Plain(tcp) = client.ws.get_mut() else {
            unreachable!("the test servers speak plain WebSocket")
        };
        tcp.write_all(&bytes).await.unwrap();
        let (code, _) = client.read_until_closed().await;
        assert_eq!(code, Some(expected), "{what}");
    }
    // The server took none of it badly.
    let mut client = Client::connect(&server, "").await;
    client.send("alice", "still serving").await;
    assert_eq!(client.next_message().await["text"], "still serving");
}

/// A burst of 40 valid messages at 5 per second (bursts of 10): each is answered, the
/// first ten or so stored and the rest `rate_limited`, and the connection stays open;
/// a client that keeps flooding is closed with 4029 "rate limit exceeded", not as if
/// its messages were invalid.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_is_answered_and_a_flood_is_closed_for_the_rate() {
    let redis = Redis::start();
    let server = Server::start("a", &redis.url(), &[]);
    let mut client = Client::connect(&server, "").await;
    for i in 0..40 {
        client.send("alice", &format!("burst{i}")).await;
    }
    let (mut stored, mut refused) = (0, 0);
    for _ in 0..40 {
        let frame = client.next_json().await;
        match (frame["type"].as_str(), frame["code"].as_str()) {
            (Some("message"), _) => stored += 1,
            (Some("error"), Some("rate_limited")) => refused += 1,
            _ => panic!("unexpected {frame}"),
        }
    }
    eprintln!("burst of 40: {stored} stored, {refused} rate_limited");
    assert!((10..=13).contains(&stored), "{stored} stored");
    assert_eq!(stored + refused, 40);
    client.send("alice", "still open").await;
    let frame = client.next_json().await;
    assert!(
        frame["type"] == "message" || frame["code"] == "rate_limited",
        "{frame}"
    );

    for i in 0..300 {
        if client
            .ws
            .send(tokio_tungstenite::tungstenite::Message::text(
                serde_json::json!({"type": "send", "name": "alice", "text": format!("flood{i}")})
                    .to_string(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, seen) = client.read_until_closed_with_reason().await;
    assert_eq!(
        code,
        Some((4029, "rate limit exceeded".to_owned())),
        "after {} frames",
        seen.len()
    );
    assert!(
        seen.iter()
            .all(|f| f["type"] == "message" || f["code"] == "rate_limited")
    );
}

/// A `send` with a `cid` is acknowledged with the id it was stored as; sent again (the
/// same connection retrying, or another one after a reconnect) it is acknowledged with
/// the same id and stored once; an invalid `cid` is refused, and errors name the `cid`.
#[tokio::test(flavor = "multi_thread")]
async fn sends_with_a_cid_are_acked_and_stored_once() {
    let redis = Redis::start();
    let server = Server::start("a", &redis.url(), &[]);
    let mut client = Client::connect(&server, "?room=acks").await;
    client.send_cid("alice", "once", "c-1").await;
    let (mut ack, mut echo) = (None, None);
    while ack.is_none() || echo.is_none() {
        let frame = client.next_json().await;
        match frame["type"].as_str() {
            Some("ack") => ack = Some(frame),
            Some("message") => echo = Some(frame),
            _ => panic!("unexpected {frame}"),
        }
    }
    let (ack, echo) = (ack.unwrap(), echo.unwrap());
    assert_eq!(ack["cid"], "c-1");
    assert_eq!(ack["id"], echo["id"]);

    client.send_cid("alice", "once", "c-1").await;
    let again = client.next_json().await;
    assert_eq!(
        (again["type"].as_str(), &again["id"]),
        (Some("ack"), &ack["id"])
    );
    let mut reconnected = Client::connect(&server, "?room=acks").await;
    reconnected.send_cid("alice", "once", "c-1").await;
    assert_eq!(reconnected.next_json().await["id"], ack["id"]);
    // Nothing was stored twice: the next message anyone sees is the next one sent.
    reconnected.send_cid("alice", "twice?", "c-2").await;
    let next = client.next_message().await;
    assert_eq!(next["text"], "twice?");
    let len: u64 = redis::cmd("XLEN")
        .arg("chat:{acks}:log")
        .query_async(&mut common::redis_conn(&redis.url()).await)
        .await
        .unwrap();
    assert_eq!(len, 2);

    client
        .send_raw(r#"{"type":"send","name":"a","text":"b","cid":"no spaces"}"#)
        .await;
    assert_eq!(client.next_error_code().await, "invalid_cid");
    client
        .send_raw(r#"{"type":"send","name":"a","text":" ","cid":"c-3"}"#)
        .await;
    let refused = client.next_json().await;
    assert_eq!(
        (refused["code"].as_str(), refused["cid"].as_str()),
        (Some("invalid_text"), Some("c-3"))
    );
}

/// A `cid` is its author's: two guests who pick the same one in the same room are two
/// messages, each stored and acknowledged with its own id (before, the second was
/// acknowledged with the first one's id and never stored), while each one's retry is
/// still stored once.
#[tokio::test(flavor = "multi_thread")]
async fn two_authors_with_the_same_cid_are_two_messages() {
    let redis = Redis::start();
    let server = Server::start("a", &redis.url(), &[]);
    let mut alice = Client::connect(&server, "?room=shared").await;
    let mut bob = Client::connect(&server, "?room=shared").await;
    let ack_of = async |client: &mut Client, name: &str, text: &str| {
        client.send_cid(name, text, "1").await;
        loop {
            let frame = client.next_json().await;
            if frame["type"] == "ack" {
                return frame["id"].as_str().unwrap().to_owned();
            }
        }
    };
    let from_alice = ack_of(&mut alice, "alice", "alice's first").await;
    let from_bob = ack_of(&mut bob, "bob", "bob's first").await;
    assert_ne!(from_alice, from_bob, "bob's message was taken for alice's");
    assert_eq!(
        ack_of(&mut alice, "alice", "alice's first").await,
        from_alice
    );
    let mut replay = Client::connect(&server, "?room=shared&history=10").await;
    let mut texts = Vec::new();
    for _ in 0..2 {
        texts.push(replay.next_message().await["text"].clone());
    }
    assert_eq!(texts, ["alice's first", "bob's first"]);
}

/// Bad room names and `since` values are refused before the upgrade.
#[tokio::test(flavor = "multi_thread")]
async fn bad_query_parameters_are_refused() {
    let redis = Redis::start();
    let server = Server::start("a", &redis.url(), &[]);
    for query in [
        "?room=has%20space",
        "?room=a%2Fb",
        &format!("?room={}", "x".repeat(65)),
        "?since=yesterday",
    ] {
        let result = tokio_tungstenite::connect_async(server.ws_url(query)).await;
        match result {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 400, "{query}");
            }
            other => panic!("{query}: expected 400, got {other:?}"),
        }
    }
}

/// Browsers from other origins are refused at the upgrade (403); the same host, no
/// Origin at all, and configured origins are accepted.
#[tokio::test(flavor = "multi_thread")]
async fn origin_check() {
    let redis = Redis::start();
    let default = Server::start("a", &redis.url(), &[]);
    let same_host = format!("http://{}", default.addr);
    assert_eq!(Client::try_origin(&default, &same_host).await, 101);
    assert_eq!(
        Client::try_origin(&default, "https://evil.example").await,
        403
    );
    assert_eq!(Client::try_origin(&default, "null").await, 403);
    Client::connect(&default, "").await; // no Origin header

    let listed = Server::start(
        "b",
        &redis.url(),
        &[
            "--allowed-origins",
            "https://chat.example.com,https://other.example",
        ],
    );
    assert_eq!(
        Client::try_origin(&listed, "https://chat.example.com").await,
        101
    );
    assert_eq!(
        Client::try_origin(&listed, "https://other.example").await,
        101
    );
    assert_eq!(
        Client::try_origin(&listed, "https://evil.example").await,
        403
    );
}

/// `/metrics` is Prometheus text with the documented series, and they move.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_page() {
    let redis = Redis::start();
    let server = Server::start("a", &redis.url(), &[]);
    server.wait_health(200).await;
    let mut client = Client::connect(&server, "").await;
    client.send("a", "one").await;
    client.next_message().await;

    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "chat_connections",
        "chat_connections_total",
        "chat_messages_in_total",
        "chat_messages_out_total",
        "chat_rejected_frames_total",
        "chat_slow_consumer_disconnects_total",
        "chat_rooms",
        "chat_redis_up",
        "chat_draining",
    ] {
        assert!(
            body.contains(&format!("# TYPE {series} ")),
            "{series} missing:\n{body}"
        );
    }
    assert_eq!(server.metric("chat_connections").await, 1.0);
    assert_eq!(server.metric("chat_messages_in_total").await, 1.0);
    assert_eq!(server.metric("chat_messages_out_total").await, 1.0);
    assert_eq!(server.metric("chat_redis_up").await, 1.0);
    assert_eq!(server.metric("chat_rooms").await, 1.0);
    // The histograms an operator needs: every Redis call's latency, and the time from
    // a message's store to its delivery here.
    for histogram in ["chat_redis_call_seconds", "chat_store_to_delivery_seconds"] {
        assert!(
            body.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram} missing:\n{body}"
        );
        assert!(server.metric(&format!("{histogram}_count")).await >= 1.0);
        assert!(body.contains(&format!("{histogram}_bucket{{le=\"0.005\"}}")));
    }

    let (status, page) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Chat</title>"));
    assert!(
        !page.contains("innerHTML"),
        "user data must be rendered with textContent"
    );
}

/// A client that stops reading is disconnected with 4000 once it falls behind, while
/// another client of the same room keeps receiving everything.
#[tokio::test(flavor = "multi_thread")]
async fn slow_consumer_is_disconnected_others_unaffected() {
    let redis = Redis::start();
    let server = Server::start(
        "a",
        &redis.url(),
        &[
            "--send-queue",
            "64",
            "--write-timeout-secs",
            "2",
            "--rate-per-sec",
            "100000",
            "--rate-burst",
            "100000",
        ],
    );
    let mut slow = Client::connect(&server, "").await;
    let mut fast = Client::connect(&server, "").await;
    let mut sender = Client::connect(&server, "").await;
    let text = "z".repeat(1900);

    // Send until the server gives up on the slow client; the fast one reads as it goes.
    // The sender is in the room too, so it reads its copies like the fast client.
    let mut sent = 0usize;
    let mut fast_got: Vec<Value> = Vec::new();
    let mut sender_got = 0;
    while server.metric("chat_slow_consumer_disconnects_total").await < 1.0 {
        assert!(sent < 200_000, "slow client never disconnected");
        for _ in 0..25 {
            sender.send("s", &format!("{sent} {text}")).await;
            sent += 1;
        }
        while fast_got.len() < sent {
            fast_got.push(fast.next_message().await);
        }
        while sender_got < sent {
            sender.next_message().await;
            sender_got += 1;
        }
    }
    // The slow client finds its stream ended with "slow consumer".
    let (code, _) = slow.read_until_closed().await;
    assert_eq!(code, Some(4000));

    // The fast client got every message in order, and is still served.
    sender.send("s", "final").await;
    sent += 1;
    while fast_got.len() < sent {
        fast_got.push(fast.next_message().await);
    }
    for (i, m) in fast_got[..sent - 1].iter().enumerate() {
        assert!(m["text"].as_str().unwrap().starts_with(&format!("{i} ")));
    }
    assert_eq!(fast_got.last().unwrap()["text"], "final");
    assert_eq!(
        server.metric("chat_slow_consumer_disconnects_total").await,
        1.0
    );
}

/// The server pings; a client that answers (tungstenite answers while it reads) stays
/// connected past the peer timeout, one that never answers is dropped.
#[tokio::test(flavor = "multi_thread")]
async fn pings_keep_live_clients_and_drop_dead_ones() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;

    let redis = Redis::start();
    let server = Server::start(
        "a",
        &redis.url(),
        &["--ping-secs", "1", "--peer-timeout-secs", "3"],
    );
    let mut live = Client::connect(&server, "").await;
    let dead = Client::connect(&server, "").await; // never read again: never pongs
    assert_eq!(server.metric("chat_connections").await, 2.0);

    // Six pings at one per second outlast the 3 s peer timeout.
    let mut pings = 0;
    while pings < 6 {
        let frame = tokio::time::timeout(common::WAIT, live.ws.next())
            .await
            .expect("no ping from the server")
            .expect("live client's connection ended")
            .unwrap();
        if matches!(frame, Message::Ping(_)) {
            pings += 1;
        }
    }
    common::poll_until(common::WAIT, "the dead client to be dropped", || async {
        (server.metric("chat_connections").await == 1.0).then_some(())
    })
    .await;
    live.send("a", "still alive").await;
    assert_eq!(live.next_message().await["text"], "still alive");
    drop(dead);
}

/// A room at 2 000 messages a second (written on another instance), and a client
/// joining it after 2 s with a replay of about 4 000 messages (`since` the room's
/// first): the joiner gets in and stays, and receives every message of the room after
/// `since` exactly once, in order, from the replay through the seam into live delivery.
/// Before, the join took the room's live messages from its start, and a join that took
/// longer than `--send-queue` of them (the default 256: 128 ms of this room) was closed
/// with 4000 as a slow consumer, to come back with `since` and be closed again.
#[tokio::test(flavor = "multi_thread")]
async fn a_joiner_of_a_busy_room_gets_in_and_stays() {
    use futures_util::StreamExt as _;
    // 20 messages every 10 ms: 2 000 a second, for 4 s.
    const BATCHES: usize = 400;
    let redis = Redis::start();
    let history = ["--history-len", "20000"];
    let joined = Server::start("joined", &redis.url(), &history);
    let unlimited = [
        "--rate-per-sec",
        "100000",
        "--rate-burst",
        "100000",
        "--send-queue",
        "100000",
    ];
    let written = Server::start(
        "written",
        &redis.url(),
        &[&history[..], &unlimited].concat(),
    );
    let mut first = Client::connect(&written, "?room=hot").await;
    first.send("w", "first").await;
    let since = first.next_message().await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(first);

    // The writer reads (and drops) its echoes.
    let writer = Client::connect(&written, "?room=hot").await;
    let (mut sink, mut echoes) = writer.ws.split();
    let draining = tokio::spawn(async move { while echoes.next().await.is_some() {} });
    let writing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
        for batch in 0..BATCHES {
            tick.tick().await;
            for i in 0..20 {
                let text = format!("b{batch}-{i}");
                let frame = serde_json::json!({"type": "send", "name": "w", "text": text});
                sink.feed(tokio_tungstenite::tungstenite::Message::text(
                    frame.to_string(),
                ))
                .await
                .unwrap();
            }
            sink.flush().await.unwrap();
        }
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut joiner = Client::connect(&joined, &format!("?room=hot&since={since}")).await;
    assert_eq!(joiner.hello["recovered"], true, "{}", joiner.hello);
    let received: Vec<String> = joiner
        .next_messages(BATCHES * 20)
        .await
        .iter()
        .map(|message| message["id"].as_str().unwrap().to_owned())
        .collect();
    writing.await.unwrap();
    draining.abort();

    let mut conn = common::redis_conn(&redis.url()).await;
    let mut stored: Vec<String> = Vec::new();
    loop {
        let after = stored.last().unwrap_or(&since);
        let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("chat:{hot}:log")
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        if page.ids.is_empty() {
            break;
        }
        stored.extend(page.ids.into_iter().map(|entry| entry.id));
    }
    eprintln!("the joiner received all {} messages", received.len());
    assert_eq!(
        received, stored,
        "every message after since, once, in order"
    );
}
