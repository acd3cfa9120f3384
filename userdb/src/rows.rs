//! MIAB's rows as the read model takes them: every row of the tables the daemons' answers
//! need, in one read transaction, each column as text (or `None` where it holds none), handed
//! to a [`RowSink`] as they come, with no copy of the tables in between.

use crate::db::UserDb;
use crate::error::Result;
use rusqlite::types::ValueRef;

/// What receives the rows. A row whose columns make no sense is the sink's to skip.
pub trait RowSink {
    /// How many users and aliases are coming, before the first row.
    fn sizes(&mut self, users: usize, aliases: usize);
    /// `users`: id, email, password hash, privileges, quota.
    fn user(&mut self, row: [Option<Box<str>>; 5]);
    /// `aliases`: source, destination, permitted senders.
    fn alias(&mut self, row: [Option<Box<str>>; 3]);
    /// `auto_aliases`: source, destination.
    fn auto_alias(&mut self, row: [Option<Box<str>>; 2]);
    /// A user id whose logins need app passwords.
    fn app_passwords_required(&mut self, row: [Option<Box<str>>; 1]);
    /// A suspended user id.
    fn suspended(&mut self, row: [Option<Box<str>>; 1]);
    /// An app password: id, user id, digest, scopes.
    fn app_password(&mut self, row: [Option<Box<str>>; 4]);
}

/// A text column as SQL's `=` sees it: other types (a blob) and invalid UTF-8 never match.
fn text(v: ValueRef<'_>) -> Option<Box<str>> {
    match v {
        ValueRef::Text(t) => std::str::from_utf8(t).ok().map(Box::from),
        // TEXT affinity stores numbers as text, so a number here is only from a foreign writer.
        ValueRef::Integer(i) => Some(i.to_string().into()),
        _ => None,
    }
}

impl UserDb {
    /// Hands every row the read model needs to `sink`, in one read transaction.
    pub fn read_rows(&self, sink: &mut impl RowSink) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let count = |table: &str| -> Result<usize> {
            self.conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| usize::try_from(n).unwrap_or(0))
                .map_err(|e| self.err(e))
        };
        sink.sizes(count("users")?, count("aliases")?);
        self.each_row(&self.user_select(), |r| sink.user(r))?;
        let ps = if self.schema.aliases_permitted_senders {
            "permitted_senders"
        } else {
            "NULL"
        };
        let sql = format!("SELECT source, destination, {ps} FROM aliases");
        self.each_row(&sql, |r| sink.alias(r))?;
        if self.schema.auto_aliases {
            self.each_row("SELECT source, destination FROM auto_aliases", |r| {
                sink.auto_alias(r);
            })?;
        }
        if self.schema.app_passwords {
            let sql =
                "SELECT user_id FROM miab_sidecar_user_settings WHERE app_passwords_required<>0";
            self.each_row(sql, |r| sink.app_passwords_required(r))?;
            if self.schema.suspension {
                let sql =
                    "SELECT user_id FROM miab_sidecar_user_settings WHERE suspended_at IS NOT NULL";
                self.each_row(sql, |r| sink.suspended(r))?;
            }
            let sql = "SELECT id, user_id, hash, scopes FROM miab_sidecar_app_passwords";
            self.each_row(sql, |r| sink.app_password(r))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Calls `f` with every row of `sql`, each column as text or `None`.
    fn each_row<const N: usize>(
        &self,
        sql: &str,
        mut f: impl FnMut([Option<Box<str>>; N]),
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let mut q = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = q.next().map_err(|e| self.err(e))? {
            f(std::array::from_fn(|i| r.get_ref(i).ok().and_then(text)));
        }
        Ok(())
    }
}
