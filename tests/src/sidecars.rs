//! One host's four daemons (miab-lookup, miab-policyd, miab-authd, miab-milter) started from
//! a `sidecars.toml`, with a DKIM key made by `miabctl dkim generate`, and the Postfix
//! configuration that asks them as `enable` wires a box: the maps over the socketmap, SMTP
//! AUTH through miab-authd, the policy service at the sender, recipient and end-of-data
//! stages, the milter with `milter_default_action = tempfail`.

use crate::postfix::{PostfixConfig, lookup_socketmaps};
use crate::process::DaemonProcess;
use crate::tools::run;
use crate::{Scratch, free_port, workspace_bin};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug)]
pub struct Sidecars {
    pub lookup: DaemonProcess,
    pub policyd: DaemonProcess,
    pub authd: DaemonProcess,
    pub milter: DaemonProcess,
    pub lookup_port: u16,
    pub policy_port: u16,
    pub milter_port: u16,
    /// miab-authd's Postfix socket.
    pub auth_sock: PathBuf,
    /// miab-authd's checkpassword socket.
    pub checkpassword_sock: PathBuf,
}

impl Sidecars {
    /// Makes the DKIM key and starts the four daemons with `config`, logging into `dir`.
    pub fn start(dir: &Scratch, config: &Path) -> Sidecars {
        let config = config.to_str().unwrap();
        let key = run(
            Command::new(workspace_bin("miabctl")).args(["--config", config, "dkim", "generate"]),
            None,
        );
        assert!(key.ok(), "{}{}", key.stdout, key.stderr);
        let start = |bin: &str, args: &[&str]| {
            let mut all = vec!["--config", config];
            all.extend_from_slice(args);
            DaemonProcess::start(&workspace_bin(bin), &all, dir.join(format!("{bin}.log")))
        };
        let inet = |port: u16| format!("inet:127.0.0.1:{port}");
        let milter_port = free_port();
        let milter = start("miab-milter", &["--listen", &inet(milter_port)]);
        let lookup_port = free_port();
        let lookup = start("miab-lookup", &["--listen", &inet(lookup_port)]);
        let policy_port = free_port();
        let policyd = start("miab-policyd", &["--listen", &inet(policy_port)]);
        let auth_sock = dir.join("auth.sock");
        let checkpassword_sock = dir.join("checkpassword.sock");
        let authd = start(
            "miab-authd",
            &[
                "--listen",
                &format!("unix:{}", auth_sock.display()),
                "--checkpassword-listen",
                &format!("unix:{}", checkpassword_sock.display()),
            ],
        );
        Sidecars {
            lookup,
            policyd,
            authd,
            milter,
            lookup_port,
            policy_port,
            milter_port,
            auth_sock,
            checkpassword_sock,
        }
    }

    /// Postfix's configuration asking these daemons.
    pub fn postfix_config(&self) -> PostfixConfig {
        let svc = |ctx: &str| {
            format!(
                "check_policy_service {{ inet:127.0.0.1:{}, timeout=10s, default_action=DEFER_IF_PERMIT, policy_context={ctx} }}",
                self.policy_port
            )
        };
        lookup_socketmaps(
            &format!("inet:127.0.0.1:{}", self.lookup_port),
            PostfixConfig::default(),
        )
        .set("mynetworks", "127.0.0.1/32")
        .set("smtpd_sasl_auth_enable", "yes")
        .set("smtpd_sasl_type", "dovecot")
        .set("smtpd_sasl_path", self.auth_sock.display().to_string())
        .set("smtpd_sender_restrictions", svc("sender"))
        .set(
            "smtpd_recipient_restrictions",
            format!(
                "permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination, {}",
                svc("recipient")
            ),
        )
        .set("smtpd_end_of_data_restrictions", svc("data"))
        .set(
            "smtpd_milters",
            format!("inet:127.0.0.1:{}", self.milter_port),
        )
        .set("milter_default_action", "tempfail")
    }

    /// The four daemons' logs, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "lookup:\n{}\npolicyd:\n{}\nauthd:\n{}\nmilter:\n{}",
            self.lookup.log(),
            self.policyd.log(),
            self.authd.log(),
            self.milter.log()
        )
    }
}

/// The shared settings of a test's `sidecars.toml`: the storage root, the fixture's host
/// name, and `[dns]` asking the test's DNS server with a short timeout. Each daemon's section
/// follows.
pub fn shared_settings(root: &Path, dns: std::net::SocketAddr) -> String {
    format!(
        "storage_root = \"{}\"\nhostname = \"{}\"\n[dns]\nnameservers = [\"{dns}\"]\ntimeout_ms = 400\n",
        root.display(),
        crate::fixture::HOSTNAME
    )
}
