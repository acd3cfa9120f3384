//! The notice to the administrator: written like MIAB's own administrator mail
//! (`management/email_administrator.py`: the same From:, To: and Subject: shape) and handed to
//! the box's Postfix over SMTP on loopback, as that script does. Not `sendmail`: its setgid
//! `postdrop` cannot work under the unit's NoNewPrivileges and read-only /var/spool.

use crate::proto::Request;
use state::sending::NewHold;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long the whole SMTP exchange may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest reply line read from the server.
const MAX_LINE: usize = 4096;

/// Where notices go, and how.
#[derive(Debug, Clone)]
pub struct Notice {
    pub to: String,
    pub smtp: SocketAddr,
    pub hostname: String,
}

impl Notice {
    /// Sends `text` (a whole message, CRLF line ends) to `to`, from `to`.
    pub async fn send(&self, text: &str) -> std::io::Result<()> {
        tokio::time::timeout(TIMEOUT, self.exchange(text))
            .await
            .map_err(|_| std::io::Error::other("timed out"))?
    }

    async fn exchange(&self, text: &str) -> std::io::Result<()> {
        let stream = TcpStream::connect(self.smtp).await?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        expect(&mut read, 220).await?;
        let to = &self.to;
        for (command, code) in [
            (format!("EHLO {}\r\n", self.hostname), 250),
            (format!("MAIL FROM:<{to}>\r\n"), 250),
            (format!("RCPT TO:<{to}>\r\n"), 250),
            ("DATA\r\n".to_owned(), 354),
        ] {
            write.write_all(command.as_bytes()).await?;
            expect(&mut read, code).await?;
        }
        write.write_all(dot_stuffed(text).as_bytes()).await?;
        write.write_all(b".\r\n").await?;
        expect(&mut read, 250).await?;
        write.write_all(b"QUIT\r\n").await?;
        Ok(())
    }
}

/// Reads one reply (all its lines) and checks its code.
async fn expect<R: AsyncBufRead + Unpin>(read: &mut R, code: u16) -> std::io::Result<()> {
    loop {
        let mut line = Vec::new();
        let n = (&mut *read)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(std::io::Error::other(
                "the SMTP server closed the connection",
            ));
        }
        let text = String::from_utf8_lossy(&line);
        let got = text.get(..3).and_then(|c| c.parse::<u16>().ok());
        if got != Some(code) {
            return Err(std::io::Error::other(format!(
                "the SMTP server answered {:?}",
                super::printable(text.trim_end())
            )));
        }
        if text.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

/// `text` with CRLF line ends and a leading dot doubled (RFC 5321 4.5.2), ending in CRLF.
fn dot_stuffed(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

/// The notice: MIAB's administrator mail's headers, the figures, and what to do.
pub fn text(n: &Notice, login: &str, req: &Request, h: &NewHold) -> String {
    use super::printable;
    let login = printable(login);
    let host = printable(&n.hostname);
    format!(
        "From: \"{host}\" <{to}>\r\nTo: {to}\r\nSubject: [{host}] Outgoing mail from {login} is held\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\nAuto-Submitted: auto-generated\r\n\r\n\
         miab-policyd put the outgoing mail of {login} on hold: {reason}.\r\n\
         Its busiest hour of the last weeks: {bm} messages, {br} recipients, {bn} new recipients.\r\n\
         Last client: {client}. Sender: {sender}.\r\n\r\n\
         Nothing is sent or lost while the login is held; its mail waits in Postfix's hold queue.\r\n\r\n\
         If the mail is the user's own:   miabctl held release {login}\r\n\
         If the account is stolen:        miabctl user suspend {login}\r\n\
         \x20 (then change its password; miabctl held drop {login} deletes its held mail)\r\n\
         To see every held login:         miabctl held\r\n",
        to = printable(&n.to),
        reason = printable(&h.reason),
        bm = h.busiest.messages,
        br = h.busiest.recipients,
        bn = h.busiest.new_recipients,
        client = printable(&req.client_address),
        sender = printable(&req.sender),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use state::sending::Figures;

    #[test]
    fn the_notice_is_plain_and_escapes_what_came_from_the_network() {
        let n = Notice {
            to: "administrator@box.example.com".into(),
            smtp: ([127, 0, 0, 1], 25).into(),
            hostname: "box.example.com".into(),
        };
        let req = Request {
            client_address: "192.0.2.1".into(),
            sender: "x@y\r\nBcc: victim@z".into(),
            ..Request::default()
        };
        let h = NewHold {
            reason: "51 new recipients in the last hour (limit 50)".into(),
            last_hour: Figures::default(),
            busiest: Figures {
                messages: 5,
                recipients: 5,
                new_recipients: 2,
            },
            limits: Figures::default(),
            notify: true,
        };
        let text = text(&n, "me@example.com\nBcc: a@b", &req, &h);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(head.lines().count(), 6, "{head}");
        assert!(head.contains(
            "Subject: [box.example.com] Outgoing mail from me@example.com?Bcc: a@b is held"
        ));
        assert!(
            !body.contains("\r\nBcc:") && body.contains("Sender: x@y??Bcc: victim@z."),
            "{body}"
        );
        assert!(body.contains("miabctl held release me@example.com?Bcc: a@b"));
        assert_eq!(dot_stuffed(".a\nb\r\n..c"), "..a\r\nb\r\n...c\r\n");
    }
}
