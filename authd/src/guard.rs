//! What stands around the password check: a cache of recent successes, so a client that
//! authenticates for every message costs a hash lookup instead of a SHA512-crypt, and the
//! brute-force brake, which counts failures per client network and per login and refuses
//! them for a cooling-off period once they pass their limit.
//!
//! The brake must not become a way to lock out the innocent:
//! - a login braked by strangers' failures still logs in from a client network that logged
//!   in as it in the last 30 days (a known device, as Mailu does it), and so does a known
//!   device on a network braked for strangers' failures there; a known device is braked only
//!   by its own failures. Strangers, from however many addresses, get no password check at
//!   all until the cooling-off ends;
//! - known devices are kept in a file (`state::known_devices`), so a restart forgets none;
//!   at most [`MAX_PER_LOGIN`] per login (its oldest goes) and [`MAX_KNOWN`] in all (the
//!   oldest hundredth goes), never all at once;
//! - clients on a trusted proxy's address (Roundcube, Z-Push and Nextcloud on 127.0.0.1) are
//!   counted per login only, in a bucket of their own: one user's failures behind webmail
//!   refuse neither the next user there nor the same user's own devices. A proxy that passes
//!   the real client address (Dovecot's `login_trusted_networks` and an IMAP `ID` with
//!   `x-originating-ip`) puts its clients on the direct path, known devices included.
//!
//! The cache is keyed by an HMAC of the login and the password under a key made at start-up,
//! so neither is kept; an entry holds the stored hash it was verified against and is only used
//! while the DB still holds that very hash, so a password change takes effect at once.

use daemon::net::{Cidr, any_contains};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use state::commit::GroupCommit;
use state::known_devices::{Change, KnownDeviceStore, KnownDevices, Writer};
use state::pg::Pg;
use state::pg::device_store::{Outbox, PgKnownDevices};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
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

/// How long a successful login keeps its client network known, in seconds.
const KNOWN_FOR: i64 = 30 * 86_400;
/// At most this many known (login, network) pairs are kept.
pub const MAX_KNOWN: usize = 200_000;
/// At most this many networks per login.
pub const MAX_PER_LOGIN: usize = 32;
/// A sighting already on file is written again only this much later, in seconds.
const REWRITE_AFTER: i64 = 3600;

/// The known devices: per login, its networks with when each last logged in (Unix seconds).
#[derive(Default)]
struct Known {
    by_login: HashMap<String, Vec<(IpAddr, i64)>>,
    count: usize,
}

impl Known {
    fn seen_at(&self, login: &str, net: IpAddr) -> Option<i64> {
        self.by_login
            .get(login)?
            .iter()
            .find(|(n, _)| *n == net)
            .map(|(_, at)| *at)
    }

    /// Records a sighting; returns what to write (if anything) and what was pushed out.
    fn insert(&mut self, login: &str, net: IpAddr, now: i64) -> (bool, Vec<(String, IpAddr)>) {
        let mut gone = Vec::new();
        if let Some(nets) = self.by_login.get_mut(login) {
            if let Some(e) = nets.iter_mut().find(|(n, _)| *n == net) {
                let write = now - e.1 >= REWRITE_AFTER;
                e.1 = now;
                return (write, gone);
            }
            if nets.len() >= MAX_PER_LOGIN
                && let Some(oldest) = nets
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(i, _)| i)
            {
                let (n, _) = nets.swap_remove(oldest);
                self.count -= 1;
                gone.push((login.to_owned(), n));
            }
        }
        if self.count >= MAX_KNOWN {
            gone.extend(self.evict_oldest(MAX_KNOWN / 100));
        }
        self.by_login
            .entry(login.to_owned())
            .or_default()
            .push((net, now));
        self.count += 1;
        (true, gone)
    }

    /// Drops the `n` pairs seen longest ago, whoever's they are.
    fn evict_oldest(&mut self, n: usize) -> Vec<(String, IpAddr)> {
        let mut all: Vec<(i64, &String, IpAddr)> = self
            .by_login
            .iter()
            .flat_map(|(l, nets)| nets.iter().map(move |(net, at)| (*at, l, *net)))
            .collect();
        let n = n.clamp(1, all.len().max(1));
        if all.len() > n {
            all.select_nth_unstable_by_key(n, |(at, _, _)| *at);
        }
        let gone: Vec<(String, IpAddr)> = all
            .into_iter()
            .take(n)
            .map(|(_, l, net)| (l.clone(), net))
            .collect();
        for (l, net) in &gone {
            self.remove(l, *net);
        }
        gone
    }

    fn remove(&mut self, login: &str, net: IpAddr) {
        if let Some(nets) = self.by_login.get_mut(login) {
            let before = nets.len();
            nets.retain(|(n, _)| *n != net);
            self.count -= before - nets.len();
            if nets.is_empty() {
                self.by_login.remove(login);
            }
        }
    }

    fn expire(&mut self, before: i64) {
        let mut count = 0;
        self.by_login.retain(|_, nets| {
            nets.retain(|(_, at)| *at >= before);
            count += nets.len();
            !nets.is_empty()
        });
        self.count = count;
    }
}

/// Adds sightings read from a store (oldest first, so the per-login bound keeps the newest).
fn learn(known: &Mutex<Known>, rows: Vec<(String, String, i64)>) {
    let mut known = lock(known);
    for (login, net, at) in rows.into_iter().rev() {
        if let Ok(net) = net.parse::<IpAddr>() {
            known.insert(&login, ip_key(net), at);
        }
    }
}

/// Failures per client network (IPv4 address, IPv6 /64) and per login; past a limit, the
/// key is refused for `cooloff`.
pub struct Brake {
    by_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    by_login: Option<DefaultKeyedRateLimiter<String>>,
    cooloff: Duration,
    blocked: Mutex<HashMap<String, Instant>>,
    proxies: Vec<Cidr>,
    /// (login, client network) pairs that logged in, with when they last did.
    known: Arc<Mutex<Known>>,
    /// Where they are kept, if anywhere.
    store: Option<DeviceStore>,
}

/// Where known devices are kept: this host's file, written through the group commit, or the
/// store shared by several hosts, written through an outbox (kept while it is away) and read
/// back every few seconds for what the other hosts learnt.
#[derive(Debug)]
enum DeviceStore {
    File(GroupCommit<Writer<KnownDevices>>),
    Shared {
        writes: Outbox<Change>,
        _refresh: tokio::task::JoinHandle<()>,
    },
}

/// How often the other hosts' sightings are read from a shared store.
const REFRESH: Duration = Duration::from_secs(2);

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
    /// A known device (login, client network), by its own failures.
    Device(String, IpAddr),
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
            known: Arc::new(Mutex::new(Known::default())),
            store: None,
        }
    }

    /// Keeps the known devices in the file at `path`: those seen in the last 30 days are
    /// read now, and every change is written through the group commit. Returns how many were
    /// read.
    pub fn keep_known_in(&mut self, path: &Path) -> state::Result<usize> {
        let mut file = KnownDevices::open(path)?;
        let now = state::clock::unix_now();
        let rows = file.load(now - KNOWN_FOR, MAX_KNOWN)?;
        let n = rows.len();
        {
            let mut known = lock(&self.known);
            // Oldest first, so the per-login bound keeps each login's newest.
            for (login, net, at) in rows.into_iter().rev() {
                if let Ok(net) = net.parse::<IpAddr>() {
                    let (_, gone) = known.insert(&login, ip_key(net), at);
                    let forget: Vec<Change> = gone
                        .into_iter()
                        .map(|(l, n)| Change::Forget(l, n.to_string()))
                        .collect();
                    if !forget.is_empty() {
                        file.apply(&forget)?;
                    }
                }
            }
        }
        self.store = Some(DeviceStore::File(GroupCommit::new(Writer(file), 256)));
        Ok(n)
    }

    /// Keeps the known devices in the store several hosts share: those seen in the last 30
    /// days are read now (if the store answers), the other hosts' new sightings every few
    /// seconds, and every change is queued for it. Returns how many were read. Must run
    /// inside a tokio runtime.
    pub async fn keep_known_in_store(&mut self, pg: Arc<Pg>) -> usize {
        let store = PgKnownDevices::new(pg);
        let now = state::clock::unix_now();
        let rows = match store.load(now - KNOWN_FOR, MAX_KNOWN).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "known devices not read from the store; reading them again later");
                Vec::new()
            }
        };
        let n = rows.len();
        learn(&self.known, rows);
        let writes = {
            let store = store.clone();
            Outbox::start(MAX_KNOWN, move |batch| {
                let store = store.clone();
                async move { store.apply(batch).await }
            })
        };
        let refresh = tokio::spawn({
            let known = Arc::clone(&self.known);
            async move {
                let mut since = now - KNOWN_FOR;
                loop {
                    tokio::time::sleep(REFRESH).await;
                    // A little overlap: a sighting committed just before the last read.
                    let from = state::clock::unix_now() - 60;
                    match store.load(since, MAX_KNOWN).await {
                        Ok(rows) => {
                            learn(&known, rows);
                            since = from;
                        }
                        Err(e) => tracing::debug!(error = %e, "known devices not refreshed"),
                    }
                }
            }
        });
        self.store = Some(DeviceStore::Shared {
            writes,
            _refresh: refresh,
        });
        n
    }

    fn write(&self, changes: impl IntoIterator<Item = Change>) {
        match &self.store {
            None => {}
            Some(DeviceStore::File(s)) => changes.into_iter().for_each(|c| s.send(c)),
            Some(DeviceStore::Shared { writes, .. }) => {
                changes.into_iter().for_each(|c| writes.send(c));
            }
        }
    }

    fn block_key(b: &Blocked) -> String {
        match b {
            Blocked::Ip(ip) => format!("ip {ip}"),
            Blocked::Login(l) => format!("login {l}"),
            Blocked::ProxiedLogin(l) => format!("proxied {l}"),
            Blocked::Device(l, ip) => format!("device {ip} {l}"),
        }
    }

    fn is_proxy(&self, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| any_contains(&self.proxies, ip))
    }

    /// Is `ip`'s network a known device of `login` (not on a proxy's address)?
    fn known_net(&self, ip: Option<IpAddr>, login: &str) -> Option<IpAddr> {
        let net = ip.filter(|_| !self.is_proxy(ip)).map(ip_key)?;
        let now = state::clock::unix_now();
        lock(&self.known)
            .seen_at(login, net)
            .filter(|at| now - at < KNOWN_FOR)
            .map(|_| net)
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
        if let Some(net) = self.known_net(ip, login) {
            // A known device answers only for its own failures.
            let b = Blocked::Device(login.to_owned(), net);
            return is_blocked(&b).then_some(b);
        }
        if let Some(ip) = ip {
            let b = Blocked::Ip(ip_key(ip));
            if is_blocked(&b) {
                return Some(b);
            }
        }
        let b = Blocked::Login(login.to_owned());
        is_blocked(&b).then_some(b)
    }

    /// Remembers that `login` logged in from `ip`'s network, so strangers' failures never
    /// keep it out from there.
    pub fn succeeded(&self, ip: Option<IpAddr>, login: &str) {
        let Some(ip) = ip.filter(|_| !self.is_proxy(ip)) else {
            return;
        };
        let net = ip_key(ip);
        let now = state::clock::unix_now();
        let (write, gone) = lock(&self.known).insert(login, net, now);
        if write || !gone.is_empty() {
            let seen = write.then(|| Change::Seen(login.to_owned(), net.to_string(), now));
            let forget = gone
                .into_iter()
                .map(|(l, n)| Change::Forget(l, n.to_string()));
            self.write(seen.into_iter().chain(forget));
        }
    }

    /// Counts a failure; returns what it pushed over the limit, if anything (to log once).
    pub fn failed(&self, ip: Option<IpAddr>, login: &str) -> Vec<Blocked> {
        let mut newly = Vec::new();
        let over = |limiter: &Option<DefaultKeyedRateLimiter<String>>, key: String| {
            limiter.as_ref().is_some_and(|l| l.check_key(&key).is_err())
        };
        if let Some(net) = self.known_net(ip, login) {
            // The owner's own device mistyping, or someone on its network: only that pair.
            if over(&self.by_login, format!("k {net} {login}")) {
                newly.push(Blocked::Device(login.to_owned(), net));
            }
        } else if self.is_proxy(ip) {
            if over(&self.by_login, format!("p {login}")) {
                newly.push(Blocked::ProxiedLogin(login.to_owned()));
            }
        } else {
            if let (Some(l), Some(ip)) = (&self.by_ip, ip)
                && l.check_key(&ip_key(ip)).is_err()
            {
                newly.push(Blocked::Ip(ip_key(ip)));
            }
            if over(&self.by_login, format!("d {login}")) {
                newly.push(Blocked::Login(login.to_owned()));
            }
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
        let before = state::clock::unix_now() - KNOWN_FOR;
        lock(&self.known).expire(before);
        self.write([Change::ExpireBefore(before)]);
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

    #[test]
    fn known_devices_survive_a_restart_and_answer_only_for_their_own_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authd/known-devices.sqlite");
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let mut b = Brake::new(3, 5, Duration::from_secs(60), Vec::new());
        assert_eq!(b.keep_known_in(&path).unwrap(), 0);
        b.succeeded(ip("198.51.100.20"), "alice");
        b.succeeded(ip("2001:db8:1:2::7"), "alice");
        drop(b);
        // After a restart: strangers brake alice and her devices' networks; both devices
        // still get in.
        let mut b = Brake::new(3, 5, Duration::from_secs(60), Vec::new());
        assert_eq!(b.keep_known_in(&path).unwrap(), 2);
        for i in 0..6 {
            b.failed(ip(&format!("203.0.113.{i}")), "alice");
        }
        for _ in 0..4 {
            b.failed(ip("198.51.100.20"), "mallory");
        }
        assert_eq!(
            b.check(ip("203.0.113.99"), "alice"),
            Some(Blocked::Login("alice".into()))
        );
        assert_eq!(
            b.check(ip("198.51.100.20"), "bob"),
            Some(Blocked::Ip(ip("198.51.100.20").unwrap()))
        );
        assert_eq!(b.check(ip("198.51.100.20"), "alice"), None, "her laptop");
        assert_eq!(
            b.check(ip("2001:db8:1:2::99"), "alice"),
            None,
            "her phone's /64"
        );
        // A known device's own failures brake that device only.
        for _ in 0..6 {
            b.failed(ip("2001:db8:1:2::7"), "alice");
        }
        assert!(matches!(
            b.check(ip("2001:db8:1:2::7"), "alice"),
            Some(Blocked::Device(..))
        ));
        assert_eq!(b.check(ip("198.51.100.20"), "alice"), None);
    }

    #[test]
    fn a_full_table_drops_its_oldest_hundredth_and_a_login_its_oldest_network() {
        let mut k = Known::default();
        let net = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        // The owner's phone first, seen again at the very end.
        k.insert("owner@x", net(0), 1);
        for i in 1..=MAX_KNOWN {
            let i = u32::try_from(i).unwrap();
            k.insert(&format!("u{i}@x"), net(i), 1 + i64::from(i));
            if i == 100 {
                k.insert("owner@x", net(0), 10_000_000);
            }
        }
        assert!(
            k.count <= MAX_KNOWN && k.count > MAX_KNOWN - MAX_KNOWN / 100 - 2,
            "{}",
            k.count
        );
        assert_eq!(
            k.seen_at("owner@x", net(0)),
            Some(10_000_000),
            "never all at once"
        );
        assert_eq!(k.seen_at("u1@x", net(1)), None, "the oldest went");
        let last = u32::try_from(MAX_KNOWN).unwrap();
        assert!(k.seen_at(&format!("u{last}@x"), net(last)).is_some());
        // One login with more networks than it may keep: its oldest goes.
        let mut k = Known::default();
        for i in 0..40u32 {
            let (_, gone) = k.insert("busy@x", net(i), i64::from(i));
            assert_eq!(gone.len(), usize::from(i >= 32), "{i}");
        }
        assert_eq!(k.by_login["busy@x"].len(), MAX_PER_LOGIN);
        assert_eq!(k.seen_at("busy@x", net(7)), None);
        assert_eq!(k.seen_at("busy@x", net(39)), Some(39));
    }
}
