//! `miabctl sidecars status`: every integration point of a switched box, each answered in
//! plain words, and for each problem the command that fixes it.

use super::{AUTH_CONF, DAEMONS, OUR_DOVECOT_CONF, REPAIR_UNITS, REPLACED, Sys};
use super::{drop_in, wiring};
use daemon::Layout;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Where Postfix and Dovecot reach the daemons.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A UNIX socket that must accept a connection; `greeting` is what the server says first.
    Unix {
        path: &'static str,
        who: &'static str,
        greeting: Option<&'static str>,
    },
    /// A policy service that must answer a request.
    Policy {
        addr: &'static str,
        who: &'static str,
    },
    /// A TCP port that must accept a connection.
    Tcp {
        addr: &'static str,
        who: &'static str,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix { path, who, .. } => write!(f, "{who} on {path}"),
            Endpoint::Policy { addr, who } | Endpoint::Tcp { addr, who } => {
                write!(f, "{who} on {addr}")
            }
        }
    }
}

/// Every endpoint of a switched box.
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::Unix {
            path: "/var/spool/postfix/miab-lookup/socketmap",
            who: "miab-lookup",
            greeting: None,
        },
        Endpoint::Unix {
            path: "/var/spool/postfix/miab-authd/auth",
            who: "miab-authd (Postfix SMTP AUTH)",
            greeting: Some("VERSION\t1\t"),
        },
        Endpoint::Unix {
            path: "/run/miab-authd/checkpassword",
            who: "miab-authd (Dovecot checkpassword)",
            greeting: Some("VERSION\t1\t"),
        },
        Endpoint::Policy {
            addr: "/var/spool/postfix/miab-policyd/policy",
            who: "miab-policyd",
        },
        Endpoint::Policy {
            addr: "127.0.0.1:10023",
            who: "miab-policyd (greylisting only, postgrey's port)",
        },
        Endpoint::Tcp {
            addr: "127.0.0.1:8891",
            who: "miab-milter",
        },
        Endpoint::Tcp {
            addr: "127.0.0.1:8893",
            who: "miab-milter (accept-only, OpenDMARC's port)",
        },
    ]
}

const TIMEOUT: Duration = Duration::from_secs(3);

impl Endpoint {
    /// Does it answer?
    pub fn answers(&self, sys: &Sys) -> bool {
        match self {
            Endpoint::Unix { path, greeting, .. } => {
                let Ok(mut s) = UnixStream::connect(sys.path(path)) else {
                    return false;
                };
                let Some(g) = greeting else {
                    return true;
                };
                let _ = s.set_read_timeout(Some(TIMEOUT));
                let mut buf = vec![0u8; g.len()];
                s.read_exact(&mut buf).is_ok() && buf == g.as_bytes()
            }
            Endpoint::Tcp { addr, .. } => tcp(addr).is_some(),
            Endpoint::Policy { addr, .. } => {
                let stream: Option<Box<dyn ReadWrite>> = if addr.starts_with('/') {
                    UnixStream::connect(sys.path(addr)).ok().map(|s| {
                        let _ = s.set_read_timeout(Some(TIMEOUT));
                        Box::new(s) as Box<dyn ReadWrite>
                    })
                } else {
                    tcp(addr).map(|s| Box::new(s) as Box<dyn ReadWrite>)
                };
                let Some(mut s) = stream else {
                    return false;
                };
                // A request from a trusted client: nothing is written to any state.
                let req = "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=127.0.0.1\nclient_name=localhost\nsender=\nrecipient=status-check@localhost\n\n";
                if s.write_all(req.as_bytes()).is_err() {
                    return false;
                }
                let mut reply = Vec::new();
                let mut buf = [0u8; 512];
                while !reply.ends_with(b"\n\n") && reply.len() < 4096 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => reply.extend_from_slice(&buf[..n]),
                    }
                }
                reply.starts_with(b"action=") && reply.ends_with(b"\n\n")
            }
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn tcp(addr: &str) -> Option<TcpStream> {
    let a: SocketAddr = addr.parse().ok()?;
    let s = TcpStream::connect_timeout(&a, TIMEOUT).ok()?;
    s.set_read_timeout(Some(TIMEOUT)).ok()?;
    s.set_write_timeout(Some(TIMEOUT)).ok()?;
    Some(s)
}

/// The daemons' own SQLite files under the storage root (what MIAB's backup must copy whole).
pub fn state_dbs(layout: &Layout) -> Vec<PathBuf> {
    vec![
        layout.greylist_db().to_owned(),
        layout.sending_db().to_owned(),
        layout.app_password_use_db(),
        layout.known_devices_db(),
    ]
}

/// One finding.
#[derive(Debug)]
pub struct Finding {
    pub ok: bool,
    /// Worth a look, but not a failure of the switch (exit code 0).
    pub warn: bool,
    pub what: String,
    pub fix: Option<String>,
}

pub(super) fn ok(what: impl Into<String>) -> Finding {
    Finding {
        ok: true,
        warn: false,
        what: what.into(),
        fix: None,
    }
}

pub(super) fn warn(what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        ok: true,
        warn: true,
        what: what.into(),
        fix: Some(fix.into()),
    }
}

pub(super) fn bad(what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        ok: false,
        warn: false,
        what: what.into(),
        fix: Some(fix.into()),
    }
}

const REPAIR: &str = "miabctl sidecars repair";

/// Every check, in the order an operator would look.
pub fn check(sys: &Sys) -> Vec<Finding> {
    let mut out = Vec::new();
    if !sys.enabled() {
        out.push(bad(
            "the box runs on Mail-in-a-Box's own daemons (postgrey, OpenDKIM, OpenDMARC, Dovecot's SQL passdb)",
            "miabctl sidecars enable",
        ));
        return out;
    }
    if sys.is_live() {
        out.push(ok(format!(
            "Postfix {} and Dovecot {} (the wiring for Dovecot {})",
            sys.postconf("mail_version"),
            sys.dovecot_version(),
            sys.dovecot()
        )));
    }
    for unit in DAEMONS {
        if active(sys, unit) {
            out.push(ok(format!("{unit} is running")));
        } else {
            out.push(bad(
                format!("{unit} is not running"),
                format!("systemctl restart {unit}; journalctl -u {unit} -n 20"),
            ));
        }
    }
    for e in endpoints() {
        if e.answers(sys) {
            out.push(ok(format!("{e} answers")));
        } else {
            out.push(bad(
                format!("nothing answers for {e}"),
                "systemctl restart miab-lookup miab-authd miab-policyd miab-milter",
            ));
        }
    }
    for (unit, text) in REPLACED {
        let file = std::fs::read_to_string(sys.path(&drop_in(unit)));
        let loaded = sys
            .show(unit, "DropInPaths")
            .is_none_or(|paths| paths.contains(&drop_in(unit)));
        if file.ok().as_deref() == Some(text) && loaded {
            out.push(ok(format!(
                "{unit} is neutralised (MIAB's `service {unit} restart` starts nothing)"
            )));
        } else {
            out.push(bad(
                format!(
                    "{unit} is not neutralised: MIAB's next `service {unit} start` would start it"
                ),
                REPAIR,
            ));
        }
    }
    let changes = wiring::main_cf_changes(|n| sys.postconf(n));
    if changes.is_empty() {
        out.push(ok(
            "Postfix asks the sidecars (maps, SMTP AUTH, milter, policy service)",
        ));
    }
    for (name, want) in changes {
        out.push(bad(
            format!(
                "main.cf has {name} = {:?}, not the sidecars' {want:?} (rewritten by an upgrade?)",
                sys.postconf(name)
            ),
            REPAIR,
        ));
    }
    let dovecot = sys.dovecot();
    let driver = dovecot.driver();
    let ours = std::fs::read_to_string(sys.path(OUR_DOVECOT_CONF)).ok();
    let sql = std::fs::read_to_string(sys.path(AUTH_CONF))
        .map(|t| wiring::auth_conf_has_sql(&t))
        .unwrap_or(false);
    match (ours.as_deref() == Some(dovecot.conf()), sql) {
        (true, false) => out.push(ok(format!(
            "Dovecot {dovecot} checks passwords through miab-authd only ({driver} passdb first, SQL passdb off)"
        ))),
        (true, true) => out.push(bad(
            "Dovecot's SQL passdb is back in 10-auth.conf (behind ours, which answers first)",
            REPAIR,
        )),
        (false, _) => out.push(bad(
            format!(
                "{OUR_DOVECOT_CONF} is missing, changed or not Dovecot {dovecot}'s: IMAP logins may skip miab-authd"
            ),
            REPAIR,
        )),
    }
    if let Ok(text) = std::fs::read_to_string(sys.path(super::ZPUSH_IMAP_CONF)) {
        if wiring::zpush_uses_sendmail(&text) {
            out.push(bad(
                "Z-Push (ActiveSync) sends through sendmail: no login, so no containment or From: check",
                REPAIR,
            ));
        } else {
            out.push(ok(
                "Z-Push (ActiveSync) sends through SMTP AUTH on 127.0.0.1:465",
            ));
        }
    }
    if let Some(first) = sys.first_passdb() {
        if first == driver {
            out.push(ok(format!("doveconf: the first passdb is {driver}")));
        } else {
            out.push(bad(
                format!("doveconf: the first passdb is {first}, not {driver}"),
                REPAIR,
            ));
        }
    }
    if dovecot == super::Dovecot::V24 {
        for (what, found) in sys.lua_parts() {
            if !found {
                out.push(bad(
                    format!("{what} is missing: Dovecot 2.4 cannot ask miab-authd"),
                    "apt-get install dovecot-auth-lua lua-socket",
                ));
            }
        }
    }
    for unit in REPAIR_UNITS {
        if active(sys, unit) {
            out.push(ok(format!("{unit} watches for rewrites")));
        } else {
            out.push(bad(
                format!("{unit} is not active: a rewrite by an upgrade would not be undone"),
                format!("systemctl enable --now {unit}"),
            ));
        }
    }
    let key = sys.layout.dkim_key();
    if key.exists() {
        out.push(ok(format!(
            "DKIM key {} (copied for miab-milter at its start)",
            key.display()
        )));
    } else {
        out.push(bad(
            format!(
                "no DKIM key at {}: mail would leave unsigned",
                key.display()
            ),
            "miabctl dkim generate && systemctl restart miab-milter",
        ));
    }
    if state::backup::held_at(&sys.path(state::backup::HOLD_FILE)) {
        out.push(bad(
            "a backup holds the sidecars' background writes (greylist expiry waits)",
            "miabctl sidecars backup-release (if no backup is running)",
        ));
    }
    out
}

fn active(sys: &Sys, unit: &str) -> bool {
    sys.show(unit, "ActiveState").is_none_or(|s| s == "active")
}

impl Sys {
    /// `systemctl show -p PROP --value UNIT`; `None` in a scratch tree.
    fn show(&self, unit: &str, prop: &str) -> Option<String> {
        if !self.is_live() {
            return None;
        }
        Some(
            self.systemctl(&["show", "-p", prop, "--value", unit])
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        )
    }

    /// What Dovecot 2.4's Lua passdb needs, each with whether it is there; nothing in a
    /// scratch tree.
    pub fn lua_parts(&self) -> Vec<(String, bool)> {
        if !self.is_live() {
            return Vec::new();
        }
        [
            (
                format!("the Lua script {}", super::DOVECOT_LUA),
                super::DOVECOT_LUA,
            ),
            (
                "Dovecot's Lua passdb (package dovecot-auth-lua)".to_owned(),
                "/usr/lib/dovecot/modules/auth/libauthdb_lua.so",
            ),
            (
                "LuaSocket for Lua 5.4 (package lua-socket)".to_owned(),
                "/usr/share/lua/5.4/socket.lua",
            ),
        ]
        .into_iter()
        .map(|(what, path)| (what, self.path(path).exists()))
        .collect()
    }

    /// The driver of the first passdb in `doveconf -n`; `None` in a scratch tree.
    fn first_passdb(&self) -> Option<String> {
        if !self.is_live() {
            return None;
        }
        let conf = self.run("doveconf", &["-n"]).unwrap_or_default();
        let mut in_passdb = false;
        for line in conf.lines() {
            let l = line.trim();
            if l.starts_with("passdb") && l.ends_with('{') {
                in_passdb = true;
            } else if in_passdb && let Some(d) = l.strip_prefix("driver = ") {
                return Some(d.to_owned());
            }
        }
        Some("none".into())
    }
}

/// Prints the findings; returns whether all were fine.
pub fn print(findings: &[Finding]) -> bool {
    for f in findings {
        let tag = match (f.ok, f.warn) {
            (false, _) => "FAIL",
            (true, true) => "warn",
            (true, false) => "ok  ",
        };
        println!("{tag}  {}", f.what);
        if let Some(fix) = f.fix.as_ref().filter(|_| !f.ok || f.warn) {
            println!("      fix: {fix}");
        }
    }
    findings.iter().all(|f| f.ok)
}
