//! `miab-checkpassword`: Dovecot 2.3's checkpassword program over miab-authd (see
//! `authd::checkpassword`). Dovecot runs `miab-checkpassword [--socket PATH] <reply program>`.

use authd::checkpassword::{self, Answer, Env, exit};
use clap::Parser;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Checks a Dovecot login (or looks a user up) through miab-authd, then runs the reply program.
#[derive(Debug, Parser)]
#[command(name = "miab-checkpassword", version)]
struct Args {
    /// miab-authd's checkpassword socket.
    #[arg(long, default_value = checkpassword::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Seconds to wait for miab-authd.
    #[arg(long, default_value_t = 15)]
    timeout_secs: u64,
    /// The reply program Dovecot names (checkpassword-reply) and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    reply: Vec<std::ffi::OsString>,
}

/// Dovecot shows our stderr in its log.
fn fail(code: u8, why: &str) -> ExitCode {
    eprintln!("miab-checkpassword: {why}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let args: Args = daemon::man::parse_or_write(false);
    let mut input = Vec::new();
    // fd 3 holds the request; /dev/fd/3 reaches it without unsafe code.
    let read = std::fs::File::open("/dev/fd/3").and_then(|f| {
        f.take(checkpassword::MAX_INPUT as u64 + 1)
            .read_to_end(&mut input)
    });
    if let Err(e) = read {
        return fail(
            exit::INTERNAL,
            &format!("cannot read the request on fd 3: {e}"),
        );
    }
    let req = match checkpassword::parse_input(&input) {
        Ok(r) => r,
        Err(e) => return fail(exit::INTERNAL, e),
    };
    let env = Env::from_vars(|k| std::env::var(k).ok());
    if env.credentials_lookup {
        return fail(
            exit::BAD_CREDENTIALS,
            "stored credentials are never handed out; offer only PLAIN and LOGIN",
        );
    }
    let answer = checkpassword::ask(
        &args.socket,
        &req,
        &env,
        Duration::from_secs(args.timeout_secs),
    );
    match answer {
        Answer::Found { user, fields } => {
            let Some((program, rest)) = args.reply.split_first() else {
                return fail(
                    exit::INTERNAL,
                    "no reply program given (Dovecot passes one)",
                );
            };
            let err = std::process::Command::new(program)
                .args(rest)
                .envs(checkpassword::reply_env(&user, &fields, env.lookup))
                .exec();
            fail(
                exit::TEMP,
                &format!("cannot run {}: {err}", program.to_string_lossy()),
            )
        }
        Answer::Refused => ExitCode::from(exit::BAD_CREDENTIALS),
        Answer::NotFound => ExitCode::from(exit::NOT_FOUND),
        Answer::Temp(why) => fail(exit::TEMP, &why),
    }
}
