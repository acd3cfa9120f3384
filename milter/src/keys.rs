//! Signing keys: MIAB's RSA key (PKCS#1 or PKCS#8 PEM, as opendkim-genkey writes it on either
//! OpenSSL), an optional Ed25519 key (PKCS#8 PEM), and per-domain RSA keys
//! (`<domain>.private` next to the main key). Loaded once; keys are shared, never copied, and
//! never printed.

use mail_auth::common::crypto::{Algorithm, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a usable {kind} private key ({why})")]
    Parse {
        path: PathBuf,
        kind: &'static str,
        why: String,
    },
}

/// An RSA key shared by every message signed with it.
#[derive(Clone)]
pub struct SharedRsa(Arc<RsaKey<Sha256>>);

/// An Ed25519 key, likewise.
#[derive(Clone)]
pub struct SharedEd25519(Arc<Ed25519Key>);

// Keys never show in a Debug print.
impl std::fmt::Debug for SharedRsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedRsa(<key>)")
    }
}

impl std::fmt::Debug for SharedEd25519 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedEd25519(<key>)")
    }
}

impl SigningKey for SharedRsa {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

impl SigningKey for SharedEd25519 {
    type Hasher = <Ed25519Key as SigningKey>::Hasher;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

/// The environment variable naming a directory the unit copied the keys into (as root, at
/// each start): MIAB's `dkim.sh` keeps `STORAGE_ROOT/mail/dkim` `opendkim:opendkim 0700`, so
/// the milter reads `<that directory>/<file name>` instead of the key path itself.
pub const KEY_DIR_ENV: &str = "MIAB_KEY_DIR";

/// Where `path` is really read from: the unit's copy of the file if there is one, else the
/// path itself.
pub fn source(path: &Path) -> PathBuf {
    let copy = std::env::var_os(KEY_DIR_ENV).and_then(|dir| {
        let c = Path::new(&dir).join(path.file_name()?);
        c.is_file().then_some(c)
    });
    copy.unwrap_or_else(|| path.to_owned())
}

fn read(path: &Path) -> Result<String, KeyError> {
    let path = &source(path);
    std::fs::read_to_string(path).map_err(|error| KeyError::Read {
        path: path.to_owned(),
        error,
    })
}

/// A PEM error in words; the crate's "no items found" means no block with a label we take.
fn pem_why(e: pem::Error, labels: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("no {labels} PEM block"),
        e => e.to_string(),
    }
}

/// Loads an RSA private key in PKCS#1 (`BEGIN RSA PRIVATE KEY`) or PKCS#8 (`BEGIN PRIVATE
/// KEY`) PEM.
pub fn load_rsa(path: &Path) -> Result<SharedRsa, KeyError> {
    let pem = read(path)?;
    let bad = |why: String| KeyError::Parse {
        path: path.to_owned(),
        kind: "RSA",
        why,
    };
    // The first `RSA PRIVATE KEY` (PKCS#1) or `PRIVATE KEY` (PKCS#8) block; an EC key there
    // is refused by the RSA parser below.
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| bad(pem_why(e, "RSA PRIVATE KEY or PRIVATE KEY")))?;
    let key = RsaKey::<Sha256>::from_key_der(der);
    key.map(|k| SharedRsa(Arc::new(k)))
        .map_err(|e| bad(e.to_string()))
}

/// Loads an Ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
pub fn load_ed25519(path: &Path) -> Result<SharedEd25519, KeyError> {
    let pem = read(path)?;
    let bad = |why: String| KeyError::Parse {
        path: path.to_owned(),
        kind: "Ed25519",
        why,
    };
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| bad(pem_why(e, "PRIVATE KEY")))?;
    Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
        .map(|k| SharedEd25519(Arc::new(k)))
        .map_err(|e| bad(e.to_string()))
}

/// The keys a domain is signed with.
#[derive(Clone, Debug)]
pub struct DomainKeys {
    pub rsa: SharedRsa,
    pub ed25519: Option<SharedEd25519>,
}

/// The main keys and the per-domain RSA keys found so far.
pub struct Keyring {
    main: DomainKeys,
    dir: PathBuf,
    per_domain: Mutex<HashMap<String, Option<SharedRsa>>>,
}

// Keys never show in a Debug print.
impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("dir", &self.dir)
            .field("ed25519", &self.main.ed25519.is_some())
            .finish_non_exhaustive()
    }
}

/// At most this many per-domain lookups are remembered.
const MAX_DOMAINS: usize = 10_000;

impl Keyring {
    /// Loads the main RSA key and, if configured, the Ed25519 key.
    pub fn load(rsa: &Path, ed25519: Option<&Path>) -> Result<Keyring, KeyError> {
        Ok(Keyring {
            main: DomainKeys {
                rsa: load_rsa(rsa)?,
                ed25519: ed25519.map(load_ed25519).transpose()?,
            },
            dir: rsa.parent().map(Path::to_owned).unwrap_or_default(),
            per_domain: Mutex::new(HashMap::new()),
        })
    }

    /// The keys for `domain`: its own RSA key if `<domain>.private` exists (looked up once),
    /// else the main one. A domain key that does not load is logged and the main key used.
    pub fn for_domain(&self, domain: &str) -> DomainKeys {
        let safe = !domain.is_empty()
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !domain.starts_with('.');
        if !safe {
            return self.main.clone();
        }
        let mut cache = match self.per_domain.lock() {
            Ok(c) => c,
            Err(_) => return self.main.clone(),
        };
        if cache.len() >= MAX_DOMAINS {
            cache.clear();
        }
        let own = cache
            .entry(domain.to_owned())
            .or_insert_with(|| {
                let path = self.dir.join(format!("{domain}.private"));
                if !source(&path).is_file() {
                    return None;
                }
                match load_rsa(&path) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        tracing::warn!(error = %e, domain, "domain key unusable; signing with the main key");
                        None
                    }
                }
            })
            .clone();
        DomainKeys {
            rsa: own.unwrap_or_else(|| self.main.rsa.clone()),
            ed25519: self.main.ed25519.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use miab_e2e::{Scratch, require_program};

    /// Writes a key with `openssl` (as MIAB's opendkim-genkey would) and returns its path.
    fn openssl_key(dir: &Scratch, name: &str, args: &[&str]) -> PathBuf {
        let path = dir.join(name);
        let out = std::process::Command::new(require_program("/usr/bin/openssl", "openssl"))
            .args(args)
            .arg("-out")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    fn why(e: KeyError) -> (&'static str, String) {
        match e {
            KeyError::Parse { kind, why, .. } => (kind, why),
            e => panic!("not a parse error: {e}"),
        }
    }

    #[test]
    fn pkcs1_pkcs8_and_ed25519_keys_load_and_others_are_refused() {
        let dir = Scratch::new("keys");
        let pkcs8 = openssl_key(
            &dir,
            "pkcs8.private",
            &[
                "genpkey",
                "-algorithm",
                "rsa",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
        );
        let pkcs8_path = pkcs8.to_str().unwrap();
        let pkcs1 = openssl_key(
            &dir,
            "pkcs1.private",
            &["rsa", "-traditional", "-in", pkcs8_path],
        );
        let ed = openssl_key(&dir, "ed.private", &["genpkey", "-algorithm", "ed25519"]);
        assert!(
            std::fs::read_to_string(&pkcs1)
                .unwrap()
                .starts_with("-----BEGIN RSA PRIVATE KEY-----")
        );
        load_rsa(&pkcs1).unwrap();
        load_rsa(&pkcs8).unwrap();
        load_ed25519(&ed).unwrap();
        Keyring::load(&pkcs1, Some(&ed)).unwrap();

        assert_eq!(
            why(load_ed25519(&pkcs1).unwrap_err()),
            ("Ed25519", "no PRIVATE KEY PEM block".into())
        );
        assert_eq!(why(load_rsa(&ed).unwrap_err()).0, "RSA");
        assert_eq!(why(load_ed25519(&pkcs8).unwrap_err()).0, "Ed25519");
        let junk = dir.join("junk.private");
        std::fs::write(&junk, "not a key\n").unwrap();
        let e = load_rsa(&junk).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}: not a usable RSA private key", junk.display())),
            "{e}"
        );
        assert_eq!(why(e).1, "no RSA PRIVATE KEY or PRIVATE KEY PEM block");
        std::fs::write(
            &junk,
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert_eq!(why(load_rsa(&junk).unwrap_err()).0, "RSA");
        assert!(matches!(
            load_rsa(&dir.join("missing")),
            Err(KeyError::Read { .. })
        ));
    }
}
