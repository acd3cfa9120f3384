//! One connection: the handshake first, then AUTH and CONT lines answered in order through the
//! shared request loop (`daemon::session`), which owns the timeouts and the shutdown rules.
//! Exchanges waiting for a CONT are kept per connection, bounded.
//!
//! On the checkpassword socket (`miab-checkpassword`, for Dovecot) an OK also carries the
//! userdb fields, USER answers userdb lookups, and a failure is answered at once: Dovecot
//! applies its own `auth_failure_delay`.

use crate::State;
use crate::handler::{self, Credentials, INSECURE_REASON, LOGIN_PASS_PROMPT, LOGIN_USER_PROMPT};
use crate::metrics;
use crate::proto::{self, Auth, Command, LineError, Lines, Reply};
use crate::verify::Verified;
use daemon::Conn;
use daemon::session::{Decoder, Handler};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which socket a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Socket {
    /// Postfix's: the auth-client protocol only.
    Postfix,
    /// `miab-checkpassword`'s.
    Checkpassword,
}

/// Exchanges one connection may leave waiting for their next step.
const MAX_PENDING: usize = 16384;

pub(crate) async fn run(state: Arc<State>, conn: Conn, socket: Socket) {
    let answers = Answers {
        socket,
        cuid: conn.id,
        state: Arc::clone(&state),
        pending: HashMap::new(),
        swept: Instant::now(),
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
    socket: Socket,
    cuid: u64,
    /// Exchanges waiting for their CONT, with when they started.
    pending: HashMap<u32, (Step, Auth, Instant)>,
    /// When expired exchanges were last swept out.
    swept: Instant,
}

impl Handler<Command> for Answers {
    fn greeting(&mut self, out: &mut Vec<u8>) {
        let s = &self.state;
        out.extend_from_slice(
            proto::handshake(&handler::MECHANISMS, s.pid, self.cuid, &s.cookie).as_bytes(),
        );
    }

    async fn answer(&mut self, cmd: Command, out: &mut Vec<u8>) {
        // Exchanges a client walked away from are forgotten, in one sweep a second at most.
        let ttl = self.state.exchange_timeout;
        if !self.pending.is_empty() && self.swept.elapsed() >= Duration::from_secs(1) {
            self.pending
                .retain(|_, (_, _, started)| started.elapsed() < ttl);
            self.swept = Instant::now();
        }
        // Command's Debug form leaves out SASL responses.
        tracing::debug!(command = ?cmd, "request");
        let reply = match cmd {
            Command::Version { .. } | Command::Cpid(_) => return,
            Command::Auth(auth) => self.start(auth).await,
            Command::Cont { id, data } => self.cont(id, &data).await,
            Command::User { id, login, service } => self.user(id, &login, &service).await,
        };
        let mut line = String::new();
        reply.encode(&mut line);
        out.extend_from_slice(line.as_bytes());
    }

    fn temp_failure(&self, cmd: &Command, out: &mut Vec<u8>) {
        let id = match cmd {
            Command::Auth(a) => a.id,
            Command::Cont { id, .. } | Command::User { id, .. } => *id,
            Command::Version { .. } | Command::Cpid(_) => return,
        };
        let mut line = String::new();
        Reply::Fail {
            id,
            temp: true,
            reason: None,
        }
        .encode(&mut line);
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
            metrics::authenticated(&auth.service, &auth.mech, metrics::Result_::unsupported);
            return fail("Unsupported authentication mechanism.");
        }
        if !handler::plaintext_allowed(
            auth.secured,
            &auth.local_ip,
            &auth.remote_ip,
            self.state.allow_insecure_plaintext,
        ) {
            tracing::info!(id, rip = ?auth.remote_ip, "plaintext authentication without TLS refused");
            metrics::authenticated(&auth.service, &auth.mech, metrics::Result_::insecure);
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
        self.pending.insert(id, (step.0, auth, Instant::now()));
        Reply::Cont {
            id,
            challenge: step.1.to_owned(),
        }
    }

    async fn cont(&mut self, id: u32, data: &str) -> Reply {
        let expired = |(_, _, started): &(Step, Auth, Instant)| {
            started.elapsed() >= self.state.exchange_timeout
        };
        let Some((step, auth, started)) = self.pending.remove(&id).filter(|p| !expired(p)) else {
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
                    self.pending
                        .insert(id, (Step::LoginPassword(user), auth, started));
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

    /// A userdb lookup (checkpassword socket only).
    async fn user(&self, id: u32, login: &str, service: &str) -> Reply {
        if self.socket != Socket::Checkpassword {
            return Reply::Fail {
                id,
                temp: false,
                reason: Some("USER lookups are served on the checkpassword socket only".into()),
            };
        }
        match self.state.account(&handler::fold_login(login)).await {
            Ok(Some(account)) => Reply::User {
                id,
                fields: self.state.userdb_fields(&account),
                user: account.email,
            },
            Ok(None) => Reply::NotFound { id },
            Err(e) => {
                tracing::warn!(id, service, error = %e, "user DB unavailable; temporary failure");
                Reply::Fail {
                    id,
                    temp: true,
                    reason: Some("Temporary authentication failure".into()),
                }
            }
        }
    }

    /// Verifies credentials and answers; a refusal waits `failure_delay` first.
    async fn finish(&self, auth: &Auth, creds: Result<Credentials, handler::SaslError>) -> Reply {
        let id = auth.id;
        let outcome = match creds {
            Ok(c) => {
                self.state
                    .verify(&c.login, c.password, &auth.remote_ip, &auth.service)
                    .await
            }
            Err(e) => {
                tracing::info!(id, rip = ?auth.remote_ip, error = %e, "malformed SASL response");
                Verified::No(String::new(), "malformed SASL response")
            }
        };
        match outcome {
            Verified::Yes(account, how) => {
                tracing::info!(id, user = ?account.email, rip = ?auth.remote_ip, service = ?auth.service, with = how, "authenticated");
                metrics::authenticated(&auth.service, &auth.mech, metrics::success(how));
                journal(auth, &account.email, || format!("ok: with {how}"));
                self.state.brake.succeeded(
                    auth.remote_ip.parse().ok(),
                    &handler::fold_login(&account.email),
                );
                let fields = match self.socket {
                    Socket::Postfix => Vec::new(),
                    Socket::Checkpassword => self.state.userdb_fields(&account),
                };
                Reply::Ok {
                    id,
                    user: account.email,
                    fields,
                }
            }
            Verified::No(login, why) => {
                tracing::info!(id, login = ?login, rip = ?auth.remote_ip, service = ?auth.service, reason = why, "authentication failed");
                metrics::authenticated(&auth.service, &auth.mech, metrics::Result_::failed);
                journal(auth, &login, || format!("failed: {why}"));
                if self.socket == Socket::Postfix {
                    tokio::time::sleep(self.state.failure_delay).await;
                }
                Reply::Fail {
                    id,
                    temp: false,
                    reason: None,
                }
            }
            Verified::Refused(login) => {
                tracing::info!(id, login = ?login, rip = ?auth.remote_ip, "refused while cooling off");
                metrics::authenticated(&auth.service, &auth.mech, metrics::Result_::braked);
                journal(auth, &login, || {
                    "braked: refused while the brake cools off (too many failures)".into()
                });
                Reply::Fail {
                    id,
                    temp: false,
                    reason: Some("Too many failed authentications; try again later.".into()),
                }
            }
            Verified::Temp(why) => {
                tracing::warn!(id, rip = ?auth.remote_ip, error = %why, "user DB unavailable; temporary failure");
                metrics::authenticated(&auth.service, &auth.mech, metrics::Result_::tempfail);
                journal(auth, "", || format!("tempfail: {why}"));
                Reply::Fail {
                    id,
                    temp: true,
                    reason: Some("Temporary authentication failure".into()),
                }
            }
        }
    }
}

/// Records an authentication's outcome in the journal, if one is kept: the login as given,
/// the client, the service and mechanism. Never the password.
fn journal(auth: &Auth, login: &str, detail: impl FnOnce() -> String) {
    if !daemon::journal::enabled() {
        return;
    }
    let mut e = daemon::journal::JournalEntry::now("authd", "login");
    e.login = handler::fold_login(login);
    e.client.clone_from(&auth.remote_ip);
    let detail = detail();
    let (head, rest) = detail.split_once(": ").unwrap_or((&detail, ""));
    e.detail = format!("{head}: {} {} {rest}", auth.service, auth.mech);
    daemon::journal::record(e);
}
