//! `miab-lookup`: Postfix's socketmap protocol over the Mail-in-a-Box user DB, answering the
//! `domains`, `mailboxes`, `aliases` and `senders` maps exactly as MIAB's `sqlite:` tables do
//! together with Postfix's partial-key lookups.
//!
//! - [`settings`]: the `[lookup]` section.
//! - [`proto`]: the netstring codec, without I/O.
//! - [`handler`]: the answers, as plain functions over the directory.
//! - `session`: one connection's read-answer-write loop.
//! - [`run`]: serves a listener until shutdown.

pub mod handler;
pub mod metrics;
pub mod proto;
mod session;
pub mod settings;

use daemon::{Config, Limits, Listener, Shutdown};
use directory::Live;
use std::sync::Arc;
use userdb::Delimiters;

/// What every connection shares.
#[derive(Debug)]
pub struct State {
    dir: Live,
    delims: Arc<Delimiters>,
    limits: Limits,
    /// On the host that publishes the directory to the store: the mirror.
    publisher: Option<directory::pg::Publisher>,
}

impl State {
    /// A state over an open directory.
    pub fn new(dir: Live, delims: Delimiters, limits: Limits) -> State {
        State {
            dir,
            delims: Arc::new(delims),
            limits,
            publisher: None,
        }
    }

    /// Opens the directory `config` names (MIAB's file, or the store's mirror). A missing or
    /// foreign DB is an error here, at start-up, rather than a stream of TEMP answers. On the
    /// host that publishes the directory to the store, the publisher runs here too.
    pub async fn open(config: &Config, server: &daemon::Server) -> userdb::Result<State> {
        let (dir, pg) = daemon::open_directory(config).await?;
        let mut state = State::new(
            dir,
            Delimiters::new(config.recipient_delimiter.clone()),
            server.limits.clone(),
        );
        if let Some(pg) = pg.filter(|_| config.store.publish) {
            state.publisher = Some(directory::pg::Publisher::start(
                &config.db_path(),
                config.db_busy_timeout(),
                pg,
            )?);
        }
        Ok(state)
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

/// The body of the fuzz target for the key handling between the codec and the reply: any
/// key, as Postfix would send it (case, `+ext`, IDNA, bytes that are not UTF-8), looked up in
/// every map of `dir` answers found or not found, never panics, and a found value is one
/// line that fits a reply.
pub fn fuzz_lookup(dir: &directory::Snapshot, data: &[u8]) {
    let delims = Delimiters::new("+");
    let mut payload = b"aliases ".to_vec();
    payload.extend_from_slice(data);
    let Ok(req) = proto::parse_request(&payload) else {
        return;
    };
    let Some(key) = req.key else {
        return;
    };
    for map in [
        handler::Map::Domains,
        handler::Map::Mailboxes,
        handler::Map::Aliases,
        handler::Map::Senders,
    ] {
        if let Some(v) = handler::lookup(dir, map, key, &delims) {
            assert!(!v.is_empty() && !v.contains(['\n', '\r']), "{v:?}");
            let mut out = Vec::new();
            proto::Reply::Ok(v).encode(&mut out);
            assert!(proto::decode(&out, proto::MAX_REPLY).is_ok());
        }
    }
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

#[cfg(test)]
mod tests {
    /// The key handling over arbitrary bytes and Unicode against MIAB's fixture box.
    #[test]
    fn keys_on_pseudo_random_input() {
        let dir = miab_e2e::Scratch::new("lkf");
        let path = miab_e2e::fixture::miab_box(dir.path());
        let db = userdb::UserDb::open(&path, userdb::Access::ReadOnly).unwrap();
        let db = directory::Snapshot::read(&db).unwrap();
        let pieces: [&[u8]; 14] = [
            b"me",
            b"hello",
            b"@",
            b"example.com",
            b"catch.example",
            b"+",
            b"tag",
            b"Me",
            b"\xc3\xa4",
            b"xn--",
            b".",
            b"\xff",
            b" ",
            b"\xc4\xb0",
        ];
        miab_e2e::pseudo_random_inputs(&pieces, 2000, |d| crate::fuzz_lookup(&db, d));
    }
}
