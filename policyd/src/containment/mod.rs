//! The `containment` check: every recipient of every message from an authenticated login is
//! counted in the sending DB (`userdb::sending`), and a login that sends far past its own
//! history has its mail held (Postfix's `HOLD`: kept in the hold queue, neither sent nor
//! lost) until an administrator releases or suspends it. The start of a hold is one log line
//! and one notice to the administrator, at most one per login per hour.
//!
//! Mail from a login suspended while its SMTP session was open is refused outright.

mod notice;

use crate::handler::Verdict;
use crate::proto::Request;
use crate::settings::ContainmentSettings;
use notice::Notice;
use std::sync::{Arc, Mutex, PoisonError};
use userdb::sending::{Decision, NewHold, Rule, Sending};
use userdb::{Directory, Snapshot};

/// The check's settings and its DB.
#[derive(Debug)]
pub struct Containment {
    db: Arc<Mutex<Sending>>,
    rule: Rule,
    exempt: Vec<String>,
    action: String,
    notice: Option<Notice>,
}

/// Why the check could not decide.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failed(pub String);

impl Containment {
    /// Opens the sending DB.
    pub fn open(s: &ContainmentSettings, hostname: &str) -> userdb::Result<Containment> {
        let db = Sending::open(s.db())?;
        db.set_rule(&s.rule())?;
        Ok(Containment {
            db: Arc::new(Mutex::new(db)),
            rule: s.rule(),
            exempt: s.exempt_logins.iter().map(|l| l.to_lowercase()).collect(),
            action: s.action.as_str().to_owned(),
            notice: s.notify_to().map(|to| Notice {
                to: to.to_owned(),
                smtp: s.notify_smtp,
                hostname: hostname.to_owned(),
            }),
        })
    }

    /// The verdict for one request; `new_message` for the first recipient of a message.
    pub async fn check(
        &self,
        req: &Request,
        dir: &Snapshot,
        new_message: bool,
    ) -> Result<Verdict, Failed> {
        if !req.is_authenticated() || req.recipient.is_empty() {
            return Ok(Verdict::Dunno);
        }
        let login = req.sasl_username.to_lowercase();
        if dir.user(&login).is_some_and(|u| dir.suspended(u.id)) {
            tracing::info!(login = ?login, client = ?req.client_address,
                "mail from a suspended login; rejected");
            return Ok(Verdict::Stop(format!(
                "554 5.7.1 {} is suspended",
                printable(&login)
            )));
        }
        let enforce = !self.exempt.contains(&login);
        let (db, rule, recipient) = (Arc::clone(&self.db), self.rule, req.recipient.clone());
        let who = login.clone();
        let decision = tokio::task::spawn_blocking(move || {
            let mut db = db.lock().unwrap_or_else(PoisonError::into_inner);
            db.record(
                &rule,
                &who,
                &recipient,
                new_message,
                enforce,
                userdb::clock::unix_now(),
            )
        })
        .await
        .map_err(|e| Failed(format!("sending DB task: {e}")))?
        .map_err(|e| Failed(e.to_string()))?;
        match decision {
            Decision::Send => Ok(Verdict::Dunno),
            Decision::Hold { newly } => {
                if let Some(h) = newly {
                    self.started(&login, req, &h);
                }
                Ok(Verdict::Stop(self.action.clone()))
            }
        }
    }

    /// The one log line, and the notice, for a hold that has just started.
    fn started(&self, login: &str, req: &Request, h: &NewHold) {
        tracing::warn!(login = ?login, client = ?req.client_address, reason = %h.reason,
            busiest_messages = h.busiest.messages, busiest_new_recipients = h.busiest.new_recipients,
            "sending far past the login's own history; its mail is held until `miabctl held release`");
        if let (Some(n), true) = (&self.notice, h.notify) {
            let n = n.clone();
            let (login, text) = (login.to_owned(), notice::text(&n, login, req, h));
            tokio::spawn(async move {
                if let Err(e) = n.send(&text).await {
                    tracing::warn!(login = ?login, to = %n.to, error = %e,
                        "the notice to the administrator could not be sent");
                }
            });
        }
    }

    /// Forgets old figures (called now and then, off the request path).
    pub fn expire(&self) {
        if userdb::backup::held() {
            return;
        }
        let (db, rule) = (Arc::clone(&self.db), self.rule);
        tokio::task::spawn_blocking(move || {
            let mut db = db.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = db.expire(&rule, userdb::clock::unix_now()) {
                tracing::warn!(error = %e, "sending DB expiry failed");
            }
        });
    }
}

/// `s` with anything but printable ASCII replaced by `?`, at most 200 characters: logins and
/// client names come from the network.
fn printable(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}
