//! `miab-lookup`: Postfix's socketmap protocol over the Mail-in-a-Box user DB, answering the
//! `domains`, `mailboxes`, `aliases` and `senders` maps exactly as MIAB's `sqlite:` tables do
//! together with Postfix's partial-key lookups.
//!
//! - [`proto`]: the netstring codec, without I/O.
//! - [`handler`]: the answers, as plain functions over the DB.
//! - `session`: one connection's read-answer-write loop.
//! - [`run`]: serves a listener until shutdown.

pub mod handler;
pub mod proto;
mod session;

use daemon::{Config, Limits, Listener, Shutdown};
use std::sync::Arc;
use userdb::{AsyncUserDb, Delimiters, HandleConfig};

/// What every connection shares.
#[derive(Debug)]
pub struct State {
    db: AsyncUserDb,
    delims: Arc<Delimiters>,
    limits: Limits,
}

impl State {
    /// A state over an open DB handle.
    pub fn new(db: AsyncUserDb, delims: Delimiters, limits: Limits) -> State {
        State {
            db,
            delims: Arc::new(delims),
            limits,
        }
    }

    /// Opens the DB named by `config`. A missing or foreign DB is an error here, at start-up,
    /// rather than a stream of TEMP answers.
    pub fn open(config: &Config) -> userdb::Result<State> {
        let handle = HandleConfig {
            max_connections: config.lookup.db_connections.max(1),
            busy_timeout: config.db_busy_timeout(),
            memo_entries: config.lookup.cache_entries,
            ..HandleConfig::default()
        };
        let db = AsyncUserDb::open(config.db_path(), handle)?;
        Ok(State::new(
            db,
            Delimiters::new(config.recipient_delimiter.clone()),
            config.lookup.limits(),
        ))
    }
}

/// Serves `listener` until `shutdown` fires, then drains.
pub async fn run(listener: Listener, state: Arc<State>, shutdown: Shutdown) -> std::io::Result<()> {
    let limits = state.limits.clone();
    daemon::serve(listener, &limits, shutdown, move |conn| {
        session::run(Arc::clone(&state), conn)
    })
    .await
}

/// The fuzz target's body: decode frames and requests from arbitrary bytes and encode replies,
/// checking the codec's own invariants.
pub fn fuzz_decode(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((payload, used))) = proto::decode(rest, proto::MAX_REQUEST) {
        assert!(payload.len() <= proto::MAX_REQUEST && used > payload.len() && used <= rest.len());
        if let Ok(req) = proto::parse_request(payload) {
            let mut out = Vec::new();
            proto::Reply::Ok(req.key.unwrap_or_default().to_owned()).encode(&mut out);
            let (echo, n) = proto::decode(&out, proto::MAX_REPLY).unwrap().unwrap();
            assert_eq!(n, out.len());
            assert!(
                echo.starts_with(b"OK ")
                    || echo.starts_with(b"NOTFOUND")
                    || echo.starts_with(b"PERM")
            );
        }
        rest = &rest[used..];
    }
}
