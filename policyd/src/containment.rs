//! The `containment` check: every recipient of every message from an authenticated login is
//! counted in the sending DB (`userdb::sending`), and a login that sends far past its own
//! history has its mail held (Postfix's `HOLD`: kept in the hold queue, neither sent nor
//! lost) until an administrator releases or suspends it. The start of a hold is one log line
//! and one notice to the administrator, at most one per login per hour.
//!
//! Mail from a login suspended while its SMTP session was open is refused outright.

use crate::handler::Verdict;
use crate::proto::Request;
use crate::settings::ContainmentSettings;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use userdb::sending::{Decision, NewHold, Rule, Sending};
use userdb::{Directory, Snapshot};

/// How long the notice program may take.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(30);

/// The check's settings and its DB.
#[derive(Debug)]
pub struct Containment {
    db: Arc<Mutex<Sending>>,
    rule: Rule,
    exempt: Vec<String>,
    action: String,
    notice: Option<Notice>,
}

/// Where notices go.
#[derive(Debug, Clone)]
struct Notice {
    to: String,
    command: Vec<String>,
    hostname: String,
}

/// Why the check could not decide.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failed(pub String);

impl Containment {
    /// Opens the sending DB.
    pub fn open(s: &ContainmentSettings, hostname: &str) -> userdb::Result<Containment> {
        Ok(Containment {
            db: Arc::new(Mutex::new(Sending::open(s.db())?)),
            rule: s.rule(),
            exempt: s.exempt_logins.iter().map(|l| l.to_lowercase()).collect(),
            action: s.action.as_str().to_owned(),
            notice: s.notify_to().map(|to| Notice {
                to: to.to_owned(),
                command: s.notify_command.clone(),
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
            let (login, text) = (login.to_owned(), notice_text(&n, login, req, h));
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

impl Notice {
    async fn send(&self, text: &str) -> std::io::Result<()> {
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| std::io::Error::other("no notice program"))?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .args(["-f", &self.to, &self.to])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        let run = async {
            stdin.write_all(text.as_bytes()).await?;
            drop(stdin);
            child.wait_with_output().await
        };
        let out = tokio::time::timeout(NOTICE_TIMEOUT, run)
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(std::io::Error::other(format!(
                "{}: {}",
                out.status,
                printable(err.trim())
            )))
        }
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

/// The notice: MIAB's own administrator mail's headers (`email_administrator.py`), the
/// figures, and what to do.
fn notice_text(n: &Notice, login: &str, req: &Request, h: &NewHold) -> String {
    let login = printable(login);
    let host = printable(&n.hostname);
    format!(
        "From: \"{host}\" <{to}>\r\nTo: {to}\r\nSubject: [{host}] Outgoing mail from {login} is held\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\nAuto-Submitted: auto-generated\r\n\r\n\
         miab-policyd put the outgoing mail of {login} on hold: {reason}.\r\n\
         Its busiest hour of the last weeks: {bm} messages, {bn} new recipients.\r\n\
         Last client: {client}. Sender: {sender}.\r\n\r\n\
         Nothing is sent or lost while the login is held; its mail waits in Postfix's hold queue.\r\n\r\n\
         If the mail is the user's own:   miabctl held release {login}\r\n\
         If the account is stolen:        miabctl user suspend {login}\r\n\
         \x20 (then change its password; postsuper -d deletes held mail)\r\n\
         To see every held login:         miabctl held\r\n",
        to = printable(&n.to),
        reason = printable(&h.reason),
        bm = h.busiest.messages,
        bn = h.busiest.new_recipients,
        client = printable(&req.client_address),
        sender = printable(&req.sender),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use userdb::sending::Figures;

    #[test]
    fn the_notice_is_plain_and_escapes_what_came_from_the_network() {
        let n = Notice {
            to: "administrator@box.example.com".into(),
            command: vec![],
            hostname: "box.example.com".into(),
        };
        let req = Request {
            client_address: "192.0.2.1".into(),
            sender: "x@y\r\nBcc: victim@z".into(),
            ..Request::default()
        };
        let h = NewHold {
            reason: "51 new recipients in the last hour (limit 50)".into(),
            last_hour: Figures::default(),
            busiest: Figures {
                messages: 5,
                new_recipients: 2,
            },
            limits: Figures::default(),
            notify: true,
        };
        let text = notice_text(&n, "me@example.com\nBcc: a@b", &req, &h);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(head.lines().count(), 6, "{head}");
        assert!(head.contains(
            "Subject: [box.example.com] Outgoing mail from me@example.com?Bcc: a@b is held"
        ));
        assert!(
            !body.contains("\r\nBcc:") && body.contains("Sender: x@y??Bcc: victim@z."),
            "{body}"
        );
        assert!(body.contains("miabctl held release me@example.com?Bcc: a@b"));
    }
}
