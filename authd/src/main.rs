//! `miab-authd`: flags, then the common start-up (`daemon::launch`).

use clap::Parser;
use daemon::{CommonArgs, Runtime};
use std::process::ExitCode;

/// Dovecot auth-client protocol over the Mail-in-a-Box user DB, for Postfix SMTP AUTH.
#[derive(Debug, Parser)]
#[command(name = "miab-authd", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    daemon::init_logging();
    let args = Args::parse();
    daemon::launch(
        "miab-authd",
        Runtime::MultiThread,
        &args.common,
        |c| &mut c.authd,
        |config| {
            let summary = format!("db={}", config.db_path().display());
            authd::State::open(config).map(|s| (s, summary))
        },
        authd::run,
    )
}
