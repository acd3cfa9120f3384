//! `miabctl dkim generate` and `miabctl dns records`: the keys miab-milter signs with, and the
//! TXT records a mail domain needs (as MIAB publishes them).

use anyhow::{Context, Result, bail};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use daemon::Layout;
use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = b64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Why a key file gave no key: unreadable, no PEM block with one of `labels`, or bad PEM.
fn pem_error(path: &Path, e: pem::Error, labels: &str) -> anyhow::Error {
    match e {
        pem::Error::Io(e) => anyhow::Error::new(e).context(path.display().to_string()),
        pem::Error::NoItemsFound => anyhow::anyhow!("{}: no {labels} PEM block", path.display()),
        e => anyhow::anyhow!("{}: not a PEM file: {e}", path.display()),
    }
}

/// Writes `content` to a new file with mode 0600, owned by `owner` (and its primary group)
/// when given. An existing file is kept unless `force`.
fn write_secret(path: &Path, content: &str, owner: Option<&str>, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} exists; --force replaces it", path.display());
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| tmp.display().to_string())?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    if let Some(owner) = owner {
        let user = nix::unistd::User::from_name(owner)
            .ok()
            .flatten()
            .with_context(|| format!("no user {owner}"))?;
        std::os::unix::fs::chown(&tmp, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .with_context(|| format!("chown {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}

/// The record text opendkim-genkey writes to `<selector>.txt`.
fn record_file(selector: &str, record: &str) -> String {
    let (head, p) = record.split_once("p=").unwrap_or((record, ""));
    format!(
        "{selector}._domainkey\tIN\tTXT\t( \"{head}\"\n\t  \"p={p}\" )  ; ----- DKIM key {selector}\n"
    )
}

/// Creates the RSA-2048 key (and, with `ed25519`, an Ed25519 key) where the layout says
/// miab-milter reads them; returns the files written.
pub fn generate(
    layout: &Layout,
    ed25519: bool,
    owner: Option<&str>,
    force: bool,
) -> Result<Vec<PathBuf>> {
    // Each key: its PEM file, then opendkim-genkey's record file next to it (`mail.txt`),
    // made from the key file as written.
    let write_key =
        |path: PathBuf, selector: &str, der: &[u8], record: fn(&Path) -> Result<String>| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            }
            write_secret(&path, &pem("PRIVATE KEY", der), owner, force)?;
            std::fs::write(
                path.with_extension("txt"),
                record_file(selector, &record(&path)?),
            )?;
            Ok::<_, anyhow::Error>(path)
        };
    let mut written = Vec::new();
    let rsa = KeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
    let der: Pkcs8V1Der<'_> = rsa
        .as_der()
        .map_err(|_| anyhow::anyhow!("RSA key encoding failed"))?;
    written.push(write_key(
        layout.dkim_key().to_owned(),
        "mail",
        der.as_ref(),
        rsa_record,
    )?);
    if ed25519 {
        let ed = Ed25519KeyPair::generate()
            .map_err(|_| anyhow::anyhow!("Ed25519 key generation failed"))?;
        let der: Pkcs8V1Der<'_> = ed
            .as_der()
            .map_err(|_| anyhow::anyhow!("Ed25519 key encoding failed"))?;
        written.push(write_key(
            layout.dkim_ed25519_key_to_make(),
            "ed",
            der.as_ref(),
            ed25519_record,
        )?);
    }
    Ok(written)
}

/// `v=DKIM1; k=rsa; p=<SubjectPublicKeyInfo>` for an RSA key file (PKCS#1 or PKCS#8 PEM).
pub fn rsa_record(path: &Path) -> Result<String> {
    let der = PrivateKeyDer::from_pem_file(path)
        .map_err(|e| pem_error(path, e, "RSA PRIVATE KEY or PRIVATE KEY"))?;
    let key = match der {
        PrivateKeyDer::Pkcs1(der) => KeyPair::from_der(der.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(der) => KeyPair::from_pkcs8(der.secret_pkcs8_der()),
        _ => bail!("{}: not an RSA key", path.display()),
    }
    .map_err(|e| anyhow::anyhow!("{}: not an RSA key: {e}", path.display()))?;
    let spki: PublicKeyX509Der<'_> = key
        .public_key()
        .as_der()
        .map_err(|_| anyhow::anyhow!("public key encoding failed"))?;
    Ok(format!("v=DKIM1; k=rsa; p={}", b64(spki.as_ref())))
}

/// `v=DKIM1; k=ed25519; p=<32 raw bytes>` (RFC 8463) for an Ed25519 PKCS#8 PEM file.
pub fn ed25519_record(path: &Path) -> Result<String> {
    let der =
        PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| pem_error(path, e, "PRIVATE KEY"))?;
    let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
        .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 key: {e}", path.display()))?;
    Ok(format!(
        "v=DKIM1; k=ed25519; p={}",
        b64(key.public_key().as_ref())
    ))
}

/// The TXT records `domain` needs, as (name, value): SPF and DMARC as MIAB publishes them,
/// and the DKIM keys miab-milter signs `domain` with.
pub fn records(domain: &str, layout: &Layout) -> Result<Vec<(String, String)>> {
    let mut out = vec![(format!("{domain}."), "v=spf1 mx -all".to_owned())];
    let own = layout.dkim_dir().join(format!("{domain}.private"));
    let rsa = if own.is_file() {
        own
    } else {
        layout.dkim_key().to_owned()
    };
    if rsa.is_file() {
        out.push((format!("mail._domainkey.{domain}."), rsa_record(&rsa)?));
    }
    let ed = layout.dkim_ed25519_key_to_make();
    if ed.is_file() {
        out.push((format!("ed._domainkey.{domain}."), ed25519_record(&ed)?));
    }
    out.push((
        format!("_dmarc.{domain}."),
        "v=DMARC1; p=quarantine;".to_owned(),
    ));
    Ok(out)
}

/// A TXT value in zone-file quoting, split into 255-byte strings.
pub fn quoted(value: &str) -> String {
    value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}
