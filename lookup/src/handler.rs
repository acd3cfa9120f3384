//! The answers: what MIAB's four `sqlite:` maps give, including what Postfix would have found
//! through its partial keys, since a socketmap only ever sees the full key.

use directory::Directory;
use userdb::Delimiters;

/// The maps this server answers, named as in `socketmap:...:NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    /// `virtual_mailbox_domains`: is the key one of our domains?
    Domains,
    /// `virtual_mailbox_maps`: is the address a mailbox?
    Mailboxes,
    /// `virtual_alias_maps`: what the address is rewritten to.
    Aliases,
    /// `smtpd_sender_login_maps`: which logins own the address.
    Senders,
}

impl Map {
    /// Every map, for documentation and tests.
    pub const ALL: [Map; 4] = [Map::Domains, Map::Mailboxes, Map::Aliases, Map::Senders];

    /// The map for a request name; `None` for an unknown name.
    pub fn from_name(name: &str) -> Option<Map> {
        Map::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The name Postfix sends.
    pub fn name(self) -> &'static str {
        match self {
            Map::Domains => "domains",
            Map::Mailboxes => "mailboxes",
            Map::Aliases => "aliases",
            Map::Senders => "senders",
        }
    }
}

/// Answers one key. `None` is not found; a found value is never empty.
pub fn lookup(dir: &impl Directory, map: Map, key: &str, delims: &Delimiters) -> Option<String> {
    let found = |yes: bool| yes.then(|| "1".to_owned());
    match map {
        Map::Domains => found(dir.is_local_domain(key)),
        Map::Mailboxes => found(dir.is_mailbox(key, delims)),
        Map::Aliases => dir.resolve_alias(key, delims).and_then(join),
        Map::Senders => dir.sender_owners(key, delims).and_then(join),
    }
}

fn join(list: Vec<String>) -> Option<String> {
    (!list.is_empty()).then(|| list.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use userdb::{BoxEnv, Password, UserDb};

    #[test]
    fn every_map_over_a_small_box() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.sqlite");
        let mut db = UserDb::create(&path).unwrap();
        let env = BoxEnv {
            primary_hostname: "box.example.com".into(),
        };
        db.add_user("me@example.com", &Password::new("12345678"), "", "0", &env)
            .unwrap();
        db.add_alias(
            "team@example.com",
            "me@example.com,x@ext.example",
            "",
            false,
            &env,
        )
        .unwrap();
        db.add_alias("@catch.example", "me@example.com", "", false, &env)
            .unwrap();
        let d = Delimiters::default();
        let dir = directory::Snapshot::read(&db).unwrap();
        let q = |m, k| lookup(&dir, m, k, &d);
        assert_eq!(q(Map::Domains, "EXAMPLE.com").as_deref(), Some("1"));
        assert_eq!(q(Map::Domains, "nope.example"), None);
        assert_eq!(q(Map::Mailboxes, "me+x@example.com").as_deref(), Some("1"));
        assert_eq!(
            q(Map::Aliases, "team+t@example.com").as_deref(),
            Some("me+t@example.com,x+t@ext.example")
        );
        assert_eq!(
            q(Map::Aliases, "any@catch.example").as_deref(),
            Some("me@example.com")
        );
        assert_eq!(
            q(Map::Senders, "team@example.com").as_deref(),
            Some("me@example.com,x@ext.example")
        );
        assert_eq!(q(Map::Senders, "nobody@example.com"), None);
        assert_eq!(Map::from_name("aliases"), Some(Map::Aliases));
        assert_eq!(Map::from_name("virtual"), None);
    }
}
