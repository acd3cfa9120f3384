//! `miab-milter`: flags, then the common start-up (`daemon::launch`).

use clap::Parser;
use daemon::{CommonArgs, Runtime};
use std::process::ExitCode;

/// DKIM signing and DKIM/SPF/DMARC verification for Postfix, in place of OpenDKIM and OpenDMARC.
#[derive(Debug, Parser)]
#[command(name = "miab-milter", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    daemon::init_logging();
    let args: Args = daemon::man::parse_or_write(false);
    daemon::launch(
        "miab-milter",
        // One thread: cross-thread wake-ups cost more CPU than the work (bench-milter).
        Runtime::CurrentThread,
        &args.common,
        |_: &mut daemon::Loaded<miab_milter::settings::Settings>| {},
        |config, section| async move {
            let state = miab_milter::State::open(&config, &section).await?;
            let summary = format!("authserv-id={}", config.box_hostname());
            Ok::<_, miab_milter::StartError>((state, summary))
        },
        |mut l, state, shutdown| {
            let accept_only = l.take("accept_listen");
            miab_milter::run(l.main, accept_only, state, shutdown)
        },
    )
}
