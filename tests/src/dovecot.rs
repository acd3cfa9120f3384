//! A throw-away Dovecot instance configured as Mail-in-a-Box configures it: `passdb sql` and
//! `userdb sql` over `users.sqlite` with MIAB's exact queries (or, instead, `miab-checkpassword`
//! as passdb and userdb), maildirs under the storage root, IMAP and LMTP on loopback ports.
//! Plaintext and no TLS, because it is loopback-only.

use crate::{Scratch, chown_to, free_port, require_program, wait_for_port};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running instance (`dovecot -F`); stopped on drop.
#[derive(Debug)]
pub struct Dovecot {
    dir: Scratch,
    child: Child,
    imap_port: u16,
    lmtp_port: u16,
}

/// MIAB's `/etc/dovecot/dovecot-sql.conf.ext`, with `STORAGE_ROOT` filled in.
pub fn miab_sql_conf(storage_root: &Path) -> String {
    let root = storage_root.display();
    format!(
        "driver = sqlite
connect = {root}/mail/users.sqlite
default_pass_scheme = SHA512-CRYPT
password_query = SELECT email as user, password FROM users WHERE email='%u';
user_query = SELECT email AS user, \"mail\" as uid, \"mail\" as gid, \"{root}/mail/mailboxes/%d/%n\" as home, '*:bytes=' || quota AS quota_rule FROM users WHERE email='%u';
iterate_query = SELECT email AS user FROM users;
"
    )
}

/// Where Dovecot's passdb and userdb come from.
#[derive(Debug, Clone)]
pub enum Auth {
    /// MIAB's `passdb sql` and `userdb sql`.
    Sql,
    /// `passdb checkpassword` and `userdb prefetch` + `userdb checkpassword`, running this
    /// program line (e.g. `/path/miab-checkpassword --socket /path/sock`).
    Checkpassword(String),
}

impl Dovecot {
    /// Starts Dovecot over the user DB in `storage_root` (which must exist and hold
    /// `mail/users.sqlite`) with MIAB's SQL passdb and userdb.
    pub fn start(storage_root: &Path) -> Dovecot {
        Self::start_with(storage_root, &Auth::Sql)
    }

    /// Starts Dovecot with the given passdb and userdb. Makes `mail/mailboxes` writable for
    /// the `mail` user, as MIAB's setup does.
    pub fn start_with(storage_root: &Path, auth: &Auth) -> Dovecot {
        Self::start_full(storage_root, auth, "")
    }

    /// As [`Dovecot::start_with`], with `extra` appended to the configuration (a second
    /// `protocol lmtp { }` block adds to the first).
    pub fn start_full(storage_root: &Path, auth: &Auth, extra: &str) -> Dovecot {
        let dovecot = require_program("/usr/sbin/dovecot", "dovecot-core");
        require_program("/usr/lib/dovecot/imap", "dovecot-imapd");
        require_program("/usr/lib/dovecot/lmtp", "dovecot-lmtpd");
        require_program(
            "/usr/lib/dovecot/modules/auth/libdriver_sqlite.so",
            "dovecot-sqlite",
        );
        let dir = Scratch::new("dvc");
        let run = dir.mkdir("run");
        let mailboxes = storage_root.join("mail").join("mailboxes");
        std::fs::create_dir_all(&mailboxes).unwrap();
        chown_to(&mailboxes, "mail");
        let imap_port = free_port();
        let lmtp_port = free_port();
        let sql = dir.join("dovecot-sql.conf.ext");
        std::fs::write(&sql, miab_sql_conf(storage_root)).unwrap();
        crate::set_mode(&sql, 0o600);
        let conf = format!(
            "base_dir = {run}
state_dir = {state}
log_path = {log}
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
# Failures answer at once: the tests count refusals, not seconds.
auth_failure_delay = 0
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/mailboxes/%d/%n
mail_privileged_group = mail
first_valid_uid = 0
default_internal_user = dovecot
default_login_user = dovenull
{auth}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service auth {{
  unix_listener auth-client {{
    mode = 0666
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@harness.example
}}
{extra}
",
            run = run.display(),
            state = dir.mkdir("state").display(),
            log = dir.join("dovecot.log").display(),
            root = storage_root.display(),
            auth = match auth {
                Auth::Sql => format!(
                    "passdb {{\n  driver = sql\n  args = {sql}\n}}\nuserdb {{\n  driver = sql\n  args = {sql}\n}}",
                    sql = sql.display()
                ),
                Auth::Checkpassword(program) => format!(
                    "passdb {{\n  driver = checkpassword\n  args = {program}\n}}\nuserdb {{\n  driver = prefetch\n}}\nuserdb {{\n  driver = checkpassword\n  args = {program}\n}}"
                ),
            },
        );
        let conf_path = dir.join("dovecot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(dovecot)
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dovecot");
        let dv = Dovecot {
            dir,
            child,
            imap_port,
            lmtp_port,
        };
        assert!(
            wait_for_port(imap_port, Duration::from_secs(20)),
            "dovecot did not listen on {imap_port}\nlog:\n{}",
            dv.log()
        );
        dv
    }

    /// IMAP (plaintext) on 127.0.0.1.
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }

    /// LMTP on 127.0.0.1.
    pub fn lmtp_port(&self) -> u16 {
        self.lmtp_port
    }

    /// The auth-client socket Postfix's `smtpd_sasl_type = dovecot` talks to (mode 0666).
    pub fn auth_client_socket(&self) -> PathBuf {
        self.dir.join("run").join("auth-client")
    }

    /// The master process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file, for `doveadm -c`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("dovecot.conf")
    }

    /// The instance's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let stopped = crate::wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        if stopped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- dovecot log ---\n{}", self.log());
        }
    }
}
