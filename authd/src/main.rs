//! `miab-authd`: flags, then the common start-up (`daemon::launch`).

use clap::Parser;
use daemon::{CommonArgs, ListenAddr, Runtime};
use std::process::ExitCode;

/// Dovecot auth-client protocol over the Mail-in-a-Box user DB, for Postfix SMTP AUTH.
#[derive(Debug, Parser)]
#[command(name = "miab-authd", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Where miab-checkpassword reaches us, overriding `[authd] checkpassword_listen`.
    #[arg(long, value_name = "ADDR")]
    checkpassword_listen: Option<ListenAddr>,
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
            let state = authd::State::open(config, args.checkpassword_listen.as_ref())?;
            let summary = format!(
                "db={} checkpassword={}",
                config.db_path().display(),
                state.checkpassword_addr().as_deref().unwrap_or("off")
            );
            Ok::<_, authd::StartError>((state, summary))
        },
        authd::run,
    )
}
