//! The SASL side, as plain functions: the PLAIN and LOGIN exchanges, the login's folding, and
//! when plaintext mechanisms are allowed. No I/O, no DB.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::net::IpAddr;
use userdb::Password;

/// The mechanisms offered, in the order announced.
pub const MECHANISMS: [&str; 2] = ["PLAIN", "LOGIN"];
/// LOGIN's prompts, base64: `Username:` and `Password:`.
pub const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASS_PROMPT: &str = "UGFzc3dvcmQ6";
/// Longest login accepted (an address is at most 254 bytes).
const MAX_LOGIN: usize = 320;
/// Longest password accepted.
const MAX_PASSWORD: usize = 1024;

/// Credentials taken from an exchange.
pub struct Credentials {
    /// As the client sent it.
    pub login: String,
    pub password: Password,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// Why an exchange cannot go on; the request fails (not temporarily).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("invalid base64 data")]
    Base64,
    #[error("malformed PLAIN response")]
    Plain,
    #[error("authorization identity differs from the login")]
    Authzid,
    #[error("login or password too long, empty, not UTF-8, or a login with control characters")]
    Field,
}

fn decode(b64: &str) -> Result<Vec<u8>, SaslError> {
    B64.decode(b64.trim()).map_err(|_| SaslError::Base64)
}

fn field(bytes: Vec<u8>, max: usize) -> Result<String, SaslError> {
    let s = String::from_utf8(bytes).map_err(|_| SaslError::Field)?;
    if s.is_empty() || s.len() > max {
        return Err(SaslError::Field);
    }
    Ok(s)
}

/// A login: a field without control characters (NUL, line breaks), which no address has.
fn login_field(bytes: Vec<u8>) -> Result<String, SaslError> {
    let s = field(bytes, MAX_LOGIN)?;
    if s.chars().any(char::is_control) {
        return Err(SaslError::Field);
    }
    Ok(s)
}

/// PLAIN (RFC 4616): `authzid NUL authcid NUL password`. An authorization identity other than
/// the login (a master user) is refused, as are more than three fields.
pub fn plain(resp_b64: &str) -> Result<Credentials, SaslError> {
    let raw = decode(resp_b64)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Plain);
    };
    let login = login_field(authcid.to_vec())?;
    if !authzid.is_empty() && authzid != login.as_bytes() {
        return Err(SaslError::Authzid);
    }
    Ok(Credentials {
        login,
        password: Password::new(field(pass.to_vec(), MAX_PASSWORD)?),
    })
}

/// LOGIN's username step.
pub fn login_user(resp_b64: &str) -> Result<String, SaslError> {
    login_field(decode(resp_b64)?)
}

/// LOGIN's password step.
pub fn login_password(user: String, resp_b64: &str) -> Result<Credentials, SaslError> {
    Ok(Credentials {
        login: user,
        password: Password::new(field(decode(resp_b64)?, MAX_PASSWORD)?),
    })
}

/// The DB key for a login: lowercased, as Dovecot's default `auth_username_format = %Lu`.
pub fn fold_login(login: &str) -> String {
    login.trim().to_lowercase()
}

/// May a plaintext mechanism run? Over TLS (`secured`), from loopback, from the server's own
/// address (Dovecot's rule: remote equals local, which includes a local tool that sends
/// neither), or when configured.
pub fn plaintext_allowed(
    secured: bool,
    local_ip: &str,
    remote_ip: &str,
    allow_insecure: bool,
) -> bool {
    let ip = |s: &str| s.parse::<IpAddr>().ok();
    secured
        || allow_insecure
        || ip(remote_ip).is_some_and(|ip| ip.is_loopback())
        || ip(remote_ip) == ip(local_ip)
}

/// Dovecot's text for a refused plaintext login.
pub const INSECURE_REASON: &str =
    "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.";

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        B64.encode(s)
    }

    #[test]
    fn plain_exchanges() {
        let c = plain(&b64(b"\0alice@example.org\0secret")).unwrap();
        assert_eq!(
            (c.login.as_str(), c.password.expose()),
            ("alice@example.org", "secret")
        );
        let c = plain(&b64(b"alice@example.org\0alice@example.org\0pw")).unwrap();
        assert_eq!(c.login, "alice@example.org");
        assert_eq!(
            plain(&b64(b"bob\0alice\0pw")).unwrap_err(),
            SaslError::Authzid
        );
        // Dovecot's own test case: more than three fields fails.
        assert_eq!(
            plain(&b64(b"\0fa\0il\0ing\0withthis")).unwrap_err(),
            SaslError::Plain
        );
        assert_eq!(plain(&b64(b"\0only")).unwrap_err(), SaslError::Plain);
        assert_eq!(plain(&b64(b"\0\0pw")).unwrap_err(), SaslError::Field);
        assert_eq!(plain(&b64(b"\0a\0")).unwrap_err(), SaslError::Field);
        assert_eq!(plain(&b64(b"\0a\xff\0pw")).unwrap_err(), SaslError::Field);
        assert_eq!(plain("not base64!").unwrap_err(), SaslError::Base64);
        assert!(!format!("{c:?}").contains("pw"), "no password in Debug");
    }

    #[test]
    fn login_exchange_and_policy() {
        assert_eq!(
            login_user(&b64(b"Alice@Example.org")).unwrap(),
            "Alice@Example.org"
        );
        let c = login_password("a".into(), &b64(b"s3cret")).unwrap();
        assert_eq!(c.password.expose(), "s3cret");
        assert_eq!(login_user("").unwrap_err(), SaslError::Field);
        assert_eq!(fold_login(" Alice@Example.ORG "), "alice@example.org");
        let lip = "198.51.100.5";
        assert!(plaintext_allowed(false, lip, "127.0.0.1", false));
        assert!(plaintext_allowed(false, lip, "::1", false));
        assert!(plaintext_allowed(true, lip, "192.0.2.1", false));
        assert!(plaintext_allowed(false, lip, "192.0.2.1", true));
        assert!(!plaintext_allowed(false, lip, "192.0.2.1", false));
        assert!(
            plaintext_allowed(false, lip, lip, false),
            "the server's own address"
        );
        assert!(
            plaintext_allowed(false, "", "", false),
            "a local tool sends neither"
        );
        assert!(!plaintext_allowed(false, lip, "", false));
    }
}
