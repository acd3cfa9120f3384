//! The socketmap wire format, sans I/O: netstring frames, the `name key` request inside, and
//! the `OK`/`NOTFOUND`/`TEMP`/`PERM` replies.
//!
//! The decoder rejects a bad frame as soon as the bytes prove it bad (a non-digit length, a
//! length over the limit, a missing `,`), so a hostile peer can never make it buffer more than
//! one maximal frame.

use std::fmt;

/// The longest request payload accepted: Postfix 3.12 caps the key at 10,000 bytes
/// (`socketmap_max_query_size`); the map name and its space come on top.
pub const MAX_REQUEST: usize = 10_000 + 128;
/// The longest reply payload sent: Postfix refuses replies over 100,000 bytes
/// (`socketmap_max_reply_size`).
pub const MAX_REPLY: usize = 100_000;
/// A length prefix longer than this is garbage, even with leading zeros.
const MAX_LENGTH_DIGITS: usize = 12;

/// Why a frame was rejected; the connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A byte other than a digit before the `:` (or an empty length).
    BadLength(u8),
    /// The declared length exceeds the limit (`declared` is as far as it was read).
    TooLong { declared: u128, max: usize },
    /// The payload was not followed by `,`.
    MissingComma(u8),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadLength(b) => {
                write!(f, "bad netstring length: unexpected byte 0x{b:02x}")
            }
            FrameError::TooLong { declared, max } => {
                write!(
                    f,
                    "netstring length of at least {declared} bytes exceeds the limit of {max}"
                )
            }
            FrameError::MissingComma(b) => {
                write!(f, "netstring not terminated by ',' (got 0x{b:02x})")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Looks for one complete netstring at the start of `buf`. `Ok(None)`: more bytes are needed.
/// `Ok(Some((payload, consumed)))`: a frame, and how many bytes of `buf` it used.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let mut declared: u128 = 0;
    let mut digits = 0;
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                digits += 1;
                declared = declared * 10 + u128::from(b - b'0');
                if digits > MAX_LENGTH_DIGITS || declared > max as u128 {
                    return Err(FrameError::TooLong { declared, max });
                }
            }
            b':' if digits > 0 => {
                // `declared <= max` here, so the cast cannot truncate.
                let len = declared as usize;
                let start = i + 1;
                let end = start + len;
                return match buf.get(end) {
                    None => Ok(None),
                    Some(b',') => Ok(Some((&buf[start..end], end + 1))),
                    Some(&other) => Err(FrameError::MissingComma(other)),
                };
            }
            other => return Err(FrameError::BadLength(other)),
        }
    }
    Ok(None)
}

/// Appends `payload` as a netstring.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    out.push(b',');
}

/// A parsed request: map name and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub map: &'a str,
    /// `None` when the key is not UTF-8 (nothing in the DB can match it).
    pub key: Option<&'a str>,
}

/// A request payload that is not `name SP key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest;

/// Splits a payload at the first space, as `dict_sockmap` builds it.
pub fn parse_request(payload: &[u8]) -> Result<Request<'_>, BadRequest> {
    let sp = payload.iter().position(|&b| b == b' ').ok_or(BadRequest)?;
    let map = std::str::from_utf8(&payload[..sp]).map_err(|_| BadRequest)?;
    if map.is_empty() {
        return Err(BadRequest);
    }
    Ok(Request {
        map,
        key: std::str::from_utf8(&payload[sp + 1..]).ok(),
    })
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Found, with its value.
    Ok(String),
    NotFound,
    /// Try again later: Postfix defers the mail.
    Temp(String),
    /// A configuration error (unknown map name, an answer too big for Postfix).
    Perm(String),
}

impl Reply {
    /// Appends the reply as a netstring. `OK` with an empty value goes out as `NOTFOUND`,
    /// which is what Postfix 3.7 makes of it anyway; an oversized value becomes `PERM`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let payload = match self {
            Reply::Ok(v) if v.is_empty() => "NOTFOUND ".to_owned(),
            Reply::Ok(v) if v.len() + 3 > MAX_REPLY => {
                format!("PERM answer of {} bytes is too long for Postfix", v.len())
            }
            Reply::Ok(v) => format!("OK {v}"),
            Reply::NotFound => "NOTFOUND ".to_owned(),
            Reply::Temp(r) => format!("TEMP {}", clean_reason(r)),
            Reply::Perm(r) => format!("PERM {}", clean_reason(r)),
        };
        encode(payload.as_bytes(), out);
    }
}

/// Reasons go into Postfix's log: one short printable line.
fn clean_reason(r: &str) -> String {
    r.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], chunk: usize) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some((payload, used)) = decode(&buf, MAX_REQUEST)? {
                out.push(payload.to_vec());
                buf.drain(..used);
            }
        }
        assert!(buf.is_empty(), "trailing bytes");
        Ok(out)
    }

    #[test]
    fn vectors() {
        assert_eq!(decode(b"0:,", 10), Ok(Some((&b""[..], 3))));
        assert_eq!(decode(b"1:X,", 10), Ok(Some((&b"X"[..], 4))));
        assert_eq!(decode(b"00:,", 10), Ok(Some((&b""[..], 4))));
        assert_eq!(
            decode(b"17:5:Hello,6:World!,,", 100),
            Ok(Some((&b"5:Hello,6:World!,"[..], 21)))
        );
        assert_eq!(decode(b"", 10), Ok(None));
        assert_eq!(decode(b"12", 100), Ok(None));
        assert_eq!(decode(b"3:ab", 100), Ok(None));
        assert_eq!(decode(b":,", 10), Err(FrameError::BadLength(b':')));
        assert_eq!(decode(b"aaa:aaa", 10), Err(FrameError::BadLength(b'a')));
        assert_eq!(decode(b"-1:", 10), Err(FrameError::BadLength(b'-')));
        assert_eq!(decode(b" 1:x,", 10), Err(FrameError::BadLength(b' ')));
        assert_eq!(decode(b"3:aaa_", 10), Err(FrameError::MissingComma(b'_')));
        assert_eq!(
            decode(b"9999:", 100),
            Err(FrameError::TooLong {
                declared: 999,
                max: 100
            })
        );
        // Rejected from the length alone, before any payload arrives.
        assert!(matches!(
            decode(b"99999999999999999999999", MAX_REQUEST),
            Err(FrameError::TooLong { .. })
        ));
        assert!(matches!(
            decode(b"0000000000000000001:x,", MAX_REQUEST),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn chunk_size_sweep() {
        let mut input = Vec::new();
        let payloads: Vec<Vec<u8>> = vec![
            b"mailboxes alice+news@example.org".to_vec(),
            b"domains example.org".to_vec(),
            Vec::new(),
            vec![b'x'; 3000],
            "aliases bücher@example.org".as_bytes().to_vec(),
        ];
        for p in &payloads {
            encode(p, &mut input);
        }
        for chunk in 1..=input.len() {
            assert_eq!(frames(&input, chunk).unwrap(), payloads, "chunk {chunk}");
        }
        // A bad frame after good ones is found whatever the chunking.
        input.extend_from_slice(b"5:hello;");
        for chunk in [1, 2, 3, 7, 64, input.len()] {
            assert_eq!(
                frames(&input, chunk),
                Err(FrameError::MissingComma(b';')),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(b"virtual bob@example.org"),
            Ok(Request {
                map: "virtual",
                key: Some("bob@example.org")
            })
        );
        assert_eq!(
            parse_request(b"aliases a b"),
            Ok(Request {
                map: "aliases",
                key: Some("a b")
            })
        );
        assert_eq!(
            parse_request(b"aliases \xff@x"),
            Ok(Request {
                map: "aliases",
                key: None
            })
        );
        assert_eq!(parse_request(b"nospace"), Err(BadRequest));
        assert_eq!(parse_request(b" key"), Err(BadRequest));
        assert_eq!(parse_request(b"\xff key"), Err(BadRequest));
    }

    #[test]
    fn replies() {
        let enc = |r: Reply| {
            let mut v = Vec::new();
            r.encode(&mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(
            enc(Reply::Ok("example.org/bob/".into())),
            "19:OK example.org/bob/,"
        );
        assert_eq!(enc(Reply::Ok("1".into())), "4:OK 1,");
        assert_eq!(enc(Reply::Ok(String::new())), "9:NOTFOUND ,");
        assert_eq!(enc(Reply::NotFound), "9:NOTFOUND ,");
        assert_eq!(
            enc(Reply::Temp("database is locked".into())),
            "23:TEMP database is locked,"
        );
        assert_eq!(enc(Reply::Perm("a\nb".into())), "8:PERM a b,");
        let big = enc(Reply::Ok("x".repeat(MAX_REPLY)));
        assert!(big.contains("PERM answer of 100000 bytes"), "{big}");
    }

    /// The fuzz target's body on pseudo-random input, so `cargo test` covers it on stable.
    #[test]
    fn random_input_never_panics_or_overreads() {
        let pieces: [&[u8]; 8] = [b"0", b"9", b":", b",", b" ", b"aliases", b"x", b"\xff"];
        miab_e2e::pseudo_random_inputs(&pieces, 20_000, crate::fuzz_decode);
    }
}
