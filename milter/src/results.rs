//! The Authentication-Results headers, one per method, in the shapes OpenDKIM and OpenDMARC
//! write, because MIAB's SpamAssassin rules match `HOST; spf=` and `HOST; dmarc=` at the start
//! of a header. Pure functions: results in, header values out.

use base64::Engine as _;
use mail_auth::dkim::Signature;
use mail_auth::dmarc::Policy;
use mail_auth::{DkimOutput, DkimResult, DmarcOutput, DmarcResult, SpfResult};

/// A reason in parentheses: no parentheses, quotes or line breaks inside.
fn comment(reason: &str) -> String {
    reason
        .chars()
        .map(|c| match c {
            '(' | ')' | '"' | '\\' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// The most characters of one value we write; the rest of a longer one is cut.
const MAX_VALUE: usize = 255;

/// A value from the message or the SMTP session as an RFC 8601 `pvalue`: written as it is
/// when it is a plain token, domain or `local-part@domain`, else as a quoted string that keeps
/// only letters, digits and `.-_@+:[]/` and shows every other character as `?`. So no input
/// can end the value, start another `; method=result`, fold the header, or put `HOST;` or
/// `method=` where a reader that matches raw text (MIAB's SpamAssassin rules) would take it
/// for a result.
pub fn pvalue(v: &str) -> String {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/?^_`{|}~.".contains(c);
    let domain = |d: &str| {
        !d.is_empty()
            && d.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    };
    let plain = match v.rsplit_once('@') {
        Some((local, dom)) => local.chars().all(atext) && domain(dom),
        None => domain(v) || (!v.is_empty() && v.chars().all(atext)),
    };
    if plain && v.len() <= MAX_VALUE {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len().min(MAX_VALUE) + 2);
    out.push('"');
    for c in v.chars().take(MAX_VALUE) {
        out.push(if c.is_ascii_alphanumeric() || ".-_@+:[]/".contains(c) {
            c
        } else {
            '?'
        });
    }
    out.push('"');
    out
}

/// `header` without its quoted strings (escapes honoured): what a reader of the header takes
/// for its structure.
pub fn unquoted(header: &str) -> String {
    let mut out = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in header.chars() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') | (false, _, '"') => quoted = !quoted,
            (true, false, _) => {}
            (false, _, c) => out.push(c),
        }
    }
    out
}

/// A quoted string always (OpenDKIM quotes `header.b`).
fn pvalue_quoted(v: &str) -> String {
    let p = pvalue(v);
    if p.starts_with('"') {
        p
    } else {
        format!("\"{p}\"")
    }
}

fn algorithm(s: &Signature) -> &'static str {
    match s.a {
        mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
        mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
        mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

/// Dot-separated labels, none empty or over 63 characters, the whole at most 253, each
/// character one `ok` takes.
pub(crate) fn labels(v: &str, ok: impl Fn(char) -> bool) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(&ok))
}

/// A DKIM selector or signing domain: labels of letters, digits, hyphens and underscores
/// (RFC 6376 §3.1, §3.5).
fn is_dns_name(v: &str) -> bool {
    labels(v, |c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `i=` as it may be reported: `[local-part]@domain` with the domain `d=` or below it
/// (RFC 6376 §3.5); `@d` when the signature has none; `None` for anything else, which is
/// then not written at all.
fn identity(i: &str, d: &str) -> Option<String> {
    if i.is_empty() {
        return Some(format!("@{d}"));
    }
    let (local, domain) = i.rsplit_once('@')?;
    let local_ok = local
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/?^_`{|}~.".contains(c));
    let domain = domain.to_ascii_lowercase();
    let d = d.to_ascii_lowercase();
    let below = domain == d || domain.ends_with(&format!(".{d}"));
    (local_ok && is_dns_name(&domain) && below).then(|| i.to_owned())
}

/// The properties of a signature (OpenDKIM's set), each only when it is valid for its kind.
fn signature_properties(s: &Signature) -> String {
    let mut out = String::new();
    if is_dns_name(&s.d) {
        out.push_str(&format!(" header.d={}", s.d));
        if let Some(i) = identity(&s.i, &s.d) {
            out.push_str(&format!(" header.i={}", pvalue(&i)));
        }
    }
    out.push_str(&format!(" header.a={}", algorithm(s)));
    if is_dns_name(&s.s) {
        out.push_str(&format!(" header.s={}", s.s));
    }
    let b = base64::engine::general_purpose::STANDARD.encode(&s.b);
    out.push_str(&format!(
        " header.b={}",
        pvalue_quoted(b.get(..8).unwrap_or(&b))
    ));
    out
}

/// One `dkim=` result with OpenDKIM's properties.
pub fn dkim_result(result: &DkimResult, sig: Option<&Signature>) -> String {
    let (word, why) = match result {
        DkimResult::Pass => ("pass", None),
        DkimResult::Neutral(e) => ("neutral", Some(e.to_string())),
        DkimResult::Fail(e) => ("fail", Some(e.to_string())),
        DkimResult::PermError(e) => ("permerror", Some(e.to_string())),
        DkimResult::TempError(e) => ("temperror", Some(e.to_string())),
        DkimResult::None => ("none", None),
    };
    let mut out = format!("dkim={word}");
    if let Some(why) = why {
        out.push_str(&format!(" ({})", comment(&why)));
    }
    if let Some(s) = sig {
        out.push_str(&signature_properties(s));
    }
    out
}

/// The result of a signature whose `l=` is not the length of the canonical body as received
/// (`body`): `policy` when content follows the signed part (a signed message given a new
/// body), `fail` when the body is shorter than `l=` (RFC 6376 §3.7).
pub fn length_result(s: &Signature, body: u64) -> String {
    let head = if body > s.l {
        format!(
            "dkim=policy (l={} signs part of the body: {} more octets follow)",
            s.l,
            body - s.l
        )
    } else {
        format!(
            "dkim=fail (l={} is longer than the body, {body} octets)",
            s.l
        )
    };
    head + &signature_properties(s)
}

/// `HOST; dkim=...` for every signature (`dkim=none` if there is none): mail-auth's results,
/// then `more` results made here (`l=`), then one `dkim=policy` for the `skipped`
/// signatures beyond the per-message limit.
pub fn dkim_header(
    host: &str,
    results: &[DkimOutput<'_>],
    more: &[String],
    skipped: usize,
) -> String {
    if results.is_empty() && more.is_empty() && skipped == 0 {
        return format!("{host}; dkim=none");
    }
    let mut parts: Vec<String> = results
        .iter()
        .map(|r| dkim_result(r.result(), r.signature()))
        .chain(more.iter().cloned())
        .collect();
    if skipped > 0 {
        parts.push(format!(
            "dkim=policy ({skipped} more signatures not checked)"
        ));
    }
    format!("{host}; {}", parts.join(";\n\t"))
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// `HOST; spf=pass smtp.mailfrom=example.com`, as OpenDMARC's own SPF check writes it; for
/// the null sender, the HELO name.
pub fn spf_header(host: &str, result: SpfResult, mail_from_domain: &str, helo: &str) -> String {
    if mail_from_domain.is_empty() {
        format!(
            "{host}; spf={} smtp.helo={}",
            spf_word(result),
            pvalue(helo)
        )
    } else {
        format!(
            "{host}; spf={} smtp.mailfrom={}",
            spf_word(result),
            pvalue(mail_from_domain)
        )
    }
}

fn policy_word(p: Policy) -> &'static str {
    match p {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    }
}

/// `HOST; dmarc=fail (p=quarantine dis=none) header.from=example.com`, OpenDMARC's shape.
pub fn dmarc_header(
    host: &str,
    out: &DmarcOutput,
    header_from: &str,
    disposition: Policy,
) -> String {
    let word = match out.result() {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    };
    format!(
        "{host}; dmarc={word} (p={} dis={}) header.from={}",
        policy_word(out.policy()),
        policy_word(disposition),
        pvalue(header_from)
    )
}

/// `temperror` for all three methods (DMARC once per author domain), when the checks ran
/// out of time.
pub fn timed_out(
    host: &str,
    mail_from_domain: &str,
    helo: &str,
    header_from: &[String],
) -> Vec<String> {
    let mut out = vec![
        format!("{host}; dkim=temperror (DNS timeout)"),
        spf_header(host, SpfResult::TempError, mail_from_domain, helo),
    ];
    out.extend(header_from.iter().map(|d| {
        format!(
            "{host}; dmarc=temperror (p=none dis=none) header.from={}",
            pvalue(d)
        )
    }));
    out
}

/// Is an Authentication-Results value one of ours, which it cannot be if it came with the
/// message? Either its authserv-id, read as RFC 8601 reads it (comments and whitespace
/// around it, a quoted string, any case, a final dot), is `host`; or its text anywhere holds
/// `host` followed by `;`, which a reader matching raw text (MIAB's SpamAssassin rules match
/// `HOST; dmarc=pass` anywhere in any such header) would take for ours.
pub fn claims_authserv_id(value: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if authserv_id(value).is_some_and(|id| id.trim_end_matches('.').eq_ignore_ascii_case(&host)) {
        return true;
    }
    let lower = value.to_ascii_lowercase();
    lower.match_indices(&host).any(|(at, _)| {
        lower[at + host.len()..]
            .trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '.')
            .starts_with(';')
    })
}

/// Skips whitespace and (nested) comments; `None` if a comment never ends.
fn skip_cfws(mut s: &str) -> Option<&str> {
    loop {
        s = s.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let Some(rest) = s.strip_prefix('(') else {
            return Some(s);
        };
        let mut depth = 1usize;
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                }
                _ => {}
            }
        }
        s = &rest[end?..];
    }
}

/// The authserv-id of an Authentication-Results value (RFC 8601 §2.2: `[CFWS] value`, a
/// token or a quoted string), unquoted.
fn authserv_id(value: &str) -> Option<String> {
    let s = skip_cfws(value)?;
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        return None;
    }
    let id: String = s
        .chars()
        .take_while(|c| {
            !c.is_ascii_whitespace() && !c.is_ascii_control() && !"()<>@,;:\\\"/[]?=".contains(*c)
        })
        .collect();
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spf_and_dkim_texts() {
        assert_eq!(
            spf_header(
                "box.example.com",
                SpfResult::Pass,
                "example.org",
                "mx.example.org"
            ),
            "box.example.com; spf=pass smtp.mailfrom=example.org"
        );
        assert_eq!(
            spf_header("box.example.com", SpfResult::None, "", "mx.example.org"),
            "box.example.com; spf=none smtp.helo=mx.example.org"
        );
        assert_eq!(dkim_header("h", &[], &[], 0), "h; dkim=none");
        assert_eq!(
            dkim_header("h", &[], &[], 7),
            "h; dkim=policy (7 more signatures not checked)"
        );
        assert_eq!(comment("a (b) \"c\"\nd"), "a 'b' 'c' d");
        let t = timed_out(
            "h",
            "example.org",
            "helo",
            &["a.example".into(), "b.example".into()],
        );
        assert!(t[0].starts_with("h; dkim=temperror"));
        assert!(t[1].starts_with("h; spf=temperror"));
        assert!(t[2].starts_with("h; dmarc=temperror") && t[2].ends_with("a.example"));
        assert!(t[3].ends_with("header.from=b.example"));
    }

    #[test]
    fn hostile_values_cannot_add_results() {
        for (v, want) in [
            ("example.org", "example.org"),
            ("@example.org", "@example.org"),
            ("user+tag@mail.example.org", "user+tag@mail.example.org"),
            (
                "x; dkim=pass header.d=bank.example",
                "\"x??dkim?pass?header.d?bank.example\"",
            ),
            ("a\r\n\tdkim=pass", "\"a???dkim?pass\""),
            ("q\"uo\\te", "\"q?uo?te\""),
            ("[192.0.2.1]", "\"[192.0.2.1]\""),
            ("b\u{e4}nk.example", "\"b?nk.example\""),
            ("", "\"\""),
            ("a@b@c", "\"a@b@c\""),
        ] {
            assert_eq!(pvalue(v), want, "{v:?}");
        }
        let long = "a".repeat(1000) + ";";
        assert_eq!(pvalue(&long).len(), MAX_VALUE + 2);
        let h = spf_header(
            "h",
            SpfResult::Pass,
            "",
            "evil; spf=pass smtp.mailfrom=bank.example",
        );
        assert_eq!(
            h,
            "h; spf=pass smtp.helo=\"evil??spf?pass?smtp.mailfrom?bank.example\""
        );
    }

    /// Whatever the input, the value has no line break, no `;`, `=`, blank or parenthesis,
    /// and a quoted one holds no quote or backslash.
    #[test]
    fn pvalue_on_pseudo_random_input() {
        let pieces: [&[u8]; 10] = [
            b"a",
            b"@",
            b";",
            b"\"",
            b"\\",
            b"\r\n",
            b" ",
            b"\xc3\xa4",
            b"=3B",
            b".",
        ];
        miab_e2e::pseudo_random_inputs(&pieces, 3000, |bytes| {
            let v = String::from_utf8_lossy(bytes);
            let p = pvalue(&v);
            assert!(
                p.is_ascii() && !p.contains(['\r', '\n', ';', ' ', '(', ')']),
                "{p:?}"
            );
            if !p.starts_with('"') {
                assert!(!p.contains(['"', '=']), "{p:?}");
            } else {
                assert!(!p[1..p.len() - 1].contains(['"', '\\', '=']), "{p:?}");
            }
        });
    }

    #[test]
    fn authserv_id_claims() {
        for (v, yes) in [
            (" box.example.com; dkim=pass", true),
            ("BOX.example.com 1; spf=pass", true),
            ("box.example.com.; spf=pass", true),
            ("(comment) box.example.com; spf=pass", true),
            ("(nested (comment) \\) ) Box.Example.Com(x); spf=pass", true),
            ("\r\n\t\"box.example.com\"; dmarc=pass", true),
            ("\"box.example\\.com\" ; dmarc=pass", true),
            ("box.example.com", true),
            ("mx.other.example; x=y (box.example.com; dmarc=pass)", true),
            (
                "mx.other.example; spf=pass smtp.mailfrom=box.example.com \n\t; dkim=none",
                true,
            ),
            ("box.example.com.evil; spf=pass", false),
            ("mx.google.com; spf=pass", false),
            (
                "mx.google.com; spf=pass smtp.mailfrom=user@box.example.com",
                false,
            ),
            ("(unclosed box.example.com", false),
            ("\"unclosed", false),
            ("", false),
        ] {
            assert_eq!(claims_authserv_id(v, "box.example.com"), yes, "{v}");
        }
    }

    #[test]
    fn signature_values_are_reported_only_when_valid() {
        assert_eq!(identity("", "example.org").as_deref(), Some("@example.org"));
        assert_eq!(
            identity("a.b@example.org", "example.org").as_deref(),
            Some("a.b@example.org")
        );
        assert_eq!(
            identity("@mail.Example.org", "example.org").as_deref(),
            Some("@mail.Example.org")
        );
        for bad in [
            "a@bank.example",
            "a@evilexample.org",
            "a;dkim=pass@example.org",
            "a b@example.org",
            "example.org",
        ] {
            assert_eq!(identity(bad, "example.org"), None, "{bad}");
        }
        assert!(is_dns_name("sel-1._x.example"));
        for bad in ["", "a..b", "a;b", "a b", "a=b", "\u{e4}.example"] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
