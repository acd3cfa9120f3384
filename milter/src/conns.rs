//! The milter's connections, watched: a cap that idle peers cannot exhaust, and a timeout for
//! each stage of a connection's life.
//!
//! Anyone who can open a connection to the milter (any local user, on a TCP listener) could
//! otherwise hold every slot with connections that say nothing, and Postfix would then apply
//! `milter_default_action` to all mail. So each accepted stream is wrapped: the milter
//! commands flowing through it are followed (a five-byte frame header is all it takes) to know
//! its stage and when it last spoke. At the cap, the connection idle longest is closed to make
//! room, those outside a message first; a connection that has not negotiated within
//! [`NEGOTIATE`], or sits between messages longer than `idle_timeout`, is closed by a sweep.
//! Inside a message Postfix may be silent while the client uploads the whole body (Postfix
//! hands the milter the message only once it has it), so there only indymilter's own
//! [`IN_MESSAGE`] timeout applies. Failing to accept (out of file descriptors) makes room
//! the same way instead of ending the listener.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Postfix sends its first command as soon as it connects (it gives up after its own
/// `milter_connect_timeout`, 30 s).
pub const NEGOTIATE: Duration = Duration::from_secs(30);
/// libmilter's idle timeout, kept inside a message (see the module docs).
pub const IN_MESSAGE: Duration = Duration::from_secs(7210);
/// How often the sweep looks for connections past their stage's timeout.
const SWEEP: Duration = Duration::from_secs(2);
/// How long accepting pauses after the system refused a descriptor.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Where a connection is in the milter protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Nothing received yet.
    New = 0,
    /// Negotiated, no message in progress.
    Between = 1,
    /// Between MAIL and the end (or abort) of the message.
    Message = 2,
}

/// Follows the milter frames of one direction of a connection (4-byte length, command byte,
/// data) across reads, and reports the stage each command leads to. Sans I/O.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    /// Header bytes of the current frame collected so far.
    head: [u8; 5],
    have: usize,
    /// Data bytes of the current frame still to skip.
    skip: u64,
}

impl Frames {
    /// Feeds bytes read from the MTA; returns the stage after the last complete command
    /// header among them, if any changed it.
    pub fn feed(&mut self, mut bytes: &[u8], mut stage: Stage) -> Stage {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 5 {
                self.have = 0;
                let len =
                    u32::from_be_bytes([self.head[0], self.head[1], self.head[2], self.head[3]]);
                self.skip = u64::from(len.saturating_sub(1));
                stage = match self.head[4] {
                    b'M' => Stage::Message,
                    b'E' | b'A' => Stage::Between,
                    _ if stage == Stage::New => Stage::Between,
                    _ => stage,
                };
            }
        }
        stage
    }
}

/// One connection as the table sees it.
#[derive(Debug)]
struct Slot {
    /// Milliseconds after the table's start when the MTA last sent something.
    last: AtomicU64,
    stage: AtomicU8,
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Slot {
    fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Relaxed) {
            0 => Stage::New,
            1 => Stage::Between,
            _ => Stage::Message,
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let waker = self.waker.lock().map(|mut w| w.take()).unwrap_or_default();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Every open connection.
#[derive(Debug)]
pub struct Table {
    start: Instant,
    cap: usize,
    idle: Duration,
    next: AtomicU64,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    /// The listener's connection figures (`miab_connections_*`).
    open: Gauge,
    accepted: Counter,
    waited: Counter,
    /// Accepting paused for want of room since the last connection.
    was_full: AtomicBool,
}

impl Table {
    /// A table for at most `cap` connections, closing those idle between messages for
    /// longer than `idle`; its figures are counted under `listener`.
    pub fn new(cap: usize, idle: Duration, listener: &str) -> Arc<Table> {
        let label = daemon::metrics::ListenerLabel {
            listener: listener.to_owned(),
        };
        let figures = daemon::metrics::connections();
        Arc::new(Table {
            start: Instant::now(),
            cap: cap.max(1),
            idle,
            next: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
            open: figures.open.get_or_create(&label).clone(),
            accepted: figures.accepted.get_or_create(&label).clone(),
            waited: figures.waited.get_or_create(&label).clone(),
            was_full: AtomicBool::new(false),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Could one more connection be taken now: below the cap, or with a connection to
    /// close for it? Not when every slot is busy inside a message and none has been idle for
    /// a second (then the caller waits, and new connections wait in the backlog).
    fn has_room(&self) -> bool {
        let slots = self.slots();
        slots.len() < self.cap || self.idlest(&slots, false).is_some()
    }

    /// Makes room for a connection just accepted: at the cap, closes the one idle longest.
    fn make_room(&self) {
        let mut slots = self.slots();
        if slots.len() >= self.cap {
            self.close_idlest(&mut slots, true);
        }
    }

    /// The connection idle longest, outside a message first, with its stage and idle
    /// milliseconds; unless `any`, not one inside a message that spoke within the last second.
    fn idlest(&self, slots: &HashMap<u64, Arc<Slot>>, any: bool) -> Option<(u64, bool, u64)> {
        let now = self.now();
        let (in_message, std::cmp::Reverse(idle), id) = slots
            .iter()
            .map(|(id, s)| {
                let idle = now.saturating_sub(s.last.load(Ordering::Relaxed));
                (s.stage() == Stage::Message, std::cmp::Reverse(idle), *id)
            })
            .min()?;
        (any || !in_message || idle >= 1000).then_some((id, in_message, idle))
    }

    fn close_idlest(&self, slots: &mut HashMap<u64, Arc<Slot>>, any: bool) {
        let Some((id, in_message, idle)) = self.idlest(slots, any) else {
            return;
        };
        if let Some(s) = slots.remove(&id) {
            tracing::warn!(
                idle_ms = idle,
                in_message,
                open = slots.len() + 1,
                cap = self.cap,
                "no room for a new milter connection; closing the one idle longest"
            );
            s.close();
        }
    }

    /// Closes every connection past its stage's timeout.
    fn sweep(&self) {
        let now = self.now();
        let mut slots = self.slots();
        slots.retain(|_, s| {
            let idle = Duration::from_millis(now.saturating_sub(s.last.load(Ordering::Relaxed)));
            let limit = match s.stage() {
                Stage::New => NEGOTIATE,
                Stage::Between => self.idle,
                Stage::Message => return true,
            };
            if idle < limit {
                return true;
            }
            tracing::info!(stage = ?s.stage(), idle_secs = idle.as_secs(), "closing an idle milter connection");
            s.close();
            false
        });
    }

    /// Sweeps every two seconds until the table is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(t) => t.sweep(),
                    None => return,
                }
            }
        });
    }

    fn register(self: &Arc<Self>) -> (u64, Arc<Slot>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            last: AtomicU64::new(self.now()),
            stage: AtomicU8::new(Stage::New as u8),
            closed: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        self.slots().insert(id, Arc::clone(&slot));
        self.accepted.inc();
        self.open.inc();
        if self.was_full.swap(false, Ordering::Relaxed) {
            self.waited.inc();
        }
        (id, slot)
    }
}

/// A listener whose streams the [`Table`] watches.
#[derive(Debug)]
pub struct Watched<L> {
    inner: L,
    table: Arc<Table>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<L> Watched<L> {
    pub fn new(inner: L, table: Arc<Table>) -> Watched<L> {
        Watched {
            inner,
            table,
            pause: None,
        }
    }
}

/// Accept errors that say the system is short of something (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM) or that one peer gave up, not that the listener broke.
fn transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
        || matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
        )
}

/// A stream whose small writes must not wait: a TCP stream gets `TCP_NODELAY` (each milter
/// reply is a few bytes the MTA waits for; Nagle's algorithm would hold it back until the
/// MTA's delayed ACK); a UNIX stream has nothing to set.
pub trait NoDelay {
    fn no_delay(&self) -> io::Result<()>;
}

impl NoDelay for tokio::net::TcpStream {
    fn no_delay(&self) -> io::Result<()> {
        self.set_nodelay(true)
    }
}

impl NoDelay for tokio::net::UnixStream {
    fn no_delay(&self) -> io::Result<()> {
        Ok(())
    }
}

impl<L> indymilter::Listener for Watched<L>
where
    L: indymilter::Listener,
    L::Io: NoDelay,
{
    type Io = Stream<L::Io>;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        loop {
            if let Some(p) = self.pause.as_mut() {
                if p.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
            }
            if !self.table.has_room() {
                self.table.was_full.store(true, Ordering::Relaxed);
                self.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
                continue;
            }
            match self.inner.poll_accept(cx) {
                Poll::Ready(Ok(io)) => {
                    if let Err(e) = io.no_delay() {
                        tracing::debug!(error = %e, "TCP_NODELAY not set");
                    }
                    self.table.make_room();
                    let (id, slot) = self.table.register();
                    return Poll::Ready(Ok(Stream {
                        io,
                        id,
                        slot,
                        table: Arc::clone(&self.table),
                        frames: Frames::default(),
                    }));
                }
                Poll::Ready(Err(e)) if transient(&e) => {
                    tracing::warn!(error = %e, "could not accept a milter connection");
                    self.table.close_idlest(&mut self.table.slots(), true);
                    self.pause = Some(Box::pin(tokio::time::sleep(ACCEPT_PAUSE)));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// An accepted stream: reads feed the stage and the clock; once closed by the table it
/// reads as the end of the stream, which ends indymilter's session.
#[derive(Debug)]
pub struct Stream<S> {
    io: S,
    id: u64,
    slot: Arc<Slot>,
    table: Arc<Table>,
    frames: Frames,
}

impl<S> Drop for Stream<S> {
    fn drop(&mut self) {
        self.table.slots().remove(&self.id);
        self.table.open.dec();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.slot.closed.load(Ordering::Acquire) {
            return Poll::Ready(Ok(()));
        }
        if let Ok(mut w) = this.slot.waker.lock() {
            *w = Some(cx.waker().clone());
        }
        let before = buf.filled().len();
        let out = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = out {
            let got = &buf.filled()[before..];
            if !got.is_empty() {
                let stage = this.frames.feed(got, this.slot.stage());
                this.slot.stage.store(stage as u8, Ordering::Relaxed);
                this.slot.last.store(this.table.now(), Ordering::Relaxed);
            }
        }
        out
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(cmd: u8, data: &[u8]) -> Vec<u8> {
        let mut f = u32::try_from(data.len() + 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        f.push(cmd);
        f.extend_from_slice(data);
        f
    }

    /// The stage follows the commands wherever the reads split them, and data bytes that
    /// look like commands are not taken for commands.
    #[test]
    fn frames_give_the_stage_across_splits() {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (cmd, data, stage) in [
            (
                b'O',
                &b"\0\0\0\x06\0\0\x01\xff\0\x1f\xff\xff"[..],
                Stage::Between,
            ),
            (b'C', b"host\0" as &[u8], Stage::Between),
            (b'M', b"<a@b>\0", Stage::Message),
            (b'L', b"Subject\0MEAM\0", Stage::Message),
            (b'B', b"AAAAEEEE", Stage::Message),
            (b'E', b"", Stage::Between),
            (b'M', b"<c@d>\0", Stage::Message),
            (b'A', b"", Stage::Between),
        ] {
            stream.extend(frame(cmd, data));
            want.push((stream.len(), stage));
        }
        for split in [1, 2, 3, 5, 7, 64] {
            let mut f = Frames::default();
            let mut stage = Stage::New;
            let mut seen = Vec::new();
            let mut at = 0;
            for chunk in stream.chunks(split) {
                stage = f.feed(chunk, stage);
                at += chunk.len();
                if let Some((_, s)) = want.iter().find(|(end, _)| *end == at) {
                    seen.push(*s);
                    assert_eq!(stage, *s, "split {split} at {at}");
                }
            }
            assert_eq!(stage, Stage::Between);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_idlest_outside_a_message_goes_first() {
        let t = Table::new(3, Duration::from_secs(330), "test");
        let (_, a) = t.register();
        let (_, b) = t.register();
        let (_, c) = t.register();
        a.stage.store(Stage::Message as u8, Ordering::Relaxed);
        a.last.store(0, Ordering::Relaxed);
        b.last.store(10, Ordering::Relaxed);
        c.last.store(5, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Full, but something to close: only an accepted connection closes it.
        assert!(t.has_room());
        assert_eq!(t.slots().len(), 3);
        t.make_room();
        assert!(c.closed.load(Ordering::Acquire) && !a.closed.load(Ordering::Acquire));
        assert_eq!(t.slots().len(), 2);
        assert!(t.has_room(), "below the cap");
        // All busy inside a message and just active: wait.
        let t = Table::new(1, Duration::from_secs(330), "test");
        let (_, d) = t.register();
        d.stage.store(Stage::Message as u8, Ordering::Relaxed);
        d.last.store(t.now(), Ordering::Relaxed);
        assert!(!t.has_room());
    }
}
