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
    let args: Args = daemon::man::parse_or_write(false);
    daemon::launch(
        "miab-authd",
        Runtime::MultiThread,
        &args.common,
        |section: &mut daemon::Loaded<authd::settings::Settings>| {
            if let Some(addr) = args.checkpassword_listen.clone() {
                section.settings.checkpassword_listen = Some(addr);
            }
        },
        |config, section| async move {
            let state = authd::State::open(&config, &section).await?;
            Ok::<_, authd::StartError>((state, format!("db={}", config.db_path().display())))
        },
        |mut l, state, shutdown| {
            let helper = l.take("checkpassword_listen");
            authd::run(l.main, helper, state, shutdown)
        },
    )
}
