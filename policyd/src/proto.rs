//! Postfix's policy delegation protocol, without I/O: `name=value` lines ending in a blank
//! line, answered by `action=...` and a blank line.
//!
//! The decoder keeps its own buffer and scan position, so bytes may arrive in any pieces and
//! nothing is scanned twice. Limits are checked as soon as the bytes prove them broken, so at
//! most one maximal request is ever buffered.

use std::fmt;

/// Longest line: Postfix caps a name and a value at 4 × `line_length_limit` (8,192 bytes by
/// default) each.
pub const MAX_LINE: usize = 2 * 8192 + 1;
/// Most attributes in one request. Postfix 3.7 sends 33; 3.12 about 36.
pub const MAX_ATTRIBUTES: usize = 128;
/// Most bytes in one request, blank line included.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Longest action written back: Postfix reads replies with the same attribute limits.
pub const MAX_ACTION: usize = 8192;

/// Why the bytes are not a policy request. The connection is closed after any of these, as
/// the protocol asks ("on trouble, do not reply").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    #[error("request longer than {MAX_REQUEST} bytes")]
    RequestTooLarge,
    #[error("line without '='")]
    NoEquals,
    #[error("empty attribute name")]
    EmptyName,
    #[error("NUL byte in request")]
    Nul,
}

/// Every attribute Postfix 3.7 sends (and the 3.8+ additions), as text. Invalid UTF-8 is
/// replaced with U+FFFD: Postfix may pass 8-bit addresses through, and a check must still
/// see them. A repeated attribute keeps its last value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub request: Option<String>,
    pub protocol_state: String,
    pub protocol_name: String,
    pub helo_name: String,
    pub queue_id: String,
    pub sender: String,
    pub recipient: String,
    pub recipient_count: String,
    pub client_address: String,
    pub client_name: String,
    pub reverse_client_name: String,
    pub client_port: String,
    pub instance: String,
    pub sasl_method: String,
    pub sasl_username: String,
    pub sasl_sender: String,
    pub size: String,
    pub ccert_subject: String,
    pub ccert_issuer: String,
    pub ccert_fingerprint: String,
    pub ccert_pubkey_fingerprint: String,
    pub encryption_protocol: String,
    pub encryption_cipher: String,
    pub encryption_keysize: String,
    /// Present (even empty) from Postfix 2.3 on; postgrey keys its `4.2.0` quirk on it.
    pub etrn_domain: Option<String>,
    pub stress: String,
    pub policy_context: String,
    pub server_address: String,
    pub server_port: String,
    pub compatibility_level: String,
    pub mail_version: String,
    pub tls_sni: String,
    /// Attributes this server does not know; ignored, as the protocol requires.
    pub unknown: usize,
}

impl fmt::Debug for Request {
    // The fields that identify a transaction; certificates and ciphers are noise in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("protocol_state", &self.protocol_state)
            .field("client_address", &self.client_address)
            .field("client_name", &self.client_name)
            .field("helo_name", &self.helo_name)
            .field("sender", &self.sender)
            .field("recipient", &self.recipient)
            .field("sasl_username", &self.sasl_username)
            .field("instance", &self.instance)
            .field("policy_context", &self.policy_context)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// Is this a policy request at all (`request=smtpd_access_policy`)?
    pub fn is_policy_request(&self) -> bool {
        self.request.as_deref() == Some("smtpd_access_policy")
    }

    /// Did the client log in with SMTP AUTH?
    pub fn is_authenticated(&self) -> bool {
        !self.sasl_username.is_empty()
    }

    fn set(&mut self, name: &[u8], value: String) {
        let slot = match name {
            b"request" => {
                self.request = Some(value);
                return;
            }
            b"etrn_domain" => {
                self.etrn_domain = Some(value);
                return;
            }
            b"protocol_state" => &mut self.protocol_state,
            b"protocol_name" => &mut self.protocol_name,
            b"helo_name" => &mut self.helo_name,
            b"queue_id" => &mut self.queue_id,
            b"sender" => &mut self.sender,
            b"recipient" => &mut self.recipient,
            b"recipient_count" => &mut self.recipient_count,
            b"client_address" => &mut self.client_address,
            b"client_name" => &mut self.client_name,
            b"reverse_client_name" => &mut self.reverse_client_name,
            b"client_port" => &mut self.client_port,
            b"instance" => &mut self.instance,
            b"sasl_method" => &mut self.sasl_method,
            b"sasl_username" => &mut self.sasl_username,
            b"sasl_sender" => &mut self.sasl_sender,
            b"size" => &mut self.size,
            b"ccert_subject" => &mut self.ccert_subject,
            b"ccert_issuer" => &mut self.ccert_issuer,
            b"ccert_fingerprint" => &mut self.ccert_fingerprint,
            b"ccert_pubkey_fingerprint" => &mut self.ccert_pubkey_fingerprint,
            b"encryption_protocol" => &mut self.encryption_protocol,
            b"encryption_cipher" => &mut self.encryption_cipher,
            b"encryption_keysize" => &mut self.encryption_keysize,
            b"stress" => &mut self.stress,
            b"policy_context" => &mut self.policy_context,
            b"server_address" => &mut self.server_address,
            b"server_port" => &mut self.server_port,
            b"compatibility_level" => &mut self.compatibility_level,
            b"mail_version" => &mut self.mail_version,
            b"tls_sni" => &mut self.tls_sni,
            _ => {
                self.unknown += 1;
                return;
            }
        };
        *slot = value;
    }
}

/// Collects requests from bytes as they arrive.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Where the current (incomplete) line starts.
    line_start: usize,
    /// Complete attribute lines of the request being read.
    attrs: usize,
    /// The request being read, filled line by line.
    pending: Request,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends bytes from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a request.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete request, `None` if more bytes are needed. After an error the decoder
    /// is unusable: the connection must be closed.
    pub fn next_request(&mut self) -> Result<Option<Request>, FrameError> {
        loop {
            let rest = &self.buf[self.line_start..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                return self.check_partial();
            };
            let line_end = self.line_start + nl;
            if nl > MAX_LINE {
                return Err(FrameError::LineTooLong);
            }
            if line_end + 1 > MAX_REQUEST {
                return Err(FrameError::RequestTooLarge);
            }
            let line = trim_cr(&self.buf[self.line_start..line_end]);
            if line.is_empty() {
                self.buf.drain(..=line_end);
                self.line_start = 0;
                self.attrs = 0;
                return Ok(Some(std::mem::take(&mut self.pending)));
            }
            let eq = check_line(line)?;
            let value = String::from_utf8_lossy(&line[eq + 1..]).into_owned();
            self.pending.set(&line[..eq], value);
            self.attrs += 1;
            if self.attrs > MAX_ATTRIBUTES {
                return Err(FrameError::TooManyAttributes);
            }
            self.line_start = line_end + 1;
        }
    }

    /// Errors an unfinished line can already prove.
    fn check_partial(&self) -> Result<Option<Request>, FrameError> {
        let partial = &self.buf[self.line_start..];
        if partial.len() > MAX_LINE + 1 {
            return Err(FrameError::LineTooLong);
        }
        if self.buf.len() > MAX_REQUEST {
            return Err(FrameError::RequestTooLarge);
        }
        if memchr::memchr(0, partial).is_some() {
            return Err(FrameError::Nul);
        }
        Ok(None)
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Checks an attribute line; returns where its `=` is.
fn check_line(line: &[u8]) -> Result<usize, FrameError> {
    if memchr::memchr(0, line).is_some() {
        return Err(FrameError::Nul);
    }
    match memchr::memchr(b'=', line) {
        None => Err(FrameError::NoEquals),
        Some(0) => Err(FrameError::EmptyName),
        Some(eq) => Ok(eq),
    }
}

/// Writes `action=ACTION` and the blank line. Line breaks and NULs in the action (from a
/// configured text) become spaces, and it is cut at [`MAX_ACTION`] on a character boundary,
/// so the reply is always one well-formed attribute.
pub fn encode_reply(action: &str, out: &mut Vec<u8>) {
    let mut end = action.len().min(MAX_ACTION);
    while !action.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(b"action=");
    out.extend(action[..end].bytes().map(|b| {
        if matches!(b, b'\n' | b'\r' | 0) {
            b' '
        } else {
            b
        }
    }));
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as Postfix 3.7.11 writes it (order from `smtpd_check.c`).
    pub(crate) const POSTFIX_37: &[u8] = b"request=smtpd_access_policy
protocol_state=RCPT
protocol_name=ESMTP
client_address=192.0.2.10
client_name=mx.example.net
client_port=52344
reverse_client_name=mx.example.net
server_address=198.51.100.5
server_port=25
helo_name=mx.example.net
sender=alice@example.net
recipient=bob@example.org
recipient_count=0
queue_id=
instance=2d1c.6699f3a1.7e2b.0
size=0
etrn_domain=
stress=
sasl_method=
sasl_username=
sasl_sender=
ccert_subject=
ccert_issuer=
ccert_fingerprint=
ccert_pubkey_fingerprint=
encryption_protocol=TLSv1.3
encryption_cipher=TLS_AES_256_GCM_SHA384
encryption_keysize=256
policy_context=

";

    fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Request>, FrameError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            d.push(piece);
            while let Some(r) = d.next_request()? {
                out.push(r);
            }
        }
        Ok(out)
    }

    #[test]
    fn every_postfix_37_attribute() {
        let r = &decode_all(POSTFIX_37, 4096).unwrap()[0];
        assert!(r.is_policy_request());
        assert_eq!(r.protocol_state, "RCPT");
        assert_eq!(r.protocol_name, "ESMTP");
        assert_eq!(r.client_address, "192.0.2.10");
        assert_eq!(r.client_name, "mx.example.net");
        assert_eq!(r.client_port, "52344");
        assert_eq!(r.reverse_client_name, "mx.example.net");
        assert_eq!(r.server_address, "198.51.100.5");
        assert_eq!(r.server_port, "25");
        assert_eq!(r.helo_name, "mx.example.net");
        assert_eq!(r.sender, "alice@example.net");
        assert_eq!(r.recipient, "bob@example.org");
        assert_eq!(r.recipient_count, "0");
        assert_eq!(r.instance, "2d1c.6699f3a1.7e2b.0");
        assert_eq!(r.size, "0");
        assert_eq!(r.etrn_domain.as_deref(), Some(""));
        assert_eq!(r.encryption_protocol, "TLSv1.3");
        assert_eq!(r.encryption_cipher, "TLS_AES_256_GCM_SHA384");
        assert_eq!(r.encryption_keysize, "256");
        assert!(!r.is_authenticated());
        assert_eq!(r.unknown, 0);
    }

    #[test]
    fn chunk_size_sweep() {
        let mut two = POSTFIX_37.to_vec();
        two.extend_from_slice(b"request=smtpd_access_policy\r\nsasl_username=me@x\r\nfuture_attr=1\r\nsender=a=b@c\r\n\r\n");
        let whole = decode_all(&two, two.len()).unwrap();
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[1].sasl_username, "me@x");
        assert_eq!(whole[1].sender, "a=b@c", "split on the first '='");
        assert_eq!(whole[1].unknown, 1);
        for chunk in 1..=two.len() {
            assert_eq!(decode_all(&two, chunk).unwrap(), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn malformed_input() {
        let cases: &[(&[u8], FrameError)] = &[
            (b"no equals sign\n\n", FrameError::NoEquals),
            (b"=value\n\n", FrameError::EmptyName),
            (b"sender=a\0b\n\n", FrameError::Nul),
            (b"sender=a\0", FrameError::Nul),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n",
                FrameError::Nul,
            ),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", FrameError::NoEquals),
        ];
        for (input, want) in cases {
            assert_eq!(decode_all(input, 3).unwrap_err(), *want, "{input:?}");
        }
        let long = format!("sender={}", "a".repeat(MAX_LINE + 10));
        assert_eq!(
            decode_all(long.as_bytes(), 1000).unwrap_err(),
            FrameError::LineTooLong,
            "rejected before the newline arrives"
        );
        let many: String = (0..=MAX_ATTRIBUTES).map(|i| format!("x{i}=1\n")).collect();
        assert_eq!(
            decode_all(many.as_bytes(), 50).unwrap_err(),
            FrameError::TooManyAttributes
        );
        let big: String = (0..10)
            .map(|i| format!("x{i}={}\n", "v".repeat(8000)))
            .collect();
        assert_eq!(
            decode_all(big.as_bytes(), 4096).unwrap_err(),
            FrameError::RequestTooLarge
        );
    }

    #[test]
    fn no_request_attribute_and_bad_utf8() {
        let r = &decode_all(b"sender=\xff\xfe@x\n\n", 10).unwrap()[0];
        assert!(!r.is_policy_request());
        assert_eq!(r.sender, "\u{fffd}\u{fffd}@x");
        assert!(
            decode_all(b"request=smtpd_access_policy\n", 10)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn replies_are_one_attribute() {
        let mut out = Vec::new();
        encode_reply("DEFER_IF_PERMIT line\r\nbreak\0", &mut out);
        assert_eq!(out, b"action=DEFER_IF_PERMIT line  break \n\n");
        out.clear();
        encode_reply(&"é".repeat(MAX_ACTION), &mut out);
        assert!(out.len() <= MAX_ACTION + 9 && std::str::from_utf8(&out).is_ok());
    }
}
