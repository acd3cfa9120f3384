//! Signing: the listed headers the message has, and the body as it streams, through one
//! mail-auth streaming signer per key in a task of its own.

use super::{Session, Work};
use crate::keys::DomainKeys;
use mail_auth::common::crypto::SigningKey;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use tokio::sync::mpsc;

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
