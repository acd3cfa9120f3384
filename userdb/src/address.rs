//! Address rules, exactly as Mail-in-a-Box applies them.
//!
//! Syntax follows `mailconfig.validate_email`, which calls the `email_validator` package with
//! `allow_smtputf8=False`, `check_deliverability=False` and `allow_empty_local` in alias mode.
//! IDNA conversion follows `sanitize_idn_email_address`, and extension splitting follows
//! Postfix's `split_addr()`, which decides the keys Postfix would have tried.

/// How strict [`validate_email`] is, as MIAB's `mode` argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Any address `email_validator` accepts (MIAB's `mode=None`).
    Any,
    /// A user account: also lowercase `[a-z0-9_.-]` only, at most 255 characters.
    User,
    /// An alias source or destination: an empty local part (`@domain`) is allowed.
    Alias,
}

/// Longest local part `email_validator` accepts (RFC 5321 §4.5.3.1.1).
const LOCAL_MAX: usize = 64;
/// Longest address `email_validator` accepts (RFC 3696 errata 1690).
const ADDRESS_MAX: usize = 254;
/// Longest domain in octets (RFC 1035, without the root dot).
const DOMAIN_MAX: usize = 253;
/// Longest DNS label.
const LABEL_MAX: usize = 63;
/// Longest user account address MIAB allows (`len(email) > 255`).
const USER_MAX: usize = 255;
/// Longest domain key worth asking a map about (RFC 1035's 255 octets); longer keys are not
/// found.
pub const MAX_DOMAIN_KEY: usize = 255;
/// Special-use names `email_validator` refuses (RFC 6761 and friends).
const SPECIAL_USE: [&str; 6] = ["arpa", "invalid", "local", "localhost", "onion", "test"];
/// Local parts MIAB treats as domain-control-validation addresses.
const DCV_LOCAL_PARTS: [&str; 6] = [
    "admin",
    "administrator",
    "postmaster",
    "hostmaster",
    "webmaster",
    "abuse",
];

/// MIAB's `validate_email(email, mode)`.
pub fn validate_email(email: &str, mode: Mode) -> bool {
    if !syntax_ok(email, mode == Mode::Alias) {
        return false;
    }
    if mode == Mode::User {
        if email.chars().count() > USER_MAX {
            return false;
        }
        if !email
            .bytes()
            .all(|b| matches!(b, b'@' | b'.' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
        {
            return false;
        }
    }
    true
}

fn syntax_ok(email: &str, allow_empty_local: bool) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    if !local_ok(local, allow_empty_local) {
        return false;
    }
    let Some(ascii_domain) = domain_ok(domain) else {
        return false;
    };
    local.len() + 1 + ascii_domain.len() <= ADDRESS_MAX
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn local_ok(local: &str, allow_empty: bool) -> bool {
    if local.is_empty() {
        return allow_empty;
    }
    // Non-ASCII needs SMTPUTF8, which MIAB turns off; quoted local parts are refused by default.
    local.len() <= LOCAL_MAX
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

/// Checks a domain the way `email_validator` does and returns its ASCII form.
fn domain_ok(domain: &str) -> Option<String> {
    if domain.is_empty() || domain.starts_with('[') {
        return None;
    }
    let ascii = if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii_strict(domain).ok()?
    };
    if ascii.len() > DOMAIN_MAX || !ascii.contains('.') {
        return None;
    }
    for label in ascii.split('.') {
        let b = label.as_bytes();
        if b.is_empty()
            || b.len() > LABEL_MAX
            || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            || b[0] == b'-'
            || b[b.len() - 1] == b'-'
        {
            return None;
        }
        if b.len() >= 4 && &b[2..4] == b"--" {
            if !label.starts_with("xn--") {
                return None;
            }
            let (_, decoded) = idna::domain_to_unicode(label);
            decoded.ok()?;
        }
    }
    if !ascii.as_bytes().last()?.is_ascii_alphabetic() {
        return None;
    }
    if SPECIAL_USE
        .iter()
        .any(|s| ascii == *s || ascii.ends_with(&format!(".{s}")))
    {
        return None;
    }
    Some(ascii)
}

/// MIAB's `sanitize_idn_email_address`: the domain part to IDNA, the local part untouched.
/// Anything that is not `local@domain` with a convertible domain comes back unchanged.
pub fn sanitize_idn_email_address(email: &str) -> String {
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return email.to_owned();
    };
    // Python's idna.encode returns an ASCII domain as it was given (it only checks it).
    if domain.is_ascii() {
        return email.to_owned();
    }
    match idna::domain_to_ascii_strict(domain) {
        Ok(ascii) => format!("{local}@{ascii}"),
        Err(_) => email.to_owned(),
    }
}

/// MIAB's `prettify_idn_email_address`: the domain part back to Unicode for display.
pub fn prettify_idn_email_address(email: &str) -> String {
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return email.to_owned();
    };
    match domain_to_unicode(domain) {
        Some(u) => format!("{local}@{u}"),
        None => email.to_owned(),
    }
}

/// IDNA-decodes an ASCII domain; `None` if it is not ASCII or not valid IDNA.
pub fn domain_to_unicode(domain: &str) -> Option<String> {
    if !domain.is_ascii() {
        return None;
    }
    let (u, res) = idna::domain_to_unicode(domain);
    res.ok().map(|()| u)
}

/// MIAB's `is_dcv_address`: `admin@`, `postmaster+x@` and the like, in any case.
pub fn is_dcv_address(email: &str) -> bool {
    let email = email.to_lowercase();
    DCV_LOCAL_PARTS.iter().any(|lp| {
        email
            .strip_prefix(lp)
            .is_some_and(|rest| rest.starts_with('@') || rest.starts_with('+'))
    })
}

/// The part after the first `@` (MIAB's `get_domain(..., as_unicode=False)`).
pub fn domain_of(addr: &str) -> Option<&str> {
    addr.split_once('@').map(|(_, d)| d)
}

/// The domain of a peer's address as DNS and the daemons' checks want it: after the last `@`,
/// ASCII-lowercased, without a trailing dot. `None` without an `@` or with nothing after it.
/// (MIAB's own rule for stored addresses is [`domain_of`].)
pub fn domain_lowercase(addr: &str) -> Option<String> {
    let (_, d) = addr.rsplit_once('@')?;
    let d = d.trim_end_matches('.');
    (!d.is_empty()).then(|| d.to_ascii_lowercase())
}

/// Folds a key the way Postfix folds fixed-string table keys with SMTPUTF8 off (ASCII only).
pub fn fold(key: &str) -> String {
    key.to_ascii_lowercase()
}

/// The recipient delimiter set, as Postfix's `recipient_delimiter` (default `+`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimiters(String);

impl Delimiters {
    /// A delimiter set; an empty set turns extension handling off.
    pub fn new(chars: impl Into<String>) -> Self {
        Delimiters(chars.into())
    }

    /// The characters in the set.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters("+".into())
    }
}

/// Splits an address extension off a local part as Postfix's `split_addr()` does. Returns the
/// base local part and the extension including its delimiter (`("user", "+tag")`).
pub fn split_extension<'a>(local: &'a str, delims: &Delimiters) -> Option<(&'a str, &'a str)> {
    let set = delims.as_str();
    if set.is_empty() || local.is_empty() {
        return None;
    }
    for special in ["postmaster", "mailer-daemon", "double-bounce"] {
        if local.eq_ignore_ascii_case(special) {
            return None;
        }
    }
    if set.contains('-') {
        let lower = local.to_ascii_lowercase();
        if lower.starts_with("owner-") || (lower.len() > 8 && lower.ends_with("-request")) {
            return None;
        }
    }
    let at = local.find(|c| set.contains(c))?;
    // A delimiter in first place would leave an empty local part: Postfix does not split then.
    if at == 0 {
        return None;
    }
    Some(local.split_at(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_validator_table() {
        let cases: &[(&str, Mode, bool)] = &[
            ("alice@example.com", Mode::Any, true),
            ("Alice@Example.com", Mode::Any, true),
            ("Alice@Example.com", Mode::User, false),
            ("alice+tag@example.com", Mode::Any, true),
            ("alice+tag@example.com", Mode::User, false),
            ("a_b-c.d@example.com", Mode::User, true),
            ("@example.com", Mode::Any, false),
            ("@example.com", Mode::User, false),
            ("@example.com", Mode::Alias, true),
            ("alice", Mode::Any, false),
            ("alice@", Mode::Any, false),
            ("alice@example", Mode::Any, false),
            ("alice@localhost", Mode::Any, false),
            ("alice@mail.test", Mode::Any, false),
            ("alice@box.local", Mode::Any, false),
            ("alice@example.123", Mode::Any, false),
            ("alice@[127.0.0.1]", Mode::Any, false),
            ("alice@-example.com", Mode::Any, false),
            ("alice@example-.com", Mode::Any, false),
            ("alice@ex_ample.com", Mode::Any, false),
            ("alice@ab--cd.com", Mode::Any, false),
            ("alice@xn--bcher-kva.example", Mode::Any, true),
            ("alice@bücher.example", Mode::Any, true),
            ("alice@bücher.example", Mode::User, false),
            ("alice@bücher.example", Mode::Alias, true),
            ("älice@example.com", Mode::Any, false),
            (".alice@example.com", Mode::Any, false),
            ("alice.@example.com", Mode::Any, false),
            ("al..ice@example.com", Mode::Any, false),
            ("\"al ice\"@example.com", Mode::Any, false),
            ("al ice@example.com", Mode::Any, false),
            (" alice@example.com", Mode::Any, false),
            ("alice@example.com.", Mode::Any, false),
            ("alice@example..com", Mode::Any, false),
            ("a@b@example.com", Mode::Any, false),
            ("a/b@example.com", Mode::Any, true),
            ("a/b@example.com", Mode::User, false),
        ];
        for (email, mode, want) in cases {
            assert_eq!(validate_email(email, *mode), *want, "{email} {mode:?}");
        }
    }

    #[test]
    fn length_limits() {
        let local64 = "a".repeat(64);
        assert!(validate_email(&format!("{local64}@example.com"), Mode::Any));
        assert!(!validate_email(
            &format!("{local64}a@example.com"),
            Mode::Any
        ));
        let label = "b".repeat(63);
        assert!(validate_email(&format!("a@{label}.com"), Mode::Any));
        assert!(!validate_email(&format!("a@{label}b.com"), Mode::Any));
        let long = format!("a@{}.com", vec!["c".repeat(60); 5].join("."));
        assert!(!validate_email(&long, Mode::Any));
        assert!(!validate_email(&"x".repeat(100_000), Mode::Any));
    }

    #[test]
    fn idn() {
        assert_eq!(
            sanitize_idn_email_address("me@bücher.example"),
            "me@xn--bcher-kva.example"
        );
        assert_eq!(
            sanitize_idn_email_address("@bücher.example"),
            "@xn--bcher-kva.example"
        );
        assert_eq!(
            sanitize_idn_email_address("Me@Example.COM"),
            "Me@Example.COM"
        );
        assert_eq!(sanitize_idn_email_address("no-at-sign"), "no-at-sign");
        assert_eq!(sanitize_idn_email_address("a@b@c"), "a@b@c");
        assert_eq!(
            prettify_idn_email_address("me@xn--bcher-kva.example"),
            "me@bücher.example"
        );
        assert_eq!(
            prettify_idn_email_address("me@example.com"),
            "me@example.com"
        );
        assert_eq!(
            domain_to_unicode("xn--bcher-kva.example").as_deref(),
            Some("bücher.example")
        );
    }

    #[test]
    fn dcv() {
        for a in [
            "admin@x.com",
            "ADMIN@x.com",
            "postmaster+x@x.com",
            "abuse@x.com",
            "webmaster@x.com",
            "hostmaster@x.com",
            "administrator@x.com",
        ] {
            assert!(is_dcv_address(a), "{a}");
        }
        for a in [
            "admins@x.com",
            "xadmin@x.com",
            "admin.x@x.com",
            "me@admin.com",
        ] {
            assert!(!is_dcv_address(a), "{a}");
        }
    }

    #[test]
    fn extension_split_as_postfix() {
        let plus = Delimiters::default();
        assert_eq!(split_extension("user+tag", &plus), Some(("user", "+tag")));
        assert_eq!(split_extension("user+a+b", &plus), Some(("user", "+a+b")));
        assert_eq!(split_extension("+tag", &plus), None);
        assert_eq!(split_extension("user", &plus), None);
        assert_eq!(split_extension("user+", &plus), Some(("user", "+")));
        assert_eq!(split_extension("Postmaster", &plus), None);
        let set = Delimiters::new("+-");
        assert_eq!(split_extension("user-x+y", &set), Some(("user", "-x+y")));
        assert_eq!(split_extension("owner-list", &set), None);
        assert_eq!(split_extension("list-request", &set), None);
        assert_eq!(split_extension("owner-list", &plus), None);
        assert_eq!(split_extension("user+tag", &Delimiters::new("")), None);
    }
}
