//! Verification: one body hasher per distinct (canonicalization, hash, length) the
//! DKIM-Signature headers ask for, then DKIM, SPF and DMARC under one deadline, and the
//! Authentication-Results headers.

use super::Session;
use crate::results;
use indymilter::{ContextActions, EomActions, SetErrorReply, SmtpReply, Status};
use mail_auth::common::crypto::{HashAlgorithm, HashContext, HashImpl, Sha1, Sha256};
use mail_auth::dkim::Canonicalization;
use mail_auth::dkim::canonicalize::BodyHasher;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, DmarcResult};
use std::net::IpAddr;
use userdb::address::domain_lowercase;

/// A body hasher for one hash algorithm.
pub(super) enum Hasher {
    Sha256(BodyHasher<<Sha256 as HashImpl>::Context>),
    Sha1(BodyHasher<<Sha1 as HashImpl>::Context>),
}

impl Hasher {
    pub(super) fn new(c: Canonicalization, h: HashAlgorithm, l: u64) -> Hasher {
        match h {
            HashAlgorithm::Sha256 => Hasher::Sha256(BodyHasher::new(Sha256::hasher(), c, l)),
            HashAlgorithm::Sha1 => Hasher::Sha1(BodyHasher::new(Sha1::hasher(), c, l)),
        }
    }

    pub(super) fn write(&mut self, chunk: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.write(chunk),
            Hasher::Sha1(h) => h.write(chunk),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha256(h) => h.finish().0.complete().as_ref().to_vec(),
            Hasher::Sha1(h) => h.finish().0.complete().as_ref().to_vec(),
        }
    }
}

impl Session {
    /// Checks the finished message and adds the results; rejects only under `dmarc_reject`.
    pub(super) async fn verify(
        &self,
        hashers: Vec<Hasher>,
        actions: &EomActions,
        reply: &mut SmtpReply,
    ) -> Status {
        let host = self.state.hostname.as_str();
        let Some(mut msg) = AuthenticatedMessage::parse(&self.headers) else {
            return Status::Continue;
        };
        let skipped = cap_signatures(&mut msg, self.state.max_signatures);
        for (slot, h) in msg.body_hashes.iter_mut().zip(hashers) {
            slot.3 = h.finish();
        }
        let header_from = msg
            .from
            .first()
            .and_then(|f| domain_lowercase(f))
            .unwrap_or_default();
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
            let dkim = auth.verify_dkim(&msg).await;
            let spf = if sender.is_empty() {
                auth.verify_spf(SpfParameters::verify_ehlo(ip, helo, host))
                    .await
            } else {
                auth.verify_spf(SpfParameters::verify_mail_from(ip, helo, host, sender))
                    .await
            };
            let dmarc = auth
                .verify_dmarc(DmarcParameters::new(&msg, &dkim, spf_domain, &spf))
                .await;
            let reject = self.state.dmarc_reject
                && matches!(dmarc.result(), DmarcResult::Fail(_))
                && dmarc.policy() == Policy::Reject
                && !dmarc.dmarc_record().is_some_and(|r| r.t);
            let disposition = if reject { Policy::Reject } else { Policy::None };
            let texts = [
                results::dkim_header(host, &dkim, skipped),
                results::spf_header(host, spf.result(), &mail_from_domain, helo),
                results::dmarc_header(host, &dmarc, &header_from, disposition),
            ];
            (texts, reject)
        };
        let (texts, reject) = match tokio::time::timeout(self.state.verify_timeout, checks).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("DNS checks timed out; temperror");
                (
                    results::timed_out(host, &mail_from_domain, helo, &header_from),
                    false,
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
        tracing::info!(from = header_from, results = ?texts, "verified");
        if reject {
            let _ = reply.set_error_reply(
                "550",
                Some("5.7.1"),
                [format!("rejected by DMARC policy for {header_from}")],
            );
            return Status::Reject;
        }
        Status::Continue
    }
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
