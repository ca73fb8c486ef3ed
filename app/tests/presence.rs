//! Presence and typing across instances: who is in a room, each user once however many
//! connections they have, join and leave events, members of an instance that died
//! expiring, and typing events that are never stored. Real `redis-server`, two real
//! servers, real WebSocket clients; signed-in users with real tokens.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::{Client, KeyPair, Redis, Server, WAIT, poll_until, redis_conn, texts, unix_now};

/// The next frame that is about presence or typing (messages in between fail).
async fn next_event(client: &mut Client) -> Value {
    let frame = client.next_json().await;
    assert!(
        matches!(
            frame["type"].as_str(),
            Some("presence" | "member_joined" | "member_left" | "typing")
        ),
        "expected a presence or typing frame, got {frame}"
    );
    frame
}

fn names(presence: &Value) -> Vec<&str> {
    presence["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect()
}

/// Guests (`?name=` on an open server) across two instances: a watcher gets the
/// members once each, then who joins and who leaves, where a second tab of someone
/// already there is no news and only their last tab leaving is.
#[tokio::test(flavor = "multi_thread")]
async fn members_are_listed_once_across_instances_and_joins_and_leaves_are_announced() {
    let redis = Redis::start();
    let a = Server::start("a", &redis.url(), &[]);
    let b = Server::start("b", &redis.url(), &[]);

    let alice_tab1 = Client::connect(&a, "?room=team&name=alice").await;
    let alice_tab2 = Client::connect(&b, "?room=team&name=alice").await;
    let mut watcher = Client::connect(&b, "?room=team&name=watcher&presence=1").await;
    let presence = next_event(&mut watcher).await;
    assert_eq!(presence["room"], "team");
    assert_eq!(names(&presence), ["alice", "watcher"]);
    assert_eq!(presence["count"], 2, "alice's two tabs count once");
    assert_eq!(presence["members"][0]["sub"], "guest:alice");

    let bob = Client::connect(&a, "?room=team&name=bob").await;
    let joined = next_event(&mut watcher).await;
    assert_eq!(
        joined,
        json!({"type": "member_joined", "room": "team", "user": {"sub": "guest:bob", "name": "bob"}})
    );
    let bob_tab2 = Client::connect(&b, "?room=team&name=bob").await;

    drop(alice_tab1);
    drop(bob_tab2);
    // Anonymous clients are nobody in presence.
    let _lurker = Client::connect(&a, "?room=team").await;
    drop(alice_tab2);
    let left = next_event(&mut watcher).await;
    assert_eq!(
        left,
        json!({"type": "member_left", "room": "team", "user": {"sub": "guest:alice", "name": "alice"}}),
        "alice's second tab was no news, her last one leaving is; bob still has a tab"
    );
    drop(bob);
    assert_eq!(next_event(&mut watcher).await["type"], "member_left");

    // A second watcher sees only who is left: the first.
    let mut late = Client::connect(&a, "?room=team&presence=true").await;
    assert_eq!(names(&next_event(&mut late).await), ["watcher"]);
    for (server, entries) in [(&a, 0.0), (&b, 1.0)] {
        poll_until(Duration::from_secs(10), "presence entries in /metrics", || async move {
            (server.metric("chat_presence_entries").await == entries).then_some(())
        })
        .await;
    }
}

/// Presence is per room and opt-in per join: a `join` frame with `presence` gets the
/// room's members after its replay, a connection that did not ask gets no presence
/// frames, and a signed-in user is listed by their token's `sub` and `name`.
#[tokio::test(flavor = "multi_thread")]
async fn a_join_frame_asks_for_presence_and_signed_in_users_are_listed_by_their_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::ed25519(dir.path(), "issuer");
    let redis = Redis::start();
    let a = Server::start(
        "a",
        &redis.url(),
        &["--auth-public-key-file", key.public_pem_path()],
    );
    let token = |sub: &str, name: &str| {
        key.token(&json!({"sub": sub, "name": name, "exp": unix_now() + 600}))
    };

    let alice_token = token("u-alice", "Alice");
    let mut alice = Client::connect(&a, &format!("?room=lobby&token={alice_token}")).await;
    alice.send("ignored", "hello ops").await;
    alice.next_message().await;
    alice
        .send_raw(
            &json!({"type": "join", "room": "ops", "history": 10, "presence": true}).to_string(),
        )
        .await;
    assert_eq!(alice.next_json().await["type"], "joined");
    let presence = next_event(&mut alice).await;
    assert_eq!(
        presence,
        json!({"type": "presence", "room": "ops", "count": 1, "members": [{"sub": "u-alice", "name": "Alice"}]})
    );

    let bob_token = token("u-bob", "Bob");
    let mut bob = Client::connect(&a, &format!("?room=ops&token={bob_token}")).await;
    let joined = next_event(&mut alice).await;
    assert_eq!(joined["user"], json!({"sub": "u-bob", "name": "Bob"}));
    // Bob did not ask: his next frame is a message, not Alice's presence or typing.
    alice
        .send_raw(&json!({"type": "typing", "room": "ops"}).to_string())
        .await;
    bob.send("ignored", "hi").await;
    let frame = bob.next_json().await;
    assert_eq!(
        (frame["type"].as_str(), frame["name"].as_str()),
        (Some("message"), Some("Bob"))
    );
}

/// Typing reaches the room's other watchers on every instance as an event with the
/// typist, not the typist itself, is never stored, and is throttled to one a second.
#[tokio::test(flavor = "multi_thread")]
async fn typing_reaches_the_others_on_every_instance_and_is_never_stored() {
    let redis = Redis::start();
    let a = Server::start("a", &redis.url(), &[]);
    let b = Server::start("b", &redis.url(), &[]);
    let mut carol = Client::connect(&a, "?room=team&name=carol&presence=1").await;
    next_event(&mut carol).await;
    let mut dave = Client::connect(&b, "?room=team&name=dave&presence=1").await;
    next_event(&mut dave).await;
    assert_eq!(next_event(&mut carol).await["type"], "member_joined");

    for _ in 0..3 {
        dave.send_raw(&json!({"type": "typing", "room": "team"}).to_string())
            .await;
    }
    let typing = next_event(&mut carol).await;
    assert_eq!(
        typing,
        json!({"type": "typing", "room": "team", "user": {"sub": "guest:dave", "name": "dave"}})
    );
    // Throttled: the next thing carol sees is dave's message, not two more typings;
    // dave does not hear his own typing.
    dave.send("dave", "done typing").await;
    assert_eq!(carol.next_message().await["text"], "done typing");
    assert_eq!(dave.next_message().await["text"], "done typing");
    // Never stored: a replay holds only the message.
    let mut replay = Client::connect(&a, "?room=team&history=10").await;
    assert_eq!(replay.next_message().await["text"], "done typing");

    // Typing needs a name, and a room the connection is in.
    let mut anonymous = Client::connect(&a, "?room=team").await;
    anonymous
        .send_raw(&json!({"type": "typing", "room": "team"}).to_string())
        .await;
    assert_eq!(anonymous.next_error_code().await, "name_required");
    carol
        .send_raw(&json!({"type": "typing", "room": "elsewhere"}).to_string())
        .await;
    assert_eq!(carol.next_error_code().await, "not_joined");
}

/// An instance that dies without saying goodbye (SIGKILL) leaves its members behind in
/// Redis only until their entries expire: the other instance's heartbeat sweeps them
/// and announces who left.
#[tokio::test(flavor = "multi_thread")]
async fn the_members_of_an_instance_that_died_expire_and_are_announced_as_left() {
    let redis = Redis::start();
    let ttl = ["--presence-ttl-secs", "3"];
    let a = Server::start("a", &redis.url(), &ttl);
    let b = Server::start("b", &redis.url(), &ttl);
    let mut watcher = Client::connect(&b, "?room=team&name=watcher&presence=1").await;
    next_event(&mut watcher).await;
    let erin = Client::connect(&a, "?room=team&name=erin").await;
    assert_eq!(next_event(&mut watcher).await["user"]["name"], "erin");

    let killed_at = std::time::Instant::now();
    drop(a);
    // The kill ended erin's socket without a close frame; her entry stays in Redis.
    drop(erin);
    let left = next_event(&mut watcher).await;
    assert_eq!(left["type"], "member_left");
    assert_eq!(left["user"]["name"], "erin");
    eprintln!(
        "erin was announced as left {:?} after the kill",
        killed_at.elapsed()
    );

    let mut late = Client::connect(&b, "?room=team&presence=1").await;
    assert_eq!(names(&next_event(&mut late).await), ["watcher"]);
    // The keys of a room whose every instance died expire too: b is killed before its
    // clients go, so nobody takes the watcher's entry out.
    let conn = common::redis_conn(&redis.url()).await;
    drop(b);
    drop(late);
    drop(watcher);
    let exists: i64 = redis::cmd("EXISTS")
        .arg("chat:{team}:presence")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert_eq!(exists, 1, "the dead instance's entry is still there");
    poll_until(
        Duration::from_secs(15),
        "the room's presence keys to expire",
        || {
            let mut conn = conn.clone();
            async move {
                let exists: i64 = redis::cmd("EXISTS")
                    .arg("chat:{team}:presence")
                    .arg("chat:{team}:presence:exp")
                    .arg("chat:{team}:presence:users")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                (exists == 0).then_some(())
            }
        },
    )
    .await;
}

/// On a Redis Cluster the same holds: each room's presence lives in its room's slot, and
/// its events travel by sharded pub/sub. Rooms on at least two shards, two instances.
#[tokio::test(flavor = "multi_thread")]
async fn presence_and_typing_work_on_a_redis_cluster() {
    let cluster = common::RedisCluster::start(3);
    let flags = ["--redis-cluster", "true"];
    let a = Server::start("a", &cluster.url(), &flags);
    let b = Server::start("b", &cluster.url(), &flags);
    a.wait_health(200).await;
    b.wait_health(200).await;
    let rooms = ["p0", "p1", "p2", "p3"];
    let shards: std::collections::BTreeSet<u16> = rooms
        .iter()
        .map(|room| {
            cluster
                .primary_of(&format!("chat:{{{room}}}:presence"))
                .port
        })
        .collect();
    assert!(shards.len() >= 2, "rooms on one shard only: {shards:?}");

    for room in rooms {
        let mut watcher = Client::connect(&a, &format!("?room={room}&name=w&presence=1")).await;
        assert_eq!(names(&next_event(&mut watcher).await), ["w"]);
        let mut guest = Client::connect(&b, &format!("?room={room}&name=g")).await;
        assert_eq!(next_event(&mut watcher).await["type"], "member_joined");
        guest
            .send_raw(&json!({"type": "typing", "room": room}).to_string())
            .await;
        assert_eq!(next_event(&mut watcher).await["type"], "typing");
        drop(guest);
        let left = next_event(&mut watcher).await;
        assert_eq!(
            (left["type"].as_str(), left["room"].as_str()),
            (Some("member_left"), Some(room))
        );
    }
}

/// Opens a WebSocket with `query`, waits `after` (nothing read), then resets the TCP
/// connection (`SO_LINGER` 0: an RST, no close frame), as a client whose network dies,
/// or an attacker, does: the server finds out when it next writes, in the middle of
/// whatever the connection was doing.
async fn open_then_reset(server: &Server, query: &str, after: Duration, leave: Option<&str>) {
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(server.ws_url(query), tcp)
        .await
        .unwrap();
    if let Some(room) = leave {
        use futures_util::SinkExt as _;
        let frame = json!({"type": "leave", "room": room}).to_string();
        ws.send(tokio_tungstenite::tungstenite::Message::text(frame))
            .await
            .unwrap();
    }
    tokio::time::sleep(after).await;
    let tcp = ws.into_inner();
    tcp.set_zero_linger().unwrap();
    drop(tcp);
}

/// Connections reset at every moment of their first join (while the room is read, its
/// presence entered, the history replayed, the members listed) and right after a
/// `leave`, 300 times with 300 names: none stays behind in the room's presence. Before,
/// a join cut short after entering presence (or a leave before it reached Redis) left
/// an entry that the instance's heartbeat kept alive for as long as it ran, a member
/// "online" forever, never announced as left.
#[tokio::test(flavor = "multi_thread")]
async fn connections_reset_in_the_middle_of_a_join_or_leave_leave_no_ghosts() {
    const ROUNDS: u64 = 300;
    let redis = Redis::start();
    // Entries live 10 minutes: whatever goes from Redis below was taken out, not expired.
    let server = Server::start(
        "a",
        &redis.url(),
        &["--presence-ttl-secs", "600", "--rate-burst", "100"],
    );
    let mut seeder = Client::connect(&server, "?room=busy").await;
    for i in 0..50 {
        seeder.send("seeder", &format!("m{i}")).await;
        seeder.next_message().await;
    }
    for i in 0..ROUNDS {
        // Spread over the few milliseconds a join takes here.
        let after = Duration::from_micros((i % 30) * 200);
        let query = format!("?room=busy&name=ghost{i}&presence=1&history=50");
        let leave = (i % 3 == 0).then_some("busy");
        open_then_reset(&server, &query, after, leave).await;
    }
    // The server may still be joining the last of them: wait until none is left, in
    // Redis or kept alive by the server.
    let conn = redis_conn(&redis.url()).await;
    poll_until(WAIT, "every reset connection to leave", || {
        let mut conn = conn.clone();
        let server = &server;
        async move {
            let (entries, users): (u64, u64) = redis::pipe()
                .cmd("HLEN")
                .arg("chat:{busy}:presence")
                .cmd("HLEN")
                .arg("chat:{busy}:presence:users")
                .query_async(&mut conn)
                .await
                .unwrap();
            let kept = server.metric("chat_presence_entries").await;
            (entries == 0 && users == 0 && kept == 0.0).then_some(())
        }
    })
    .await;
    let mut watcher = Client::connect(&server, "?room=busy&presence=1").await;
    let presence = next_event(&mut watcher).await;
    assert_eq!(presence["count"], 0, "{presence}");
}

/// Typing is published to every instance that follows the room, so it spends the
/// connection's message rate: a connection in 20 rooms typing in all of them at once
/// publishes no more than its burst (3 here), not 20. (At the defaults, 200 connections
/// of one address in 100 rooms each could publish 20 000 typing events a second.)
#[tokio::test(flavor = "multi_thread")]
async fn typing_spends_the_connection_s_message_rate() {
    const ROOMS: usize = 20;
    let redis = Redis::start();
    let server = Server::start(
        "a",
        &redis.url(),
        &["--rate-per-sec", "0.1", "--rate-burst", "3"],
    );
    let rooms: Vec<String> = (0..ROOMS).map(|i| format!("t{i}")).collect();
    let mut typist = Client::connect(&server, "?room=t0&name=typist").await;
    let mut watcher = Client::connect(&server, "?room=t0&name=watcher&presence=1").await;
    next_event(&mut watcher).await;
    // The typist's arrival may also be announced to the watcher (set semantics).
    let skip_arrivals = async |client: &mut Client| loop {
        let frame = client.next_json().await;
        if frame["type"] != "member_joined" {
            return frame;
        }
    };
    for room in &rooms[1..] {
        for (client, presence) in [(&mut typist, false), (&mut watcher, true)] {
            let join = json!({"type": "join", "room": room, "presence": presence});
            client.send_raw(&join.to_string()).await;
            assert_eq!(skip_arrivals(client).await["type"], "joined");
        }
        assert_eq!(skip_arrivals(&mut watcher).await["type"], "presence");
    }
    let mut conn = redis_conn(&redis.url()).await;
    let publishes_before = publishes(&mut conn).await;
    for room in &rooms {
        typist
            .send_raw(&json!({"type": "typing", "room": room}).to_string())
            .await;
    }
    // Answered in order: once this error is back, every typing before it was handled.
    typist
        .send_raw(&json!({"type": "typing", "room": "elsewhere"}).to_string())
        .await;
    assert_eq!(typist.next_error_code().await, "not_joined");
    let publishes = publishes(&mut conn).await - publishes_before;
    // The watcher hears of as many as were published, then of the typist's message.
    let mut marker = Client::connect(&server, "?room=t0").await;
    marker.send("marker", "after the typing").await;
    let mut typing = 0;
    loop {
        let frame = watcher.next_json().await;
        match frame["type"].as_str() {
            Some("typing") => typing += 1,
            Some("message") => break,
            Some("member_joined") => {}
            _ => panic!("unexpected {frame}"),
        }
    }
    eprintln!("{ROOMS} rooms typed in at once: {typing} typing events, {publishes} publishes");
    assert_eq!(typing, publishes);
    assert!(
        (1..=4).contains(&typing),
        "{typing} typing events published for a burst of 3"
    );
}

/// `PUBLISH` calls Redis has served (scripts' included).
async fn publishes(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_publish:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// An instance with 1 000 named members dies: their entries expire together, and the
/// surviving instance announces 1 000 departures in a few sweeps (of 500 entries each,
/// so that no call holds Redis for the whole room). A client of the room that
/// did not ask for presence keeps receiving the room's messages, in order, and is not
/// closed; one that asked is not closed either, and ends up knowing the room is empty
/// (from the events, or from the fresh member list it is sent when it fell behind
/// them). Before, events shared each room's message queue: the burst overflowed it and
/// closed every client of the room with 4000.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_departures_crowds_out_no_message() {
    use futures_util::StreamExt as _;
    const MEMBERS: usize = 1000;
    const LISTENERS: usize = 50;
    let redis = Redis::start();
    let flags = [
        "--presence-ttl-secs",
        "3",
        "--max-connections-per-address",
        "5000",
        "--room-joins-per-minute",
        "100000",
        "--rate-burst",
        "100",
    ];
    let dead = Server::start("dead", &redis.url(), &flags);
    // A short message queue: the burst is many times what any client may fall behind.
    let alive = Server::start(
        "alive",
        &redis.url(),
        &[&flags[..], &["--send-queue", "32"]].concat(),
    );
    let members: Vec<Client> = futures_util::stream::iter(0..MEMBERS)
        .map(|i| {
            let dead = &dead;
            async move { Client::connect(dead, &format!("?room=big&name=m{i}")).await }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let mut listeners: Vec<Client> = futures_util::stream::iter(0..LISTENERS)
        .map(|_| Client::connect(&alive, "?room=big"))
        .buffer_unordered(50)
        .collect()
        .await;
    // An anonymous watcher: no entry of this instance's is in the room, and yet it
    // sweeps the room, because someone here watches it.
    let mut watcher = Client::connect(&alive, "?room=big&presence=1").await;
    let listed = next_event(&mut watcher).await;
    assert_eq!(listed["count"], MEMBERS, "{listed:.200}");

    let speaking = tokio::spawn({
        let mut speaker = Client::connect(&alive, "?room=big").await;
        async move {
            for i in 0..100 {
                speaker.send("speaker", &format!("s{i}")).await;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        }
    });
    drop(dead);
    drop(members);

    let expected: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
    let heard = futures_util::future::join_all(
        listeners
            .iter_mut()
            .map(|listener| listener.next_messages(expected.len())),
    )
    .await;
    speaking.await.unwrap();
    assert!(heard.iter().all(|messages| texts(messages) == expected));

    let mut present: std::collections::HashSet<String> =
        (0..MEMBERS).map(|i| format!("m{i}")).collect();
    let (mut events, mut lists) = (0, 0);
    while !present.is_empty() {
        let frame = match watcher.next_event().await {
            common::Event::Json(frame) => frame,
            common::Event::Closed(close) => panic!(
                "the watcher was closed ({close:?}) with {} members still listed",
                present.len()
            ),
        };
        match frame["type"].as_str() {
            Some("member_left") => {
                events += 1;
                present.remove(frame["user"]["name"].as_str().unwrap());
            }
            Some("presence") => {
                lists += 1;
                present = names(&frame).into_iter().map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    eprintln!("the watcher saw {events} departures and {lists} fresh member lists");
}
