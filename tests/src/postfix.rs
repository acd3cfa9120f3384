//! A throw-away Postfix instance: its own config and queue directories, an smtpd on a loopback
//! port, and every delivery (local domains and the rest) sent to an [`SmtpSink`].

use crate::sink::SmtpSink;
use crate::{Scratch, chown_to, free_port, require_program, tools, wait_for_port, wait_until};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What to put into the instance beyond the defaults.
#[derive(Debug, Default, Clone)]
pub struct PostfixConfig {
    /// Extra `main.cf` lines (`name = value`), appended last so they win.
    pub main_cf: Vec<(String, String)>,
    /// Extra `master.cf` lines, verbatim.
    pub master_cf: Vec<String>,
}

impl PostfixConfig {
    /// Adds a `main.cf` setting.
    pub fn set(mut self, name: &str, value: impl Into<String>) -> Self {
        self.main_cf.push((name.to_owned(), value.into()));
        self
    }
}

/// A running instance; stopped on drop.
#[derive(Debug)]
pub struct Postfix {
    dir: Scratch,
    config_dir: PathBuf,
    smtp_port: u16,
    /// Where everything Postfix delivers ends up.
    pub sink: SmtpSink,
}

const MASTER_CF: &str = "\
pickup    unix  n       -       n       1       1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

impl Postfix {
    /// Writes the configuration and runs `postfix -c DIR start`.
    pub fn start(config: PostfixConfig) -> Postfix {
        let postfix = require_program("/usr/sbin/postfix", "postfix");
        let sink = SmtpSink::start();
        let dir = Scratch::new("pfx");
        let config_dir = dir.mkdir("etc");
        let queue = dir.mkdir("queue");
        let data = dir.mkdir("data");
        chown_to(&data, "postfix");
        let smtp_port = free_port();
        let sink_port = sink.port();

        let mut main = format!(
            "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.harness.example
mydomain = harness.example
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtputf8_enable = no
biff = no
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{sink_port}
virtual_transport = smtp:[127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file_prefixes = {root}
maillog_file = {log}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
",
            queue = queue.display(),
            data = data.display(),
            log = dir.join("postfix.log").display(),
            root = dir.path().display(),
        );
        for (k, v) in &config.main_cf {
            writeln!(main, "{k} = {v}").unwrap();
        }
        std::fs::write(config_dir.join("main.cf"), main).unwrap();
        let mut master = format!("127.0.0.1:{smtp_port} inet n - n - - smtpd\n");
        master.push_str(MASTER_CF);
        for l in &config.master_cf {
            master.push_str(l);
            master.push('\n');
        }
        std::fs::write(config_dir.join("master.cf"), master).unwrap();

        let out = Command::new(&postfix)
            .arg("-c")
            .arg(&config_dir)
            .arg("start")
            .output()
            .expect("run postfix start");
        let pf = Postfix {
            dir,
            config_dir,
            smtp_port,
            sink,
        };
        assert!(
            out.status.success(),
            "postfix start failed: {}{}\nlog:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pf.log()
        );
        assert!(
            wait_for_port(smtp_port, Duration::from_secs(20)),
            "postfix smtpd did not listen on {smtp_port}\nlog:\n{}",
            pf.log()
        );
        pf
    }

    /// The smtpd port on 127.0.0.1.
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port
    }

    /// The instance's config directory (for `postmap -c`, `postconf -c`).
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// A file in the instance's scratch directory.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// The instance's mail log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postfix.log")).unwrap_or_default()
    }

    /// `postqueue -p` output for this instance.
    pub fn queue(&self) -> String {
        let out = Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(&self.config_dir)
            .arg("-p")
            .output()
            .expect("run postqueue");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends one message to `rcpt` with `marker` in its subject, waits until the queue is empty,
    /// and returns the envelope recipients it finally reached (`+tag` included).
    pub fn final_recipients(&self, rcpt: &str, marker: &str) -> BTreeSet<String> {
        let subject = format!("Subject: {marker}");
        let r = tools::swaks(
            self.smtp_port,
            &[
                "--to",
                rcpt,
                "--from",
                "sender@elsewhere.example",
                "--header",
                &subject,
            ],
        );
        assert!(r.ok(), "{rcpt} refused: {}", r.stdout);
        let collect = || -> BTreeSet<String> {
            self.sink
                .messages()
                .into_iter()
                .filter(|m| m.data.contains(marker))
                .flat_map(|m| m.rcpt_to)
                .collect()
        };
        // Recipients on different transports arrive in separate deliveries: wait for them all.
        wait_until(Duration::from_secs(30), || {
            (!collect().is_empty() && self.queue().contains("Mail queue is empty")).then_some(())
        })
        .unwrap_or_else(|| panic!("{rcpt}: not delivered; queue:\n{}", self.queue()));
        collect()
    }

    /// Runs `sendmail -C DIR ARGS` as the local user `uid`:`gid` with `message` on its
    /// standard input, as a web application or Sieve would. A user other than root may name
    /// a configuration directory only where the default `main.cf` lists it in
    /// `alternate_config_directories`, so the command runs in a mount namespace of its own in
    /// which `/etc/postfix` is a scratch directory saying so; the host's is not read.
    pub fn sendmail_as(&self, uid: u32, gid: u32, args: &[&str], message: &str) -> tools::Run {
        let etc = self.dir.mkdir("etc-default");
        std::fs::write(
            etc.join("main.cf"),
            format!(
                "compatibility_level = 3.6\nalternate_config_directories = {}\n",
                self.config_dir.display()
            ),
        )
        .unwrap();
        let mut script = format!(
            "mount --bind {} /etc/postfix && exec setpriv --reuid={uid} --regid={gid} --clear-groups /usr/sbin/sendmail -C {}",
            etc.display(),
            self.config_dir.display()
        );
        for a in args {
            script.push_str(" '");
            script.push_str(&a.replace('\'', "'\\''"));
            script.push('\'');
        }
        tools::run(
            Command::new("unshare").args(["--mount", "sh", "-c", &script]),
            Some(message),
        )
    }

    /// The queue ids in the hold queue (`postqueue -j`).
    pub fn held_ids(&self) -> Vec<String> {
        let out = Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.config_dir())
            .arg("-j")
            .output()
            .expect("run postqueue -j");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.replace([' ', '\t'], ""))
            .filter(|l| l.contains("\"queue_name\":\"hold\""))
            .filter_map(|l| {
                let id = l.split("\"queue_id\":\"").nth(1)?;
                Some(id[..id.find('"')?].to_owned())
            })
            .collect()
    }

    /// Asks the queue manager to retry deferred mail now.
    pub fn flush(&self) {
        let _ = Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(&self.config_dir)
            .arg("-f")
            .output();
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.config_dir)
            .arg("stop")
            .output();
        if std::thread::panicking() {
            eprintln!(
                "--- postfix log ({}) ---\n{}",
                self.config_dir.display(),
                self.log()
            );
        }
    }
}

/// MIAB's four `sqlite:` map files (`setup/mail-users.sh`, queries verbatim) over `db`.
#[derive(Debug, Clone)]
pub struct MiabSqliteMaps {
    /// `virtual_mailbox_domains`.
    pub domains: String,
    /// `virtual_mailbox_maps`.
    pub mailboxes: String,
    /// `virtual_alias_maps`.
    pub aliases: String,
    /// `smtpd_sender_login_maps`.
    pub senders: String,
}

impl MiabSqliteMaps {
    /// Writes the map files into `dir` and returns their `sqlite:` table names.
    pub fn write(dir: &Path, db: &Path) -> MiabSqliteMaps {
        let db = db.display();
        let write = |name: &str, query: &str| {
            let p = dir.join(name);
            std::fs::write(&p, format!("dbpath={db}\nquery = {query}\n")).unwrap();
            format!("sqlite:{}", p.display())
        };
        MiabSqliteMaps {
            domains: write(
                "virtual-mailbox-domains.cf",
                "SELECT 1 FROM users WHERE email LIKE '%%@%s' UNION SELECT 1 FROM aliases WHERE source LIKE '%%@%s' UNION SELECT 1 FROM auto_aliases WHERE source LIKE '%%@%s'",
            ),
            mailboxes: write(
                "virtual-mailbox-maps.cf",
                "SELECT 1 FROM users WHERE email='%s'",
            ),
            aliases: write(
                "virtual-alias-maps.cf",
                "SELECT destination from (SELECT destination, 0 as priority FROM aliases WHERE source='%s' AND destination<>'' UNION SELECT email as destination, 1 as priority FROM users WHERE email='%s' UNION SELECT destination, 2 as priority FROM auto_aliases WHERE source='%s' AND destination<>'') ORDER BY priority LIMIT 1;",
            ),
            senders: write(
                "sender-login-maps.cf",
                "SELECT permitted_senders FROM (SELECT permitted_senders, 0 AS priority FROM aliases WHERE source='%s' AND permitted_senders IS NOT NULL UNION SELECT destination AS permitted_senders, 1 AS priority FROM aliases WHERE source='%s' AND permitted_senders IS NULL UNION SELECT email as permitted_senders, 2 AS priority FROM users WHERE email='%s') ORDER BY priority LIMIT 1;",
            ),
        }
    }

    /// The `main.cf` lines MIAB uses to wire these maps in.
    pub fn main_cf(&self, config: PostfixConfig) -> PostfixConfig {
        config
            .set("virtual_mailbox_domains", &self.domains)
            .set("virtual_mailbox_maps", &self.mailboxes)
            .set("virtual_alias_maps", &self.aliases)
            .set("local_recipient_maps", "$virtual_mailbox_maps")
            .set("smtpd_sender_login_maps", &self.senders)
            .set("recipient_delimiter", "+")
    }
}

/// The `main.cf` lines that point the same four settings at `miab-lookup` on `endpoint`
/// (`unix:/path` or `inet:host:port`), as `packaging/postfix-main.cf` does.
pub fn lookup_socketmaps(endpoint: &str, config: PostfixConfig) -> PostfixConfig {
    let map = |name: &str| format!("socketmap:{endpoint}:{name}");
    config
        .set("virtual_mailbox_domains", map("domains"))
        .set("virtual_mailbox_maps", map("mailboxes"))
        .set("virtual_alias_maps", map("aliases"))
        .set("local_recipient_maps", "$virtual_mailbox_maps")
        .set("smtpd_sender_login_maps", map("senders"))
        .set("recipient_delimiter", "+")
}
