//! The `apollonion` binary: flags in, exit code out.

use std::process::ExitCode;

use apollonion::config::{help_text, ConfigError};
use apollonion::{Config, Server, Stopped};

/// Exit code after a second signal cut the shutdown short: the shell's
/// convention for "ended by SIGINT".
const FORCED_EXIT: u8 = 130;

fn main() -> ExitCode {
    let config = match Config::from_args_and_env(std::env::args().skip(1), std::env::vars()) {
        Ok(config) => config,
        Err(ConfigError::HelpRequested) => {
            print!("{}", help_text());
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("apollonion: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = simple_logger::SimpleLogger::new()
        .with_level(config.log_level)
        .init()
    {
        eprintln!("apollonion: cannot start logging: {err}");
    }
    let server = match Server::bind(config) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("apollonion: {err}");
            return ExitCode::from(1);
        }
    };
    match server.run() {
        Ok(Stopped::Orderly) => ExitCode::SUCCESS,
        Ok(Stopped::Forced) => ExitCode::from(FORCED_EXIT),
        Err(err) => {
            log::error!("the event loop failed: {err}");
            ExitCode::from(1)
        }
    }
}
