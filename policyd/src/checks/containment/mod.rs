//! `containment`: every message from an authenticated login is counted in the
//! sending DB (`state::sending`) once Postfix has all of it (end of data), with the
//! recipients its RCPTs named, each alias counted by what it expands to; a login that sends
//! far past its own history has its mail held (Postfix's `HOLD`: kept in the hold queue,
//! neither sent nor lost) until an administrator releases or suspends it. The start of a hold
//! is one log line and one notice to the administrator, at most one per login per hour.
//!
//! At RCPT, a recipient is only noted for its message (in memory, bounded); a message that
//! never reaches end of data counts for nothing. Mail from a login suspended while its SMTP
//! session was open is refused at RCPT.
//!
//! The DB is written through the group commit all the sidecars' stores share
//! (`state::commit`): every waiting message goes into one transaction, each answered after the
//! commit.

mod notice;

use super::{Ask, Building, Check, ConnState, Failed, Shared, Stage};
use crate::StartError;
use crate::proto::Request;
use crate::settings::{self, ContainmentSettings};
use crate::verdict::{Action, Verdict};
use directory::{Directory, Snapshot};
use notice::Notice;
use state::commit::GroupCommit;
use state::pg::sending::PgSending;
use state::sending::{Decision, Message, NewHold, Recorder, Rule, Sending};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use userdb::Delimiters;

/// Messages whose recipients are noted at once at most; past this the oldest note goes (its
/// message then counts its recipients as new, by Postfix's `recipient_count`).
const MAX_PENDING: usize = 10_000;
/// Recipients noted per message at most, and for all messages together (memory stays a few
/// megabytes whatever a stolen login names); the rest count as new.
const MAX_LISTED: usize = 1_000;
const MAX_LISTED_ALL: usize = 100_000;
/// A note older than this is forgotten (Postfix's own data timeout is far shorter).
const PENDING_TTL: Duration = Duration::from_secs(3600);
/// Addresses one recipient may expand to, and alias levels followed (Postfix's own
/// `virtual_alias_expansion_limit` and a tenth of its recursion limit).
const EXPANSION_LIMIT: usize = 1000;
const RECURSION_LIMIT: usize = 100;

/// Messages recorded per transaction at most.
const BATCH: usize = 256;

/// The messages under way, by Postfix's `instance`, and how many addresses they list.
#[derive(Debug, Default)]
struct Notes {
    by_instance: HashMap<String, Pending>,
    listed: usize,
}

impl Notes {
    fn remove(&mut self, instance: &str) -> Option<Pending> {
        let p = self.by_instance.remove(instance)?;
        self.listed -= p.recipients.len();
        Some(p)
    }
}

/// The recipients noted for one message (by Postfix's `instance`) until its end of data.
#[derive(Debug)]
struct Pending {
    login: String,
    recipients: Vec<String>,
    unlisted: u64,
    since: Instant,
}

/// The check's settings and its DB.
#[derive(Debug)]
pub struct Containment {
    db: Record,
    pending: Mutex<Notes>,
    exempt: Vec<String>,
    action: settings::Action,
    notice: Option<Notice>,
}

pub const NAME: &str = "containment";

/// Where messages are counted: this host's file, through the group commit, or the store
/// several hosts share (one transaction per message, under the login's lock).
#[derive(Debug, Clone)]
enum Record {
    File(GroupCommit<Recorder<Sending>>),
    Shared(PgSending, Rule),
}

pub fn build(b: &mut Building<'_>) -> Result<Arc<dyn Check>, StartError> {
    let s = &b.settings.containment;
    let db = match &b.store {
        Some(pg) => {
            let store = PgSending::new(Arc::clone(pg));
            let rule = s.rule();
            // For `miabctl held`; the check itself needs no answer, so it is recorded in the
            // background, again until the store takes it.
            tokio::spawn({
                let store = store.clone();
                async move {
                    while let Err(e) = store.set_rule(&rule).await {
                        tracing::warn!(error = %e, "containment rule not recorded in the store; trying again");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            });
            Record::Shared(store, rule)
        }
        None => {
            b.report.sending_db = Some(s.db().to_owned());
            let rule = s.rule();
            let store = Sending::open(s.db()).map_err(StartError::Sending)?;
            store.set_rule(&rule).map_err(StartError::Sending)?;
            Record::File(GroupCommit::new(Recorder { store, rule }, BATCH))
        }
    };
    Ok(Arc::new(Containment::new(s, b.hostname, db)))
}

impl Check for Containment {
    fn name(&self) -> &'static str {
        NAME
    }
    fn stage(&self) -> Stage {
        Stage::Sender
    }
    fn about_login(&self) -> bool {
        true
    }
    fn at_end_of_data(&self) -> bool {
        true
    }
    fn fails_closed(&self) -> bool {
        true
    }

    fn decide<'a>(
        &'a self,
        ask: &'a Ask<'a>,
        shared: &'a Shared,
        _: &'a mut ConnState,
    ) -> super::Decision<'a> {
        Box::pin(async move {
            let Some(login) = &ask.login else {
                return Ok(Verdict::Dunno);
            };
            let dir = shared.snapshot().await?;
            self.check(ask.req, login.key(), &dir, &shared.delims).await
        })
    }

    fn tend_every(&self) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }

    fn tend(&self) {
        self.expire();
    }
}

impl Containment {
    /// The check over `db`.
    fn new(s: &ContainmentSettings, hostname: &str, db: Record) -> Containment {
        Containment {
            db,
            pending: Mutex::new(Notes::default()),
            exempt: s.exempt_logins.iter().map(|l| l.to_lowercase()).collect(),
            action: s.action.clone(),
            notice: s.notify_to().map(|to| Notice {
                to: to.to_owned(),
                smtp: s.notify_smtp,
                hostname: hostname.to_owned(),
            }),
        }
    }

    /// The verdict for one authenticated request: at RCPT (with a recipient) the recipient is
    /// noted for its message; at END-OF-MESSAGE the message is counted and decided.
    async fn check(
        &self,
        req: &Request,
        login: &str,
        dir: &Snapshot,
        delims: &Delimiters,
    ) -> Result<Verdict, Failed> {
        let login = login.to_owned();
        let Some(user) = dir.user(&login) else {
            // Postfix only names logins miab-authd let in, all of them users: any other name
            // is a request made up by someone else on the box, and must neither hold a real
            // login's mail nor notify the administrator, nor grow the sending DB.
            tracing::debug!(login = ?login, "login not in the user DB; not counted");
            return Ok(Verdict::Dunno);
        };
        if dir.suspended(user.id) {
            tracing::info!(login = ?login, client = ?req.client_address,
                "mail from a suspended login; rejected");
            return Ok(Verdict::Stop(Action::reply(
                554,
                "5.7.1",
                format!("{} is suspended", printable(&login)),
            )));
        }
        if req.protocol_state.eq_ignore_ascii_case("END-OF-MESSAGE") {
            return self.end_of_data(req, login).await;
        }
        if !req.recipient.is_empty() {
            self.note(req, &login, expand(dir, delims, &req.recipient));
        }
        Ok(Verdict::Dunno)
    }

    /// Notes `recipients` for the request's message.
    fn note(&self, req: &Request, login: &str, recipients: Vec<String>) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if pending.by_instance.len() >= MAX_PENDING
            && !pending.by_instance.contains_key(&req.instance)
        {
            let stale: Vec<String> = pending
                .by_instance
                .iter()
                .filter(|(_, p)| now.duration_since(p.since) >= PENDING_TTL)
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                pending.remove(&k);
            }
            if pending.by_instance.len() >= MAX_PENDING
                && let Some(oldest) = pending
                    .by_instance
                    .iter()
                    .min_by_key(|(_, p)| p.since)
                    .map(|(k, _)| k.clone())
            {
                pending.remove(&oldest);
            }
        }
        let Notes {
            by_instance,
            listed,
        } = &mut *pending;
        let p = by_instance
            .entry(req.instance.clone())
            .or_insert_with(|| Pending {
                login: login.to_owned(),
                recipients: Vec::new(),
                unlisted: 0,
                since: now,
            });
        if p.login != login {
            // One message, one login: a made-up request must not add to another's message.
            return;
        }
        for r in recipients {
            if p.recipients.len() < MAX_LISTED && *listed < MAX_LISTED_ALL {
                p.recipients.push(r);
                *listed += 1;
            } else {
                p.unlisted = p.unlisted.saturating_add(1);
            }
        }
    }

    /// Counts the message whose data Postfix has now, and decides.
    async fn end_of_data(&self, req: &Request, login: String) -> Result<Verdict, Failed> {
        let noted = {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.remove(&req.instance).filter(|p| p.login == login)
        };
        let (recipients, unlisted) = match noted {
            Some(p) => (p.recipients, p.unlisted),
            // Nothing noted (a restart, or a note pushed out): the count Postfix gives, each
            // one new, so that forgetting never lets mail through unmeasured.
            None => (
                Vec::new(),
                req.recipient_count.parse::<u64>().unwrap_or(1).max(1),
            ),
        };
        let enforce = !self.exempt.contains(&login);
        let message = Message {
            login: login.clone(),
            recipients,
            unlisted,
            enforce,
            now: state::clock::unix_now(),
        };
        let started = Instant::now();
        let decision = match &self.db {
            Record::File(db) => db.submit(message).await.map_err(|e| e.to_string()),
            Record::Shared(db, rule) => db.record(rule, &message).await.map_err(|e| e.to_string()),
        };
        crate::metrics::stored("sending", started.elapsed());
        let decision = decision.map_err(|e| Failed(format!("sending DB: {e}")))?;
        match decision {
            Decision::Send => Ok(Verdict::Dunno),
            Decision::Hold { newly } => {
                crate::metrics::held(crate::metrics::HoldEvent::message_held);
                if let Some(h) = newly {
                    crate::metrics::held(crate::metrics::HoldEvent::login_held);
                    self.started(&login, req, &h);
                }
                Ok(Verdict::Stop(Action::configured(&self.action)))
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
    fn expire(&self) {
        if state::backup::held() {
            return;
        }
        let db = self.db.clone();
        tokio::spawn(async move {
            let now = state::clock::unix_now();
            let done = match db {
                Record::File(db) => db
                    .maintain(move |r| r.store.expire(&r.rule, now).map_err(|e| e.to_string()))
                    .await
                    .unwrap_or_else(|| Err("panic".into())),
                Record::Shared(db, rule) => db.expire(&rule, now).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "sending DB expiry failed");
            }
        });
    }
}

/// Where mail to `recipient` goes: Postfix's virtual alias expansion over the same directory
/// (aliases of aliases followed, catch-alls and domain aliases included), lowercased and
/// without repeats, at most [`EXPANSION_LIMIT`] addresses. An address that is no alias is
/// itself.
fn expand(dir: &Snapshot, delims: &Delimiters, recipient: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut todo = vec![(recipient.to_lowercase(), 0usize)];
    let mut seen = std::collections::HashSet::new();
    while let Some((addr, depth)) = todo.pop() {
        if out.len() >= EXPANSION_LIMIT {
            break;
        }
        if !seen.insert(addr.clone()) {
            continue;
        }
        let next = (depth < RECURSION_LIMIT)
            .then(|| dir.resolve_alias(&addr, delims))
            .flatten()
            .filter(|d| d.as_slice() != [addr.clone()]);
        match next {
            Some(dests) if !dests.is_empty() => {
                todo.extend(dests.into_iter().map(|d| (d.to_lowercase(), depth + 1)));
            }
            _ => out.push(addr),
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_bounded_per_message_and_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ContainmentSettings {
            db: Some(dir.path().join("sending.sqlite")),
            ..ContainmentSettings::default()
        };
        let store = Sending::open(settings.db()).unwrap();
        let db = Record::File(GroupCommit::new(
            Recorder {
                store,
                rule: settings.rule(),
            },
            BATCH,
        ));
        let c = Containment::new(&settings, "box.example.com", db);
        let rcpts = |n: usize, tag: &str| -> Vec<String> {
            (0..n).map(|i| format!("{tag}-{i}@x.example")).collect()
        };
        for m in 0..150 {
            let req = Request {
                instance: format!("i{m}"),
                ..Request::default()
            };
            c.note(&req, "me@example.com", rcpts(1_200, &format!("m{m}")));
        }
        let notes = c.pending.lock().unwrap();
        assert_eq!(notes.listed, MAX_LISTED_ALL);
        let first = &notes.by_instance["i0"];
        assert_eq!((first.recipients.len(), first.unlisted), (MAX_LISTED, 200));
        let last = &notes.by_instance["i149"];
        assert_eq!((last.recipients.len(), last.unlisted), (0, 1_200));
        drop(notes);
        // Another login's request for the same message adds nothing to it.
        let req = Request {
            instance: "i0".into(),
            ..Request::default()
        };
        c.note(&req, "you@example.com", rcpts(5, "other"));
        assert_eq!(c.pending.lock().unwrap().by_instance["i0"].unlisted, 200);
    }
}
