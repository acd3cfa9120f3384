//! What each login sends, hour by hour, and the logins whose mail is held: miab-policyd's
//! containment of a hijacked account, kept in its own SQLite file (never the user DB), read
//! and changed by `miabctl held` as well.
//!
//! - Per login and hour: messages, recipients, and recipients the login never wrote to before.
//! - Per login: the recipients it wrote to (forgotten after [`KNOWN_DAYS`] unused).
//! - Per login: held since when and why, the figures while held, when the administrator was
//!   last told, and the figures an administrator released it at.
//!
//! The rule ([`Rule::limits`]): a login is held when, in the last hour, it sends more messages,
//! or writes to more new recipients, than `factor` times its busiest hour of the last
//! `history_days` days, and more than the floor. Hours while held do not count as history
//! until a release says they were fine. A release also counts as history: the login is held
//! again only at `factor` times what it was released at.
//!
//! A batch of requests is recorded in one transaction; callers pass the time, so a history
//! can be written for tests with the same code.

use crate::error::{Error, Result};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Recipients not written to for this long are new again.
pub const KNOWN_DAYS: i64 = 400;
/// Seconds in an hour.
const HOUR: i64 = 3600;
/// Longest login and recipient kept (RFC 5321's path limit); longer ones are cut.
const MAX_ADDRESS: usize = 256;

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
PRAGMA user_version = 1;
";

/// When a login's sending is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Messages in an hour that never hold a login, whatever its history.
    pub floor_messages: u64,
    /// New recipients in an hour that never hold a login, whatever its history.
    pub floor_new_recipients: u64,
    /// How far past its busiest hour a login may go.
    pub factor: u64,
    /// How far back the busiest hour is looked for.
    pub history_days: u64,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            floor_messages: 100,
            floor_new_recipients: 50,
            factor: 3,
            history_days: 28,
        }
    }
}

/// Messages and new recipients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Figures {
    pub messages: u64,
    pub new_recipients: u64,
}

impl Rule {
    /// The limits for a login whose busiest hour (history and releases) was `busiest`.
    pub fn limits(&self, busiest: Figures) -> Figures {
        Figures {
            messages: self
                .floor_messages
                .max(busiest.messages.saturating_mul(self.factor)),
            new_recipients: self
                .floor_new_recipients
                .max(busiest.new_recipients.saturating_mul(self.factor)),
        }
    }

    /// Which figure is past its limit, as the words of the log line and the notice.
    pub fn exceeded(&self, last_hour: Figures, limits: Figures) -> Option<String> {
        if last_hour.new_recipients > limits.new_recipients {
            Some(format!(
                "{} new recipients in the last hour (limit {})",
                last_hour.new_recipients, limits.new_recipients
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

/// What one recipient of one message comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Within the rule.
    Send,
    /// Held: `newly` when this request started the hold.
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

/// Per login, its history's busiest hour as read in a clock hour: the history (hours before
/// the last two) only changes when the hour moves on, so it is read once an hour, not at
/// every request. A release by another process (`miabctl`) may raise it meanwhile; until the
/// next hour the memo is the stricter, and the released figures, read every time, cover it.
type Memo = std::collections::HashMap<String, (i64, (i64, i64))>;
/// Logins remembered at most; past this the memo starts over.
const MEMO_MAX: usize = 50_000;

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `s` lowercased and cut to [`MAX_ADDRESS`] bytes on a character boundary.
fn bounded(s: &str) -> String {
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
        let conn = crate::state_db::open(path, Duration::from_secs(1)).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
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
                "INSERT OR REPLACE INTO rule (id, floor_messages, floor_new_recipients, factor, history_days)
                 VALUES (1, ?1, ?2, ?3, ?4)",
                params![
                    to_i64(rule.floor_messages),
                    to_i64(rule.floor_new_recipients),
                    to_i64(rule.factor),
                    to_i64(rule.history_days)
                ],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// The rule the daemon last recorded (the default when it never did).
    pub fn rule(&self) -> Result<Rule> {
        self.conn
            .query_row(
                "SELECT floor_messages, floor_new_recipients, factor, history_days FROM rule",
                [],
                |r| {
                    Ok(Rule {
                        floor_messages: to_u64(r.get(0)?),
                        floor_new_recipients: to_u64(r.get(1)?),
                        factor: to_u64(r.get(2)?),
                        history_days: to_u64(r.get(3)?),
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

    /// Counts one recipient of a message by `login` (`new_message` for its first recipient)
    /// at `now`, and decides under `rule`. With `enforce` false the figures are kept but
    /// nothing is held (a login on the administrator's list of exceptions).
    pub fn record(
        &mut self,
        rule: &Rule,
        login: &str,
        recipient: &str,
        new_message: bool,
        enforce: bool,
        now: i64,
    ) -> Result<Decision> {
        let one = Recipient {
            login: login.to_owned(),
            recipient: recipient.to_owned(),
            new_message,
            enforce,
            now,
        };
        let mut d = self.record_all(rule, &[one])?;
        d.pop()
            .ok_or_else(|| Error::Internal("no decision for a recipient".into()))
    }

    /// [`Sending::record`] for each of `all`, in order, in one transaction (one commit for a
    /// whole batch of requests).
    pub fn record_all(&mut self, rule: &Rule, all: &[Recipient]) -> Result<Vec<Decision>> {
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
            .map(|r| record_one(&tx, rule, r, memo))
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(decisions)
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
                   released_messages=held_messages, released_new_recipients=held_new_recipients
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
                "SELECT held_since, coalesce(held_reason, ''), held_messages, held_new_recipients
                 FROM logins WHERE login=?1",
                [&login],
                |r| {
                    Ok((
                        r.get::<_, Option<i64>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(err)?;
        let (held_since, held_reason, peak_m, peak_n) = row.unwrap_or_default();
        let busiest = busiest(&self.conn, rule, &login, now, None).map_err(err)?;
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
                new_recipients: to_u64(peak_n),
            },
            last_hour: last_hour(&self.conn, &login, now).map_err(err)?,
            busiest,
            limits: rule.limits(busiest),
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

/// One recipient of one message, for [`Sending::record_all`].
#[derive(Debug, Clone)]
pub struct Recipient {
    pub login: String,
    pub recipient: String,
    /// The message's first recipient.
    pub new_message: bool,
    /// False for a login that is counted but never held.
    pub enforce: bool,
    pub now: i64,
}

/// [`Sending::record`]'s work inside a transaction.
fn record_one(
    tx: &Connection,
    rule: &Rule,
    r: &Recipient,
    memo: &mut Memo,
) -> rusqlite::Result<Decision> {
    let login = bounded(&r.login);
    let recipient = bounded(&r.recipient);
    let (new_message, enforce, now) = (r.new_message, r.enforce, r.now);
    let held_since: Option<i64> = row(
        tx,
        "SELECT held_since FROM logins WHERE login=?1",
        [&login],
        |r| r.get(0),
    )?
    .flatten();
    let known: Option<i64> = row(
        tx,
        "SELECT last_seen FROM known WHERE login=?1 AND recipient=?2",
        [&login, &recipient],
        |r| r.get(0),
    )?;
    let is_new = known.is_none_or(|seen| now - seen > KNOWN_DAYS * 86_400);
    let held = held_since.is_some();
    let hour = now.div_euclid(HOUR);
    exec(
        tx,
        "INSERT INTO hours (login, hour, messages, recipients, new_recipients, held)
         VALUES (?1, ?2, ?3, 1, ?4, ?5)
         ON CONFLICT (login, hour) DO UPDATE SET messages=messages+excluded.messages,
           recipients=recipients+1, new_recipients=new_recipients+excluded.new_recipients,
           held=max(held, excluded.held)",
        params![
            login,
            hour,
            i64::from(new_message),
            i64::from(is_new),
            i64::from(held)
        ],
    )?;
    let last_hour = last_hour(tx, &login, now)?;
    if held {
        exec(
            tx,
            "UPDATE logins SET held_messages=max(held_messages, ?2),
               held_new_recipients=max(held_new_recipients, ?3) WHERE login=?1",
            params![
                login,
                to_i64(last_hour.messages),
                to_i64(last_hour.new_recipients)
            ],
        )?;
        return Ok(Decision::Hold { newly: None });
    }
    let busiest = busiest(tx, rule, &login, now, Some(memo))?;
    let limits = rule.limits(busiest);
    let reason = rule.exceeded(last_hour, limits).filter(|_| enforce);
    let Some(reason) = reason else {
        // Only recipients of mail that is sent are learnt: a spammer's list must not
        // become the login's correspondents. last_seen moves at most daily.
        if is_new || known.is_some_and(|seen| now - seen > 86_400) {
            exec(
                tx,
                "INSERT INTO known (login, recipient, last_seen) VALUES (?1, ?2, ?3)
                 ON CONFLICT (login, recipient) DO UPDATE SET last_seen=excluded.last_seen",
                params![login, recipient, now],
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
        "INSERT INTO logins (login, held_since, held_reason, held_messages, held_new_recipients, notified_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (login) DO UPDATE SET held_since=excluded.held_since,
           held_reason=excluded.held_reason, held_messages=excluded.held_messages,
           held_new_recipients=excluded.held_new_recipients,
           notified_at=coalesce(excluded.notified_at, notified_at)",
        params![
            login,
            now,
            reason,
            to_i64(last_hour.messages),
            to_i64(last_hour.new_recipients),
            notify.then_some(now)
        ],
    )?;
    // The hour that tripped the rule is not history the next time round.
    exec(
        tx,
        "UPDATE hours SET held=1 WHERE login=?1 AND hour>=?2",
        params![login, hour - 1],
    )?;
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
        "SELECT hour, messages, new_recipients FROM hours WHERE login=?1 AND hour IN (?2, ?3)",
    )?;
    let rows = stmt.query_map(params![login, hour, hour - 1], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let left = HOUR - now.rem_euclid(HOUR);
    let mut f = Figures::default();
    for row in rows {
        let (h, m, n) = row?;
        let (m, n) = (to_u64(m), to_u64(n));
        if h == hour {
            f.messages += m;
            f.new_recipients += n;
        } else {
            let part = |v: u64| v.saturating_mul(to_u64(left)) / to_u64(HOUR);
            f.messages += part(m);
            f.new_recipients += part(n);
        }
    }
    Ok(f)
}

/// The busiest hour of the history (hours older than the window, not held), and what the
/// login was last released at, figure by figure.
/// With `memo`, the history part is read at most once per login and clock hour.
fn busiest(
    conn: &Connection,
    rule: &Rule,
    login: &str,
    now: i64,
    memo: Option<&mut Memo>,
) -> rusqlite::Result<Figures> {
    let hour = now.div_euclid(HOUR);
    let since = hour - to_i64(rule.history_days.saturating_mul(24));
    let read = || {
        row(
            conn,
            "SELECT coalesce(max(messages), 0), coalesce(max(new_recipients), 0) FROM hours
             WHERE login=?1 AND hour>=?2 AND hour<?3 AND held=0",
            params![login, since, hour - 1],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map(Option::unwrap_or_default)
    };
    let (m, n): (i64, i64) = match memo {
        None => read()?,
        Some(memo) => match memo.get(login) {
            Some(&(h, figures)) if h == hour => figures,
            _ => {
                let figures = read()?;
                memo.insert(login.to_owned(), (hour, figures));
                figures
            }
        },
    };
    let released: Option<(i64, i64)> = row(
        conn,
        "SELECT released_messages, released_new_recipients FROM logins
         WHERE login=?1 AND released_at>=?2",
        params![login, since * HOUR],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (rm, rn) = released.unwrap_or_default();
    Ok(Figures {
        messages: to_u64(m.max(rm)),
        new_recipients: to_u64(n.max(rn)),
    })
}

#[cfg(test)]
mod tests;
