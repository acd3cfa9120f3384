//! Containment's sending record and holds in PostgreSQL, shared by every host, so a login that
//! sends through two hosts meets one limit, not one per host. Each message is one transaction
//! that first takes the login's advisory lock: two hosts counting the same login take turns,
//! and each sees the other's messages. The rule and its arithmetic are `crate::sending`'s.

use super::{Pg, PgError};
use crate::sending::{
    Day, Decision, Figures, HOUR, KNOWN_DAYS, LoginStatus, Message, NewHold, Rule, bounded,
    busiest_and_limits, history_window, sliding_hour, to_i64, to_learn_at, to_u64,
};
use deadpool_postgres::GenericClient;
use std::sync::Arc;
use tokio_postgres::types::ToSql;

/// The sending record's tables in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgSending {
    pg: Arc<Pg>,
}

/// The advisory lock class for logins (the second key is the login's hash).
const LOGIN_LOCK: i32 = 3;

impl PgSending {
    pub fn new(pg: Arc<Pg>) -> PgSending {
        PgSending { pg }
    }

    /// Counts one message and decides, under `rule`.
    pub async fn record(&self, rule: &Rule, m: &Message) -> Result<Decision, PgError> {
        self.pg
            .call(async {
                let mut c = self.pg.client().await?;
                let tx = c.transaction().await?;
                let d = record_one(&tx, rule, m).await?;
                tx.commit().await?;
                Ok(d)
            })
            .await
    }

    /// Records the rule the daemon runs under, for `miabctl held`.
    pub async fn set_rule(&self, rule: &Rule) -> Result<(), PgError> {
        let v: Vec<i64> = [
            rule.floor_messages,
            rule.floor_recipients,
            rule.floor_new_recipients,
            rule.factor,
            rule.max_daily_growth,
            rule.history_days,
        ]
        .into_iter()
        .map(to_i64)
        .collect();
        self.pg
            .call(async {
                let c = self.pg.client().await?;
                c.execute(
                    "INSERT INTO sending_rule (id, floor_messages, floor_recipients,
                       floor_new_recipients, factor, max_daily_growth, history_days)
                     VALUES (1, $1, $2, $3, $4, $5, $6)
                     ON CONFLICT (id) DO UPDATE SET floor_messages = excluded.floor_messages,
                       floor_recipients = excluded.floor_recipients,
                       floor_new_recipients = excluded.floor_new_recipients,
                       factor = excluded.factor, max_daily_growth = excluded.max_daily_growth,
                       history_days = excluded.history_days",
                    &[&v[0], &v[1], &v[2], &v[3], &v[4], &v[5]],
                )
                .await?;
                Ok(())
            })
            .await
    }

    /// The rule the daemons last recorded (the default when none did).
    pub async fn rule(&self) -> Result<Rule, PgError> {
        self.pg
            .call(async {
                let c = self.pg.client().await?;
                let r = c
                    .query_opt(
                        "SELECT floor_messages, floor_recipients, floor_new_recipients, factor,
                           max_daily_growth, history_days FROM sending_rule WHERE id = 1",
                        &[],
                    )
                    .await?;
                Ok(r.map_or_else(Rule::default, |r| Rule {
                    floor_messages: to_u64(r.get(0)),
                    floor_recipients: to_u64(r.get(1)),
                    floor_new_recipients: to_u64(r.get(2)),
                    factor: to_u64(r.get(3)),
                    max_daily_growth: to_u64(r.get(4)),
                    history_days: to_u64(r.get(5)),
                }))
            })
            .await
    }

    /// Ends a hold at `now`; false when the login was not held.
    pub async fn release(&self, login: &str, now: i64) -> Result<bool, PgError> {
        let login = bounded(login);
        self.pg
            .call(async {
                let mut c = self.pg.client().await?;
                let tx = c.transaction().await?;
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                    &[&LOGIN_LOCK, &login],
                )
                .await?;
                let n = tx
                    .execute(
                        "UPDATE sending_logins SET held_since = NULL, held_reason = NULL,
                           released_at = $2, released_messages = held_messages,
                           released_new_recipients = held_new_recipients,
                           released_recipients = held_recipients
                         WHERE login = $1 AND held_since IS NOT NULL",
                        &[&login, &now],
                    )
                    .await?;
                tx.execute(
                    "UPDATE sending_hours SET held = false WHERE login = $1",
                    &[&login],
                )
                .await?;
                tx.commit().await?;
                Ok(n > 0)
            })
            .await
    }

    /// The held logins, or with `all` every login with figures, by address.
    pub async fn statuses(
        &self,
        rule: &Rule,
        all: bool,
        now: i64,
    ) -> Result<Vec<LoginStatus>, PgError> {
        let sql = if all {
            "SELECT login FROM sending_hours UNION SELECT login FROM sending_logins
             WHERE held_since IS NOT NULL ORDER BY 1"
        } else {
            "SELECT login FROM sending_logins WHERE held_since IS NOT NULL ORDER BY 1"
        };
        self.pg
            .call(async {
                let c = self.pg.client().await?;
                let logins: Vec<String> =
                    c.query(sql, &[]).await?.iter().map(|r| r.get(0)).collect();
                let mut out = Vec::with_capacity(logins.len());
                for l in &logins {
                    out.push(status(&c, rule, l, now).await?);
                }
                Ok(out)
            })
            .await
    }

    /// Forgets hours past the history and recipients unused for [`KNOWN_DAYS`].
    pub async fn expire(&self, rule: &Rule, now: i64) -> Result<usize, PgError> {
        let oldest_hour =
            now.div_euclid(HOUR) - to_i64(rule.history_days.saturating_add(1).saturating_mul(24));
        let known_before = now - KNOWN_DAYS * 86_400;
        self.pg
            .call(async {
                let c = self.pg.client().await?;
                let h = c
                    .execute("DELETE FROM sending_hours WHERE hour < $1", &[&oldest_hour])
                    .await?;
                let k = c
                    .execute(
                        "DELETE FROM sending_known WHERE last_seen < $1",
                        &[&known_before],
                    )
                    .await?;
                Ok(usize::try_from(h + k).unwrap_or(usize::MAX))
            })
            .await
    }
}

fn figures(r: &tokio_postgres::Row, from: usize) -> Figures {
    Figures {
        messages: to_u64(r.get(from)),
        recipients: to_u64(r.get(from + 1)),
        new_recipients: to_u64(r.get(from + 2)),
    }
}

/// One message, inside its transaction: the same steps as the SQLite store's.
async fn record_one(
    tx: &deadpool_postgres::Transaction<'_>,
    rule: &Rule,
    m: &Message,
) -> Result<Decision, PgError> {
    let login = bounded(&m.login);
    let now = m.now;
    let mut recipients: Vec<String> = m.recipients.iter().map(|r| bounded(r)).collect();
    recipients.sort_unstable();
    recipients.dedup();
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .await?;
    let held_q = tx
        .prepare_cached("SELECT held_since, notified_at FROM sending_logins WHERE login = $1")
        .await?;
    let known_q = tx
        .prepare_cached(
            "SELECT recipient, last_seen FROM sending_known
             WHERE login = $1 AND recipient = ANY($2)",
        )
        .await?;
    let (lock_args, login_args): (&[&(dyn ToSql + Sync)], &[&(dyn ToSql + Sync)]) =
        (&[&LOGIN_LOCK, &login], &[&login]);
    let known_args: &[&(dyn ToSql + Sync)] = &[&login, &recipients];
    // Sent together: the server takes them in order, so the reads wait for the lock.
    let (_, held_row, known_rows) = tokio::try_join!(
        tx.execute(&lock, lock_args),
        tx.query_opt(&held_q, login_args),
        tx.query(&known_q, known_args),
    )?;
    let held_since: Option<i64> = held_row.as_ref().and_then(|r| r.get(0));
    let notified_at: Option<i64> = held_row.as_ref().and_then(|r| r.get(1));
    let known: std::collections::HashMap<String, i64> =
        known_rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let to_learn: Vec<(&String, bool)> = recipients
        .iter()
        .filter_map(|r| to_learn_at(known.get(r).copied(), now).map(|new| (r, new)))
        .collect();
    let new = to_learn.iter().filter(|(_, n)| *n).count() as u64 + m.unlisted;
    let count = recipients.len() as u64 + m.unlisted;
    let held = held_since.is_some();
    let hour = now.div_euclid(HOUR);
    let add = tx
        .prepare_cached(
            "INSERT INTO sending_hours (login, hour, messages, recipients, new_recipients, held)
             VALUES ($1, $2, 1, $3, $4, $5)
             ON CONFLICT (login, hour) DO UPDATE SET messages = sending_hours.messages + 1,
               recipients = sending_hours.recipients + excluded.recipients,
               new_recipients = sending_hours.new_recipients + excluded.new_recipients,
               held = sending_hours.held OR excluded.held",
        )
        .await?;
    tx.execute(&add, &[&login, &hour, &to_i64(count), &to_i64(new), &held])
        .await?;
    let last_hour = last_hour(tx, &login, now).await?;
    if held {
        tx.execute(
            "UPDATE sending_logins SET held_messages = GREATEST(held_messages, $2),
               held_recipients = GREATEST(held_recipients, $3),
               held_new_recipients = GREATEST(held_new_recipients, $4) WHERE login = $1",
            &[
                &login,
                &to_i64(last_hour.messages),
                &to_i64(last_hour.recipients),
                &to_i64(last_hour.new_recipients),
            ],
        )
        .await?;
        return Ok(Decision::Hold { newly: None });
    }
    let (busiest, limits) = history(tx, rule, &login, now).await?;
    let reason = rule.exceeded(last_hour, limits).filter(|_| m.enforce);
    let Some(reason) = reason else {
        // Only recipients of mail that is sent are learnt.
        if !to_learn.is_empty() {
            let learn: Vec<&String> = to_learn.iter().map(|(r, _)| *r).collect();
            tx.execute(
                "INSERT INTO sending_known (login, recipient, last_seen)
                 SELECT $1, r, $3 FROM unnest($2::text[]) AS r
                 ON CONFLICT (login, recipient) DO UPDATE SET last_seen = excluded.last_seen",
                &[&login, &learn, &now],
            )
            .await?;
        }
        return Ok(Decision::Send);
    };
    let notify = notified_at.is_none_or(|t| now - t >= HOUR);
    tx.execute(
        "INSERT INTO sending_logins (login, held_since, held_reason, held_messages,
           held_recipients, held_new_recipients, notified_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (login) DO UPDATE SET held_since = excluded.held_since,
           held_reason = excluded.held_reason, held_messages = excluded.held_messages,
           held_recipients = excluded.held_recipients,
           held_new_recipients = excluded.held_new_recipients,
           notified_at = coalesce(excluded.notified_at, sending_logins.notified_at)",
        &[
            &login,
            &now,
            &reason,
            &to_i64(last_hour.messages),
            &to_i64(last_hour.recipients),
            &to_i64(last_hour.new_recipients),
            &notify.then_some(now),
        ],
    )
    .await?;
    // The hours that tripped the rule are no history: their days do not grow a limit.
    tx.execute(
        "UPDATE sending_hours SET held = true WHERE login = $1 AND hour >= $2",
        &[&login, &(hour - 1)],
    )
    .await?;
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

async fn last_hour(c: &impl GenericClient, login: &str, now: i64) -> Result<Figures, PgError> {
    let hour = now.div_euclid(HOUR);
    let q = c
        .prepare_cached(
            "SELECT hour, messages, recipients, new_recipients FROM sending_hours
             WHERE login = $1 AND hour IN ($2, $3)",
        )
        .await?;
    let rows = c.query(&q, &[&login, &hour, &(hour - 1)]).await?;
    Ok(sliding_hour(
        rows.iter().map(|r| (r.get::<_, i64>(0), figures(r, 1))),
        now,
    ))
}

async fn history(
    c: &impl GenericClient,
    rule: &Rule,
    login: &str,
    now: i64,
) -> Result<(Figures, Figures), PgError> {
    let (first_hour, today_hour) = history_window(rule, now);
    let days_q = c
        .prepare_cached(
            "SELECT hour / 24, max(messages), max(recipients), max(new_recipients), bool_or(held)
             FROM sending_hours WHERE login = $1 AND hour >= $2 AND hour < $3
             GROUP BY 1 ORDER BY 1",
        )
        .await?;
    let released_q = c
        .prepare_cached(
            "SELECT released_messages, released_recipients, released_new_recipients
             FROM sending_logins WHERE login = $1 AND released_at >= $2",
        )
        .await?;
    let since = first_hour / 24 * 86_400;
    let days_args: &[&(dyn ToSql + Sync)] = &[&login, &first_hour, &today_hour];
    let released_args: &[&(dyn ToSql + Sync)] = &[&login, &since];
    let (days, released) = tokio::try_join!(
        c.query(&days_q, days_args),
        c.query_opt(&released_q, released_args),
    )?;
    let days: Vec<Day> = days
        .iter()
        .map(|r| Day {
            busiest: figures(r, 1),
            held: r.get(4),
        })
        .collect();
    let released = released.map(|r| figures(&r, 0)).unwrap_or_default();
    Ok(busiest_and_limits(rule, &days, released))
}

/// One login's figures and state.
async fn status(
    c: &impl GenericClient,
    rule: &Rule,
    login: &str,
    now: i64,
) -> Result<LoginStatus, PgError> {
    let login = bounded(login);
    let row = c
        .query_opt(
            "SELECT held_since, coalesce(held_reason, ''), held_messages, held_recipients,
               held_new_recipients FROM sending_logins WHERE login = $1",
            &[&login],
        )
        .await?;
    let held_since: Option<i64> = row.as_ref().and_then(|r| r.get(0));
    let held_reason: String = row.as_ref().map(|r| r.get(1)).unwrap_or_default();
    let held_peak = row.as_ref().map(|r| figures(r, 2)).unwrap_or_default();
    let (busiest, limits) = history(c, rule, &login, now).await?;
    let since = now.div_euclid(HOUR) - to_i64(rule.history_days.saturating_mul(24));
    let totals = c
        .query_one(
            "SELECT coalesce(sum(messages), 0)::bigint, coalesce(sum(recipients), 0)::bigint
             FROM sending_hours WHERE login = $1 AND hour >= $2",
            &[&login, &since],
        )
        .await?;
    Ok(LoginStatus {
        held_since,
        held_reason: if held_since.is_some() {
            held_reason
        } else {
            String::new()
        },
        held_peak,
        last_hour: last_hour(c, &login, now).await?,
        busiest,
        limits,
        total_messages: to_u64(totals.get(0)),
        total_recipients: to_u64(totals.get(1)),
        login,
    })
}
