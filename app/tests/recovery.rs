//! Recovery that tells the truth: `hello` says whether a client rejoining with `since`
//! (and `epoch`) was made whole, and why not; a connected client whose instance missed
//! entries is told in-band. Real `redis-server`s, real servers, real WebSocket clients.

mod common;

use common::{Client, Proxy, Redis, Server, redis_conn, texts};
use serde_json::Value;

fn burst_flags() -> Vec<&'static str> {
    vec!["--history-len", "3", "--rate-burst", "100"]
}

/// Sends one message at a time, each after the previous came back: with a history of
/// three entries a burst could be trimmed before the fan-out reader saw it, and the
/// server would (rightly) tell the writer it missed messages.
async fn send_all(client: &mut Client, texts: &[&str]) -> Vec<Value> {
    let mut seen = Vec::new();
    for text in texts {
        client.send("w", text).await;
        seen.push(client.next_message().await);
    }
    seen
}

fn id_of(message: &Value) -> String {
    message["id"].as_str().unwrap().to_owned()
}

/// Within the history window a rejoin is recovered (exactly the later messages); a
/// position older than the window is `too_old`, one past the newest entry is
/// `history_lost`, a stale epoch is `epoch_changed`, and none of those replays anything
/// from `since`: the next frame is the next live message. A `since` in the future is
/// refused at the upgrade.
#[tokio::test(flavor = "multi_thread")]
async fn hello_says_whether_the_client_was_made_whole() {
    let redis = Redis::start();
    let server = Server::start("a", &redis.url(), &burst_flags());
    let mut writer = Client::connect(&server, "?room=r").await;
    assert!(
        writer.hello.get("recovered").is_none(),
        "no since, no verdict"
    );
    let sent = send_all(&mut writer, &["m0", "m1", "m2", "m3", "m4", "m5"]).await;
    let ids: Vec<String> = sent.iter().map(id_of).collect();

    let fresh = Client::connect(&server, "?room=r").await;
    let epoch = fresh.hello["epoch"]
        .as_str()
        .expect("a room with history has an epoch")
        .to_owned();
    drop(fresh);

    let mut within =
        Client::connect(&server, &format!("?room=r&since={}&epoch={epoch}", ids[3])).await;
    assert_eq!(within.hello["recovered"], true, "{}", within.hello);
    assert!(within.hello.get("reason").is_none());
    assert_eq!(within.hello["epoch"], epoch.as_str());
    let replay = vec![within.next_message().await, within.next_message().await];
    assert_eq!(texts(&replay), ["m4", "m5"]);

    let past_newest = {
        let (ms, seq) = ids[5].split_once('-').unwrap();
        format!("{ms}-{}", seq.parse::<u64>().unwrap() + 7)
    };
    let cases = [
        (format!("since={}&epoch={epoch}", ids[0]), "too_old"),
        (format!("since={}", ids[1]), "too_old"),
        (format!("since={past_newest}&epoch={epoch}"), "history_lost"),
        (
            format!("since={}&epoch=someotherepoch", ids[4]),
            "epoch_changed",
        ),
    ];
    let mut refused = Vec::new();
    for (query, reason) in &cases {
        let client = Client::connect(&server, &format!("?room=r&{query}")).await;
        assert_eq!(
            client.hello["recovered"], false,
            "{query}: {}",
            client.hello
        );
        assert_eq!(client.hello["reason"], *reason, "{query}");
        refused.push(client);
    }
    // Nothing replayed from `since`; live messages still flow (a position past the
    // newest entry must not swallow them).
    writer.send("w", "live").await;
    for client in &mut refused {
        assert_eq!(client.next_message().await["text"], "live");
    }

    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000;
    for query in [
        format!("?room=r&since={in_an_hour}-0"),
        "?room=r&since=1-x".into(),
        "?epoch=a%20b".into(),
    ] {
        match tokio_tungstenite::connect_async(server.ws_url(&query)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 400, "{query}")
            }
            other => panic!("{query}: expected 400, got {other:?}"),
        }
    }
}

/// Redis loses the room (FLUSHALL stands for a restart without persistence or a
/// failover to a replica that had not caught up): the next message starts a new epoch,
/// a client rejoining with the old epoch is told `epoch_changed`, and a client that
/// stayed connected is told in-band (`recovery`, `history_lost`) before the new message.
#[tokio::test(flavor = "multi_thread")]
async fn lost_history_is_a_new_epoch() {
    let redis = Redis::start();
    let a = Server::start("a", &redis.url(), &[]);
    let b = Server::start("b", &redis.url(), &[]);
    let mut writer = Client::connect(&b, "?room=r").await;
    let mut watcher = Client::connect(&a, "?room=r").await;
    let first = send_all(&mut writer, &["before"]).await;
    assert_eq!(watcher.next_message().await["text"], "before");
    let old_epoch = Client::connect(&a, "?room=r").await.hello["epoch"].clone();

    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut redis_conn(&redis.url()).await)
        .await
        .unwrap();
    writer.send("w", "after").await;
    let notice = watcher.next_json().await;
    assert_eq!(notice["type"], "recovery", "{notice}");
    assert_eq!(notice["recovered"], false);
    assert_eq!(notice["reason"], "history_lost");
    assert_eq!(notice["room"], "r");
    let new_epoch = notice["epoch"].clone();
    assert!(
        new_epoch.is_string() && new_epoch != old_epoch,
        "{new_epoch} vs {old_epoch}"
    );
    assert_eq!(watcher.next_message().await["text"], "after");

    let rejoin = Client::connect(
        &a,
        &format!(
            "?room=r&since={}&epoch={}",
            id_of(&first[0]),
            old_epoch.as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(rejoin.hello["recovered"], false);
    assert_eq!(rejoin.hello["reason"], "epoch_changed");
    assert_eq!(rejoin.hello["epoch"], new_epoch);
}

/// An instance's reader that was cut off from Redis while the room moved on past its
/// history window resumes and tells its clients that messages were lost, then carries
/// on with what Redis kept.
#[tokio::test(flavor = "multi_thread")]
async fn reader_resuming_after_trim_tells_its_clients() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port).await;
    let cut_off = Server::start("cut-off", &proxy.url(), &burst_flags());
    let direct = Server::start("direct", &redis.url(), &burst_flags());
    cut_off.wait_health(200).await;
    let mut watcher = Client::connect(&cut_off, "?room=r").await;
    let mut writer = Client::connect(&direct, "?room=r").await;
    send_all(&mut writer, &["seen"]).await;
    assert_eq!(watcher.next_message().await["text"], "seen");

    proxy.cut();
    cut_off.wait_health(503).await;
    send_all(&mut writer, &["t1", "t2", "t3", "t4", "t5", "t6"]).await;
    proxy.restore();

    let notice = watcher.next_json().await;
    assert_eq!(notice["type"], "recovery", "{notice}");
    assert_eq!(notice["reason"], "history_lost");
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.push(watcher.next_message().await);
    }
    assert_eq!(texts(&rest), ["t4", "t5", "t6"]);
}

/// `history=N` sends the newest N messages (capped) when nothing is replayed from
/// `since`: on a first join, and after `recovered:false`; a bad value is a 400.
#[tokio::test(flavor = "multi_thread")]
async fn history_opens_on_the_conversation() {
    let redis = Redis::start();
    let server = Server::start("a", &redis.url(), &["--rate-burst", "100"]);
    let mut writer = Client::connect(&server, "?room=h").await;
    let texts_sent: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = texts_sent.iter().map(String::as_str).collect();
    send_all(&mut writer, &refs).await;

    let mut first_join = Client::connect(&server, "?room=h&history=3").await;
    let recent = vec![
        first_join.next_message().await,
        first_join.next_message().await,
        first_join.next_message().await,
    ];
    assert_eq!(texts(&recent), ["m7", "m8", "m9"]);
    let mut everything = Client::connect(&server, "?room=h&history=100000").await;
    for expected in &texts_sent {
        assert_eq!(&everything.next_message().await["text"], expected);
    }
    let mut lost = Client::connect(&server, "?room=h&since=1-0&history=2").await;
    assert_eq!(lost.hello["recovered"], false);
    let recent = vec![lost.next_message().await, lost.next_message().await];
    assert_eq!(texts(&recent), ["m8", "m9"]);
    // Then live, with no repeat at the seam.
    writer.send("w", "live").await;
    for client in [&mut first_join, &mut everything, &mut lost] {
        assert_eq!(client.next_message().await["text"], "live");
    }
    match tokio_tungstenite::connect_async(server.ws_url("?history=lots")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 400)
        }
        other => panic!("expected 400, got {other:?}"),
    }
}

/// 600 entries that are not chat messages (more than a replay page) sit between a
/// client's position and the newest messages: the replay steps over them by their raw
/// ids and ends, instead of asking for the same page for ever.
#[tokio::test(flavor = "multi_thread")]
async fn replay_steps_over_undecodable_entries() {
    let redis = Redis::start();
    let server = Server::start("a", &redis.url(), &[]);
    let mut conn = redis_conn(&redis.url()).await;
    let mut prev = "0-0".to_owned();
    for i in 0..600 {
        prev = redis::cmd("XADD")
            .arg("chat:{junk}:log")
            .arg("*")
            .arg("not-a-chat-field")
            .arg(i)
            .arg("prev")
            .arg(&prev)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("HSET")
        .arg("chat:{junk}:meta")
        .arg("epoch")
        .arg("e-junk")
        .arg("last")
        .arg(&prev)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut writer = Client::connect(&server, "?room=junk").await;
    send_all(&mut writer, &["real 1", "real 2"]).await;

    let mut replayed = Client::connect(&server, "?room=junk&since=0-0&epoch=e-junk").await;
    assert_eq!(replayed.hello["recovered"], true, "{}", replayed.hello);
    let got = vec![replayed.next_message().await, replayed.next_message().await];
    assert_eq!(texts(&got), ["real 1", "real 2"]);
}

/// A replay from `since` longer than a page (500 entries) is read page by page, and
/// every page must follow the one before. Here the room is trimmed between the first
/// page and the second (the test's proxy runs `XTRIM` just before the server's read of
/// page two reaches Redis): the client, told `recovered: true` for what it could be
/// given then, gets the first page, then a `recovery` notice (`too_old`), then what
/// is left. Before, the second page followed the first with the trimmed entries
/// silently missing.
#[tokio::test(flavor = "multi_thread")]
async fn a_trim_between_replay_pages_is_told() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port).await;
    let server = Server::start(
        "a",
        &proxy.url(),
        &["--history-len", "5000", "--rate-burst", "5000"],
    );
    let mut writer = Client::connect(&server, "?room=long").await;
    for i in 0..700 {
        writer.send("w", &format!("m{i}")).await;
    }
    let ids: Vec<String> = writer.next_ids(700).await;
    let (page_one_end, first_kept) = (ids[500].clone(), ids[520].clone());
    let mut conn = redis_conn(&redis.url()).await;
    proxy.before_forwarding(format!("({page_one_end}").as_bytes(), async move {
        let _: u64 = redis::cmd("XTRIM")
            .arg("chat:{long}:log")
            .arg("MINID")
            .arg(&first_kept)
            .query_async(&mut conn)
            .await
            .unwrap();
    });

    let mut joiner = Client::connect(&server, &format!("?room=long&since={}", ids[0])).await;
    assert_eq!(joiner.hello["recovered"], true, "{}", joiner.hello);
    assert_eq!(joiner.next_ids(500).await, ids[1..=500]);
    let notice = joiner.next_json().await;
    assert_eq!(
        (
            notice["type"].as_str(),
            notice["recovered"].as_bool(),
            notice["reason"].as_str()
        ),
        (Some("recovery"), Some(false), Some("too_old")),
        "{notice}"
    );
    assert_eq!(joiner.next_ids(180).await, ids[520..]);
}
