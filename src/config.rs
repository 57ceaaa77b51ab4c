//! Run-time settings: defaults, flag and environment parsing, validation.
//!
//! Every flag `--some-name` can also be given as `APOLLONION_SOME_NAME` in the
//! environment; a flag on the command line wins over the environment.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything the daemon can be told at start-up. `Default` gives the
/// documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub max_clients: usize,
    pub max_waiting: usize,
    /// 0 means no limit.
    pub max_per_ip: usize,
    pub max_line: usize,
    pub max_outbuf: usize,
    pub write_timeout: Duration,
    /// Zero means off.
    pub idle_timeout: Duration,
    /// Lines per second; 0 means unlimited.
    pub rate: u32,
    pub burst: u32,
    pub announce_limit: usize,
    pub shutdown_grace: Duration,
    pub log_level: log::LevelFilter,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_clients: 10_000,
            max_waiting: 1_000,
            max_per_ip: 64,
            max_line: 4096,
            max_outbuf: 1 << 20,
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::ZERO,
            rate: 10,
            burst: 50,
            announce_limit: 100,
            shutdown_grace: Duration::from_secs(5),
            log_level: log::LevelFilter::Info,
        }
    }
}

/// Why the command line or environment could not be turned into a `Config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `--help` was asked for: not an error for the user, but parsing stops.
    HelpRequested,
    UnknownFlag(String),
    MissingValue(String),
    /// Flag (or variable) name, the offending value, and what was expected.
    BadValue {
        source: String,
        value: String,
        expected: &'static str,
    },
    /// A combination of values that cannot work together.
    Inconsistent(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::HelpRequested => write!(f, "help requested"),
            ConfigError::UnknownFlag(flag) => {
                write!(f, "unknown flag {flag} (try --help)")
            }
            ConfigError::MissingValue(flag) => write!(f, "{flag} needs a value"),
            ConfigError::BadValue {
                source,
                value,
                expected,
            } => write!(f, "bad value {value:?} for {source}: expected {expected}"),
            ConfigError::Inconsistent(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// What a flag's value is, which drives both parsing and the help text.
#[derive(Clone, Copy)]
enum Kind {
    Addr,
    Count,
    Bytes,
    Seconds,
    LogLevel,
}

struct FlagSpec {
    name: &'static str,
    kind: Kind,
    help: &'static str,
}

const FLAGS: &[FlagSpec] = &[
    FlagSpec {
        name: "listen",
        kind: Kind::Addr,
        help: "address to bind, IPv4 or IPv6 (port 0 picks a free port)",
    },
    FlagSpec {
        name: "max-clients",
        kind: Kind::Count,
        help: "clients in the chat at once",
    },
    FlagSpec {
        name: "max-waiting",
        kind: Kind::Count,
        help: "further clients held in a FIFO line while the chat is full",
    },
    FlagSpec {
        name: "max-per-ip",
        kind: Kind::Count,
        help: "connections (chatting + waiting) from one IP address; 0 = no limit",
    },
    FlagSpec {
        name: "max-line",
        kind: Kind::Bytes,
        help: "longest input line accepted, in bytes",
    },
    FlagSpec {
        name: "max-outbuf",
        kind: Kind::Bytes,
        help: "pending output per client in bytes; beyond it lines are skipped",
    },
    FlagSpec {
        name: "write-timeout",
        kind: Kind::Seconds,
        help: "disconnect a client that takes no byte of pending output for this long",
    },
    FlagSpec {
        name: "idle-timeout",
        kind: Kind::Seconds,
        help: "disconnect a client that sends nothing for this long; 0 = off",
    },
    FlagSpec {
        name: "rate",
        kind: Kind::Count,
        help: "input lines per second per client; 0 = unlimited",
    },
    FlagSpec {
        name: "burst",
        kind: Kind::Count,
        help: "token-bucket burst for --rate, in lines",
    },
    FlagSpec {
        name: "announce-limit",
        kind: Kind::Count,
        help: "rooms with more members than this get no join, leave or rename notices",
    },
    FlagSpec {
        name: "shutdown-grace",
        kind: Kind::Seconds,
        help: "how long an orderly shutdown waits for output to drain",
    },
    FlagSpec {
        name: "log-level",
        kind: Kind::LogLevel,
        help: "error, warn, info, debug or trace",
    },
];

impl Config {
    /// Builds a config from command-line arguments (without the program
    /// name) and environment variables, given as name/value pairs so tests
    /// need not touch the real environment.
    pub fn from_args_and_env<A, E>(args: A, env: E) -> Result<Config, ConfigError>
    where
        A: IntoIterator<Item = String>,
        E: IntoIterator<Item = (String, String)>,
    {
        let mut config = Config::default();
        // Environment first, so that flags applied afterwards win.
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("APOLLONION_") else {
                continue;
            };
            let name = rest.to_ascii_lowercase().replace('_', "-");
            if let Some(spec) = FLAGS.iter().find(|spec| spec.name == name) {
                config.apply(spec, &value, &key)?;
            }
        }
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Err(ConfigError::HelpRequested);
            }
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(ConfigError::UnknownFlag(arg));
            };
            let (name, inline_value) = match flag.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (flag.to_string(), None),
            };
            let Some(spec) = FLAGS.iter().find(|spec| spec.name == name) else {
                return Err(ConfigError::UnknownFlag(format!("--{name}")));
            };
            let value = match inline_value.or_else(|| args.next()) {
                Some(value) => value,
                None => return Err(ConfigError::MissingValue(format!("--{name}"))),
            };
            config.apply(spec, &value, &format!("--{name}"))?;
        }
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, spec: &FlagSpec, value: &str, source: &str) -> Result<(), ConfigError> {
        let bad = |expected| ConfigError::BadValue {
            source: source.to_string(),
            value: value.to_string(),
            expected,
        };
        let value = value.trim();
        match spec.kind {
            Kind::Addr => {
                self.listen = value
                    .parse()
                    .map_err(|_| bad("an address like 127.0.0.1:8080 or [::1]:8080"))?;
            }
            Kind::LogLevel => {
                self.log_level = match value.to_ascii_lowercase().as_str() {
                    "error" => log::LevelFilter::Error,
                    "warn" => log::LevelFilter::Warn,
                    "info" => log::LevelFilter::Info,
                    "debug" => log::LevelFilter::Debug,
                    "trace" => log::LevelFilter::Trace,
                    _ => return Err(bad("one of error, warn, info, debug, trace")),
                };
            }
            Kind::Count | Kind::Bytes | Kind::Seconds => {
                let number: u64 = value.parse().map_err(|_| bad("a whole number"))?;
                let as_usize = || usize::try_from(number).map_err(|_| bad("a smaller number"));
                let as_u32 = || u32::try_from(number).map_err(|_| bad("a smaller number"));
                match spec.name {
                    "max-clients" => self.max_clients = as_usize()?,
                    "max-waiting" => self.max_waiting = as_usize()?,
                    "max-per-ip" => self.max_per_ip = as_usize()?,
                    "max-line" => self.max_line = as_usize()?,
                    "max-outbuf" => self.max_outbuf = as_usize()?,
                    "write-timeout" => self.write_timeout = Duration::from_secs(number),
                    "idle-timeout" => self.idle_timeout = Duration::from_secs(number),
                    "rate" => self.rate = as_u32()?,
                    "burst" => self.burst = as_u32()?,
                    "announce-limit" => self.announce_limit = as_usize()?,
                    "shutdown-grace" => self.shutdown_grace = Duration::from_secs(number),
                    _ => unreachable!("every numeric flag is matched above"),
                }
            }
        }
        Ok(())
    }

    /// Rejects values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |name: &str, value: u64| {
            if value == 0 {
                Err(ConfigError::Inconsistent(format!(
                    "--{name} must be at least 1"
                )))
            } else {
                Ok(())
            }
        };
        positive("max-clients", self.max_clients as u64)?;
        positive("max-line", self.max_line as u64)?;
        positive("write-timeout", self.write_timeout.as_secs())?;
        if self.rate > 0 {
            positive("burst", u64::from(self.burst))?;
        }
        if self.max_line > (1 << 24) {
            return Err(ConfigError::Inconsistent(
                "--max-line must be at most 16777216".to_string(),
            ));
        }
        // The longest line the server can send is a chat line: a nickname, a
        // prefix and a full input line. A smaller output cap would silently
        // skip every long line, forever.
        let longest_output = self.max_line + MAX_LINE_OVERHEAD;
        if self.max_outbuf < longest_output {
            return Err(ConfigError::Inconsistent(format!(
                "--max-outbuf must be at least --max-line + {MAX_LINE_OVERHEAD} ({longest_output})"
            )));
        }
        Ok(())
    }
}

/// Bytes a server line may add around a client's text: `(dm) `, a nickname
/// of at most 24 bytes, `: ` and `\r\n`, with room to spare.
pub const MAX_LINE_OVERHEAD: usize = 64;

/// The `--help` text, listing every flag with its default.
pub fn help_text() -> String {
    let defaults = Config::default();
    let mut text = String::from(
        "apollonion: a chat daemon for telnet and nc clients\n\n\
         usage: apollonion [--flag VALUE]...\n\n\
         Every flag can also be set as APOLLONION_<NAME> in the environment\n\
         (e.g. APOLLONION_MAX_CLIENTS=50000); a flag wins over the environment.\n\n",
    );
    for spec in FLAGS {
        let placeholder = match spec.kind {
            Kind::Addr => "ADDR",
            Kind::Count => "N",
            Kind::Bytes => "BYTES",
            Kind::Seconds => "SECS",
            Kind::LogLevel => "LEVEL",
        };
        let default = defaults.display_value(spec.name);
        text.push_str(&format!(
            "  --{} {placeholder}\n        {} (default {default})\n",
            spec.name, spec.help
        ));
    }
    text.push_str("  --help\n        print this text\n");
    text
}

impl Config {
    fn display_value(&self, name: &str) -> String {
        match name {
            "listen" => self.listen.to_string(),
            "max-clients" => self.max_clients.to_string(),
            "max-waiting" => self.max_waiting.to_string(),
            "max-per-ip" => self.max_per_ip.to_string(),
            "max-line" => self.max_line.to_string(),
            "max-outbuf" => self.max_outbuf.to_string(),
            "write-timeout" => self.write_timeout.as_secs().to_string(),
            "idle-timeout" => self.idle_timeout.as_secs().to_string(),
            "rate" => self.rate.to_string(),
            "burst" => self.burst.to_string(),
            "announce-limit" => self.announce_limit.to_string(),
            "shutdown-grace" => self.shutdown_grace.as_secs().to_string(),
            "log-level" => self.log_level.to_string().to_lowercase(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_args_and_env(
            args.iter().map(|a| a.to_string()),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn no_input_gives_the_documented_defaults() {
        let config = parse(&[], &[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.max_clients, 10_000);
        assert_eq!(config.max_outbuf, 1_048_576);
    }

    #[test]
    fn flags_take_separate_or_inline_values() {
        let config = parse(
            &[
                "--listen",
                "0.0.0.0:2323",
                "--max-clients=50000",
                "--log-level",
                "debug",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:2323");
        assert_eq!(config.max_clients, 50_000);
        assert_eq!(config.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn ipv6_addresses_parse() {
        let config = parse(&["--listen", "[::1]:0"], &[]).unwrap();
        assert!(config.listen.is_ipv6());
    }

    #[test]
    fn environment_is_read_and_flags_win() {
        let env = [("APOLLONION_MAX_LINE", "100"), ("APOLLONION_RATE", "3")];
        let config = parse(&["--rate", "7"], &env).unwrap();
        assert_eq!(config.max_line, 100);
        assert_eq!(config.rate, 7);
    }

    #[test]
    fn every_flag_is_settable_from_the_environment() {
        for spec in FLAGS {
            let key = format!("APOLLONION_{}", spec.name.to_uppercase().replace('-', "_"));
            let value = match spec.kind {
                Kind::Addr => "127.0.0.1:9",
                Kind::LogLevel => "trace",
                _ => "5000",
            };
            let config = parse(&[], &[(key.as_str(), value)]).unwrap();
            assert_ne!(config, Config::default(), "{key} had no effect");
        }
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        assert!(matches!(
            parse(&["--max-clients", "lots"], &[]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            parse(&["--listen", "nowhere"], &[]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            parse(&["--log-level", "loud"], &[]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            parse(&[], &[("APOLLONION_BURST", "-1")]),
            Err(ConfigError::BadValue { .. })
        ));
        assert_eq!(
            parse(&["--frobnicate", "1"], &[]),
            Err(ConfigError::UnknownFlag("--frobnicate".into()))
        );
        assert_eq!(
            parse(&["--rate"], &[]),
            Err(ConfigError::MissingValue("--rate".into()))
        );
        assert!(matches!(
            parse(&["--max-clients", "0"], &[]),
            Err(ConfigError::Inconsistent(_))
        ));
        assert!(matches!(
            parse(&["--max-outbuf", "100"], &[]),
            Err(ConfigError::Inconsistent(_))
        ));
    }

    #[test]
    fn error_messages_are_one_line_and_name_the_flag() {
        let err = parse(&["--max-line", "x"], &[]).unwrap_err().to_string();
        assert!(err.contains("--max-line"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn help_lists_every_flag_with_its_default() {
        assert_eq!(parse(&["--help"], &[]), Err(ConfigError::HelpRequested));
        let help = help_text();
        for spec in FLAGS {
            assert!(help.contains(&format!("--{}", spec.name)), "{}", spec.name);
        }
        assert!(help.contains("(default 127.0.0.1:8080)"));
        assert!(help.contains("(default 1048576)"));
    }
}
