//! One connection: read a request, decide, write the answer, repeat (Postfix keeps the
//! connection and sends one request at a time). A timeout guards every read and write; a
//! malformed request is logged and the connection closed without a reply, as the protocol
//! asks; on shutdown the request in flight is answered first.

use crate::State;
use crate::policy::ConnState;
use crate::proto::{Decoder, encode_reply};
use daemon::{Conn, timed};
use std::io;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;

pub(crate) async fn run(state: Arc<State>, conn: Conn) {
    let Conn {
        mut stream,
        peer,
        id,
        shutdown,
    } = conn;
    let limits = &state.limits;
    let mut decoder = Decoder::new();
    let mut chunk = [0u8; READ_CHUNK];
    let mut out = Vec::with_capacity(256);
    let mut conn_state = ConnState::default();
    let mut seq = 0u64;
    // When the first byte of the request being read arrived: the I/O limit covers a whole
    // request, so a peer trickling bytes cannot hold a connection.
    let mut started: Option<Instant> = None;
    loop {
        match decoder.next_request() {
            Ok(Some(req)) => {
                seq += 1;
                let action = if req.is_policy_request() {
                    state
                        .policy
                        .evaluate(&req, &mut conn_state, (id, seq))
                        .await
                } else {
                    tracing::warn!(conn = id, req = seq, %peer, request = ?req.request,
                        "not a request=smtpd_access_policy; answering the fail action");
                    state.policy.fail_action.clone()
                };
                tracing::debug!(conn = id, req = seq, request = ?req, %action, "answered");
                started = (decoder.buffered() > 0).then(Instant::now);
                out.clear();
                encode_reply(&action, &mut out);
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
                tracing::warn!(conn = id, %peer, error = %e, "closing connection: malformed policy request");
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
