//! Run-time settings: defaults, flag and environment parsing, validation.
//!
//! Every flag `--some-name` can also be given as `APOLLONION_SOME_NAME` in the
//! environment; a flag on the command line wins over the environment.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::cluster::url::RedisUrl;

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
    /// `SO_SNDBUF` for client sockets; 0 leaves the kernel's autotuning.
    pub sndbuf: usize,
    pub write_timeout: Duration,
    /// Zero means off.
    pub idle_timeout: Duration,
    /// Lines per second; 0 means unlimited.
    pub rate: u32,
    pub burst: u32,
    pub announce_limit: usize,
    pub shutdown_grace: Duration,
    pub log_level: log::LevelFilter,
    /// Cluster mode (SPEC §4): the Redis joining the servers; `None` runs
    /// alone.
    pub redis: Option<RedisUrl>,
    /// Prefix of every Redis key and channel, so clusters can share a Redis.
    pub cluster_name: String,
    /// A server not heard of for this long is taken as lost.
    pub node_timeout: Duration,
    /// Where to serve Prometheus metrics; `None` is off.
    pub metrics: Option<SocketAddr>,
    /// How often to log the stats line; zero means off.
    pub stats_interval: Duration,
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
            sndbuf: 64 * 1024,
            write_timeout: Duration::from_secs(30),
            idle_timeout: Duration::ZERO,
            rate: 10,
            burst: 50,
            announce_limit: 100,
            shutdown_grace: Duration::from_secs(5),
            log_level: log::LevelFilter::Info,
            redis: None,
            cluster_name: "apollonion".to_string(),
            node_timeout: Duration::from_secs(10),
            metrics: None,
            stats_interval: Duration::from_secs(300),
        }
    }
}

/// Why the command line or environment could not be turned into a `Config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// `--help` was asked for: not an error for the user, but parsing stops.
    HelpRequested,
    /// `--version` was asked for, likewise.
    VersionRequested,
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
            ConfigError::VersionRequested => write!(f, "version requested"),
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

/// The longest duration any flag takes: ten years. Longer would be a typo,
/// and deadlines must stay within what `Instant` can represent.
pub const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// One command-line flag, the one place it is described: everything else
/// (environment variables, `--help`, defaults shown) is derived from this
/// table. The environment variable is `APOLLONION_` and the name in upper
/// case with `_` for `-`; the default shown is `show` of `Config::default()`.
pub struct Flag {
    pub name: &'static str,
    /// What the value looks like, in `--help`.
    pub placeholder: &'static str,
    pub help: &'static str,
    /// Stores a parsed value, or says what was expected.
    set: fn(&mut Config, &str) -> Result<(), &'static str>,
    show: fn(&Config) -> String,
}

impl Flag {
    pub fn env_name(&self) -> String {
        format!(
            "APOLLONION_{}",
            self.name.to_ascii_uppercase().replace('-', "_")
        )
    }
}

/// Every flag. To add one: a field in `Config` and its default, and a row
/// here.
pub const FLAGS: &[Flag] = &[
    Flag {
        name: "listen",
        placeholder: "ADDR",
        help: "address to bind: IPv4, [IPv6] or a host name with :PORT; :PORT alone means every address (0.0.0.0); port 0 picks a free port",
        set: |c, v| parse_listen(v).map(|value| c.listen = value),
        show: |c| c.listen.to_string(),
    },
    Flag {
        name: "max-clients",
        placeholder: "N",
        help: "clients in the chat at once",
        set: |c, v| parse_number(v).map(|value| c.max_clients = value),
        show: |c| c.max_clients.to_string(),
    },
    Flag {
        name: "max-waiting",
        placeholder: "N",
        help: "further clients held in a FIFO line while the chat is full",
        set: |c, v| parse_number(v).map(|value| c.max_waiting = value),
        show: |c| c.max_waiting.to_string(),
    },
    Flag {
        name: "max-per-ip",
        placeholder: "N",
        help: "connections (chatting + waiting) from one IP address; 0 = no limit",
        set: |c, v| parse_number(v).map(|value| c.max_per_ip = value),
        show: |c| c.max_per_ip.to_string(),
    },
    Flag {
        name: "max-line",
        placeholder: "BYTES",
        help: "longest input line accepted, in bytes",
        set: |c, v| parse_number(v).map(|value| c.max_line = value),
        show: |c| c.max_line.to_string(),
    },
    Flag {
        name: "max-outbuf",
        placeholder: "BYTES",
        help: "pending output per client in bytes; beyond it lines are skipped",
        set: |c, v| parse_number(v).map(|value| c.max_outbuf = value),
        show: |c| c.max_outbuf.to_string(),
    },
    Flag {
        name: "sndbuf",
        placeholder: "BYTES",
        help: "kernel send buffer per client socket (SO_SNDBUF; Linux doubles it); 0 = the kernel's autotuning",
        set: |c, v| parse_number(v).map(|value| c.sndbuf = value),
        show: |c| c.sndbuf.to_string(),
    },
    Flag {
        name: "write-timeout",
        placeholder: "SECS",
        help: "disconnect a client that takes no byte of pending output for this long",
        set: |c, v| parse_seconds(v).map(|value| c.write_timeout = value),
        show: |c| c.write_timeout.as_secs().to_string(),
    },
    Flag {
        name: "idle-timeout",
        placeholder: "SECS",
        help: "disconnect a client that sends nothing for this long; 0 = off",
        set: |c, v| parse_seconds(v).map(|value| c.idle_timeout = value),
        show: |c| c.idle_timeout.as_secs().to_string(),
    },
    Flag {
        name: "rate",
        placeholder: "N",
        help: "input lines per second per client; 0 = unlimited",
        set: |c, v| parse_number(v).map(|value| c.rate = value),
        show: |c| c.rate.to_string(),
    },
    Flag {
        name: "burst",
        placeholder: "N",
        help: "token-bucket burst for --rate, in lines",
        set: |c, v| parse_number(v).map(|value| c.burst = value),
        show: |c| c.burst.to_string(),
    },
    Flag {
        name: "announce-limit",
        placeholder: "N",
        help: "rooms with more members than this get no join, leave or rename notices",
        set: |c, v| parse_number(v).map(|value| c.announce_limit = value),
        show: |c| c.announce_limit.to_string(),
    },
    Flag {
        name: "shutdown-grace",
        placeholder: "SECS",
        help: "how long an orderly shutdown waits for output to drain",
        set: |c, v| parse_seconds(v).map(|value| c.shutdown_grace = value),
        show: |c| c.shutdown_grace.as_secs().to_string(),
    },
    Flag {
        name: "log-level",
        placeholder: "LEVEL",
        help: "error, warn, info, debug or trace",
        set: |c, v| parse_level(v).map(|value| c.log_level = value),
        show: |c| c.log_level.to_string().to_lowercase(),
    },
    Flag {
        name: "redis",
        placeholder: "URL",
        help: "cluster mode: join the servers using this Redis, redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]; none = run alone",
        set: |c, v| parse_redis(v).map(|value| c.redis = value),
        show: |c| c.redis.as_ref().map_or("none".into(), RedisUrl::to_string),
    },
    Flag {
        name: "cluster-name",
        placeholder: "NAME",
        help: "prefix of the cluster's Redis keys and channels; servers with the same --redis and name form one chat",
        set: |c, v| parse_cluster_name(v).map(|value| c.cluster_name = value),
        show: |c| c.cluster_name.clone(),
    },
    Flag {
        name: "node-timeout",
        placeholder: "SECS",
        help: "a cluster server not heard of for this long is taken as lost",
        set: |c, v| parse_seconds(v).map(|value| c.node_timeout = value),
        show: |c| c.node_timeout.as_secs().to_string(),
    },
    Flag {
        name: "metrics",
        placeholder: "ADDR",
        help: "serve Prometheus metrics at http://ADDR/metrics (same forms as --listen); off = no metrics",
        set: |c, v| parse_metrics(v).map(|value| c.metrics = value),
        show: |c| c.metrics.map_or_else(|| "off".to_string(), |addr| addr.to_string()),
    },
    Flag {
        name: "stats-interval",
        placeholder: "SECS",
        help: "log a one-line summary at info this often; 0 = off",
        set: |c, v| parse_seconds(v).map(|value| c.stats_interval = value),
        show: |c| c.stats_interval.as_secs().to_string(),
    },
];

fn parse_redis(value: &str) -> Result<Option<RedisUrl>, &'static str> {
    if value.is_empty() || value == "none" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| "a URL like redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], or none")
}

fn parse_cluster_name(value: &str) -> Result<String, &'static str> {
    let valid = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if valid {
        Ok(value.to_string())
    } else {
        Err("1 to 64 letters, digits, _, - or .")
    }
}

fn parse_number<T: TryFrom<u64>>(value: &str) -> Result<T, &'static str> {
    let number: u64 = value.parse().map_err(|_| "a whole number")?;
    T::try_from(number).map_err(|_| "a smaller number")
}

fn parse_seconds(value: &str) -> Result<Duration, &'static str> {
    let seconds: u64 = value.parse().map_err(|_| "a whole number of seconds")?;
    if seconds > MAX_SECONDS {
        return Err("at most 315360000 seconds (ten years)");
    }
    Ok(Duration::from_secs(seconds))
}

/// `IP:PORT`, `[IPv6]:PORT`, `:PORT` (every IPv4 address) or `HOST:PORT`
/// (resolved now; the first address is used).
fn parse_listen(value: &str) -> Result<SocketAddr, &'static str> {
    const EXPECTED: &str = "an address like 127.0.0.1:8080, [::1]:8080, localhost:8080 or :8080";
    if let Some(port) = value.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| EXPECTED)?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    // Only something shaped like HOST:PORT goes to the resolver.
    let (host, port) = value.rsplit_once(':').ok_or(EXPECTED)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(EXPECTED);
    }
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or("a host name that resolves, with :PORT")
}

/// `off` (or nothing), or an address as `--listen` takes it.
fn parse_metrics(value: &str) -> Result<Option<SocketAddr>, &'static str> {
    if value.is_empty() || value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_listen(value).map(Some)
}

fn parse_level(value: &str) -> Result<log::LevelFilter, &'static str> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => return Err("one of error, warn, info, debug, trace"),
    })
}

/// A parsed configuration and what is worth a warning once logging runs.
#[derive(Debug)]
pub struct Parsed {
    pub config: Config,
    /// Such as environment variables that name no flag.
    pub warnings: Vec<String>,
}

impl Config {
    /// Builds a config from command-line arguments (without the program
    /// name) and environment variables, given as name/value pairs so tests
    /// need not touch the real environment.
    pub fn from_args_and_env<A, E>(args: A, env: E) -> Result<Config, ConfigError>
    where
        A: IntoIterator<Item = String>,
        E: IntoIterator<Item = (String, String)>,
    {
        Config::parse(args, env).map(|parsed| parsed.config)
    }

    /// As `from_args_and_env`, also returning warnings for the log.
    pub fn parse<A, E>(args: A, env: E) -> Result<Parsed, ConfigError>
    where
        A: IntoIterator<Item = String>,
        E: IntoIterator<Item = (String, String)>,
    {
        let mut config = Config::default();
        let mut warnings = Vec::new();
        // Environment first, so that flags applied afterwards win.
        for (key, value) in env {
            if !key.starts_with("APOLLONION_") {
                continue;
            }
            match FLAGS.iter().find(|flag| flag.env_name() == key) {
                Some(flag) => config.apply(flag, &value, &key)?,
                None => warnings.push(format!(
                    "environment variable {key} names no flag and is ignored (see --help)"
                )),
            }
        }
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--help" | "-h" => return Err(ConfigError::HelpRequested),
                "--version" | "-V" => return Err(ConfigError::VersionRequested),
                _ => {}
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
        Ok(Parsed { config, warnings })
    }

    fn apply(&mut self, flag: &Flag, value: &str, source: &str) -> Result<(), ConfigError> {
        (flag.set)(self, value.trim()).map_err(|expected| ConfigError::BadValue {
            source: source.to_string(),
            value: value.to_string(),
            expected,
        })
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
        positive("node-timeout", self.node_timeout.as_secs())?;
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
    for flag in FLAGS {
        text.push_str(&format!(
            "  --{} {}\n        {} (default {})\n",
            flag.name,
            flag.placeholder,
            flag.help,
            (flag.show)(&defaults)
        ));
    }
    text.push_str("  --help\n        print this text\n");
    text.push_str("  --version\n        print the version\n");
    text
}

/// What `--version` prints.
pub fn version_text() -> String {
    format!("apollonion {}\n", env!("CARGO_PKG_VERSION"))
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
        for flag in FLAGS {
            let key = flag.env_name();
            let changed = ["127.0.0.1:9", "trace", "5000", "redis://127.0.0.1:9"]
                .iter()
                .any(|value| {
                    parse(&[], &[(key.as_str(), value)]).is_ok_and(|c| c != Config::default())
                });
            assert!(changed, "{key} had no effect");
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

    #[test]
    fn version_is_its_own_request() {
        assert_eq!(
            parse(&["--version"], &[]),
            Err(ConfigError::VersionRequested)
        );
        assert_eq!(
            version_text(),
            format!("apollonion {}\n", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn listen_takes_a_bare_port_and_host_names() {
        let config = parse(&["--listen", ":2323"], &[]).unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:2323");
        let config = parse(&["--listen", "localhost:2323"], &[]).unwrap();
        assert!(config.listen.ip().is_loopback(), "{}", config.listen);
        assert_eq!(config.listen.port(), 2323);
        for bad in [":", ":x", ":70000", "localhost", "localhost:x", ":8080:1"] {
            assert!(
                matches!(
                    parse(&["--listen", bad], &[]),
                    Err(ConfigError::BadValue { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_environment_variables_are_warned_about_not_fatal() {
        let env = [
            ("APOLLONION_MAX_CLIENT", "5"),
            ("APOLLONION_RATE", "3"),
            ("HOME", "/root"),
        ];
        let parsed = Config::parse(
            std::iter::empty(),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .unwrap();
        assert_eq!(parsed.config.rate, 3);
        assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
        assert!(parsed.warnings[0].contains("APOLLONION_MAX_CLIENT"));
    }

    #[test]
    fn metrics_is_off_by_default_and_takes_an_address_or_off() {
        assert_eq!(Config::default().metrics, None);
        assert_eq!(Config::default().stats_interval, Duration::from_secs(300));
        let config = parse(&["--metrics", "127.0.0.1:9100"], &[]).unwrap();
        assert_eq!(config.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        let config = parse(
            &["--metrics", ":9100"],
            &[("APOLLONION_STATS_INTERVAL", "0")],
        )
        .unwrap();
        assert_eq!(config.metrics, Some("0.0.0.0:9100".parse().unwrap()));
        assert_eq!(config.stats_interval, Duration::ZERO);
        let config = parse(&["--metrics", "off"], &[("APOLLONION_METRICS", ":1")]).unwrap();
        assert_eq!(config.metrics, None);
        assert!(matches!(
            parse(&["--metrics", "nowhere"], &[]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(help_text().contains("--metrics ADDR"));
    }

    #[test]
    fn durations_beyond_ten_years_are_refused() {
        for flag in [
            "--idle-timeout",
            "--write-timeout",
            "--shutdown-grace",
            "--stats-interval",
        ] {
            for value in ["18446744073709551615", "315360001"] {
                let err = parse(&[flag, value], &[]).unwrap_err();
                assert!(
                    matches!(err, ConfigError::BadValue { .. }),
                    "{flag} {value}"
                );
                assert!(!err.to_string().contains('\n'));
            }
            assert!(parse(&[flag, "315360000"], &[]).is_ok(), "{flag}");
        }
    }

    /// Values for the property test: numbers of every size, near-numbers
    /// and junk.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            (0..u64::from(u32::MAX)).prop_map(|n| n.to_string()),
            Just("18446744073709551616".to_string()),
            Just(" 12 ".to_string()),
            "-?[0-9]{0,25}",
            "[a-z0-9:.\\[\\] =-]{0,12}",
            any::<String>(),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        /// No value of any flag, on the command line or in the
        /// environment, makes parsing panic; whatever is accepted gives
        /// deadlines the clock can hold.
        #[test]
        fn no_flag_value_panics(
            choices in proptest::collection::vec((0..FLAGS.len(), value(), any::<bool>()), 1..6),
        ) {
            let mut args = Vec::new();
            let mut env = Vec::new();
            for (index, value, from_env) in choices {
                let flag = &FLAGS[index];
                // Host names go to the system resolver; the listen address
                // gets numeric forms only, so the test never waits on DNS.
                let resolvable = value.rsplit_once(':').is_some_and(|(host, _)| {
                    !host.is_empty() && host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_err()
                });
                if (flag.name == "listen" || flag.name == "metrics") && resolvable {
                    continue;
                }
                if from_env {
                    env.push((flag.env_name(), value));
                } else {
                    args.push(format!("--{}={value}", flag.name));
                }
            }
            if let Ok(config) = Config::from_args_and_env(args, env) {
                let now = std::time::Instant::now();
                for duration in [config.idle_timeout, config.write_timeout, config.shutdown_grace, config.stats_interval] {
                    prop_assert!(now.checked_add(duration).is_some());
                }
                let _ = help_text();
            }
        }
    }
}
