//! `miab-policyd`: flags, then the common start-up (`daemon::launch`).

use clap::Parser;
use daemon::{CommonArgs, Runtime};
use std::process::ExitCode;

/// Postfix policy service: greylisting, Spamhaus DNSBL/DBL and sender-login enforcement.
#[derive(Debug, Parser)]
#[command(name = "miab-policyd", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    daemon::init_logging();
    let args: Args = daemon::man::parse_or_write(false);
    // One thread: a policy answer is microseconds of work, and the greylist store's group
    // commit runs inline, where a hand-off to another thread and back costs more than the
    // commit. A changed user DB is read again on the blocking pool.
    daemon::launch(
        "miab-policyd",
        Runtime::CurrentThread,
        &args.common,
        |_: &mut daemon::Loaded<policyd::settings::Settings>| {},
        |config, section| async move {
            policyd::State::open(&config, &section).await.map(|(state, r)| {
                let checks: Vec<&str> = section.settings.checks.iter().map(|c| c.as_str()).collect();
                let summary = format!(
                    "checks={checks:?} greylist_db={:?} greylist_entries={:?} whitelist_entries={} sending_db={:?}",
                    r.greylist_db, r.greylist_entries, r.whitelist_entries, r.sending_db
                );
                (state, summary)
            })
        },
        |mut l, state, shutdown| {
            let greylist_only = l.take("greylist_listen");
            policyd::run(l.main, greylist_only, state, shutdown)
        },
    )
}
