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
    let args = Args::parse();
    // One thread: a policy answer is microseconds of work, and the greylist store's group
    // commit runs inline, where a hand-off to another thread and back costs more than the
    // commit. User DB reads still run on the blocking pool.
    daemon::launch(
        "miab-policyd",
        Runtime::CurrentThread,
        &args.common,
        |c| &mut c.policyd,
        |config| {
            policyd::State::open(config).map(|(state, r)| {
                let summary = format!(
                    "checks={:?} greylist_db={:?} greylist_entries={:?} whitelist_entries={}",
                    config.policyd.checks, r.greylist_db, r.greylist_entries, r.whitelist_entries
                );
                (state, summary)
            })
        },
        policyd::run,
    )
}
