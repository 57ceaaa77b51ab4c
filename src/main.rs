//! The `apollonion` binary: flags in, exit code out.

use std::process::ExitCode;

use apollonion::config::{help_text, version_text, ConfigError, Parsed};
use apollonion::{systemd, Config, Server, Stopped};

/// Exit code after a second signal cut the shutdown short: the shell's
/// convention for "ended by SIGINT".
const FORCED_EXIT: u8 = 130;

fn main() -> ExitCode {
    let Parsed { config, warnings } =
        match Config::parse(std::env::args().skip(1), std::env::vars()) {
            Ok(parsed) => parsed,
            Err(ConfigError::HelpRequested) => {
                print!("{}", help_text());
                return ExitCode::SUCCESS;
            }
            Err(ConfigError::VersionRequested) => {
                print!("{}", version_text());
                return ExitCode::SUCCESS;
            }
            Err(err) => {
                eprintln!("apollonion: {err}");
                return ExitCode::from(2);
            }
        };
    // Before anything could start a thread: this also clears the
    // LISTEN_* variables.
    let activated = match systemd::listener_from_env() {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("apollonion: {err}");
            return ExitCode::from(1);
        }
    };
    if let Err(err) = simple_logger::SimpleLogger::new()
        .with_level(config.log_level)
        .init()
    {
        eprintln!("apollonion: cannot start logging: {err}");
    }
    for warning in warnings {
        log::warn!("{warning}");
    }
    if activated.is_some() {
        log::info!(
            "using the listening socket passed by systemd (LISTEN_FDS); --listen {} is ignored",
            config.listen
        );
    }
    let mut server = match Server::bind_with(config, activated) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("apollonion: {err}");
            return ExitCode::from(1);
        }
    };
    if let Some(notifier) = systemd::Notifier::from_env() {
        server.notify_systemd(notifier);
    }
    match server.run() {
        Ok(Stopped::Orderly) => ExitCode::SUCCESS,
        Ok(Stopped::Forced) => ExitCode::from(FORCED_EXIT),
        Err(err) => {
            log::error!("the event loop failed: {err}");
            ExitCode::from(1)
        }
    }
}
