//! `miabctl sidecars enable | status | disable | repair`: switching a live Mail-in-a-Box box to
//! the sidecars in one step, keeping it switched through MIAB's own maintenance, and back.
//!
//! - [`wiring`]: what changes in `main.cf` and Dovecot's `10-auth.conf`, as pure functions.
//! - [`status`]: every integration point checked, in plain words, with the command that fixes it.
//! - [`backup`]: the hold around MIAB's nightly backup, so the sidecars' own files copy whole.
//! - [`maincf`]: `main.cf` edited as text, one parameter at a time, keeping what it replaced.
//! - here: the steps on the box (files, units, reloads), one at a time under a lock, and the
//!   record of each edit under [`STATE_DIR`], from which `disable` undoes exactly our edits on
//!   the files as they are then (what an upgrade changed meanwhile stays).
//!
//! The replaced daemons are neutralised with systemd drop-ins, not masked or removed, so MIAB's
//! `service postgrey|opendkim|opendmarc start|stop|restart` calls keep succeeding.

pub mod backup;
pub mod figures;
pub mod maincf;
pub mod status;
pub mod wiring;

use anyhow::{Context, Result, bail};
use daemon::Layout;
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
/// Our Dovecot 2.3 passdb and userdb (checkpassword).
pub const DOVECOT_CONF_23: &str = include_str!("../../../packaging/dovecot-checkpassword.conf");
/// Our Dovecot 2.4 passdb and userdb (Lua; 2.4 has no checkpassword).
pub const DOVECOT_CONF_24: &str = include_str!("../../../packaging/dovecot-lua.conf");
/// The Lua script [`DOVECOT_CONF_24`] names, installed by the package.
pub const DOVECOT_LUA: &str = "/usr/share/miab-sidecars/dovecot-auth.lua";

/// Which Dovecot the box runs: the syntax and the passdb driver `enable` writes depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dovecot {
    /// 2.3 (Debian 12, Ubuntu 22.04): checkpassword through miab-checkpassword.
    V23,
    /// 2.4 (Debian 13, Ubuntu 26.04): Lua through dovecot-auth.lua.
    V24,
}

impl Dovecot {
    /// From `dovecot --version` ("2.4.1-4 (7d8c0e5759)"); `None` if it is not a version.
    pub fn from_version(text: &str) -> Option<Dovecot> {
        let mut parts = text.trim().split(['.', '-', ' ']);
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next()?.parse().ok()?;
        Some(if (major, minor) >= (2, 4) {
            Dovecot::V24
        } else {
            Dovecot::V23
        })
    }

    /// Our passdb and userdb file for this version.
    pub fn conf(self) -> &'static str {
        match self {
            Dovecot::V23 => DOVECOT_CONF_23,
            Dovecot::V24 => DOVECOT_CONF_24,
        }
    }

    /// The driver of our passdb, as `doveconf -n` shows it.
    pub fn driver(self) -> &'static str {
        match self {
            Dovecot::V23 => "checkpassword",
            Dovecot::V24 => "lua",
        }
    }
}

impl std::fmt::Display for Dovecot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dovecot::V23 => "2.3",
            Dovecot::V24 => "2.4",
        })
    }
}

/// Files `enable` changes or creates; `disable` undoes its edits or removes them.
pub const MAIN_CF: &str = "/etc/postfix/main.cf";
pub const MASTER_CF: &str = "/etc/postfix/master.cf";
pub const AUTH_CONF: &str = "/etc/dovecot/conf.d/10-auth.conf";
pub const OUR_DOVECOT_CONF: &str = "/etc/dovecot/conf.d/00-miab-sidecars.conf";
pub use wiring::ZPUSH_IMAP_CONF;

/// The Munin plugin the package installs, and where `enable` links it so MIAB's munin-node
/// (whose graphs MIAB's control panel shows) draws the sidecars' figures.
pub const MUNIN_PLUGIN: &str = "/usr/share/munin/plugins/miab_sidecars";
pub const MUNIN_LINK: &str = "/etc/munin/plugins/miab_sidecars";

/// The drop-in that neutralises `unit`.
pub fn drop_in(unit: &str) -> String {
    format!("/etc/systemd/system/{unit}.service.d/zz-miab-sidecars.conf")
}

/// Every file `enable` touches, saved once at the first `enable` for reference.
fn managed_files() -> Vec<String> {
    let mut v = vec![
        MAIN_CF.to_owned(),
        MASTER_CF.to_owned(),
        AUTH_CONF.to_owned(),
        OUR_DOVECOT_CONF.to_owned(),
        ZPUSH_IMAP_CONF.to_owned(),
    ];
    v.extend(REPLACED.iter().map(|(u, _)| drop_in(u)));
    v
}

/// The files that are ours alone: `disable` removes them.
fn own_files() -> Vec<String> {
    let mut v = vec![OUR_DOVECOT_CONF.to_owned(), MUNIN_LINK.to_owned()];
    v.extend(REPLACED.iter().map(|(u, _)| drop_in(u)));
    v
}

/// The box as `enable` sees it: a root directory (`/`, or a scratch tree in tests, where no
/// command is run) and the storage root.
#[derive(Debug, Clone)]
pub struct Sys {
    pub root: PathBuf,
    /// Where the box's files are, as the daemons see it.
    pub layout: Layout,
}

impl Sys {
    /// The live box.
    pub fn live(layout: Layout) -> Sys {
        Sys {
            root: PathBuf::from("/"),
            layout,
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

    /// The Dovecot the box runs: `dovecot --version` on the live box; in a scratch tree (or
    /// where that cannot be asked), 2.4 if `dovecot.conf` starts the 2.4 way
    /// (`dovecot_config_version`), else 2.3.
    pub fn dovecot(&self) -> Dovecot {
        if self.is_live()
            && let Some(v) = self
                .run("dovecot", &["--version"])
                .ok()
                .and_then(|out| Dovecot::from_version(&out))
        {
            return v;
        }
        let conf =
            std::fs::read_to_string(self.path("/etc/dovecot/dovecot.conf")).unwrap_or_default();
        if conf
            .lines()
            .any(|l| l.trim_start().starts_with("dovecot_config_version"))
        {
            Dovecot::V24
        } else {
            Dovecot::V23
        }
    }

    /// `dovecot --version`'s first word, or "unknown".
    pub fn dovecot_version(&self) -> String {
        self.run("dovecot", &["--version"])
            .ok()
            .and_then(|v| v.split_whitespace().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into())
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

    /// Postfix reloaded if it runs (a stopped one reads `main.cf` when it starts), through
    /// systemd, so the reload waits its turn behind a restart MIAB's setup has under way.
    /// `postfix status` and `postfix reload` run beside such a restart can make its
    /// `postfix start` find the pid file locked and give up, leaving Postfix down.
    fn postfix_reload(&self) -> Result<()> {
        self.systemctl(&["try-reload-or-restart", "postfix"])
            .map(drop)
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
}

/// A value from a `main.cf` read by hand (scratch trees only).
fn main_cf_value(path: &Path, name: &str) -> String {
    maincf::value(&std::fs::read_to_string(path).unwrap_or_default(), name)
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
    for (path, owner, mode) in [
        (sys.layout.policyd_dir(), "miab-policyd", 0o700),
        (sys.layout.authd_dir(), "miab-authd", 0o750),
    ] {
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

/// What `enable` and `repair` replaced in `main.cf`, per parameter: the text that was there
/// (`None`: not set) and the value we set. Kept in `STATE_DIR/edits.json`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Edits {
    main_cf: std::collections::BTreeMap<String, Edit>,
    /// Every line we ever wrote: MIAB's `editconf.py` comments a value out before it writes
    /// its own, so an upgrade while switched leaves `#` and our line behind.
    #[serde(default)]
    written: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Edit {
    before: Option<String>,
    ours: String,
}

impl Edits {
    fn load(sys: &Sys) -> Result<Edits> {
        match std::fs::read(sys.state("edits.json")) {
            Ok(b) => serde_json::from_slice(&b).context("reading the record of our edits"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Edits::default()),
            Err(e) => Err(e).context("reading the record of our edits"),
        }
    }

    fn save(&self, sys: &Sys) -> Result<()> {
        std::fs::create_dir_all(sys.path(STATE_DIR))?;
        write_file(
            &sys.state("edits.json"),
            &serde_json::to_string_pretty(self)?,
        )
    }
}

/// The lock that keeps `enable`, `repair` and `disable` from running at once. Waits for the
/// holder up to two minutes.
fn lock(sys: &Sys) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    std::fs::create_dir_all(sys.path(STATE_DIR))?;
    let path = sys.state("lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| path.display().to_string())?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err((_, e)) => bail!(
                "another miabctl sidecars enable, repair or disable holds {} ({e})",
                path.display()
            ),
        }
    }
}

/// `main.cf` as a writer left it: read until two reads a quarter second apart agree and the
/// file looks whole (MIAB's `editconf.py` truncates and rewrites it in place, so a reader can
/// catch it half-written). Gives up after 30 s.
fn read_settled(path: &Path) -> Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut last = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let now = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        if now == last && maincf::looks_whole(&now) {
            return Ok(now);
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{} kept changing for 30 s (or is not whole); nothing written",
                path.display()
            );
        }
        last = now;
    }
}

/// Replaces `path` with `new` only if it still holds `old`; `false` if it changed meanwhile.
fn replace_if_unchanged(path: &Path, old: &str, new: &str) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let tmp = path.with_extension("miab-sidecars.tmp");
    std::fs::write(&tmp, new).with_context(|| tmp.display().to_string())?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    if std::fs::read_to_string(path).ok().as_deref() != Some(old) {
        let _ = std::fs::remove_file(&tmp);
        return Ok(false);
    }
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(true)
}

/// Applies `edit` to `main.cf` read settled, writing only if nobody wrote meanwhile (tried
/// again a few times). `edit` returns the new text, or `None` for no change.
fn edit_main_cf<T>(
    sys: &Sys,
    mut edit: impl FnMut(&str) -> Result<Option<(String, T)>>,
) -> Result<Option<T>> {
    let path = sys.path(MAIN_CF);
    for _ in 0..5 {
        let old = read_settled(&path)?;
        let Some((new, out)) = edit(&old)? else {
            return Ok(None);
        };
        if replace_if_unchanged(&path, &old, &new)? {
            return Ok(Some(out));
        }
    }
    bail!("{MAIN_CF} kept changing while it was being edited; nothing written")
}

/// Sets `changes` in `main.cf`, recording what each replaced (the latest value that was not
/// ours, so `disable` brings back what an upgrade wrote, not what the first `enable` saw).
fn set_main_cf(
    sys: &Sys,
    want: impl Fn(&dyn Fn(&str) -> String) -> Vec<(&'static str, String)>,
) -> Result<Vec<String>> {
    let mut edits = Edits::load(sys)?;
    // What the first enable saw, for a parameter not yet recorded (a box enabled by a version
    // that kept no record).
    let saved = std::fs::read_to_string(sys.backup_of(MAIN_CF)).ok();
    let done = edit_main_cf(sys, |old| {
        let changes = want(&|n: &str| maincf::value(old, n));
        if changes.is_empty() {
            return Ok(None);
        }
        let mut text = old.to_owned();
        let mut words = Vec::new();
        let mut record = Vec::new();
        for (k, v) in &changes {
            let current = format!("{k} = {}", maincf::value(&text, k));
            let (next, replaced) = maincf::set(&text, k, v);
            text = next;
            // Replacing a value of ours (a newer version's wiring) keeps what was there
            // before us; replacing anyone else's records it.
            let before = match (edits.main_cf.get(*k), &saved) {
                (Some(e), _)
                    if edits.written.contains(&current)
                        || current == format!("{k} = {}", e.ours) =>
                {
                    e.before.clone()
                }
                (Some(_), _) => replaced,
                (None, Some(saved)) => maincf::entry(saved, k),
                (None, None) => replaced,
            };
            record.push((
                k.to_string(),
                Edit {
                    before,
                    ours: v.clone(),
                },
            ));
            edits.written.insert(format!("{k} = {v}"));
            words.push(format!("main.cf: {k} = {v}"));
        }
        // Recorded before the file is written: a crash between leaves a record of an edit
        // not made, which disable skips (the value is not ours).
        for (k, e) in &record {
            edits.main_cf.insert(k.clone(), e.clone());
        }
        edits.save(sys)?;
        Ok(Some((text, words)))
    })?;
    let done = done.unwrap_or_default();
    if !done.is_empty() {
        sys.postfix_reload()?;
    }
    Ok(done)
}

/// Dovecot's, Postfix's and Z-Push's wiring; returns what was changed, in words. Each part is
/// tried even when another fails; the first failure is returned.
fn wire(sys: &Sys) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let mut first_err = None;
    for part in [wire_dovecot, wire_postfix, wire_zpush, wire_munin] {
        match part(sys) {
            Ok(lines) => done.extend(lines),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => {
            for line in done {
                println!("{line}");
            }
            Err(e)
        }
        None => Ok(done),
    }
}

/// Our passdb in front first, and only then the SQL one out, so no login fails between (and
/// none is left without a passdb when ours cannot be written).
fn wire_dovecot(sys: &Sys) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let ours = sys.path(OUR_DOVECOT_CONF);
    // The version is asked every time: a box upgraded from 2.3 to 2.4 while switched gets
    // the 2.4 file at the next repair (its 2.3 file would stop Dovecot 2.4 from starting).
    let dovecot = sys.dovecot();
    if std::fs::read_to_string(&ours).ok().as_deref() != Some(dovecot.conf()) {
        write_file(&ours, dovecot.conf())?;
        done.push(format!("wrote {OUR_DOVECOT_CONF} (Dovecot {dovecot})"));
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
        // One that failed to start (a 2.4 that found our 2.3 file after an upgrade) is
        // started again now that the file is right.
        let failed = sys.is_live()
            && sys
                .run("systemctl", &["is-failed", "--quiet", "dovecot"])
                .is_ok();
        if failed {
            sys.systemctl(&["restart", "dovecot"])?;
            done.push("started Dovecot again (it had failed to start)".into());
        } else {
            sys.systemctl(&["try-reload-or-restart", "dovecot"])?;
        }
    }
    Ok(done)
}

fn wire_postfix(sys: &Sys) -> Result<Vec<String>> {
    set_main_cf(sys, |current| wiring::main_cf_changes(current))
}

fn wire_zpush(sys: &Sys) -> Result<Vec<String>> {
    let zpush = sys.path(ZPUSH_IMAP_CONF);
    if let Ok(text) = std::fs::read_to_string(&zpush)
        && let Some(new) = wiring::zpush_via_smtp(&text)
    {
        write_file(&zpush, &new)?;
        return Ok(vec![format!(
            "{ZPUSH_IMAP_CONF}: Z-Push sends through SMTP AUTH on 127.0.0.1:465, not sendmail"
        )]);
    }
    Ok(Vec::new())
}

/// The Munin plugin linked where munin-node looks, on a box with munin-node and the plugin;
/// munin-node restarted (it reads its plugins at start) when the link is new.
fn wire_munin(sys: &Sys) -> Result<Vec<String>> {
    let link = sys.path(MUNIN_LINK);
    let plugins = link.parent().unwrap_or(Path::new("/"));
    if !plugins.is_dir() || !sys.path(MUNIN_PLUGIN).is_file() {
        return Ok(Vec::new());
    }
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(MUNIN_PLUGIN)) {
        return Ok(Vec::new());
    }
    if std::fs::symlink_metadata(&link).is_ok() {
        std::fs::remove_file(&link).with_context(|| MUNIN_LINK.to_owned())?;
    }
    std::os::unix::fs::symlink(MUNIN_PLUGIN, &link).with_context(|| MUNIN_LINK.to_owned())?;
    sys.systemctl(&["try-restart", "munin-node"])?;
    Ok(vec![format!(
        "linked {MUNIN_LINK}: munin-node graphs the sidecars"
    )])
}

/// `enable`: the whole switch. Safe to run again.
pub fn enable(sys: &Sys) -> Result<()> {
    if sys.is_live() {
        preflight(sys)?;
    }
    let _lock = lock(sys)?;
    record_before(sys)?;
    state_dirs(sys)?;
    // While OpenDKIM makes way for miab-milter, mail waits rather than leaving unsigned.
    set_main_cf(sys, |current| {
        wiring::main_cf_changes(current)
            .into_iter()
            .filter(|(k, _)| *k == "milter_default_action")
            .collect()
    })?;
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
/// Waits while `enable` or `disable` runs.
pub fn repair(sys: &Sys) -> Result<()> {
    if !sys.enabled() {
        return Ok(());
    }
    let _lock = lock(sys)?;
    // disable may have finished while we waited.
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

/// `disable`: our edits undone on the files as they are now, our own files removed, the
/// replaced daemons running again. The box stays switched (and whole) until every step has
/// succeeded; a failed step is named, with what to do.
pub fn disable(sys: &Sys) -> Result<()> {
    let record = sys.state("before.json");
    let before: Before = match std::fs::read(&record) {
        Ok(b) => serde_json::from_slice(&b).context("reading the record of enable")?,
        Err(_) => bail!(
            "the sidecars were never enabled on this box (no {})",
            record.display()
        ),
    };
    let _lock = lock(sys)?;
    let mut step = "";
    let result = (|| -> Result<()> {
        step = "undoing our edits of main.cf";
        undo_main_cf(sys)?;
        step = "undoing our edit of 10-auth.conf";
        let auth = sys.path(AUTH_CONF);
        if let Ok(text) = std::fs::read_to_string(&auth) {
            // Boxes enabled before our lines were marked: their saved copy tells.
            let legacy = std::fs::read_to_string(sys.backup_of(AUTH_CONF))
                .is_ok_and(|t| wiring::auth_conf_has_sql(&t));
            if let Some(new) = wiring::auth_conf_with_sql(&text, legacy) {
                write_file(&auth, &new)?;
                println!("{AUTH_CONF}: !include auth-sql.conf.ext active again");
            }
        }
        step = "undoing our edit of Z-Push's configuration";
        let zpush = sys.path(ZPUSH_IMAP_CONF);
        if let Ok(text) = std::fs::read_to_string(&zpush)
            && let Some(new) = wiring::zpush_via_sendmail(&text)
        {
            write_file(&zpush, &new)?;
            println!("{ZPUSH_IMAP_CONF}: Z-Push sends through sendmail again");
        }
        step = "removing our own files";
        for f in own_files() {
            let path = sys.path(&f);
            if std::fs::symlink_metadata(&path).is_ok() {
                std::fs::remove_file(&path).with_context(|| f.clone())?;
                if let Some(dir) = path.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
                println!("removed {f}");
            }
        }
        if sys.is_live() {
            step = "stopping the sidecars";
            let mut args = vec!["stop"];
            args.extend(DAEMONS);
            sys.systemctl(&args)?;
            step = "systemctl daemon-reload";
            sys.systemctl(&["daemon-reload"])?;
            for (unit, _) in REPLACED {
                // The neutralised unit is still "active (exited)": restart runs the real one.
                if before.running.iter().any(|r| r == unit) {
                    step = unit;
                    sys.systemctl(&["restart", unit])
                        .with_context(|| format!("{unit} does not start again"))?;
                } else {
                    let _ = sys.systemctl(&["stop", unit]);
                }
            }
            step = "reloading Dovecot";
            sys.systemctl(&["try-reload-or-restart", "dovecot"])?;
            // Without our plugin, which it would keep trying to run.
            let _ = sys.systemctl(&["try-restart", "munin-node"]);
            step = "reloading Postfix";
            sys.postfix_reload()?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("disable stopped while {step}: {e:#}");
        // Back to a whole switched box rather than half of each.
        let _ = neutralise(sys);
        if sys.is_live() {
            let mut args = vec!["start"];
            args.extend(DAEMONS);
            let _ = sys.systemctl(&args);
            let _ = sys.systemctl(&["daemon-reload"]);
        }
        let rewired = wire(sys);
        bail!(
            "the box is still switched to the sidecars{} (miabctl sidecars status); fix the cause above and run `miabctl sidecars disable` again",
            if rewired.is_ok() { "" } else { ", partly" }
        );
    }
    if sys.is_live() {
        let mut args = vec!["disable", "--now"];
        args.extend(REPAIR_UNITS);
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
    }
    // The record goes, so a later enable records the box as it is then.
    let stamp = state::clock::unix_now();
    let _ = std::fs::rename(
        sys.state("backup"),
        sys.path(STATE_DIR).join(format!("disabled-{stamp}")),
    );
    let _ = std::fs::rename(
        sys.state("edits.json"),
        sys.path(STATE_DIR)
            .join(format!("edits-disabled-{stamp}.json")),
    );
    std::fs::remove_file(&record)?;
    std::fs::remove_file(sys.state("enabled"))?;
    println!("back on Mail-in-a-Box's own daemons; the sidecars' state is kept for a later enable");
    Ok(())
}

/// Every parameter we set that still has our value gets back the text it replaced; one that
/// was changed since keeps the change. Boxes enabled before edits were recorded use the copy
/// of `main.cf` saved at the first `enable`.
fn undo_main_cf(sys: &Sys) -> Result<()> {
    let edits = Edits::load(sys)?;
    let saved = std::fs::read_to_string(sys.backup_of(MAIN_CF)).ok();
    let words = edit_main_cf(sys, |old| {
        let mut text = old.to_owned();
        let mut words = Vec::new();
        for (k, ours) in wiring::main_cf_wanted(|n| maincf::value(old, n)) {
            let (ours, before) = match edits.main_cf.get(k) {
                Some(e) => (e.ours.clone(), e.before.clone()),
                None => match &saved {
                    Some(saved) if maincf::value(saved, k) != ours => {
                        (ours, maincf::entry(saved, k))
                    }
                    _ => continue,
                },
            };
            if let Some(next) = maincf::restore(&text, k, &ours, before.as_deref()) {
                text = next;
                words.push(format!("main.cf: {k} as before"));
            }
        }
        let commented: usize = edits
            .written
            .iter()
            .map(|line| maincf::drop_comment(&mut text, line))
            .sum();
        if commented > 0 {
            words.push(format!(
                "main.cf: {commented} of our lines that an upgrade had commented out removed"
            ));
        }
        Ok((text != old).then_some((text, words)))
    })?;
    for w in words.unwrap_or_default() {
        println!("{w}");
    }
    sys.postfix_reload()
}

fn preflight(sys: &Sys) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("run this as root");
    }
    // The packaged units name the default storage root in their sandbox paths.
    let miab = std::fs::read_to_string(daemon::boxconf::MIAB_CONF).unwrap_or_default();
    if let Some(root) = daemon::boxconf::conf_value(&miab, "STORAGE_ROOT") {
        let root = root.as_str();
        if Path::new(root) != sys.layout.storage_root()
            || Path::new(root) != Path::new(UNITS_STORAGE_ROOT)
        {
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
    if sys.dovecot() == Dovecot::V24 {
        let missing: Vec<String> = sys
            .lua_parts()
            .into_iter()
            .filter(|(_, found)| !found)
            .map(|(what, _)| what)
            .collect();
        if !missing.is_empty() {
            bail!(
                "Dovecot 2.4 asks miab-authd through Lua, and {} missing: apt-get install dovecot-auth-lua lua-socket",
                missing.join(", ") + if missing.len() == 1 { " is" } else { " are" }
            );
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

    /// MIAB's `main.cf` as its setup leaves it (the parameters we touch and some we do not),
    /// padded with comments to the size of a real one.
    fn miab_main_cf() -> String {
        let mut t = String::from("# Postfix main.cf as written by Mail-in-a-Box's setup\n");
        for i in 0..120 {
            t.push_str(&format!(
                "# comment line {i} to make the file as large as a real one\n"
            ));
        }
        t.push_str("smtpd_banner = $myhostname ESMTP Hi, I'm a Mail-in-a-Box\n");
        t.push_str("smtpd_sasl_type = dovecot\nsmtpd_sasl_path = private/auth\n");
        t.push_str("virtual_mailbox_domains = sqlite:/etc/postfix/virtual-mailbox-domains.cf\n");
        t.push_str("virtual_mailbox_maps = sqlite:/etc/postfix/virtual-mailbox-maps.cf\n");
        t.push_str("virtual_alias_maps = sqlite:/etc/postfix/virtual-alias-maps.cf\n");
        t.push_str("smtpd_sender_login_maps = sqlite:/etc/postfix/sender-login-maps.cf\n");
        t.push_str("smtpd_milters = inet:127.0.0.1:8891 inet:127.0.0.1:8893\nnon_smtpd_milters = $smtpd_milters\nmilter_default_action = accept\n");
        t.push_str("smtpd_sender_restrictions = reject_non_fqdn_sender,reject_unknown_sender_domain,reject_authenticated_sender_login_mismatch,reject_rhsbl_sender dbl.spamhaus.org=127.0.1.[2..99]\n");
        t.push_str("smtpd_recipient_restrictions = permit_sasl_authenticated,permit_mynetworks,reject_rbl_client zen.spamhaus.org=127.0.0.[2..11],reject_unlisted_recipient,check_policy_service inet:127.0.0.1:10023,check_policy_service inet:127.0.0.1:12340\n");
        for i in 0..40 {
            t.push_str(&format!("miab_setting_{i} = value {i}\n"));
        }
        t
    }

    const ZPUSH: &str = "<?php\ndefine('IMAP_SMTP_METHOD', 'sendmail');\nglobal $imap_smtp_params;\n$imap_smtp_params = array('host' => 'ssl://127.0.0.1', 'port' => 465, 'auth' => true, 'username' => 'imap_username', 'password' => 'imap_password');\n?>\n";

    fn scratch() -> (tempfile::TempDir, Sys) {
        let dir = tempfile::tempdir().unwrap();
        let sys = Sys {
            root: dir.path().join("root"),
            layout: Layout::new(&dir.path().join("user-data"), Default::default()),
        };
        for (f, text) in [
            (MAIN_CF, miab_main_cf().as_str()),
            (MASTER_CF, "smtp inet n - y - - smtpd\n"),
            (
                AUTH_CONF,
                "!include auth-system.conf.ext\n!include auth-sql.conf.ext\n",
            ),
            (ZPUSH_IMAP_CONF, ZPUSH),
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

    fn read(sys: &Sys, f: &str) -> String {
        std::fs::read_to_string(sys.path(f)).unwrap()
    }

    #[test]
    fn disable_puts_back_every_file_byte_for_byte() {
        let (_dir, sys) = scratch();
        // MIAB's munin-node, with a plugin of its own, and ours from the package.
        write_file(&sys.path("/etc/munin/plugins/cpu"), "").unwrap();
        write_file(&sys.path(MUNIN_PLUGIN), "#!/usr/bin/python3\n").unwrap();
        let before = snapshot(&sys);
        enable(&sys).unwrap();
        assert!(sys.enabled());
        assert_eq!(
            std::fs::read_link(sys.path(MUNIN_LINK)).unwrap(),
            Path::new(MUNIN_PLUGIN)
        );
        assert_eq!(sys.postconf("smtpd_sasl_path"), "miab-authd/auth");
        let auth = read(&sys, AUTH_CONF);
        assert!(!wiring::auth_conf_has_sql(&auth), "{auth}");
        assert!(!wiring::zpush_uses_sendmail(&read(&sys, ZPUSH_IMAP_CONF)));
        for (unit, text) in REPLACED {
            assert_eq!(read(&sys, &drop_in(unit)), text);
        }
        // An upgrade puts MIAB's wiring back (mail-users.sh's sed uncomments our line, mark and
        // all); repair undoes that.
        let upgraded = auth.replace("#!include auth-sql", "!include auth-sql");
        write_file(&sys.path(AUTH_CONF), &upgraded).unwrap();
        write_file(&sys.path(ZPUSH_IMAP_CONF), ZPUSH).unwrap();
        repair(&sys).unwrap();
        assert_eq!(read(&sys, AUTH_CONF), auth);
        assert!(!wiring::zpush_uses_sendmail(&read(&sys, ZPUSH_IMAP_CONF)));
        enable(&sys).unwrap();
        disable(&sys).unwrap();
        assert!(!sys.enabled());
        assert_eq!(snapshot(&sys), before);
        assert!(std::fs::symlink_metadata(sys.path(MUNIN_LINK)).is_err());
        assert!(sys.path("/etc/munin/plugins/cpu").exists());
        // Not enabled: repair does nothing, disable refuses.
        repair(&sys).unwrap();
        assert_eq!(snapshot(&sys), before);
        assert!(disable(&sys).is_err());
    }

    /// What MIAB's `editconf.py` does: read the file, change one parameter, write it back in
    /// place (truncate, then write), here in pieces so a reader can catch it half-written.
    fn editconf(sys: &Sys, name: &str, value: &str, pause: std::time::Duration) {
        use std::io::Write;
        let path = sys.path(MAIN_CF);
        let old = std::fs::read_to_string(&path).unwrap();
        // As editconf.py: a different value is commented out, the new one goes below it.
        let line = format!("{name}={value}\n");
        let new = match maincf::entry(&old, name) {
            Some(e) if maincf::value(&old, name) == value => old.replacen(&e, &line, 1),
            Some(e) => old.replacen(&e, &format!("#{e}{line}"), 1),
            None => format!("{old}{line}"),
        };
        let mut f = std::fs::File::create(&path).unwrap();
        for piece in new.as_bytes().chunks(new.len() / 4 + 1) {
            f.write_all(piece).unwrap();
            f.flush().unwrap();
            std::thread::sleep(pause);
        }
    }

    #[test]
    fn an_upgrade_made_while_switched_stays_after_disable() {
        let (_dir, sys) = scratch();
        enable(&sys).unwrap();
        // MIAB's next version: its own wiring again, a new recipient list, a new parameter.
        let zero = std::time::Duration::ZERO;
        editconf(&sys, "smtpd_sasl_path", "private/auth", zero);
        let upgraded = "permit_sasl_authenticated,permit_mynetworks,reject_unlisted_recipient,check_policy_service inet:127.0.0.1:10023,check_policy_service inet:127.0.0.1:12340,reject_non_fqdn_recipient";
        editconf(&sys, "smtpd_recipient_restrictions", upgraded, zero);
        editconf(&sys, "smtpd_tls_ciphers", "high", zero);
        editconf(&sys, "miab_setting_3", "changed by the upgrade", zero);
        repair(&sys).unwrap();
        assert_eq!(sys.postconf("smtpd_sasl_path"), "miab-authd/auth");
        assert!(
            sys.postconf("smtpd_recipient_restrictions")
                .contains("reject_non_fqdn_recipient")
        );
        // The administrator changes one of our parameters after that: it stays theirs.
        editconf(&sys, "milter_default_action", "accept", zero);
        disable(&sys).unwrap();
        let text = read(&sys, MAIN_CF);
        // The lines editconf commented out were ours: gone too.
        assert!(!text.contains("miab-"), "{text}");
        assert_eq!(
            maincf::value(&text, "smtpd_recipient_restrictions"),
            upgraded
        );
        assert_eq!(maincf::value(&text, "smtpd_sasl_path"), "private/auth");
        assert_eq!(maincf::value(&text, "smtpd_tls_ciphers"), "high");
        assert_eq!(
            maincf::value(&text, "miab_setting_3"),
            "changed by the upgrade"
        );
        assert_eq!(maincf::value(&text, "milter_default_action"), "accept");
        assert_eq!(
            maincf::value(&text, "virtual_alias_maps"),
            "sqlite:/etc/postfix/virtual-alias-maps.cf"
        );
        assert!(wiring::zpush_uses_sendmail(&read(&sys, ZPUSH_IMAP_CONF)));
    }

    #[test]
    fn dovecot_versions_are_read() {
        assert_eq!(
            Dovecot::from_version("2.3.19.1 (9b53102964)"),
            Some(Dovecot::V23)
        );
        assert_eq!(
            Dovecot::from_version("2.4.1-4 (7d8c0e5759)\n"),
            Some(Dovecot::V24)
        );
        assert_eq!(Dovecot::from_version("2.4.5"), Some(Dovecot::V24));
        assert_eq!(Dovecot::from_version("3.0.0"), Some(Dovecot::V24));
        assert_eq!(Dovecot::from_version("doveconf: Fatal"), None);
        assert_eq!(Dovecot::from_version(""), None);
    }

    /// A 2.4 box gets the Lua file; a 2.3 box switched, then upgraded to 2.4 in place, gets
    /// the Lua file at the next repair (never a 2.3 file 2.4 cannot read), and disable
    /// leaves no file of ours either way.
    #[test]
    fn a_box_upgraded_from_dovecot_2_3_to_2_4_while_switched_gets_the_lua_passdb() {
        let (_dir, sys) = scratch();
        enable(&sys).unwrap();
        assert_eq!(sys.dovecot(), Dovecot::V23);
        assert_eq!(read(&sys, OUR_DOVECOT_CONF), DOVECOT_CONF_23);
        let before_upgrade = snapshot(&sys);
        // The upgrade: Dovecot 2.4's dovecot.conf, and MIAB's 2.4 setup uncomments its SQL
        // include again.
        write_file(
            &sys.path("/etc/dovecot/dovecot.conf"),
            "dovecot_config_version = 2.4.1\ndovecot_storage_version = 2.4.1\n!include conf.d/*.conf\n",
        )
        .unwrap();
        write_file(
            &sys.path(AUTH_CONF),
            "#!include auth-system.conf.ext\n!include auth-sql.conf.ext\n",
        )
        .unwrap();
        assert_eq!(sys.dovecot(), Dovecot::V24);
        let findings = status::check(&sys);
        assert!(
            findings
                .iter()
                .any(|f| !f.ok && f.what.contains("not Dovecot 2.4's")),
            "{findings:?}"
        );
        repair(&sys).unwrap();
        assert_eq!(read(&sys, OUR_DOVECOT_CONF), DOVECOT_CONF_24);
        assert!(!wiring::auth_conf_has_sql(&read(&sys, AUTH_CONF)));
        let findings = status::check(&sys);
        assert!(
            findings.iter().any(|f| f.ok
                && f.what
                    .starts_with("Dovecot 2.4 checks passwords through miab-authd only (lua")),
            "{findings:?}"
        );
        repair(&sys).unwrap();
        assert_eq!(read(&sys, OUR_DOVECOT_CONF), DOVECOT_CONF_24, "stable");
        disable(&sys).unwrap();
        assert!(!sys.path(OUR_DOVECOT_CONF).exists());
        assert!(wiring::auth_conf_has_sql(&read(&sys, AUTH_CONF)));
        assert_ne!(snapshot(&sys), before_upgrade, "the upgrade's files stay");
    }

    #[test]
    fn the_lua_file_names_the_script_the_package_installs() {
        assert!(DOVECOT_CONF_24.contains(&format!("lua_file = {DOVECOT_LUA}\n")));
        assert!(!DOVECOT_CONF_24.contains("checkpassword\n"));
        assert!(DOVECOT_CONF_23.contains("driver = checkpassword"));
    }

    /// A box switched by a version that kept no record of its edits, wired the old way (the
    /// policy service on 10023): repair rewires it, and disable still gives back MIAB's own
    /// values, never the old version's.
    #[test]
    fn an_older_enable_is_rewired_and_disabled_to_miabs_values() {
        let (_dir, sys) = scratch();
        let stock = read(&sys, MAIN_CF);
        enable(&sys).unwrap();
        std::fs::remove_file(sys.state("edits.json")).unwrap();
        let old_ours = "permit_sasl_authenticated,permit_mynetworks,reject_unlisted_recipient,check_policy_service { inet:127.0.0.1:10023, timeout=10s, default_action=DUNNO, policy_context=recipient },check_policy_service inet:127.0.0.1:12340";
        let text = read(&sys, MAIN_CF);
        let (text, _) = maincf::set(&text, "smtpd_recipient_restrictions", old_ours);
        write_file(&sys.path(MAIN_CF), &text).unwrap();
        repair(&sys).unwrap();
        let now = sys.postconf("smtpd_recipient_restrictions");
        assert!(now.contains("unix:miab-policyd/policy"), "{now}");
        // The same wiring as a version that kept records left it: the value it wrote is
        // recorded as its own, and replacing it keeps MIAB's value as the one to restore.
        let (text, _) = maincf::set(
            &read(&sys, MAIN_CF),
            "smtpd_recipient_restrictions",
            old_ours,
        );
        write_file(&sys.path(MAIN_CF), &text).unwrap();
        let mut edits = Edits::load(&sys).unwrap();
        edits
            .written
            .insert(format!("smtpd_recipient_restrictions = {old_ours}"));
        edits.save(&sys).unwrap();
        repair(&sys).unwrap();
        disable(&sys).unwrap();
        assert_eq!(read(&sys, MAIN_CF), stock);
    }

    #[test]
    fn a_failing_step_leaves_the_box_switched_and_says_which() {
        let (_dir, sys) = scratch();
        enable(&sys).unwrap();
        let enabled = snapshot(&sys);
        // One of our own files cannot be removed.
        let blocker = sys.path(OUR_DOVECOT_CONF);
        std::fs::remove_file(&blocker).unwrap();
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        let e = format!("{:#}", disable(&sys).unwrap_err());
        assert!(e.contains("still switched"), "{e}");
        assert!(sys.enabled());
        assert_eq!(sys.postconf("smtpd_sasl_path"), "miab-authd/auth");
        assert!(!wiring::zpush_uses_sendmail(&read(&sys, ZPUSH_IMAP_CONF)));
        // Our passdb cannot be written, so Dovecot's own stays on: no login is lost.
        assert!(wiring::auth_conf_has_sql(&read(&sys, AUTH_CONF)));
        std::fs::remove_dir_all(&blocker).unwrap();
        repair(&sys).unwrap();
        assert_eq!(snapshot(&sys), enabled);
        disable(&sys).unwrap();
        assert!(!sys.enabled());
        assert_eq!(
            maincf::value(&read(&sys, MAIN_CF), "smtpd_sasl_path"),
            "private/auth"
        );
    }

    #[test]
    fn repair_racing_editconf_never_writes_from_a_half_read() {
        let (_dir, sys) = scratch();
        enable(&sys).unwrap();
        let writer = {
            let sys = sys.clone();
            std::thread::spawn(move || {
                for burst in 0..8 {
                    for i in 0..15 {
                        // MIAB's setup sets our parameters back as it goes, among its own.
                        let (k, v) = match i % 3 {
                            0 => ("smtpd_sasl_path", "private/auth".to_owned()),
                            1 => (
                                "virtual_alias_maps",
                                "sqlite:/etc/postfix/virtual-alias-maps.cf".to_owned(),
                            ),
                            _ => ("miab_counter", format!("{burst}-{i}")),
                        };
                        editconf(&sys, k, &v, std::time::Duration::from_millis(2));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(400));
                }
            })
        };
        let mut rounds = 0;
        while !writer.is_finished() {
            // A round may give up while the file keeps changing; it never writes half of it.
            let _ = repair(&sys);
            rounds += 1;
        }
        writer.join().unwrap();
        repair(&sys).unwrap();
        let text = read(&sys, MAIN_CF);
        for i in 0..40 {
            assert_eq!(
                maincf::value(&text, &format!("miab_setting_{i}")),
                format!("value {i}"),
                "{text}"
            );
        }
        assert!(text.starts_with("# Postfix main.cf as written by"));
        assert!(text.contains("# comment line 119 "));
        assert_eq!(maincf::value(&text, "smtpd_sasl_path"), "miab-authd/auth");
        assert!(!maincf::value(&text, "miab_counter").is_empty());
        assert!(rounds > 3, "{rounds} repair rounds");
        disable(&sys).unwrap();
        let text = read(&sys, MAIN_CF);
        assert_eq!(maincf::value(&text, "smtpd_sasl_path"), "private/auth");
        assert_eq!(maincf::value(&text, "miab_setting_39"), "value 39");
    }
}
