//! The `saldos` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use saldos::config::{Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a bad setting (SPEC section 3).
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => return bad_config(&error.to_string()),
    };
    match cli.command.unwrap_or(Command::Serve(Box::new(cli.serve))) {
        Command::Serve(args) => {
            if let Err(reason) = args.validate() {
                return bad_config(&format!("error: {reason}"));
            }
            let traces = match saldos::traces::Pipeline::from_env() {
                Ok(traces) => traces,
                Err(error) => return bad_config(&format!("error: {error}")),
            };
            saldos::logging::init(args.log_format, traces.as_ref());
            let sampling = traces.as_ref().map(saldos::traces::Pipeline::sampling);
            match saldos::serve(*args, sampling) {
                Ok(()) => ExitCode::SUCCESS,
                // No keys, no service: a setting to fix, not a crash.
                Err(error @ saldos::StartError::Auth(_)) => bad_config(&format!("error: {error}")),
                Err(error) => {
                    tracing::error!(%error, "cannot serve");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DevToken(args) => match saldos::auth::dev_token::run(&args) {
            Ok(output) => {
                println!("{output}");
                ExitCode::SUCCESS
            }
            Err(reason) => bad_config(&format!("error: {reason}")),
        },
        Command::Migrate(args) => saldos::migrate(&args),
        Command::Healthcheck(args) => {
            let url = args
                .url
                .unwrap_or_else(|| format!("http://127.0.0.1:{}/health/live", args.port));
            match saldos::healthcheck::probe(&url) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("healthcheck {url}: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints the first line of a configuration error to stderr and exits 2.
fn bad_config(message: &str) -> ExitCode {
    eprintln!(
        "{}",
        message.lines().next().unwrap_or("error: bad configuration")
    );
    ExitCode::from(EXIT_BAD_CONFIG)
}
