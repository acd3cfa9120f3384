//! One milter connection and the message in progress.
//!
//! Headers are kept (up to `max_header_bytes`), because DKIM needs them whole. The body is
//! never kept: when signing it streams through a bounded channel into a task that owns the
//! signer (mail-auth's streaming signer); when verifying it streams into one body hasher per
//! distinct (canonicalization, hash, length) the DKIM-Signature headers ask for. At the end,
//! mail-auth verifies the signatures against those body hashes.

//! - `author`: the From: of incoming mail as DMARC needs it (one header, readable domains).
//! - `canon`: RFC 6376 canonicalisation (bodies, relaxed headers) where mail-auth 0.13 differs.
//! - `from`: the From:/Sender: check for mail from an SMTP-AUTH session.
//! - `sign`: the signer task the body streams into.
//! - `verify`: the body hashers and the DKIM, SPF and DMARC checks at the end.

mod author;
mod canon;
pub(crate) mod from;
mod origin;
mod sign;
mod verify;

use crate::State;
use crate::results;
use directory::Directory;
use indymilter::{ContextActions, EomActions, SetErrorReply, SmtpReply, Status};
use mail_auth::AuthenticatedMessage;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use userdb::address::domain_lowercase;
use verify::{Hasher, cap_signatures};

/// What happens to the message in progress.
enum Work {
    /// Headers still coming.
    Headers,
    /// Neither signed nor verified.
    Pass,
    /// Streaming into the signer task.
    Sign {
        domain: String,
        tx: mpsc::Sender<Vec<u8>>,
        task: JoinHandle<Result<Vec<String>, String>>,
    },
    /// Streaming into body hashers; DMARC is evaluated for each author domain (with its
    /// From: addresses).
    Verify {
        hashers: Vec<Hasher>,
        authors: Vec<(String, Vec<String>)>,
    },
    /// Something failed before the end of the message, which is answered with tempfail.
    Failed,
}

/// An answer decided before the end of the message and given at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// 550 5.7.1 and the text.
    Permanent(String),
    /// 451 4.7.0 and the text.
    Temporary(String),
}

/// The connection's state (indymilter's per-connection data).
pub struct Session {
    state: Arc<State>,
    client: Option<IpAddr>,
    helo: String,
    sender: String,
    /// The SMTP AUTH login (`{auth_authen}`), if the session has one.
    login: Option<String>,
    /// The end-of-data refusal decided at the end of the headers.
    refusal: Option<Refusal>,
    headers: Vec<u8>,
    overflow: bool,
    /// Authentication-Results headers seen, and the indices (1-based) of those claiming our
    /// authserv-id.
    ar_seen: i32,
    ar_forged: Vec<i32>,
    /// Where the message came from, for unauthenticated local mail.
    evidence: origin::Evidence,
    work: Work,
    /// The MTA takes no answer before end-of-message.
    quiet: bool,
    /// `milter{conn client}`, for the connection's log lines.
    conn_span: tracing::Span,
    /// `msg{qid}` below it, for the message in progress.
    span: tracing::Span,
    /// The connection's number, and the message's within it (the journal's `instance`).
    conn: u64,
    messages: u64,
    /// Postfix's queue id of the message in progress, if known.
    qid: String,
}

impl Session {
    pub(crate) fn new(state: Arc<State>, quiet: bool, conn: u64) -> Session {
        let conn_span = tracing::info_span!("milter", conn, client = tracing::field::Empty);
        Session {
            span: conn_span.clone(),
            conn_span,
            state,
            client: None,
            helo: String::new(),
            sender: String::new(),
            login: None,
            refusal: None,
            headers: Vec::new(),
            overflow: false,
            ar_seen: 0,
            ar_forged: Vec::new(),
            evidence: origin::Evidence::default(),
            work: Work::Headers,
            quiet,
            conn,
            messages: 0,
            qid: String::new(),
        }
    }

    /// The answer of every stage before end-of-message.
    pub(crate) fn carry_on(&self) -> Status {
        if self.quiet {
            Status::Noreply
        } else {
            Status::Continue
        }
    }

    pub(crate) fn connect(&mut self, ip: IpAddr) {
        self.client = Some(ip);
        self.conn_span.record("client", tracing::field::display(ip));
    }

    /// The span the current stage's log lines belong to.
    pub(crate) fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    pub(crate) fn helo(&mut self, helo: &str) {
        self.helo = helo.to_owned();
    }

    /// MAIL FROM starts a message.
    pub(crate) fn mail(&mut self, sender: &str, login: Option<String>) {
        self.abort();
        self.messages += 1;
        self.qid.clear();
        self.span =
            tracing::info_span!(parent: &self.conn_span, "msg", qid = tracing::field::Empty);
        self.sender = sender
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned();
        self.login = login;
    }

    /// Forgets the message in progress (the connection stays).
    pub(crate) fn abort(&mut self) {
        if let Work::Sign { task, .. } = std::mem::replace(&mut self.work, Work::Headers) {
            task.abort();
        }
        self.headers = Vec::new();
        self.overflow = false;
        self.ar_seen = 0;
        self.ar_forged.clear();
        self.evidence = origin::Evidence::default();
        self.refusal = None;
    }

    /// One header as Postfix sends it (value byte-exact with its leading space; folded lines
    /// separated by bare LF, which DKIM needs as CRLF).
    pub(crate) fn header(&mut self, name: &[u8], value: &[u8]) {
        let name_trimmed = name.trim_ascii();
        if name_trimmed.eq_ignore_ascii_case(b"Authentication-Results") {
            self.ar_seen += 1;
            let value = String::from_utf8_lossy(value);
            if results::claims_authserv_id(&value, &self.state.hostname) {
                self.ar_forged.push(self.ar_seen);
                self.evidence.our_results();
            }
        } else if name_trimmed.eq_ignore_ascii_case(b"Auto-Submitted") {
            self.evidence
                .auto_submitted(&String::from_utf8_lossy(value));
        }
        if self.overflow {
            return;
        }
        if self.headers.len() + name.len() + value.len() + 3 > self.state.max_header_bytes {
            self.overflow = true;
            self.headers = Vec::new();
            return;
        }
        self.headers.extend_from_slice(name);
        self.headers.push(b':');
        let mut prev = 0u8;
        for &b in value {
            if b == b'\n' && prev != b'\r' {
                self.headers.push(b'\r');
            }
            self.headers.push(b);
            prev = b;
        }
        self.headers.extend_from_slice(b"\r\n");
    }

    fn internal(&self) -> bool {
        self.login.is_some() || self.client.is_some_and(|ip| self.state.is_trusted(ip))
    }

    /// Postfix's queue id (`{i}`, known once the queue file exists: at the end of the
    /// headers, since smtpd opens it only after a valid RCPT), so one message can be followed
    /// from Postfix's log lines to ours.
    pub(crate) fn queue_id(&mut self, id: &str) {
        // Postfix's queue ids are letters and digits; anything else is not logged.
        let qid: String = id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect();
        if !qid.is_empty() {
            self.span.record("qid", tracing::field::display(&qid));
        }
        self.qid = qid;
    }

    /// Records a decision about the message in progress in the journal, if one is kept.
    fn journal(&self, event: &str, detail: impl FnOnce() -> String) {
        if !daemon::journal::enabled() {
            return;
        }
        let mut e = daemon::journal::JournalEntry::now("milter", event);
        e.queue_id.clone_from(&self.qid);
        e.instance = format!("milter.{}.{}", self.conn, self.messages);
        e.client = self.client.map(|ip| ip.to_string()).unwrap_or_default();
        e.sender = self.sender.to_lowercase();
        e.login = self.login.as_deref().unwrap_or_default().to_lowercase();
        e.detail = detail();
        daemon::journal::record(e);
    }

    /// What `from_header` makes of an address found wrong (`found`, the reply text): with
    /// `warn`, a log line; with `reject`, a log line and a refusal at end of data, and the
    /// stage ends (`Some`).
    fn foreign_from(&mut self, login: &str, found: String) -> Option<Status> {
        if self.state.from_header == from::Mode::Warn {
            tracing::warn!(login, "{found}; delivered (from_header = warn)");
            return None;
        }
        tracing::warn!(login, "{found}; refused");
        Some(self.refuse(Refusal::Permanent(found)))
    }

    /// Ends the stage with an answer for the end of the message; the body is not looked at.
    fn refuse(&mut self, refusal: Refusal) -> Status {
        self.refusal = Some(refusal);
        self.work = Work::Pass;
        self.carry_on()
    }

    /// Decides between signing, verifying and passing, and starts the body's journey.
    pub(crate) async fn end_of_headers(&mut self) -> Status {
        // The From: check applies to a session with a login (`from_header`).
        let login = self
            .login
            .clone()
            .filter(|_| self.state.from_header != from::Mode::Off);
        if self.overflow {
            // The headers were not kept, so the From: check cannot be made: it fails closed.
            if let Some(login) = &login
                && let Some(stop) = self.foreign_from(
                    login,
                    "the header block is too large to check the From: address".into(),
                )
            {
                return stop;
            }
            if !self.internal() && self.state.verify {
                // Unverified mail must not look like mail that had nothing to verify.
                tracing::warn!(
                    limit = self.state.max_header_bytes,
                    "header block too large to verify; asking the client to retry"
                );
                return self.refuse(Refusal::Temporary(
                    "the header block is larger than this server verifies".into(),
                ));
            }
            tracing::warn!(
                limit = self.state.max_header_bytes,
                "headers too large; message passed unsigned"
            );
            self.work = Work::Pass;
            return self.carry_on();
        }
        // The header block is complete: end it as a message does, so mail-auth can parse it
        // (and the signer take it) as is.
        self.headers.extend_from_slice(b"\r\n");
        if self.internal() {
            let msg = AuthenticatedMessage::parse(&self.headers);
            let from = msg.as_ref().and_then(|m| m.from.first()).cloned();
            let domain = from.as_deref().and_then(domain_lowercase);
            if login.is_none() && domain.is_none() {
                self.work = Work::Pass;
                return self.carry_on();
            }
            let dir = match self.state.dir.current().await {
                Ok(dir) => dir,
                Err(e) => {
                    tracing::warn!(error = %e, "user DB unavailable; asking the client to retry");
                    self.work = Work::Failed;
                    return self.carry_on();
                }
            };
            if let Some(login) = &login {
                let found = from::check(&*dir, login, msg.as_ref(), &self.state.delims)
                    .map(|f| f.reply(login));
                if let Some(found) = found
                    && let Some(stop) = self.foreign_from(login, found)
                {
                    return stop;
                }
            }
            // Without a login (whatever `from_header` says about the check above).
            if self.login.is_none()
                && let Some(domain) = domain.as_deref().filter(|d| dir.is_mail_domain(d))
            {
                let local = origin::Local {
                    domain,
                    from: from.as_deref().unwrap_or_default(),
                    null_sender: self.sender.is_empty(),
                    own_domains: &self.state.own_domains,
                };
                if let Err(why) = origin::may_sign(local, &self.evidence, |a| {
                    dir.is_mailbox(a, &self.state.delims)
                }) {
                    tracing::warn!(domain, sender = ?self.sender, "{}", why.why());
                    self.work = Work::Pass;
                    return self.carry_on();
                }
            }
            match domain {
                Some(domain) if dir.is_mail_domain(&domain) => self.start_signing(domain).await,
                Some(domain) => {
                    tracing::debug!(?domain, "From: domain is not ours; not signed");
                    self.work = Work::Pass;
                }
                None => self.work = Work::Pass,
            }
            return self.carry_on();
        }
        if !self.state.verify {
            self.work = Work::Pass;
            return self.carry_on();
        }
        // Signatures with l= are parsed too (mail-auth's strict parse refuses them); the
        // body they cover is judged at the end.
        let Some(mut msg) = AuthenticatedMessage::parse_with_opts(&self.headers, None, false)
        else {
            return self.refuse(Refusal::Permanent(author::NoAuthor::Missing.reply()));
        };
        let authors = match author::domains(&msg) {
            Ok(a) => a,
            Err(e) => {
                let text = e.reply();
                tracing::warn!("{text}; refused");
                return self.refuse(Refusal::Permanent(text));
            }
        };
        cap_signatures(&mut msg, self.state.max_signatures);
        let hashers = msg
            .body_hashes
            .iter()
            .map(|(c, h, l, _)| Hasher::new(*c, *h, *l))
            .collect();
        self.work = Work::Verify { hashers, authors };
        self.carry_on()
    }

    pub(crate) async fn body(&mut self, chunk: &[u8]) -> Status {
        match &mut self.work {
            Work::Sign { tx, .. } => {
                if tx.send(chunk.to_vec()).await.is_err() {
                    tracing::error!("signer stopped early");
                    self.work = Work::Failed;
                }
            }
            Work::Verify { hashers, .. } => {
                for h in hashers {
                    h.write(chunk);
                }
            }
            Work::Headers | Work::Pass | Work::Failed => {}
        }
        self.carry_on()
    }

    pub(crate) async fn end_of_message(
        &mut self,
        actions: &EomActions,
        reply: &mut SmtpReply,
    ) -> Status {
        // Forged results go first, while the indices still count only the headers that came
        // with the message (Postfix counts the ones we insert too).
        for index in self.ar_forged.iter().rev() {
            if let Err(e) = actions
                .change_header("Authentication-Results", *index, None::<&str>)
                .await
            {
                tracing::warn!(error = %e, "could not remove a forged Authentication-Results");
            }
        }
        let work = std::mem::replace(&mut self.work, Work::Headers);
        match self.refusal.take() {
            Some(Refusal::Permanent(text)) => {
                self.journal("refused", || format!("reject: 550 5.7.1 {text}"));
                let _ = reply.set_error_reply("550", Some("5.7.1"), [text]);
                self.abort();
                return Status::Reject;
            }
            Some(Refusal::Temporary(text)) => {
                self.journal("refused", || format!("tempfail: 451 4.7.0 {text}"));
                let _ = reply.set_error_reply("451", Some("4.7.0"), [text]);
                self.abort();
                return Status::Tempfail;
            }
            None => {}
        }
        let status = match work {
            Work::Sign { domain, tx, task } => {
                drop(tx);
                match task.await {
                    Ok(Ok(sigs)) => {
                        let made = sigs.len() as u64;
                        for sig in sigs {
                            if let Err(e) = actions
                                .insert_header(0, "DKIM-Signature", format!(" {sig}"))
                                .await
                            {
                                tracing::error!(error = %e, "could not add DKIM-Signature");
                                return Status::Tempfail;
                            }
                        }
                        tracing::info!(?domain, "signed");
                        crate::metrics::signed(crate::metrics::Signing::signed, made);
                        self.journal("signed", || {
                            format!("signed: {made} DKIM signature(s) for {domain}")
                        });
                        Status::Continue
                    }
                    Ok(Err(e)) => {
                        tracing::error!(domain, error = %e, "signing failed; asking the client to retry");
                        crate::metrics::signed(crate::metrics::Signing::failed, 1);
                        self.journal("signed", || {
                            format!("failed: signing for {domain}: {e}; the client retries")
                        });
                        Status::Tempfail
                    }
                    Err(e) => {
                        tracing::error!(domain, error = %e, "signer task failed");
                        Status::Tempfail
                    }
                }
            }
            Work::Verify { hashers, authors } => {
                self.verify(hashers, &authors, actions, reply).await
            }
            Work::Headers | Work::Pass => Status::Continue,
            Work::Failed => Status::Tempfail,
        };
        self.abort();
        status
    }
}
