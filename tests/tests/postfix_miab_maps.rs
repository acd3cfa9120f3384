//! Our `userdb` answers, checked against a real Postfix reading the same DB through MIAB's own
//! `sqlite:` maps: single keys through `postmap -q`, and whole rewrites (recursion, `+tag`,
//! catch-alls, domain aliases) through mail accepted by Postfix and caught by the sink.

use directory::SqlMaps;
use miab_e2e::fixture::{self, ADDRESS_KEYS, DOMAIN_KEYS};
use miab_e2e::postfix::{MiabSqliteMaps, Postfix, PostfixConfig};
use miab_e2e::{Scratch, tools};
use std::collections::BTreeSet;
use userdb::{Delimiters, UserDb};

fn fixture(dir: &Scratch) -> std::path::PathBuf {
    fixture::miab_box(dir.path())
}

#[test]
fn single_keys_match_postmap_on_miab_sqlite_maps() {
    let dir = Scratch::new("maps");
    let db_path = fixture(&dir);
    let maps = MiabSqliteMaps::write(dir.path(), &db_path);
    let db = UserDb::open(&db_path, userdb::Access::ReadOnly).unwrap();
    let mut checked = 0;
    for key in ADDRESS_KEYS {
        // postmap folds fixed-string keys to lowercase before the query, as Postfix does.
        let folded = key.to_ascii_lowercase();
        let want = tools::postmap_q(None, key, &maps.aliases);
        assert_eq!(db.alias_key(&folded).unwrap(), want, "aliases {key}");
        let want = tools::postmap_q(None, key, &maps.senders);
        assert_eq!(db.sender_key(&folded).unwrap(), want, "senders {key}");
        let want = tools::postmap_q(None, key, &maps.mailboxes).is_some();
        assert_eq!(db.mailbox_key(&folded).unwrap(), want, "mailboxes {key}");
        checked += 3;
    }
    for domain in DOMAIN_KEYS {
        let want = tools::postmap_q(None, domain, &maps.domains).is_some();
        assert_eq!(db.is_local_domain(domain).unwrap(), want, "domain {domain}");
        checked += 1;
    }
    assert!(checked > 80);
}

/// Expands like Postfix's cleanup does with our one-level answers: recursively, an address that
/// maps to itself is final, an unlisted address is final.
fn expand(db: &UserDb, addr: &str, depth: usize, out: &mut BTreeSet<String>) {
    assert!(depth < 20, "alias loop at {addr}");
    match db.resolve_alias(addr, &Delimiters::default()).unwrap() {
        None => {
            out.insert(addr.to_owned());
        }
        Some(list) => {
            for a in list {
                if a.eq_ignore_ascii_case(addr) {
                    out.insert(a);
                } else {
                    expand(db, &a, depth + 1, out);
                }
            }
        }
    }
}

#[test]
fn real_postfix_rewrites_as_userdb_resolves() {
    let dir = Scratch::new("rw");
    let db_path = fixture(&dir);
    let maps = MiabSqliteMaps::write(dir.path(), &db_path);
    let pf = Postfix::start(maps.main_cf(PostfixConfig::default()));
    let db = UserDb::open(&db_path, userdb::Access::ReadOnly).unwrap();
    let delims = Delimiters::default();

    let deliverable = [
        "me@example.com",
        "Me+Tag@Example.com",
        "hello@example.com",
        "hello+x@example.com",
        "chain@example.com",
        "random+tag@catch.example",
        "me+t@alias.example",
        "you@example.com",
        "postmaster@example.com",
        "hi@xn--bcher-kva.example",
        "team@other.example",
        "stranger@other.example",
    ];
    for (i, rcpt) in deliverable.iter().enumerate() {
        assert!(
            db.is_local_domain(rcpt.rsplit('@').next().unwrap())
                .unwrap()
        );
        let mut ours = BTreeSet::new();
        expand(&db, rcpt, 0, &mut ours);
        let postfix_final = pf.final_recipients(rcpt, &format!("marker-{i}"));
        assert_eq!(postfix_final, ours, "final recipients of {rcpt}");
    }

    // A domain alias makes every address of its domain listed at RCPT time (it bounces later
    // if the target does not exist), in Postfix with MIAB's maps as in userdb.
    assert_eq!(
        db.resolve_alias("nobody@alias.example", &delims).unwrap(),
        Some(vec!["nobody@example.com".to_owned()])
    );
    for rcpt in [
        "nobody@example.com",
        "sendonly@example.com",
        "Nobody+x@EXAMPLE.com",
    ] {
        let r = tools::swaks(
            pf.smtp_port(),
            &["--to", rcpt, "--from", "sender@elsewhere.example"],
        );
        assert!(!r.ok(), "{rcpt} accepted");
        assert!(
            r.stdout.contains("550 5.1.1 <") || r.stdout.contains("554 5.7.1 <"),
            "{rcpt}: {}",
            r.stdout
        );
        assert!(db.resolve_alias(rcpt, &delims).unwrap().is_none(), "{rcpt}");
        assert!(!db.is_mailbox(rcpt, &delims).unwrap(), "{rcpt}");
    }
}
