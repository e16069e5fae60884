//! Who may connect: caps on connections per node, per client address and per user, and
//! connect-rate limits per node and per client address. Pure: the time and the addresses
//! come in as arguments, decisions come out; the connection task holds the [`Admission`]
//! behind a lock and releases what it took when the connection ends.
//!
//! Behind a load balancer every connection comes from the balancer's address, so the client
//! address is taken from `X-Forwarded-For`, but only when the peer is a configured trusted
//! proxy: anyone else could write any address there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::ratelimit::TokenBucket;

/// Admission limits (see `docs/operations.md`).
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Connections this node holds at most (upgraded or upgrading).
    pub max_connections: usize,
    /// Connections from one client address at most. Generous by default: a carrier-grade NAT
    /// puts many phones behind one address.
    pub max_connections_per_ip: usize,
    /// Connections (devices) of one user on this node at most.
    pub max_connections_per_user: usize,
    /// New connections per second accepted by the node (sustained, and the burst above it).
    pub node_connect_rate: u32,
    pub node_connect_burst: u32,
    /// New connections per second from one client address (sustained, and the burst).
    pub ip_connect_rate: u32,
    pub ip_connect_burst: u32,
    /// Peers whose `X-Forwarded-For` is believed (load balancers, proxies).
    pub trusted_proxies: Vec<Cidr>,
    /// Web origins (`https://chat.example.com`, exact) whose pages may connect; empty means
    /// any. Requests without an `Origin` header (native apps, servers) are not browsers'
    /// and are always let through: the token, not the origin, authenticates them.
    pub allowed_origins: Vec<String>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_connections: 1_000_000,
            max_connections_per_ip: 10_000,
            max_connections_per_user: 32,
            node_connect_rate: 5_000,
            node_connect_burst: 20_000,
            ip_connect_rate: 500,
            ip_connect_burst: 2_000,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

/// Whether a browser page from `origin` may open a connection (see
/// [`AdmissionConfig::allowed_origins`]). Origins are compared exactly, ASCII case aside.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        None => true,
        Some(_) if allowed.is_empty() => true,
        Some(o) => allowed.iter().any(|a| a.eq_ignore_ascii_case(o.trim())),
    }
}

/// Why a connection is refused. At the upgrade the client gets an HTTP status (503 for the
/// caps, 429 for the rates, with `Retry-After`); a user over its cap is closed with 4011
/// after authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NodeFull,
    NodeRate,
    IpFull,
    IpRate,
    UserFull,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NodeFull => "node_full",
            Refusal::NodeRate => "node_rate",
            Refusal::IpFull => "ip_full",
            Refusal::IpRate => "ip_rate",
            Refusal::UserFull => "user_full",
        }
    }

    /// The HTTP status of a refused upgrade: 429 for a rate, 503 for a cap.
    pub fn status(self) -> u16 {
        match self {
            Refusal::NodeRate | Refusal::IpRate => 429,
            _ => 503,
        }
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| format!("bad address in {s:?}"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => {
                b.trim().parse::<u8>().ok().filter(|b| *b <= max).ok_or(format!("bad prefix length in {s:?}"))?
            }
            None => max,
        };
        Ok(Cidr { net, bits })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.to_ipv6_mapped().octets(), self.bits),
            (IpAddr::V4(_), IpAddr::V6(a)) => a.to_ipv4_mapped().is_some_and(|a| self.contains(IpAddr::V4(a))),
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest
/// address in `X-Forwarded-For` that is not itself a trusted proxy (proxies append, so the
/// rightmost untrusted entry is the one no client could forge).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(header) = forwarded_for else { return peer };
    let mut client = peer;
    for entry in header.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => client = ip,
            Ok(ip) => return ip,
            // Garbage in the chain: trust nothing beyond it.
            Err(_) => return client,
        }
    }
    client
}

/// One client address: its connections and its connect-rate bucket, kept small (24 bytes)
/// since a node may track one per connection.
struct IpEntry {
    connections: u32,
    tokens: f32,
    last: Instant,
}

impl IpEntry {
    /// A token bucket (rate per second, burst) stored in two fields; the rate and burst come
    /// from the configuration rather than a copy in every entry.
    fn try_take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Entries of addresses kept at most before idle ones are forgotten (their rate bucket would
/// be full again by then, so forgetting them changes no decision).
const MAX_TRACKED_IPS: usize = 100_000;

/// The live admission state of a node.
pub struct Admission {
    config: AdmissionConfig,
    connections: usize,
    node_rate: TokenBucket,
    ips: HashMap<IpAddr, IpEntry>,
    /// Keyed by the same `Arc` the connection and the hub hold: no copy of the id per user.
    users: HashMap<Arc<str>, u32>,
}

impl Admission {
    pub fn new(config: AdmissionConfig, now: Instant) -> Self {
        let node_rate = TokenBucket::new(config.node_connect_rate, config.node_connect_burst, now);
        Admission { config, connections: 0, node_rate, ips: HashMap::new(), users: HashMap::new() }
    }

    /// A new connection from `ip` at `now`. On success the caller holds one connection of
    /// the node and of `ip` until [`Admission::release`].
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        if self.connections >= self.config.max_connections {
            return Err(Refusal::NodeFull);
        }
        if self.ips.len() >= MAX_TRACKED_IPS {
            self.forget_idle(now);
        }
        let (rate, burst) = (self.config.ip_connect_rate, self.config.ip_connect_burst);
        let entry = self.ips.entry(ip).or_insert_with(|| IpEntry { connections: 0, tokens: burst as f32, last: now });
        if entry.connections as usize >= self.config.max_connections_per_ip {
            return Err(Refusal::IpFull);
        }
        if !entry.try_take(rate, burst, now) {
            return Err(Refusal::IpRate);
        }
        if !self.node_rate.try_take(now) {
            return Err(Refusal::NodeRate);
        }
        entry.connections += 1;
        self.connections += 1;
        Ok(())
    }

    /// The connection from `ip` admitted by [`Admission::admit`] ended.
    pub fn release(&mut self, ip: IpAddr) {
        self.connections = self.connections.saturating_sub(1);
        if let Some(entry) = self.ips.get_mut(&ip) {
            entry.connections = entry.connections.saturating_sub(1);
        }
    }

    /// An authenticated connection of `user`. On success the caller holds one of the user's
    /// connections until [`Admission::release_user`].
    pub fn admit_user(&mut self, user: &Arc<str>) -> Result<(), Refusal> {
        let held = self.users.get(user).copied().unwrap_or(0);
        if held as usize >= self.config.max_connections_per_user {
            return Err(Refusal::UserFull);
        }
        *self.users.entry(user.clone()).or_insert(0) += 1;
        Ok(())
    }

    pub fn release_user(&mut self, user: &str) {
        if let Some(n) = self.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(user);
            }
        }
    }

    /// Connections the node holds now.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Drops addresses with no connection whose rate bucket has refilled.
    fn forget_idle(&mut self, now: Instant) {
        let refill = Duration::from_secs_f64(
            f64::from(self.config.ip_connect_burst) / f64::from(self.config.ip_connect_rate.max(1)),
        );
        self.ips.retain(|_, e| e.connections > 0 || now.saturating_duration_since(e.last) < refill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn config() -> AdmissionConfig {
        AdmissionConfig {
            max_connections: 5,
            max_connections_per_ip: 2,
            max_connections_per_user: 2,
            node_connect_rate: 1000,
            node_connect_burst: 1000,
            ip_connect_rate: 1000,
            ip_connect_burst: 1000,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }

    #[test]
    fn origins_are_checked_exactly_and_only_for_browsers() {
        let allowed = vec!["https://chat.example.com".to_string()];
        assert!(origin_allowed(Some("https://chat.example.com"), &allowed));
        assert!(origin_allowed(Some("HTTPS://CHAT.EXAMPLE.COM"), &allowed));
        assert!(!origin_allowed(Some("https://chat.example.com.evil.net"), &allowed));
        assert!(!origin_allowed(Some("http://chat.example.com"), &allowed));
        assert!(!origin_allowed(Some("null"), &allowed));
        assert!(origin_allowed(None, &allowed), "native clients send no Origin");
        assert!(origin_allowed(Some("https://anything"), &[]), "no list: any origin");
    }

    #[test]
    fn caps_per_address_and_per_node_hold_until_released() {
        let now = Instant::now();
        let mut a = Admission::new(config(), now);
        assert_eq!(a.admit(ip("10.0.0.1"), now), Ok(()));
        assert_eq!(a.admit(ip("10.0.0.1"), now), Ok(()));
        assert_eq!(a.admit(ip("10.0.0.1"), now), Err(Refusal::IpFull));
        a.release(ip("10.0.0.1"));
        assert_eq!(a.admit(ip("10.0.0.1"), now), Ok(()));
        for i in 2..=4 {
            assert_eq!(a.admit(ip(&format!("10.0.0.{i}")), now), Ok(()));
        }
        assert_eq!(a.connections(), 5);
        assert_eq!(a.admit(ip("10.0.0.9"), now), Err(Refusal::NodeFull));
        a.release(ip("10.0.0.3"));
        assert_eq!(a.admit(ip("10.0.0.9"), now), Ok(()));
    }

    #[test]
    fn connect_rates_refill_with_time() {
        let now = Instant::now();
        let mut a = Admission::new(
            AdmissionConfig {
                max_connections: 100,
                max_connections_per_ip: 100,
                ip_connect_rate: 1,
                ip_connect_burst: 2,
                node_connect_rate: 2,
                node_connect_burst: 3,
                ..config()
            },
            now,
        );
        let x = ip("10.0.0.1");
        assert_eq!(a.admit(x, now), Ok(()));
        assert_eq!(a.admit(x, now), Ok(()));
        assert_eq!(a.admit(x, now), Err(Refusal::IpRate));
        assert_eq!(a.admit(ip("10.0.0.2"), now), Ok(()));
        assert_eq!(a.admit(ip("10.0.0.3"), now), Err(Refusal::NodeRate));
        let later = now + Duration::from_secs(1);
        assert_eq!(a.admit(x, later), Ok(()), "one token per second per address");
        assert_eq!(a.admit(x, later), Err(Refusal::IpRate));
        assert_eq!(Refusal::IpRate.status(), 429);
        assert_eq!(Refusal::IpFull.status(), 503);
    }

    #[test]
    fn users_are_capped_per_node() {
        let mut a = Admission::new(config(), Instant::now());
        let (u, v): (Arc<str>, Arc<str>) = (Arc::from("u"), Arc::from("v"));
        assert_eq!(a.admit_user(&u), Ok(()));
        assert_eq!(a.admit_user(&u), Ok(()));
        assert_eq!(a.admit_user(&u), Err(Refusal::UserFull));
        assert_eq!(a.admit_user(&v), Ok(()));
        a.release_user("u");
        assert_eq!(a.admit_user(&u), Ok(()));
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = ["10.0.0.0/8", "::1"].iter().map(|s| s.parse().expect("cidr")).collect();
        let table = [
            ("203.0.113.9", Some("1.2.3.4"), "203.0.113.9"),
            ("10.1.2.3", Some("1.2.3.4"), "1.2.3.4"),
            ("10.1.2.3", Some("6.6.6.6, 1.2.3.4"), "1.2.3.4"),
            ("10.1.2.3", Some("1.2.3.4, 10.9.9.9"), "1.2.3.4"),
            ("10.1.2.3", Some("10.9.9.9"), "10.9.9.9"),
            ("10.1.2.3", Some("garbage, 10.9.9.9"), "10.9.9.9"),
            ("10.1.2.3", None, "10.1.2.3"),
            ("::1", Some("2001:db8::7"), "2001:db8::7"),
        ];
        for (peer, header, want) in table {
            assert_eq!(client_ip(ip(peer), header, &trusted), ip(want), "{peer} {header:?}");
        }
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "192.168.4.0/22".parse().expect("cidr");
        assert!(c.contains(ip("192.168.7.255")));
        assert!(!c.contains(ip("192.168.8.0")));
        assert!(c.contains(ip("::ffff:192.168.5.1")));
        let all: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let v6: Cidr = "2001:db8::/32".parse().expect("cidr");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
    }
}
