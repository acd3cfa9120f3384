use super::*;

/// The check over a header block, parsed as the session parses it.
fn check_block(dir: &Snapshot, login: &str, block: &[u8], d: &Delimiters) -> Option<Foreign> {
    check(dir, login, AuthenticatedMessage::parse(block).as_ref(), d)
}
use directory::Snapshot;
use miab_e2e::Scratch;
use miab_e2e::fixture::{SENDER_LOGIN_CASES, miab_box};
use userdb::{Access, UserDb};

fn fixture() -> (Scratch, Snapshot) {
    let dir = Scratch::new("from");
    let db = UserDb::open(miab_box(dir.path()), Access::ReadOnly).unwrap();
    let snap = Snapshot::read(&db).unwrap();
    (dir, snap)
}

fn block(headers: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    for h in headers {
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"Subject: x\r\n\r\n");
    b
}

/// The From: check says what the envelope check says, case by case.
#[test]
fn the_from_check_follows_the_sender_login_rule() {
    let (_dir, dir) = fixture();
    let delims = Delimiters::default();
    for &(login, address, allowed) in SENDER_LOGIN_CASES {
        assert_eq!(
            dir.may_send_as(login, address, &delims),
            allowed,
            "{login} {address}"
        );
        let b = block(&[&format!("From: Someone <{address}>")]);
        assert_eq!(
            check_block(&dir, login, &b, &delims).is_none(),
            allowed,
            "{login} From: {address}"
        );
    }
}

#[test]
fn every_address_of_every_from_and_sender_is_checked() {
    let (_dir, dir) = fixture();
    let d = Delimiters::default();
    let me = "me@example.com";
    let foreign = |header: &'static str, a: &str| {
        Some(Foreign::Address {
            header,
            address: a.into(),
        })
    };
    for (headers, want) in [
        (vec!["From: me@example.com"], None),
        (vec!["From: \"News\" <sendonly@example.com>"], None),
        (vec!["fROM: <ME@example.com>"], None),
        (
            vec!["From: you@example.com"],
            foreign("From", "you@example.com"),
        ),
        (
            vec!["From: \"Me\" <you@example.com>"],
            foreign("From", "you@example.com"),
        ),
        (
            vec!["From: me@example.com <you@example.com>"],
            foreign("From", "you@example.com"),
        ),
        (
            vec!["From: me@example.com, you@example.com"],
            foreign("From", "you@example.com"),
        ),
        (
            vec!["From: me@example.com", "From: you@example.com"],
            foreign("From", "you@example.com"),
        ),
        (
            vec!["From: me@example.com", "Sender: you@example.com"],
            foreign("Sender", "you@example.com"),
        ),
        (
            vec![
                "From: me@example.com (you@example.com)",
                "Sender: <me@example.com>",
            ],
            None,
        ),
        (
            vec!["From:\r\n\tyou@example.com"],
            foreign("From", "you@example.com"),
        ),
        // An encoded word that reads as an address is a display name with no address.
        (
            vec!["From: =?utf-8?b?eW91QGV4YW1wbGUuY29t?="],
            Some(Foreign::NoFrom),
        ),
        (
            vec!["From: =?utf-8?b?eW91QGV4YW1wbGUuY29t?= <me@example.com>"],
            None,
        ),
        // A look-alike Unicode domain is another domain.
        (
            vec!["From: me@ex\u{e4}mple.com"],
            foreign("From", "me@ex\u{e4}mple.com"),
        ),
        (vec!["Sender: me@example.com"], Some(Foreign::NoFrom)),
        (
            vec!["From: undisclosed-recipients:;"],
            Some(Foreign::NoFrom),
        ),
    ] {
        assert_eq!(
            check_block(&dir, me, &block(&headers), &d),
            want,
            "{headers:?}"
        );
    }
    // A Unicode domain of the box is its IDNA form in the DB.
    assert_eq!(
        check_block(
            &dir,
            "boss@other.example",
            &block(&["From: hi@b\u{fc}cher.example"]),
            &d
        ),
        None
    );
}

#[test]
fn the_reply_is_one_plain_line() {
    let f = Foreign::Address {
        header: "From",
        address: "x\r\n250 ok%s@\u{202e}example.com".into(),
    };
    let r = f.reply("me@example.com");
    assert_eq!(
        r,
        "From: address <x??250?ok?s@?example.com> is not one that me@example.com may send as"
    );
    assert!(r.is_ascii());
}

/// Header blocks made of hostile pieces never panic the parser, and whatever address comes
/// out makes a one-line ASCII reply.
#[test]
fn hostile_header_blocks() {
    let pieces: [&[u8]; 14] = [
        b"From:",
        b"Sender:",
        b" me@example.com",
        b"<",
        b">",
        b"\"",
        b",",
        b"\r\n",
        b"\r\n\t",
        b"=?utf-8?b?eW91QGV4YW1wbGUuY29t?=",
        b"\xc3\xa4",
        b"\xff",
        b":;",
        b"(",
    ];
    miab_e2e::pseudo_random_inputs(&pieces, 3000, |block| {
        // Ended as the session ends a header block.
        let mut block = block.to_vec();
        block.extend_from_slice(b"\r\n\r\n");
        let Some(msg) = AuthenticatedMessage::parse(&block) else {
            return;
        };
        for (_, address) in header_addresses(&msg) {
            let r = Foreign::Address {
                header: "From",
                address,
            }
            .reply("me@example.com");
            assert!(r.is_ascii() && !r.contains(['\r', '\n']), "{r:?}");
        }
    });
}
