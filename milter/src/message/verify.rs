//! Verification: one body hasher per distinct (canonicalization, hash, length) the
//! DKIM-Signature headers ask for, then DKIM, SPF and DMARC under one deadline, and the
//! Authentication-Results headers.

use super::Session;
use super::canon::{self, Bytes, Limited};
use crate::results;
use indymilter::{ContextActions, EomActions, SetErrorReply, SmtpReply, Status};
use mail_auth::common::cache::NoCache;
use mail_auth::common::crypto::{HashAlgorithm, HashContext, HashImpl, Sha1, Sha256};
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::Canonicalization;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimOutput, DkimResult, DmarcResult, MessageAuthenticator, Txt,
};
use std::net::IpAddr;
use userdb::address::domain_lowercase;

/// A body hash in progress: RFC 6376's canonical body (see [`canon`]), cut at `l=` octets
/// when the signature has one, into one hash algorithm.
pub(super) struct Hasher {
    body: canon::Body,
    hash: Hash,
}

enum Hash {
    Sha256(Limited<<Sha256 as HashImpl>::Context>),
    Sha1(Limited<<Sha1 as HashImpl>::Context>),
}

impl Hasher {
    pub(super) fn new(c: Canonicalization, h: HashAlgorithm, l: u64) -> Hasher {
        let limit = (l > 0).then_some(l);
        Hasher {
            body: canon::Body::new(c),
            hash: match h {
                HashAlgorithm::Sha256 => Hash::Sha256(Limited::new(Sha256::hasher(), limit)),
                HashAlgorithm::Sha1 => Hash::Sha1(Limited::new(Sha1::hasher(), limit)),
            },
        }
    }

    pub(super) fn write(&mut self, chunk: &[u8]) {
        match &mut self.hash {
            Hash::Sha256(w) => self.body.write(chunk, w),
            Hash::Sha1(w) => self.body.write(chunk, w),
        }
    }

    /// The hash and the length of the whole canonical body.
    fn finish(self) -> (Vec<u8>, u64) {
        fn done<H: HashContext>(body: canon::Body, mut w: Limited<H>) -> (Vec<u8>, u64) {
            body.finish(&mut w);
            (w.inner.complete().as_ref().to_vec(), w.total)
        }
        match self.hash {
            Hash::Sha256(w) => done(self.body, w),
            Hash::Sha1(w) => done(self.body, w),
        }
    }
}

impl Session {
    /// Checks the finished message and adds the results; rejects only under `dmarc_reject`.
    pub(super) async fn verify(
        &self,
        hashers: Vec<Hasher>,
        authors: &[(String, Vec<String>)],
        actions: &EomActions,
        reply: &mut SmtpReply,
    ) -> Status {
        let host = self.state.hostname.as_str();
        let Some(mut msg) = AuthenticatedMessage::parse_with_opts(&self.headers, None, false)
        else {
            return Status::Continue;
        };
        let skipped = cap_signatures(&mut msg, self.state.max_signatures);
        let mut lengths = Vec::with_capacity(hashers.len());
        for (slot, h) in msg.body_hashes.iter_mut().zip(hashers) {
            let (hash, length) = h.finish();
            slot.3 = hash;
            lengths.push(length);
        }
        let partial = judge_lengths(&mut msg, &lengths);
        let header_from: Vec<String> = authors.iter().map(|(d, _)| d.clone()).collect();
        // DMARC once per author domain, each with that domain's addresses only.
        let per_domain: Vec<AuthenticatedMessage<'_>> = authors
            .iter()
            .map(|(_, addresses)| AuthenticatedMessage {
                from: addresses.clone(),
                ..AuthenticatedMessage::default()
            })
            .collect();
        let mail_from_domain = domain_lowercase(&self.sender).unwrap_or_default();
        let ip = self
            .client
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let helo = self.helo.as_str();
        let sender = self.sender.as_str();
        let auth = &self.state.auth;
        let spf_domain = if mail_from_domain.is_empty() {
            helo
        } else {
            mail_from_domain.as_str()
        };
        let checks = async {
            let mut dkim = auth.verify_dkim(&msg).await;
            recheck_relaxed_headers(auth, &msg, &mut dkim).await;
            let spf = if sender.is_empty() {
                auth.verify_spf(SpfParameters::verify_ehlo(ip, helo, host))
                    .await
            } else {
                auth.verify_spf(SpfParameters::verify_mail_from(ip, helo, host, sender))
                    .await
            };
            let mut texts = vec![
                results::dkim_header(host, &dkim, &partial, skipped),
                results::spf_header(host, spf.result(), &mail_from_domain, helo),
            ];
            let mut rejected = None;
            for (m, domain) in per_domain.iter().zip(&header_from) {
                let dmarc = auth
                    .verify_dmarc(DmarcParameters::new(m, &dkim, spf_domain, &spf))
                    .await;
                let reject = self.state.dmarc_reject
                    && matches!(dmarc.result(), DmarcResult::Fail(_))
                    && dmarc.policy() == Policy::Reject
                    && !dmarc.dmarc_record().is_some_and(|r| r.t);
                let disposition = if reject { Policy::Reject } else { Policy::None };
                if reject && rejected.is_none() {
                    rejected = Some(domain.clone());
                }
                texts.push(results::dmarc_header(host, &dmarc, domain, disposition));
            }
            (texts, rejected)
        };
        let started = std::time::Instant::now();
        let checked = tokio::time::timeout(self.state.verify_timeout, checks).await;
        crate::metrics::verify_took(started.elapsed());
        let (texts, rejected) = match checked {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("DNS checks timed out; temperror");
                (
                    results::timed_out(host, &mail_from_domain, helo, &header_from),
                    None,
                )
            }
        };
        // Inserted at the top, so the last one inserted ends up first: dkim, spf, dmarc.
        for text in texts.iter().rev() {
            if let Err(e) = actions
                .insert_header(0, "Authentication-Results", format!(" {text}"))
                .await
            {
                tracing::warn!(error = %e, "could not add Authentication-Results");
            }
        }
        crate::metrics::verified(&texts);
        tracing::info!(from = ?header_from, results = ?texts, "verified");
        self.journal("verified", || {
            let verdict = if rejected.is_some() {
                "reject"
            } else {
                "accept"
            };
            format!("{verdict}: {}", texts.join("; "))
        });
        if let Some(domain) = rejected {
            let _ = reply.set_error_reply(
                "550",
                Some("5.7.1"),
                [format!(
                    "rejected by DMARC policy for {}",
                    results::pvalue(&domain)
                )],
            );
            return Status::Reject;
        }
        Status::Continue
    }
}

/// Checks again, over RFC 6376's relaxed header form (`canon::relaxed_header`), each
/// signature with relaxed header canonicalisation that mail-auth failed on its signed headers
/// where mail-auth's relaxed form of them differs from RFC 6376's (a form feed inside a word,
/// a vertical tab at the end of a value: see `canon`). Only those, so its checks (expiry,
/// body hash, key record, `t=s`) stand for the rest; the key record is asked for again
/// (the resolver has it cached).
async fn recheck_relaxed_headers<'x>(
    auth: &MessageAuthenticator,
    msg: &'x AuthenticatedMessage<'x>,
    dkim: &mut [DkimOutput<'x>],
) {
    for out in dkim.iter_mut() {
        if !matches!(out.result(), DkimResult::Fail(mail_auth::Error::Crypto(_))) {
            continue;
        }
        let Some(header) = msg
            .dkim_headers
            .iter()
            .find(|h| out.signature().is_some_and(|s| std::ptr::eq(&h.header, s)))
        else {
            continue;
        };
        let sig = &header.header;
        if sig.ch != Canonicalization::Relaxed {
            continue;
        }
        let stripped = without_b(header.value);
        let signed: Vec<(&[u8], &[u8])> =
            msg.signed_headers(&sig.h, header.name, &stripped).collect();
        let Some((last, rest)) = signed.split_last() else {
            continue;
        };
        // Each signed header in RFC 6376's form, noting whether mail-auth's form differs.
        let mut input = Bytes::default();
        let mut differs = false;
        for &(name, value) in rest {
            let start = input.0.len();
            canon::relaxed_header(name, value, &mut input);
            let mut theirs = Bytes::default();
            Canonicalization::Relaxed
                .canonicalize_headers(std::iter::once((name, value)), &mut theirs);
            differs |= input.0[start..] != theirs.0[..];
        }
        if !differs {
            continue;
        }
        canon::relaxed_header(last.0, last.1, &mut input);
        let mut input = input.0;
        // The signature header itself is hashed without its CRLF.
        input.truncate(input.len().saturating_sub(2));
        let key = format!("{}._domainkey.{}.", sig.s, sig.d);
        let Ok(record) = auth
            .txt_lookup::<DomainKey>(key, None::<&NoCache<Box<str>, Txt>>)
            .await
        else {
            continue;
        };
        if record.p.verify_bytes(&input, &sig.b, sig.a).is_ok() {
            tracing::debug!(
                d = sig.d,
                s = sig.s,
                "passes over RFC 6376's relaxed headers"
            );
            *out = DkimOutput::pass().with_signature(sig);
        }
    }
}

/// A DKIM-Signature value with the value of its `b=` tag removed (RFC 6376 §3.7).
fn without_b(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for (i, tag) in value.split(|&b| b == b';').enumerate() {
        if i > 0 {
            out.push(b';');
        }
        match tag.iter().position(|&b| b == b'=') {
            Some(eq) if tag[..eq].trim_ascii() == b"b" => out.extend_from_slice(&tag[..=eq]),
            _ => out.extend_from_slice(tag),
        }
    }
    out
}

/// Takes out of `msg` the signatures whose `l=` is not the length of the canonical body as
/// received (`lengths`, one per body hash), so they count for nothing (not for DMARC either),
/// and returns their results.
fn judge_lengths(msg: &mut AuthenticatedMessage<'_>, lengths: &[u64]) -> Vec<String> {
    let body_hashes = &msg.body_hashes;
    let mut partial = Vec::new();
    msg.dkim_headers.retain(|h| {
        let s = &h.header;
        // mail-auth reads `l=0` as no `l=` at all; the tag itself tells them apart.
        if s.l == 0 && !has_length_tag(h.value) {
            return true;
        }
        let algorithm = HashAlgorithm::from(s.a);
        let length = body_hashes
            .iter()
            .zip(lengths)
            .find(|((c, a, l, _), _)| *c == s.cb && *a == algorithm && *l == s.l)
            .map(|(_, n)| *n);
        match length {
            Some(n) if n != s.l => {
                partial.push(results::length_result(s, n));
                false
            }
            _ => true,
        }
    });
    partial
}

/// Does a DKIM-Signature value have an `l=` tag (RFC 6376 §3.2 tag list)?
fn has_length_tag(value: &[u8]) -> bool {
    value.split(|&b| b == b';').any(|tag| {
        tag.split(|&b| b == b'=')
            .next()
            .is_some_and(|name| name.trim_ascii() == b"l")
    })
}

/// Keeps the first `max` DKIM signatures (well-formed ones first, then malformed ones while
/// room is left) and the body hashes they need; returns how many were dropped. The body hashes
/// are listed in the order their signatures come, so the kept ones are a prefix.
pub(super) fn cap_signatures(msg: &mut AuthenticatedMessage<'_>, max: usize) -> usize {
    let signatures = msg.dkim_headers.len();
    msg.dkim_headers.truncate(max);
    let room = max - msg.dkim_headers.len();
    let mut malformed = 0usize;
    let mut dropped_malformed = 0usize;
    msg.errors.retain(|e| {
        if !matches!(e.header, mail_auth::Error::Dkim(_)) {
            return true;
        }
        malformed += 1;
        let keep = malformed <= room;
        dropped_malformed += usize::from(!keep);
        keep
    });
    let needed = msg
        .body_hashes
        .iter()
        .take_while(|(c, h, l, _)| {
            msg.dkim_headers.iter().any(|s| {
                let s = &s.header;
                s.cb == *c && HashAlgorithm::from(s.a) == *h && s.l == *l
            })
        })
        .count();
    msg.body_hashes.truncate(needed);
    signatures.saturating_sub(max) + dropped_malformed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b_is_emptied_and_nothing_else() {
        assert_eq!(
            without_b(b" v=1; bh=abc=; b=XYZ\r\n\t123=; s=x\r\n"),
            b" v=1; bh=abc=; b=; s=x\r\n"
        );
        assert_eq!(without_b(b"v=1;\r\n b =abc"), b"v=1;\r\n b =");
    }

    #[test]
    fn an_explicit_l_zero_is_told_from_no_l() {
        assert!(has_length_tag(b"v=1; a=rsa-sha256; l=0; d=example.org"));
        assert!(has_length_tag(b"v=1;\r\n\t l =0;b=x"));
        assert!(!has_length_tag(
            b"v=1; a=rsa-sha256; d=example.org; s=l; b=l=="
        ));
        assert!(!has_length_tag(b""));
    }
}
