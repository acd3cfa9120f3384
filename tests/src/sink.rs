//! A minimal SMTP server on loopback that accepts and records every message, standing in for
//! the rest of the world (and for the LMTP delivery path) behind a throw-away Postfix.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One message as the sink received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The MAIL FROM address, without brackets.
    pub mail_from: String,
    /// Every RCPT TO address, without brackets.
    pub rcpt_to: Vec<String>,
    /// The message with dot-stuffing undone, CRLF line ends.
    pub data: String,
}

/// The running sink. Its accept thread ends when the value is dropped.
#[derive(Debug)]
pub struct SmtpSink {
    port: u16,
    messages: Arc<Mutex<Vec<Received>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl SmtpSink {
    /// Starts listening on an ephemeral loopback port.
    pub fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, s) = (Arc::clone(&messages), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let m = Arc::clone(&m);
                        std::thread::spawn(move || {
                            let _ = serve(conn, &m);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        SmtpSink {
            port,
            messages,
            stop,
        }
    }

    /// The port to point Postfix's `relayhost` / transports at.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    /// How many messages arrived so far.
    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    /// Waits for a message whose data contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<Received> {
        crate::wait_until(timeout, || {
            self.messages()
                .into_iter()
                .find(|m| m.data.contains(needle))
        })
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn strip_brackets(arg: &str) -> String {
    let a = arg.trim();
    let a = a.split_whitespace().next().unwrap_or("");
    a.trim_start_matches('<').trim_end_matches('>').to_owned()
}

fn serve(conn: TcpStream, messages: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    w.write_all(b"220 sink.example ESMTP test sink\r\n")?;
    let (mut from, mut rcpts) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("LHLO") {
            w.write_all(b"250-sink.example\r\n250-8BITMIME\r\n250 PIPELINING\r\n")?;
        } else if upper.starts_with("HELO") {
            w.write_all(b"250 sink.example\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            from = strip_brackets(&line[10..]);
            rcpts.clear();
            w.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            rcpts.push(strip_brackets(&line[8..]));
            w.write_all(b"250 2.1.5 ok\r\n")?;
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n")?;
            let mut data = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            messages.lock().unwrap().push(Received {
                mail_from: from.clone(),
                rcpt_to: rcpts.clone(),
                data,
            });
            w.write_all(b"250 2.0.0 queued\r\n")?;
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else {
            w.write_all(b"250 2.0.0 ok\r\n")?;
        }
    }
}
