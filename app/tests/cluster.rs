//! The chat on a Redis Cluster (`--redis-cluster true`): rooms spread over the shards'
//! slots, live fan-out by sharded pub/sub, history per room, a primary failover inside
//! the cluster, and a room's slot moved to another primary under a live conversation.
//! Three primaries with a replica each, real `redis-server`s, real servers, real
//! WebSocket clients.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Client, Conversation, Redis, RedisCluster, Sending, Server, texts};
use futures_util::future::join_all;

const CLUSTER: [&str; 2] = ["--redis-cluster", "true"];

/// Rooms land on different shards; every message reaches both instances' clients in
/// one order, and a client rejoining with `since` gets exactly what it missed.
#[tokio::test(flavor = "multi_thread")]
async fn rooms_spread_over_the_shards_and_messages_cross_instances() {
    const ROOMS: usize = 12;
    let cluster = RedisCluster::start(3);
    let flags = [CLUSTER[0], CLUSTER[1], "--new-rooms-per-minute", "100"];
    let a = Server::start("a", &cluster.url(), &flags);
    let b = Server::start("b", &cluster.url(), &flags);
    a.wait_health(200).await;
    b.wait_health(200).await;

    // All at once, so that one instance starts following rooms of several slots together.
    let queries: Vec<String> = (0..ROOMS).map(|room| format!("?room=c{room}")).collect();
    let mut on_a = join_all(queries.iter().map(|query| Client::connect(&a, query))).await;
    let mut on_b = join_all(queries.iter().map(|query| Client::connect(&b, query))).await;
    for (room, client) in on_b.iter_mut().enumerate() {
        client.send("b", &format!("c{room} one")).await;
        client.send("b", &format!("c{room} two")).await;
    }
    let mut first_ids = Vec::new();
    for (room, (x, y)) in on_a.iter_mut().zip(on_b.iter_mut()).enumerate() {
        let want = [format!("c{room} one"), format!("c{room} two")];
        let got_a = vec![x.next_message().await, x.next_message().await];
        let got_b = vec![y.next_message().await, y.next_message().await];
        assert_eq!(texts(&got_a), want);
        assert_eq!(got_a, got_b, "both instances deliver the same entries");
        first_ids.push(got_a[0]["id"].as_str().unwrap().to_owned());
    }
    let primaries: BTreeSet<u16> = (0..ROOMS)
        .map(|room| cluster.primary_of(&format!("chat:{{c{room}}}:log")).port)
        .collect();
    assert!(
        primaries.len() >= 2,
        "rooms on one shard only: {primaries:?}"
    );

    let mut rejoined = Client::connect(&a, &format!("?room=c3&since={}", first_ids[3])).await;
    assert_eq!(rejoined.hello["recovered"], true, "{}", rejoined.hello);
    assert_eq!(rejoined.next_message().await["text"], "c3 two");

    // Redis's memory, as /metrics reports it: `INFO` answers once per primary, the
    // largest node's figure and the sum over the three, both from one scrape (the health
    // probe updates them together, and memory moves between probes).
    let (largest, sum) = common::poll_until(common::WAIT, "Redis's memory in /metrics", || async {
        let [largest, sum] = a
            .metrics([
                "chat_redis_used_memory_bytes",
                "chat_redis_used_memory_sum_bytes",
            ])
            .await;
        (largest > 0.0).then_some((largest, sum))
    })
    .await;
    eprintln!("redis used memory: largest primary {largest} bytes, three primaries {sum} bytes");
    assert!(
        largest < sum && sum <= 3.0 * largest,
        "largest {largest}, sum {sum}"
    );
}

/// A replica takes over its shard (`CLUSTER FAILOVER TAKEOVER`, as ElastiCache fails over
/// a node group whose primary is lost) while a client keeps sending: sends resume, and every stored message
/// reaches the other instance's client, once and in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_failover_inside_the_cluster_loses_nothing_stored() {
    let cluster = RedisCluster::start(3);
    let Conversation {
        a,
        b,
        mut sender,
        mut receiver,
    } = Conversation::start(&cluster.url(), &CLUSTER, "f").await;
    let primary = cluster.primary_of("chat:{f}:log");
    let replica = cluster.replica_of(primary);

    let mut stored = Vec::new();
    for i in 0..10 {
        stored.push(sender.send_until_stored(&format!("m{i}")).await);
    }
    // Everything stored has reached the replica (the test sends nothing meanwhile), so
    // the takeover, which does not wait for the old primary, loses nothing.
    let offset = |node, field: &str| {
        let info = cluster.cli(node, &["INFO", "replication"]);
        info.lines()
            .find_map(|line| line.strip_prefix(field))
            .map(|v| v.trim().to_owned())
    };
    common::poll_until(common::WAIT, "the replica to catch up", || async {
        let primary_offset = offset(primary, "master_repl_offset:");
        (primary_offset.is_some() && offset(replica, "slave_repl_offset:") == primary_offset)
            .then_some(())
    })
    .await;
    assert_eq!(
        cluster
            .cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"])
            .trim(),
        "OK"
    );
    cluster.wait_until(replica, "cluster_state:ok");
    common::poll_until(common::WAIT, "the replica to be primary", || async {
        cluster
            .cli(replica, &["ROLE"])
            .starts_with("master")
            .then_some(())
    })
    .await;
    for i in 10..20 {
        stored.push(sender.send_until_stored(&format!("m{i}")).await);
    }

    assert_eq!(receiver.next_ids(stored.len()).await, stored);
    a.wait_health(200).await;
    b.wait_health(200).await;
}

/// The slot of a live room moves from one primary to another by the real protocol
/// (`CLUSTER SETSLOT IMPORTING`/`MIGRATING`, `MIGRATE ... KEYS`, `SETSLOT NODE`), as a
/// resharding does, while a client on one instance keeps sending into the room and a
/// client on the other receives. Commands meet `TRYAGAIN` and `ASK` during the move and
/// `MOVED` after it, and the old owner drops the room's sharded subscriptions
/// (`SUNSUBSCRIBE`). What a user sees: every acknowledged message reaches the other
/// instance's client once and in order, a client joining mid-move with `since` is made
/// whole, and live delivery goes on after the move.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_migrating_under_a_live_room_loses_nothing_and_delivery_goes_on() {
    /// How long each phase of the move lasts, so that sends meet every one of them.
    const PHASE: Duration = Duration::from_millis(1500);
    const AFTER: usize = 10;
    let cluster = RedisCluster::start(3);
    let Conversation {
        a,
        b,
        sender,
        mut receiver,
    } = Conversation::start(&cluster.url(), &CLUSTER, "m").await;

    let key = "chat:{m}:log";
    let cli = |node, args: &[&str]| {
        tokio::task::block_in_place(|| cluster.cli(node, args).trim().to_owned())
    };
    let slot = cli(&cluster.nodes[0], &["CLUSTER", "KEYSLOT", key]);
    let source = cluster.primary_of(key);
    let primaries: Vec<&Redis> = cluster
        .nodes
        .iter()
        .filter(|node| cli(node, &["ROLE"]).starts_with("master"))
        .collect();
    let target = *primaries.iter().find(|n| n.port != source.port).unwrap();
    let (source_id, target_id) = (cluster.node_id(source), cluster.node_id(target));
    let redirects = |code| cluster.errors_sent(source, code) + cluster.errors_sent(target, code);

    // The sender goes on until it has had AFTER messages stored after the move.
    let mut sending = Sending::start(sender, AFTER);
    let mut stored = sending.next(10).await;
    let before = (redirects("ASK"), redirects("TRYAGAIN"), redirects("MOVED"));

    // The move, as `redis-cli --cluster reshard` makes it.
    assert_eq!(
        cli(
            target,
            &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id]
        ),
        "OK"
    );
    assert_eq!(
        cli(
            source,
            &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id]
        ),
        "OK"
    );
    tokio::time::sleep(PHASE).await;
    loop {
        let keys = cli(source, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
        if keys.is_empty() {
            break;
        }
        let port = target.port.to_string();
        let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        migrate.extend(keys.lines());
        assert_eq!(cli(source, &migrate), "OK");
    }
    // The keys are on the target, the slot still the source's: `ASK`. A client joining
    // now, on the receiving instance, catches up from the middle of the conversation.
    let since = stored[4].id.clone();
    let joining = tokio::spawn({
        let url = b.ws_url(&format!("?room=m&since={since}"));
        async move { Client::connect_url(&url).await }
    });
    tokio::time::sleep(PHASE).await;
    for node in [target, source].into_iter().chain(
        primaries
            .iter()
            .copied()
            .filter(|n| n.port != source.port && n.port != target.port),
    ) {
        assert_eq!(
            cli(node, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id]),
            "OK"
        );
    }
    sending.event_happened();
    let mut joined = joining.await.unwrap();
    assert_eq!(joined.hello["recovered"], true, "{}", joined.hello);
    stored.extend(sending.finish().await);
    let slowest = stored.iter().map(|sent| sent.took).max().unwrap();
    let stored: Vec<String> = stored.into_iter().map(|sent| sent.id).collect();
    let after = (redirects("ASK"), redirects("TRYAGAIN"), redirects("MOVED"));
    eprintln!(
        "slot {slot} moved from {} to {}: {} messages stored, the slowest in {slowest:?}; ASK {} TRYAGAIN {} MOVED {} during and after",
        source.port,
        target.port,
        stored.len(),
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2,
    );
    assert_eq!(cluster.primary_of(key).port, target.port);

    assert_eq!(receiver.next_ids(stored.len()).await, stored);
    assert_eq!(joined.next_ids(stored.len() - 5).await, stored[5..]);
    // After the move, on either instance, whether or not it sent into the room since.
    for server in [&a, &b] {
        let mut late = Client::connect(server, &format!("?room=m&since={since}")).await;
        assert_eq!(late.hello["recovered"], true, "{}", late.hello);
        assert_eq!(late.next_ids(stored.len() - 5).await, stored[5..]);
    }
    assert!(after.0 > before.0, "no ASK during the move");
    assert!(after.1 > before.1, "no TRYAGAIN during the move");
    assert!(after.2 > before.2, "no MOVED after the move");
    assert!(
        b.logged("the cluster moved the room's channel"),
        "the receiving instance was never told its subscription moved"
    );
}

/// One shard of three is lost for good (its primary and its replica killed), on a
/// cluster that goes on serving the slots it still has (`cluster-require-full-coverage
/// no`): the rooms of the other shards keep delivering on both instances, a room joined
/// after the loss too, and `/healthz` stays 200, since an instance can serve everything
/// that can be served; what fails on the lost shard is retried on its own. Before, the
/// first failure on the lost shard (here: letting
/// go of a room there) reset the whole fan-out reader, whose resubscription of every
/// room failed on the lost shard again and again: no room delivered on that instance,
/// and it answered 503.
#[tokio::test(flavor = "multi_thread")]
async fn a_shard_down_leaves_the_other_shards_rooms_delivering() {
    let mut cluster = RedisCluster::start(3);
    for node in &cluster.nodes {
        let set = ["CONFIG", "SET", "cluster-require-full-coverage", "no"];
        assert_eq!(cluster.cli(node, &set).trim(), "OK");
    }
    let a = Server::start("a", &cluster.url(), &CLUSTER);
    let b = Server::start("b", &cluster.url(), &CLUSTER);
    a.wait_health(200).await;
    b.wait_health(200).await;

    // A shard without the node the servers were given (a seed they would go back to;
    // ElastiCache's configuration endpoint is a name for any node).
    let seed = cluster.nodes[0].port;
    let doomed = (0..)
        .map(|i| cluster.primary_of(&format!("chat:{{lost{i}}}:log")))
        .find(|primary| primary.port != seed && cluster.replica_of(primary).port != seed)
        .unwrap()
        .port;
    let rooms_where = |on_doomed: bool, prefix: &str, count: usize| -> Vec<String> {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .filter(|room| {
                (cluster.primary_of(&format!("chat:{{{room}}}:log")).port == doomed) == on_doomed
            })
            .take(count)
            .collect()
    };
    let up = rooms_where(false, "up", 3);
    let down = rooms_where(true, "down", 2);
    // One connection on `a` follows every room; on `b`, a speaker per surviving room.
    let mut sidebar = Client::connect(&a, &format!("?room={}", up[0])).await;
    for room in up[1..2].iter().chain(&down) {
        sidebar
            .send_raw(&serde_json::json!({"type": "join", "room": room}).to_string())
            .await;
        assert_eq!(sidebar.next_json().await["type"], "joined");
    }
    let mut speakers = Vec::new();
    for room in &up {
        speakers.push(Client::connect(&b, &format!("?room={room}")).await);
    }

    let primary = cluster.nodes.iter().find(|n| n.port == doomed).unwrap();
    let replica = cluster.replica_of(primary).port;
    for port in [replica, doomed] {
        let node = cluster.nodes.iter_mut().find(|n| n.port == port).unwrap();
        node.kill();
    }
    // Letting go of a room of the lost shard is the reader's first call there.
    sidebar
        .send_raw(&serde_json::json!({"type": "leave", "room": down[1]}).to_string())
        .await;
    assert_eq!(sidebar.next_json().await["type"], "left");
    common::poll_until(
        common::WAIT,
        "the reader to meet the lost shard",
        || async {
            (a.logged("unsubscribing failed") || a.logged("redis reader failed")).then_some(())
        },
    )
    .await;

    // For 8 s, the two surviving rooms the sidebar follows, and a third it joins now.
    sidebar
        .send_raw(&serde_json::json!({"type": "join", "room": up[2]}).to_string())
        .await;
    assert_eq!(sidebar.next_json().await["type"], "joined");
    let mut sent = Vec::new();
    for round in 0..16 {
        for (room, speaker) in up.iter().zip(speakers.iter_mut()) {
            let text = format!("{room} {round}");
            speaker.send("b", &text).await;
            sent.push(text);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(a.get("/healthz").await.0, 200, "after {round} rounds");
    }
    let mut heard: Vec<String> = texts(&sidebar.next_messages(sent.len()).await);
    heard.sort();
    sent.sort();
    assert_eq!(heard, sent, "every message of the surviving shards' rooms");
}
