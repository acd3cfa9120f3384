//! `miabctl sidecars enable | status | disable | repair`: switching a live Mail-in-a-Box box to
//! the sidecars in one step, keeping it switched through MIAB's own maintenance, and back.
//!
//! - [`wiring`]: what changes in `main.cf` and Dovecot's `10-auth.conf`, as pure functions.
//! - [`status`]: every integration point checked, in plain words, with the command that fixes it.
//! - [`backup`]: the hold around MIAB's nightly backup, so the sidecars' own files copy whole.
//! - here: the steps on the box (files, units, reloads) and the record of what was there before,
//!   under [`STATE_DIR`], from which `disable` puts every file back byte for byte.
//!
//! The replaced daemons are neutralised with systemd drop-ins, not masked or removed, so MIAB's
//! `service postgrey|opendkim|opendmarc start|stop|restart` calls keep succeeding.

pub mod backup;
pub mod status;
pub mod wiring;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The storage root the packaged units' sandbox paths name.
const UNITS_STORAGE_ROOT: &str = "/home/user-data";

/// Where `enable` keeps its record and the original files.
pub const STATE_DIR: &str = "/var/lib/miab-sidecars";

/// Our daemons' units, in start order.
pub const DAEMONS: [&str; 4] = ["miab-lookup", "miab-authd", "miab-policyd", "miab-milter"];
/// The units that put the wiring back after a rewrite.
pub const REPAIR_UNITS: [&str; 2] = ["miab-sidecars-repair.path", "miab-sidecars-repair.timer"];
/// The daemons we replace, with the drop-in that neutralises each.
pub const REPLACED: [(&str, &str); 3] = [
    (
        "postgrey",
        include_str!("../../../packaging/neutralise/postgrey.conf"),
    ),
    (
        "opendkim",
        include_str!("../../../packaging/neutralise/opendkim.conf"),
    ),
    (
        "opendmarc",
        include_str!("../../../packaging/neutralise/opendmarc.conf"),
    ),
];
/// Our Dovecot passdb and userdb.
pub const DOVECOT_CONF: &str = include_str!("../../../packaging/dovecot-checkpassword.conf");

/// Files `enable` may change or create; `disable` restores or removes each.
pub const MAIN_CF: &str = "/etc/postfix/main.cf";
pub const MASTER_CF: &str = "/etc/postfix/master.cf";
pub const AUTH_CONF: &str = "/etc/dovecot/conf.d/10-auth.conf";
pub const OUR_DOVECOT_CONF: &str = "/etc/dovecot/conf.d/00-miab-sidecars.conf";

/// The drop-in that neutralises `unit`.
pub fn drop_in(unit: &str) -> String {
    format!("/etc/systemd/system/{unit}.service.d/zz-miab-sidecars.conf")
}

/// Every file under our management.
fn managed_files() -> Vec<String> {
    let mut v = vec![
        MAIN_CF.to_owned(),
        MASTER_CF.to_owned(),
        AUTH_CONF.to_owned(),
        OUR_DOVECOT_CONF.to_owned(),
    ];
    v.extend(REPLACED.iter().map(|(u, _)| drop_in(u)));
    v
}

/// The box as `enable` sees it: a root directory (`/`, or a scratch tree in tests, where no
/// command is run) and the storage root.
#[derive(Debug, Clone)]
pub struct Sys {
    pub root: PathBuf,
    pub storage_root: PathBuf,
}

impl Sys {
    /// The live box.
    pub fn live(storage_root: &Path) -> Sys {
        Sys {
            root: PathBuf::from("/"),
            storage_root: storage_root.to_owned(),
        }
    }

    fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// An absolute path of the box.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn state(&self, rel: &str) -> PathBuf {
        self.path(STATE_DIR).join(rel)
    }

    fn backup_of(&self, abs: &str) -> PathBuf {
        self.state("backup").join(abs.trim_start_matches('/'))
    }

    /// Is the box switched (has `enable` run and `disable` not)?
    pub fn enabled(&self) -> bool {
        self.state("enabled").exists()
    }

    /// Runs a command on the live box; in a scratch tree, does nothing.
    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        if !self.is_live() {
            return Ok(String::new());
        }
        let out = Command::new(program)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn systemctl(&self, args: &[&str]) -> Result<String> {
        self.run("systemctl", args)
    }

    /// `postfix reload` if Postfix runs; a stopped one reads `main.cf` when it starts.
    fn postfix_reload(&self) -> Result<()> {
        if self.run("postfix", &["status"]).is_ok() {
            self.run("postfix", &["reload"])?;
        }
        Ok(())
    }

    /// `postconf -h NAME`, or "" where it cannot be asked.
    pub fn postconf(&self, name: &str) -> String {
        if !self.is_live() {
            return main_cf_value(&self.path(MAIN_CF), name);
        }
        self.run("postconf", &["-h", name])
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default()
    }

    fn postconf_set(&self, changes: &[(&str, String)]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        if !self.is_live() {
            let path = self.path(MAIN_CF);
            let mut text = std::fs::read_to_string(&path).unwrap_or_default();
            for (k, v) in changes {
                text.push_str(&format!("{k} = {v}\n"));
            }
            return std::fs::write(&path, text).with_context(|| path.display().to_string());
        }
        let args: Vec<String> = std::iter::once("-e".to_owned())
            .chain(changes.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run("postconf", &args).map(drop)
    }
}

/// A value from a `main.cf` read by hand (scratch trees only): the last `name = value` line.
fn main_cf_value(path: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_owned())
        .next_back()
        .unwrap_or_default()
}

/// Writes `text` to `path` through a temporary file and a rename, keeping an existing file's
/// mode.
fn write_file(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let tmp = path.with_extension("miab-sidecars.tmp");
    std::fs::write(&tmp, text).with_context(|| tmp.display().to_string())?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())
}

/// What `enable` found before it changed anything.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Before {
    /// Managed files that existed (and were copied to the backup).
    existed: Vec<String>,
    /// Replaced daemons that were running.
    running: Vec<String>,
    /// Our units that were enabled.
    enabled: Vec<String>,
}

/// Copies every managed file to the backup once, and records what ran.
fn record_before(sys: &Sys) -> Result<()> {
    let record = sys.state("before.json");
    if record.exists() {
        return Ok(());
    }
    let mut before = Before::default();
    for f in managed_files() {
        let src = sys.path(&f);
        if src.exists() {
            let dst = sys.backup_of(&f);
            std::fs::create_dir_all(dst.parent().context("a backup path has a parent")?)?;
            std::fs::copy(&src, &dst).with_context(|| format!("backing up {f}"))?;
            before.existed.push(f);
        }
    }
    for (unit, _) in REPLACED {
        if sys.systemctl(&["is-active", "--quiet", unit]).is_ok() && sys.is_live() {
            before.running.push(unit.to_owned());
        }
    }
    for unit in DAEMONS.iter().chain(&REPAIR_UNITS) {
        if sys.systemctl(&["is-enabled", "--quiet", unit]).is_ok() && sys.is_live() {
            before.enabled.push((*unit).to_owned());
        }
    }
    std::fs::create_dir_all(sys.path(STATE_DIR))?;
    std::fs::write(&record, serde_json::to_vec_pretty(&before)?)?;
    Ok(())
}

/// Creates the daemons' own state directories under the storage root.
fn state_dirs(sys: &Sys) -> Result<()> {
    for (dir, owner, mode) in [
        ("policyd", "miab-policyd", 0o700),
        ("authd", "miab-authd", 0o750),
    ] {
        let path = sys.storage_root.join("mail").join(dir);
        std::fs::create_dir_all(&path).with_context(|| path.display().to_string())?;
        std::fs::set_permissions(
            &path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(mode),
        )?;
        if sys.is_live() {
            let user = nix::unistd::User::from_name(owner)
                .ok()
                .flatten()
                .with_context(|| {
                    format!("no user {owner}: is the miab-sidecars package installed?")
                })?;
            crate::owner::chown_tree(&path, user.uid.as_raw(), user.gid.as_raw())?;
        }
    }
    Ok(())
}

/// The replaced daemons stopped and neutralised; returns what was changed, in words.
fn neutralise(sys: &Sys) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for (unit, text) in REPLACED {
        let path = sys.path(&drop_in(unit));
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            // Stopped while it is still the real daemon, so its process goes with it and
            // its port is free for ours.
            let _ = sys.systemctl(&["stop", unit]);
            write_file(&path, text)?;
            done.push(format!("neutralised {unit}.service"));
        }
    }
    if !done.is_empty() {
        sys.systemctl(&["daemon-reload"])?;
        for (unit, _) in REPLACED {
            // MIAB expects them enabled and active; now that starts nothing.
            let _ = sys.systemctl(&["start", unit]);
        }
    }
    Ok(done)
}

/// Dovecot's and Postfix's wiring; returns what was changed, in words. Never touches the
/// backup.
fn wire(sys: &Sys) -> Result<Vec<String>> {
    let mut done = Vec::new();
    // Dovecot first: our passdb in front before the SQL one goes, so no login fails between.
    let ours = sys.path(OUR_DOVECOT_CONF);
    if std::fs::read_to_string(&ours).ok().as_deref() != Some(DOVECOT_CONF) {
        write_file(&ours, DOVECOT_CONF)?;
        done.push(format!("wrote {OUR_DOVECOT_CONF}"));
    }
    let auth = sys.path(AUTH_CONF);
    if let Ok(text) = std::fs::read_to_string(&auth)
        && let Some(new) = wiring::auth_conf_without_sql(&text)
    {
        write_file(&auth, &new)?;
        done.push(format!(
            "{AUTH_CONF}: commented out !include auth-sql.conf.ext"
        ));
    }
    if !done.is_empty() {
        // Only if it runs: a stopped Dovecot (MIAB's backup) reads the files when it starts.
        sys.systemctl(&["try-reload-or-restart", "dovecot"])?;
    }
    let changes = wiring::main_cf_changes(|n| sys.postconf(n));
    for (k, v) in &changes {
        done.push(format!("main.cf: {k} = {v}"));
    }
    sys.postconf_set(&changes)?;
    if !changes.is_empty() {
        sys.postfix_reload()?;
    }
    Ok(done)
}

/// `enable`: the whole switch. Safe to run again.
pub fn enable(sys: &Sys) -> Result<()> {
    if sys.is_live() {
        preflight(sys)?;
    }
    record_before(sys)?;
    state_dirs(sys)?;
    // While OpenDKIM makes way for miab-milter, mail waits rather than leaving unsigned.
    let brake = [("milter_default_action", "tempfail".to_owned())];
    if sys.postconf("milter_default_action") != "tempfail" {
        sys.postconf_set(&brake)?;
        sys.postfix_reload()?;
    }
    for line in neutralise(sys)? {
        println!("{line}");
    }
    if sys.is_live() {
        let mut args = vec!["enable", "--now"];
        args.extend(DAEMONS);
        sys.systemctl(&args)?;
        wait_ready(sys)?;
    }
    for line in wire(sys)? {
        println!("{line}");
    }
    if sys.is_live() {
        let mut args = vec!["enable", "--now"];
        args.extend(REPAIR_UNITS);
        sys.systemctl(&args)?;
    }
    std::fs::write(sys.state("enabled"), "")?;
    println!("switched to the sidecars; `miabctl sidecars status` checks every part");
    Ok(())
}

/// `repair`: on a switched box, puts back whatever was rewritten; silent when nothing was.
pub fn repair(sys: &Sys) -> Result<()> {
    if !sys.enabled() {
        return Ok(());
    }
    for line in neutralise(sys)? {
        println!("repaired: {line}");
    }
    if sys.is_live() {
        for unit in DAEMONS {
            if sys.systemctl(&["is-active", "--quiet", unit]).is_err() {
                println!("repaired: started {unit}");
                let _ = sys.systemctl(&["start", unit]);
            }
        }
    }
    for line in wire(sys)? {
        println!("repaired: {line}");
    }
    Ok(())
}

/// `disable`: every managed file back as it was, the replaced daemons running again.
pub fn disable(sys: &Sys) -> Result<()> {
    let record = sys.state("before.json");
    let before: Before = match std::fs::read(&record) {
        Ok(b) => serde_json::from_slice(&b).context("reading the record of enable")?,
        Err(_) => bail!(
            "the sidecars were never enabled on this box (no {})",
            record.display()
        ),
    };
    // First the repair units, so nothing puts the wiring back while it goes.
    let _ = std::fs::remove_file(sys.state("enabled"));
    if sys.is_live() {
        let mut args = vec!["disable", "--now"];
        args.extend(REPAIR_UNITS);
        sys.systemctl(&args)?;
    }
    for f in managed_files() {
        let path = sys.path(&f);
        if before.existed.contains(&f) {
            let saved = sys.backup_of(&f);
            let text = std::fs::read(&saved).with_context(|| format!("backup of {f}"))?;
            if std::fs::read(&path).ok().as_deref() != Some(&text[..]) {
                let tmp = path.with_extension("miab-sidecars.tmp");
                std::fs::copy(&saved, &tmp)?;
                std::fs::rename(&tmp, &path)?;
                println!("restored {f}");
            }
        } else if path.exists() {
            std::fs::remove_file(&path).with_context(|| f.clone())?;
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
            println!("removed {f}");
        }
    }
    if sys.is_live() {
        let mut args = vec!["stop"];
        args.extend(DAEMONS);
        sys.systemctl(&args)?;
        let off: Vec<&str> = DAEMONS
            .iter()
            .copied()
            .filter(|u| !before.enabled.iter().any(|e| e == u))
            .collect();
        if !off.is_empty() {
            let mut args = vec!["disable"];
            args.extend(&off);
            sys.systemctl(&args)?;
        }
        sys.systemctl(&["daemon-reload"])?;
        for (unit, _) in REPLACED {
            // The neutralised unit is still "active (exited)": restart runs the real one.
            if before.running.iter().any(|r| r == unit) {
                sys.systemctl(&["restart", unit])?;
            } else {
                let _ = sys.systemctl(&["stop", unit]);
            }
        }
        sys.systemctl(&["try-reload-or-restart", "dovecot"])?;
        sys.postfix_reload()?;
    }
    // The record goes, so a later enable records the box as it is then.
    let old = sys
        .path(STATE_DIR)
        .join(format!("disabled-{}", userdb::clock::unix_now()));
    let _ = std::fs::rename(sys.state("backup"), &old);
    std::fs::remove_file(&record)?;
    println!("back on Mail-in-a-Box's own daemons; the sidecars' state is kept for a later enable");
    Ok(())
}

fn preflight(sys: &Sys) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("run this as root");
    }
    // The packaged units name the default storage root in their sandbox paths.
    let miab = std::fs::read_to_string(userdb::boxconf::MIAB_CONF).unwrap_or_default();
    if let Some(root) = userdb::boxconf::conf_value(&miab, "STORAGE_ROOT") {
        let root = root.as_str();
        if Path::new(root) != sys.storage_root || Path::new(root) != Path::new(UNITS_STORAGE_ROOT) {
            bail!(
                "this box's STORAGE_ROOT is {root}; the packaged units and /etc/miab/sidecars.toml use {UNITS_STORAGE_ROOT}: \
                 set storage_root in /etc/miab/sidecars.toml and the paths in drop-ins for the miab-* units first, then run enable with --storage-root {root}"
            );
        }
    }
    for bin in [
        "miab-lookup",
        "miab-authd",
        "miab-policyd",
        "miab-milter",
        "miab-checkpassword",
    ] {
        let p = Path::new("/usr/bin").join(bin);
        if !p.exists() {
            bail!(
                "{} is missing: install the miab-sidecars package first",
                p.display()
            );
        }
    }
    for f in [MAIN_CF, AUTH_CONF] {
        if !Path::new(f).exists() {
            bail!("{f} is missing: this does not look like a Mail-in-a-Box box");
        }
    }
    Ok(())
}

/// Waits up to 30 s until each daemon answers where Postfix and Dovecot will ask, so the
/// switch defers no mail.
fn wait_ready(sys: &Sys) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let missing: Vec<String> = status::endpoints()
            .into_iter()
            .filter(|e| !e.answers(sys))
            .map(|e| e.to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "not answering after 30 s: {} (journalctl -u miab-lookup -u miab-authd -u miab-policyd -u miab-milter)",
                missing.join(", ")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> (tempfile::TempDir, Sys) {
        let dir = tempfile::tempdir().unwrap();
        let sys = Sys {
            root: dir.path().join("root"),
            storage_root: dir.path().join("user-data"),
        };
        let main_cf = "smtpd_sasl_path = private/auth\nvirtual_alias_maps = sqlite:/etc/postfix/virtual-alias-maps.cf\n";
        for (f, text) in [
            (MAIN_CF, main_cf),
            (MASTER_CF, "smtp inet n - y - - smtpd\n"),
            (AUTH_CONF, "!include auth-sql.conf.ext\n"),
        ] {
            write_file(&sys.path(f), text).unwrap();
        }
        (dir, sys)
    }

    fn snapshot(sys: &Sys) -> Vec<(String, Option<Vec<u8>>)> {
        managed_files()
            .into_iter()
            .map(|f| {
                let bytes = std::fs::read(sys.path(&f)).ok();
                (f, bytes)
            })
            .collect()
    }

    #[test]
    fn disable_puts_back_every_file_byte_for_byte() {
        let (_dir, sys) = scratch();
        let before = snapshot(&sys);
        enable(&sys).unwrap();
        assert!(sys.enabled());
        assert_eq!(sys.postconf("smtpd_sasl_path"), "miab-authd/auth");
        let auth = std::fs::read_to_string(sys.path(AUTH_CONF)).unwrap();
        assert_eq!(auth, "#!include auth-sql.conf.ext\n");
        for (unit, text) in REPLACED {
            assert_eq!(
                std::fs::read_to_string(sys.path(&drop_in(unit))).unwrap(),
                text
            );
        }
        // An upgrade puts MIAB's wiring back; repair undoes that, and the backup stays the
        // original.
        write_file(&sys.path(AUTH_CONF), "!include auth-sql.conf.ext\n").unwrap();
        repair(&sys).unwrap();
        assert_eq!(std::fs::read_to_string(sys.path(AUTH_CONF)).unwrap(), auth);
        enable(&sys).unwrap();
        disable(&sys).unwrap();
        assert!(!sys.enabled());
        assert_eq!(snapshot(&sys), before);
        // Not enabled: repair does nothing, disable refuses.
        repair(&sys).unwrap();
        assert_eq!(snapshot(&sys), before);
        assert!(disable(&sys).is_err());
    }
}
