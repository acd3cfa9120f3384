//! PostgreSQL, for boxes with several hosts: the connection pool every store on a host shares,
//! the schema with its numbered migrations, and what keeps a dead or slow server from holding
//! up mail.
//!
//! - Every call has a short deadline ([`Pg::call`]); past it the call fails, whatever the
//!   server is doing.
//! - A circuit breaker: after `failures` calls in a row fail, calls fail at once for `open_for`,
//!   then one call at a time tries again; a success closes it. So a dead server costs each
//!   request nothing, not a deadline each.
//! - A failed call drops the idle connections, so a server that went away (a failover to a new
//!   primary at the same address) is reached through new ones.
//! - The schema is created and migrated here, under an advisory lock so hosts starting together
//!   do not race, and a schema newer than this program is refused.
//!
//! What each check does when a call fails is the check's business (greylisting fails open,
//! containment closed).

pub mod device_store;
pub mod greylist;
pub mod sending;

use std::future::Future;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use deadpool_postgres::Object as Client;
pub use tokio_postgres;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgError {
    /// The breaker is open: recent calls failed, so this one was not tried.
    #[error("PostgreSQL unavailable (recent calls failed; not tried)")]
    Unavailable,
    /// No answer within the deadline.
    #[error("PostgreSQL: no answer within {0:?}")]
    Timeout(Duration),
    /// The server or the connection failed.
    #[error("PostgreSQL: {0}")]
    Failed(String),
    /// The schema is newer than this program.
    #[error("PostgreSQL schema {found} is newer than this program ({known})")]
    Newer { found: i32, known: i32 },
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's own words, not only "db error".
        PgError::Failed(match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        })
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        PgError::Failed(e.to_string())
    }
}

/// How calls are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most one call may take, connecting included.
    pub deadline: Duration,
    /// Failed calls in a row that open the breaker.
    pub failures: u32,
    /// How long it stays open before one call may try again.
    pub open_for: Duration,
    /// Connections per host and daemon at most.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(500),
            failures: 3,
            open_for: Duration::from_secs(5),
            connections: 16,
        }
    }
}

/// The pool and its breaker. One per daemon; cheap to share behind an `Arc`.
pub struct Pg {
    pool: deadpool_postgres::Pool,
    limits: Limits,
    breaker: Breaker,
    /// The server and database, for log lines (never the password).
    target: String,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg")
            .field("target", &self.target)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Pg {
    /// A pool for `url` (`postgresql://user:password@host:port/db` or key=value form).
    /// Connects lazily: a server that is down at start is only a failed call.
    pub fn new(url: &str, limits: Limits) -> Result<Pg, PgError> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| PgError::Failed(format!("store url: {e}")))?;
        config.connect_timeout(limits.deadline);
        config.application_name("miab-sidecars");
        let target = describe(&config);
        let manager = deadpool_postgres::Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(limits.connections.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(limits.deadline))
            .create_timeout(Some(limits.deadline))
            .recycle_timeout(Some(limits.deadline))
            .build()
            .map_err(|e| PgError::Failed(e.to_string()))?;
        Ok(Pg {
            pool,
            limits,
            breaker: Breaker::default(),
            target,
        })
    }

    /// `host:port/db`, for log lines.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The bounds calls run under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A pooled connection (inside [`Pg::call`]).
    pub async fn client(&self) -> Result<Client, PgError> {
        Ok(self.pool.get().await?)
    }

    /// Runs `f` under the deadline and the breaker.
    pub async fn call<T>(&self, f: impl Future<Output = Result<T, PgError>>) -> Result<T, PgError> {
        if !self.breaker.allow(self.limits.open_for) {
            return Err(PgError::Unavailable);
        }
        let r = match tokio::time::timeout(self.limits.deadline, f).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Timeout(self.limits.deadline)),
        };
        match &r {
            Ok(_) | Err(PgError::Newer { .. }) => self.breaker.succeeded(),
            Err(e) => {
                // A connection to a server that went away is not used again.
                self.pool.retain(|_, _| false);
                if self.breaker.failed(self.limits.failures) {
                    tracing::warn!(store = %self.target, error = %e,
                        "PostgreSQL calls failing; not trying for a while");
                }
            }
        }
        r
    }

    /// Is the breaker open now (for status lines and tests)?
    pub fn is_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Creates or migrates the schema, under an advisory lock. Refuses a schema newer than
    /// this program.
    pub async fn migrate(&self) -> Result<i32, PgError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS miab_schema (
                 id integer PRIMARY KEY CHECK (id = 1),
                 version integer NOT NULL)",
        )
        .await?;
        let found: i32 = tx
            .query_opt("SELECT version FROM miab_schema WHERE id = 1", &[])
            .await?
            .map_or(0, |r| r.get(0));
        let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        if found > known {
            return Err(PgError::Newer { found, known });
        }
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(found).unwrap_or(0))
        {
            tx.batch_execute(sql).await?;
            let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO miab_schema (id, version) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                &[&v],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(known)
    }
}

/// Makes or migrates the schema now, and again every few seconds until the server answers (a
/// host may start while the store is away). A newer schema is logged and left alone.
pub fn keep_migrating(pg: &std::sync::Arc<Pg>) {
    let pg = std::sync::Arc::clone(pg);
    tokio::spawn(async move {
        loop {
            match pg.call(pg.migrate()).await {
                Ok(v) => {
                    tracing::info!(store = %pg.target(), schema = v, "store schema ready");
                    return;
                }
                Err(e @ PgError::Newer { .. }) => {
                    tracing::error!(store = %pg.target(), error = %e, "store left alone");
                    return;
                }
                Err(e) => {
                    tracing::warn!(store = %pg.target(), error = %e, "store not reached; trying again");
                    tokio::time::sleep(pg.limits.open_for.max(Duration::from_secs(1))).await;
                }
            }
        }
    });
}

/// `host:port/db` of a configuration.
fn describe(c: &tokio_postgres::Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", c.get_dbname().unwrap_or_default())
}

/// The advisory lock key migrations run under ("miab" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d69_6162;

/// The schema, one entry per version.
const MIGRATIONS: [&str; 1] = [
    // 1: the directory's mirror, the greylist, the sending record and holds, known devices,
    // app-password use.
    "
CREATE TABLE directory_version (
    id integer PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now());
INSERT INTO directory_version (id, version) VALUES (1, 0);
CREATE TABLE directory_users (id text, email text, password text, privileges text, quota text);
CREATE TABLE directory_aliases (source text, destination text, permitted_senders text);
CREATE TABLE directory_auto_aliases (source text, destination text);
CREATE TABLE directory_app_required (user_id text);
CREATE TABLE directory_suspended (user_id text);
CREATE TABLE directory_app_passwords (id text, user_id text, hash text, scopes text);
CREATE TABLE greylist_triplets (
    key text PRIMARY KEY,
    first_seen bigint NOT NULL,
    last_seen bigint NOT NULL,
    confirmed boolean NOT NULL);
CREATE INDEX greylist_triplets_last_seen ON greylist_triplets (last_seen);
CREATE TABLE greylist_clients (
    addr text PRIMARY KEY,
    count integer NOT NULL,
    last_seen bigint NOT NULL);
CREATE INDEX greylist_clients_last_seen ON greylist_clients (last_seen);
CREATE TABLE sending_hours (
    login text NOT NULL,
    hour bigint NOT NULL,
    messages bigint NOT NULL DEFAULT 0,
    recipients bigint NOT NULL DEFAULT 0,
    new_recipients bigint NOT NULL DEFAULT 0,
    held boolean NOT NULL DEFAULT false,
    PRIMARY KEY (login, hour));
CREATE TABLE sending_known (
    login text NOT NULL,
    recipient text NOT NULL,
    last_seen bigint NOT NULL,
    PRIMARY KEY (login, recipient));
CREATE TABLE sending_logins (
    login text PRIMARY KEY,
    held_since bigint,
    held_reason text,
    held_messages bigint NOT NULL DEFAULT 0,
    held_recipients bigint NOT NULL DEFAULT 0,
    held_new_recipients bigint NOT NULL DEFAULT 0,
    notified_at bigint,
    released_at bigint,
    released_messages bigint NOT NULL DEFAULT 0,
    released_recipients bigint NOT NULL DEFAULT 0,
    released_new_recipients bigint NOT NULL DEFAULT 0);
CREATE TABLE sending_rule (
    id integer PRIMARY KEY CHECK (id = 1),
    floor_messages bigint NOT NULL,
    floor_recipients bigint NOT NULL,
    floor_new_recipients bigint NOT NULL,
    factor bigint NOT NULL,
    max_daily_growth bigint NOT NULL,
    history_days bigint NOT NULL);
CREATE TABLE known_devices (
    login text NOT NULL,
    network text NOT NULL,
    last_seen bigint NOT NULL,
    PRIMARY KEY (login, network));
CREATE INDEX known_devices_last_seen ON known_devices (last_seen);
CREATE TABLE app_password_use (id bigint PRIMARY KEY, last_used_at bigint NOT NULL);
",
];

/// Consecutive failures, and since when calls are not tried.
#[derive(Debug, Default)]
struct Breaker {
    failures: AtomicU64,
    opened: Mutex<Option<Instant>>,
}

impl Breaker {
    /// May a call go out now? While open, one call per `open_for` is let through to probe.
    fn allow(&self, open_for: Duration) -> bool {
        let mut opened = self
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *opened {
            None => true,
            Some(at) if at.elapsed() >= open_for => {
                // This call probes; the others keep failing fast until it is back.
                *opened = Some(Instant::now());
                true
            }
            Some(_) => false,
        }
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        let mut opened = self
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if opened.take().is_some() {
            tracing::info!("PostgreSQL answers again");
        }
    }

    /// Counts a failure; true if it opened the breaker.
    fn failed(&self, threshold: u32) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut opened = self
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if n >= u64::from(threshold.max(1)) {
            let newly = opened.is_none();
            *opened = Some(Instant::now());
            return newly;
        }
        false
    }

    fn is_open(&self) -> bool {
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_probes_and_closes() {
        let b = Breaker::default();
        let open_for = Duration::from_millis(50);
        assert!(b.allow(open_for));
        assert!(!b.failed(3));
        assert!(!b.failed(3));
        assert!(b.failed(3), "the third failure opens it");
        assert!(!b.allow(open_for) && b.is_open());
        std::thread::sleep(open_for);
        assert!(b.allow(open_for), "one probe");
        assert!(!b.allow(open_for), "only one");
        b.succeeded();
        assert!(b.allow(open_for) && !b.is_open());
    }

    #[tokio::test]
    async fn a_dead_server_costs_one_deadline_then_nothing() {
        // Nothing listens on port 9 of loopback.
        let pg = Pg::new(
            "postgresql://nobody@127.0.0.1:9/none",
            Limits {
                deadline: Duration::from_millis(200),
                failures: 2,
                open_for: Duration::from_secs(60),
                connections: 2,
            },
        )
        .unwrap();
        for _ in 0..2 {
            let r = pg.call(async { pg.client().await.map(drop) }).await;
            assert!(
                matches!(r, Err(PgError::Failed(_) | PgError::Timeout(_))),
                "{r:?}"
            );
        }
        let r = pg.call(async { pg.client().await.map(drop) }).await;
        assert_eq!(r, Err(PgError::Unavailable), "not tried");
        assert_eq!(pg.target(), "127.0.0.1:9/none");
    }
}
