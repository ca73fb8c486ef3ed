//! Disconnecting and banning users, across every instance: what the server API's
//! `POST /api/v1/users/{sub}/disconnect` asks for.
//!
//! The request is appended to one control stream in Redis (`chat:control`), which every
//! instance follows with a blocking read on a connection of its own ([`follow`]): each
//! closes the connections it holds for that `sub`, 4001 for a disconnect, 4003 for a
//! ban. A stream rather than pub/sub, so that an instance whose link to Redis was down
//! applies what it missed when the link returns, instead of never.
//!
//! A ban is also a key, `chat:ban:<sub>`, expiring with the ban: a new connection of a
//! banned user is refused at the upgrade (4003, the time left in the reason), and a
//! `join` frame of one that slipped through is refused. A connection registers here
//! before its ban is checked, so a ban is either seen by the check or closes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use redis::AsyncConnectionConfig;
use redis::aio::ConnectionLike;
use redis::streams::{StreamRangeReply, StreamReadReply};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::connection::{COMMAND_TIMEOUT, Request, StoreError};
use crate::store::Store;

/// The operator disconnected the user (no ban): reconnecting is allowed.
pub const CLOSE_DISCONNECTED: u16 = 4001;
/// The user is banned: do not reconnect before the ban ends (the reason says when).
pub const CLOSE_BANNED: u16 = 4003;

/// The stream every instance follows.
const CONTROL_KEY: &str = "chat:control";
/// Entries the control stream keeps (approximately): far more than an instance can miss.
const CONTROL_LEN: usize = 1000;
/// An idle control stream goes after this (keys without a TTL are never evicted).
const CONTROL_TTL_SECS: u64 = 86_400;
/// How long one blocking read waits for an entry before it is sent again.
const BLOCK: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A close frame's reason has at most 123 bytes.
const MAX_CLOSE_REASON: usize = 123;

fn ban_key(sub: &str) -> String {
    format!("chat:ban:{sub}")
}

/// How a connection is to be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

/// A ban in force.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ban {
    /// Unix milliseconds at which it ends.
    pub until_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Ban {
    /// The close that tells a banned user so, and for how long.
    pub fn close(&self) -> Close {
        let left = Duration::from_millis(self.until_ms.saturating_sub(now_ms()));
        let mut reason = format!("banned for {} s", left.as_secs_f64().ceil().max(1.0));
        if let Some(why) = &self.reason {
            reason.push_str(": ");
            reason.push_str(why);
        }
        Close {
            code: CLOSE_BANNED,
            reason: truncate(reason, MAX_CLOSE_REASON),
        }
    }

    fn in_force(&self) -> bool {
        self.until_ms > now_ms()
    }
}

/// One entry of the control stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Control {
    /// Close every connection of `sub`; with `ban`, refuse it until then.
    Disconnect {
        sub: String,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        ban: Option<Ban>,
    },
    /// The ban of `sub` was lifted.
    Unban { sub: String },
}

/// Where to send the close of each connection of a user, by registration.
type UserConnections = HashMap<u64, watch::Sender<Option<Close>>>;

/// The connections of each signed-in user on this instance, and the bans it knows of.
#[derive(Default)]
pub struct Moderation {
    connections: Mutex<HashMap<String, UserConnections>>,
    next: AtomicU64,
    bans: Mutex<HashMap<String, Ban>>,
}

/// A connection's place in [`Moderation`], held for its lifetime.
pub struct Registration {
    moderation: Arc<Moderation>,
    sub: String,
    id: u64,
    closes: watch::Receiver<Option<Close>>,
}

impl Registration {
    /// Resolves when the operator closes this connection.
    pub async fn closed(&self) -> Close {
        let mut closes = self.closes.clone();
        let close = closes
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|close| close.clone());
        match close {
            Some(close) => close,
            // The sender lives as long as the registration: never.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut connections = self.moderation.connections.lock().unwrap();
        if let Some(of_user) = connections.get_mut(&self.sub) {
            of_user.remove(&self.id);
            if of_user.is_empty() {
                connections.remove(&self.sub);
            }
        }
    }
}

impl Moderation {
    /// Registers a connection of `sub`, so that a disconnect reaches it.
    pub fn register(self: &Arc<Self>, sub: &str) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, closes) = watch::channel(None);
        self.connections
            .lock()
            .unwrap()
            .entry(sub.to_owned())
            .or_default()
            .insert(id, sender);
        Registration {
            moderation: self.clone(),
            sub: sub.to_owned(),
            id,
            closes,
        }
    }

    /// The ban of `sub`, as Redis holds it. Remembered here too, for its joins.
    pub async fn ban_of(&self, store: &Store, sub: &str) -> Result<Option<Ban>, StoreError> {
        let mut get = redis::cmd("GET");
        get.arg(ban_key(sub));
        let stored: Option<String> = store.redis().call(Request::Cmd(&get)).await?;
        let ban = stored
            .and_then(|json| serde_json::from_str::<Ban>(&json).ok())
            .filter(Ban::in_force);
        if let Some(ban) = &ban {
            self.bans
                .lock()
                .unwrap()
                .insert(sub.to_owned(), ban.clone());
        }
        Ok(ban)
    }

    /// The ban of `sub` this instance knows of, if one is in force.
    pub fn known_ban(&self, sub: &str) -> Option<Ban> {
        let mut bans = self.bans.lock().unwrap();
        bans.retain(|_, ban| ban.in_force());
        bans.get(sub).cloned()
    }

    /// Has every instance close the connections of `sub`; with `ban`, also refuse its
    /// new connections and joins for that long. Returns the ban.
    pub async fn disconnect(
        store: &Store,
        sub: &str,
        ban: Option<Duration>,
        reason: Option<String>,
    ) -> Result<Option<Ban>, StoreError> {
        let ban = ban.map(|length| {
            let ban = Ban {
                until_ms: now_ms() + length.as_millis() as u64,
                reason: reason.clone(),
            };
            (ban, length)
        });
        if let Some((ban, length)) = &ban {
            // Set before the disconnect goes out: a connection that the disconnect does
            // not find yet (being opened) finds the ban.
            let mut set = redis::cmd("SET");
            set.arg(ban_key(sub))
                .arg(serde_json::to_string(ban).expect("a ban serializes"))
                .arg("PX")
                .arg(length.as_millis().max(1) as u64);
            store.redis().call::<()>(Request::Cmd(&set)).await?;
        }
        let ban = ban.map(|(ban, _)| ban);
        append_control(
            store,
            &Control::Disconnect {
                sub: sub.to_owned(),
                reason,
                ban: ban.clone(),
            },
        )
        .await?;
        Ok(ban)
    }

    /// Lifts the ban of `sub`, on every instance.
    pub async fn unban(store: &Store, sub: &str) -> Result<(), StoreError> {
        let mut del = redis::cmd("DEL");
        del.arg(ban_key(sub));
        store.redis().call::<()>(Request::Cmd(&del)).await?;
        append_control(
            store,
            &Control::Unban {
                sub: sub.to_owned(),
            },
        )
        .await
    }

    /// Carries out one entry of the control stream on this instance.
    fn apply(&self, control: Control) {
        match control {
            Control::Disconnect { sub, reason, ban } => {
                let close = match &ban {
                    Some(ban) => ban.close(),
                    None => Close {
                        code: CLOSE_DISCONNECTED,
                        reason: truncate(
                            reason.unwrap_or_else(|| "disconnected by the operator".to_owned()),
                            MAX_CLOSE_REASON,
                        ),
                    },
                };
                if let Some(ban) = ban {
                    self.bans.lock().unwrap().insert(sub.clone(), ban);
                }
                let connections = self.connections.lock().unwrap();
                let closed = connections.get(&sub).map_or(0, |of_user| {
                    for sender in of_user.values() {
                        sender.send_replace(Some(close.clone()));
                    }
                    of_user.len()
                });
                tracing::info!(sub, closed, code = close.code, "disconnecting a user");
            }
            Control::Unban { sub } => {
                self.bans.lock().unwrap().remove(&sub);
                tracing::info!(sub, "ban lifted");
            }
        }
    }
}

async fn append_control(store: &Store, control: &Control) -> Result<(), StoreError> {
    let mut add = redis::cmd("XADD");
    add.arg(CONTROL_KEY)
        .arg("MAXLEN")
        .arg("~")
        .arg(CONTROL_LEN)
        .arg("*")
        .arg("c")
        .arg(serde_json::to_string(control).expect("a control entry serializes"));
    store.redis().call::<String>(Request::Cmd(&add)).await?;
    let mut expire = redis::cmd("EXPIRE");
    expire.arg(CONTROL_KEY).arg(CONTROL_TTL_SECS);
    store.redis().call::<()>(Request::Cmd(&expire)).await
}

/// Follows the control stream until cancelled, applying each entry; reconnects with
/// backoff, and goes on from the last entry it applied, so nothing appended while the
/// link was down is missed.
pub async fn follow(moderation: Arc<Moderation>, store: Store, stop: CancellationToken) {
    let mut last: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            result = follow_until_error(&moderation, &store, &mut last, &mut backoff) => result,
        };
        if let Err(e) = result {
            tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff, "following the control stream failed");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow_until_error(
    moderation: &Moderation,
    store: &Store,
    last: &mut Option<String>,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    // A connection of its own: a blocking read holds up whatever is behind it.
    let target = store.target();
    if target.cluster {
        let mut conn = target
            .cluster_client(redis::ProtocolVersion::RESP2, None)?
            .get_async_connection()
            .await
            .context("connecting the control stream's reader to the cluster")?;
        read_control(&mut conn, moderation, last, backoff).await
    } else {
        let mut conn = target
            .client(redis::ProtocolVersion::RESP2)?
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(BLOCK + COMMAND_TIMEOUT)),
            )
            .await
            .context("connecting the control stream's reader")?;
        read_control(&mut conn, moderation, last, backoff).await
    }
}

async fn read_control(
    conn: &mut (impl ConnectionLike + Send),
    moderation: &Moderation,
    last: &mut Option<String>,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    if last.is_none() {
        // From now on: what was decided before this instance started concerns
        // connections it never had (bans are checked in Redis at each connection).
        let newest: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(CONTROL_KEY)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await
            .context("XREVRANGE of the control stream")?;
        *last = Some(
            newest
                .ids
                .first()
                .map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone()),
        );
        tracing::info!("following the control stream");
    }
    loop {
        let after = last.clone().expect("set above");
        let read: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(CONTROL_KEY)
            .arg(&after)
            .query_async(conn)
            .await
            .context("XREAD of the control stream")?;
        *backoff = Duration::from_millis(100);
        for entry in read.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            let control = entry
                .get::<String>("c")
                .and_then(|json| serde_json::from_str::<Control>(&json).ok());
            match control {
                Some(control) => moderation.apply(control),
                None => tracing::warn!(id = entry.id, "skipping a malformed control entry"),
            }
            *last = Some(entry.id);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disconnect_closes_every_connection_of_its_user_and_no_other() {
        let moderation = Arc::new(Moderation::default());
        let alice = [moderation.register("alice"), moderation.register("alice")];
        let bob = moderation.register("bob");
        moderation.apply(Control::Disconnect {
            sub: "alice".into(),
            reason: Some("spam".into()),
            ban: None,
        });
        for registration in &alice {
            assert_eq!(
                registration.closes.borrow().clone(),
                Some(Close {
                    code: CLOSE_DISCONNECTED,
                    reason: "spam".into()
                })
            );
        }
        assert_eq!(*bob.closes.borrow(), None);
        assert!(moderation.known_ban("alice").is_none());
        drop(alice);
        assert!(!moderation.connections.lock().unwrap().contains_key("alice"));
    }

    #[test]
    fn a_ban_says_how_long_and_is_known_until_it_ends() {
        let moderation = Arc::new(Moderation::default());
        let carol = moderation.register("carol");
        let ban = Ban {
            until_ms: now_ms() + 90_000,
            reason: Some("x".repeat(200)),
        };
        moderation.apply(Control::Disconnect {
            sub: "carol".into(),
            reason: None,
            ban: Some(ban.clone()),
        });
        let close = carol.closes.borrow().clone().unwrap();
        assert_eq!(close.code, CLOSE_BANNED);
        assert!(
            close.reason.starts_with("banned for 90 s: xxx"),
            "{close:?}"
        );
        assert_eq!(close.reason.len(), MAX_CLOSE_REASON);
        assert_eq!(moderation.known_ban("carol"), Some(ban));
        moderation.apply(Control::Unban {
            sub: "carol".into(),
        });
        assert!(moderation.known_ban("carol").is_none());
        let ended = Ban {
            until_ms: now_ms() - 1,
            reason: None,
        };
        moderation.bans.lock().unwrap().insert("dave".into(), ended);
        assert!(moderation.known_ban("dave").is_none());
    }

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("ééé".into(), 3), "é");
        assert_eq!(truncate("abc".into(), 5), "abc");
    }
}
