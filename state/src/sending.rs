//! What each login sends, hour by hour, and the logins whose mail is held: miab-policyd's
//! containment of a hijacked account, kept in its own SQLite file (never the user DB), read
//! and changed by `miabctl held` as well.
//!
//! - Per login and hour: messages, recipients, and recipients the login never wrote to before
//!   ("new"), counted per message once Postfix has the whole message (end of data), so an
//!   RCPT that is never followed by data counts for nothing.
//! - Per login: the recipients it wrote to (forgotten after [`KNOWN_DAYS`] unused).
//! - Per login: held since when and why, the figures while held, when the administrator was
//!   last told, and the figures an administrator released it at.
//!
//! The rule ([`Rule::limits`]): a login is held when, in the last hour, it sends more
//! messages, recipients or new recipients than its limit for that figure. A limit starts at
//! the floor and grows only from whole past days (today never counts) in which the login was
//! never held: to `factor` times that day's busiest hour, but at most `max_daily_growth` times
//! the limit the day before. Sending at the limit all day therefore at most multiplies the
//! next day's limit by `max_daily_growth`. A release counts too: the login is held again only
//! past `factor` times what it was released at.
//!
//! A batch of messages is recorded in one transaction; callers pass the time, so a history
//! can be written for tests with the same code.

use crate::error::{Error, Result};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Recipients not written to for this long are new again.
pub const KNOWN_DAYS: i64 = 400;
/// Seconds in an hour.
pub(crate) const HOUR: i64 = 3600;
/// Longest login and recipient kept (RFC 5321's path limit); longer ones are cut.
const MAX_ADDRESS: usize = 256;
/// Seconds in a day.
pub(crate) const DAY: i64 = 86_400;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hours (
    login TEXT NOT NULL,
    hour INTEGER NOT NULL,
    messages INTEGER NOT NULL DEFAULT 0,
    recipients INTEGER NOT NULL DEFAULT 0,
    new_recipients INTEGER NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (login, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS known (
    login TEXT NOT NULL,
    recipient TEXT NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (login, recipient)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS logins (
    login TEXT PRIMARY KEY,
    held_since INTEGER,
    held_reason TEXT,
    held_messages INTEGER NOT NULL DEFAULT 0,
    held_new_recipients INTEGER NOT NULL DEFAULT 0,
    notified_at INTEGER,
    released_at INTEGER,
    released_messages INTEGER NOT NULL DEFAULT 0,
    released_new_recipients INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rule (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    floor_messages INTEGER NOT NULL,
    floor_new_recipients INTEGER NOT NULL,
    factor INTEGER NOT NULL,
    history_days INTEGER NOT NULL
);
";

/// Version 2: total recipients are a limit too, and limits grow at a stated rate.
const MIGRATION_2: &str = "
ALTER TABLE logins ADD COLUMN held_recipients INTEGER NOT NULL DEFAULT 0;
ALTER TABLE logins ADD COLUMN released_recipients INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rule ADD COLUMN floor_recipients INTEGER NOT NULL DEFAULT 500;
ALTER TABLE rule ADD COLUMN max_daily_growth INTEGER NOT NULL DEFAULT 2;
PRAGMA user_version = 2;
";

/// When a login's sending is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Messages in an hour that never hold a login, whatever its history.
    pub floor_messages: u64,
    /// Recipients in an hour (new or known) that never hold a login.
    pub floor_recipients: u64,
    /// New recipients in an hour that never hold a login, whatever its history.
    pub floor_new_recipients: u64,
    /// How far past its busiest hour of a day a login may go from the next day on.
    pub factor: u64,
    /// How much a limit may grow from one day to the next at most.
    pub max_daily_growth: u64,
    /// How far back the history is read, in days.
    pub history_days: u64,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            floor_messages: 100,
            floor_recipients: 500,
            floor_new_recipients: 50,
            factor: 3,
            max_daily_growth: 2,
            history_days: 28,
        }
    }
}

/// Messages, recipients and new recipients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Figures {
    pub messages: u64,
    pub recipients: u64,
    pub new_recipients: u64,
}

impl Figures {
    fn zip(self, o: Figures, f: impl Fn(u64, u64) -> u64) -> Figures {
        Figures {
            messages: f(self.messages, o.messages),
            recipients: f(self.recipients, o.recipients),
            new_recipients: f(self.new_recipients, o.new_recipients),
        }
    }
}

/// One past day of a login: its busiest clock hour, figure by figure, and whether the login
/// was held during it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Day {
    pub busiest: Figures,
    pub held: bool,
}

impl Rule {
    fn floors(&self) -> Figures {
        Figures {
            messages: self.floor_messages,
            recipients: self.floor_recipients,
            new_recipients: self.floor_new_recipients,
        }
    }

    /// The limits after `days` (oldest first, today not among them) and a release at
    /// `released` (the figures it was released at; zero when none).
    pub fn limits(&self, days: &[Day], released: Figures) -> Figures {
        let mut limits = self.floors();
        for d in days.iter().filter(|d| !d.held) {
            let grown = d.busiest.zip(limits, |peak, limit| {
                peak.saturating_mul(self.factor)
                    .min(limit.saturating_mul(self.max_daily_growth.max(1)))
            });
            limits = limits.zip(grown, u64::max);
        }
        limits.zip(released, |l, r| l.max(r.saturating_mul(self.factor)))
    }

    /// Which figure is past its limit, as the words of the log line and the notice.
    pub fn exceeded(&self, last_hour: Figures, limits: Figures) -> Option<String> {
        if last_hour.new_recipients > limits.new_recipients {
            Some(format!(
                "{} new recipients in the last hour (limit {})",
                last_hour.new_recipients, limits.new_recipients
            ))
        } else if last_hour.recipients > limits.recipients {
            Some(format!(
                "{} recipients in the last hour (limit {})",
                last_hour.recipients, limits.recipients
            ))
        } else if last_hour.messages > limits.messages {
            Some(format!(
                "{} messages in the last hour (limit {})",
                last_hour.messages, limits.messages
            ))
        } else {
            None
        }
    }
}

/// What one message comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Within the rule.
    Send,
    /// Held: `newly` when this message started the hold.
    Hold { newly: Option<NewHold> },
}

/// A hold that has just started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHold {
    pub reason: String,
    pub last_hour: Figures,
    pub busiest: Figures,
    pub limits: Figures,
    /// True when the administrator was not told about this login in the last hour.
    pub notify: bool,
}

/// One login as `miabctl held` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoginStatus {
    pub login: String,
    /// Unix seconds; `None` when not held.
    pub held_since: Option<i64>,
    pub held_reason: String,
    /// The highest last-hour figures while held.
    pub held_peak: Figures,
    pub last_hour: Figures,
    pub busiest: Figures,
    pub limits: Figures,
    /// Messages and recipients in the last `history_days` days.
    pub total_messages: u64,
    pub total_recipients: u64,
}

/// The sending DB.
#[derive(Debug)]
pub struct Sending {
    conn: Connection,
    path: PathBuf,
    memo: Memo,
}

/// Per login, its past days as read on a day: they only change when the day moves on, so they
/// are read once a day, not for every message. A release by another process (`miabctl`) may
/// clear a held day meanwhile; until the next day the memo is the stricter, and the released
/// figures, read every time, cover the release.
type Memo = std::collections::HashMap<String, (i64, Vec<Day>)>;
/// Logins remembered at most; past this the memo starts over.
const MEMO_MAX: usize = 50_000;

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `s` lowercased and cut to [`MAX_ADDRESS`] bytes on a character boundary.
pub(crate) fn bounded(s: &str) -> String {
    let mut end = s.len().min(MAX_ADDRESS);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_lowercase()
}

impl Sending {
    /// Opens (creating if needed, with its directory) the DB at `path`.
    pub fn open(path: &Path) -> Result<Sending> {
        let err = |e| Error::sqlite(path, e);
        // Only short transactions ever hold it (a request, miabctl, a backup's checkpoint);
        // longer means something is wrong, and the check fails closed rather than pile up.
        let conn = crate::sqlite::open(path, Duration::from_secs(1)).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if version < 2 {
            conn.execute_batch(&format!("BEGIN IMMEDIATE;{MIGRATION_2}COMMIT;"))
                .map_err(err)?;
        } else if version > 2 {
            return Err(Error::Newer {
                path: path.to_owned(),
                found: version,
                known: 2,
            });
        }
        Ok(Sending {
            conn,
            path: path.to_owned(),
            memo: Memo::new(),
        })
    }

    /// Records the rule the daemon applies, so `miabctl held` shows the same limits.
    pub fn set_rule(&self, rule: &Rule) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO rule (id, floor_messages, floor_new_recipients, factor,
                   history_days, floor_recipients, max_daily_growth)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    to_i64(rule.floor_messages),
                    to_i64(rule.floor_new_recipients),
                    to_i64(rule.factor),
                    to_i64(rule.history_days),
                    to_i64(rule.floor_recipients),
                    to_i64(rule.max_daily_growth)
                ],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// The rule the daemon last recorded (the default when it never did).
    pub fn rule(&self) -> Result<Rule> {
        self.conn
            .query_row(
                "SELECT floor_messages, floor_new_recipients, factor, history_days,
                   floor_recipients, max_daily_growth FROM rule",
                [],
                |r| {
                    Ok(Rule {
                        floor_messages: to_u64(r.get(0)?),
                        floor_new_recipients: to_u64(r.get(1)?),
                        factor: to_u64(r.get(2)?),
                        history_days: to_u64(r.get(3)?),
                        floor_recipients: to_u64(r.get(4)?),
                        max_daily_growth: to_u64(r.get(5)?),
                    })
                },
            )
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(|e| self.err(e))
    }

    /// Opens an existing DB only (for `miabctl`, which must not create policyd's file).
    pub fn open_existing(path: &Path) -> Result<Sending> {
        if !path.exists() {
            return Err(Error::Missing(path.to_owned()));
        }
        Sending::open(path)
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        Error::sqlite(&self.path, e)
    }

    /// Counts one message by `login` to `recipients` at `now` (its end of data), and decides
    /// under `rule`. With `enforce` false the figures are kept but nothing is held (a login
    /// on the administrator's list of exceptions).
    pub fn record(
        &mut self,
        rule: &Rule,
        login: &str,
        recipients: &[String],
        enforce: bool,
        now: i64,
    ) -> Result<Decision> {
        let one = Message {
            login: login.to_owned(),
            recipients: recipients.to_vec(),
            unlisted: 0,
            enforce,
            now,
        };
        let mut d = self.record_all(rule, &[one])?;
        d.pop()
            .ok_or_else(|| Error::Internal("no decision for a message".into()))
    }

    /// [`Sending::record`] for each of `all`, in order, in one transaction (one commit for a
    /// whole batch of messages).
    pub fn record_all(&mut self, rule: &Rule, all: &[Message]) -> Result<Vec<Decision>> {
        let path = self.path.clone();
        let err = |e| Error::sqlite(&path, e);
        if self.memo.len() > MEMO_MAX {
            self.memo.clear();
        }
        let memo = &mut self.memo;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let decisions = all
            .iter()
            .map(|m| record_one(&tx, rule, m, memo))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(decisions)
    }

    /// Is `login` held? (Read for every recipient before its message is counted.)
    pub fn is_held(&self, login: &str) -> Result<bool> {
        row(
            &self.conn,
            "SELECT held_since FROM logins WHERE login=?1",
            [bounded(login)],
            |r| r.get::<_, Option<i64>>(0),
        )
        .map(|v| v.flatten().is_some())
        .map_err(|e| self.err(e))
    }

    /// Ends a hold at `now`: the held hours count as history again, and what the login was
    /// released at is its new busiest hour. False when the login was not held.
    pub fn release(&mut self, login: &str, now: i64) -> Result<bool> {
        let login = bounded(login);
        self.memo.remove(&login);
        let path = self.path.clone();
        let err = |e| Error::sqlite(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let n = tx
            .execute(
                "UPDATE logins SET held_since=NULL, held_reason=NULL, released_at=?2,
                   released_messages=held_messages, released_new_recipients=held_new_recipients,
                   released_recipients=held_recipients
                 WHERE login=?1 AND held_since IS NOT NULL",
                params![login, now],
            )
            .map_err(err)?;
        tx.execute("UPDATE hours SET held=0 WHERE login=?1", [&login])
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(n > 0)
    }

    /// The held logins, or with `all` every login with figures, by address.
    pub fn statuses(&self, rule: &Rule, all: bool, now: i64) -> Result<Vec<LoginStatus>> {
        let sql = if all {
            "SELECT DISTINCT login FROM hours UNION SELECT login FROM logins WHERE held_since IS NOT NULL ORDER BY 1"
        } else {
            "SELECT login FROM logins WHERE held_since IS NOT NULL ORDER BY 1"
        };
        let logins: Vec<String> = self
            .conn
            .prepare(sql)
            .and_then(|mut s| {
                s.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(|e| self.err(e))?;
        logins.iter().map(|l| self.status(rule, l, now)).collect()
    }

    /// One login's figures and state.
    pub fn status(&self, rule: &Rule, login: &str, now: i64) -> Result<LoginStatus> {
        let login = bounded(login);
        let err = |e| self.err(e);
        let row = self
            .conn
            .query_row(
                "SELECT held_since, coalesce(held_reason, ''), held_messages, held_recipients,
                   held_new_recipients FROM logins WHERE login=?1",
                [&login],
                |r| {
                    Ok((
                        r.get::<_, Option<i64>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(err)?;
        let (held_since, held_reason, peak_m, peak_r, peak_n) = row.unwrap_or_default();
        let (busiest, limits) = history(&self.conn, rule, &login, now, None).map_err(err)?;
        let since = now.div_euclid(HOUR) - to_i64(rule.history_days.saturating_mul(24));
        let (total_messages, total_recipients) = self
            .conn
            .query_row(
                "SELECT coalesce(sum(messages), 0), coalesce(sum(recipients), 0) FROM hours
                 WHERE login=?1 AND hour>=?2",
                params![login, since],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .map_err(err)?;
        Ok(LoginStatus {
            held_since,
            held_reason: if held_since.is_some() {
                held_reason
            } else {
                String::new()
            },
            held_peak: Figures {
                messages: to_u64(peak_m),
                recipients: to_u64(peak_r),
                new_recipients: to_u64(peak_n),
            },
            last_hour: last_hour(&self.conn, &login, now).map_err(err)?,
            busiest,
            limits,
            total_messages: to_u64(total_messages),
            total_recipients: to_u64(total_recipients),
            login,
        })
    }

    /// Forgets hours older than `history_days` (and a day) and recipients unused for
    /// [`KNOWN_DAYS`]; returns how many rows went.
    pub fn expire(&mut self, rule: &Rule, now: i64) -> Result<usize> {
        let oldest_hour =
            now.div_euclid(HOUR) - to_i64(rule.history_days.saturating_add(1).saturating_mul(24));
        let hours = self
            .conn
            .execute("DELETE FROM hours WHERE hour<?1", [oldest_hour])
            .map_err(|e| self.err(e))?;
        let known = self
            .conn
            .execute(
                "DELETE FROM known WHERE last_seen<?1",
                [now - KNOWN_DAYS * 86_400],
            )
            .map_err(|e| self.err(e))?;
        Ok(hours + known)
    }
}

/// What miab-policyd's containment asks of its store (miabctl's `held` reads and releases
/// through [`Sending`] itself).
pub trait SendingStore: Send + 'static {
    /// Records each message in order, in one transaction, with the decision for each.
    fn record_all(&mut self, rule: &Rule, all: &[Message]) -> Result<Vec<Decision>>;
    /// Forgets figures past the rule's history; how many rows went.
    fn expire(&mut self, rule: &Rule, now: i64) -> Result<usize>;
}

impl SendingStore for Sending {
    fn record_all(&mut self, rule: &Rule, all: &[Message]) -> Result<Vec<Decision>> {
        Sending::record_all(self, rule, all)
    }
    fn expire(&mut self, rule: &Rule, now: i64) -> Result<usize> {
        Sending::expire(self, rule, now)
    }
}

/// A sending store with the rule it applies: messages are recorded and decided through the
/// group commit.
#[derive(Debug)]
pub struct Recorder<S> {
    pub store: S,
    pub rule: Rule,
}

impl<S: SendingStore> crate::commit::Batch for Recorder<S> {
    type Job = Message;
    type Answer = Decision;
    fn run(&mut self, jobs: &[Message]) -> Result<Vec<Decision>, String> {
        self.store
            .record_all(&self.rule, jobs)
            .map_err(|e| e.to_string())
    }
}

/// One message, for [`Sending::record_all`].
#[derive(Debug, Clone)]
pub struct Message {
    pub login: String,
    /// Its recipients as delivered (aliases expanded), at most a bounded number.
    pub recipients: Vec<String>,
    /// Recipients beyond the list, counted as new.
    pub unlisted: u64,
    /// False for a login that is counted but never held.
    pub enforce: bool,
    pub now: i64,
}

/// [`Sending::record`]'s work inside a transaction.
fn record_one(
    tx: &Connection,
    rule: &Rule,
    m: &Message,
    memo: &mut Memo,
) -> rusqlite::Result<Decision> {
    let login = bounded(&m.login);
    let (enforce, now) = (m.enforce, m.now);
    let mut recipients: Vec<String> = m.recipients.iter().map(|r| bounded(r)).collect();
    recipients.sort_unstable();
    recipients.dedup();
    let held_since: Option<i64> = row(
        tx,
        "SELECT held_since FROM logins WHERE login=?1",
        [&login],
        |r| r.get(0),
    )?
    .flatten();
    let mut to_learn = Vec::new();
    for rcpt in &recipients {
        let known: Option<i64> = row(
            tx,
            "SELECT last_seen FROM known WHERE login=?1 AND recipient=?2",
            [&login, rcpt],
            |r| r.get(0),
        )?;
        if let Some(is_new) = to_learn_at(known, now) {
            to_learn.push((rcpt, is_new));
        }
    }
    let new = to_learn.iter().filter(|(_, n)| *n).count() as u64 + m.unlisted;
    let count = recipients.len() as u64 + m.unlisted;
    let held = held_since.is_some();
    let hour = now.div_euclid(HOUR);
    exec(
        tx,
        "INSERT INTO hours (login, hour, messages, recipients, new_recipients, held)
         VALUES (?1, ?2, 1, ?3, ?4, ?5)
         ON CONFLICT (login, hour) DO UPDATE SET messages=messages+1,
           recipients=recipients+excluded.recipients,
           new_recipients=new_recipients+excluded.new_recipients,
           held=max(held, excluded.held)",
        params![login, hour, to_i64(count), to_i64(new), i64::from(held)],
    )?;
    let last_hour = last_hour(tx, &login, now)?;
    if held {
        exec(
            tx,
            "UPDATE logins SET held_messages=max(held_messages, ?2),
               held_recipients=max(held_recipients, ?3),
               held_new_recipients=max(held_new_recipients, ?4) WHERE login=?1",
            params![
                login,
                to_i64(last_hour.messages),
                to_i64(last_hour.recipients),
                to_i64(last_hour.new_recipients)
            ],
        )?;
        return Ok(Decision::Hold { newly: None });
    }
    let (busiest, limits) = history(tx, rule, &login, now, Some(memo))?;
    let reason = rule.exceeded(last_hour, limits).filter(|_| enforce);
    let Some(reason) = reason else {
        // Only recipients of mail that is sent are learnt: a spammer's list must not
        // become the login's correspondents.
        for (rcpt, _) in to_learn {
            exec(
                tx,
                "INSERT INTO known (login, recipient, last_seen) VALUES (?1, ?2, ?3)
                 ON CONFLICT (login, recipient) DO UPDATE SET last_seen=excluded.last_seen",
                params![login, rcpt, now],
            )?;
        }
        return Ok(Decision::Send);
    };
    let notified_at: Option<i64> = row(
        tx,
        "SELECT notified_at FROM logins WHERE login=?1",
        [&login],
        |r| r.get(0),
    )?
    .flatten();
    let notify = notified_at.is_none_or(|t| now - t >= HOUR);
    exec(
        tx,
        "INSERT INTO logins (login, held_since, held_reason, held_messages, held_recipients,
           held_new_recipients, notified_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (login) DO UPDATE SET held_since=excluded.held_since,
           held_reason=excluded.held_reason, held_messages=excluded.held_messages,
           held_recipients=excluded.held_recipients,
           held_new_recipients=excluded.held_new_recipients,
           notified_at=coalesce(excluded.notified_at, notified_at)",
        params![
            login,
            now,
            reason,
            to_i64(last_hour.messages),
            to_i64(last_hour.recipients),
            to_i64(last_hour.new_recipients),
            notify.then_some(now)
        ],
    )?;
    // The hours that tripped the rule are no history: their days do not grow a limit.
    exec(
        tx,
        "UPDATE hours SET held=1 WHERE login=?1 AND hour>=?2",
        params![login, hour - 1],
    )?;
    memo.remove(&login);
    Ok(Decision::Hold {
        newly: Some(NewHold {
            reason,
            last_hour,
            busiest,
            limits,
            notify,
        }),
    })
}

/// Whether a recipient last written to at `known` is to be written down now, and whether it
/// counts as new: new when never seen or unused for [`KNOWN_DAYS`]; `last_seen` moves at most
/// daily. `None`: nothing to write.
pub(crate) fn to_learn_at(known: Option<i64>, now: i64) -> Option<bool> {
    let is_new = known.is_none_or(|seen| now - seen > KNOWN_DAYS * DAY);
    (is_new || known.is_some_and(|seen| now - seen > DAY)).then_some(is_new)
}

/// The last hour as a sliding window from the (clock hour, figures) of this hour and the one
/// before: this one whole, the part of the previous one still inside the window in proportion.
pub(crate) fn sliding_hour(rows: impl IntoIterator<Item = (i64, Figures)>, now: i64) -> Figures {
    let hour = now.div_euclid(HOUR);
    let left = to_u64(HOUR - now.rem_euclid(HOUR));
    let mut f = Figures::default();
    for (h, v) in rows {
        let v = if h == hour {
            v
        } else {
            v.zip(v, |x, _| x.saturating_mul(left) / to_u64(HOUR))
        };
        f = f.zip(v, u64::saturating_add);
    }
    f
}

/// The busiest hour of the clean past days (with what a release was at) and the limits.
pub(crate) fn busiest_and_limits(
    rule: &Rule,
    days: &[Day],
    released: Figures,
) -> (Figures, Figures) {
    let busiest = days
        .iter()
        .filter(|d| !d.held)
        .fold(released, |b, d| b.zip(d.busiest, u64::max));
    (busiest, rule.limits(days, released))
}

/// The first hour of the history window (`history_days` before today), and today's first.
pub(crate) fn history_window(rule: &Rule, now: i64) -> (i64, i64) {
    let today = now.div_euclid(DAY);
    ((today - to_i64(rule.history_days)) * 24, today * 24)
}

/// One row of a query prepared once per connection, if there is one.
fn row<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    conn.prepare_cached(sql)?.query_row(params, f).optional()
}

/// A statement prepared once per connection, run.
fn exec<P: rusqlite::Params>(conn: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// The last hour as a sliding window: this clock hour, and the part of the previous one still
/// inside the window, in proportion.
fn last_hour(conn: &Connection, login: &str, now: i64) -> rusqlite::Result<Figures> {
    let hour = now.div_euclid(HOUR);
    let mut stmt = conn.prepare_cached(
        "SELECT hour, messages, recipients, new_recipients FROM hours
         WHERE login=?1 AND hour IN (?2, ?3)",
    )?;
    let rows = stmt
        .query_map(params![login, hour, hour - 1], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                Figures {
                    messages: to_u64(r.get(1)?),
                    recipients: to_u64(r.get(2)?),
                    new_recipients: to_u64(r.get(3)?),
                },
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(sliding_hour(rows, now))
}

/// The busiest hour of the clean past days (display) and the limits, from the days before
/// today within `history_days` and the last release. With `memo`, the days are read at most
/// once per login and day.
fn history(
    conn: &Connection,
    rule: &Rule,
    login: &str,
    now: i64,
    memo: Option<&mut Memo>,
) -> rusqlite::Result<(Figures, Figures)> {
    let today = now.div_euclid(DAY);
    let (first_hour, today_hour) = history_window(rule, now);
    let since = first_hour / 24;
    let read = || -> rusqlite::Result<Vec<Day>> {
        let mut stmt = conn.prepare_cached(
            "SELECT hour / 24, max(messages), max(recipients), max(new_recipients), max(held)
             FROM hours WHERE login=?1 AND hour>=?2 AND hour<?3 GROUP BY 1 ORDER BY 1",
        )?;
        let days = stmt
            .query_map(params![login, first_hour, today_hour], |r| {
                Ok(Day {
                    busiest: Figures {
                        messages: to_u64(r.get(1)?),
                        recipients: to_u64(r.get(2)?),
                        new_recipients: to_u64(r.get(3)?),
                    },
                    held: r.get::<_, i64>(4)? != 0,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(days)
    };
    let days = match memo {
        None => read()?,
        Some(memo) => match memo.get(login) {
            Some((d, days)) if *d == today => days.clone(),
            _ => {
                let days = read()?;
                memo.insert(login.to_owned(), (today, days.clone()));
                days
            }
        },
    };
    let released: Option<Figures> = row(
        conn,
        "SELECT released_messages, released_recipients, released_new_recipients FROM logins
         WHERE login=?1 AND released_at>=?2",
        params![login, since * DAY],
        |r| {
            Ok(Figures {
                messages: to_u64(r.get(0)?),
                recipients: to_u64(r.get(1)?),
                new_recipients: to_u64(r.get(2)?),
            })
        },
    )?;
    Ok(busiest_and_limits(
        rule,
        &days,
        released.unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests;
