//! The primary endpoint of the local stand-in for an ElastiCache group with cluster mode
//! off: a loopback port whose connections go to whichever redis-server is the primary
//! now. ElastiCache's primary endpoint is a DNS name that follows a failover to the
//! promoted replica, and the connections to the old primary end
//! (https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/AutoFailover.html); so here:
//! every round the servers' roles are read, a new primary gets the new connections, and
//! the ones made to the old primary are cut. TLS passes through untouched.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::LocalRedis;

/// How often the servers' roles are read.
const ROUND: Duration = Duration::from_millis(300);

/// Serves the endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, redis: LocalRedis) -> Result<()> {
    let redis = Arc::new(redis);
    let first = tokio::task::spawn_blocking({
        let redis = redis.clone();
        move || redis.primary()
    })
    .await?;
    let (primary, _) = watch::channel(first);
    let primary = Arc::new(primary);
    let follow = tokio::spawn({
        let primary = primary.clone();
        async move {
            loop {
                tokio::time::sleep(ROUND).await;
                let redis = redis.clone();
                let now = tokio::task::spawn_blocking(move || redis.primary())
                    .await
                    .ok()
                    .flatten();
                if now.is_some() && now != *primary.borrow() {
                    primary.send_replace(now);
                }
            }
        }
    });
    let accepted = async {
        loop {
            let (client, _) = listener.accept().await?;
            let mut switched = primary.subscribe();
            let Some(port) = *switched.borrow_and_update() else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                let mut client = client;
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    // The primary changed: this connection was to the old one.
                    _ = switched.changed() => {}
                }
            });
        }
    };
    let result: Result<()> = accepted.await;
    follow.abort();
    result
}
