//! The per-connection loop every request/reply daemon runs: read bytes into a sans-I/O
//! decoder, answer each complete request, write the reply, repeat.
//!
//! A timeout guards every read and write: between requests the idle limit applies, and the
//! I/O limit covers a whole request from its first byte, so a peer trickling bytes cannot hold
//! a connection. A malformed request is logged and the connection closed (Postfix reconnects).
//! On shutdown, a connection between requests closes at once; one in the middle of a request
//! gets its answer first.

use crate::serve::{Conn, Limits, timed};
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;

/// A protocol's decoder: bytes in, complete requests out.
pub trait Decoder {
    /// One complete request.
    type Frame;
    /// Why the bytes cannot be a request; the connection is closed.
    type Error: Display;
    /// Appends bytes from the socket.
    fn push(&mut self, bytes: &[u8]);
    /// The next complete request, `None` if more bytes are needed.
    fn next_frame(&mut self) -> Result<Option<Self::Frame>, Self::Error>;
    /// Bytes held that do not form a request yet.
    fn buffered(&self) -> usize;
}

/// A protocol's answers, with whatever per-connection state it keeps.
pub trait Handler<F> {
    /// What the server says first, before the client sends anything (none by default).
    fn greeting(&mut self, _out: &mut Vec<u8>) {}

    /// Appends the reply to `frame`, the connection's request number `seq`, to `out`.
    fn answer(&mut self, frame: F, seq: u64, out: &mut Vec<u8>) -> impl Future<Output = ()> + Send;
}

/// Serves one connection until the peer closes it, an error, a timeout or shutdown.
pub async fn run<D, H>(conn: Conn, limits: &Limits, mut decoder: D, mut handler: H)
where
    D: Decoder,
    H: Handler<D::Frame>,
{
    let Conn {
        mut stream,
        peer,
        id,
        shutdown,
    } = conn;
    let mut chunk = [0u8; READ_CHUNK];
    let mut out = Vec::with_capacity(512);
    let mut seq = 0u64;
    handler.greeting(&mut out);
    if !out.is_empty()
        && let Err(e) = timed(limits.io_timeout, stream.write_all(&out)).await
    {
        tracing::info!(conn = id, %peer, error = %e, "write failed; closing");
        return;
    }
    // When the first byte of the request being read arrived.
    let mut started: Option<Instant> = None;
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                seq += 1;
                out.clear();
                handler.answer(frame, seq, &mut out).await;
                started = (decoder.buffered() > 0).then(Instant::now);
                if let Err(e) = timed(limits.io_timeout, stream.write_all(&out)).await {
                    tracing::info!(conn = id, %peer, error = %e, "write failed; closing");
                    return;
                }
                if shutdown.is_triggered() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(conn = id, %peer, error = %e, "closing connection: malformed request frame");
                return;
            }
        }
        let (limit, between) = match started {
            None => (limits.idle_timeout, true),
            Some(t) => (limits.io_timeout.saturating_sub(t.elapsed()), false),
        };
        let read = tokio::select! {
            r = timed(limit, stream.read(&mut chunk)) => r,
            () = shutdown.wait(), if between => return,
        };
        match read {
            Ok(0) if between => return,
            Ok(0) => {
                tracing::warn!(conn = id, %peer, buffered = decoder.buffered(), "connection closed in the middle of a request");
                return;
            }
            Ok(n) => {
                started.get_or_insert_with(Instant::now);
                decoder.push(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut && between => {
                tracing::debug!(conn = id, %peer, "idle connection closed");
                return;
            }
            Err(e) => {
                tracing::warn!(conn = id, %peer, error = %e, buffered = decoder.buffered(), "read failed; closing");
                return;
            }
        }
    }
}
