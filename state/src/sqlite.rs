//! How the daemons' own SQLite state files are opened (greylisting, the sending record): the
//! directory created, a busy timeout, 1 KiB pages and WAL with `synchronous = NORMAL`.

use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// Opens (creating if needed, with its directory) the state DB at `path`.
pub fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    // Small pages: each request writes a few rows, and a commit writes each page it touched
    // to the WAL. Only takes effect on a new file, before WAL is switched on.
    conn.pragma_update(None, "page_size", 1024)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // With WAL, NORMAL loses no committed transaction when the process dies, only on power
    // loss, and then only the newest ones.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}
