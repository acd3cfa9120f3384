//! Listening addresses in Postfix notation (`inet:HOST:PORT`, `unix:PATH`), binding them safely,
//! and the accepted stream type every daemon reads from.
//!
//! A UNIX socket is bound under a temporary name, given its mode and group, and only then renamed
//! onto its path, so clients never see it with the wrong permissions. A live socket of another
//! process is never taken over, and anything that is not a socket is never replaced.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Where a daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `inet:HOST:PORT`; an IPv6 host is written in brackets (`inet:[::1]:10023`).
    Inet(SocketAddr),
    /// `unix:/absolute/path`.
    Unix(PathBuf),
}

/// A listen address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad listen address {text:?}: {why} (expected inet:127.0.0.1:PORT or unix:/path)")]
pub struct BadListenAddr {
    text: String,
    why: &'static str,
}

impl FromStr for ListenAddr {
    type Err = BadListenAddr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| BadListenAddr {
            text: s.to_owned(),
            why,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(bad("a UNIX socket path must be absolute"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let rest = s.strip_prefix("inet:").ok_or_else(|| bad("unknown type"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = if host == "localhost" {
            "127.0.0.1"
        } else {
            host
        };
        let ip = host
            .parse()
            .map_err(|_| bad("the host must be an IP address"))?;
        let port = port.parse().map_err(|_| bad("bad port"))?;
        Ok(ListenAddr::Inet(SocketAddr::new(ip, port)))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Inet(a) => write!(f, "inet:{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = BadListenAddr;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl serde::Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Ownership and mode of a UNIX socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixOptions {
    /// Permission bits, e.g. `0o660`.
    pub mode: u32,
    /// Group name or number to own the socket; `None` keeps the process's group.
    pub group: Option<String>,
}

impl Default for UnixOptions {
    fn default() -> Self {
        UnixOptions {
            mode: 0o660,
            group: None,
        }
    }
}

/// A bound listener. A UNIX socket file is removed when this is dropped, if it is still ours.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        guard: SocketFile,
    },
}

/// Removes a socket file on drop unless something else has replaced it meanwhile.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && m.dev() == self.dev
            && m.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Inet(SocketAddr),
    Unix,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Inet(a) => write!(f, "{a}"),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

/// An accepted connection of either kind.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    /// Binds `addr`; `unix` applies to UNIX sockets only. Must run inside a tokio runtime.
    pub fn bind(addr: &ListenAddr, unix: &UnixOptions) -> io::Result<Listener> {
        match addr {
            ListenAddr::Inet(a) => {
                let l = std::net::TcpListener::bind(a)?;
                l.set_nonblocking(true)?;
                Ok(Listener::Tcp(TcpListener::from_std(l)?))
            }
            ListenAddr::Unix(path) => bind_unix(path, unix),
        }
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(l) => Ok(ListenAddr::Inet(l.local_addr()?)),
            Listener::Unix { guard, .. } => Ok(ListenAddr::Unix(guard.path.clone())),
        }
    }

    /// Waits for the next connection. TCP streams get `TCP_NODELAY`: replies are small and
    /// latency-bound.
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), Peer::Inet(a)))
            }
            Listener::Unix { listener, .. } => {
                let (s, _) = listener.accept().await?;
                Ok((Stream::Unix(s), Peer::Unix))
            }
        }
    }
}

fn bind_unix(path: &Path, opts: &UnixOptions) -> io::Result<Listener> {
    let err = |kind, msg: String| io::Error::new(kind, format!("{}: {msg}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(err(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket; not replacing it".into(),
            ));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket".into(),
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.kind(), e.to_string())),
    }
    let dir = path
        .parent()
        .ok_or_else(|| err(io::ErrorKind::InvalidInput, "no directory".into()))?;
    let name = path
        .file_name()
        .ok_or_else(|| err(io::ErrorKind::InvalidInput, "no file name".into()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let std_listener = std::os::unix::net::UnixListener::bind(&tmp)?;
    let placed = (|| {
        if let Some(group) = &opts.group {
            std::os::unix::fs::chown(&tmp, None, Some(resolve_group(group)?))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(opts.mode))?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e.kind(), e.to_string()));
    }
    let m = std::fs::symlink_metadata(path)?;
    std_listener.set_nonblocking(true)?;
    Ok(Listener::Unix {
        listener: UnixListener::from_std(std_listener)?,
        guard: SocketFile {
            path: path.to_owned(),
            dev: m.dev(),
            ino: m.ino(),
        },
    })
}

/// A group name or number to a gid, through NSS like `chgrp`.
fn resolve_group(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no such group {group:?}"),
        )),
        Err(e) => Err(io::Error::other(format!("group {group:?}: {e}"))),
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Parses an octal mode string such as `"0660"`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "bad socket mode {s:?}: expected octal permission bits like \"0660\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_notation() {
        let a: ListenAddr = "inet:127.0.0.1:10023".parse().unwrap();
        assert_eq!(a.to_string(), "inet:127.0.0.1:10023");
        let a: ListenAddr = "inet:[::1]:8891".parse().unwrap();
        assert_eq!(a, ListenAddr::Inet("[::1]:8891".parse().unwrap()));
        let a: ListenAddr = "inet:localhost:1".parse().unwrap();
        assert_eq!(a.to_string(), "inet:127.0.0.1:1");
        assert_eq!(
            "unix:/run/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/x.sock".into())
        );
        for bad in [
            "127.0.0.1:1",
            "inet:127.0.0.1",
            "inet:host.example:25",
            "inet:127.0.0.1:99999",
            "unix:relative/path",
            "tcp:1.2.3.4:5",
        ] {
            let e = bad.parse::<ListenAddr>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert!(parse_mode("0999").is_err() && parse_mode("7777").is_err());
    }

    #[tokio::test]
    async fn unix_socket_is_placed_safely() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let opts = UnixOptions {
            mode: 0o600,
            group: Some("0".into()),
        };
        let l = Listener::bind(&ListenAddr::Unix(path.clone()), &opts).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        // A second daemon must not steal a live socket.
        let e = Listener::bind(&ListenAddr::Unix(path.clone()), &opts).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(l);
        assert!(!path.exists(), "socket removed on drop");
        // A regular file is never replaced.
        std::fs::write(&path, "data").unwrap();
        let e = Listener::bind(&ListenAddr::Unix(path.clone()), &opts).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
        std::fs::remove_file(&path).unwrap();
        // A stale socket (nobody listening) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let _l = Listener::bind(&ListenAddr::Unix(path.clone()), &opts).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary socket left behind");
    }
}
