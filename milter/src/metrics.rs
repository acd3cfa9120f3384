//! What miab-milter counts: DKIM, SPF and DMARC results by result (read back from the
//! Authentication-Results texts it wrote, so the figures say what the headers say), and
//! signatures made or failed. Labels come from fixed sets: never a domain.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::LazyLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Method {
    dkim,
    spf,
    dmarc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    pass,
    fail,
    softfail,
    neutral,
    none,
    policy,
    temperror,
    permerror,
    other,
}

impl Outcome {
    fn of(word: &str) -> Outcome {
        match word {
            "pass" => Outcome::pass,
            "fail" => Outcome::fail,
            "softfail" => Outcome::softfail,
            "neutral" => Outcome::neutral,
            "none" => Outcome::none,
            "policy" => Outcome::policy,
            "temperror" => Outcome::temperror,
            "permerror" => Outcome::permerror,
            _ => Outcome::other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    pub method: Method,
    pub result: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Signing {
    signed,
    failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SignLabel {
    pub outcome: Signing,
}

#[derive(Debug)]
struct Figures {
    results: Family<ResultLabel, Counter>,
    signatures: Family<SignLabel, Counter>,
    verify_seconds: Histogram,
}

fn figures() -> &'static Figures {
    static F: LazyLock<Figures> = LazyLock::new(|| {
        let f = Figures {
            results: Family::default(),
            signatures: Family::default(),
            // 1 ms to about 16 s: the DNS questions of DKIM, SPF and DMARC.
            verify_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        };
        daemon::metrics::register(
            "milter_verify_seconds",
            "Time of one message's DKIM, SPF and DMARC checks at end of message (their DNS questions included)",
            f.verify_seconds.clone(),
        );
        daemon::metrics::register(
            "milter_auth_results",
            "DKIM (one per signature), SPF and DMARC results written into Authentication-Results",
            f.results.clone(),
        );
        daemon::metrics::register(
            "milter_signatures",
            "DKIM signatures made for outgoing mail, and signing failures (the message was deferred)",
            f.signatures.clone(),
        );
        f
    });
    &F
}

/// The `method=result` pairs of Authentication-Results texts (`HOST; dkim=pass ...; ...`).
pub fn pairs(text: &str) -> Vec<(Method, Outcome)> {
    let mut out = Vec::new();
    for part in text.split(';').skip(1) {
        let Some((method, rest)) = part.trim_start().split_once('=') else {
            continue;
        };
        let method = match method {
            "dkim" => Method::dkim,
            "spf" => Method::spf,
            "dmarc" => Method::dmarc,
            _ => continue,
        };
        let word = rest.split([' ', '(']).next().unwrap_or_default();
        out.push((method, Outcome::of(word)));
    }
    out
}

/// Counts the results in the Authentication-Results texts written for one message.
pub fn verified(texts: &[String]) {
    let f = figures();
    for text in texts {
        for (method, result) in pairs(text) {
            f.results
                .get_or_create(&ResultLabel { method, result })
                .inc();
        }
    }
}

/// Counts `n` signatures made, or one signing failure.
pub fn signed(outcome: Signing, n: u64) {
    figures()
        .signatures
        .get_or_create(&SignLabel { outcome })
        .inc_by(n);
}

/// One message's checks took `took`.
pub fn verify_took(took: std::time::Duration) {
    figures().verify_seconds.observe(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_read_back_from_the_texts() {
        assert_eq!(
            pairs(
                "box.example.com; dkim=pass header.d=a.example; dkim=fail (bad) header.d=b.example"
            ),
            [(Method::dkim, Outcome::pass), (Method::dkim, Outcome::fail)]
        );
        assert_eq!(
            pairs("box.example.com; spf=softfail smtp.mailfrom=x"),
            [(Method::spf, Outcome::softfail)]
        );
        assert_eq!(
            pairs("box.example.com; dmarc=temperror (p=none dis=none) header.from=x"),
            [(Method::dmarc, Outcome::temperror)]
        );
        assert_eq!(
            pairs("box.example.com; dkim=none"),
            [(Method::dkim, Outcome::none)]
        );
        assert!(pairs("box.example.com").is_empty());
    }
}
