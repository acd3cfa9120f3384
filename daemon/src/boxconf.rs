//! What the box is called: one rule for every binary, so the authserv-id in the milter's
//! headers, policyd's `X-Greylist` and miabctl's `administrator@` auto-aliases name the same
//! host. The rule: an explicit setting (`hostname` in the config, `--hostname` for miabctl),
//! else MIAB's `PRIMARY_HOSTNAME` from `/etc/mailinabox.conf`, else the system's host name;
//! lowercase.

use std::path::Path;

/// Where MIAB's setup writes the box's settings.
pub const MIAB_CONF: &str = "/etc/mailinabox.conf";

/// The value of `KEY=value` in a shell-style settings file such as MIAB's (quotes dropped).
pub fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim().trim_matches(['"', '\'']).to_owned())
    })
}

/// The box's host name by the rule above, reading `conf` for MIAB's setting; `None` when no
/// source names one.
pub fn primary_hostname_from(explicit: Option<&str>, conf: &Path) -> Option<String> {
    let from_conf = || {
        std::fs::read_to_string(conf)
            .ok()
            .and_then(|t| conf_value(&t, "PRIMARY_HOSTNAME"))
    };
    let from_system = || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_owned())
    };
    [explicit.map(str::to_owned), from_conf(), from_system()]
        .into_iter()
        .flatten()
        .map(|h| h.trim().to_lowercase())
        .find(|h| !h.is_empty())
}

/// [`primary_hostname_from`] with MIAB's own file.
pub fn primary_hostname(explicit: Option<&str>) -> Option<String> {
    primary_hostname_from(explicit, Path::new(MIAB_CONF))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_then_miab_conf_then_system() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mailinabox.conf");
        std::fs::write(
            &conf,
            "STORAGE_USER=user-data\nPRIMARY_HOSTNAME=Box.Example.com\nPUBLIC_IP=192.0.2.1\n",
        )
        .unwrap();
        assert_eq!(
            primary_hostname_from(Some("MX.example.org"), &conf).as_deref(),
            Some("mx.example.org")
        );
        assert_eq!(
            primary_hostname_from(None, &conf).as_deref(),
            Some("box.example.com")
        );
        assert_eq!(
            primary_hostname_from(Some(""), &conf).as_deref(),
            Some("box.example.com"),
            "an empty setting is no setting"
        );
        let system = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_lowercase();
        let missing = dir.path().join("none.conf");
        assert_eq!(primary_hostname_from(None, &missing), Some(system));
        assert_eq!(conf_value("A=\"x y\"\n", "A").as_deref(), Some("x y"));
        assert_eq!(conf_value("AB=1\n", "A"), None);
    }
}
