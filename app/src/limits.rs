//! Limits on what one client may cost: the token bucket behind the message rate and the
//! abuse allowance; and per client, open connections and rooms created. A client is a
//! signed-in user (the token's `sub`, wherever they connect from), or else an address:
//! the TCP peer, or what a trusted proxy (the load balancer) put in `X-Forwarded-For` (a
//! header anyone else sends is ignored, since it is anyone's to forge), an IPv6 address
//! counted by its /64, the block one subscriber is given.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use axum::http::HeaderMap;

/// An IP network, `10.0.0.0/16` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not a CIDR (like 10.0.0.0/16): {s:?}");
        let (address, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u32) {
            match ip.to_canonical() {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, width), (addr, addr_width)) = (bits(self.network), bits(ip));
        if width != addr_width {
            return false;
        }
        let host_bits = width - u32::from(self.prefix);
        host_bits >= 128 || (net >> host_bits) == (addr >> host_bits)
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy (proxies append
/// what they saw, so entries further left are the client's to write).
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|entry| entry.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()))
        .collect::<Vec<_>>();
    for entry in forwarded.into_iter().rev() {
        match entry {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return ip,
            // Garbage where an address should be: stop believing the header there.
            Err(_) => break,
        }
    }
    peer
}

/// Whose budget a connection spends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// A signed-in user, by the token's `sub`: a user's budget follows them from address
    /// to address, and the users behind one NAT each have their own.
    User(String),
    /// An anonymous client, by its address; IPv6 by its /64, which one subscriber holds
    /// whole and can rotate through.
    Address(IpAddr),
}

impl ClientKey {
    pub fn user(sub: &str) -> Self {
        ClientKey::User(sub.to_owned())
    }

    pub fn address(ip: IpAddr) -> Self {
        ClientKey::Address(match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            v4 => v4,
        })
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientKey::User(sub) => write!(f, "user {sub:?}"),
            ClientKey::Address(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            ClientKey::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// Per-client connection counts, room-creation and join budgets.
pub struct ClientLimits {
    connections: Mutex<HashMap<ClientKey, usize>>,
    max_connections: usize,
    new_rooms: DefaultKeyedRateLimiter<ClientKey>,
    joins: DefaultKeyedRateLimiter<ClientKey>,
    last_sweep: Mutex<Instant>,
}

/// Held by a connection; gives its slot back when dropped.
pub struct ConnectionSlot {
    limits: Arc<ClientLimits>,
    pub client: ClientKey,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut connections = self.limits.connections.lock().unwrap();
        if let Some(open) = connections.get_mut(&self.client) {
            *open -= 1;
            if *open == 0 {
                connections.remove(&self.client);
            }
        }
    }
}

impl ClientLimits {
    pub fn new(max_connections: usize, rooms_per_minute: f64, joins_per_minute: f64) -> Self {
        let per_minute = |n: f64| RateLimiter::keyed(quota(n, n / 60.0));
        ClientLimits {
            connections: Mutex::new(HashMap::new()),
            max_connections,
            new_rooms: per_minute(rooms_per_minute),
            joins: per_minute(joins_per_minute),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// A connection slot for `client`, unless it has all it may have.
    pub fn admit(self: &Arc<Self>, client: ClientKey) -> Option<ConnectionSlot> {
        self.sweep();
        let mut connections = self.connections.lock().unwrap();
        let open = connections.entry(client.clone()).or_default();
        if *open >= self.max_connections {
            return None;
        }
        *open += 1;
        Some(ConnectionSlot {
            limits: self.clone(),
            client,
        })
    }

    /// Spends one room creation of `client`'s budget, if any is left.
    pub fn take_new_room(&self, client: &ClientKey) -> bool {
        self.new_rooms.check_key(client).is_ok()
    }

    /// Spends `cost` of `client`'s join budget (a room this instance does not follow
    /// yet, a presence entry), if that much is left.
    pub fn take_joins(&self, client: &ClientKey, cost: u32) -> bool {
        NonZeroU32::new(cost)
            .is_none_or(|cost| matches!(self.joins.check_key_n(client, cost), Ok(Ok(()))))
    }

    /// Forgets the budgets that have refilled, at most once a second: what remains is
    /// bounded by the clients of the last minute.
    fn sweep(&self) {
        let mut last = self.last_sweep.lock().unwrap();
        if last.elapsed() < Duration::from_secs(1) {
            return;
        }
        *last = Instant::now();
        self.new_rooms.retain_recent();
        self.joins.retain_recent();
    }
}

/// A token bucket: `burst` at once, refilled at `per_sec` (governor's GCRA, which keeps
/// it in one word).
pub struct TokenBucket(DefaultDirectRateLimiter);

impl TokenBucket {
    pub fn new(burst: f64, per_sec: f64) -> Self {
        TokenBucket(RateLimiter::direct(quota(burst, per_sec)))
    }

    pub fn take(&mut self) -> bool {
        self.0.check().is_ok()
    }
}

/// `burst` (at least 1) at once, one more every `1 / per_sec` seconds (at least one a
/// year: a rate of 0 is a bucket that never refills within any run).
pub(crate) fn quota(burst: f64, per_sec: f64) -> Quota {
    const YEAR: f64 = 365.0 * 86_400.0;
    let period = (1.0 / per_sec).clamp(1e-9, YEAR);
    let burst = NonZeroU32::new(burst.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
        .unwrap_or(NonZeroU32::MIN);
    Quota::with_period(Duration::from_secs_f64(period))
        .expect("a period of at least a nanosecond")
        .allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let vpc: Cidr = "10.0.0.0/16".parse().unwrap();
        assert!(vpc.contains(ip("10.0.255.1")));
        assert!(!vpc.contains(ip("10.1.0.1")));
        assert!(vpc.contains(ip("::ffff:10.0.0.9")));
        assert!(!vpc.contains(ip("fd00::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert!("::1".parse::<Cidr>().unwrap().contains(ip("::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted = ["10.0.0.0/16".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "1.1.1.1, 203.0.113.7, 10.0.3.3".parse().unwrap(),
        );
        assert_eq!(
            client_address(ip("10.0.1.1"), &headers, &trusted),
            ip("203.0.113.7")
        );
        // From anyone else the header is ignored.
        assert_eq!(
            client_address(ip("198.51.100.2"), &headers, &trusted),
            ip("198.51.100.2")
        );
        assert_eq!(
            client_address(ip("10.0.1.1"), &headers, &[]),
            ip("10.0.1.1")
        );
        headers.insert("x-forwarded-for", "junk".parse().unwrap());
        assert_eq!(
            client_address(ip("10.0.1.1"), &headers, &trusted),
            ip("10.0.1.1")
        );
    }

    #[test]
    fn connections_and_new_rooms_per_client() {
        let limits = Arc::new(ClientLimits::new(2, 3.0, 4.0));
        let a = ClientKey::address(ip("192.0.2.1"));
        let first = limits.admit(a.clone()).unwrap();
        let _second = limits.admit(a.clone()).unwrap();
        assert!(limits.admit(a.clone()).is_none());
        assert!(limits.admit(ClientKey::address(ip("192.0.2.2"))).is_some());
        assert!(limits.admit(ClientKey::user("u-1")).is_some());
        drop(first);
        assert!(limits.admit(a.clone()).is_some());
        assert_eq!((0..5).filter(|_| limits.take_new_room(&a)).count(), 3);
        assert!(limits.take_joins(&a, 0));
        assert!(limits.take_joins(&a, 2) && limits.take_joins(&a, 2));
        assert!(
            !limits.take_joins(&a, 1),
            "a budget of 4 joins a minute, spent"
        );
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let key = |s| ClientKey::address(ip(s));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
    }

    #[test]
    fn a_token_bucket_allows_its_burst_then_waits_for_the_rate() {
        let mut bucket = TokenBucket::new(3.0, 0.01);
        assert!((0..3).all(|_| bucket.take()));
        assert!(!bucket.take(), "one every 100 s");
        let mut never = TokenBucket::new(1.0, 0.0);
        assert!(never.take() && !never.take());
        let mut fast = TokenBucket::new(1_000_000.0, 1_000_000.0);
        assert!((0..10_000).all(|_| fast.take()));
    }
}
