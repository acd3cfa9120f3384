//! The directory over PostgreSQL, for several hosts: the primary's [`Publisher`] mirrors MIAB's
//! `users.sqlite` into the store whenever the file changes, and every other host's
//! [`PgSource`] builds its snapshots from that mirror.
//!
//! A publication is one transaction: the rows are replaced, the version is bumped and a
//! `NOTIFY` goes out, so a reader sees all of a change or none of it. A reader listens for the
//! notification and checks the version every few seconds as the backstop (a missed
//! notification, a reconnect). It reads the new rows itself, in the background, and only then
//! moves its version on: while the store is away, the daemons keep answering from the last
//! snapshot they had.

use crate::{Snapshot, Source, SqliteSource, Version};
use state::pg::tokio_postgres::{self, AsyncMessage};
use state::pg::{Pg, PgError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use userdb::rows::RowSink;
use userdb::{Access, Error, Result, UserDb};

/// The channel publications are announced on.
const CHANNEL: &str = "miab_directory";
/// How often a reader checks the version without a notification.
const BACKSTOP: Duration = Duration::from_secs(5);
/// How often the publisher looks at the file (one `stat` and one small read).
const WATCH: Duration = Duration::from_millis(200);

/// The mirror's tables and the columns each holds, in `RowSink` order.
const TABLES: [(&str, &str); 6] = [
    ("directory_users", "id, email, password, privileges, quota"),
    (
        "directory_aliases",
        "source, destination, permitted_senders",
    ),
    ("directory_auto_aliases", "source, destination"),
    ("directory_app_required", "user_id"),
    ("directory_suspended", "user_id"),
    ("directory_app_passwords", "id, user_id, hash, scopes"),
];

/// Every row, column by column (what one `INSERT ... SELECT unnest(...)` per table takes).
#[derive(Debug, Default)]
struct Columns {
    tables: [Vec<Vec<Option<String>>>; 6],
}

impl Columns {
    fn push<const N: usize>(&mut self, table: usize, row: [Option<Box<str>>; N]) {
        let cols = &mut self.tables[table];
        if cols.is_empty() {
            cols.resize_with(N, Vec::new);
        }
        for (c, v) in cols.iter_mut().zip(row) {
            c.push(v.map(String::from));
        }
    }
}

impl RowSink for Columns {
    fn sizes(&mut self, _: usize, _: usize) {}
    fn user(&mut self, row: [Option<Box<str>>; 5]) {
        self.push(0, row);
    }
    fn alias(&mut self, row: [Option<Box<str>>; 3]) {
        self.push(1, row);
    }
    fn auto_alias(&mut self, row: [Option<Box<str>>; 2]) {
        self.push(2, row);
    }
    fn app_passwords_required(&mut self, row: [Option<Box<str>>; 1]) {
        self.push(3, row);
    }
    fn suspended(&mut self, row: [Option<Box<str>>; 1]) {
        self.push(4, row);
    }
    fn app_password(&mut self, row: [Option<Box<str>>; 4]) {
        self.push(5, row);
    }
}

fn store_error(e: PgError) -> Error {
    Error::Internal(format!("directory store: {e}"))
}

/// Writes one publication: every row replaced, the version bumped, readers notified.
async fn publish(pg: &Pg, cols: &Columns) -> std::result::Result<i64, PgError> {
    let mut c = pg.client().await?;
    let tx = c.transaction().await?;
    for (i, (table, columns)) in TABLES.iter().enumerate() {
        tx.execute(&format!("DELETE FROM {table}"), &[]).await?;
        let data = &cols.tables[i];
        if data.first().is_none_or(Vec::is_empty) {
            continue;
        }
        let n = columns.split(", ").count();
        let args: Vec<String> = (1..=n).map(|k| format!("${k}::text[]")).collect();
        let sql = format!(
            "INSERT INTO {table} ({columns}) SELECT * FROM unnest({})",
            args.join(", ")
        );
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = data
            .iter()
            .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        tx.execute(&sql, &params).await?;
    }
    let v: i64 = tx
        .query_one(
            "UPDATE directory_version SET version = version + 1, published_at = now()
             WHERE id = 1 RETURNING version",
            &[],
        )
        .await?
        .get(0);
    tx.execute(&format!("NOTIFY {CHANNEL}, '{v}'"), &[]).await?;
    tx.commit().await?;
    Ok(v)
}

/// The primary's mirror of `users.sqlite` into the store.
#[derive(Debug)]
pub struct Publisher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Publisher {
    /// Publishes the file at `path` now and after every change. A publication that fails (the
    /// store away) is tried again until it goes through. Must run inside a tokio runtime.
    pub fn start(path: &std::path::Path, busy_timeout: Duration, pg: Arc<Pg>) -> Result<Publisher> {
        let source = Arc::new(SqliteSource::open(path, busy_timeout)?);
        let path = path.to_owned();
        let task = tokio::spawn(async move {
            let mut published: Option<Version> = None;
            // Publications run under a longer deadline than requests: 100,000 users take a
            // while.
            let mut tick = tokio::time::interval(WATCH);
            loop {
                tick.tick().await;
                let Ok(now) = source.version() else {
                    continue;
                };
                if published == Some(now) {
                    continue;
                }
                let path = path.clone();
                let read = tokio::task::spawn_blocking(move || -> Result<Columns> {
                    let db = UserDb::open_with_timeout(&path, Access::ReadOnly, busy_timeout)?;
                    let mut cols = Columns::default();
                    db.read_rows(&mut cols)?;
                    Ok(cols)
                })
                .await;
                let cols = match read {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "user DB not read for publishing; trying again");
                        continue;
                    }
                    Err(_) => continue,
                };
                let started = Instant::now();
                match tokio::time::timeout(PUBLISH_DEADLINE, publish(&pg, &cols)).await {
                    Ok(Ok(v)) => {
                        published = Some(now);
                        tracing::info!(
                            version = v,
                            users = cols.tables[0].first().map_or(0, Vec::len),
                            ms = started.elapsed().as_millis(),
                            "user DB published to the store"
                        );
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "user DB not published; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(_) => {
                        tracing::warn!("user DB publication timed out; trying again");
                    }
                }
            }
        });
        Ok(Publisher { task })
    }
}

/// The most a publication may take.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(60);

/// Snapshots read from the store's mirror.
#[derive(Debug)]
pub struct PgSource {
    state: Mutex<Ready>,
    task: tokio::task::JoinHandle<()>,
    /// The connection that listens for publications (its client goes with it).
    listener: tokio::task::JoinHandle<()>,
}

/// The version the daemons see, and the snapshot read for it that nobody took yet.
#[derive(Debug)]
struct Ready {
    version: Version,
    snapshot: Option<Snapshot>,
}

impl Drop for PgSource {
    fn drop(&mut self) {
        self.task.abort();
        self.listener.abort();
    }
}

impl PgSource {
    /// Reads the mirror once now (the start fails if it cannot), then follows it. `url` is the
    /// store's, for the listening connection. The schema is the pool's owner's to make
    /// (`daemon::StoreConfig::connect`). Must run inside a tokio runtime.
    pub async fn start(pg: Arc<Pg>, url: &str) -> Result<Arc<PgSource>> {
        let (version, first) = read_mirror(&pg).await.map_err(store_error)?;
        let wake = Arc::new(Notify::new());
        let listener = listen(url.to_owned(), Arc::clone(&wake));
        let source = Arc::new_cyclic(|weak: &std::sync::Weak<PgSource>| {
            let weak = weak.clone();
            let task = tokio::spawn(async move {
                let mut current = version;
                loop {
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(BACKSTOP) => {}
                    }
                    let Some(me) = weak.upgrade() else {
                        return;
                    };
                    let Ok(v) = pg.call(published_version(&pg)).await else {
                        continue;
                    };
                    if v == current {
                        continue;
                    }
                    let started = Instant::now();
                    match read_mirror(&pg).await {
                        Ok((v, snap)) => {
                            current = v;
                            tracing::debug!(
                                version = v,
                                ms = started.elapsed().as_millis(),
                                "directory read from the store"
                            );
                            let mut r = me
                                .state
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            r.version = pg_version(v);
                            r.snapshot = Some(snap.with_version(pg_version(v)));
                        }
                        Err(e) => tracing::warn!(error = %e,
                            "directory not read from the store; answering from the last one"),
                    }
                }
            });
            PgSource {
                state: Mutex::new(Ready {
                    version: pg_version(version),
                    snapshot: Some(first.with_version(pg_version(version))),
                }),
                task,
                listener,
            }
        });
        Ok(source)
    }
}

fn pg_version(v: i64) -> Version {
    Version([0, 0, 3, v.cast_unsigned()])
}

impl Source for PgSource {
    fn version(&self) -> Result<Version> {
        Ok(self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .version)
    }

    fn load(&self) -> Result<Snapshot> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .snapshot
            .take()
            .ok_or_else(|| Error::Internal("no new directory read from the store".into()))
    }
}

async fn published_version(pg: &Pg) -> std::result::Result<i64, PgError> {
    let c = pg.client().await?;
    Ok(
        c.query_one("SELECT version FROM directory_version WHERE id = 1", &[])
            .await?
            .get(0),
    )
}

/// The mirror's version and a snapshot of it, read in one transaction. Reading 100,000 users
/// takes longer than a request's deadline, so this runs under its own.
async fn read_mirror(pg: &Pg) -> std::result::Result<(i64, Snapshot), PgError> {
    let read = async {
        let mut c = pg.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let v: i64 = tx
            .query_one("SELECT version FROM directory_version WHERE id = 1", &[])
            .await?
            .get(0);
        let mut snap = Snapshot::default();
        let count = |t: &str| format!("SELECT count(*) FROM {t}");
        let users: i64 = tx.query_one(&count(TABLES[0].0), &[]).await?.get(0);
        let aliases: i64 = tx.query_one(&count(TABLES[1].0), &[]).await?.get(0);
        snap.sizes(
            usize::try_from(users).unwrap_or(0),
            usize::try_from(aliases).unwrap_or(0),
        );
        for (i, (table, columns)) in TABLES.iter().enumerate() {
            let rows = tx
                .query(&format!("SELECT {columns} FROM {table}"), &[])
                .await?;
            for r in &rows {
                let col = |k: usize| r.get::<_, Option<String>>(k).map(String::into_boxed_str);
                match i {
                    0 => snap.user([col(0), col(1), col(2), col(3), col(4)]),
                    1 => snap.alias([col(0), col(1), col(2)]),
                    2 => snap.auto_alias([col(0), col(1)]),
                    3 => snap.app_passwords_required([col(0)]),
                    4 => snap.suspended([col(0)]),
                    _ => snap.app_password([col(0), col(1), col(2), col(3)]),
                }
            }
        }
        tx.commit().await?;
        snap.shrink();
        Ok((v, snap))
    };
    match tokio::time::timeout(PUBLISH_DEADLINE, read).await {
        Ok(r) => r,
        Err(_) => Err(PgError::Timeout(PUBLISH_DEADLINE)),
    }
}

/// A connection of its own that `LISTEN`s for publications and wakes the reader; it connects
/// again (every few seconds) whenever it is lost.
fn listen(url: String, wake: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((client, mut conn)) => {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    // Polling the connection drives it and yields its notifications.
                    let pump = tokio::spawn(async move {
                        while let Some(Ok(m)) =
                            std::future::poll_fn(|cx| conn.poll_message(cx)).await
                        {
                            if tx.send(m).is_err() {
                                break;
                            }
                        }
                    });
                    if client
                        .batch_execute(&format!("LISTEN {CHANNEL}"))
                        .await
                        .is_ok()
                    {
                        // Whatever was published while this was away.
                        wake.notify_one();
                        while let Some(m) = rx.recv().await {
                            if matches!(m, AsyncMessage::Notification(_)) {
                                wake.notify_one();
                            }
                        }
                    }
                    pump.abort();
                }
                Err(e) => tracing::debug!(error = %e, "directory listener not connected"),
            }
            tokio::time::sleep(BACKSTOP).await;
        }
    })
}

/// The directory this host's daemons answer from: MIAB's file at `db`, or the store's mirror
/// when `store` (the pool and its URL) is given because this host reads it from there.
pub async fn open_for_host(
    db: &std::path::Path,
    busy_timeout: Duration,
    store: Option<(Arc<Pg>, &str)>,
) -> Result<crate::Live> {
    match store {
        None => crate::Live::open(db, busy_timeout),
        Some((pg, url)) => crate::Live::new(PgSource::start(pg, url).await?),
    }
}
