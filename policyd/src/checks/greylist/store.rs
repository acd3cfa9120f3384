//! Greylisting's decisions over its store (`state::greylist`): each request is decided by
//! [`super::rule::decide`] inside the store's transaction, through the group commit all the
//! sidecars' stores share, and answered only after the commit. A background task runs one
//! bounded expiry round at a time, off the request path.

use super::rule::{Outcome, Timing, Writes, decide};
use state::commit::{Batch, CommitError, GroupCommit, WeakCommit};
use state::greylist::{Ages, Awl, Counts, GreylistStore, Lookup, SqliteGreylist, Update};
use std::path::Path;
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
    commit: GroupCommit<Deciding<SqliteGreylist>>,
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
        Ok((Store { commit }, found))
    }

    /// Decides for `key` (the triplet) and `client` (the address counted for the
    /// auto-whitelist) at `now`, and records the result before answering.
    pub async fn decide(
        &self,
        key: String,
        client: String,
        now: i64,
    ) -> Result<(Outcome, Writes), StoreError> {
        Ok(self.commit.submit(Lookup { key, client, now }).await?)
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
