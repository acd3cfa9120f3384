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
/// when it is a plain token, domain or `local-part@domain`, else as a quoted string with `"`
/// and `\` escaped and every control or non-ASCII character replaced, so no input can end
/// the value, start another `; method=result`, or fold the header.
pub fn pvalue(v: &str) -> String {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
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
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
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
        let b = base64::engine::general_purpose::STANDARD.encode(&s.b);
        let i = if s.i.is_empty() {
            format!("@{}", s.d)
        } else {
            s.i.clone()
        };
        out.push_str(&format!(
            " header.d={} header.i={} header.a={} header.s={} header.b={}",
            pvalue(&s.d),
            pvalue(&i),
            algorithm(s),
            pvalue(&s.s),
            pvalue_quoted(b.get(..8).unwrap_or(&b))
        ));
    }
    out
}

/// `HOST; dkim=...` for every signature (`dkim=none` if there is none).
/// `skipped` signatures beyond the per-message limit get one `dkim=policy` result.
pub fn dkim_header(host: &str, results: &[DkimOutput<'_>], skipped: usize) -> String {
    if results.is_empty() && skipped == 0 {
        return format!("{host}; dkim=none");
    }
    let mut parts: Vec<String> = results
        .iter()
        .map(|r| dkim_result(r.result(), r.signature()))
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

/// `temperror` for all three methods, when the checks ran out of time.
pub fn timed_out(host: &str, mail_from_domain: &str, helo: &str, header_from: &str) -> [String; 3] {
    [
        format!("{host}; dkim=temperror (DNS timeout)"),
        spf_header(host, SpfResult::TempError, mail_from_domain, helo),
        format!(
            "{host}; dmarc=temperror (p=none dis=none) header.from={}",
            pvalue(header_from)
        ),
    ]
}

/// Does an Authentication-Results value claim `host` as its authserv-id? Such a header did
/// not come from us if it arrived with the message.
pub fn claims_authserv_id(value: &str, host: &str) -> bool {
    let v = value.trim_start();
    let id: String = v
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ';')
        .collect();
    id.eq_ignore_ascii_case(host)
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
        assert_eq!(dkim_header("h", &[], 0), "h; dkim=none");
        assert_eq!(
            dkim_header("h", &[], 7),
            "h; dkim=policy (7 more signatures not checked)"
        );
        assert_eq!(comment("a (b) \"c\"\nd"), "a 'b' 'c' d");
        let [d, s, m] = timed_out("h", "example.org", "helo", "example.org");
        assert!(d.starts_with("h; dkim=temperror"));
        assert!(s.starts_with("h; spf=temperror"));
        assert!(m.starts_with("h; dmarc=temperror"));
    }

    #[test]
    fn hostile_values_cannot_add_results() {
        for (v, want) in [
            ("example.org", "example.org"),
            ("@example.org", "@example.org"),
            ("user+tag@mail.example.org", "user+tag@mail.example.org"),
            (
                "x; dkim=pass header.d=bank.example",
                "\"x; dkim=pass header.d=bank.example\"",
            ),
            ("a\r\n\tdkim=pass", "\"a???dkim=pass\""),
            ("q\"uo\\te", "\"q\\\"uo\\\\te\""),
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
            "h; spf=pass smtp.helo=\"evil; spf=pass smtp.mailfrom=bank.example\""
        );
    }

    /// Whatever the input, the value has no line break, and only a quoted string may hold `;`.
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
            assert!(p.is_ascii() && !p.contains(['\r', '\n']), "{p:?}");
            if !p.starts_with('"') {
                assert!(!p.contains([';', ' ', '(', ')', '"']), "{p:?}");
            } else {
                let inner = &p[1..p.len() - 1];
                assert!(
                    !inner.replace("\\\\", "").replace("\\\"", "").contains('"'),
                    "{p:?}"
                );
            }
        });
    }

    #[test]
    fn authserv_id_claims() {
        for (v, yes) in [
            (" box.example.com; dkim=pass", true),
            ("BOX.example.com 1; spf=pass", true),
            ("box.example.com.evil; spf=pass", false),
            ("mx.google.com; spf=pass", false),
            ("box.example.com", true),
        ] {
            assert_eq!(claims_authserv_id(v, "box.example.com"), yes, "{v}");
        }
    }
}
