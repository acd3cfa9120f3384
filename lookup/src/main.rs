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
    let args: Args = daemon::man::parse_or_write(false);
    daemon::launch(
        "miab-lookup",
        Runtime::MultiThread,
        &args.common,
        |_: &mut daemon::Loaded<lookup::settings::Settings>| {},
        |config, section| async move {
            let summary = format!("db={}", config.db_path().display());
            lookup::State::open(&config, &section.server)
                .await
                .map(|s| (s, summary))
        },
        |l, state, shutdown| lookup::run(l.main, state, shutdown),
    )
}
