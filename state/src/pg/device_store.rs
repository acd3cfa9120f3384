//! miab-authd's known devices and app-password use in PostgreSQL, and the outbox their writes
//! go through: nobody waits for those writes, so they are kept in memory (bounded) while the
//! server is away and written when it is back.

use super::{Pg, PgError};
use crate::known_devices::Change;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Writes per statement batch at most.
const BATCH: usize = 500;
/// How long a failed batch waits before it is tried again (the breaker paces the rest).
const RETRY: Duration = Duration::from_secs(1);

/// Writes nobody waits for, kept in memory (at most `cap`; past it the oldest go, with a log
/// line) until PostgreSQL takes them. Dropping it stops the writer.
#[derive(Debug)]
pub struct Outbox<J> {
    queue: Arc<Mutex<VecDeque<J>>>,
    wake: Arc<Notify>,
    cap: usize,
    task: tokio::task::JoinHandle<()>,
}

impl<J> Drop for Outbox<J> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<J: Send + 'static> Outbox<J> {
    /// Starts the writer: `write` takes a batch, in order. Must run inside a tokio runtime.
    pub fn start<F, Fut>(cap: usize, write: F) -> Outbox<J>
    where
        F: Fn(Vec<J>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), PgError>> + Send,
        J: Clone,
    {
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn({
            let (queue, wake) = (Arc::clone(&queue), Arc::clone(&wake));
            async move {
                loop {
                    let batch: Vec<J> = {
                        let mut q = queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let n = q.len().min(BATCH);
                        q.drain(..n).collect()
                    };
                    if batch.is_empty() {
                        wake.notified().await;
                        continue;
                    }
                    if let Err(e) = write(batch.clone()).await {
                        tracing::debug!(error = %e, kept = batch.len(), "kept for later");
                        {
                            let mut q = queue
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            for j in batch.into_iter().rev() {
                                q.push_front(j);
                            }
                        }
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        });
        Outbox {
            queue,
            wake,
            cap: cap.max(1),
            task,
        }
    }

    /// Queues a write.
    pub fn send(&self, job: J) {
        let mut q = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() >= self.cap {
            q.pop_front();
            tracing::warn!(
                cap = self.cap,
                "PostgreSQL away too long: the oldest queued write was dropped"
            );
        }
        q.push_back(job);
        drop(q);
        self.wake.notify_one();
    }

    /// Writes still queued.
    pub fn queued(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// Known devices in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgKnownDevices {
    pg: Arc<Pg>,
}

impl PgKnownDevices {
    pub fn new(pg: Arc<Pg>) -> PgKnownDevices {
        PgKnownDevices { pg }
    }

    /// The (login, network, last seen) seen at or after `since`, newest first, at most `limit`.
    pub async fn load(
        &self,
        since: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, PgError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.pg
            .call(async {
                let c = self.pg.client().await?;
                let rows = c
                    .query(
                        "SELECT login, network, last_seen FROM known_devices WHERE last_seen >= $1
                         ORDER BY last_seen DESC LIMIT $2",
                        &[&since, &limit],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect())
            })
            .await
    }

    /// Makes `changes`, in order, in one transaction.
    pub async fn apply(&self, changes: Vec<Change>) -> Result<(), PgError> {
        self.pg
            .call(async {
                let mut c = self.pg.client().await?;
                let tx = c.transaction().await?;
                for ch in &changes {
                    match ch {
                        Change::Seen(login, net, at) => {
                            tx.execute(
                                "INSERT INTO known_devices (login, network, last_seen)
                                 VALUES ($1, $2, $3)
                                 ON CONFLICT (login, network) DO UPDATE SET last_seen =
                                   GREATEST(known_devices.last_seen, excluded.last_seen)",
                                &[login, net, at],
                            )
                            .await?
                        }
                        Change::Forget(login, net) => {
                            tx.execute(
                                "DELETE FROM known_devices WHERE login = $1 AND network = $2",
                                &[login, net],
                            )
                            .await?
                        }
                        Change::ExpireBefore(before) => {
                            tx.execute("DELETE FROM known_devices WHERE last_seen < $1", &[before])
                                .await?
                        }
                    };
                }
                tx.commit().await?;
                Ok(())
            })
            .await
    }
}

/// App-password use in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgUsage {
    pg: Arc<Pg>,
}

impl PgUsage {
    pub fn new(pg: Arc<Pg>) -> PgUsage {
        PgUsage { pg }
    }

    /// Records each (id, when), keeping the latest.
    pub async fn record_all(&self, uses: Vec<(i64, i64)>) -> Result<(), PgError> {
        let (ids, at): (Vec<i64>, Vec<i64>) = uses.into_iter().unzip();
        self.pg
            .call(async {
                let c = self.pg.client().await?;
                c.execute(
                    "INSERT INTO app_password_use (id, last_used_at)
                     SELECT id, max(at) FROM unnest($1::bigint[], $2::bigint[]) AS u(id, at) GROUP BY id
                     ON CONFLICT (id) DO UPDATE
                     SET last_used_at = GREATEST(app_password_use.last_used_at, excluded.last_used_at)",
                    &[&ids, &at],
                )
                .await?;
                Ok(())
            })
            .await
    }

    /// Every recorded use.
    pub async fn read(&self) -> Result<std::collections::HashMap<i64, i64>, PgError> {
        self.pg
            .call(async {
                let c = self.pg.client().await?;
                let rows = c
                    .query("SELECT id, last_used_at FROM app_password_use", &[])
                    .await?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
            .await
    }
}
