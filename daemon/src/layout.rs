//! The storage layout: where every file of the box lives, read from `sidecars.toml` once, so
//! every binary (the daemons and miabctl alike) asks here for every path and none can disagree
//! with another.
//!
//! Everything lives under MIAB's `STORAGE_ROOT`, as MIAB lays it out; the settings that name a
//! file elsewhere (`[policyd.greylist] db`, `[policyd.containment] db`, `[milter] key_file`,
//! `[milter] ed25519_key_file`) are read here, and the daemons' sections are given the result.

use std::path::{Path, PathBuf};

/// Every path, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    storage_root: PathBuf,
    greylist_db: PathBuf,
    sending_db: PathBuf,
    dkim_key: PathBuf,
    dkim_ed25519_key: Option<PathBuf>,
}

/// The settings that may move a file, as the file gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub greylist_db: Option<PathBuf>,
    pub sending_db: Option<PathBuf>,
    pub dkim_key: Option<PathBuf>,
    pub dkim_ed25519_key: Option<PathBuf>,
}

impl Layout {
    /// MIAB's layout under `storage_root`, with `moved` files where the settings put them.
    pub fn new(storage_root: &Path, moved: Overrides) -> Layout {
        let mail = storage_root.join("mail");
        Layout {
            storage_root: storage_root.to_owned(),
            greylist_db: moved
                .greylist_db
                .unwrap_or_else(|| mail.join("policyd").join("greylist.sqlite")),
            sending_db: moved
                .sending_db
                .unwrap_or_else(|| mail.join("policyd").join("sending.sqlite")),
            dkim_key: moved
                .dkim_key
                .unwrap_or_else(|| mail.join("dkim").join("mail.private")),
            dkim_ed25519_key: moved.dkim_ed25519_key,
        }
    }

    /// MIAB's `STORAGE_ROOT`.
    pub fn storage_root(&self) -> &Path {
        &self.storage_root
    }

    /// MIAB's user DB: `STORAGE_ROOT/mail/users.sqlite`.
    pub fn users_db(&self) -> PathBuf {
        self.storage_root.join("mail").join("users.sqlite")
    }

    /// The users' mail: `STORAGE_ROOT/mail/mailboxes/<domain>/<user>`.
    pub fn mailboxes(&self) -> PathBuf {
        self.storage_root.join("mail").join("mailboxes")
    }

    /// miab-policyd's directory (its socket group's files live here).
    pub fn policyd_dir(&self) -> PathBuf {
        self.storage_root.join("mail").join("policyd")
    }

    /// miab-authd's directory.
    pub fn authd_dir(&self) -> PathBuf {
        self.storage_root.join("mail").join("authd")
    }

    /// miab-policyd's greylist.
    pub fn greylist_db(&self) -> &Path {
        &self.greylist_db
    }

    /// miab-policyd's record of what each login sends, and the held logins.
    pub fn sending_db(&self) -> &Path {
        &self.sending_db
    }

    /// miab-authd's known devices.
    pub fn known_devices_db(&self) -> PathBuf {
        self.authd_dir().join("known-devices.sqlite")
    }

    /// miab-authd's record of app-password use.
    pub fn app_password_use_db(&self) -> PathBuf {
        self.authd_dir().join("app-password-use.sqlite")
    }

    /// The DKIM keys' directory: the RSA key's, where per-domain keys (`<domain>.private`)
    /// sit next to it (by default MIAB's `STORAGE_ROOT/mail/dkim`, as `dkim.sh` makes it).
    pub fn dkim_dir(&self) -> PathBuf {
        self.dkim_key.parent().map_or_else(
            || self.storage_root.join("mail").join("dkim"),
            Path::to_owned,
        )
    }

    /// The RSA signing key.
    pub fn dkim_key(&self) -> &Path {
        &self.dkim_key
    }

    /// The Ed25519 signing key, if one is configured.
    pub fn dkim_ed25519_key(&self) -> Option<&Path> {
        self.dkim_ed25519_key.as_deref()
    }

    /// Where an Ed25519 key is made: the configured one, else `ed25519.private` in
    /// [`Layout::dkim_dir`].
    pub fn dkim_ed25519_key_to_make(&self) -> PathBuf {
        self.dkim_ed25519_key
            .clone()
            .unwrap_or_else(|| self.dkim_dir().join("ed25519.private"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miab_layout_unless_moved() {
        let l = Layout::new(Path::new("/srv/box"), Overrides::default());
        assert_eq!(l.users_db(), Path::new("/srv/box/mail/users.sqlite"));
        assert_eq!(
            l.greylist_db(),
            Path::new("/srv/box/mail/policyd/greylist.sqlite")
        );
        assert_eq!(
            l.sending_db(),
            Path::new("/srv/box/mail/policyd/sending.sqlite")
        );
        assert_eq!(
            l.known_devices_db(),
            Path::new("/srv/box/mail/authd/known-devices.sqlite")
        );
        assert_eq!(l.dkim_key(), Path::new("/srv/box/mail/dkim/mail.private"));
        let moved = Layout::new(
            Path::new("/srv/box"),
            Overrides {
                sending_db: Some("/var/lib/x/sending.sqlite".into()),
                ..Overrides::default()
            },
        );
        assert_eq!(moved.sending_db(), Path::new("/var/lib/x/sending.sqlite"));
        assert_eq!(moved.greylist_db(), l.greylist_db());
    }
}
