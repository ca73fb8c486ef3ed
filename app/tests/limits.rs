//! Bounded cost: Redis memory under a flood of new rooms (count, age and idle-room
//! limits, rooms per address), connections per client address, and `X-Forwarded-For`
//! believed only from a trusted proxy.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Redis, Server, WAIT, poll_until, redis_conn};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

async fn dbsize(url: &str) -> u64 {
    redis::cmd("DBSIZE")
        .query_async(&mut redis_conn(url).await)
        .await
        .unwrap()
}

async fn xlen(url: &str, room: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(format!("chat:{{{room}}}:log"))
        .query_async(&mut redis_conn(url).await)
        .await
        .unwrap()
}

/// One address opens 100 connections, each to a new room, each sending a message: only
/// the configured 5 rooms per minute are created (the rest are told `room_limit`), a
/// room keeps at most `--history-len` entries and none older than the age limit, every
/// key has a TTL and idle rooms disappear; `/metrics` reports Redis's memory.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_new_rooms_stays_bounded() {
    let redis = Redis::start();
    let server = Server::start(
        "a",
        &redis.url(),
        &[
            "--history-len",
            "5",
            "--history-max-age-secs",
            "1",
            "--room-ttl-secs",
            "5",
            "--new-rooms-per-minute",
            "5",
            "--rate-burst",
            "100",
        ],
    );
    server.wait_health(200).await;
    let flood_started = Instant::now();
    let mut created = 0;
    let mut last_created = String::new();
    for i in 0..100 {
        let mut client = Client::connect(&server, &format!("?room=flood{i}")).await;
        client.send("flooder", "hello").await;
        let frame = client.next_json().await;
        match (frame["type"].as_str(), frame["code"].as_str()) {
            (Some("message"), _) => {
                created += 1;
                last_created = format!("flood{i}");
            }
            (Some("error"), Some("room_limit")) => {}
            _ => panic!("unexpected {frame}"),
        }
    }
    let refill = (flood_started.elapsed().as_secs_f64() * 5.0 / 60.0).ceil() as u64;
    eprintln!(
        "flood: 100 new rooms asked, {created} created, {} keys in redis",
        dbsize(&redis.url()).await
    );
    assert!(
        created >= 5 && created <= 5 + refill,
        "{created} rooms created"
    );
    assert!(
        dbsize(&redis.url()).await <= 2 * created,
        "two keys per room"
    );

    // Count: 20 messages in a room (created above) keep 5.
    let room = last_created;
    let log_key = format!("chat:{{{room}}}:log");
    let mut busy = Client::connect(&server, &format!("?room={room}")).await;
    for i in 0..20 {
        busy.send("b", &format!("m{i}")).await;
        busy.next_message().await;
    }
    assert_eq!(xlen(&redis.url(), &room).await, 5);
    let mut conn = redis_conn(&redis.url()).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(&log_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let meta_ttl: i64 = redis::cmd("TTL")
        .arg(format!("chat:{{{room}}}:meta"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (1..=5).contains(&ttl) && (1..=5).contains(&meta_ttl),
        "ttl {ttl} {meta_ttl}"
    );

    // Age: once the newest entry is over a second old (by Redis's clock), the next
    // write trims everything before it.
    let newest_ms: u64 = {
        let top: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&log_key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
        top.ids[0].id.split_once('-').unwrap().0.parse().unwrap()
    };
    poll_until(WAIT, "a second to pass on Redis's clock", || {
        let mut conn = conn.clone();
        async move {
            let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.ok()?;
            (secs * 1000 > newest_ms + 1000).then_some(())
        }
    })
    .await;
    busy.send("b", "late").await;
    busy.next_message().await;
    assert_eq!(xlen(&redis.url(), &room).await, 1);

    assert!(server.metric("chat_redis_used_memory_bytes").await > 0.0);
    drop(busy);
    // Idle rooms expire: nothing is left.
    poll_until(Duration::from_secs(10), "idle rooms to expire", || async {
        (dbsize(&redis.url()).await == 0).then_some(())
    })
    .await;
}

async fn upgrade_status(server: &Server, forwarded_for: Option<&str>) -> (u16, Option<common::Ws>) {
    upgrade_status_of(server, "", forwarded_for).await
}

async fn upgrade_status_of(
    server: &Server,
    query: &str,
    forwarded_for: Option<&str>,
) -> (u16, Option<common::Ws>) {
    let mut request = server.ws_url(query).into_client_request().unwrap();
    if let Some(xff) = forwarded_for {
        request
            .headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, response)) => (response.status().as_u16(), Some(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            (response.status().as_u16(), None)
        }
        Err(e) => panic!("unexpected websocket error: {e}"),
    }
}

/// Three connections per address: the fourth is refused with 429 until one closes.
/// Behind a trusted proxy the address is the one the proxy appended to
/// `X-Forwarded-For`; from anyone else the header is ignored.
#[tokio::test(flavor = "multi_thread")]
async fn connections_are_capped_per_client_address() {
    let redis = Redis::start();
    let direct = Server::start(
        "direct",
        &redis.url(),
        &["--max-connections-per-address", "3"],
    );
    let mut open = Vec::new();
    for forged in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let (status, ws) = upgrade_status(&direct, Some(forged)).await;
        assert_eq!(status, 101);
        open.push(ws);
    }
    // Forged headers from an untrusted peer do not buy more connections.
    assert_eq!(upgrade_status(&direct, Some("198.51.100.4")).await.0, 429);
    open.pop();
    poll_until(
        WAIT,
        "the closed connection's slot to come back",
        || async {
            let (status, ws) = upgrade_status(&direct, None).await;
            (status == 101).then_some(ws)
        },
    )
    .await;

    let behind_alb = Server::start(
        "behind-alb",
        &redis.url(),
        &[
            "--max-connections-per-address",
            "3",
            "--trusted-proxies",
            "127.0.0.0/8",
        ],
    );
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (status, ws) = upgrade_status(&behind_alb, Some("203.0.113.9")).await;
        assert_eq!(status, 101);
        clients.push(ws);
    }
    assert_eq!(
        upgrade_status(&behind_alb, Some("203.0.113.9")).await.0,
        429
    );
    assert_eq!(
        upgrade_status(&behind_alb, Some("1.2.3.4, 203.0.113.10"))
            .await
            .0,
        101
    );
}

/// An IPv6 client is counted by its /64: the addresses of one block, which one
/// subscriber holds whole and can rotate through, share one budget, and the next block
/// has its own.
#[tokio::test(flavor = "multi_thread")]
async fn an_ipv6_client_is_counted_by_its_64() {
    let redis = Redis::start();
    let server = Server::start(
        "behind-alb",
        &redis.url(),
        &[
            "--max-connections-per-address",
            "2",
            "--trusted-proxies",
            "127.0.0.0/8",
        ],
    );
    let mut open = Vec::new();
    for rotated in ["2001:db8:0:1::1", "2001:db8:0:1::2"] {
        let (status, ws) = upgrade_status(&server, Some(rotated)).await;
        assert_eq!(status, 101);
        open.push(ws);
    }
    assert_eq!(
        upgrade_status(&server, Some("2001:db8:0:1:ffff::3"))
            .await
            .0,
        429
    );
    assert_eq!(
        upgrade_status(&server, Some("2001:db8:0:2::1")).await.0,
        101
    );
}

/// With sign-in, a user's connections are counted as theirs, wherever they come from:
/// users behind one address (a company's NAT) each have the whole budget, and a user
/// who changes address keeps spending the same one.
#[tokio::test(flavor = "multi_thread")]
async fn signed_in_users_are_counted_by_their_sub() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::KeyPair::ed25519(dir.path(), "identity");
    let redis = Redis::start();
    let server = Server::start(
        "behind-alb",
        &redis.url(),
        &[
            "--max-connections-per-address",
            "2",
            "--trusted-proxies",
            "127.0.0.0/8",
            "--auth-public-key-file",
            key.public_pem_path(),
        ],
    );
    let token = |sub: &str| {
        let claims = serde_json::json!({"sub": sub, "name": sub, "exp": common::unix_now() + 600});
        format!("?token={}", key.token(&claims))
    };
    let (alice, bob) = (token("u-alice"), token("u-bob"));
    let office = Some("203.0.113.9");
    let mut open = Vec::new();
    for query in [&alice, &alice, &bob, &bob] {
        let (status, ws) = upgrade_status_of(&server, query, office).await;
        assert_eq!(
            status, 101,
            "two users behind one address, two connections each"
        );
        open.push(ws);
    }
    assert_eq!(upgrade_status_of(&server, &alice, office).await.0, 429);
    assert_eq!(
        upgrade_status_of(&server, &alice, Some("198.51.100.7"))
            .await
            .0,
        429,
        "a new address is no new budget for a signed-in user"
    );
}

/// Joins that cost the service something lasting are charged to the client's join
/// budget: a room this instance does not follow yet (a queue here, a subscription on
/// Redis) and a presence entry each cost one. With a budget of 10 a minute, one
/// connection can make this instance follow about 10 new rooms, not the 20 000 that
/// 200 connections of one address joining 100 rooms each used to; joining rooms the
/// instance follows already costs nothing; and a named guest, whose connection is an
/// entry in presence, is refused at the upgrade (429) once the budget is spent.
#[tokio::test(flavor = "multi_thread")]
async fn joins_of_new_rooms_and_presence_entries_spend_the_client_s_budget() {
    let redis = Redis::start();
    let server = Server::start("a", &redis.url(), &["--room-joins-per-minute", "10"]);
    let mut roamer = Client::connect(&server, "?room=j0").await;
    let mut joined = vec!["j0".to_owned()];
    let mut refused = 0;
    for i in 1..30 {
        let room = format!("j{i}");
        roamer
            .send_raw(&serde_json::json!({"type": "join", "room": room}).to_string())
            .await;
        let answer = roamer.next_json().await;
        match (answer["type"].as_str(), answer["code"].as_str()) {
            (Some("joined"), _) => joined.push(room),
            (Some("error"), Some("room_limit")) => refused += 1,
            _ => panic!("unexpected {answer}"),
        }
    }
    eprintln!(
        "29 new rooms asked: {} joined, {refused} refused",
        joined.len() - 1
    );
    // The first room was one; a refill of one may come in the seconds this takes.
    assert!((10..=11).contains(&joined.len()), "joined {joined:?}");
    assert_eq!(server.metric("chat_rooms").await, joined.len() as f64);

    // Rooms followed here already are free, at the upgrade and by frame.
    let mut second = Client::connect(&server, "?room=j0").await;
    second
        .send_raw(&serde_json::json!({"type": "join", "room": joined[1]}).to_string())
        .await;
    assert_eq!(second.next_json().await["type"], "joined");
    // An entry in presence is not.
    let (status, _) = upgrade_status_of(&server, "?room=j0&name=guest", None).await;
    assert_eq!(status, 429);
}
