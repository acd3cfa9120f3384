//! Verification: a login and password against the directory (nothing for a suspended login,
//! an app password first when the password has that shape, then the main password unless the
//! user requires app passwords),
//! with the brake before and the success cache around the hash, and the failure lines
//! fail2ban matches.

use crate::handler;
use crate::{State, guard};
use directory::Directory;
use userdb::{Password, app_password};

/// A user row, as far as authentication needs it.
#[derive(Clone)]
pub(crate) struct Account {
    /// The canonical address.
    pub(crate) email: String,
    hash: String,
    id: i64,
    app_passwords_required: bool,
    /// Suspended by `miabctl user suspend`: no password lets it in.
    suspended: bool,
    /// MIAB's quota string (`0`, `500M`, ...).
    pub(crate) quota: String,
}

/// What a verification found.
pub(crate) enum Verified {
    /// The account, and which password matched (for the log).
    Yes(Account, &'static str),
    /// Refused (the folded login and why, for the log).
    No(String, &'static str),
    /// The client or the login is cooling off after too many failures (the folded login).
    Refused(String),
    /// The DB could not answer.
    Temp(String),
}

impl State {
    /// The account for a folded login, from the directory in memory.
    pub(crate) async fn account(&self, key: &str) -> userdb::Result<Option<Account>> {
        let dir = self.dir.current().await?;
        Ok(dir.user(key).map(|u| Account {
            app_passwords_required: dir.app_passwords_required(u.id),
            suspended: dir.suspended(u.id),
            email: u.email,
            hash: u.password_hash,
            id: u.id,
            quota: u.quota,
        }))
    }

    /// Checks a login and password against the user DB: an app password first (when the
    /// password has that shape), then the main password unless the user requires app
    /// passwords.
    pub(crate) async fn verify(
        &self,
        login: &str,
        password: Password,
        rip: &str,
        service: &str,
    ) -> Verified {
        let key = handler::fold_login(login);
        let ip = rip.parse().ok();
        if self.brake.check(ip, &key).is_some() {
            return Verified::Refused(key);
        }
        let account = match self.account(&key).await {
            Ok(a) => a,
            Err(e) => return Verified::Temp(e.to_string()),
        };
        let Some(account) = account else {
            // An unknown user costs a hash as well, so timing does not tell which logins exist.
            self.hashers.verify(password, self.decoy_hash.clone()).await;
            return self.failed(ip, key, rip, "unknown user");
        };
        if account.suspended {
            // Not a failure for the brake: the user's own clients keep retrying, and must
            // not be locked out once the administrator lets the login in again.
            self.hashers.verify(password, self.decoy_hash.clone()).await;
            return Verified::No(key, "login suspended");
        }
        if let Some(digest) = app_password::candidate_digest(password.expose()) {
            let found = self
                .dir
                .current()
                .await
                .map(|dir| dir.app_password(account.id, &digest));
            match found {
                Err(e) => return Verified::Temp(e.to_string()),
                Ok(Some(m)) => {
                    if !app_password::scope_allows(&m.scopes, service) {
                        return self.failed(
                            ip,
                            key,
                            rip,
                            "app password not valid for this service",
                        );
                    }
                    self.touch_app_password(m.id);
                    return Verified::Yes(account, "app password");
                }
                Ok(None) => {}
            }
        }
        if account.app_passwords_required {
            // As long as a wrong password takes: no faster answer tells such users apart.
            self.hashers.verify(password, self.decoy_hash.clone()).await;
            return self.failed(ip, key, rip, "app password required");
        }
        if self.cache.hit(&key, password.expose(), &account.hash) {
            return Verified::Yes(account, "remembered password");
        }
        let remember = password.clone();
        if self.hashers.verify(password, account.hash.clone()).await {
            self.cache.insert(&key, remember.expose(), &account.hash);
            Verified::Yes(account, "password")
        } else {
            self.failed(ip, key, rip, "wrong password")
        }
    }

    /// Counts a failure against the brake, logging a block once, in a fixed shape fail2ban
    /// can match.
    fn failed(
        &self,
        ip: Option<std::net::IpAddr>,
        key: String,
        rip: &str,
        why: &'static str,
    ) -> Verified {
        for b in self.brake.failed(ip, &key) {
            match b {
                guard::Blocked::Ip(net) => tracing::warn!(
                    "authentication brake: too many failures from rip={net}, refused for {} s",
                    self.brake.cooloff().as_secs()
                ),
                guard::Blocked::Login(l) => tracing::warn!(
                    "authentication brake: too many failures for login={l:?} (last rip={rip:?}), refused for {} s to clients it never logged in from",
                    self.brake.cooloff().as_secs()
                ),
                guard::Blocked::ProxiedLogin(l) => tracing::warn!(
                    "authentication brake: too many failures for login={l:?} through a trusted proxy (rip={rip:?}), refused there for {} s",
                    self.brake.cooloff().as_secs()
                ),
                guard::Blocked::Device(l, net) => tracing::warn!(
                    "authentication brake: too many failures for login={l:?} on its known device network {net}, refused there for {} s",
                    self.brake.cooloff().as_secs()
                ),
            }
        }
        Verified::No(key, why)
    }
}
