//! The chat on a Redis Cluster (`--redis-cluster true`): rooms spread over the shards'
//! slots, live fan-out by sharded pub/sub, history per room, and a primary failover
//! inside the cluster. Three primaries with a replica each, real `redis-server`s, real
//! servers, real WebSocket clients.

mod common;

use std::collections::BTreeSet;

use common::{Client, RedisCluster, Server, texts};
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
}

/// A replica takes over its shard (`CLUSTER FAILOVER TAKEOVER`, as ElastiCache fails over
/// a node group whose primary is lost) while a client keeps sending: sends resume, and every stored message
/// reaches the other instance's client, once and in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_failover_inside_the_cluster_loses_nothing_stored() {
    let cluster = RedisCluster::start(3);
    let flags = [
        CLUSTER[0],
        CLUSTER[1],
        "--rate-per-sec",
        "1000",
        "--rate-burst",
        "1000",
    ];
    let a = Server::start("a", &cluster.url(), &flags);
    let b = Server::start("b", &cluster.url(), &flags);
    a.wait_health(200).await;
    b.wait_health(200).await;
    let mut receiver = Client::connect(&b, "?room=f").await;
    let mut sender = Client::connect(&a, "?room=f").await;
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

    let mut got = Vec::new();
    while got.len() < stored.len() {
        got.push(
            receiver.next_message().await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(got, stored);
    a.wait_health(200).await;
    b.wait_health(200).await;
}
