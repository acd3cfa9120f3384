//! The per-connection loop every request/reply daemon runs: read bytes into a sans-I/O
//! decoder, answer each complete request, write the reply, repeat.
//!
//! A timeout guards every read and write: between requests the idle limit applies, and the
//! I/O limit covers a whole request from its first byte, so a peer trickling bytes cannot hold
//! a connection. A malformed request is logged and the connection closed (Postfix reconnects).
//! On shutdown, a connection between requests closes at once; one in the middle of a request
//! gets its answer first. Log lines carry the connection's span (`conn{id peer}`, made by
//! [`crate::serve`]), so no handler threads its id through.

use crate::serve::{Conn, Limits, timed};
use futures_util::FutureExt as _;
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
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

    /// Appends the reply to `frame` to `out`.
    fn answer(&mut self, frame: F, out: &mut Vec<u8>) -> impl Future<Output = ()> + Send;

    /// Appends the protocol's temporary failure for `frame` to `out`: the answer when
    /// [`Handler::answer`] panics. Written before the frame is handed over, so it may not
    /// depend on anything but the frame.
    fn temp_failure(&self, frame: &F, out: &mut Vec<u8>);
}

/// Serves one connection until the peer closes it, an error, a timeout or shutdown.
pub async fn run<D, H>(conn: Conn, limits: &Limits, mut decoder: D, mut handler: H)
where
    D: Decoder,
    H: Handler<D::Frame>,
{
    let Conn {
        mut stream,
        shutdown,
        ..
    } = conn;
    let mut chunk = [0u8; READ_CHUNK];
    let mut out = Vec::with_capacity(512);
    let mut fallback = Vec::with_capacity(128);
    let mut seq = 0u64;
    handler.greeting(&mut out);
    if !out.is_empty()
        && let Err(e) = timed(limits.io_timeout, stream.write_all(&out)).await
    {
        tracing::info!(error = %e, "write failed; closing");
        return;
    }
    // When the first byte of the request being read arrived.
    let mut started: Option<Instant> = None;
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                seq += 1;
                out.clear();
                fallback.clear();
                handler.temp_failure(&frame, &mut fallback);
                let answered = AssertUnwindSafe(handler.answer(frame, &mut out))
                    .catch_unwind()
                    .await;
                if let Err(panic) = answered {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(req = seq, panic = ?what,
                        "bug: the request's handler panicked; answered with a temporary failure");
                    std::mem::swap(&mut out, &mut fallback);
                }
                started = (decoder.buffered() > 0).then(Instant::now);
                if let Err(e) = timed(limits.io_timeout, stream.write_all(&out)).await {
                    tracing::info!(error = %e, "write failed; closing");
                    return;
                }
                if shutdown.is_triggered() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "closing connection: malformed request frame");
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
                tracing::warn!(
                    buffered = decoder.buffered(),
                    "connection closed in the middle of a request"
                );
                return;
            }
            Ok(n) => {
                started.get_or_insert_with(Instant::now);
                decoder.push(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut && between => {
                tracing::debug!("idle connection closed");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, buffered = decoder.buffered(), "read failed; closing");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listen::{ListenAddr, Listener, UnixOptions};
    use crate::serve::{Shutdown, serve};

    /// Lines in, lines out; a line "boom" makes the handler panic.
    #[derive(Default)]
    struct Lines(Vec<u8>);

    impl Decoder for Lines {
        type Frame = Vec<u8>;
        type Error = &'static str;
        fn push(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
        fn next_frame(&mut self) -> Result<Option<Vec<u8>>, &'static str> {
            Ok(self
                .0
                .iter()
                .position(|&b| b == b'\n')
                .map(|at| self.0.drain(..=at).collect()))
        }
        fn buffered(&self) -> usize {
            self.0.len()
        }
    }

    struct Echo;

    impl Handler<Vec<u8>> for Echo {
        async fn answer(&mut self, frame: Vec<u8>, out: &mut Vec<u8>) {
            assert!(frame != b"boom\n", "a bug in the handler");
            out.extend_from_slice(&frame);
        }
        fn temp_failure(&self, _frame: &Vec<u8>, out: &mut Vec<u8>) {
            out.extend_from_slice(b"TEMP\n");
        }
    }

    #[tokio::test]
    async fn a_panicking_request_gets_the_temporary_failure_and_the_connection_goes_on() {
        let listener = Listener::bind(
            &ListenAddr::Inet("127.0.0.1:0".parse().unwrap()),
            &UnixOptions::default(),
        )
        .unwrap();
        let ListenAddr::Inet(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let (trigger, shutdown) = Shutdown::new();
        let server = tokio::spawn(async move {
            let limits = Limits::default();
            serve(listener, &limits.clone(), shutdown, move |c| {
                let limits = limits.clone();
                async move { run(c, &limits, Lines::default(), Echo).await }
            })
            .await
        });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"one\nboom\ntwo\n").await.unwrap();
        let mut got = vec![0u8; b"one\nTEMP\ntwo\n".len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"one\nTEMP\ntwo\n");
        trigger.fire();
        drop(s);
        server.await.unwrap().unwrap();
    }
}
