use super::*;

/// A small section, as a daemon declares one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Demo {
    greeting: String,
    #[serde(deserialize_with = "empty_is_off")]
    second: Option<ListenAddr>,
    old: Option<u32>,
}

impl Default for Demo {
    fn default() -> Self {
        Demo {
            greeting: "hello".into(),
            second: Some("inet:127.0.0.1:2".parse().unwrap()),
            old: None,
        }
    }
}

impl Section for Demo {
    const NAME: &'static str = "lookup";

    fn server_defaults() -> Server {
        Server {
            metrics_listen: None,
            journal: JournalSettings::default(),
            listen: "inet:127.0.0.1:1".parse().unwrap(),
            unix: UnixOptions::default(),
            limits: Limits::default(),
        }
    }

    fn complete(&mut self, _: &Config, _: &Server) -> Result<(), String> {
        if self.greeting.contains('\n') {
            return Err("greeting: one line only".into());
        }
        Ok(())
    }

    fn ignored(&self, server_keys: &[&'static str]) -> Vec<&'static str> {
        let mut v: Vec<_> = server_keys
            .iter()
            .copied()
            .filter(|k| *k == "io_timeout_secs")
            .collect();
        v.extend(self.old.map(|_| "old"));
        v
    }
}

fn load(text: &str) -> Result<Loaded<Demo>, ConfigError> {
    Config::from_toml(text, Path::new("/etc/miab/x.toml"))?.section::<Demo>()
}

#[test]
fn no_file_and_an_empty_file_are_the_defaults() {
    let d = Config::default().section::<Demo>().unwrap();
    assert_eq!(d.settings, Demo::default());
    assert_eq!(d.server, Demo::server_defaults());
    assert_eq!(load("").unwrap(), d);
    let c = Config::from_toml("", Path::new("x")).unwrap();
    assert_eq!(c.storage_root, Config::default().storage_root);
    assert_eq!(c.dns, DnsConfig::default());
}

#[test]
fn listener_settings_are_taken_out_and_the_rest_is_the_daemons() {
    let d = load(
        "[lookup]\nlisten = \"unix:/run/l.sock\"\nsocket_mode = \"0600\"\nsocket_group = \"postfix\"\n\
         greeting = \"hi\"\nmax_connections = 3\nidle_timeout_secs = 7\nio_timeout_secs = 2\n\
         drain_timeout_secs = 1\nsecond = \"\"\nold = 4\n[milter]\nanything = 1\n",
    )
    .unwrap();
    assert_eq!(d.server.listen, ListenAddr::Unix("/run/l.sock".into()));
    assert_eq!(d.server.unix.mode, 0o600);
    assert_eq!(d.server.unix.group.as_deref(), Some("postfix"));
    assert_eq!(d.server.limits.max_connections, 3);
    assert_eq!(d.server.limits.idle_timeout, Duration::from_secs(7));
    assert_eq!(d.server.limits.io_timeout, Duration::from_secs(2));
    assert_eq!(d.server.limits.drain_timeout, Duration::from_secs(1));
    assert_eq!(d.settings.greeting, "hi");
    assert_eq!(d.settings.second, None, "\"\" is off");
    assert_eq!(
        d.settings.ignored(&d.server_keys),
        ["io_timeout_secs", "old"]
    );
}

#[test]
fn errors_name_the_file_the_setting_and_the_line() {
    let e = load("[lookup]\nlisen = \"inet:127.0.0.1:1\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/etc/miab/x.toml") && e.contains("`lisen`") && e.contains("listen"),
        "{e}"
    );
    let e = load("\n[lookup]\nmax_connections = \"many\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3") && e.contains("max_connections"), "{e}");
    let e = load("[lookup]\nsocket_mode = \"0999\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("socket_mode") && e.contains("0999"), "{e}");
    let e = load("[lookup]\nlisten = \"tcp:1\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tcp:1") && e.contains("line 2"), "{e}");
    let e = load("[lookup]\nsecond = \"x\"\n").unwrap_err().to_string();
    assert!(e.contains("second") && e.contains("line 2"), "{e}");
    let e = load("[lookup]\ngreeting = \"a\\nb\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("[lookup] greeting: one line only"), "{e}");
}

#[test]
fn unknown_sections_and_shared_keys_are_refused() {
    for (text, word) in [
        ("storage_rot = \"/x\"", "storage_rot"),
        ("[lookups]\n", "lookups"),
        ("lookup = 1\n", "lookup"),
        ("db_busy_timeout_ms = \"soon\"", "db_busy_timeout_ms"),
        ("[dns]\ntimeout = 1\n", "timeout"),
    ] {
        let e = Config::from_toml(text, Path::new("/etc/x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/x.toml") && e.contains(word), "{text}: {e}");
    }
    let c = Config::from_toml(
        "storage_root = \"/srv/miab\"\nhostname = \"box.example.com\"\nrecipient_delimiter = \"+-\"\n",
        Path::new("x"),
    )
    .unwrap();
    assert_eq!(c.db_path(), PathBuf::from("/srv/miab/mail/users.sqlite"));
    assert_eq!(c.recipient_delimiter, "+-");
}

#[test]
fn the_sample_configs_shared_part_is_the_defaults() {
    let sample = include_str!("../../../packaging/sidecars.toml");
    let c = Config::from_toml(sample, Path::new("packaging/sidecars.toml")).unwrap();
    assert_eq!(c.store, StoreConfig::default());
    assert_eq!(c.dns, DnsConfig::default());
    assert_eq!(c.storage_root, Config::default().storage_root);
    assert_eq!(c.recipient_delimiter, Config::default().recipient_delimiter);
}

#[test]
fn missing_explicit_file_is_an_error() {
    let e = Config::load(Some(Path::new("/nonexistent/sidecars.toml"))).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
}

#[test]
fn store_section() {
    let c = Config::from_toml(
        "[store]\nurl = \"postgresql://miab:secret@db.example/miab\"\ndeadline_ms = 200\n",
        Path::new("x.toml"),
    )
    .unwrap();
    assert!(c.store.directory_from_store());
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("secret") && shown.contains("<set>"),
        "{shown}"
    );
    assert_eq!(c.store.limits().deadline, Duration::from_millis(200));
    let primary = Config::from_toml(
        "[store]\nurl = \"postgresql://miab@db.example/miab\"\npublish = true\n",
        Path::new("x.toml"),
    )
    .unwrap();
    assert!(!primary.store.directory_from_store());
    let off = Config::from_toml("[store]\nurl = \"\"\n", Path::new("x.toml")).unwrap();
    assert_eq!(off.store.url, None);
    let e = Config::from_toml("[store]\nurll = \"x\"\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("urll"), "{e}");
}
