//! One Postfix connection: the handshake first, then AUTH and CONT lines answered in order
//! through the shared request loop (`daemon::session`), which owns the timeouts and the
//! shutdown rules. Exchanges waiting for a CONT are kept per connection, bounded.

use crate::State;
use crate::guard;
use crate::handler::{self, Credentials, INSECURE_REASON, LOGIN_PASS_PROMPT, LOGIN_USER_PROMPT};
use crate::proto::{self, Auth, Command, LineError, Lines, Reply};
use daemon::Conn;
use daemon::session::{Decoder, Handler};
use std::collections::HashMap;
use std::sync::Arc;
use userdb::Password;

/// The memo kind for user rows in the DB handle.
const MEMO_USER: u8 = 1;

/// Exchanges one connection may leave waiting for their next step.
const MAX_PENDING: usize = 16384;

pub(crate) async fn run(state: Arc<State>, conn: Conn) {
    let answers = Answers {
        cuid: conn.id,
        state: Arc::clone(&state),
        pending: HashMap::new(),
    };
    daemon::session::run(conn, &state.limits, Commands::default(), answers).await;
}

/// Lines in, parsed commands out.
#[derive(Debug, Default)]
struct Commands {
    lines: Lines,
}

impl Decoder for Commands {
    type Frame = Command;
    type Error = LineError;

    fn push(&mut self, bytes: &[u8]) {
        self.lines.push(bytes);
    }

    fn next_frame(&mut self) -> Result<Option<Command>, LineError> {
        self.lines
            .next_line()?
            .map(|l| proto::parse(&l))
            .transpose()
    }

    fn buffered(&self) -> usize {
        self.lines.buffered()
    }
}

/// Where a multi-step exchange stands.
enum Step {
    /// PLAIN sent without an initial response: the next CONT carries it.
    Plain,
    /// LOGIN waiting for the username.
    LoginUser,
    /// LOGIN waiting for the password of this user.
    LoginPassword(String),
}

struct Answers {
    state: Arc<State>,
    cuid: u64,
    pending: HashMap<u32, (Step, Auth)>,
}

impl Handler<Command> for Answers {
    fn greeting(&mut self, out: &mut Vec<u8>) {
        let s = &self.state;
        out.extend_from_slice(
            proto::handshake(&handler::MECHANISMS, s.pid, self.cuid, &s.cookie).as_bytes(),
        );
    }

    async fn answer(&mut self, cmd: Command, _seq: u64, out: &mut Vec<u8>) {
        let reply = match cmd {
            Command::Version { .. } | Command::Cpid(_) => return,
            Command::Auth(auth) => self.start(auth).await,
            Command::Cont { id, data } => self.cont(id, &data).await,
        };
        let mut line = String::new();
        reply.encode(&mut line);
        out.extend_from_slice(line.as_bytes());
    }
}

impl Answers {
    async fn start(&mut self, auth: Auth) -> Reply {
        let id = auth.id;
        let fail = |reason: &str| Reply::Fail {
            id,
            temp: false,
            reason: Some(reason.to_owned()),
        };
        if self.pending.contains_key(&id) {
            return fail("request id already in use");
        }
        if !handler::MECHANISMS.contains(&auth.mech.as_str()) {
            return fail("Unsupported authentication mechanism.");
        }
        if !handler::plaintext_allowed(
            auth.secured,
            &auth.local_ip,
            &auth.remote_ip,
            self.state.allow_insecure_plaintext,
        ) {
            tracing::info!(cuid = self.cuid, id, rip = %auth.remote_ip, "plaintext authentication without TLS refused");
            return fail(INSECURE_REASON);
        }
        let step = match (auth.mech.as_str(), auth.resp.as_deref()) {
            ("PLAIN", Some(resp)) => {
                let creds = handler::plain(resp);
                return self.finish(&auth, creds).await;
            }
            ("PLAIN", None) => (Step::Plain, ""),
            (_, Some(resp)) => match handler::login_user(resp) {
                Ok(user) => (Step::LoginPassword(user), LOGIN_PASS_PROMPT),
                Err(e) => return self.finish(&auth, Err(e)).await,
            },
            (_, None) => (Step::LoginUser, LOGIN_USER_PROMPT),
        };
        if self.pending.len() >= MAX_PENDING {
            return Reply::Fail {
                id,
                temp: true,
                reason: Some("too many authentications in progress".into()),
            };
        }
        self.pending.insert(id, (step.0, auth));
        Reply::Cont {
            id,
            challenge: step.1.to_owned(),
        }
    }

    async fn cont(&mut self, id: u32, data: &str) -> Reply {
        let Some((step, auth)) = self.pending.remove(&id) else {
            return Reply::Fail {
                id,
                temp: false,
                reason: Some("unknown authentication request".into()),
            };
        };
        let creds = match step {
            Step::Plain => handler::plain(data),
            Step::LoginUser => match handler::login_user(data) {
                Ok(user) => {
                    self.pending.insert(id, (Step::LoginPassword(user), auth));
                    return Reply::Cont {
                        id,
                        challenge: LOGIN_PASS_PROMPT.to_owned(),
                    };
                }
                Err(e) => Err(e),
            },
            Step::LoginPassword(user) => handler::login_password(user, data),
        };
        self.finish(&auth, creds).await
    }

    /// Verifies credentials and answers; a refusal waits `failure_delay` first.
    async fn finish(&self, auth: &Auth, creds: Result<Credentials, handler::SaslError>) -> Reply {
        let id = auth.id;
        let outcome = match creds {
            Ok(c) => {
                self.state
                    .verify(&c.login, c.password, &auth.remote_ip)
                    .await
            }
            Err(e) => {
                tracing::info!(cuid = self.cuid, id, rip = %auth.remote_ip, error = %e, "malformed SASL response");
                Verified::No(String::new())
            }
        };
        match outcome {
            Verified::Yes(user) => {
                tracing::info!(cuid = self.cuid, id, user = %user, rip = %auth.remote_ip, service = %auth.service, "authenticated");
                Reply::Ok { id, user }
            }
            Verified::No(login) => {
                tracing::info!(cuid = self.cuid, id, login = %login, rip = %auth.remote_ip, service = %auth.service, "authentication failed");
                tokio::time::sleep(self.state.failure_delay).await;
                Reply::Fail {
                    id,
                    temp: false,
                    reason: None,
                }
            }
            Verified::Refused(login) => {
                tracing::info!(cuid = self.cuid, id, login = %login, rip = %auth.remote_ip, "refused while cooling off");
                Reply::Fail {
                    id,
                    temp: false,
                    reason: Some("Too many failed authentications; try again later.".into()),
                }
            }
            Verified::Temp(why) => {
                tracing::warn!(cuid = self.cuid, id, rip = %auth.remote_ip, error = %why, "user DB unavailable; temporary failure");
                Reply::Fail {
                    id,
                    temp: true,
                    reason: Some("Temporary authentication failure".into()),
                }
            }
        }
    }
}

/// What a verification found.
pub(crate) enum Verified {
    /// The canonical address from the DB.
    Yes(String),
    /// Wrong password or no such user (the folded login, for the log).
    No(String),
    /// The client or the login is cooling off after too many failures (the folded login).
    Refused(String),
    /// The DB could not answer.
    Temp(String),
}

impl State {
    /// Checks a login and password against the user DB.
    pub(crate) async fn verify(&self, login: &str, password: Password, rip: &str) -> Verified {
        let key = handler::fold_login(login);
        let ip = rip.parse().ok();
        if self.brake.check(ip, &key).is_some() {
            return Verified::Refused(key);
        }
        // The user's row, remembered until the DB file changes (see AsyncUserDb::memo): a
        // repeated login touches neither SQLite nor the blocking pool.
        let row = self
            .db
            .memo(MEMO_USER, key.clone(), |db, k| {
                Ok(db
                    .user(k)?
                    .map(|u| format!("{}\n{}", u.email, u.password_hash)))
            })
            .await;
        let user = match row {
            Ok(u) => u.and_then(|r| {
                r.split_once('\n')
                    .map(|(e, h)| (e.to_owned(), h.to_owned()))
            }),
            Err(e) => return Verified::Temp(e.to_string()),
        };
        if let Some((email, hash)) = &user
            && self.cache.hit(&key, password.expose(), hash)
        {
            return Verified::Yes(email.clone());
        }
        // An unknown user costs a hash as well, so timing does not tell which logins exist.
        let (email, hash) = match user {
            Some((e, h)) => (Some(e), h),
            None => (None, self.decoy_hash.clone()),
        };
        let remember = password.clone();
        let good = self.db.verify_password(password, hash.clone()).await;
        match email {
            Some(email) if good => {
                self.cache.insert(&key, remember.expose(), &hash);
                Verified::Yes(email)
            }
            _ => {
                for b in self.brake.failed(ip, &key) {
                    // One line per block, in a fixed shape fail2ban can match.
                    match b {
                        guard::Blocked::Ip(net) => tracing::warn!(
                            "authentication brake: too many failures from rip={net}, refused for {} s",
                            self.brake.cooloff().as_secs()
                        ),
                        guard::Blocked::Login(l) => tracing::warn!(
                            "authentication brake: too many failures for login={l} (last rip={rip}), refused for {} s",
                            self.brake.cooloff().as_secs()
                        ),
                    }
                }
                Verified::No(key)
            }
        }
    }
}
