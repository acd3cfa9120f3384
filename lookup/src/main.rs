//! `miab-lookup`: flags, then the common start-up (`daemon::launch`).

use clap::Parser;
use daemon::{CommonArgs, Runtime};
use std::process::ExitCode;

/// Postfix socketmap service for Mail-in-a-Box's domains, mailboxes, aliases and sender logins.
#[derive(Debug, Parser)]
#[command(name = "miab-lookup", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    daemon::init_logging();
    let args = Args::parse();
    daemon::launch(
        "miab-lookup",
        Runtime::MultiThread,
        &args.common,
        |c| &mut c.lookup,
        |config| {
            let summary = format!("db={}", config.db_path().display());
            lookup::State::open(config).map(|s| (s, summary))
        },
        lookup::run,
    )
}
