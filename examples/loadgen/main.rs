//! `loadgen`: measures a running chat daemon (Apollonion, or Redis pub/sub
//! for comparison) with N receivers and S senders, and fails loudly on any
//! lost, duplicated or reordered line.
//!
//! ```text
//! cargo run --release --example loadgen -- --receivers 100 --lines 100000
//! cargo run --release --example loadgen -- --target redis --addr 127.0.0.1:6379
//! cargo run --release --example loadgen -- --idle 10000 --pid "$(pidof apollonion)"
//! ```
//!
//! Exit codes: 0 when every line reached every receiver, 1 on any failure
//! (loss, reorder, disconnect, refusal, timeout), 2 for bad flags.

mod driver;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use driver::{IdleConfig, IdleReport, LoadConfig, LoadError, RedisIdle, Report, Stop, Target};

const HELP: &str = "\
loadgen: load generator for a chat daemon (Apollonion or Redis pub/sub)

usage: cargo run --release --example loadgen -- [--flag VALUE]...

throughput mode (the default):
  --target apollonion|redis   protocol of the daemon (default apollonion)
  --addr ADDR[,ADDR...]       daemon address (default 127.0.0.1:8080,
                              or 127.0.0.1:6379 for redis); several
                              addresses (a cluster): receivers spread over
                              them round robin, senders on the first
  --receivers N               receiving connections (default 100)
  --senders S                 sending connections (default 1)
  --payload BYTES             size of each line's text (default 64)
  --window W                  a sender stays at most W lines ahead of the
                              slowest reader of its lines: the receivers,
                              and on Apollonion the other senders, who are
                              room members too (default 1000)
  --lines L                   measured lines per sender (default 100000)
  --duration SECS             send for this long instead of a line count
  --rate LINES_PER_SEC        per-sender send rate; 0 = as fast as the
                              window allows (default 0)
  --warmup-lines L            lines per sender delivered before measuring
                              (default 1000)
  --timeout SECS              the whole run must finish within this (default 120)
  --stall-timeout SECS        fail if nothing arrives for this long (default 10)
  --channel NAME              redis channel (default bench)
  --json                      print one JSON line instead of the summary

idle-memory mode:
  --idle N                    open N connections, wait until every one is
                              welcomed (redis: subscribed or answered), read
                              the server's RSS, hold, close
  --pid PID                   the server's process id, for /proc/PID/status
                              (also in throughput mode: its CPU use over
                              the measurement is reported beside the tool's)
  --redis-idle plain|subscribed
                              what an idle redis connection does (default
                              subscribed; plain = just PING)
  --settle SECS               wait before reading the RSS (default 1)
  --hold SECS                 keep the connections open afterwards (default 0)

The daemon must let the load through: start Apollonion with
  --rate 0 --max-per-ip 0 (and --max-clients above N for --idle N).
Exit codes: 0 pass, 1 any failure (loss, reorder, disconnect, timeout), 2 bad flags.
";

struct Args {
    load: LoadConfig,
    idle: Option<usize>,
    redis_idle: RedisIdle,
    settle: Duration,
    hold: Duration,
    json: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut target = Target::Apollonion;
    let mut addr: Option<SocketAddr> = None;
    let mut more_addrs: Vec<SocketAddr> = Vec::new();
    let mut load = LoadConfig::new(target, target.default_addr());
    let mut out = Args {
        load: load.clone(),
        idle: None,
        redis_idle: RedisIdle::Subscribed,
        settle: Duration::from_secs(1),
        hold: Duration::ZERO,
        json: false,
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        match flag.as_str() {
            "--help" | "-h" => return Ok(None),
            "--json" => {
                out.json = true;
                continue;
            }
            _ => {}
        }
        let value = match inline.or_else(|| args.next()) {
            Some(value) => value,
            None if flag.starts_with("--") => return Err(format!("{flag} needs a value")),
            None => return Err(format!("unexpected argument {flag:?} (try --help)")),
        };
        let count = || -> Result<u64, String> {
            value
                .trim()
                .parse()
                .map_err(|_| format!("bad value {value:?} for {flag}: expected a whole number"))
        };
        let seconds = || -> Result<Duration, String> {
            value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("bad value {value:?} for {flag}: expected seconds"))
        };
        match flag.as_str() {
            "--target" => {
                target = match value.as_str() {
                    "apollonion" => Target::Apollonion,
                    "redis" => Target::Redis,
                    _ => {
                        return Err(format!(
                            "bad value {value:?} for --target: apollonion or redis"
                        ))
                    }
                }
            }
            "--addr" => {
                let mut parsed = value.split(',').map(|one| {
                    one.trim().parse::<SocketAddr>().map_err(|_| {
                        format!(
                            "bad value {value:?} for --addr: expected addresses like 127.0.0.1:8080,127.0.0.1:8081"
                        )
                    })
                });
                addr = parsed.next().transpose()?;
                more_addrs = parsed.collect::<Result<_, _>>()?;
            }
            "--receivers" => load.receivers = count()? as usize,
            "--senders" => load.senders = count()? as usize,
            "--payload" => load.payload = count()? as usize,
            "--window" => load.window = count()?,
            "--lines" => load.stop = Stop::Lines(count()?),
            "--duration" => load.stop = Stop::Duration(seconds()?),
            "--rate" => load.rate = count()?,
            "--warmup-lines" => load.warmup_lines = count()?,
            "--timeout" => load.timeout = seconds()?,
            "--stall-timeout" => load.stall_timeout = seconds()?,
            "--channel" => load.channel = value.clone(),
            "--idle" => out.idle = Some(count()? as usize),
            "--pid" => load.server_pid = Some(count()? as u32),
            "--redis-idle" => {
                out.redis_idle = match value.as_str() {
                    "plain" => RedisIdle::Plain,
                    "subscribed" => RedisIdle::Subscribed,
                    _ => {
                        return Err(format!(
                            "bad value {value:?} for --redis-idle: plain or subscribed"
                        ))
                    }
                }
            }
            "--settle" => out.settle = seconds()?,
            "--hold" => out.hold = seconds()?,
            _ => return Err(format!("unknown flag {flag} (try --help)")),
        }
    }
    load.target = target;
    load.addr = addr.unwrap_or(target.default_addr());
    load.more_addrs = more_addrs;
    out.load = load;
    Ok(Some(out))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("loadgen: {msg}");
            return ExitCode::from(2);
        }
    };
    match args.idle {
        Some(connections) => idle_mode(&args, connections),
        None => load_mode(&args),
    }
}

fn load_mode(args: &Args) -> ExitCode {
    let cfg = &args.load;
    if let Err(err) = cfg.validate() {
        eprintln!("loadgen: {}", err.message);
        return ExitCode::from(2);
    }
    match driver::run(cfg) {
        Ok(report) => {
            if args.json {
                println!("{}", report_json(&report));
            } else {
                print_report(cfg, &report);
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            if args.json {
                println!("{}", failure_json(cfg, &err));
            } else {
                print_failure(cfg, &err);
            }
            eprintln!("loadgen: FAIL: {err}");
            ExitCode::FAILURE
        }
    }
}

fn describe_run(cfg: &LoadConfig) -> String {
    let stop = match cfg.stop {
        Stop::Lines(lines) => format!("{lines} lines per sender"),
        Stop::Duration(d) => format!("{:.1} s", d.as_secs_f64()),
    };
    let rate = if cfg.rate > 0 {
        format!(", {} lines/s per sender", cfg.rate)
    } else {
        String::new()
    };
    let addrs: Vec<String> = std::iter::once(cfg.addr)
        .chain(cfg.more_addrs.iter().copied())
        .map(|addr| addr.to_string())
        .collect();
    format!(
        "{} at {}: {} receivers, {} sender(s), {}-byte payload, window {}, {stop}{rate}",
        cfg.target.name(),
        addrs.join(","),
        cfg.receivers,
        cfg.senders,
        cfg.payload,
        cfg.window
    )
}

fn micros(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}

fn print_report(cfg: &LoadConfig, r: &Report) {
    println!("{}", describe_run(cfg));
    println!(
        "  connected      {} connections in {:.3} s",
        r.receivers + r.senders,
        r.connect_time.as_secs_f64()
    );
    println!(
        "  lines sent     {} (after {} warm-up lines per sender)",
        r.lines_sent, r.warmup_lines
    );
    println!(
        "  deliveries     {} of {} expected",
        r.deliveries, r.deliveries_expected
    );
    println!(
        "  elapsed        {:.3} s (first send to last delivery)",
        r.elapsed.as_secs_f64()
    );
    println!(
        "  throughput     {:.0} lines/s delivered, {:.1} MB/s of payload",
        r.lines_per_sec(),
        r.mb_per_sec()
    );
    println!(
        "  CPU            this tool {:.0} % of a core{}",
        r.tool_cpu * 100.0,
        r.server_cpu.map_or_else(
            || " (give --pid PID for the server's)".to_string(),
            |server| format!(", the server {:.0} %", server * 100.0)
        )
    );
    if r.overheard > 0 {
        println!(
            "  senders heard  {} lines (they are room members too): {:.0} lines/s written in all",
            r.overheard,
            r.all_lines_per_sec()
        );
    }
    println!(
        "  latency        p50 {:.1} us, p99 {:.1} us, max {:.1} us ({} samples)",
        micros(r.latency.p50),
        micros(r.latency.p99),
        micros(r.latency.max),
        r.latency.samples
    );
    if let Some(across) = &r.latency_across {
        println!(
            "  across servers p50 {:.1} us, p99 {:.1} us, max {:.1} us ({} samples: receivers not on the senders' server)",
            micros(across.p50),
            micros(across.p99),
            micros(across.max),
            across.samples
        );
    }
    if let Some(arrival) = &r.latency_arrival {
        println!(
            "  at arrival     p50 {:.1} us, p99 {:.1} us (to the kernel's stamp on the receiver's socket, before this tool read it)",
            micros(arrival.p50),
            micros(arrival.p99),
        );
    }
    if let Some(arrival) = &r.latency_across_arrival {
        println!(
            "  across, at arrival p50 {:.1} us, p99 {:.1} us",
            micros(arrival.p50),
            micros(arrival.p99),
        );
    }
    println!(
        "  result         {}",
        if r.passed() { "PASS" } else { "FAIL" }
    );
}

fn print_failure(cfg: &LoadConfig, err: &LoadError) {
    let p = &err.progress;
    println!("{}", describe_run(cfg));
    println!(
        "  connected      {} of {} connections",
        p.connections_ready, p.connections_total
    );
    println!("  lines sent     {} (warm-up included)", p.lines_sent);
    println!(
        "  deliveries     {} of {} expected so far",
        p.deliveries, p.deliveries_expected
    );
    println!("  result         FAIL: {err}");
}

/// Escapes a string for JSON (quotes included).
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn report_json(r: &Report) -> String {
    format!(
        concat!(
            "{{\"result\":\"{}\",\"target\":\"{}\",\"receivers\":{},\"senders\":{},",
            "\"payload\":{},\"window\":{},\"lines_sent\":{},\"deliveries_expected\":{},",
            "\"deliveries\":{},\"overheard\":{},\"elapsed_s\":{:.6},\"lines_per_sec\":{:.0},",
            "\"all_lines_per_sec\":{:.0},\"mb_per_sec\":{:.2},",
            "\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1},\"latency_samples\":{},",
            "{}{}{}\"tool_cpu\":{:.3},{}\"connect_s\":{:.3}}}"
        ),
        if r.passed() { "PASS" } else { "FAIL" },
        r.target.name(),
        r.receivers,
        r.senders,
        r.payload,
        r.window,
        r.lines_sent,
        r.deliveries_expected,
        r.deliveries,
        r.overheard,
        r.elapsed.as_secs_f64(),
        r.lines_per_sec(),
        r.all_lines_per_sec(),
        r.mb_per_sec(),
        micros(r.latency.p50),
        micros(r.latency.p99),
        micros(r.latency.max),
        r.latency.samples,
        r.latency_across.as_ref().map_or_else(String::new, |across| format!(
            "\"across_p50_us\":{:.1},\"across_p99_us\":{:.1},\"across_max_us\":{:.1},\"across_samples\":{},",
            micros(across.p50),
            micros(across.p99),
            micros(across.max),
            across.samples
        )),
        r.latency_arrival.as_ref().map_or_else(String::new, |arrival| format!(
            "\"arrival_p50_us\":{:.1},\"arrival_p99_us\":{:.1},",
            micros(arrival.p50),
            micros(arrival.p99),
        )),
        r.latency_across_arrival.as_ref().map_or_else(String::new, |arrival| format!(
            "\"across_arrival_p50_us\":{:.1},\"across_arrival_p99_us\":{:.1},",
            micros(arrival.p50),
            micros(arrival.p99),
        )),
        r.tool_cpu,
        r.server_cpu
            .map_or_else(String::new, |server| format!("\"server_cpu\":{server:.3},")),
        r.connect_time.as_secs_f64(),
    )
}

fn failure_json(cfg: &LoadConfig, err: &LoadError) -> String {
    let p = &err.progress;
    format!(
        concat!(
            "{{\"result\":\"FAIL\",\"target\":\"{}\",\"receivers\":{},\"senders\":{},",
            "\"payload\":{},\"window\":{},\"lines_sent\":{},\"deliveries_expected\":{},",
            "\"deliveries\":{},\"failure\":\"{:?}\",\"error\":{}}}"
        ),
        cfg.target.name(),
        cfg.receivers,
        cfg.senders,
        cfg.payload,
        cfg.window,
        p.lines_sent,
        p.deliveries_expected,
        p.deliveries,
        err.kind,
        json_str(&err.message),
    )
}

fn idle_mode(args: &Args, connections: usize) -> ExitCode {
    let mut cfg = IdleConfig::new(args.load.target, args.load.addr, connections);
    cfg.redis = args.redis_idle;
    cfg.channel = args.load.channel.clone();
    cfg.pid = args.load.server_pid;
    cfg.settle = args.settle;
    cfg.hold = args.hold;
    cfg.timeout = args.load.timeout;
    let kind = match (cfg.target, cfg.redis) {
        (Target::Apollonion, _) => "welcomed, in #lobby",
        (Target::Redis, RedisIdle::Plain) => "plain",
        (Target::Redis, RedisIdle::Subscribed) => "subscribed",
    };
    match driver::run_idle(&cfg) {
        Ok(report) => {
            if args.json {
                println!("{}", idle_json(&cfg, kind, &report));
            } else {
                print_idle(&cfg, kind, &report);
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            if args.json {
                println!(
                    "{{\"result\":\"FAIL\",\"mode\":\"idle\",\"target\":\"{}\",\"connections\":{},\
                     \"ready\":{},\"failure\":\"{:?}\",\"error\":{}}}",
                    cfg.target.name(),
                    connections,
                    err.progress.connections_ready,
                    err.kind,
                    json_str(&err.message)
                );
            } else {
                println!(
                    "{} at {}: {connections} idle connections ({kind})",
                    cfg.target.name(),
                    cfg.addr
                );
                println!(
                    "  connected      {} of {connections}",
                    err.progress.connections_ready
                );
                println!("  result         FAIL: {err}");
            }
            eprintln!("loadgen: FAIL: {err}");
            ExitCode::FAILURE
        }
    }
}

fn print_idle(cfg: &IdleConfig, kind: &str, r: &IdleReport) {
    println!(
        "{} at {}: {} idle connections ({kind})",
        cfg.target.name(),
        cfg.addr,
        r.connections
    );
    println!(
        "  connected      {} in {:.3} s",
        r.connections,
        r.connect_time.as_secs_f64()
    );
    match (r.rss_before_kib, r.rss_after_kib, r.bytes_per_connection()) {
        (Some(before), Some(after), Some(per)) => {
            println!("  server RSS     {before} KiB before, {after} KiB after");
            println!(
                "  per connection {:.0} bytes ({:.2} KiB)",
                per,
                per / 1024.0
            );
        }
        _ => println!("  server RSS     not measured (give --pid PID)"),
    }
    println!("  result         PASS");
}

fn idle_json(cfg: &IdleConfig, kind: &str, r: &IdleReport) -> String {
    let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
    format!(
        "{{\"result\":\"PASS\",\"mode\":\"idle\",\"target\":\"{}\",\"kind\":\"{kind}\",\
         \"connections\":{},\"connect_s\":{:.3},\"rss_before_kib\":{},\"rss_after_kib\":{},\
         \"bytes_per_conn\":{}}}",
        cfg.target.name(),
        r.connections,
        r.connect_time.as_secs_f64(),
        opt(r.rss_before_kib),
        opt(r.rss_after_kib),
        r.bytes_per_connection()
            .map_or("null".to_string(), |b| format!("{b:.0}")),
    )
}
