//! The greylist in PostgreSQL, shared by every host: one transaction per decision, with the
//! triplet's and the client's advisory locks taken first, so two hosts deciding about the same
//! triplet (or counting the same client) take turns instead of both reading the old state.

use super::{Pg, PgError};
use crate::greylist::{Ages, Awl, Counts, Lookup, Triplet, Update};
use std::sync::Arc;
use tokio_postgres::types::ToSql;

/// Rows deleted per expiry statement at most, so a sweep never holds locks for long.
const SWEEP_ROWS: i64 = 5000;

/// The greylist's tables in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgGreylist {
    pg: Arc<Pg>,
}

impl PgGreylist {
    pub fn new(pg: Arc<Pg>) -> PgGreylist {
        PgGreylist { pg }
    }

    /// Reads the lookup's triplet and (if `clients`) its client's entry, asks `rule`, and
    /// writes what it says, in one transaction under the deadline.
    pub async fn decide<R: Send>(
        &self,
        l: &Lookup,
        clients: bool,
        rule: impl FnOnce(Option<Triplet>, Option<Awl>) -> (Update, R) + Send,
    ) -> Result<R, PgError> {
        self.pg
            .call(async {
                let mut c = self.pg.client().await?;
                let tx = c.transaction().await?;
                let lock = tx
                    .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .await?;
                let get_t = tx
                    .prepare_cached(
                        "SELECT first_seen, last_seen, confirmed FROM greylist_triplets WHERE key = $1",
                    )
                    .await?;
                let get_c = tx
                    .prepare_cached("SELECT count, last_seen FROM greylist_clients WHERE addr = $1")
                    .await?;
                // Sent together: the server takes them in order, so the reads wait for the locks.
                let key_lock: &[&(dyn ToSql + Sync)] = &[&1i32, &l.key];
                let key: &[&(dyn ToSql + Sync)] = &[&l.key];
                let (_, trip) = tokio::try_join!(
                    tx.execute(&lock, key_lock),
                    tx.query_opt(&get_t, key),
                )?;
                let awl = if clients {
                    let client_lock: &[&(dyn ToSql + Sync)] = &[&2i32, &l.client];
                    let client: &[&(dyn ToSql + Sync)] = &[&l.client];
                    let (_, row) = tokio::try_join!(
                        tx.execute(&lock, client_lock),
                        tx.query_opt(&get_c, client),
                    )?;
                    row.map(|r| Awl {
                        count: u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
                        last_seen: r.get(1),
                    })
                } else {
                    None
                };
                let trip = trip.map(|r| Triplet {
                    first_seen: r.get(0),
                    last_seen: r.get(1),
                    confirmed: r.get(2),
                });
                let (u, answer) = rule(trip, awl);
                if let Some(t) = u.triplet {
                    let put = tx
                        .prepare_cached(
                            "INSERT INTO greylist_triplets (key, first_seen, last_seen, confirmed)
                             VALUES ($1, $2, $3, $4)
                             ON CONFLICT (key) DO UPDATE SET first_seen = excluded.first_seen,
                               last_seen = excluded.last_seen, confirmed = excluded.confirmed",
                        )
                        .await?;
                    tx.execute(&put, &[&l.key, &t.first_seen, &t.last_seen, &t.confirmed])
                        .await?;
                }
                if let Some(a) = u.awl {
                    let put = tx
                        .prepare_cached(
                            "INSERT INTO greylist_clients (addr, count, last_seen) VALUES ($1, $2, $3)
                             ON CONFLICT (addr) DO UPDATE SET count = excluded.count,
                               last_seen = excluded.last_seen",
                        )
                        .await?;
                    let count = i32::try_from(a.count).unwrap_or(i32::MAX);
                    tx.execute(&put, &[&l.client, &count, &a.last_seen]).await?;
                }
                tx.commit().await?;
                Ok(answer)
            })
            .await
    }

    /// What it holds.
    pub async fn counts(&self) -> Result<Counts, PgError> {
        self.pg
            .call(async {
                let c = self.pg.client().await?;
                let r = c
                    .query_one(
                        "SELECT (SELECT count(*) FROM greylist_triplets),
                                (SELECT count(*) FROM greylist_clients)",
                        &[],
                    )
                    .await?;
                Ok(Counts {
                    triplets: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                    clients: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                })
            })
            .await
    }

    /// One bounded expiry round; how many entries went.
    pub async fn expire_round(&self, now: i64, ages: Ages) -> Result<usize, PgError> {
        self.pg
            .call(async {
                let c = self.pg.client().await?;
                let old = now - ages.max_age;
                let stale = now - ages.retry_window;
                let t = c
                    .execute(
                        "DELETE FROM greylist_triplets WHERE key IN (
                           SELECT key FROM greylist_triplets
                           WHERE last_seen < $1 OR (NOT confirmed AND last_seen < $2) LIMIT $3)",
                        &[&old, &stale, &SWEEP_ROWS],
                    )
                    .await?;
                let k = c
                    .execute(
                        "DELETE FROM greylist_clients WHERE addr IN (
                           SELECT addr FROM greylist_clients WHERE last_seen < $1 LIMIT $2)",
                        &[&old, &SWEEP_ROWS],
                    )
                    .await?;
                Ok(usize::try_from(t + k).unwrap_or(usize::MAX))
            })
            .await
    }
}
