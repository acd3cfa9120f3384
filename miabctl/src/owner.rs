//! Root at work in a directory a daemon can write (its state DBs): it acts there as the
//! directory's owner, so that a link the daemon's account planted (a `-wal` file pointing at
//! `/etc/shadow`, a directory pointing at `/etc`) leads nowhere the daemon could not go
//! itself; and it never descends or changes the owner of a link.

use anyhow::{Context, Result, bail};
use nix::unistd::{Gid, Uid, getegid, geteuid, getgroups, setegid, seteuid, setgroups};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// While alive, the process's effective uid, gid and groups are those of a directory's
/// owner; dropping it gives root back.
#[derive(Debug)]
pub struct AsOwner {
    restore: Option<(Uid, Gid, Vec<Gid>)>,
}

impl AsOwner {
    /// Takes on the owner of `dir` when running as root and `dir` belongs to someone else;
    /// refuses a `dir` that is not a real directory (a link).
    pub fn of(dir: &Path) -> Result<AsOwner> {
        let meta = std::fs::symlink_metadata(dir).with_context(|| dir.display().to_string())?;
        if !meta.file_type().is_dir() {
            bail!(
                "{}: not a directory (a link?); root does not act in it",
                dir.display()
            );
        }
        let (uid, gid) = (geteuid(), getegid());
        if !uid.is_root() || meta.uid() == 0 {
            return Ok(AsOwner { restore: None });
        }
        let groups = getgroups().context("getgroups")?;
        let owner_gid = Gid::from_raw(meta.gid());
        // Groups first: once the uid is not root, they can no longer be changed.
        setgroups(&[owner_gid]).context("setgroups")?;
        setegid(owner_gid).context("setegid")?;
        seteuid(Uid::from_raw(meta.uid())).context("seteuid")?;
        Ok(AsOwner {
            restore: Some((uid, gid, groups)),
        })
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        if let Some((uid, gid, groups)) = self.restore.take() {
            let restored = seteuid(uid)
                .and_then(|()| setegid(gid))
                .and_then(|()| setgroups(&groups));
            if let Err(e) = restored {
                // Going on with the wrong identity could do anything; stop instead.
                eprintln!("could not become root again: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Gives `path` and everything below it to `uid:gid`, never following a link: a link itself
/// gets the owner, and a linked directory is not entered.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    let meta = std::fs::symlink_metadata(path).with_context(|| path.display().to_string())?;
    if meta.file_type().is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// As root: a link to a directory outside is given the owner but not entered.
    #[test]
    fn chown_tree_does_not_follow_links() {
        if !geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), "root's").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("own.sqlite"), "").unwrap();
        symlink(&outside, state.join("planted")).unwrap();
        symlink(outside.join("victim"), state.join("planted-file")).unwrap();
        chown_tree(&state, 65534, 65534).unwrap();
        let owner = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        assert_eq!(owner(&state.join("own.sqlite")), 65534);
        assert_eq!(owner(&state.join("planted")), 65534);
        assert_eq!(owner(&outside), 0);
        assert_eq!(owner(&outside.join("victim")), 0);
    }
}
