//! `/etc/miab/sidecars.toml`: one file for every daemon.
//!
//! The top level holds what the daemons share: the storage root, the box's host name, the
//! recipient delimiter, the DB busy timeout and `[dns]`. Each daemon's section is declared,
//! typed and validated by that daemon's own crate (a [`Section`]), and read from the same text
//! when the daemon starts, so an error keeps its file and line. The listener settings every
//! section has (`listen`, `socket_mode`, ... see [`Server`]) are taken out here.
//!
//! Every field has a default, so no file at all is a valid configuration. Unknown keys and
//! sections are an error, so a typo is reported instead of silently ignored.

use crate::listen::{ListenAddr, UnixOptions};
use crate::serve::Limits;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Where the file is looked for when neither `--config` nor `MIAB_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/miab/sidecars.toml";

/// The shared part of the file, and the file itself for the daemons' sections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Mail-in-a-Box's `STORAGE_ROOT`; the user DB is `STORAGE_ROOT/mail/users.sqlite`.
    /// Default `/home/user-data`.
    pub storage_root: PathBuf,
    /// The box's `PRIMARY_HOSTNAME`. Default: MIAB's from `/etc/mailinabox.conf`, else the
    /// system host name.
    pub hostname: Option<String>,
    /// Postfix's `recipient_delimiter` (a set of characters; empty turns extensions off).
    /// Default `+`.
    pub recipient_delimiter: String,
    /// How long a DB reader waits for a writer's lock, in milliseconds. Default 5000.
    pub db_busy_timeout_ms: u64,
    /// `[dns]`: how the daemons reach DNS.
    pub dns: DnsConfig,
    /// `[store]`: a PostgreSQL server shared by several hosts, if any.
    pub store: StoreConfig,
    // The daemons' sections are only checked to be tables here; each daemon reads its own.
    lookup: Option<toml::Table>,
    policyd: Option<toml::Table>,
    authd: Option<toml::Table>,
    milter: Option<toml::Table>,
    #[serde(skip)]
    source: Option<Source>,
}

/// The file a configuration was read from.
#[derive(Clone)]
struct Source {
    path: PathBuf,
    text: String,
}

// The text may hold the store's password: a debug print names the file only.
impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// `[dns]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Recursive resolvers as `IP:PORT`. Default: the `nameserver` lines of
    /// `/etc/resolv.conf` (MIAB runs its own resolver on 127.0.0.1, which Spamhaus requires).
    pub nameservers: Vec<SocketAddr>,
    /// Milliseconds one block-list question or one whole SPF evaluation may take. Default 2000.
    pub timeout_ms: u64,
}

/// `[store]`: where the sidecars' state lives when several hosts share it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`: the greylist, the sending record and
    /// holds, known devices and app-password use live there, and the directory is read from
    /// there on every host that does not `publish`. Absent (the default): this host's own
    /// SQLite files, and MIAB's `users.sqlite`. Never logged.
    #[serde(deserialize_with = "empty_is_off")]
    pub url: Option<String>,
    /// This host holds MIAB's `users.sqlite` (the primary, whose control panel writes it):
    /// its daemons read the file itself, and miab-lookup mirrors every change into the store
    /// for the other hosts. Default false.
    pub publish: bool,
    /// The most one call to the store may take, connecting included, in milliseconds.
    /// Default 500.
    pub deadline_ms: u64,
    /// Failed calls in a row after which calls are not tried for `retry_after_ms`, so a dead
    /// server costs requests nothing. Default 3.
    pub failures_before_pause: u32,
    /// How long calls pause after that, in milliseconds; then one call tries again. Default
    /// 5000.
    pub retry_after_ms: u64,
    /// Connections per daemon at most. Default 16.
    pub connections: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            publish: false,
            deadline_ms: 500,
            failures_before_pause: 3,
            retry_after_ms: 5000,
            connections: 16,
        }
    }
}

// The URL may hold a password: a debug print shows only whether there is one.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("publish", &self.publish)
            .field("deadline_ms", &self.deadline_ms)
            .field("failures_before_pause", &self.failures_before_pause)
            .field("retry_after_ms", &self.retry_after_ms)
            .field("connections", &self.connections)
            .finish()
    }
}

impl StoreConfig {
    /// The bounds calls to the store run under.
    pub fn limits(&self) -> state::pg::Limits {
        state::pg::Limits {
            deadline: Duration::from_millis(self.deadline_ms.max(1)),
            failures: self.failures_before_pause.max(1),
            open_for: Duration::from_millis(self.retry_after_ms),
            connections: self.connections.max(1),
        }
    }

    /// The store's pool, its schema made or migrated now (or, if the server does not answer,
    /// in the background until it does); `None` without a `url`. A schema newer than this
    /// program is an error. Must run inside a tokio runtime.
    pub async fn connect(
        &self,
    ) -> Result<Option<std::sync::Arc<state::pg::Pg>>, state::pg::PgError> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let pg = std::sync::Arc::new(state::pg::Pg::new(url, self.limits())?);
        match pg.call(pg.migrate()).await {
            Ok(_) => {}
            Err(e @ state::pg::PgError::Newer { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(store = %pg.target(), error = %e, "store not reached at start; trying again");
                state::pg::keep_migrating(&pg);
            }
        }
        Ok(Some(pg))
    }

    /// Does this host read the directory from the store (a store, and not the publisher)?
    pub fn directory_from_store(&self) -> bool {
        self.url.is_some() && !self.publish
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout_ms: 2000,
        }
    }
}

impl DnsConfig {
    /// The per-query timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            storage_root: PathBuf::from("/home/user-data"),
            hostname: None,
            recipient_delimiter: "+".into(),
            db_busy_timeout_ms: 5000,
            dns: DnsConfig::default(),
            store: StoreConfig::default(),
            lookup: None,
            policyd: None,
            authd: None,
            milter: None,
            source: None,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The named file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has unknown, mistyped or invalid settings.
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.source = Some(Source {
            path: origin.to_owned(),
            text: text.to_owned(),
        });
        Ok(config)
    }

    /// Loads `explicit` (which must exist), else `MIAB_CONFIG`, else the default path if it
    /// exists, else the embedded defaults. `MIAB_STORAGE_ROOT` and `MIAB_HOSTNAME` override the file.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env_path = std::env::var_os("MIAB_CONFIG").map(PathBuf::from);
        let chosen = explicit.map(Path::to_owned).or(env_path);
        let mut config = match chosen {
            Some(p) => Self::read(&p)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::read(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => Config::default(),
        };
        if let Some(root) = std::env::var_os("MIAB_STORAGE_ROOT") {
            config.storage_root = PathBuf::from(root);
        }
        // As miabctl and MIAB's own scripts take it.
        if let Ok(host) = std::env::var("MIAB_HOSTNAME")
            && !host.is_empty()
        {
            config.hostname = Some(host);
        }
        Ok(config)
    }

    fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// The path errors name: the file, or `<embedded defaults>`.
    pub fn origin(&self) -> PathBuf {
        self.source
            .as_ref()
            .map_or_else(|| PathBuf::from("<embedded defaults>"), |s| s.path.clone())
    }

    /// Reads, checks and completes a daemon's section; an error names the file and the
    /// setting (with its line when the file has it).
    pub fn section<S: Section>(&self) -> Result<Loaded<S>, ConfigError> {
        let parse = |message: String| ConfigError::Parse {
            path: self.origin(),
            message,
        };
        let mut loaded = match &self.source {
            None => None,
            Some(src) => {
                let de = toml::Deserializer::parse(&src.text).map_err(|e| parse(e.to_string()))?;
                PickSection::<S>(PhantomData)
                    .deserialize(de)
                    .map_err(|e| parse(e.to_string()))?
            }
        }
        .unwrap_or_else(|| Loaded {
            server: S::server_defaults(),
            settings: S::default(),
            server_keys: Vec::new(),
        });
        loaded
            .settings
            .complete(self, &loaded.server)
            .map_err(|m| parse(format!("[{}] {m}", S::NAME)))?;
        Ok(loaded)
    }

    /// The box's host name (`PRIMARY_HOSTNAME`), by the rule every binary shares
    /// (`crate::boxconf`): this file's `hostname`, else `/etc/mailinabox.conf`, else the
    /// system's name.
    pub fn box_hostname(&self) -> String {
        crate::boxconf::primary_hostname(self.hostname.as_deref())
            .unwrap_or_else(|| "localhost".into())
    }

    /// Where every file lives: MIAB's layout under the storage root, with the files the
    /// sections move.
    pub fn layout(&self) -> crate::Layout {
        let path = |section: &Option<toml::Table>, keys: &[&str]| -> Option<PathBuf> {
            let mut v = section.as_ref()?.get(keys[0])?;
            for k in &keys[1..] {
                v = v.as_table()?.get(*k)?;
            }
            v.as_str().map(PathBuf::from)
        };
        crate::Layout::new(
            &self.storage_root,
            crate::layout::Overrides {
                greylist_db: path(&self.policyd, &["greylist", "db"]),
                sending_db: path(&self.policyd, &["containment", "db"]),
                dkim_key: path(&self.milter, &["key_file"]),
                dkim_ed25519_key: path(&self.milter, &["ed25519_key_file"]),
            },
        )
    }

    /// Each daemon's decision journal, as its section's `journal` names it (sections that
    /// keep none are left out), in the order lookup, policyd, authd, milter.
    pub fn journals(&self) -> Vec<(&'static str, PathBuf)> {
        self.daemon_setting("journal")
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(d, v)| (d, PathBuf::from(v)))
            .collect()
    }

    /// Each daemon's `metrics_listen`, where its section sets one, in the same order.
    pub fn metrics_endpoints(&self) -> Vec<(&'static str, ListenAddr)> {
        self.daemon_setting("metrics_listen")
            .into_iter()
            .filter_map(|(d, v)| Some((d, v.parse().ok()?)))
            .collect()
    }

    /// A string setting of each daemon's section, where the file has it.
    fn daemon_setting(&self, key: &str) -> Vec<(&'static str, String)> {
        [
            ("lookup", &self.lookup),
            ("policyd", &self.policyd),
            ("authd", &self.authd),
            ("milter", &self.milter),
        ]
        .into_iter()
        .filter_map(|(d, t)| Some((d, t.as_ref()?.get(key)?.as_str()?.to_owned())))
        .collect()
    }

    /// The user DB: `STORAGE_ROOT/mail/users.sqlite`.
    pub fn db_path(&self) -> PathBuf {
        self.layout().users_db()
    }

    /// The DB busy timeout.
    pub fn db_busy_timeout(&self) -> Duration {
        Duration::from_millis(self.db_busy_timeout_ms)
    }
}

/// A daemon's section of the file: its own settings, typed. The listener settings are not
/// fields of it; [`Config::section`] takes them out into a [`Server`].
pub trait Section: DeserializeOwned + Default {
    /// The section's name in the file.
    const NAME: &'static str;

    /// The listener settings when the file says nothing.
    fn server_defaults() -> Server;

    /// Checks what one field alone cannot, and fills defaults that depend on the shared
    /// settings (paths below the storage root). The error names the setting.
    fn complete(&mut self, _shared: &Config, _server: &Server) -> Result<(), String> {
        Ok(())
    }

    /// The sockets the daemon serves besides [`Server::listen`], each named by its setting.
    fn more_endpoints(&self, _server: &Server) -> Vec<Endpoint> {
        Vec::new()
    }

    /// Settings still accepted, so an older file loads, but no longer read (each draws a
    /// warning at start). Includes listener settings this daemon has no use for.
    fn ignored(&self, _server_keys: &[&'static str]) -> Vec<&'static str> {
        Vec::new()
    }
}

/// The listener settings every section has: `listen`, `metrics_listen`, `socket_mode`,
/// `socket_group`, `max_connections`, `io_timeout_secs`, `idle_timeout_secs`,
/// `drain_timeout_secs`; and the decision journal's `journal` and `journal_days`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Where to listen, in Postfix notation.
    pub listen: ListenAddr,
    /// A UNIX socket's mode (octal text in the file, `"0660"`) and group (default: the
    /// daemon's group).
    pub unix: UnixOptions,
    /// Connections at once, and the three timeouts (in seconds in the file).
    pub limits: Limits,
    /// Where `GET /metrics` is served (`metrics_listen`, Postfix notation); `None` (or `""`
    /// in the file) serves none.
    pub metrics_listen: Option<ListenAddr>,
    /// The decision journal (`journal`, `journal_days`).
    pub journal: JournalSettings,
}

/// Where a daemon keeps its decision journal, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSettings {
    /// The journal's SQLite file (`journal`); `None` (or `""` in the file) keeps none.
    pub path: Option<PathBuf>,
    /// Days an entry is kept (`journal_days`). Default 7.
    pub days: u32,
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings {
            path: None,
            days: 7,
        }
    }
}

impl JournalSettings {
    /// How long an entry is kept.
    pub fn keep(&self) -> Duration {
        Duration::from_secs(u64::from(self.days.max(1)) * 86_400)
    }
}

/// A section as read: listener settings and the daemon's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<S> {
    pub server: Server,
    pub settings: S,
    /// The listener settings the file named, for [`Section::ignored`].
    pub server_keys: Vec<&'static str>,
}

impl<S: Section> Loaded<S> {
    /// Every socket the daemon serves, the main one first.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut all = vec![Endpoint {
            setting: "listen",
            addr: self.server.listen.clone(),
            unix: self.server.unix.clone(),
            create_parent: false,
        }];
        all.extend(self.settings.more_endpoints(&self.server));
        if let Some(addr) = &self.server.metrics_listen {
            all.push(Endpoint {
                setting: "metrics_listen",
                addr: addr.clone(),
                unix: self.server.unix.clone(),
                create_parent: true,
            });
        }
        all
    }
}

/// One socket a daemon serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The setting it comes from, for the "ready" line and errors.
    pub setting: &'static str,
    pub addr: ListenAddr,
    pub unix: UnixOptions,
    /// Make a missing parent directory of a UNIX socket (one systemd's `RuntimeDirectory=`
    /// makes, when the daemon is started by hand).
    pub create_parent: bool,
}

/// The names of [`Server`]'s settings.
const SERVER_KEYS: [&str; 10] = [
    "listen",
    "metrics_listen",
    "journal",
    "journal_days",
    "socket_mode",
    "socket_group",
    "max_connections",
    "io_timeout_secs",
    "idle_timeout_secs",
    "drain_timeout_secs",
];

/// Deserialises the whole file, keeping only section `S::NAME`.
struct PickSection<S>(PhantomData<S>);

impl<'de, S: Section> DeserializeSeed<'de> for PickSection<S> {
    type Value = Option<Loaded<S>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: Section> Visitor<'de> for PickSection<S> {
    type Value = Option<Loaded<S>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == S::NAME {
                found = Some(map.next_value_seed(SectionSeed::<S>(PhantomData))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Deserialises one section: listener settings into a [`Server`], the rest into `S`.
struct SectionSeed<S>(PhantomData<S>);

impl<'de, S: Section> DeserializeSeed<'de> for SectionSeed<S> {
    type Value = Loaded<S>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: Section> Visitor<'de> for SectionSeed<S> {
    type Value = Loaded<S>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the [{}] table", S::NAME)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let mut rest = ServerKeys {
            inner: map,
            server: S::server_defaults(),
            seen: Vec::new(),
            own: &[],
        };
        let settings = S::deserialize(SectionDe(&mut rest))?;
        Ok(Loaded {
            server: rest.server,
            settings,
            server_keys: rest.seen,
        })
    }
}

/// Hands a section's entries to the daemon's struct, learning its field names on the way so
/// an unknown key is named against both lists.
struct SectionDe<'a, A>(&'a mut ServerKeys<A>);

impl<'de, A: MapAccess<'de>> de::Deserializer<'de> for SectionDe<'_, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(self.0)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.own = fields;
        visitor.visit_map(self.0)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// A section's entries with the listener settings taken out on the way.
struct ServerKeys<A> {
    inner: A,
    server: Server,
    seen: Vec<&'static str>,
    /// The daemon's own field names.
    own: &'static [&'static str],
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for ServerKeys<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        loop {
            let Some(key) = self.inner.next_key::<String>()? else {
                return Ok(None);
            };
            let Some(&name) = SERVER_KEYS.iter().find(|k| **k == key) else {
                if !self.own.is_empty() && !self.own.contains(&key.as_str()) {
                    let mut known: Vec<&str> = SERVER_KEYS.to_vec();
                    known.extend(self.own);
                    return Err(de::Error::custom(format!(
                        "unknown setting `{key}`; known: {}",
                        known.join(", ")
                    )));
                }
                return seed
                    .deserialize(de::value::StringDeserializer::new(key))
                    .map(Some);
            };
            let s = &mut self.server;
            let secs = |v: u64| Duration::from_secs(v);
            match name {
                "listen" => s.listen = self.inner.next_value()?,
                "metrics_listen" => {
                    let text: String = self.inner.next_value()?;
                    s.metrics_listen = if text.is_empty() {
                        None
                    } else {
                        Some(text.parse().map_err(de::Error::custom)?)
                    };
                }
                "journal" => {
                    let text: String = self.inner.next_value()?;
                    s.journal.path = (!text.is_empty()).then(|| PathBuf::from(text));
                }
                "journal_days" => {
                    s.journal.days = self.inner.next_value()?;
                    if s.journal.days == 0 {
                        return Err(de::Error::custom("journal_days must be at least 1"));
                    }
                }
                "socket_mode" => s.unix.mode = self.inner.next_value::<Mode>()?.0,
                "socket_group" => s.unix.group = Some(self.inner.next_value()?),
                "max_connections" => s.limits.max_connections = self.inner.next_value()?,
                "io_timeout_secs" => s.limits.io_timeout = secs(self.inner.next_value()?),
                "idle_timeout_secs" => s.limits.idle_timeout = secs(self.inner.next_value()?),
                _ => s.limits.drain_timeout = secs(self.inner.next_value()?),
            }
            self.seen.push(name);
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.next_value_seed(seed)
    }
}

/// A UNIX socket mode, written as octal text (`"0660"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::listen::parse_mode(&s)
            .map(Mode)
            .map_err(de::Error::custom)
    }
}

/// For `#[serde(deserialize_with)]`: a setting where `""` means off.
pub fn empty_is_off<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: de::Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests;
