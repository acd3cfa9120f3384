//! What stands around the password check: a cache of recent successes, so a client that
//! authenticates for every message costs a hash lookup instead of a SHA512-crypt, and the
//! brute-force brake, which counts failures per client network and per login and refuses
//! them for a cooling-off period once they pass their limit.
//!
//! The brake must not become a way to lock out the innocent:
//! - a login braked by strangers' failures still logs in from a client network that logged
//!   in as it before (a known device, as Mailu does it); strangers, from however many
//!   addresses, get no password check at all until the cooling-off ends;
//! - clients on a trusted proxy's address (Roundcube, Z-Push and Nextcloud on 127.0.0.1) are
//!   counted per login only, in a bucket of their own: one user's failures behind webmail
//!   refuse neither the next user there nor the same user's own devices.
//!
//! The cache is keyed by an HMAC of the login and the password under a key made at start-up,
//! so neither is kept; an entry holds the stored hash it was verified against and is only used
//! while the DB still holds that very hash, so a password change takes effect at once.

use daemon::net::{Cidr, any_contains};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

type Tag = [u8; 32];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Recent successful verifications.
pub struct SuccessCache {
    key: [u8; 32],
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<Tag, Entry>>,
}

struct Entry {
    stored_hash: String,
    expires: Instant,
}

impl std::fmt::Debug for SuccessCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuccessCache")
            .field("ttl", &self.ttl)
            .field("entries", &lock(&self.entries).len())
            .finish_non_exhaustive()
    }
}

impl SuccessCache {
    /// A cache with a fresh random key; `capacity` 0 turns it off.
    pub fn new(ttl: Duration, capacity: usize) -> Result<SuccessCache, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(SuccessCache {
            key,
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn tag(&self, login: &str, password: &str) -> Tag {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        mac.update(login.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Did this login and password succeed recently against `stored_hash`?
    pub fn hit(&self, login: &str, password: &str, stored_hash: &str) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let tag = self.tag(login, password);
        let now = Instant::now();
        lock(&self.entries)
            .get(&tag)
            .is_some_and(|e| e.expires > now && e.stored_hash == stored_hash)
    }

    /// Remembers a success.
    pub fn insert(&self, login: &str, password: &str, stored_hash: &str) {
        if self.capacity == 0 {
            return;
        }
        let tag = self.tag(login, password);
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        if entries.len() >= self.capacity {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            tag,
            Entry {
                stored_hash: stored_hash.to_owned(),
                expires: now + self.ttl,
            },
        );
    }
}

/// How long a successful login keeps its client network known.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 86_400);
/// At most this many known (login, network) pairs are kept.
const MAX_KNOWN: usize = 200_000;

/// Failures per client network (IPv4 address, IPv6 /64) and per login; past a limit, the
/// key is refused for `cooloff`.
pub struct Brake {
    by_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    by_login: Option<DefaultKeyedRateLimiter<String>>,
    cooloff: Duration,
    blocked: Mutex<HashMap<String, Instant>>,
    proxies: Vec<Cidr>,
    /// (login, client network) pairs that logged in, with when they last did.
    known: Mutex<HashMap<(String, IpAddr), Instant>>,
}

impl std::fmt::Debug for Brake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Brake")
            .field("cooloff", &self.cooloff)
            .finish_non_exhaustive()
    }
}

/// Why a request is refused without a password check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocked {
    /// A client network, for every login.
    Ip(IpAddr),
    /// A login, for clients that never logged in as it.
    Login(String),
    /// A login, for clients on a trusted proxy's address.
    ProxiedLogin(String),
}

/// The key failures from `ip` are counted under: the address, or its /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl Brake {
    /// `per_ip` and `per_login` failures allowed per minute (as a burst, refilled over the
    /// minute); 0 turns that count off.
    /// `proxies`: the addresses of trusted proxies (webmail, ActiveSync), whose clients are
    /// counted per login only.
    pub fn new(per_ip: u32, per_login: u32, cooloff: Duration, proxies: Vec<Cidr>) -> Brake {
        let quota = |n| NonZeroU32::new(n).map(Quota::per_minute);
        Brake {
            by_ip: quota(per_ip).map(RateLimiter::keyed),
            by_login: quota(per_login).map(RateLimiter::keyed),
            cooloff,
            blocked: Mutex::new(HashMap::new()),
            proxies,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn block_key(b: &Blocked) -> String {
        match b {
            Blocked::Ip(ip) => format!("ip {ip}"),
            Blocked::Login(l) => format!("login {l}"),
            Blocked::ProxiedLogin(l) => format!("proxied {l}"),
        }
    }

    fn is_proxy(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| any_contains(&self.proxies, ip))
    }

    fn is_known(&self, ip: Option<IpAddr>, login: &str) -> bool {
        let Some(ip) = ip else {
            return false;
        };
        let now = Instant::now();
        lock(&self.known)
            .get(&(login.to_owned(), ip_key(ip)))
            .is_some_and(|at| now.duration_since(*at) < KNOWN_FOR)
    }

    /// Is this client or login cooling off, for this client?
    pub fn check(&self, ip: Option<IpAddr>, login: &str) -> Option<Blocked> {
        let now = Instant::now();
        let is_blocked = |b: &Blocked| {
            lock(&self.blocked)
                .get(&Self::block_key(b))
                .is_some_and(|until| *until > now)
        };
        if self.is_proxy(ip) {
            let b = Blocked::ProxiedLogin(login.to_owned());
            return is_blocked(&b).then_some(b);
        }
        if let Some(ip) = ip {
            let b = Blocked::Ip(ip_key(ip));
            if is_blocked(&b) {
                return Some(b);
            }
        }
        let b = Blocked::Login(login.to_owned());
        (is_blocked(&b) && !self.is_known(ip, login)).then_some(b)
    }

    /// Remembers that `login` logged in from `ip`'s network, so strangers' failures never
    /// keep it out from there.
    pub fn succeeded(&self, ip: Option<IpAddr>, login: &str) {
        let Some(ip) = ip.filter(|_| !self.is_proxy(ip)) else {
            return;
        };
        let now = Instant::now();
        let mut known = lock(&self.known);
        if known.len() >= MAX_KNOWN {
            known.retain(|_, at| now.duration_since(*at) < KNOWN_FOR);
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
        }
        known.insert((login.to_owned(), ip_key(ip)), now);
    }

    /// Counts a failure; returns what it pushed over the limit, if anything (to log once).
    pub fn failed(&self, ip: Option<IpAddr>, login: &str) -> Vec<Blocked> {
        let mut newly = Vec::new();
        let proxied = self.is_proxy(ip);
        if let (Some(l), Some(ip)) = (&self.by_ip, ip)
            && !proxied
            && l.check_key(&ip_key(ip)).is_err()
        {
            newly.push(Blocked::Ip(ip_key(ip)));
        }
        let (bucket, block) = if proxied {
            (
                format!("p {login}"),
                Blocked::ProxiedLogin(login.to_owned()),
            )
        } else {
            (format!("d {login}"), Blocked::Login(login.to_owned()))
        };
        if let Some(l) = &self.by_login
            && l.check_key(&bucket).is_err()
        {
            newly.push(block);
        }
        if !newly.is_empty() {
            let until = Instant::now() + self.cooloff;
            let mut blocked = lock(&self.blocked);
            for b in &newly {
                blocked.insert(Self::block_key(b), until);
            }
        }
        newly
    }

    /// How long a block lasts.
    pub fn cooloff(&self) -> Duration {
        self.cooloff
    }

    /// Forgets idle counters and ended cooling-off periods (memory stays bounded).
    pub fn sweep(&self) {
        if let Some(l) = &self.by_ip {
            l.retain_recent();
        }
        if let Some(l) = &self.by_login {
            l.retain_recent();
        }
        let now = Instant::now();
        lock(&self.blocked).retain(|_, until| *until > now);
        lock(&self.known).retain(|_, at| now.duration_since(*at) < KNOWN_FOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_follows_the_stored_hash() {
        let c = SuccessCache::new(Duration::from_secs(60), 10).unwrap();
        assert!(!c.hit("me@x", "pw", "{H}1"));
        c.insert("me@x", "pw", "{H}1");
        assert!(c.hit("me@x", "pw", "{H}1"));
        assert!(!c.hit("me@x", "other", "{H}1"), "another password");
        assert!(!c.hit("you@x", "pw", "{H}1"), "another login");
        assert!(!c.hit("me@x", "pw", "{H}2"), "the password was changed");
        let off = SuccessCache::new(Duration::from_secs(60), 0).unwrap();
        off.insert("me@x", "pw", "{H}1");
        assert!(!off.hit("me@x", "pw", "{H}1"));
        let short = SuccessCache::new(Duration::ZERO, 10).unwrap();
        short.insert("me@x", "pw", "{H}1");
        assert!(!short.hit("me@x", "pw", "{H}1"), "expired");
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn brake_blocks_a_network_and_a_login() {
        let b = Brake::new(3, 5, Duration::from_secs(60), Vec::new());
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        for _ in 0..3 {
            assert!(b.failed(ip("192.0.2.9"), "a").is_empty());
        }
        assert_eq!(
            b.failed(ip("192.0.2.9"), "a"),
            [Blocked::Ip(ip("192.0.2.9").unwrap())]
        );
        assert!(b.check(ip("192.0.2.9"), "b").is_some());
        assert!(b.check(ip("192.0.2.10"), "b").is_none(), "another client");
        // IPv6 counts per /64.
        for i in 0..4 {
            b.failed(ip(&format!("2001:db8::{i}")), &format!("u{i}"));
        }
        assert!(b.check(ip("2001:db8::ffff"), "z").is_some());
        assert!(b.check(ip("2001:db8:0:1::1"), "z").is_none());
        // A login tried from many addresses.
        for i in 0..6 {
            b.failed(ip(&format!("198.51.100.{i}")), "victim");
        }
        assert_eq!(
            b.check(ip("203.0.113.1"), "victim"),
            Some(Blocked::Login("victim".into()))
        );
        let off = Brake::new(0, 0, Duration::from_secs(60), Vec::new());
        for _ in 0..100 {
            assert!(off.failed(ip("192.0.2.9"), "a").is_empty());
        }
    }

    #[test]
    fn strangers_cannot_lock_out_a_known_device_or_the_next_webmail_user() {
        let proxies = vec![
            Cidr::parse("127.0.0.0/8").unwrap(),
            Cidr::parse("::1").unwrap(),
        ];
        let b = Brake::new(3, 5, Duration::from_secs(60), proxies);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        b.succeeded(ip("198.51.100.20"), "alice");
        for i in 0..6 {
            b.failed(ip(&format!("203.0.113.{i}")), "alice");
        }
        assert_eq!(
            b.check(ip("192.0.2.1"), "alice"),
            Some(Blocked::Login("alice".into()))
        );
        assert_eq!(
            b.check(ip("198.51.100.20"), "alice"),
            None,
            "her own device"
        );
        assert_eq!(
            b.check(ip("::ffff:127.0.0.1"), "alice"),
            None,
            "webmail through a dual-stack socket is webmail too"
        );
        assert_eq!(
            b.check(ip("127.0.0.1"), "alice"),
            None,
            "webmail is another bucket"
        );
        // Behind the proxy: bob's failures refuse bob there, not carol, and not bob's phone.
        b.succeeded(ip("198.51.100.30"), "bob");
        for _ in 0..6 {
            b.failed(ip("127.0.0.1"), "bob");
        }
        assert_eq!(
            b.check(ip("127.0.0.1"), "bob"),
            Some(Blocked::ProxiedLogin("bob".into()))
        );
        assert_eq!(b.check(ip("127.0.0.1"), "carol"), None);
        assert_eq!(
            b.check(ip("::ffff:127.0.0.1"), "carol"),
            None,
            "IPv4-mapped"
        );
        assert_eq!(b.check(ip("198.51.100.30"), "bob"), None);
        assert_eq!(
            b.check(ip("192.0.2.1"), "bob"),
            None,
            "direct strangers are not braked for bob"
        );
        // The proxy's address itself is never braked.
        for i in 0..20 {
            b.failed(ip("127.0.0.1"), &format!("u{i}"));
        }
        assert_eq!(b.check(ip("127.0.0.1"), "dave"), None);
    }
}
