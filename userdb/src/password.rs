//! Password hashing and verification, interchangeable with `doveadm pw -s SHA512-CRYPT`.
//!
//! Writes `{SHA512-CRYPT}$6$<16 salt chars>$<86 chars>` with Dovecot's default 5000 rounds and no
//! `rounds=` field, as MIAB stores them. Verifies `$6$` and `$5$` hashes with or without a
//! `{SHA512-CRYPT}`, `{SHA256-CRYPT}` or `{CRYPT}` prefix and with or without `rounds=N`. The
//! digest comparison is constant time (done inside `sha-crypt`).

use crate::error::{Error, Result, invalid};
use sha_crypt::password_hash::{CustomizedPasswordHasher, PasswordVerifier};
use sha_crypt::{Algorithm, Params, ShaCrypt};
use std::fmt;

/// Dovecot's scheme prefix, stored in front of every MIAB hash.
pub const SCHEME_PREFIX: &str = "{SHA512-CRYPT}";
/// Raw salt bytes: 12 bytes encode to the 16 salt characters Dovecot writes.
const SALT_BYTES: usize = 12;
/// MIAB's minimum password length (`validate_password`).
pub const MIN_PASSWORD_LEN: usize = 8;

/// A plaintext password. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Wraps a plaintext password.
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }

    /// The secret itself; use only to hash or verify.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// MIAB's `validate_password`: the same checks, the same texts.
pub fn validate_password(pw: &Password) -> Result<()> {
    if pw.0.trim().is_empty() {
        return invalid("No password provided.");
    }
    if pw.0.chars().count() < MIN_PASSWORD_LEN {
        return invalid("Passwords must be at least eight characters.");
    }
    Ok(())
}

/// Hashes as `doveadm pw -s SHA512-CRYPT` does. CPU-bound for a few milliseconds.
pub fn hash_password(pw: &Password) -> Result<String> {
    let mut salt = [0u8; SALT_BYTES];
    getrandom::fill(&mut salt).map_err(|e| Error::Random(e.to_string()))?;
    let hash = ShaCrypt::SHA512
        .hash_password_customized(pw.0.as_bytes(), &salt, None, None, Params::RECOMMENDED)
        .map_err(|e| Error::Random(e.to_string()))?
        .to_string();
    // The crate always writes `rounds=5000$`; Dovecot omits the field at the default, and the
    // digest does not depend on whether the field is written.
    let bare = hash.replacen("$rounds=5000$", "$", 1);
    Ok(format!("{SCHEME_PREFIX}{bare}"))
}

/// Checks `pw` against a stored hash. Unknown schemes and malformed hashes never verify.
pub fn verify_password(pw: &Password, stored: &str) -> bool {
    let Some(crypt) = strip_scheme(stored) else {
        return false;
    };
    let verifier = if crypt.starts_with("$5$") {
        ShaCrypt::new(Algorithm::Sha256Crypt, Params::RECOMMENDED)
    } else if crypt.starts_with("$6$") {
        ShaCrypt::SHA512
    } else {
        return false;
    };
    verifier.verify_password(pw.0.as_bytes(), crypt).is_ok()
}

/// Removes a Dovecot `{SCHEME}` prefix if it names a SHA-crypt scheme; a bare hash is taken as
/// SHA512-CRYPT, MIAB's `default_pass_scheme`.
fn strip_scheme(stored: &str) -> Option<&str> {
    let stored = stored.trim_end();
    let Some(rest) = stored.strip_prefix('{') else {
        return Some(stored);
    };
    let (scheme, hash) = rest.split_once('}')?;
    let scheme = scheme.to_ascii_uppercase();
    match scheme.as_str() {
        "SHA512-CRYPT" if hash.starts_with("$6$") => Some(hash),
        "SHA256-CRYPT" if hash.starts_with("$5$") => Some(hash),
        "CRYPT" => Some(hash),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `doveadm pw -s SHA512-CRYPT -p 'correct horse'` (Dovecot 2.3.19).
    const DOVEADM_DEFAULT: &str = "{SHA512-CRYPT}$6$uGr/TMBAVNnsxfR6$GBw70MN/awrfRbmXLNIKnvITDLT0YTTymu8ETy8gLQNJradmc4MDPTIiVpDLusOkw4d3UxP3RSZEjWj9MMi1T0";
    /// `doveadm pw -s SHA512-CRYPT -r 6000 -p 'correct horse'`.
    const DOVEADM_6000: &str = "{SHA512-CRYPT}$6$rounds=6000$nO6AT7W4vfgv4rSV$jA3XXR4zgxLfO6D.0PEguiCBTZWGxg7jI.C60.bV2shUeJYaQmwF7.5P77QZuODkQgGUqylML9eTFtJsqX8NH1";

    #[test]
    fn format_matches_doveadm() {
        let h = hash_password(&Password::new("correct horse")).unwrap();
        let rest = h.strip_prefix("{SHA512-CRYPT}$6$").unwrap();
        let (salt, digest) = rest.split_once('$').unwrap();
        assert_eq!(salt.len(), 16);
        assert_eq!(digest.len(), 86);
        let alphabet = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
        assert!(salt.chars().all(alphabet) && digest.chars().all(alphabet));
        assert!(verify_password(&Password::new("correct horse"), &h));
        assert!(!verify_password(&Password::new("correct horsE"), &h));
    }

    #[test]
    fn salts_differ() {
        let p = Password::new("same password");
        assert_ne!(hash_password(&p).unwrap(), hash_password(&p).unwrap());
    }

    #[test]
    fn glibc_vectors() {
        // From the SHA-crypt specification; checked against glibc crypt(3).
        let v = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
        assert!(verify_password(&Password::new("Hello world!"), v));
        let r = "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.";
        assert!(verify_password(&Password::new("Hello world!"), r));
        assert!(verify_password(
            &Password::new("Hello world!"),
            &format!("{{SHA512-CRYPT}}{r}")
        ));
        assert!(!verify_password(&Password::new("Hello world?"), r));
        let s256 = "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5";
        assert!(verify_password(&Password::new("Hello world!"), s256));
    }

    #[test]
    fn prefixes() {
        let pw = Password::new("correct horse");
        assert!(verify_password(&pw, DOVEADM_DEFAULT));
        assert!(verify_password(&pw, DOVEADM_6000));
        assert!(!verify_password(
            &Password::new("correct horsf"),
            DOVEADM_6000
        ));
        let bare = DOVEADM_DEFAULT.strip_prefix("{SHA512-CRYPT}").unwrap();
        assert!(verify_password(&pw, bare));
        assert!(verify_password(&pw, &format!("{{CRYPT}}{bare}")));
        assert!(verify_password(&pw, &format!("{bare}\n")));
        assert!(!verify_password(&pw, &format!("{{PLAIN}}{bare}")));
        assert!(!verify_password(&pw, &format!("{{SHA256-CRYPT}}{bare}")));
        assert!(!verify_password(&pw, "{PLAIN}correct horse"));
        assert!(!verify_password(&pw, ""));
        assert!(!verify_password(&pw, "$6$"));
        assert!(!verify_password(&pw, "$6$salt$short"));
        assert!(!verify_password(&pw, "$1$abc$def"));
        assert!(!verify_password(&pw, "{SHA512-CRYPT"));
    }

    #[test]
    fn validation_texts() {
        let err = |p: &str| {
            validate_password(&Password::new(p))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err(""), "No password provided.");
        assert_eq!(err("        "), "No password provided.");
        assert_eq!(
            err("1234567"),
            "Passwords must be at least eight characters."
        );
        assert!(validate_password(&Password::new("12345678")).is_ok());
        assert!(validate_password(&Password::new("ünïcödé!")).is_ok());
    }

    #[test]
    fn debug_is_redacted() {
        let p = Password::new("hunter22");
        assert!(!format!("{p:?}").contains("hunter22"));
    }
}
