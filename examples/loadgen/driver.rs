//! The load driver: receiver and sender connections to a chat daemon
//! (Apollonion's line protocol, or Redis pub/sub for comparison), numbered
//! and timestamped lines pushed through it under a flow-control window, and
//! exact accounting: every receiver must get every line of every sender,
//! in order, exactly once, or the run fails.
//!
//! One thread, one `mio::Poll`, non-blocking sockets: on a 2-core box the
//! server gets one core and this gets the other.
//!
//! This file stands alone (std, mio and libc only) because both the
//! `loadgen` example and a criterion bench include it as a module.

// Each including crate uses a different part of the public API; the parts
// one of them leaves unused are not dead.
#![allow(dead_code)]

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// Bytes asked for per `read`: big enough that one syscall carries
/// hundreds of lines.
const READ_SIZE: usize = 64 * 1024;
/// Longest incomplete frame kept between two reads of one connection.
const MAX_CARRY: usize = 64 * 1024;
/// A sender generates at most this many bytes of lines before writing them.
const WRITE_BATCH: usize = 64 * 1024;
/// Connections opened but not yet welcomed. Opening 10,000 at once would
/// overflow the server's accept queue, and dropped SYNs are retried only
/// after a second.
const CONNECT_INFLIGHT: usize = 64;
/// Upper bound on one poll wait, so deadlines are checked even when idle.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// When a sending phase is this old, a suspiciously slow flow is reported.
const THROTTLE_CHECK_AFTER: Duration = Duration::from_secs(3);
/// Lines per second, all senders together, below which throttling is
/// suspected. Counted together: a thousand senders each held to a few lines
/// a second by their window are not throttled, the daemon is just busy.
const THROTTLE_SUSPECT: f64 = 100.0;
/// After the last expected delivery, keep reading this long so that a
/// duplicate or an extra line is caught rather than missed.
const LINGER: Duration = Duration::from_millis(50);

/// Which protocol the daemon under test speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Apollonion: lines in, `<nick>: <line>` out to the rest of #lobby.
    Apollonion,
    /// Redis: `SUBSCRIBE` receivers, `PUBLISH` senders.
    Redis,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Apollonion => "apollonion",
            Target::Redis => "redis",
        }
    }

    pub fn default_addr(self) -> SocketAddr {
        match self {
            Target::Apollonion => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Target::Redis => SocketAddr::from(([127, 0, 0, 1], 6379)),
        }
    }
}

/// When the measured part of a run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Each sender sends this many lines.
    Lines(u64),
    /// Each sender sends for this long; then all sent lines must arrive.
    Duration(Duration),
}

/// One throughput run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: Target,
    /// Where the senders connect, and the first receivers.
    pub addr: SocketAddr,
    /// Further servers of a cluster: receivers are spread over `addr` and
    /// these round robin.
    pub more_addrs: Vec<SocketAddr>,
    pub receivers: usize,
    pub senders: usize,
    /// Exact size of each line's text (without the line ending).
    pub payload: usize,
    /// A sender never gets more than this many lines ahead of the slowest
    /// receiver of its lines, so nothing can pile up without bound.
    pub window: u64,
    pub stop: Stop,
    /// Lines per second per sender in the measured part; 0 = as fast as
    /// the window allows.
    pub rate: u64,
    /// Lines per sender delivered before measuring starts (not counted).
    pub warmup_lines: u64,
    /// The whole run, connecting included, must finish within this.
    pub timeout: Duration,
    /// Fail when no delivery happens for this long.
    pub stall_timeout: Duration,
    /// Redis channel name.
    pub channel: String,
    /// Reading goes on this long after the last expected delivery, so an
    /// extra or repeated line fails the run (not part of `elapsed`).
    pub linger: Duration,
    /// The server's process, whose CPU time over the measurement is
    /// reported beside this tool's own (which of the two is the
    /// bottleneck).
    pub server_pid: Option<u32>,
}

impl LoadConfig {
    pub fn new(target: Target, addr: SocketAddr) -> LoadConfig {
        LoadConfig {
            target,
            addr,
            more_addrs: Vec::new(),
            receivers: 100,
            senders: 1,
            payload: 64,
            window: 1000,
            stop: Stop::Lines(100_000),
            rate: 0,
            warmup_lines: 1000,
            timeout: Duration::from_secs(120),
            stall_timeout: Duration::from_secs(10),
            channel: "bench".to_string(),
            linger: LINGER,
            server_pid: None,
        }
    }

    /// Shortest payload that holds `<sender> <seq> <timestamp-ns>` for the
    /// whole run.
    pub fn min_payload(&self) -> usize {
        let max_seq = match self.stop {
            Stop::Lines(lines) => self.warmup_lines + lines,
            // Nobody sends 10^10 lines in a run that has a timeout.
            Stop::Duration(_) => 9_999_999_999,
        };
        let max_ts = self.timeout.as_nanos().min(u64::MAX as u128) as u64;
        decimal_len(self.senders.saturating_sub(1) as u64)
            + 1
            + decimal_len(max_seq)
            + 1
            + decimal_len(max_ts)
    }

    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |msg: String| Err(LoadError::new(FailKind::Config, msg, Progress::default()));
        if self.receivers == 0 {
            return bad("at least one receiver is needed".into());
        }
        if self.senders == 0 {
            return bad("at least one sender is needed".into());
        }
        if self.window == 0 {
            return bad("the window must be at least 1 line".into());
        }
        if self.window > 1 << 24 {
            return bad("the window must be at most 16777216 lines".into());
        }
        if let Stop::Lines(0) = self.stop {
            return bad("at least one line per sender is needed".into());
        }
        if let Stop::Duration(d) = self.stop {
            if d.is_zero() {
                return bad("the duration must be positive".into());
            }
        }
        if self.receivers > u32::MAX as usize / 2 {
            return bad("too many receivers".into());
        }
        if self.payload < self.min_payload() {
            return bad(format!(
                "--payload {} is too small: these settings need at least {} bytes",
                self.payload,
                self.min_payload()
            ));
        }
        if self.channel.is_empty() || self.channel.bytes().any(|b| b <= b' ') {
            return bad("the channel name must be non-empty, without spaces".into());
        }
        Ok(())
    }
}

/// Latency from the send timestamp in a line to the read that carried it
/// (or, for the `*_arrival` figures, to the kernel's arrival stamp).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// The outcome of a run that passed: every expected delivery happened.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: Target,
    pub receivers: usize,
    pub senders: usize,
    pub payload: usize,
    pub window: u64,
    /// Per sender, before measuring.
    pub warmup_lines: u64,
    /// Measured lines, all senders together.
    pub lines_sent: u64,
    pub deliveries_expected: u64,
    pub deliveries: u64,
    /// Measured lines the senders themselves received: on Apollonion a
    /// sender is a member of the room too, so with several senders the
    /// server also writes every line to the other senders. Counted, not
    /// checked for order; not part of `deliveries`.
    pub overheard: u64,
    /// From the first measured send to the last delivery.
    pub elapsed: Duration,
    /// Opening every connection and getting every welcome/subscription.
    pub connect_time: Duration,
    pub latency: LatencySummary,
    /// Receivers on another server than the senders' (with several
    /// `--addr`): the lines that crossed between servers.
    pub latency_across: Option<LatencySummary>,
    /// As `latency`, to the moment the kernel queued the line's bytes on
    /// the receiver's socket rather than the moment this one thread got
    /// round to reading them: a client with a socket of its own reads
    /// at once, this tool reads a thousand in turn. Conservative: a read
    /// that takes bytes from several arrivals is stamped with the last.
    /// `None` where the kernel gave no stamps.
    pub latency_arrival: Option<LatencySummary>,
    pub latency_across_arrival: Option<LatencySummary>,
    /// Cores this tool used over the measurement (CPU time / wall time):
    /// near 1 means the tool, one thread, was the bottleneck.
    pub tool_cpu: f64,
    /// The same for the server given by `server_pid`.
    pub server_cpu: Option<f64>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.deliveries == self.deliveries_expected
    }

    pub fn lines_per_sec(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Every measured line the server wrote to a client, the senders'
    /// copies included.
    pub fn all_lines_per_sec(&self) -> f64 {
        (self.deliveries + self.overheard) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload bytes delivered per second, in MB (10^6 bytes).
    pub fn mb_per_sec(&self) -> f64 {
        self.lines_per_sec() * self.payload as f64 / 1e6
    }
}

/// How a run went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// Bad settings; nothing was started.
    Config,
    /// A connection could not be opened.
    Connect,
    /// The server refused a client (full, per-IP limit, error reply).
    Refused,
    /// The server closed a connection or the socket failed.
    Disconnected,
    /// A receiver missed a line (a gap in a sender's sequence, or the
    /// server said it skipped lines).
    Loss,
    /// A line arrived twice or out of order.
    Reorder,
    /// A line that is not what was sent.
    Corrupt,
    /// Something the protocol does not allow.
    Protocol,
    /// The run-level timeout passed.
    Timeout,
    /// Nothing was delivered for the stall timeout.
    Stalled,
    /// The poller itself failed.
    Io,
}

/// Counts at the moment of a failure, so that the accounting can be
/// printed even for a failed run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub connections_ready: usize,
    pub connections_total: usize,
    /// All senders, warm-up included.
    pub lines_sent: u64,
    pub deliveries: u64,
    /// `lines_sent` times the number of receivers.
    pub deliveries_expected: u64,
}

#[derive(Clone, Debug)]
pub struct LoadError {
    pub kind: FailKind,
    pub message: String,
    pub progress: Progress,
}

impl LoadError {
    fn new(kind: FailKind, message: String, progress: Progress) -> LoadError {
        LoadError {
            kind,
            message,
            progress,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for LoadError {}

/// What an idle connection does before it counts as established (Redis
/// only; an Apollonion connection waits for its welcome line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisIdle {
    /// Connect and send nothing; `INFO clients` on a separate connection
    /// confirms that Redis has accepted them all. (A command would make
    /// Redis touch its query and reply buffers: that is `Subscribed`'s
    /// cost, not a plain connection's.)
    Plain,
    /// `SUBSCRIBE <channel>`, wait for the confirmation.
    Subscribed,
}

/// Idle-memory mode: many connections that do nothing.
#[derive(Clone, Debug)]
pub struct IdleConfig {
    pub target: Target,
    pub addr: SocketAddr,
    pub connections: usize,
    pub redis: RedisIdle,
    pub channel: String,
    /// Server process whose RSS is read from /proc/PID/status.
    pub pid: Option<u32>,
    /// Time between the last connection established and the RSS reading,
    /// for the server to finish sending notices.
    pub settle: Duration,
    /// How long the connections stay open after the reading.
    pub hold: Duration,
    pub timeout: Duration,
}

impl IdleConfig {
    pub fn new(target: Target, addr: SocketAddr, connections: usize) -> IdleConfig {
        IdleConfig {
            target,
            addr,
            connections,
            redis: RedisIdle::Subscribed,
            channel: "bench".to_string(),
            pid: None,
            settle: Duration::from_secs(1),
            hold: Duration::ZERO,
            timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Clone, Debug)]
pub struct IdleReport {
    pub connections: usize,
    pub connect_time: Duration,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
}

impl IdleReport {
    pub fn bytes_per_connection(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_after_kib?);
        Some((after as f64 - before as f64) * 1024.0 / self.connections.max(1) as f64)
    }
}

/// Resident set size of a process, from /proc/PID/status, in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// CPU time this process has used, in ns.
fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// `CLOCK_REALTIME` now (the clock of the kernel's arrival stamps), in ns.
fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live
    // one.
    unsafe { libc::clock_gettime(clock, &mut now) };
    timespec_ns(now)
}

fn timespec_ns(time: libc::timespec) -> u64 {
    time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64
}

/// CPU time (user and system) process `pid` has used, in ns, from
/// `/proc/PID/stat`, in clock ticks (10 ms on most kernels: over a
/// measurement of seconds, under 1 % off).
pub fn server_cpu_ns(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = cpu_ticks_in_stat(&stat)
        .ok_or_else(|| io::Error::other(format!("no CPU times in /proc/{pid}/stat")))?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / per_second)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command
/// name (field 2) may hold spaces and parentheses, so the fields are
/// counted from the last `)`.
fn cpu_ticks_in_stat(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// Raises the soft open-file limit to the hard one, so that thousands of
/// connections fit. Returns the limit now in force.
// `rlim_t` is not 64 bits on every platform, so the casts are not useless.
#[allow(clippy::unnecessary_cast)]
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return wanted.rlim_cur as u64;
            }
        }
        lim.rlim_cur as u64
    }
}

/// Runs one throughput measurement against a running daemon: connect,
/// warm up, measure, all within `cfg.timeout`.
pub fn run(cfg: &LoadConfig) -> Result<Report, LoadError> {
    let started = Instant::now();
    let deadline = started + cfg.timeout;
    let mut session = Session::connect_until(cfg, deadline)?;
    if cfg.warmup_lines > 0 {
        session.warm_up_until(cfg.warmup_lines, deadline)?;
    }
    session.measure_until(cfg.stop, deadline)
}

/// Connections that stay open across several measurements, e.g. for a
/// criterion `iter_custom` loop. Sequence numbers continue from one
/// measurement to the next, so accounting stays exact throughout.
pub struct Session {
    d: Driver,
    cfg: LoadConfig,
    connect_time: Duration,
    warmed_up: u64,
}

impl Session {
    /// Opens and handshakes every receiver and sender connection.
    pub fn connect(cfg: &LoadConfig) -> Result<Session, LoadError> {
        Self::connect_until(cfg, Instant::now() + cfg.timeout)
    }

    fn connect_until(cfg: &LoadConfig, deadline: Instant) -> Result<Session, LoadError> {
        cfg.validate()?;
        raise_fd_limit();
        let started = Instant::now();
        let mut d = Driver::new(Setup::Load(cfg), started)?;
        d.connect_all(deadline)?;
        Ok(Session {
            d,
            cfg: cfg.clone(),
            connect_time: started.elapsed(),
            warmed_up: 0,
        })
    }

    /// Sends `lines` per sender that are checked but neither counted nor
    /// timed.
    pub fn warm_up(&mut self, lines: u64) -> Result<(), LoadError> {
        self.warm_up_until(lines, Instant::now() + self.cfg.timeout)
    }

    fn warm_up_until(&mut self, lines: u64, deadline: Instant) -> Result<(), LoadError> {
        let d = &mut self.d;
        d.flow.measure_start = None;
        for st in &mut d.flow.senders {
            st.measure_from = u64::MAX;
            st.limit = st.next_seq + lines;
        }
        d.drive(deadline, None)?;
        self.warmed_up += lines;
        Ok(())
    }

    /// One measurement on the open connections; each takes at most
    /// `cfg.timeout`.
    pub fn measure(&mut self, stop: Stop) -> Result<Report, LoadError> {
        self.measure_until(stop, Instant::now() + self.cfg.timeout)
    }

    fn measure_until(&mut self, stop: Stop, deadline: Instant) -> Result<Report, LoadError> {
        let d = &mut self.d;
        let start = Instant::now();
        d.flow.hist = Histogram::new();
        d.flow.hist_across = Histogram::new();
        d.flow.hist_arrival = Histogram::new();
        d.flow.hist_across_arrival = Histogram::new();
        d.flow.deliveries = 0;
        d.flow.measure_start = Some(start);
        d.flow.measure_start_ns = d.flow.ns_since_epoch(start);
        d.flow.last_done_ns = d.flow.measure_start_ns;
        let tool_cpu_start = process_cpu_ns();
        let server_cpu_start = self.cfg.server_pid.and_then(|pid| server_cpu_ns(pid).ok());
        for st in &mut d.flow.senders {
            st.measure_from = st.next_seq;
            st.limit = match stop {
                Stop::Lines(lines) => st.next_seq + lines,
                Stop::Duration(_) => u64::MAX,
            };
        }
        let stop_at = match stop {
            Stop::Lines(_) => None,
            Stop::Duration(duration) => Some(start + duration),
        };
        d.drive(deadline, stop_at)?;
        let elapsed_ns = d.flow.last_done_ns.saturating_sub(d.flow.measure_start_ns);
        let wall_ns = start.elapsed().as_nanos().max(1) as f64;
        let tool_cpu = process_cpu_ns().saturating_sub(tool_cpu_start) as f64 / wall_ns;
        let server_cpu = match (self.cfg.server_pid, server_cpu_start) {
            (Some(pid), Some(before)) => server_cpu_ns(pid)
                .ok()
                .map(|after| after.saturating_sub(before) as f64 / wall_ns),
            _ => None,
        };
        d.linger(self.cfg.linger, deadline)?;

        let flow = &d.flow;
        let lines_sent: u64 = flow
            .senders
            .iter()
            .map(|st| st.next_seq - st.measure_from)
            .sum();
        let cfg = &self.cfg;
        Ok(Report {
            target: cfg.target,
            receivers: cfg.receivers,
            senders: cfg.senders,
            payload: cfg.payload,
            window: cfg.window,
            warmup_lines: self.warmed_up,
            lines_sent,
            deliveries_expected: lines_sent * cfg.receivers as u64,
            deliveries: flow.deliveries,
            overheard: flow.overheard,
            elapsed: Duration::from_nanos(elapsed_ns.max(1)),
            connect_time: self.connect_time,
            latency: flow.hist.summary(),
            latency_across: (flow.servers > 1).then(|| flow.hist_across.summary()),
            latency_arrival: flow.arrival_stamps.then(|| flow.hist_arrival.summary()),
            latency_across_arrival: (flow.arrival_stamps && flow.servers > 1)
                .then(|| flow.hist_across_arrival.summary()),
            tool_cpu,
            server_cpu,
        })
    }
}

/// Opens `connections` idle connections, reads the server's RSS before and
/// after, holds them for `hold`, and closes them.
pub fn run_idle(cfg: &IdleConfig) -> Result<IdleReport, LoadError> {
    if cfg.connections == 0 {
        return Err(LoadError::new(
            FailKind::Config,
            "at least one connection is needed".into(),
            Progress::default(),
        ));
    }
    let limit = raise_fd_limit();
    if limit != 0 && (cfg.connections as u64) + 16 > limit {
        return Err(LoadError::new(
            FailKind::Config,
            format!(
                "{} connections need more open files than the limit of {limit} (ulimit -n)",
                cfg.connections
            ),
            Progress::default(),
        ));
    }
    let rss = |pid: u32| {
        rss_kib(pid).map_err(|e| {
            LoadError::new(
                FailKind::Config,
                format!("cannot read the RSS of process {pid}: {e}"),
                Progress::default(),
            )
        })
    };
    let rss_before_kib = cfg.pid.map(rss).transpose()?;
    let started = Instant::now();
    let deadline = started + cfg.timeout;
    let mut d = Driver::new(Setup::Idle(cfg), started)?;
    d.connect_all(deadline)?;
    if let (Target::Redis, RedisIdle::Plain) = (cfg.target, cfg.redis) {
        d.await_redis_clients(cfg.connections, deadline)?;
    }
    let connect_time = started.elapsed();
    d.idle_for(cfg.settle)?;
    let rss_after_kib = cfg.pid.map(rss).transpose()?;
    d.idle_for(cfg.hold)?;
    Ok(IdleReport {
        connections: cfg.connections,
        connect_time,
        rss_before_kib,
        rss_after_kib,
    })
}

// ---------------------------------------------------------------------------
// Internals

enum Setup<'a> {
    Load(&'a LoadConfig),
    Idle(&'a IdleConfig),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Receiver(usize),
    Sender(usize),
    Idle,
}

/// What makes a fresh connection count as established.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// Apollonion's `* welcome …` line.
    Welcome,
    /// Redis subscription confirmation.
    Subscribe,
    /// Redis `+PONG`.
    Ping,
    /// Nothing: connected is established.
    None,
}

struct Conn {
    stream: TcpStream,
    /// The kernel stamps its arrivals (receivers only).
    stamped: bool,
    role: Role,
    handshake: Handshake,
    connected: bool,
    ready: bool,
    /// Incomplete frame left over from the last read.
    carry: Vec<u8>,
}

struct SenderState {
    /// Next sequence number to generate; all below were generated.
    next_seq: u64,
    /// Generate no sequence number at or above this.
    limit: u64,
    /// Every receiver has every line below this.
    done: u64,
    /// Receivers that have line `seq`, at `seq & ring_mask`, for the lines
    /// between `done` and `next_seq`: the window keeps them in the ring.
    ring: Vec<u32>,
    out: Vec<u8>,
    out_pos: usize,
    /// The last write would have blocked; wait for WRITABLE.
    blocked: bool,
    /// Redis `PUBLISH` replies received.
    acks: u64,
    /// Lines from this one on are counted and timed.
    measure_from: u64,
}

/// Latency histogram: exact below 128 ns, then 64 buckets per power of two
/// (under 1.6 % error), so recording is a few instructions per line.
struct Histogram {
    counts: Vec<u64>,
    samples: u64,
    max: u64,
}

const HIST_BUCKETS: usize = 128 + 57 * 64;

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; HIST_BUCKETS],
            samples: 0,
            max: 0,
        }
    }

    #[inline]
    fn bucket(v: u64) -> usize {
        if v < 128 {
            v as usize
        } else {
            let e = 63 - v.leading_zeros();
            let m = (v >> (e - 6)) as usize;
            128 + (e as usize - 7) * 64 + (m - 64)
        }
    }

    /// Middle of the bucket's range.
    fn value(idx: usize) -> u64 {
        if idx < 128 {
            idx as u64
        } else {
            let k = idx - 128;
            let e = (k / 64 + 7) as u32;
            let m = (k % 64 + 64) as u64;
            let width = 1u64 << (e - 6);
            (m << (e - 6)) + width / 2
        }
    }

    #[inline]
    fn record(&mut self, ns: u64) {
        self.counts[Self::bucket(ns)] += 1;
        self.samples += 1;
        if ns > self.max {
            self.max = ns;
        }
    }

    fn quantile(&self, q: f64) -> u64 {
        if self.samples == 0 {
            return 0;
        }
        let rank = ((q * self.samples as f64).ceil() as u64).clamp(1, self.samples);
        let mut seen = 0;
        for (idx, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::value(idx).min(self.max);
            }
        }
        self.max
    }

    fn summary(&self) -> LatencySummary {
        LatencySummary {
            samples: self.samples,
            p50: Duration::from_nanos(self.quantile(0.50)),
            p99: Duration::from_nanos(self.quantile(0.99)),
            max: Duration::from_nanos(self.max),
        }
    }
}

/// The accounting: who expects what, what has arrived, and how fast.
struct Flow {
    target: Target,
    n: usize,
    s: usize,
    payload: usize,
    window: u64,
    ring_mask: u64,
    rate: u64,
    senders: Vec<SenderState>,
    /// Next sequence number receiver `r` expects from sender `s`, at
    /// `r * s_count + s`.
    expect: Vec<u64>,
    hist: Histogram,
    /// Receivers on other servers than the senders' only.
    hist_across: Histogram,
    /// The same two, to the kernel's arrival stamp (see
    /// `Report::latency_arrival`).
    hist_arrival: Histogram,
    hist_across_arrival: Histogram,
    /// Arrival stamp of the read being consumed, in ns since `epoch`; the
    /// read's own time where the kernel gave none.
    arrival_ns: u64,
    /// Whether the kernel has stamped any read.
    arrival_stamps: bool,
    /// `CLOCK_REALTIME` (the kernel's stamps) at `epoch`, in ns.
    realtime_at_epoch_ns: u64,
    /// Readers of each line: the receivers, and on Apollonion the other
    /// senders too (they are room members), so the window also keeps a
    /// slow-reading sender from being sent more than it can hold.
    readers_per_line: u32,
    /// Addresses the receivers are spread over; receiver `r` is on server
    /// `r % servers`, the senders on server 0.
    servers: usize,
    epoch: Instant,
    measure_start: Option<Instant>,
    measure_start_ns: u64,
    /// When the last line became complete (every receiver has it).
    last_done_ns: u64,
    /// Measured deliveries.
    deliveries: u64,
    all_deliveries: u64,
    /// Measured lines received by senders (see `Report::overheard`).
    overheard: u64,
    ready: usize,
    total_conns: usize,
    last_progress: Instant,
    /// Redis framing, built once.
    redis_message_prefix: Vec<u8>,
    redis_publish_prefix: Vec<u8>,
    channel: String,
}

impl Flow {
    fn ns_since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn progress(&self) -> Progress {
        let lines_sent: u64 = self.senders.iter().map(|st| st.next_seq).sum();
        Progress {
            connections_ready: self.ready,
            connections_total: self.total_conns,
            lines_sent,
            deliveries: self.all_deliveries,
            deliveries_expected: lines_sent * self.n as u64,
        }
    }

    #[cold]
    fn fail(&self, kind: FailKind, message: String) -> LoadError {
        LoadError::new(kind, message, self.progress())
    }

    /// One line's text has reached receiver `r`.
    #[inline]
    fn deliver(&mut self, r: usize, payload: &[u8], now_ns: u64) -> Result<(), LoadError> {
        if payload.len() != self.payload {
            return Err(self.corrupt(r, payload, "wrong length"));
        }
        let Some((s, seq, ts)) = parse_payload(payload) else {
            return Err(self.corrupt(r, payload, "not a load line"));
        };
        let s = s as usize;
        if s >= self.s {
            return Err(self.corrupt(r, payload, "no such sender"));
        }
        let slot = r * self.s + s;
        let want = self.expect[slot];
        if seq != want {
            return Err(self.out_of_sequence(r, s, seq, want));
        }
        self.expect[slot] = want + 1;
        if seq >= self.senders[s].next_seq {
            return Err(self.corrupt(r, payload, "sequence number never sent"));
        }
        self.one_more_reader(s, seq, now_ns);
        self.all_deliveries += 1;
        if seq >= self.senders[s].measure_from {
            self.deliveries += 1;
            let latency = now_ns.saturating_sub(ts);
            let across = !r.is_multiple_of(self.servers);
            self.hist.record(latency);
            if across {
                self.hist_across.record(latency);
            }
            if self.arrival_stamps {
                let at_arrival = self.arrival_ns.min(now_ns).saturating_sub(ts);
                self.hist_arrival.record(at_arrival);
                if across {
                    self.hist_across_arrival.record(at_arrival);
                }
            }
        }
        Ok(())
    }

    /// Line `seq` of sender `s` has reached one more of its readers. Every
    /// reader takes each sender's lines in order, so no later line can be
    /// complete before this one: completion moves `done` by one.
    #[inline]
    fn one_more_reader(&mut self, s: usize, seq: u64, now_ns: u64) {
        let st = &mut self.senders[s];
        let cell = &mut st.ring[(seq & self.ring_mask) as usize];
        *cell += 1;
        if *cell == self.readers_per_line {
            *cell = 0;
            st.done = seq + 1;
            self.last_done_ns = now_ns;
        }
    }

    /// Sender `listener` received another sender's line. It counts toward
    /// that line's window (a sender is a reader too) and, when measured,
    /// toward `overheard`. Only its origin is read: overheard lines are
    /// counted, not checked for order, and with many senders they are half
    /// of what the tool reads.
    fn overhear(&mut self, listener: usize, payload: &[u8], now_ns: u64) -> Result<(), LoadError> {
        let origin = parse_origin(payload)
            .filter(|&(s, seq, _)| {
                self.senders
                    .get(s as usize)
                    .is_some_and(|sender| seq < sender.next_seq && s as usize != listener)
            })
            .map(|(s, seq, _)| (s as usize, seq));
        let Some((s, seq)) = origin else {
            let shown = String::from_utf8_lossy(&payload[..payload.len().min(80)]).into_owned();
            return Err(self.fail(
                FailKind::Corrupt,
                format!("sender {listener} overheard a line no other sender sent: {shown:?}"),
            ));
        };
        self.one_more_reader(s, seq, now_ns);
        if seq >= self.senders[s].measure_from {
            self.overheard += 1;
        }
        Ok(())
    }

    #[cold]
    fn corrupt(&self, r: usize, payload: &[u8], why: &str) -> LoadError {
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(80)]).into_owned();
        self.fail(
            FailKind::Corrupt,
            format!(
                "receiver {r} got a line that was not sent ({why}, {} bytes, expected {}): {shown:?}",
                payload.len(),
                self.payload
            ),
        )
    }

    #[cold]
    fn out_of_sequence(&self, r: usize, s: usize, seq: u64, want: u64) -> LoadError {
        if seq > want {
            self.fail(
                FailKind::Loss,
                format!(
                    "receiver {r} lost {} line(s) of sender {s}: expected #{want}, got #{seq}",
                    seq - want
                ),
            )
        } else {
            self.fail(
                FailKind::Reorder,
                format!(
                    "receiver {r} got line #{seq} of sender {s} again or out of order \
                     (expected #{want})"
                ),
            )
        }
    }

    fn finished(&self) -> bool {
        self.senders.iter().all(|st| {
            st.next_seq == st.limit
                && st.done == st.limit
                && st.out_pos == st.out.len()
                && (self.target != Target::Redis || st.acks == st.limit)
        })
    }
}

struct Driver {
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    /// One read buffer for everyone: the carry is copied in front of it.
    scratch: Vec<u8>,
    flow: Flow,
    addr: SocketAddr,
    /// `addr` first, then the other servers receivers are spread over.
    addrs: Vec<SocketAddr>,
    stall_timeout: Duration,
    /// Every connection to open, in order; `opened` of them are.
    plan: Vec<(Role, Handshake)>,
    opened: usize,
    /// Connections without a handshake are established before the server
    /// accepts them, so the server's count is asked for (Redis only).
    confirm_accepts: bool,
    /// Connections the server has reported as accepted.
    confirmed: usize,
    /// Tokens with readiness from the last poll, so handlers can borrow
    /// the driver mutably.
    ready_list: Vec<(usize, bool, bool)>,
}

impl Driver {
    fn new(setup: Setup<'_>, epoch: Instant) -> Result<Driver, LoadError> {
        let poll = Poll::new().map_err(|e| {
            LoadError::new(
                FailKind::Io,
                format!("cannot create a poller: {e}"),
                Progress::default(),
            )
        })?;
        let mut addrs = Vec::new();
        let (target, addr, n, s, payload, window, rate, channel, stall, roles) = match setup {
            Setup::Load(c) => {
                let mut roles = Vec::with_capacity(c.receivers + c.senders);
                let receive = match c.target {
                    Target::Apollonion => Handshake::Welcome,
                    Target::Redis => Handshake::Subscribe,
                };
                let send = match c.target {
                    Target::Apollonion => Handshake::Welcome,
                    Target::Redis => Handshake::Ping,
                };
                roles.extend((0..c.receivers).map(|r| (Role::Receiver(r), receive)));
                roles.extend((0..c.senders).map(|s| (Role::Sender(s), send)));
                addrs.extend(c.more_addrs.iter().copied());
                (
                    c.target,
                    c.addr,
                    c.receivers,
                    c.senders,
                    c.payload,
                    c.window,
                    c.rate,
                    c.channel.clone(),
                    c.stall_timeout,
                    roles,
                )
            }
            Setup::Idle(c) => {
                let hs = match (c.target, c.redis) {
                    (Target::Apollonion, _) => Handshake::Welcome,
                    (Target::Redis, RedisIdle::Plain) => Handshake::None,
                    (Target::Redis, RedisIdle::Subscribed) => Handshake::Subscribe,
                };
                (
                    c.target,
                    c.addr,
                    0,
                    0,
                    0,
                    1,
                    0,
                    c.channel.clone(),
                    c.timeout,
                    vec![(Role::Idle, hs); c.connections],
                )
            }
        };
        let ring_len = window.next_power_of_two();
        let senders = (0..s)
            .map(|_| SenderState {
                next_seq: 0,
                limit: 0,
                done: 0,
                ring: vec![0; ring_len as usize],
                out: Vec::with_capacity(WRITE_BATCH + payload + 64),
                out_pos: 0,
                blocked: false,
                acks: 0,
                measure_from: u64::MAX,
            })
            .collect();
        let redis_message_prefix = format!(
            "*3\r\n$7\r\nmessage\r\n${}\r\n{}\r\n$",
            channel.len(),
            channel
        )
        .into_bytes();
        let redis_publish_prefix = format!(
            "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{}\r\n${}\r\n",
            channel.len(),
            channel,
            payload
        )
        .into_bytes();
        let flow = Flow {
            target,
            n,
            s,
            payload,
            window,
            ring_mask: ring_len - 1,
            rate,
            senders,
            expect: vec![0; n * s],
            hist: Histogram::new(),
            hist_across: Histogram::new(),
            hist_arrival: Histogram::new(),
            hist_across_arrival: Histogram::new(),
            arrival_ns: 0,
            arrival_stamps: false,
            realtime_at_epoch_ns: realtime_ns()
                .saturating_sub(Instant::now().saturating_duration_since(epoch).as_nanos() as u64),
            readers_per_line: match target {
                Target::Apollonion => (n + s.saturating_sub(1)) as u32,
                Target::Redis => n as u32,
            },
            servers: 1 + addrs.len(),
            epoch,
            measure_start: None,
            measure_start_ns: 0,
            last_done_ns: 0,
            deliveries: 0,
            all_deliveries: 0,
            overheard: 0,
            ready: 0,
            total_conns: roles.len(),
            last_progress: Instant::now(),
            redis_message_prefix,
            redis_publish_prefix,
            channel,
        };
        Ok(Driver {
            poll,
            events: Events::with_capacity(1024),
            conns: Vec::with_capacity(roles.len()),
            scratch: vec![0; MAX_CARRY + READ_SIZE],
            flow,
            addr,
            addrs: std::iter::once(addr).chain(addrs).collect(),
            stall_timeout: stall,
            confirm_accepts: roles.iter().any(|&(_, hs)| hs == Handshake::None),
            plan: roles,
            opened: 0,
            confirmed: 0,
            ready_list: Vec::with_capacity(1024),
        })
    }

    /// Opens every planned connection, a bounded number at a time, and
    /// waits until each is welcomed (or subscribed, or answered).
    fn connect_all(&mut self, deadline: Instant) -> Result<(), LoadError> {
        self.flow.last_progress = Instant::now();
        while self.flow.ready < self.plan.len() {
            while self.opened < self.plan.len() && self.unconfirmed() < CONNECT_INFLIGHT {
                self.open_next()?;
            }
            if self.confirm_accepts
                && self.flow.ready == self.opened
                && self.opened > self.confirmed
            {
                self.await_redis_clients(self.opened, deadline)?;
                self.confirmed = self.opened;
                continue;
            }
            let now = Instant::now();
            self.check_time(now, deadline, "connecting")?;
            self.poll_once(Some(POLL_SLICE.min(deadline - now)))?;
        }
        Ok(())
    }

    /// Connections opened whose acceptance by the server is not yet known.
    fn unconfirmed(&self) -> usize {
        if self.confirm_accepts {
            self.opened - self.confirmed
        } else {
            self.opened - self.flow.ready
        }
    }

    fn open_next(&mut self) -> Result<(), LoadError> {
        let idx = self.opened;
        let (role, handshake) = self.plan[idx];
        let addr = match role {
            Role::Receiver(r) => self.addrs[r % self.addrs.len()],
            Role::Sender(_) | Role::Idle => self.addr,
        };
        let mut stream = TcpStream::connect(addr).map_err(|e| {
            self.flow.fail(
                FailKind::Connect,
                format!("cannot connect to {addr} (connection {}): {e}", idx + 1),
            )
        })?;
        self.poll
            .registry()
            .register(
                &mut stream,
                Token(idx),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| {
                self.flow
                    .fail(FailKind::Io, format!("cannot register a socket: {e}"))
            })?;
        // In a paced run (`--rate`), a receiver's latency is also timed to
        // the kernel's arrival stamp. Not at full speed: there the tool is
        // the bottleneck, and `recvmsg` with a stamp costs it about 7 % of
        // its lines per second. Without a stamp (an old kernel), latency is
        // timed to the read alone.
        let stamped = matches!(role, Role::Receiver(_))
            && self.flow.rate > 0
            && enable_arrival_stamps(&stream).is_ok();
        self.conns.push(Conn {
            stream,
            stamped,
            role,
            handshake,
            connected: false,
            ready: false,
            carry: Vec::new(),
        });
        self.opened += 1;
        Ok(())
    }

    fn check_time(&self, now: Instant, deadline: Instant, what: &str) -> Result<(), LoadError> {
        if now >= deadline {
            return Err(self.flow.fail(
                FailKind::Timeout,
                format!("{what} did not finish before the run timeout"),
            ));
        }
        let quiet = now.saturating_duration_since(self.flow.last_progress);
        if quiet >= self.stall_timeout {
            let hint = match self.flow.target {
                Target::Apollonion => {
                    " (a daemon started without --rate 0 lets each sender send only 10 lines/s)"
                }
                Target::Redis => "",
            };
            return Err(self.flow.fail(
                FailKind::Stalled,
                format!(
                    "{what}: nothing arrived for {:.1} s{hint}",
                    quiet.as_secs_f64()
                ),
            ));
        }
        Ok(())
    }

    fn poll_once(&mut self, timeout: Option<Duration>) -> Result<(), LoadError> {
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(self.flow.fail(FailKind::Io, format!("poll failed: {e}")));
        }
        self.ready_list.clear();
        for event in self.events.iter() {
            let readable = event.is_readable() || event.is_read_closed() || event.is_error();
            let writable = event.is_writable() || event.is_write_closed();
            self.ready_list.push((event.token().0, readable, writable));
        }
        for i in 0..self.ready_list.len() {
            let (idx, readable, writable) = self.ready_list[i];
            self.on_event(idx, readable, writable)?;
        }
        Ok(())
    }

    fn on_event(&mut self, idx: usize, readable: bool, writable: bool) -> Result<(), LoadError> {
        if !self.conns[idx].connected {
            if !self.finish_connect(idx)? {
                return Ok(());
            }
            let conn = &mut self.conns[idx];
            if conn.handshake == Handshake::None {
                conn.ready = true;
                self.flow.ready += 1;
                self.flow.last_progress = Instant::now();
            }
        }
        if writable {
            if let Role::Sender(s) = self.conns[idx].role {
                self.flow.senders[s].blocked = false;
            }
        }
        if readable {
            self.read_conn(idx)?;
        }
        Ok(())
    }

    /// Settles a non-blocking connect; false while it is still under way.
    fn finish_connect(&mut self, idx: usize) -> Result<bool, LoadError> {
        let addr = self.addr;
        let conn = &mut self.conns[idx];
        let refused = |flow: &Flow, e: io::Error| {
            flow.fail(
                FailKind::Connect,
                format!("cannot connect to {addr} (connection {}): {e}", idx + 1),
            )
        };
        match conn.stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return Err(refused(&self.flow, e)),
        }
        match conn.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(e) => return Err(refused(&self.flow, e)),
        }
        conn.connected = true;
        // Lines are batched by hand; Nagle would only add delay to the
        // small writes of a rate-limited sender.
        let _ = conn.stream.set_nodelay(true);
        let request = match conn.handshake {
            Handshake::Welcome | Handshake::None => return Ok(true),
            Handshake::Ping => b"*1\r\n$4\r\nPING\r\n".to_vec(),
            Handshake::Subscribe => format!(
                "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{}\r\n",
                self.flow.channel.len(),
                self.flow.channel
            )
            .into_bytes(),
        };
        match conn.stream.write(&request) {
            Ok(n) if n == request.len() => Ok(true),
            // A fresh socket's send buffer always takes a few dozen bytes.
            Ok(_) | Err(_) => Err(self.flow.fail(
                FailKind::Disconnected,
                format!("connection {} could not send its first request", idx + 1),
            )),
        }
    }

    fn read_conn(&mut self, idx: usize) -> Result<(), LoadError> {
        let conn = &mut self.conns[idx];
        let flow = &mut self.flow;
        let scratch = &mut self.scratch;
        loop {
            let carried = conn.carry.len();
            scratch[..carried].copy_from_slice(&conn.carry);
            let buf = &mut scratch[carried..carried + READ_SIZE];
            let read = if conn.stamped {
                read_stamped(&conn.stream, buf)
            } else {
                conn.stream.read(buf).map(|n| (n, None))
            };
            let (n, stamp) = match read {
                Ok((0, _)) => {
                    let tail = String::from_utf8_lossy(&conn.carry).into_owned();
                    return Err(flow.fail(
                        FailKind::Disconnected,
                        format!(
                            "the server closed {}{}",
                            describe(conn.role, idx),
                            if tail.is_empty() {
                                String::new()
                            } else {
                                format!(" (last bytes: {tail:?})")
                            }
                        ),
                    ));
                }
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(flow.fail(
                        FailKind::Disconnected,
                        format!("reading {} failed: {e}", describe(conn.role, idx)),
                    ))
                }
            };
            let now = Instant::now();
            let now_ns = flow.ns_since_epoch(now);
            flow.arrival_ns = match stamp {
                Some(realtime) => {
                    flow.arrival_stamps = true;
                    realtime.saturating_sub(flow.realtime_at_epoch_ns)
                }
                None => now_ns,
            };
            let was_ready = conn.ready;
            let total = carried + n;
            let used = consume(
                flow,
                conn.role,
                conn.handshake,
                &mut conn.ready,
                &scratch[..total],
                now_ns,
            )?;
            if conn.ready && !was_ready {
                flow.last_progress = now;
            }
            if let Role::Receiver(_) = conn.role {
                flow.last_progress = now;
            }
            conn.carry.clear();
            conn.carry.extend_from_slice(&scratch[used..total]);
            if conn.carry.len() > MAX_CARRY {
                return Err(flow.fail(
                    FailKind::Protocol,
                    format!(
                        "{} sent more than {MAX_CARRY} bytes without a complete line or frame",
                        describe(conn.role, idx)
                    ),
                ));
            }
            // A short read means the socket was empty just now; with
            // edge-triggered polling, any byte arriving later raises a new
            // event, so the extra read that would only say WouldBlock is
            // saved (one syscall per receiver per server write).
            if n < READ_SIZE {
                return Ok(());
            }
        }
    }

    /// Writes as many lines as the window, the rate and the socket allow.
    fn pump_sender(&mut self, s: usize) -> Result<(), LoadError> {
        let idx = self.flow.n + s;
        let conn = &mut self.conns[idx];
        let flow = &mut self.flow;
        let apollonion = flow.target == Target::Apollonion;
        let line_len = if apollonion {
            flow.payload + 1
        } else {
            flow.redis_publish_prefix.len() + flow.payload + 2
        };
        let batch = (WRITE_BATCH / line_len).max(1) as u64;
        loop {
            let st = &mut flow.senders[s];
            if st.blocked {
                return Ok(());
            }
            if st.out_pos < st.out.len() {
                let failure = match conn.stream.write(&st.out[st.out_pos..]) {
                    Ok(0) => io::Error::from(io::ErrorKind::WriteZero),
                    Ok(k) => {
                        st.out_pos += k;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        st.blocked = true;
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => e,
                };
                return Err(flow.fail(
                    FailKind::Disconnected,
                    format!("writing to sender {s}'s connection failed: {failure}"),
                ));
            }
            st.out.clear();
            st.out_pos = 0;
            let mut allowed = st.limit.min(st.done + flow.window);
            let now = Instant::now();
            if let (true, Some(start)) = (flow.rate > 0, flow.measure_start) {
                let elapsed = now.saturating_duration_since(start).as_nanos();
                let due = (elapsed * flow.rate as u128 / 1_000_000_000) as u64 + 1;
                allowed = allowed.min(st.measure_from.saturating_add(due));
            }
            if st.next_seq >= allowed {
                return Ok(());
            }
            let count = (allowed - st.next_seq).min(batch);
            let ts = now.saturating_duration_since(flow.epoch).as_nanos() as u64;
            for _ in 0..count {
                if !apollonion {
                    st.out.extend_from_slice(&flow.redis_publish_prefix);
                }
                if !encode_payload(&mut st.out, s as u64, st.next_seq, ts, flow.payload) {
                    let seq = st.next_seq;
                    return Err(flow.fail(
                        FailKind::Config,
                        format!("line #{seq} does not fit in {} bytes", flow.payload),
                    ));
                }
                st.out
                    .extend_from_slice(if apollonion { b"\n" } else { b"\r\n" });
                st.next_seq += 1;
            }
        }
    }

    /// Sends and reads until every sender's lines up to its limit have
    /// reached every receiver. With `stop_at`, senders stop generating at
    /// that instant and the limit becomes what was generated.
    fn drive(&mut self, deadline: Instant, stop_at: Option<Instant>) -> Result<(), LoadError> {
        let mut stopped = stop_at.is_none();
        self.flow.last_progress = Instant::now();
        let phase_start = Instant::now();
        let done_at_start = self.min_done();
        let mut warned = false;
        loop {
            let now = Instant::now();
            if !warned && now >= phase_start + THROTTLE_CHECK_AFTER {
                warned = true;
                let secs = now.duration_since(phase_start).as_secs_f64();
                let per_sec = (self.min_done() - done_at_start) as f64 / secs;
                let wanted = self.flow.rate == 0 || self.flow.rate as f64 > 2.0 * per_sec;
                let all_senders = per_sec * self.flow.s as f64;
                if wanted
                    && all_senders < THROTTLE_SUSPECT
                    && self.flow.target == Target::Apollonion
                {
                    eprintln!(
                        "loadgen: warning: only {per_sec:.0} lines/s per sender get through; \
                         an Apollonion daemon started without --rate 0 lets each client \
                         send only --rate lines/s"
                    );
                }
            }
            if let (false, Some(end)) = (stopped, stop_at) {
                if now >= end {
                    for st in &mut self.flow.senders {
                        st.limit = st.next_seq;
                    }
                    stopped = true;
                }
            }
            for s in 0..self.flow.s {
                self.pump_sender(s)?;
            }
            if self.flow.finished() {
                return Ok(());
            }
            self.check_time(now, deadline, "sending")?;
            let mut wait = POLL_SLICE.min(deadline.saturating_duration_since(now));
            if let (false, Some(end)) = (stopped, stop_at) {
                wait = wait.min(end.saturating_duration_since(now));
            }
            if let (true, Some(start)) = (self.flow.rate > 0, self.flow.measure_start) {
                let flow = &self.flow;
                for st in &flow.senders {
                    let open = st.next_seq < st.limit.min(st.done + flow.window);
                    if open && !st.blocked {
                        let k = st.next_seq.saturating_sub(st.measure_from) as u128;
                        let due_ns = k * 1_000_000_000 / flow.rate as u128;
                        let due = start + Duration::from_nanos(due_ns as u64);
                        wait = wait.min(due.saturating_duration_since(now));
                    }
                }
            }
            self.poll_once(Some(wait))?;
        }
    }

    /// Lines of the slowest sender that every receiver has.
    fn min_done(&self) -> u64 {
        self.flow
            .senders
            .iter()
            .map(|st| st.done)
            .min()
            .unwrap_or(0)
    }

    /// Keeps reading for a little while after the last expected delivery,
    /// so that an extra or duplicated line fails the run.
    fn linger(&mut self, linger: Duration, deadline: Instant) -> Result<(), LoadError> {
        let until = (Instant::now() + linger).min(deadline);
        self.idle_until(until)?;
        let flow = &self.flow;
        if flow.target == Target::Redis {
            if let Some(s) = flow.senders.iter().position(|st| st.acks != st.limit) {
                let st = &flow.senders[s];
                return Err(flow.fail(
                    FailKind::Protocol,
                    format!(
                        "sender {s} got {} PUBLISH replies for {} lines",
                        st.acks, st.limit
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Waits until Redis reports at least `clients` connections besides
    /// the one asking, reading the idle ones meanwhile.
    fn await_redis_clients(&mut self, clients: usize, deadline: Instant) -> Result<(), LoadError> {
        loop {
            let seen = redis_connected_clients(self.addr).map_err(|e| {
                self.flow.fail(
                    FailKind::Protocol,
                    format!("INFO clients on {} failed: {e}", self.addr),
                )
            })?;
            if seen > clients as u64 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.flow.fail(
                    FailKind::Timeout,
                    format!(
                        "redis reports {} of {clients} connections",
                        seen.saturating_sub(1)
                    ),
                ));
            }
            self.idle_for(Duration::from_millis(50))?;
        }
    }

    fn idle_for(&mut self, duration: Duration) -> Result<(), LoadError> {
        self.idle_until(Instant::now() + duration)
    }

    /// Reads whatever arrives (checking it as usual) until `until`.
    fn idle_until(&mut self, until: Instant) -> Result<(), LoadError> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            self.poll_once(Some((until - now).min(POLL_SLICE)))?;
        }
    }
}

/// Asks the kernel to stamp each arrival on `stream` with the time it was
/// queued (`SO_TIMESTAMPNS`, `CLOCK_REALTIME`).
fn enable_arrival_stamps(stream: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a descriptor the stream owns, with a pointer to
    // a live c_int and its exact size.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A `read` that also returns the kernel's arrival stamp, in ns of
/// `CLOCK_REALTIME`. On TCP it is the stamp of the last arrival the read
/// took bytes from.
fn read_stamped(stream: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    // Room for one `timespec` message and then some, u64-aligned as
    // `cmsghdr` needs.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no buffers).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, all live and
    // writable for their stated lengths during the call.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* walk stays within `msg_controllen` bytes of
    // `control`, which the kernel filled; the timespec is read unaligned.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET
                && (*header).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                stamp = Some(timespec_ns(std::ptr::read_unaligned(
                    libc::CMSG_DATA(header).cast(),
                )));
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    Ok((n as usize, stamp))
}

/// `connected_clients` from Redis's `INFO clients`, the asking connection
/// included.
fn redis_connected_clients(addr: SocketAddr) -> io::Result<u64> {
    let patience = Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, patience)?;
    stream.set_read_timeout(Some(patience))?;
    stream.write_all(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let info = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_resp(&buf).map_err(io::Error::other)? {
            Some((Resp::Bulk(Some(text)), _)) => break text,
            Some((other, _)) => return Err(io::Error::other(format!("{other:?}"))),
            None => {}
        }
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no connected_clients in INFO clients"))
}

fn describe(role: Role, idx: usize) -> String {
    match role {
        Role::Receiver(r) => format!("receiver {r}'s connection"),
        Role::Sender(s) => format!("sender {s}'s connection"),
        Role::Idle => format!("connection {}", idx + 1),
    }
}

/// Handles the complete lines or frames at the start of `data` and returns
/// how many bytes they took; the rest is an incomplete tail.
fn consume(
    flow: &mut Flow,
    role: Role,
    handshake: Handshake,
    ready: &mut bool,
    data: &[u8],
    now_ns: u64,
) -> Result<usize, LoadError> {
    match flow.target {
        Target::Apollonion => consume_lines(flow, role, ready, data, now_ns),
        Target::Redis => consume_resp(flow, role, handshake, ready, data, now_ns),
    }
}

fn consume_lines(
    flow: &mut Flow,
    role: Role,
    ready: &mut bool,
    data: &[u8],
    now_ns: u64,
) -> Result<usize, LoadError> {
    let receiver = match role {
        Role::Receiver(r) if *ready => Some(r),
        _ => None,
    };
    let listener = match role {
        Role::Sender(s) if *ready => Some(s),
        _ => None,
    };
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        if receiver.is_some() || listener.is_some() {
            if let Some((start, end)) = chat_line_fast(rest, flow.payload) {
                match (receiver, listener) {
                    (Some(r), _) => flow.deliver(r, &rest[start..end], now_ns)?,
                    (None, Some(s)) => flow.overhear(s, &rest[start..end], now_ns)?,
                    (None, None) => {}
                }
                pos += end + 2;
                continue;
            }
        }
        let Some(nl) = find_byte(rest, b'\n') else {
            break;
        };
        pos += nl + 1;
        let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
        apollonion_line(flow, role, ready, line, now_ns)?;
        if receiver.is_none() && *ready {
            if let Role::Receiver(_) = role {
                // Just welcomed: the rest of this buffer may hold chat.
                return consume_lines(flow, role, ready, &data[pos..], now_ns).map(|n| pos + n);
            }
        }
    }
    Ok(pos)
}

/// Finds a whole chat line of the expected size without scanning its
/// payload: `<nick>: <payload>\r\n`.
#[inline]
fn chat_line_fast(buf: &[u8], payload: usize) -> Option<(usize, usize)> {
    match buf.first()? {
        b'*' | b'!' | b'(' => return None,
        _ => {}
    }
    // Nicknames are at most 24 bytes and never contain ':'.
    let colon = buf.iter().take(32).position(|&b| b == b':')?;
    let start = colon + 2;
    let end = start + payload;
    if buf.len() >= end + 2 && buf[colon + 1] == b' ' && buf[end] == b'\r' && buf[end + 1] == b'\n'
    {
        Some((start, end))
    } else {
        None
    }
}

/// One complete Apollonion line that the fast path did not take.
fn apollonion_line(
    flow: &mut Flow,
    role: Role,
    ready: &mut bool,
    line: &[u8],
    now_ns: u64,
) -> Result<(), LoadError> {
    let text = || String::from_utf8_lossy(line).into_owned();
    if line.starts_with(b"! ") {
        let t = text();
        let hint = if t.contains("too many connections") {
            " (start the daemon with --max-per-ip 0)"
        } else if t.contains("server full") {
            " (start the daemon with a larger --max-clients)"
        } else if t.contains("line too long") {
            " (start the daemon with a larger --max-line, or use a smaller --payload)"
        } else {
            ""
        };
        let kind = if *ready {
            FailKind::Protocol
        } else {
            FailKind::Refused
        };
        return Err(flow.fail(kind, format!("the server said {t:?}{hint}")));
    }
    if !*ready {
        if line.starts_with(b"* welcome ") {
            *ready = true;
            flow.ready += 1;
            return Ok(());
        }
        if line.starts_with(b"* server full") {
            return Err(flow.fail(
                FailKind::Refused,
                format!(
                    "the server put a client in its waiting line ({:?}); \
                     start it with a larger --max-clients",
                    text()
                ),
            ));
        }
        if line.starts_with(b"* ") {
            return Ok(());
        }
        return Err(flow.fail(
            FailKind::Protocol,
            format!("unexpected line before the welcome: {:?}", text()),
        ));
    }
    if line.starts_with(b"* ") {
        if line == b"* server shutting down" {
            return Err(flow.fail(FailKind::Disconnected, "the server is shutting down".into()));
        }
        // A sender is a reader too: a line skipped for it never completes.
        if matches!(role, Role::Receiver(_) | Role::Sender(_)) && contains(line, b" lines skipped")
        {
            return Err(flow.fail(
                FailKind::Loss,
                format!("{}: the server said {:?}", describe(role, 0), text()),
            ));
        }
        return Ok(());
    }
    if line.starts_with(b"(dm) ") {
        return Ok(());
    }
    // `nick: payload`: the payload after the first ": ".
    let payload = find_byte(line, b':')
        .filter(|&colon| line.get(colon + 1) == Some(&b' '))
        .map(|colon| &line[colon + 2..]);
    match (role, payload) {
        (Role::Receiver(r), Some(payload)) => flow.deliver(r, payload, now_ns),
        (Role::Receiver(r), None) => Err(flow.fail(
            FailKind::Protocol,
            format!("receiver {r} got an unexpected line: {:?}", text()),
        )),
        // Another sender's line the fast path did not frame.
        (Role::Sender(s), Some(payload)) => flow.overhear(s, payload, now_ns),
        // Idle clients hear other people's chat: not counted.
        (Role::Sender(_), None) | (Role::Idle, _) => Ok(()),
    }
}

enum Fast {
    Message(usize, usize),
    Incomplete,
    Other,
}

/// Recognises `*3 $7 message $LEN channel $LEN payload` without allocating.
#[inline]
fn redis_message(buf: &[u8], prefix: &[u8]) -> Fast {
    let plen = prefix.len();
    if buf.len() < plen {
        return if prefix.starts_with(buf) {
            Fast::Incomplete
        } else {
            Fast::Other
        };
    }
    if &buf[..plen] != prefix {
        return Fast::Other;
    }
    let mut i = plen;
    let mut len = 0usize;
    while i < buf.len() && buf[i].is_ascii_digit() {
        len = len * 10 + (buf[i] - b'0') as usize;
        i += 1;
        if i - plen > 9 {
            return Fast::Other;
        }
    }
    if i + 2 > buf.len() {
        return Fast::Incomplete;
    }
    if i == plen || buf[i] != b'\r' || buf[i + 1] != b'\n' {
        return Fast::Other;
    }
    let start = i + 2;
    let end = start + len;
    if end + 2 > buf.len() {
        return Fast::Incomplete;
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Fast::Other;
    }
    Fast::Message(start, end)
}

fn consume_resp(
    flow: &mut Flow,
    role: Role,
    handshake: Handshake,
    ready: &mut bool,
    data: &[u8],
    now_ns: u64,
) -> Result<usize, LoadError> {
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        if *ready {
            match role {
                Role::Receiver(r) => match redis_message(rest, &flow.redis_message_prefix) {
                    Fast::Message(start, end) => {
                        flow.deliver(r, &rest[start..end], now_ns)?;
                        pos += end + 2;
                        continue;
                    }
                    Fast::Incomplete => break,
                    Fast::Other => {}
                },
                Role::Sender(s) if rest[0] == b':' => {
                    let Some(nl) = find_byte(rest, b'\n') else {
                        break;
                    };
                    let digits = rest[1..nl].strip_suffix(b"\r").unwrap_or(&rest[1..nl]);
                    match parse_decimal(digits, 0) {
                        Some((count, used)) if used == digits.len() => ack(flow, s, count)?,
                        _ => {
                            return Err(flow.fail(
                                FailKind::Protocol,
                                format!(
                                    "sender {s} got a bad reply: {:?}",
                                    String::from_utf8_lossy(&rest[..nl])
                                ),
                            ))
                        }
                    }
                    pos += nl + 1;
                    continue;
                }
                _ => {}
            }
        }
        let (frame, used) = match parse_resp(rest) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break,
            Err(why) => {
                let shown = String::from_utf8_lossy(&rest[..rest.len().min(60)]).into_owned();
                return Err(flow.fail(
                    FailKind::Protocol,
                    format!("not RESP ({why}); is this a Redis server? It sent {shown:?}"),
                ));
            }
        };
        pos += used;
        resp_frame(flow, role, handshake, ready, frame, now_ns)?;
    }
    Ok(pos)
}

/// A `PUBLISH` reply: how many subscribers the line reached.
fn ack(flow: &mut Flow, s: usize, count: u64) -> Result<(), LoadError> {
    if count < flow.n as u64 {
        let seq = flow.senders[s].acks;
        return Err(flow.fail(
            FailKind::Loss,
            format!(
                "PUBLISH of line #{seq} of sender {s} reached {count} of {} subscribers",
                flow.n
            ),
        ));
    }
    flow.senders[s].acks += 1;
    Ok(())
}

/// A RESP frame the fast paths did not take.
fn resp_frame(
    flow: &mut Flow,
    role: Role,
    handshake: Handshake,
    ready: &mut bool,
    frame: Resp,
    now_ns: u64,
) -> Result<(), LoadError> {
    if let Resp::Error(text) = &frame {
        let kind = if *ready {
            FailKind::Protocol
        } else {
            FailKind::Refused
        };
        return Err(flow.fail(
            kind,
            format!("redis said {:?}", String::from_utf8_lossy(text)),
        ));
    }
    if !*ready {
        let ok = match (handshake, &frame) {
            (Handshake::Ping, Resp::Simple(s)) => s == b"PONG",
            (Handshake::Subscribe, Resp::Array(items)) => matches!(
                items.as_slice(),
                [Resp::Bulk(Some(kind)), Resp::Bulk(Some(ch)), Resp::Int(_)]
                    if kind == b"subscribe" && ch == flow.channel.as_bytes()
            ),
            _ => false,
        };
        if !ok {
            return Err(flow.fail(
                FailKind::Protocol,
                format!("unexpected reply before the handshake completed: {frame:?}"),
            ));
        }
        *ready = true;
        flow.ready += 1;
        return Ok(());
    }
    match (role, frame) {
        (Role::Receiver(r), Resp::Array(items)) => match items.as_slice() {
            [Resp::Bulk(Some(kind)), Resp::Bulk(Some(ch)), Resp::Bulk(Some(payload))]
                if kind == b"message" && ch == flow.channel.as_bytes() =>
            {
                flow.deliver(r, payload, now_ns)
            }
            _ => Err(flow.fail(
                FailKind::Protocol,
                format!("receiver {r} got an unexpected frame: {items:?}"),
            )),
        },
        (Role::Sender(s), Resp::Int(count)) if count >= 0 => ack(flow, s, count as u64),
        (Role::Idle, _) => Ok(()),
        (role, frame) => Err(flow.fail(
            FailKind::Protocol,
            format!(
                "{} got an unexpected frame: {frame:?}",
                describe(role, usize::MAX)
            ),
        )),
    }
}

/// Just enough of RESP2 for handshakes and anything unexpected.
#[derive(Debug)]
enum Resp {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

/// Parses one frame; `Ok(None)` when `buf` holds only part of it.
fn parse_resp(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some(nl) = find_byte(buf, b'\n') else {
        return Ok(None);
    };
    if nl < 1 || buf[nl - 1] != b'\r' {
        return Err("a header not ended by CRLF".into());
    }
    let head = &buf[1..nl - 1];
    let after = nl + 1;
    let number = || -> Result<i64, String> {
        std::str::from_utf8(head)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(head)))
    };
    match first {
        b'+' => Ok(Some((Resp::Simple(head.to_vec()), after))),
        b'-' => Ok(Some((Resp::Error(head.to_vec()), after))),
        b':' => Ok(Some((Resp::Int(number()?), after))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Resp::Bulk(None), after)));
            }
            let end = after + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("a bulk string not ended by CRLF".into());
            }
            Ok(Some((Resp::Bulk(Some(buf[after..end].to_vec())), end + 2)))
        }
        b'*' => {
            let count = number()?;
            let mut items = Vec::new();
            let mut pos = after;
            for _ in 0..count.max(0) {
                match parse_resp(&buf[pos..])? {
                    Some((item, used)) => {
                        items.push(item);
                        pos += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Resp::Array(items), pos)))
        }
        other => Err(format!("unknown frame type {:?}", other as char)),
    }
}

/// `<sender> <seq> <timestamp-ns>` followed by `x` padding; anything else
/// is not a line this tool sent.
#[inline]
fn parse_payload(p: &[u8]) -> Option<(u64, u64, u64)> {
    let (s, seq, i) = parse_origin(p)?;
    if p.get(i) != Some(&b' ') {
        return None;
    }
    let (ts, i) = parse_decimal(p, i + 1)?;
    if !is_padding(&p[i..]) {
        return None;
    }
    Some((s, seq, ts))
}

/// The sender and sequence number at the start of a payload, and where
/// they end.
#[inline]
fn parse_origin(p: &[u8]) -> Option<(u64, u64, usize)> {
    let (s, i) = parse_decimal(p, 0)?;
    if p.get(i) != Some(&b' ') {
        return None;
    }
    let (seq, i) = parse_decimal(p, i + 1)?;
    Some((s, seq, i))
}

#[inline]
fn parse_decimal(p: &[u8], mut i: usize) -> Option<(u64, usize)> {
    let start = i;
    let mut value: u64 = 0;
    while let Some(&b) = p.get(i) {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
        i += 1;
    }
    if i == start || i - start > 19 {
        None
    } else {
        Some((value, i))
    }
}

#[inline]
fn is_padding(p: &[u8]) -> bool {
    const XS: u64 = u64::from_ne_bytes([b'x'; 8]);
    let mut chunks = p.chunks_exact(8);
    for chunk in &mut chunks {
        if u64::from_ne_bytes(chunk.try_into().unwrap()) != XS {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == b'x')
}

/// Appends one payload of exactly `payload` bytes; false if the numbers do
/// not fit.
fn encode_payload(out: &mut Vec<u8>, s: u64, seq: u64, ts: u64, payload: usize) -> bool {
    let start = out.len();
    push_decimal(out, s);
    out.push(b' ');
    push_decimal(out, seq);
    out.push(b' ');
    push_decimal(out, ts);
    if out.len() - start > payload {
        out.truncate(start);
        return false;
    }
    out.resize(start + payload, b'x');
    true
}

fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn decimal_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 10 {
        value /= 10;
        len += 1;
    }
    len
}

/// First `needle` in `hay`, eight bytes at a time.
#[inline]
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut i = 0;
    while i + 8 <= hay.len() {
        let word = u64::from_le_bytes(hay[i..i + 8].try_into().unwrap()) ^ pattern;
        // A zero byte in `word` is a match. Borrows only run upwards, so the
        // lowest flagged byte is always a true match.
        let found = word.wrapping_sub(LO) & !word & HI;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay[i..].iter().position(|&b| b == needle).map(|p| i + p)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow_for(receivers: usize, senders: usize, payload: usize) -> Flow {
        let mut cfg = LoadConfig::new(Target::Apollonion, Target::Apollonion.default_addr());
        cfg.receivers = receivers;
        cfg.senders = senders;
        cfg.payload = payload;
        cfg.window = 4;
        Driver::new(Setup::Load(&cfg), Instant::now()).unwrap().flow
    }

    /// A flow whose sender 0 has sent `sent` lines, all measured.
    fn measured_flow(receivers: usize, senders: usize, sent: u64) -> Flow {
        let mut flow = flow_for(receivers, senders, 40);
        flow.senders[0].next_seq = sent;
        flow.senders[0].measure_from = 0;
        flow
    }

    fn line(s: u64, seq: u64, payload: usize) -> Vec<u8> {
        let mut out = Vec::new();
        assert!(encode_payload(&mut out, s, seq, 1, payload));
        out
    }

    #[test]
    fn deliveries_complete_lines_and_catch_gaps_and_repeats() {
        let mut flow = measured_flow(2, 1, 3);
        flow.deliver(0, &line(0, 0, 40), 10).unwrap();
        assert_eq!(flow.senders[0].done, 0, "one of two receivers has it");
        flow.deliver(1, &line(0, 0, 40), 10).unwrap();
        assert_eq!(flow.senders[0].done, 1);
        assert_eq!(flow.deliveries, 2);
        let gap = flow.deliver(0, &line(0, 2, 40), 10).unwrap_err();
        assert_eq!(gap.kind, FailKind::Loss);
        let again = flow.deliver(1, &line(0, 0, 40), 10).unwrap_err();
        assert_eq!(again.kind, FailKind::Reorder);
        let unsent = flow_for(1, 1, 40)
            .deliver(0, &line(0, 0, 40), 10)
            .unwrap_err();
        assert_eq!(unsent.kind, FailKind::Corrupt);
        let short = flow.deliver(0, &line(0, 1, 39), 10).unwrap_err();
        assert_eq!(short.kind, FailKind::Corrupt);
    }

    #[test]
    fn on_apollonion_a_line_completes_once_the_other_senders_have_it_too() {
        let mut flow = measured_flow(1, 2, 1);
        assert_eq!(
            flow.readers_per_line, 2,
            "the receiver and the other sender"
        );
        flow.deliver(0, &line(0, 0, 40), 10).unwrap();
        assert_eq!(flow.senders[0].done, 0, "sender 1 has not read it yet");
        flow.overhear(1, &line(0, 0, 40), 20).unwrap();
        assert_eq!(flow.senders[0].done, 1);
        assert_eq!(flow.overheard, 1);
        let own = flow.overhear(0, &line(0, 0, 40), 30).unwrap_err();
        assert_eq!(own.kind, FailKind::Corrupt, "nobody hears their own line");
        let mut ready = true;
        let skipped = consume_lines(
            &mut flow,
            Role::Sender(1),
            &mut ready,
            b"* 3 lines skipped, you were too slow to keep up\r\n",
            40,
        )
        .unwrap_err();
        assert_eq!(skipped.kind, FailKind::Loss, "a sender is a reader too");
        let mut redis = LoadConfig::new(Target::Redis, Target::Redis.default_addr());
        redis.receivers = 1;
        redis.senders = 2;
        let redis = Driver::new(Setup::Load(&redis), Instant::now())
            .unwrap()
            .flow;
        assert_eq!(
            redis.readers_per_line, 1,
            "Redis publishers do not subscribe"
        );
    }

    #[test]
    fn with_several_servers_the_receivers_off_the_senders_server_are_timed_apart() {
        let mut cfg = LoadConfig::new(Target::Apollonion, Target::Apollonion.default_addr());
        cfg.receivers = 4;
        cfg.more_addrs = vec!["127.0.0.1:1".parse().unwrap()];
        let mut flow = Driver::new(Setup::Load(&cfg), Instant::now()).unwrap().flow;
        flow.senders[0].next_seq = 1;
        flow.senders[0].measure_from = 0;
        // Receivers 0 and 2 share the senders' server, 1 and 3 do not.
        for r in 0..4 {
            flow.deliver(r, &line(0, 0, cfg.payload), 1_000_000 * (r as u64 + 2))
                .unwrap();
        }
        assert_eq!(flow.hist.summary().samples, 4);
        let across = flow.hist_across.summary();
        assert_eq!(across.samples, 2);
        assert!(across.max > Duration::from_millis(3), "{across:?}");
        let alone = flow_for(2, 1, 40);
        assert_eq!(alone.servers, 1);
    }

    #[test]
    fn cpu_times_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 1 0";
        assert_eq!(cpu_ticks_in_stat(stat), Some(42));
        assert_eq!(cpu_ticks_in_stat("4242 (x) S 1"), None);
        let own = server_cpu_ns(std::process::id()).unwrap();
        assert!(own < 3_600 * 1_000_000_000, "{own}");
    }

    #[test]
    fn a_line_is_also_timed_to_its_arrival_stamp_never_later_than_its_read() {
        let mut flow = measured_flow(2, 1, 2);
        flow.arrival_stamps = true;
        // Sent at 1 ns; arrived at 2 ms, read at 5 ms.
        flow.arrival_ns = 2_000_000;
        flow.deliver(0, &line(0, 0, 40), 5_000_000).unwrap();
        // A stamp after the read (a clock step) counts as the read.
        flow.arrival_ns = 9_000_000;
        flow.deliver(1, &line(0, 0, 40), 5_000_000).unwrap();
        let read = flow.hist.summary();
        let arrival = flow.hist_arrival.summary();
        assert_eq!((read.samples, arrival.samples), (2, 2));
        assert!(arrival.p50 < Duration::from_micros(2_100), "{arrival:?}");
        assert!(arrival.p50 > Duration::from_micros(1_900), "{arrival:?}");
        assert_eq!(arrival.max, read.max);
    }

    #[test]
    fn the_kernel_stamps_an_arrival_between_its_write_and_its_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut writer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // Left blocking, so each read below waits for its bytes.
        let reader = TcpStream::from_std(listener.accept().unwrap().0);
        enable_arrival_stamps(&reader).unwrap();
        // The kernel turns stamping on for the whole machine a moment
        // after the first socket asks (from a work queue), so the first
        // arrivals may come unstamped: the run's first reads fall back to
        // the read's own time. Within a second every arrival is stamped.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let before = realtime_ns();
            writer.write_all(b"hello\r\n").unwrap();
            let mut buf = [0; 64];
            let (n, stamp) = read_stamped(&reader, &mut buf).unwrap();
            let after = realtime_ns();
            assert_eq!(&buf[..n], b"hello\r\n");
            if let Some(stamp) = stamp {
                assert!(
                    before <= stamp && stamp <= after,
                    "{before} <= {stamp} <= {after}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no arrival stamp within a second"
            );
        }
    }

    #[test]
    fn apollonion_lines_are_split_across_reads_and_notices_ignored() {
        let mut flow = flow_for(1, 1, 40);
        flow.senders[0].next_seq = 2;
        flow.senders[0].measure_from = 0;
        let mut data = b"* welcome guest-1 - hi\r\n* guest-2 joined #lobby\r\nguest-2: ".to_vec();
        data.extend(line(0, 0, 40));
        data.extend(b"\r\nguest-2: ");
        data.extend(line(0, 1, 40));
        data.extend(b"\r\n");
        let mut ready = false;
        let role = Role::Receiver(0);
        let cut = data.len() - 10;
        let used = consume_lines(&mut flow, role, &mut ready, &data[..cut], 5).unwrap();
        assert!(ready);
        assert_eq!(flow.ready, 1);
        assert_eq!(flow.all_deliveries, 1);
        let used2 = consume_lines(&mut flow, role, &mut ready, &data[used..], 5).unwrap();
        assert_eq!(used + used2, data.len());
        assert_eq!(flow.all_deliveries, 2);
        assert_eq!(flow.senders[0].done, 2);
        let skipped = consume_lines(
            &mut flow,
            role,
            &mut ready,
            b"* 3 lines skipped, you were too slow to keep up\r\n",
            5,
        )
        .unwrap_err();
        assert_eq!(skipped.kind, FailKind::Loss);
    }

    #[test]
    fn a_refusal_reports_the_servers_words() {
        let mut flow = flow_for(1, 1, 40);
        let mut ready = false;
        let err = consume_lines(
            &mut flow,
            Role::Receiver(0),
            &mut ready,
            b"! too many connections from your address\r\n",
            0,
        )
        .unwrap_err();
        assert_eq!(err.kind, FailKind::Refused);
        assert!(err.message.contains("too many connections"), "{err}");
    }

    #[test]
    fn find_byte_agrees_with_a_plain_search() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
        for start in 0..40 {
            for needle in [0u8, 10, 13, 128, 250, 255] {
                let hay = &data[start..];
                assert_eq!(
                    find_byte(hay, needle),
                    hay.iter().position(|&b| b == needle),
                    "start {start} needle {needle}"
                );
            }
        }
    }

    #[test]
    fn payload_round_trips_and_rejects_tampering() {
        let mut out = Vec::new();
        assert!(encode_payload(&mut out, 3, 12345, 987654321, 64));
        assert_eq!(out.len(), 64);
        assert_eq!(parse_payload(&out), Some((3, 12345, 987654321)));
        out[60] = b'y';
        assert_eq!(parse_payload(&out), None);
        let mut short = Vec::new();
        assert!(!encode_payload(&mut short, 3, 12345, 987654321, 10));
        assert!(short.is_empty());
    }

    #[test]
    fn histogram_buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..1_000_000u64)
            .step_by(37)
            .chain([u64::MAX / 3, u64::MAX])
        {
            let b = Histogram::bucket(v);
            assert!(b >= last && b < HIST_BUCKETS);
            last = b;
            let mid = Histogram::value(b);
            let err = mid.abs_diff(v) as f64 / v.max(1) as f64;
            assert!(err < 0.02 || v < 128, "v {v} mid {mid}");
        }
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v * 1000);
        }
        let s = h.summary();
        assert!((s.p50.as_nanos() as f64 - 500_000.0).abs() < 10_000.0);
        assert!((s.p99.as_nanos() as f64 - 990_000.0).abs() < 20_000.0);
        assert_eq!(s.max, Duration::from_micros(1000));
    }

    #[test]
    fn redis_message_fast_path_handles_split_frames() {
        let prefix = b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$".to_vec();
        let frame = b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$4\r\nabcd\r\n";
        for cut in 0..frame.len() {
            assert!(matches!(
                redis_message(&frame[..cut], &prefix),
                Fast::Incomplete
            ));
        }
        assert!(matches!(
            redis_message(frame, &prefix),
            Fast::Message(s, e) if &frame[s..e] == b"abcd"
        ));
        assert!(matches!(redis_message(b":1\r\n", &prefix), Fast::Other));
    }

    #[test]
    fn resp_parser_reads_a_subscription_confirmation() {
        let frame = b"*3\r\n$9\r\nsubscribe\r\n$5\r\nbench\r\n:1\r\n";
        let (parsed, used) = parse_resp(frame).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert!(matches!(parsed, Resp::Array(ref v) if v.len() == 3));
        assert!(parse_resp(&frame[..frame.len() - 1]).unwrap().is_none());
    }

    #[test]
    fn chat_fast_path_takes_only_whole_lines_of_the_right_size() {
        let line = b"guest-12: 0123456789\r\nrest";
        assert_eq!(chat_line_fast(line, 10), Some((10, 20)));
        assert_eq!(chat_line_fast(line, 9), None);
        assert_eq!(chat_line_fast(&line[..21], 10), None);
        assert_eq!(chat_line_fast(b"* guest-1 joined #lobby\r\n", 10), None);
    }
}
