//! Greylisting's decisions over its store: each request is decided by
//! [`super::rule::decide`] inside the store's transaction and answered only after the commit.
//! This host's SQLite file (`state::greylist`) is written through the group commit all the
//! sidecars' stores share; the store several hosts share (`state::pg::greylist`) takes one
//! transaction per request, under the triplet's lock. A background task runs one bounded
//! expiry round at a time, off the request path.

use super::rule::{Outcome, Timing, Writes, decide};
use state::commit::{Batch, CommitError, GroupCommit, WeakCommit};
use state::greylist::{Ages, Awl, Counts, GreylistStore, Lookup, SqliteGreylist, Update};
use state::pg::Pg;
use state::pg::greylist::PgGreylist;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Requests answered per transaction at most.
const BATCH: usize = 512;

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("greylist DB: {0}")]
    Open(#[from] state::Error),
    #[error("greylist DB: {0}")]
    Commit(#[from] CommitError),
    #[error("greylist store: {0}")]
    Shared(#[from] state::pg::PgError),
}

/// The store with the rule that decides over it.
#[derive(Debug)]
struct Deciding<S> {
    store: S,
    timing: Timing,
}

impl<S: GreylistStore> Batch for Deciding<S> {
    type Job = Lookup;
    type Answer = (Outcome, Writes);

    fn run(&mut self, jobs: &[Lookup]) -> Result<Vec<(Outcome, Writes)>, String> {
        let t = self.timing;
        let mut out = Vec::with_capacity(jobs.len());
        self.store
            .decide_all(
                jobs,
                t.awl_threshold > 0,
                &mut |i, trip, awl: Option<Awl>| {
                    let (outcome, w) = decide(jobs[i].now, trip, awl, &t);
                    out.push((outcome, w));
                    Update {
                        triplet: w.triplet,
                        awl: w.awl,
                    }
                },
            )
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// The handle requests go through; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    File(GroupCommit<Deciding<SqliteGreylist>>),
    Shared(PgGreylist, Timing),
}

impl Store {
    /// Opens the DB at `path` and starts the expiry sweep. Must run inside a tokio runtime.
    pub fn start(
        path: &Path,
        timing: Timing,
        expire_every: Duration,
    ) -> Result<(Store, Counts), StoreError> {
        let store = SqliteGreylist::open(path)?;
        let found = store.counts()?;
        let commit = GroupCommit::new(Deciding { store, timing }, BATCH);
        tokio::spawn(sweeper(commit.downgrade(), expire_every));
        Ok((
            Store {
                backend: Backend::File(commit),
            },
            found,
        ))
    }

    /// The greylist in the store several hosts share, and its expiry sweep (every host
    /// sweeps; a round deletes a bounded number of rows). Must run inside a tokio runtime.
    pub fn shared(pg: Arc<Pg>, timing: Timing, expire_every: Duration) -> Store {
        let store = PgGreylist::new(pg);
        tokio::spawn({
            let store = store.clone();
            async move {
                let mut tick = tokio::time::interval(expire_every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let ages = Ages {
                        max_age: timing.max_age,
                        retry_window: timing.retry_window,
                    };
                    match store.expire_round(state::clock::unix_now(), ages).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(deleted = n, "greylist entries expired"),
                        Err(e) => tracing::debug!(error = %e, "greylist expiry failed; will retry"),
                    }
                }
            }
        });
        Store {
            backend: Backend::Shared(store, timing),
        }
    }

    /// Decides for `key` (the triplet) and `client` (the address counted for the
    /// auto-whitelist) at `now`, and records the result before answering.
    pub async fn decide(
        &self,
        key: String,
        client: String,
        now: i64,
    ) -> Result<(Outcome, Writes), StoreError> {
        let lookup = Lookup { key, client, now };
        match &self.backend {
            Backend::File(commit) => Ok(commit.submit(lookup).await?),
            Backend::Shared(store, t) => {
                let t = *t;
                Ok(store
                    .decide(&lookup, t.awl_threshold > 0, |trip, awl| {
                        let (outcome, w) = decide(now, trip, awl, &t);
                        let update = Update {
                            triplet: w.triplet,
                            awl: w.awl,
                        };
                        (update, (outcome, w))
                    })
                    .await?)
            }
        }
    }
}

/// Every `every`, one bounded expiry round off the async threads, while the store lives.
async fn sweeper(commit: WeakCommit<Deciding<SqliteGreylist>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(commit) = commit.upgrade() else {
            return;
        };
        if state::backup::held() {
            continue;
        }
        let round = commit
            .maintain(|d| {
                let ages = Ages {
                    max_age: d.timing.max_age,
                    retry_window: d.timing.retry_window,
                };
                d.store.expire_round(state::clock::unix_now(), ages)
            })
            .await;
        match round {
            None => return,
            Some(Ok(0)) => {}
            Some(Ok(n)) => tracing::debug!(deleted = n, "greylist entries expired"),
            Some(Err(e)) => tracing::warn!(error = %e, "greylist expiry failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        delay: 100,
        max_age: 1000,
        retry_window: 500,
        awl_threshold: 5,
        awl_interval: 3600,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decisions_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/greylist.sqlite");
        let (s, c) = Store::start(&path, T, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            c,
            Counts {
                triplets: 0,
                clients: 0
            }
        );
        let (o, _) = s.decide("k".into(), "c".into(), 1000).await.unwrap();
        assert!(matches!(o, Outcome::Greylist { new: true, .. }));
        let (o, _) = s.decide("k".into(), "c".into(), 1150).await.unwrap();
        assert_eq!(o, Outcome::Pass { delayed: Some(150) });
        drop(s);
        assert_eq!(
            SqliteGreylist::open(&path).unwrap().counts().unwrap(),
            Counts {
                triplets: 1,
                clients: 1
            }
        );
    }
}
