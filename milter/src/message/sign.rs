//! Signing: the body as it streams into one RFC 6376 body hash (`canon`), then one mail-auth
//! signature per key over the listed headers the message has, in a task of its own.

use super::{Session, Work, canon};
use crate::keys::DomainKeys;
use mail_auth::AuthenticatedMessage;
use mail_auth::common::crypto::{HashContext, HashImpl, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable, Writer};
use mail_auth::dkim::{Canonicalization, DkimSigner, Done, Signature};
use std::time::SystemTime;
use tokio::sync::mpsc;

/// MIAB's OpenDKIM signs `relaxed/simple`; the headers are written in relaxed form here.
const BODY_CANONICALIZATION: Canonicalization = Canonicalization::Simple;

/// Body chunks (up to 64 KiB each) waiting for the signer.
const SIGNER_QUEUE: usize = 4;

impl Session {
    /// Starts the signer task for `domain`; the body goes to it as it comes.
    pub(super) async fn start_signing(&mut self, domain: String) {
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
    /// Streams the body into one body hash (both keys sign with SHA-256 and the same
    /// canonicalisation), then signs with each key; returns the signature header values,
    /// Ed25519 first so that RSA ends up on top.
    async fn run(
        self,
        head: Vec<u8>,
        mut rx: mpsc::Receiver<Vec<u8>>,
    ) -> Result<Vec<String>, String> {
        let mut body = canon::Body::new(BODY_CANONICALIZATION);
        let mut hash = Sha256::hasher();
        while let Some(chunk) = rx.recv().await {
            body.write(&chunk, &mut hash);
        }
        body.finish(&mut hash);
        let bh = hash.complete().as_ref().to_vec();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut out = Vec::new();
        if let Some(k) = self.keys.ed25519 {
            let ed = signer(k, &self.domain, &self.ed25519_selector, &self.headers);
            out.push(sign(&ed, &head, bh.clone(), now)?);
        }
        let rsa = signer(
            self.keys.rsa,
            &self.domain,
            &self.rsa_selector,
            &self.headers,
        );
        out.push(sign(&rsa, &head, bh, now)?);
        Ok(out)
    }
}

/// Signs the header block `head` with the body hash `bh` made here (see `canon`: mail-auth
/// 0.13's own simple canonicalisation drops a bare CR), the way mail-auth's signer does it
/// otherwise: the listed headers the message has, bottom-up, then the listed names it lacks
/// (the extra `From` that oversigns). Returns the header value.
fn sign<K: SigningKey>(
    signer: &DkimSigner<K, Done>,
    head: &[u8],
    bh: Vec<u8>,
    now: u64,
) -> Result<String, String> {
    let template = &signer.template;
    let mut headers = Vec::new();
    let mut found = vec![false; template.h.len()];
    let mut names = Vec::new();
    let parsed = AuthenticatedMessage::parse(head).ok_or("no header fields to sign")?;
    for &(name, value) in &parsed.headers {
        if let Some(pos) = template
            .h
            .iter()
            .position(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        {
            headers.push((name, value));
            found[pos] = true;
            names.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    if names.is_empty() {
        return Err(mail_auth::Error::NoHeadersFound.to_string());
    }
    names.reverse();
    names.extend(
        template
            .h
            .iter()
            .zip(&found)
            .filter(|(_, f)| !**f)
            .map(|(h, _)| h.clone()),
    );
    let mut sig = template.clone();
    sig.bh = bh;
    sig.t = now;
    sig.h = names;
    sig.b = signer
        .key
        .sign(Signable {
            headers: &headers,
            sig: &sig,
        })
        .map_err(|e| e.to_string())?;
    Ok(header_value(&sig.to_header()))
}

/// What the key signs: the signed headers bottom-up in relaxed form (`canon`), then the
/// signature header with `b=` empty, as mail-auth writes it.
struct Signable<'a> {
    headers: &'a [(&'a [u8], &'a [u8])],
    sig: &'a Signature,
}

impl Writable for Signable<'_> {
    fn write(self, writer: &mut impl Writer) {
        for (name, value) in self.headers.iter().rev() {
            canon::relaxed_header(name, value, writer);
        }
        self.sig.write(writer, false);
    }
}

fn signer<K: SigningKey>(
    key: K,
    domain: &str,
    selector: &str,
    headers: &[String],
) -> DkimSigner<K, Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(headers.iter().map(String::as_str))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(BODY_CANONICALIZATION)
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
