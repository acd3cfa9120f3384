//! The greylisting triplet's parts, normalised as postgrey does: the client masked to its
//! network, and the sender with BATV tags, `+extensions` and VERP numbers taken out.

use crate::net::{mask32, mask128};
use std::net::IpAddr;

/// The client's network as text (`192.0.2.0/24`, `2001:db8::/64`); an unparsable address is
/// used as it is, lowercased.
pub fn client_net(address: &str, v4_prefix: u8, v6_prefix: u8) -> String {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => {
            let p = v4_prefix.min(32);
            let bits = u32::from(a) & mask32(p);
            format!("{}/{p}", std::net::Ipv4Addr::from(bits))
        }
        Ok(IpAddr::V6(a)) => {
            let p = v6_prefix.min(128);
            let bits = u128::from(a) & mask128(p);
            format!("{}/{p}", std::net::Ipv6Addr::from(bits))
        }
        Err(_) => address.to_ascii_lowercase(),
    }
}

/// postgrey's sender substitutions, lowercased: `prvs=TAG=user` (either order) becomes
/// `user`, `+ext` is cut, and every standalone number becomes `#`, so VERP bounce addresses
/// of one list share a triplet.
pub fn sender(addr: &str) -> String {
    let addr = addr.to_lowercase();
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return addr;
    };
    let local = strip_batv(local);
    let local = local.split_once('+').map_or(local, |(l, _)| l);
    format!("{}@{domain}", hash_numbers(local))
}

/// BATV (draft-levine-smtp-batv): `prvs=KDDDSSSSSS=user` or `prvs=user=KDDDSSSSSS`.
fn strip_batv(local: &str) -> &str {
    let Some(rest) = local.strip_prefix("prvs=") else {
        return local;
    };
    let Some((a, b)) = rest.split_once('=') else {
        return local;
    };
    if is_batv_tag(a) {
        b
    } else if is_batv_tag(b) {
        a
    } else {
        local
    }
}

/// `K DDD SSSSSS`: a key digit, a three-digit day, six hex digits of hash.
fn is_batv_tag(s: &str) -> bool {
    // Bytes, not a str slice: a multi-byte character may straddle any index.
    let b = s.as_bytes();
    b.len() == 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4..].iter().all(u8::is_ascii_hexdigit)
}

/// Perl's `s/\b\d+\b/#/g`: a run of word characters made only of digits becomes `#`.
fn hash_numbers(local: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(local.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if !run.is_empty() && run.chars().all(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in local.chars() {
        if is_word(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        assert_eq!(client_net("192.0.2.77", 24, 64), "192.0.2.0/24");
        assert_eq!(client_net("192.0.2.77", 32, 64), "192.0.2.77/32");
        assert_eq!(client_net("192.0.2.77", 0, 64), "0.0.0.0/0");
        assert_eq!(
            client_net("2001:db8:1:2:3:4:5:6", 24, 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(client_net("2001:DB8::1", 24, 128), "2001:db8::1/128");
        assert_eq!(client_net("Unknown", 24, 64), "unknown");
    }

    #[test]
    fn postgrey_sender_rules() {
        assert_eq!(sender("Alice+News@Example.NET"), "alice@example.net");
        assert_eq!(
            sender("prvs=1234abcdef=bounce@example.net"),
            "bounce@example.net"
        );
        assert_eq!(
            sender("prvs=bounce=1234abcdef@example.net"),
            "bounce@example.net"
        );
        assert_eq!(sender("prvs=x=y@example.net"), "prvs=x=y@example.net");
        assert_eq!(
            sender("list-bounces-12345-678@lists.example"),
            "list-bounces-#-#@lists.example"
        );
        assert_eq!(sender("user123@example.net"), "user123@example.net");
        assert_eq!(sender("bounce.42.x@example.net"), "bounce.#.x@example.net");
        assert_eq!(sender(""), "");
        assert_eq!(sender("no-at-sign"), "no-at-sign");
    }

    #[test]
    fn multi_byte_characters_in_a_batv_tag_do_not_panic() {
        // 10 bytes with a two-byte character across index 4 (a str slice there panicked).
        assert_eq!(
            sender("prvs=123\u{e9}45678=user@example.org"),
            "prvs=123\u{e9}45678=user@example.org",
            "not a tag: kept as it is"
        );
        for s in [
            "prvs=\u{1F600}\u{1F600}xx=a@b",
            "prvs=a=\u{1F600}\u{1F600}xx@b",
            "\u{e9}@\u{e9}",
        ] {
            let _ = sender(s);
        }
    }
}
