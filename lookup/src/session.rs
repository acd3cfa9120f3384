//! One connection: netstrings in, answers out, through the shared request loop
//! (`daemon::session`), which owns the timeouts and the shutdown rules.

use crate::State;
use crate::handler::{self, Map};
use crate::proto::{self, FrameError, MAX_REQUEST, Reply};
use daemon::Conn;
use daemon::session::{Decoder, Handler};
use std::sync::Arc;

pub(crate) async fn run(state: Arc<State>, conn: Conn) {
    let answers = Answers {
        state: Arc::clone(&state),
    };
    daemon::session::run(conn, &state.limits, Netstrings::default(), answers).await;
}

/// The netstring codec over a connection's buffer.
#[derive(Debug, Default)]
struct Netstrings {
    buf: Vec<u8>,
}

impl Decoder for Netstrings {
    type Frame = Vec<u8>;
    type Error = FrameError;

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some((payload, used)) = proto::decode(&self.buf, MAX_REQUEST)? else {
            return Ok(None);
        };
        let payload = payload.to_vec();
        self.buf.drain(..used);
        Ok(Some(payload))
    }

    fn buffered(&self) -> usize {
        self.buf.len()
    }
}

struct Answers {
    state: Arc<State>,
}

impl Handler<Vec<u8>> for Answers {
    async fn answer(&mut self, frame: Vec<u8>, out: &mut Vec<u8>) {
        let started = std::time::Instant::now();
        let (map, reply) = answer(&self.state, &frame).await;
        crate::metrics::answered(map, &reply, started.elapsed());
        if matches!(reply, Reply::Temp(_) | Reply::Perm(_)) {
            journal(&frame, &reply);
        }
        reply.encode(out);
    }

    fn temp_failure(&self, _frame: &Vec<u8>, out: &mut Vec<u8>) {
        Reply::Temp("internal error".into()).encode(out);
    }
}

/// The answer to one request, with the map it asked (if it named one we serve).
async fn answer(state: &State, payload: &[u8]) -> (Option<Map>, Reply) {
    let Ok(req) = proto::parse_request(payload) else {
        tracing::warn!("malformed request: expected \"map key\"");
        return (
            None,
            Reply::Perm("malformed request: expected \"map key\"".into()),
        );
    };
    let Some(map) = Map::from_name(req.map) else {
        tracing::warn!(map = ?req.map, "unknown map name");
        return (
            None,
            Reply::Perm(format!(
                "unknown map {:?}: this server answers domains, mailboxes, aliases, senders",
                req.map
            )),
        );
    };
    (Some(map), answer_key(state, map, req.key).await)
}

async fn answer_key(state: &State, map: Map, key: Option<&str>) -> Reply {
    let key = match key {
        Some(k) if !k.is_empty() => k,
        Some(_) => return Reply::NotFound,
        None => {
            // Every DB value is text, so no invalid UTF-8 key can match, as with sqlite:.
            tracing::debug!(map = map.name(), "key is not UTF-8; not found");
            return Reply::NotFound;
        }
    };
    let found = state
        .dir
        .current()
        .await
        .map(|dir| handler::lookup(&*dir, map, key, &state.delims));
    match found {
        Ok(Some(v)) => {
            tracing::debug!(map = map.name(), ?key, value = ?v, "found");
            Reply::Ok(v)
        }
        Ok(None) => {
            tracing::debug!(map = map.name(), ?key, "not found");
            Reply::NotFound
        }
        Err(e) => {
            tracing::warn!(map = map.name(), error = %e, "lookup failed; answering TEMP");
            Reply::Temp(if e.is_temporary() {
                "user database is locked".into()
            } else {
                "user database unavailable".into()
            })
        }
    }
}

/// A lookup Postfix could not get an answer to (it defers or bounces the mail for it), in
/// the journal, keyed by the address it asked about. Found and not-found answers are
/// Postfix's to log (`User unknown`, `orig_to=`).
fn journal(frame: &[u8], reply: &Reply) {
    if !daemon::journal::enabled() {
        return;
    }
    let (map, key) = match proto::parse_request(frame) {
        Ok(r) => (r.map.to_owned(), r.key.unwrap_or_default().to_lowercase()),
        Err(_) => ("?".to_owned(), String::new()),
    };
    let mut e = daemon::journal::JournalEntry::now("lookup", "lookup");
    e.detail = match reply {
        Reply::Temp(why) => format!("tempfail: {map} {key:?}: {why}"),
        Reply::Perm(why) => format!("permfail: {map} {key:?}: {why}"),
        _ => return,
    };
    e.recipient = key;
    daemon::journal::record(e);
}
