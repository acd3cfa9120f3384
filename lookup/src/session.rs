//! One connection: read a netstring, answer it, write the reply, repeat. A timeout guards every
//! read and write; a malformed frame is logged and the connection closed (Postfix reconnects);
//! on shutdown the request in flight is finished first.

use crate::State;
use crate::handler::{self, Map};
use crate::proto::{self, MAX_REQUEST, Reply};
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
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; READ_CHUNK];
    let mut out = Vec::with_capacity(512);
    let mut seq = 0u64;
    // When the first byte of the frame being read arrived: the I/O limit covers the whole
    // frame, so a peer trickling one byte at a time cannot hold a connection for long.
    let mut frame_start: Option<Instant> = None;
    loop {
        match proto::decode(&buf, MAX_REQUEST) {
            Ok(Some((payload, used))) => {
                seq += 1;
                let reply = answer(&state, payload, id, seq).await;
                buf.drain(..used);
                frame_start = (!buf.is_empty()).then(Instant::now);
                out.clear();
                reply.encode(&mut out);
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
        // Between requests the idle limit applies; inside one, what is left of the I/O limit.
        let (limit, between) = match frame_start {
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
                tracing::warn!(conn = id, %peer, buffered = buf.len(), "connection closed in the middle of a request");
                return;
            }
            Ok(n) => {
                frame_start.get_or_insert_with(Instant::now);
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut && between => {
                tracing::debug!(conn = id, %peer, "idle connection closed");
                return;
            }
            Err(e) => {
                tracing::warn!(conn = id, %peer, error = %e, buffered = buf.len(), "read failed; closing");
                return;
            }
        }
    }
}

async fn answer(state: &State, payload: &[u8], conn: u64, seq: u64) -> Reply {
    let Ok(req) = proto::parse_request(payload) else {
        tracing::warn!(conn, seq, "malformed request: expected \"map key\"");
        return Reply::Perm("malformed request: expected \"map key\"".into());
    };
    let Some(map) = Map::from_name(req.map) else {
        tracing::warn!(conn, seq, map = ?req.map, "unknown map name");
        return Reply::Perm(format!(
            "unknown map {:?}: this server answers domains, mailboxes, aliases, senders",
            req.map
        ));
    };
    let key = match req.key {
        Some(k) if !k.is_empty() => k,
        Some(_) => return Reply::NotFound,
        None => {
            // Every DB value is text, so no invalid UTF-8 key can match, as with sqlite:.
            tracing::debug!(conn, seq, map = map.name(), "key is not UTF-8; not found");
            return Reply::NotFound;
        }
    };
    let delims = Arc::clone(&state.delims);
    let found = state
        .db
        .memo(map as u8, key.to_owned(), move |db, k| {
            handler::lookup(db, map, k, &delims)
        })
        .await;
    match found {
        Ok(Some(v)) => {
            tracing::debug!(conn, seq, map = map.name(), key, value = %v, "found");
            Reply::Ok(v)
        }
        Ok(None) => {
            tracing::debug!(conn, seq, map = map.name(), key, "not found");
            Reply::NotFound
        }
        Err(e) => {
            tracing::warn!(conn, seq, map = map.name(), error = %e, "lookup failed; answering TEMP");
            Reply::Temp(if e.is_temporary() {
                "user database is locked".into()
            } else {
                "user database unavailable".into()
            })
        }
    }
}
