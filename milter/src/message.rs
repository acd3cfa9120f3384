//! One milter connection and the message in progress.
//!
//! Headers are kept (up to `max_header_bytes`), because DKIM needs them whole. The body is
//! never kept: when signing it streams through a bounded channel into a task that owns the
//! signer (mail-auth's streaming signer); when verifying it streams into one body hasher per
//! distinct (canonicalization, hash, length) the DKIM-Signature headers ask for. At the end,
//! mail-auth verifies the signatures against those body hashes.

use crate::State;
use crate::keys::DomainKeys;
use crate::results;
use indymilter::{ContextActions, EomActions, SetErrorReply, SmtpReply, Status};
use mail_auth::common::crypto::{HashAlgorithm, HashContext, HashImpl, Sha1, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::canonicalize::BodyHasher;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, DmarcResult};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use userdb::Directory;
use userdb::address::domain_lowercase;

/// Body chunks (up to 64 KiB each) waiting for the signer.
const SIGNER_QUEUE: usize = 4;

/// A body hasher for one hash algorithm.
enum Hasher {
    Sha256(BodyHasher<<Sha256 as HashImpl>::Context>),
    Sha1(BodyHasher<<Sha1 as HashImpl>::Context>),
}

impl Hasher {
    fn new(c: Canonicalization, h: HashAlgorithm, l: u64) -> Hasher {
        match h {
            HashAlgorithm::Sha256 => Hasher::Sha256(BodyHasher::new(Sha256::hasher(), c, l)),
            HashAlgorithm::Sha1 => Hasher::Sha1(BodyHasher::new(Sha1::hasher(), c, l)),
        }
    }

    fn write(&mut self, chunk: &[u8]) {
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

/// What happens to the message in progress.
enum Work {
    /// Headers still coming.
    Headers,
    /// Neither signed nor verified.
    Pass,
    /// Streaming into the signer task.
    Sign {
        domain: String,
        tx: mpsc::Sender<Vec<u8>>,
        task: JoinHandle<Result<Vec<String>, String>>,
    },
    /// Streaming into body hashers.
    Verify { hashers: Vec<Hasher> },
    /// Something failed before the end of the message, which is answered with tempfail.
    Failed,
}

/// The connection's state (indymilter's per-connection data).
pub struct Session {
    state: Arc<State>,
    client: Option<IpAddr>,
    helo: String,
    sender: String,
    authenticated: bool,
    headers: Vec<u8>,
    overflow: bool,
    /// Authentication-Results headers seen, and the indices (1-based) of those claiming our
    /// authserv-id.
    ar_seen: i32,
    ar_forged: Vec<i32>,
    work: Work,
    /// The MTA takes no answer before end-of-message.
    quiet: bool,
}

impl Session {
    pub(crate) fn new(state: Arc<State>, quiet: bool) -> Session {
        Session {
            state,
            client: None,
            helo: String::new(),
            sender: String::new(),
            authenticated: false,
            headers: Vec::new(),
            overflow: false,
            ar_seen: 0,
            ar_forged: Vec::new(),
            work: Work::Headers,
            quiet,
        }
    }

    /// The answer of every stage before end-of-message.
    pub(crate) fn carry_on(&self) -> Status {
        if self.quiet {
            Status::Noreply
        } else {
            Status::Continue
        }
    }

    pub(crate) fn connect(&mut self, ip: IpAddr) {
        self.client = Some(ip);
    }

    pub(crate) fn helo(&mut self, helo: &str) {
        self.helo = helo.to_owned();
    }

    /// MAIL FROM starts a message.
    pub(crate) fn mail(&mut self, sender: &str, authenticated: bool) {
        self.abort();
        self.sender = sender
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned();
        self.authenticated = authenticated;
    }

    /// Forgets the message in progress (the connection stays).
    pub(crate) fn abort(&mut self) {
        if let Work::Sign { task, .. } = std::mem::replace(&mut self.work, Work::Headers) {
            task.abort();
        }
        self.headers = Vec::new();
        self.overflow = false;
        self.ar_seen = 0;
        self.ar_forged.clear();
    }

    /// One header as Postfix sends it (value byte-exact with its leading space; folded lines
    /// separated by bare LF, which DKIM needs as CRLF).
    pub(crate) fn header(&mut self, name: &[u8], value: &[u8]) {
        if name.eq_ignore_ascii_case(b"Authentication-Results") {
            self.ar_seen += 1;
            if results::claims_authserv_id(&String::from_utf8_lossy(value), &self.state.hostname) {
                self.ar_forged.push(self.ar_seen);
            }
        }
        if self.overflow {
            return;
        }
        if self.headers.len() + name.len() + value.len() + 3 > self.state.max_header_bytes {
            self.overflow = true;
            self.headers = Vec::new();
            return;
        }
        self.headers.extend_from_slice(name);
        self.headers.push(b':');
        let mut prev = 0u8;
        for &b in value {
            if b == b'\n' && prev != b'\r' {
                self.headers.push(b'\r');
            }
            self.headers.push(b);
            prev = b;
        }
        self.headers.extend_from_slice(b"\r\n");
    }

    /// The From: header's domain (the first address), lowercased. After the headers ended.
    fn header_from_domain(&self) -> Option<String> {
        let msg = AuthenticatedMessage::parse(&self.headers)?;
        msg.from.first().and_then(|f| domain_lowercase(f))
    }

    async fn is_mail_domain(&self, domain: &str) -> Result<bool, userdb::Error> {
        Ok(self.state.dir.current().await?.is_mail_domain(domain))
    }

    fn internal(&self) -> bool {
        self.authenticated || self.client.is_some_and(|ip| self.state.is_trusted(ip))
    }

    /// Decides between signing, verifying and passing, and starts the body's journey.
    pub(crate) async fn end_of_headers(&mut self) -> Status {
        if self.overflow {
            tracing::warn!(
                limit = self.state.max_header_bytes,
                "headers too large; message passed unsigned and unverified"
            );
            self.work = Work::Pass;
            return self.carry_on();
        }
        // The header block is complete: end it as a message does, so mail-auth can parse it
        // (and the signer take it) as is.
        self.headers.extend_from_slice(b"\r\n");
        if self.internal() {
            let Some(domain) = self.header_from_domain() else {
                self.work = Work::Pass;
                return self.carry_on();
            };
            match self.is_mail_domain(&domain).await {
                Ok(true) => self.start_signing(domain).await,
                Ok(false) => {
                    tracing::debug!(?domain, "From: domain is not ours; not signed");
                    self.work = Work::Pass;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "user DB unavailable; asking the client to retry");
                    self.work = Work::Failed;
                }
            }
            return self.carry_on();
        }
        if !self.state.verify {
            self.work = Work::Pass;
            return self.carry_on();
        }
        let max = self.state.max_signatures;
        let hashers = AuthenticatedMessage::parse(&self.headers)
            .map(|mut m| {
                cap_signatures(&mut m, max);
                m.body_hashes
                    .iter()
                    .map(|(c, h, l, _)| Hasher::new(*c, *h, *l))
                    .collect()
            })
            .unwrap_or_default();
        self.work = Work::Verify { hashers };
        self.carry_on()
    }

    async fn start_signing(&mut self, domain: String) {
        let keys = self.state.keyring().for_domain(&domain);
        // OpenDKIM's way: sign the listed headers the message has, and From once more so
        // that no From: can be added.
        let present: Vec<String> = self
            .state
            .sign_headers
            .iter()
            .filter(|h| header_present(&self.headers, h))
            .cloned()
            .chain(std::iter::once("From".to_owned()))
            .collect();
        let (tx, rx) = mpsc::channel::<Vec<u8>>(SIGNER_QUEUE);
        let head = std::mem::take(&mut self.headers);
        let job = SignJob {
            domain: domain.clone(),
            keys,
            rsa_selector: self.state.rsa_selector.clone(),
            ed25519_selector: self.state.ed25519_selector.clone(),
            headers: present,
        };
        let task = tokio::spawn(job.run(head, rx));
        self.work = Work::Sign { domain, tx, task };
    }

    pub(crate) async fn body(&mut self, chunk: &[u8]) -> Status {
        match &mut self.work {
            Work::Sign { tx, .. } => {
                if tx.send(chunk.to_vec()).await.is_err() {
                    tracing::error!("signer stopped early");
                    self.work = Work::Failed;
                }
            }
            Work::Verify { hashers } => {
                for h in hashers {
                    h.write(chunk);
                }
            }
            Work::Headers | Work::Pass | Work::Failed => {}
        }
        self.carry_on()
    }

    pub(crate) async fn end_of_message(
        &mut self,
        actions: &EomActions,
        reply: &mut SmtpReply,
    ) -> Status {
        // Forged results go first, while the indices still count only the headers that came
        // with the message (Postfix counts the ones we insert too).
        for index in self.ar_forged.iter().rev() {
            if let Err(e) = actions
                .change_header("Authentication-Results", *index, None::<&str>)
                .await
            {
                tracing::warn!(error = %e, "could not remove a forged Authentication-Results");
            }
        }
        let work = std::mem::replace(&mut self.work, Work::Headers);
        let status = match work {
            Work::Sign { domain, tx, task } => {
                drop(tx);
                match task.await {
                    Ok(Ok(sigs)) => {
                        for sig in sigs {
                            if let Err(e) = actions
                                .insert_header(0, "DKIM-Signature", format!(" {sig}"))
                                .await
                            {
                                tracing::error!(error = %e, "could not add DKIM-Signature");
                                return Status::Tempfail;
                            }
                        }
                        tracing::info!(?domain, "signed");
                        Status::Continue
                    }
                    Ok(Err(e)) => {
                        tracing::error!(domain, error = %e, "signing failed; asking the client to retry");
                        Status::Tempfail
                    }
                    Err(e) => {
                        tracing::error!(domain, error = %e, "signer task failed");
                        Status::Tempfail
                    }
                }
            }
            Work::Verify { hashers } => self.verify(hashers, actions, reply).await,
            Work::Headers | Work::Pass => Status::Continue,
            Work::Failed => Status::Tempfail,
        };
        self.abort();
        status
    }

    async fn verify(
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

/// Is there a header `name` in the raw block?
fn header_present(block: &[u8], name: &str) -> bool {
    block
        .split(|&b| b == b'\n')
        .filter(|line| !line.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
        .filter_map(|line| line.iter().position(|&b| b == b':').map(|i| &line[..i]))
        .any(|n| n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
}

/// What the signer task needs; the keys are shared, never copied.
struct SignJob {
    domain: String,
    keys: DomainKeys,
    rsa_selector: String,
    ed25519_selector: String,
    headers: Vec<String>,
}

impl SignJob {
    /// Streams the message into one signer per key; returns the signature header values,
    /// Ed25519 first so that RSA ends up on top.
    async fn run(
        self,
        head: Vec<u8>,
        mut rx: mpsc::Receiver<Vec<u8>>,
    ) -> Result<Vec<String>, String> {
        let rsa = signer(
            self.keys.rsa,
            &self.domain,
            &self.rsa_selector,
            &self.headers,
        );
        let ed = self
            .keys
            .ed25519
            .map(|k| signer(k, &self.domain, &self.ed25519_selector, &self.headers));
        let mut rsa_stream = rsa.sign_streaming();
        let mut ed_stream = ed.as_ref().map(DkimSigner::sign_streaming);
        rsa_stream.write(&head);
        if let Some(s) = ed_stream.as_mut() {
            s.write(&head);
        }
        while let Some(chunk) = rx.recv().await {
            rsa_stream.write(&chunk);
            if let Some(s) = ed_stream.as_mut() {
                s.write(&chunk);
            }
        }
        let mut out = Vec::new();
        if let Some(s) = ed_stream {
            out.push(header_value(
                &s.finish().map_err(|e| e.to_string())?.to_header(),
            ));
        }
        out.push(header_value(
            &rsa_stream.finish().map_err(|e| e.to_string())?.to_header(),
        ));
        Ok(out)
    }
}

fn signer<K: SigningKey>(
    key: K,
    domain: &str,
    selector: &str,
    headers: &[String],
) -> DkimSigner<K, mail_auth::dkim::Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(headers.iter().map(String::as_str))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Simple)
}

/// A rendered `DKIM-Signature: ...\r\n` as a milter header value: no name, folded with LF.
fn header_value(rendered: &str) -> String {
    let v = rendered
        .split_once(':')
        .map_or(rendered, |(_, v)| v)
        .trim_start()
        .trim_end_matches(['\r', '\n']);
    v.replace("\r\n", "\n")
}

/// Keeps the first `max` DKIM signatures (well-formed ones first, then malformed ones while
/// room is left) and the body hashes they need; returns how many were dropped. The body hashes
/// are listed in the order their signatures come, so the kept ones are a prefix.
fn cap_signatures(msg: &mut AuthenticatedMessage<'_>, max: usize) -> usize {
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
    fn headers_present() {
        let block = b"From: a@b\r\nSubject: x\r\n\tfolded: no\r\nTo : c\r\n";
        assert!(header_present(block, "from"));
        assert!(header_present(block, "To"));
        assert!(!header_present(block, "folded"));
        assert!(!header_present(block, "Cc"));
    }

    #[test]
    fn signature_header_values() {
        assert_eq!(
            header_value("DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc\r\n"),
            "v=1; a=rsa-sha256;\n\tb=abc"
        );
    }
}
