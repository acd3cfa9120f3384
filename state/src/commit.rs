//! The group commit every store's writes go through.
//!
//! Requests queue up; one task at a time takes every waiting request into one transaction
//! ([`Batch::run`]) and answers each only after the commit, so an answer never depends on
//! state that could still be lost, and a hundred requests cost one commit (one WAL sync)
//! rather than a hundred. The committing task runs on the runtime's own thread (no hand-off to
//! another thread and back, which cost more than the SQLite work), and first yields so that
//! every connection with a request ready can queue it for the same commit.
//!
//! Maintenance (expiry) runs on the blocking pool with the store to itself ([`GroupCommit::maintain`]).
//! Writes nobody waits for ([`GroupCommit::send`]) are never lost to a shutdown: what is still
//! queued when the last handle goes is written then.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use tokio::sync::oneshot;

/// A store's side of the group commit.
pub trait Batch: Send + 'static {
    /// One request.
    type Job: Send + 'static;
    /// Its answer.
    type Answer: Send + 'static;
    /// Runs `jobs` in one transaction and answers each, in order. An error fails them all.
    fn run(&mut self, jobs: &[Self::Job]) -> Result<Vec<Self::Answer>, String>;
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The transaction failed (its error), or the store panicked.
    #[error("{0}")]
    Failed(String),
    /// The store is gone.
    #[error("the commit was abandoned")]
    Stopped,
}

type Reply<B> = oneshot::Sender<Result<<B as Batch>::Answer, String>>;

/// The handle requests go through; cheap to clone.
#[derive(Debug)]
pub struct GroupCommit<B: Batch> {
    inner: Arc<Inner<B>>,
}

impl<B: Batch> Clone for GroupCommit<B> {
    fn clone(&self) -> Self {
        GroupCommit {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
struct Inner<B: Batch> {
    store: Mutex<B>,
    queue: Mutex<Queue<B>>,
    max_batch: usize,
}

/// Requests waiting for the next commit, and whether a task is committing.
struct Queue<B: Batch> {
    jobs: Vec<(B::Job, Option<Reply<B>>)>,
    leading: bool,
}

impl<B: Batch> std::fmt::Debug for Queue<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("jobs", &self.jobs.len())
            .field("leading", &self.leading)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves nothing half-done that matters: SQLite rolls back
    // an unfinished transaction.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: Batch> GroupCommit<B> {
    /// Takes `store`; at most `max_batch` requests go into one transaction.
    pub fn new(store: B, max_batch: usize) -> GroupCommit<B> {
        GroupCommit {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                queue: Mutex::new(Queue {
                    jobs: Vec::new(),
                    leading: false,
                }),
                max_batch: max_batch.max(1),
            }),
        }
    }

    /// Queues `job` and answers once its transaction has committed.
    pub async fn submit(&self, job: B::Job) -> Result<B::Answer, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(job, Some(reply));
        match rx.await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(CommitError::Failed(e)),
            Err(_) => Err(CommitError::Stopped),
        }
    }

    /// Queues a write nobody waits for; a failure is the store's to log.
    pub fn send(&self, job: B::Job) {
        self.enqueue(job, None);
    }

    fn enqueue(&self, job: B::Job, reply: Option<Reply<B>>) {
        let lead = {
            let mut q = lock(&self.inner.queue);
            q.jobs.push((job, reply));
            !std::mem::replace(&mut q.leading, true)
        };
        if !lead {
            return;
        }
        let inner = Arc::clone(&self.inner);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(commit_queued(inner))),
            // No runtime (a tool, a test): commit here and now.
            Err(_) => inner.drain(),
        }
    }

    /// Runs `f` with the store to itself on the blocking pool (expiry and the like), between
    /// commits. `None` if it panicked.
    pub async fn maintain<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut B) -> R + Send + 'static,
    ) -> Option<R> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.store)))
            .await
            .ok()
    }

    /// A handle that does not keep the store alive (for its background tasks).
    pub fn downgrade(&self) -> WeakCommit<B> {
        WeakCommit(Arc::downgrade(&self.inner))
    }

    /// Runs `f` with the store to itself, here (start-up, tools).
    pub fn with_store<R>(&self, f: impl FnOnce(&mut B) -> R) -> R {
        f(&mut lock(&self.inner.store))
    }
}

/// A [`GroupCommit`] that does not keep its store alive.
#[derive(Debug)]
pub struct WeakCommit<B: Batch>(Weak<Inner<B>>);

impl<B: Batch> WeakCommit<B> {
    /// The store, while anything else still holds it.
    pub fn upgrade(&self) -> Option<GroupCommit<B>> {
        self.0.upgrade().map(|inner| GroupCommit { inner })
    }
}

/// Commits everything queued, one transaction per round, until the queue is empty.
async fn commit_queued<B: Batch>(inner: Arc<Inner<B>>) {
    tokio::task::yield_now().await;
    let drain = || inner.drain();
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(drain),
        _ => drain(),
    }
}

impl<B: Batch> Inner<B> {
    /// Answers rounds until the queue is empty, then gives up the lead.
    fn drain(&self) {
        loop {
            let round = {
                let mut q = lock(&self.queue);
                if q.jobs.is_empty() {
                    q.leading = false;
                    return;
                }
                let n = q.jobs.len().min(self.max_batch);
                q.jobs.drain(..n).collect::<Vec<_>>()
            };
            self.commit(round);
        }
    }

    fn commit(&self, round: Vec<(B::Job, Option<Reply<B>>)>) {
        let (jobs, replies): (Vec<_>, Vec<_>) = round.into_iter().unzip();
        let mut store = lock(&self.store);
        // A panic (a bug) fails this round's requests, not every one after it.
        let answers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.run(&jobs)))
            .unwrap_or_else(|_| Err("panic while committing".into()));
        match answers {
            Ok(answers) => {
                for (reply, a) in replies.into_iter().zip(answers) {
                    if let Some(r) = reply {
                        let _ = r.send(Ok(a));
                    }
                }
            }
            Err(e) => {
                for r in replies.into_iter().flatten() {
                    let _ = r.send(Err(e.clone()));
                }
            }
        }
    }
}

impl<B: Batch> Drop for Inner<B> {
    fn drop(&mut self) {
        // Writes queued when the last handle went (a task that never ran at shutdown).
        self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the size of each round; fails a round holding 0.
    #[derive(Debug, Default)]
    struct Rounds(Arc<Mutex<Vec<usize>>>);

    impl Batch for Rounds {
        type Job = u32;
        type Answer = u32;
        fn run(&mut self, jobs: &[u32]) -> Result<Vec<u32>, String> {
            lock(&self.0).push(jobs.len());
            if jobs.contains(&0) {
                return Err("zero".into());
            }
            assert!(!jobs.contains(&1000), "a bug");
            Ok(jobs.iter().map(|j| j * 2).collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_requests_share_a_commit_and_failures_stay_in_their_round() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let c = GroupCommit::new(Rounds(Arc::clone(&seen)), 64);
        let all: Vec<_> = (1..=100)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.submit(i).await })
            })
            .collect();
        let mut answers = Vec::new();
        for a in all {
            answers.push(a.await.unwrap());
        }
        assert_eq!(answers.len(), 100);
        assert!(answers.iter().zip(1..).all(|(a, i)| *a == Ok(2 * i)));
        assert!(lock(&seen).len() < 100, "rounds: {:?}", lock(&seen));
        assert!(lock(&seen).iter().all(|n| *n <= 64));
        assert_eq!(c.submit(0).await, Err(CommitError::Failed("zero".into())));
        assert!(matches!(c.submit(1000).await, Err(CommitError::Failed(_))));
        assert_eq!(c.submit(4).await, Ok(8), "a later round still commits");
    }

    #[test]
    fn writes_nobody_waits_for_are_written_without_a_runtime_and_at_the_end() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let c = GroupCommit::new(Rounds(Arc::clone(&seen)), 8);
        c.send(1);
        assert_eq!(*lock(&seen), [1]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            c.send(2);
            c.send(3);
        });
        drop(rt);
        drop(c);
        assert_eq!(lock(&seen).iter().sum::<usize>(), 3, "{:?}", lock(&seen));
    }
}
