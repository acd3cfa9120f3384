//! The accept loop every daemon runs: a connection permit before `accept` (backpressure instead
//! of unbounded tasks), backoff on accept errors such as running out of file descriptors, one
//! task per connection, and a graceful shutdown that stops accepting, lets connections finish
//! the request in flight, and closes what is left at the drain deadline.

use crate::listen::{Listener, Peer, Stream};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

/// Connection limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// How long a started frame may take to arrive, and a reply to be written.
    pub io_timeout: Duration,
    /// How long a connection may sit between requests.
    pub idle_timeout: Duration,
    /// How long shutdown waits for connections to finish.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            io_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Tells tasks to stop. Cheap to clone; every clone sees the same trigger.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Fires a [`Shutdown`].
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    /// A new shutdown signal and its trigger.
    pub fn new() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger { tx }, Shutdown { rx })
    }

    /// Has shutdown begun?
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown begins (or the trigger is dropped).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }
}

impl Trigger {
    /// Begins shutdown.
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

/// Fires `trigger` on SIGTERM or SIGINT. Must run inside a tokio runtime.
pub fn shutdown_on_signals(trigger: Trigger) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // SIGHUP (systemctl reload, logrotate) reloads; by default it would end the process.
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reloading");
            RELOADS.send_modify(|n| *n += 1);
        }
    });
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        trigger.fire();
    });
    Ok(())
}

static RELOADS: std::sync::LazyLock<watch::Sender<u64>> =
    std::sync::LazyLock::new(|| watch::Sender::new(0));

/// Changes each time the process gets SIGHUP: what a daemon reads from files it reads again.
pub fn reloads() -> watch::Receiver<u64> {
    RELOADS.subscribe()
}

/// One accepted connection, handed to the daemon's session code.
#[derive(Debug)]
pub struct Conn {
    pub stream: Stream,
    pub peer: Peer,
    /// Unique per process, for log lines.
    pub id: u64,
    pub shutdown: Shutdown,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Serves `listener` until `shutdown`, running `session` for each connection. Returns after
/// the drain, so the caller can exit right away.
pub async fn serve<F, Fut>(
    listener: Listener,
    limits: &Limits,
    shutdown: Shutdown,
    session: F,
) -> io::Result<()>
where
    F: Fn(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    let label = crate::metrics::ListenerLabel {
        listener: listener
            .local_addr()
            .map_or_else(|_| "unknown".into(), |a| a.to_string()),
    };
    let figures = crate::metrics::connections();
    let open = figures.open.get_or_create(&label).clone();
    let accepted_count = figures.accepted.get_or_create(&label).clone();
    let waited = figures.waited.get_or_create(&label).clone();
    loop {
        let full = permits.available_permits() == 0;
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.wait() => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.wait() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let span = tracing::info_span!("conn", id, peer = %peer);
                let conn = Conn {
                    stream,
                    peer,
                    id,
                    shutdown: shutdown.clone(),
                };
                let fut = session(conn).instrument(span);
                accepted_count.inc();
                if full {
                    waited.inc();
                }
                open.inc();
                let open = open.clone();
                tasks.spawn(async move {
                    fut.await;
                    open.dec();
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis(), "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.wait() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        while let Some(done) = tasks.try_join_next() {
            log_task_end(done);
        }
    }
    drop(listener);
    drain(tasks, limits.drain_timeout).await;
    Ok(())
}

async fn drain(mut tasks: JoinSet<()>, deadline: Duration) {
    let timer = tokio::time::sleep(deadline);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(done) => log_task_end(done),
                None => return,
            },
            () = &mut timer => {
                tracing::warn!(open = tasks.len(), "drain deadline reached; closing connections");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "connection task panicked");
    }
}

/// Runs an I/O future with a deadline; running out of time is `ErrorKind::TimedOut`.
pub async fn timed<T>(limit: Duration, fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::{ListenAddr, UnixOptions};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bounded_connections_and_graceful_drain() {
        let listener = Listener::bind(
            &ListenAddr::Inet("127.0.0.1:0".parse().unwrap()),
            &UnixOptions::default(),
        )
        .unwrap();
        let ListenAddr::Inet(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let limits = Limits {
            max_connections: 2,
            drain_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (trigger, shutdown) = Shutdown::new();
        // Echo one byte per request; stop between requests when shutdown begins.
        let server = tokio::spawn(async move {
            serve(listener, &limits, shutdown, |mut c: Conn| async move {
                let mut b = [0u8; 1];
                loop {
                    tokio::select! {
                        r = c.stream.read(&mut b) => match r {
                            Ok(1) => {
                                c.stream.write_all(&b).await.unwrap();
                            }
                            _ => return,
                        },
                        () = c.shutdown.wait() => return,
                    }
                }
            })
            .await
        });
        let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        for s in [&mut a, &mut b] {
            s.write_all(b"x").await.unwrap();
            let mut r = [0u8; 1];
            s.read_exact(&mut r).await.unwrap();
        }
        // The third connection waits in the backlog until a permit frees up.
        c.write_all(b"y").await.unwrap();
        let mut r = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_millis(200), c.read_exact(&mut r)).await;
        assert!(waited.is_err(), "third connection served beyond the limit");
        drop(a);
        c.read_exact(&mut r).await.unwrap();
        assert_eq!(&r, b"y");

        trigger.fire();
        server.await.unwrap().unwrap();
        let mut rest = Vec::new();
        assert_eq!(
            b.read_to_end(&mut rest).await.unwrap(),
            0,
            "closed on drain"
        );
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}

/// A housekeeping task (forgetting idle rate-limit counters and the like); stops when dropped.
#[derive(Debug)]
pub struct Periodic(tokio::task::JoinHandle<()>);

impl Drop for Periodic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `f` after each SIGHUP; stops when dropped. Must run inside a tokio runtime.
pub fn on_reload(f: impl Fn() + Send + 'static) -> Periodic {
    let mut reloads = reloads();
    Periodic(tokio::spawn(async move {
        while reloads.changed().await.is_ok() {
            f();
        }
    }))
}

/// Runs `f` every `every`, first after one period. Must run inside a tokio runtime.
pub fn periodic(every: Duration, f: impl Fn() + Send + 'static) -> Periodic {
    Periodic(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            f();
        }
    }))
}
