//! DKIM canonicalisation where mail-auth 0.13.3 differs from RFC 6376, sans I/O: the body
//! (§3.4.3, §3.4.4) streamed, bytes in and canonical bytes out to a [`Writer`], with the `l=`
//! count applied to the canonical octets; and one header field in relaxed form (§3.4.2).
//!
//! mail-auth 0.13.3's body canonicaliser counts a line holding only whitespace as a line of
//! content (so `relaxed` bodies ending in such lines, or made only of them, hash wrongly),
//! drops a bare CR in `simple`, and applies `l=` to the raw body rather than the canonical
//! one; its relaxed header form drops a form feed inside a word. Upstream fixed the first in
//! mail-auth 0.15 (which needs rustc 1.98). Until we move, the body hashes mail-auth compares
//! and the header form of our signatures are made here; `mail_auth_0_13_still_differs` fails
//! once mail-auth agrees, and this file can go then.

use mail_auth::common::headers::Writer;
use mail_auth::dkim::Canonicalization;

/// One body's canonicaliser. Feed it chunks with [`Body::write`], end with [`Body::finish`].
#[derive(Debug, Clone)]
pub(crate) struct Body {
    relaxed: bool,
    /// Line ends (CRLF) seen but not yet written: they are written only when content follows,
    /// so empty lines at the end are never written.
    crlfs: u64,
    /// A CR whose LF may come in the next chunk.
    cr: bool,
    /// Relaxed: whitespace seen inside the line, written as one SP if content follows.
    wsp: bool,
    /// Anything but line ends was written.
    content: bool,
}

impl Body {
    pub(crate) fn new(c: Canonicalization) -> Body {
        Body {
            relaxed: c == Canonicalization::Relaxed,
            crlfs: 0,
            cr: false,
            wsp: false,
            content: false,
        }
    }

    /// Writes content byte(s): the line ends held back first, then (relaxed) one SP for the
    /// whitespace before it.
    fn emit(&mut self, bytes: &[u8], out: &mut impl Writer) {
        for _ in 0..self.crlfs {
            out.write(b"\r\n");
        }
        self.crlfs = 0;
        if self.wsp {
            out.write(b" ");
            self.wsp = false;
        }
        out.write(bytes);
        self.content = true;
    }

    pub(crate) fn write(&mut self, chunk: &[u8], out: &mut impl Writer) {
        let mut rest = chunk;
        while let Some((&b, tail)) = rest.split_first() {
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    self.crlfs += 1;
                    // Whitespace at the end of a line is not part of the relaxed line.
                    self.wsp = false;
                    rest = tail;
                    continue;
                }
                // A bare CR is content.
                self.emit(b"\r", out);
            }
            match b {
                b'\r' => {
                    self.cr = true;
                    rest = tail;
                }
                b' ' | b'\t' if self.relaxed => {
                    self.wsp = true;
                    rest = tail;
                }
                _ => {
                    // The longest run of plain content is written at once.
                    let n = rest
                        .iter()
                        .position(|&c| c == b'\r' || (self.relaxed && (c == b' ' || c == b'\t')))
                        .unwrap_or(rest.len());
                    let (run, tail) = rest.split_at(n);
                    self.emit(run, out);
                    rest = tail;
                }
            }
        }
    }

    /// Ends the body: one CRLF after the last line of content. An empty body is `CRLF` in
    /// simple and nothing in relaxed.
    pub(crate) fn finish(mut self, out: &mut impl Writer) {
        if self.cr {
            self.cr = false;
            self.emit(b"\r", out);
        }
        if self.content || !self.relaxed {
            out.write(b"\r\n");
        }
    }
}

/// One header field in RFC 6376 §3.4.2 relaxed form, `name:value` and CRLF: the name
/// lowercased without the blanks around it, CRLFs of folding removed, every run of SP and
/// HTAB one SP, no blank at either end of the value. mail-auth 0.13.3 makes a form feed
/// inside a word vanish (`a\x0cb` becomes `ab`) and keeps a vertical tab at the end, which
/// no other implementation does; our signatures use this instead.
pub(crate) fn relaxed_header(name: &[u8], value: &[u8], out: &mut impl Writer) {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = name.iter().position(|b| !blank(b)).unwrap_or(name.len());
    let end = name
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    out.write(&name[start..end].to_ascii_lowercase());
    out.write(b":");
    let mut line = Vec::with_capacity(value.len());
    let mut wsp = false;
    let mut rest = value;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'\r' if rest.first() == Some(&b'\n') => rest = &rest[1..],
            b' ' | b'\t' => wsp = true,
            _ => {
                if wsp && !line.is_empty() {
                    line.push(b' ');
                }
                wsp = false;
                line.push(b);
            }
        }
    }
    // At the ends every ASCII blank goes, as dkimpy and OpenDKIM both do (a vertical tab
    // or form feed inside stays, as RFC 6376 and dkimpy have it).
    let trimmed = line
        .iter()
        .position(|b| !b" \t\r\n\x0b\x0c".contains(b))
        .map_or(&[][..], |start| {
            let end = line
                .iter()
                .rposition(|b| !b" \t\r\n\x0b\x0c".contains(b))
                .map_or(start, |i| i + 1);
            &line[start..end]
        });
    out.write(trimmed);
    out.write(b"\r\n");
}

/// Bytes collected from a [`Writer`] (canonical forms to compare or to verify over).
#[derive(Debug, Default)]
pub(crate) struct Bytes(pub(crate) Vec<u8>);

impl Writer for Bytes {
    fn write(&mut self, buf: &[u8]) {
        self.0.extend_from_slice(buf);
    }
}

/// A writer that passes on the first `limit` octets (all when `None`) and counts them all.
#[derive(Debug)]
pub(crate) struct Limited<W> {
    pub(crate) inner: W,
    limit: Option<u64>,
    pub(crate) total: u64,
}

impl<W: Writer> Limited<W> {
    pub(crate) fn new(inner: W, limit: Option<u64>) -> Limited<W> {
        Limited {
            inner,
            limit,
            total: 0,
        }
    }
}

impl<W: Writer> Writer for Limited<W> {
    fn write(&mut self, buf: &[u8]) {
        let room = match self.limit {
            Some(l) => usize::try_from(l.saturating_sub(self.total)).unwrap_or(usize::MAX),
            None => buf.len(),
        };
        self.inner.write(&buf[..buf.len().min(room)]);
        self.total += buf.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(c: Canonicalization, body: &[u8]) -> Vec<u8> {
        let mut out = Bytes::default();
        let mut b = Body::new(c);
        b.write(body, &mut out);
        b.finish(&mut out);
        out.0
    }

    /// RFC 6376 §3.4.3 and §3.4.4 as plainly as they read, on a whole body.
    fn reference(c: Canonicalization, body: &[u8]) -> Vec<u8> {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut rest = body;
        let mut last: Option<Vec<u8>> = None;
        loop {
            match rest.windows(2).position(|w| w == b"\r\n") {
                Some(i) => {
                    lines.push(rest[..i].to_vec());
                    rest = &rest[i + 2..];
                }
                None => {
                    if !rest.is_empty() {
                        last = Some(rest.to_vec());
                    }
                    break;
                }
            }
        }
        // An unterminated last line is a line that gets its CRLF.
        lines.extend(last);
        if c == Canonicalization::Relaxed {
            for l in &mut lines {
                let mut out = Vec::new();
                let mut wsp = false;
                for &b in l.iter() {
                    if b == b' ' || b == b'\t' {
                        wsp = true;
                    } else {
                        if wsp {
                            out.push(b' ');
                        }
                        wsp = false;
                        out.push(b);
                    }
                }
                *l = out;
            }
        }
        while lines.last().is_some_and(Vec::is_empty) {
            lines.pop();
        }
        if lines.is_empty() {
            return if c == Canonicalization::Relaxed {
                Vec::new()
            } else {
                b"\r\n".to_vec()
            };
        }
        lines
            .into_iter()
            .flat_map(|mut l| {
                l.extend_from_slice(b"\r\n");
                l
            })
            .collect()
    }

    #[test]
    fn rfc_examples_and_whitespace_lines() {
        use Canonicalization::{Relaxed, Simple};
        // RFC 6376 §3.4.5.
        let body = b" C \r\nD \t E\r\n\r\n\r\n";
        assert_eq!(canon(Relaxed, body), b" C\r\nD E\r\n");
        assert_eq!(canon(Simple, body), b" C \r\nD \t E\r\n");
        // The cases mail-auth 0.13.3 gets wrong.
        assert_eq!(canon(Relaxed, b"a\r\n \r\n"), b"a\r\n");
        assert_eq!(canon(Relaxed, b"a\r\n\t \r\n\r\n"), b"a\r\n");
        assert_eq!(canon(Relaxed, b" \r\n"), b"");
        assert_eq!(canon(Relaxed, b" \r\n\t\r\n"), b"");
        assert_eq!(canon(Relaxed, b"a\r\n \r\nb\r\n"), b"a\r\n\r\nb\r\n");
        assert_eq!(canon(Simple, b"a\rb\r\n"), b"a\rb\r\n");
        // Empty bodies.
        assert_eq!(canon(Relaxed, b""), b"");
        assert_eq!(canon(Simple, b""), b"\r\n");
        assert_eq!(canon(Simple, b"\r\n\r\n"), b"\r\n");
        assert_eq!(canon(Simple, b"x"), b"x\r\n");
    }

    /// Whatever the bytes and wherever the chunks split, the stream equals the reference.
    #[test]
    fn streaming_equals_the_reference() {
        let pieces: [&[u8]; 9] = [
            b" ",
            b"\t",
            b"\r\n",
            b"\r",
            b"\n",
            b"a",
            b"\xc3\xa4",
            b"  ",
            b"b c",
        ];
        miab_e2e::pseudo_random_inputs(&pieces, 4000, |body| {
            for c in [Canonicalization::Relaxed, Canonicalization::Simple] {
                let want = reference(c, body);
                assert_eq!(canon(c, body), want, "{c:?} {body:?}");
                for split in [1, 2, 3, 7] {
                    let mut out = Bytes::default();
                    let mut b = Body::new(c);
                    for chunk in body.chunks(split) {
                        b.write(chunk, &mut out);
                    }
                    b.finish(&mut out);
                    assert_eq!(out.0, want, "{c:?} {body:?} split {split}");
                }
            }
        });
    }

    /// Why this file exists: mail-auth 0.13's canonicaliser still differs here. When this
    /// fails after an upgrade, mail-auth has the fix and this file can go.
    #[test]
    fn mail_auth_0_13_still_differs() {
        use mail_auth::common::headers::Writable;
        for (c, body) in [
            (Canonicalization::Relaxed, &b"a\r\n \r\n"[..]),
            (Canonicalization::Simple, b"a\rb\r\n"),
        ] {
            let mut theirs = Bytes::default();
            c.canonical_body(body, 0).write(&mut theirs);
            assert_ne!(theirs.0, canon(c, body), "{c:?} {body:?}");
        }
    }

    #[test]
    fn relaxed_headers() {
        let one = |name: &[u8], value: &[u8]| {
            let mut out = Bytes::default();
            relaxed_header(name, value, &mut out);
            String::from_utf8_lossy(&out.0).into_owned()
        };
        // RFC 6376 §3.4.5.
        assert_eq!(one(b"A", b" X\r\n"), "a:X\r\n");
        assert_eq!(one(b"B ", b" Y\t\r\n\tZ  \r\n"), "b:Y Z\r\n");
        assert_eq!(
            one(b"Subject", b"\t\r\n a\x0cb  \x0b c \r\n"),
            "subject:a\x0cb \x0b c\r\n"
        );
        assert_eq!(one(b"X", b"   \r\n"), "x:\r\n");
        assert_eq!(one(b"Subject", b" x \x0b\r\n"), "subject:x\r\n");
        assert_eq!(one(b"Subject", b"\x0c x\x0c \r\n"), "subject:x\r\n");
        assert_eq!(one(b"X", b"a\rb\nc\r\n"), "x:a\rb\nc\r\n");
    }

    #[test]
    fn limited_counts_all_and_passes_the_prefix() {
        let mut w = Limited::new(Bytes::default(), Some(5));
        w.write(b"abc");
        w.write(b"defg");
        assert_eq!((w.inner.0.as_slice(), w.total), (&b"abcde"[..], 7));
        let mut w = Limited::new(Bytes::default(), None);
        w.write(b"abc");
        assert_eq!((w.inner.0.as_slice(), w.total), (&b"abc"[..], 3));
    }
}
