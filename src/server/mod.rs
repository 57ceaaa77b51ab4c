//! The reactor: one `mio::Poll`, one thread, every socket.
//!
//! Each loop turn: collect readiness, accept, read and hand lines to the
//! chat (which only queues output), flush a slice of the connections that
//! got output (see `flush_list`), then close what must close. Closing last
//! means a freed slab key can never receive a stale event from the same
//! turn.

mod acceptor;
mod admission;
mod closing;
mod cluster_io;
mod cluster_turn;
mod connections;
mod control;
mod fd_limit;
mod flush_list;
mod input;
mod metrics_endpoint;
pub mod out_queue;
mod output;
mod rate;
mod session;
mod shutdown;
mod skip_warning;
mod socket_tuning;
mod status_report;
mod telemetry;
mod timeouts;
mod timers;

pub use control::{ServerStats, ShutdownHandle, StatsHandle, Stopped};

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;

use crate::chat::{Chat, ChatConfig};
use crate::cluster::state::{Cluster, ClusterSettings};
use crate::Config;
use acceptor::Acceptor;
use cluster_io::ClusterIo;
use connections::Connections;
use metrics_endpoint::MetricsEndpoint;
use rate::RateLimit;
use session::Rules;
use shutdown::{ShutdownState, SHUTDOWN_SIGNALS};
use telemetry::Telemetry;
use timers::Timers;

/// What a poll token stands for. Tokens below `FIRST_CLIENT` are the
/// server's own sockets, one each; clients take the rest, except for the
/// metrics port's connections, which have a range of their own far above
/// any client key. New socket kinds (a cluster link) get a fixed token from
/// the reserved range and a variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Listener,
    Signals,
    Waker,
    Redis,
    MetricsListener,
    MetricsConnection(usize),
    Client(usize),
}

impl Source {
    const LISTENER: Token = Token(0);
    const SIGNALS: Token = Token(1);
    const WAKER: Token = Token(2);
    const METRICS_LISTENER: Token = Token(3);
    const REDIS_COMMAND: Token = Token(4);
    const REDIS_SUBSCRIBER: Token = Token(5);
    /// Tokens 6 to 15 are reserved for the server's own sockets to come.
    const FIRST_CLIENT: usize = 16;
    /// Metrics connection `k` has token `FIRST_METRICS_CONNECTION + k`.
    /// Client keys never come near: each is an open descriptor.
    const FIRST_METRICS_CONNECTION: usize = usize::MAX / 2;

    fn of(token: Token) -> Option<Source> {
        let metrics = Self::FIRST_METRICS_CONNECTION
            ..Self::FIRST_METRICS_CONNECTION + crate::metrics::MAX_CONNECTIONS;
        match token {
            Self::LISTENER => Some(Source::Listener),
            Self::SIGNALS => Some(Source::Signals),
            Self::WAKER => Some(Source::Waker),
            Self::REDIS_COMMAND | Self::REDIS_SUBSCRIBER => Some(Source::Redis),
            Self::METRICS_LISTENER => Some(Source::MetricsListener),
            Token(n) if metrics.contains(&n) => Some(Source::MetricsConnection(
                n - Self::FIRST_METRICS_CONNECTION,
            )),
            Token(n) if n >= Self::FIRST_METRICS_CONNECTION => None,
            Token(n) => n.checked_sub(Self::FIRST_CLIENT).map(Source::Client),
        }
    }

    fn client_token(key: usize) -> Token {
        Token(key + Self::FIRST_CLIENT)
    }
}

/// Bytes read from one connection per loop turn, so a flooder cannot starve
/// the others; what is left is read next turn.
const READ_BUDGET: usize = 64 * 1024;
/// Size of one read; also the most undecoded input a connection holds.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes written to one connection per loop turn, so one fast reader of a
/// long queue cannot hold up the turn; the rest goes next turn. Never less
/// than twice what a turn may queue for a reader (see `input.rs`), or a
/// fast reader with a big `--max-outbuf` would fall behind by design.
const WRITE_BUDGET: usize = 256 * 1024;
/// Connections accepted per loop turn, so a connect storm cannot starve
/// clients already in.
const ACCEPT_BUDGET: usize = 256;
/// The longest a server in cluster mode keeps new connections in the
/// backlog at start, waiting for its first guest numbers from Redis.
const CLUSTER_ADMISSION_HOLD: Duration = Duration::from_secs(2);
/// Descriptors the process needs besides clients: listener, poller, signal
/// pipe, waker, standard streams.
const RESERVED_DESCRIPTORS: u64 = 16;

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Listen {
        addr: SocketAddr,
        source: io::Error,
    },
    Setup {
        what: &'static str,
        source: io::Error,
    },
    Metrics {
        addr: SocketAddr,
        source: io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            StartError::Setup { what, source } => write!(f, "cannot set up {what}: {source}"),
            StartError::Metrics { addr, source } => {
                write!(f, "cannot serve metrics on {addr}: {source}")
            }
        }
    }
}

impl std::error::Error for StartError {}

/// The daemon: bind first (so the caller learns the address), then run.
///
/// Each part owns its state and is reached through its own small API: the
/// acceptor (listener, back-off, counters), the connections (slab, per-turn
/// lists, byte accounting), the shutdown state, the timers, and the chat.
pub struct Server {
    poll: Poll,
    signals: Signals,
    waker: Arc<Waker>,
    acceptor: Acceptor,
    conns: Connections,
    /// Alone when the peers are `None`.
    chat: Chat<Option<Cluster>>,
    cluster_io: Option<ClusterIo>,
    /// In cluster mode, until the first guest numbers come from Redis (or
    /// this passes): new connections wait in the backlog, so two servers
    /// starting together never both welcome a `guest-1`.
    cluster_admission_hold: Option<Instant>,
    rules: Rules,
    timers: Timers,
    shutdown: ShutdownState,
    /// A second signal arrived: stop without waiting for output.
    exit_now: bool,
    next_serial: u64,
    /// Limits the start-up check compares with the descriptor limit.
    wanted_descriptors: u64,
    max_outbuf: usize,
    /// Line bytes the chat may still be handed in this flush pass (see
    /// `input`).
    input_budget: usize,
    /// `SO_SNDBUF` for client sockets; 0 leaves the kernel's default.
    sndbuf: usize,
    scratch: Box<[u8]>,
    published: Option<Arc<Mutex<ServerStats>>>,
    /// The `--metrics` port, when asked for.
    metrics: Option<MetricsEndpoint>,
    telemetry: Telemetry,
}

impl Server {
    /// Binds the listening socket and prepares the poller and signal pipe.
    pub fn bind(config: Config) -> Result<Server, StartError> {
        Server::bind_with(config, None)
    }

    /// As `bind`, but serving on `listener` when given (a socket passed by
    /// systemd), in which case `config.listen` is not used.
    pub fn bind_with(
        config: Config,
        listener: Option<std::net::TcpListener>,
    ) -> Result<Server, StartError> {
        let setup = |what| move |source| StartError::Setup { what, source };
        let poll = Poll::new().map_err(setup("the poller"))?;
        let acceptor = match listener {
            Some(listener) => Acceptor::from_std(listener, poll.registry(), Source::LISTENER)
                .map_err(setup("the listening socket passed by systemd"))?,
            None => Acceptor::bind(config.listen, poll.registry(), Source::LISTENER).map_err(
                |source| StartError::Listen {
                    addr: config.listen,
                    source,
                },
            )?,
        };
        let metrics = match config.metrics {
            Some(addr) => Some(
                MetricsEndpoint::bind(
                    addr,
                    poll.registry(),
                    Source::METRICS_LISTENER,
                    Source::FIRST_METRICS_CONNECTION,
                )
                .map_err(|source| StartError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let metrics_descriptors = if metrics.is_some() {
            crate::metrics::MAX_CONNECTIONS as u64 + 1
        } else {
            0
        };
        let mut signals = Signals::new(SHUTDOWN_SIGNALS).map_err(setup("signal handling"))?;
        poll.registry()
            .register(&mut signals, Source::SIGNALS, Interest::READABLE)
            .map_err(setup("signal handling"))?;
        let waker =
            Arc::new(Waker::new(poll.registry(), Source::WAKER).map_err(setup("the waker"))?);
        let (cluster, cluster_io) = match &config.redis {
            None => (None, None),
            Some(url) => {
                // Resolved once: a Redis that moves needs a restart.
                let addr = std::net::ToSocketAddrs::to_socket_addrs(&url.address())
                    .and_then(|mut addrs| {
                        addrs.next().ok_or_else(|| {
                            io::Error::new(io::ErrorKind::NotFound, "no address for the host")
                        })
                    })
                    .map_err(setup("the Redis address"))?;
                let mut settings = ClusterSettings::new(&config.cluster_name, random_node_id());
                settings.node_timeout = config.node_timeout;
                let io = ClusterIo::new(
                    url.clone(),
                    addr,
                    Source::REDIS_COMMAND,
                    Source::REDIS_SUBSCRIBER,
                );
                (Some(Cluster::new(settings)), Some(io))
            }
        };
        let rules = Rules {
            idle_timeout: Some(config.idle_timeout).filter(|timeout| !timeout.is_zero()),
            write_timeout: config.write_timeout,
            rate: RateLimit::new(config.rate, config.burst),
            max_line: config.max_line,
        };
        Ok(Server {
            poll,
            signals,
            waker,
            acceptor,
            conns: Connections::new(
                Instant::now(),
                WRITE_BUDGET.max(2 * input::pass_input_budget(config.max_outbuf)),
            ),
            cluster_admission_hold: cluster_io
                .as_ref()
                .and_then(|_| Instant::now().checked_add(CLUSTER_ADMISSION_HOLD)),
            chat: Chat::with_peers(chat_config(&config), cluster),
            cluster_io,
            rules,
            timers: Timers::default(),
            shutdown: ShutdownState::new(config.shutdown_grace),
            exit_now: false,
            next_serial: 0,
            wanted_descriptors: (config.max_clients + config.max_waiting) as u64
                + RESERVED_DESCRIPTORS
                + metrics_descriptors,
            max_outbuf: config.max_outbuf,
            input_budget: input::pass_input_budget(config.max_outbuf),
            sndbuf: config.sndbuf,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            published: None,
            metrics,
            telemetry: Telemetry::new(config.stats_interval, Instant::now()),
        })
    }

    /// The metrics port's address, when `--metrics` is on (useful with
    /// port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsEndpoint::local_addr)
    }

    /// Sends `READY=1`, `STATUS=` and `STOPPING=1` through `notifier`.
    pub fn notify_systemd(&mut self, notifier: crate::systemd::Notifier) {
        self.telemetry.set_notifier(notifier);
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.acceptor.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            waker: Arc::clone(&self.waker),
        }
    }

    /// A handle to the server's counters; from then on they are published
    /// every loop turn.
    pub fn stats_handle(&mut self) -> StatsHandle {
        let shared = self
            .published
            .get_or_insert_with(|| Arc::new(Mutex::new(ServerStats::default())));
        StatsHandle {
            shared: Arc::clone(shared),
        }
    }

    /// Serves until a shutdown completes. Returns an error only if the
    /// poller itself fails.
    ///
    /// Each loop turn: collect readiness, accept, read and hand lines to the
    /// chat (which only queues output), flush a slice of the connections
    /// with output, then close what must close. Closing last means a freed
    /// slab key can never receive a stale event from the same turn.
    pub fn run(mut self) -> io::Result<Stopped> {
        info!("listening on {}", self.local_addr());
        if let Some(addr) = self.metrics_addr() {
            info!("serving metrics on http://{addr}/metrics");
        }
        self.check_descriptor_limit();
        self.telemetry.notify(crate::systemd::READY);
        let mut events = Events::with_capacity(1024);
        loop {
            self.publish_stats();
            // Before the timeout, so guest numbers that came in the last
            // turn let waiting connections in without a wait.
            self.hold_admissions_for_the_cluster(Instant::now());
            let timeout = self.poll_timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            // The turn's work starts here; the time blocked in poll is not
            // part of its duration.
            let now = Instant::now();
            self.conns.start_turn(now);
            for event in events.iter() {
                match Source::of(event.token()) {
                    Some(Source::Listener) => self.acceptor.on_readable(),
                    Some(Source::Signals) => self.on_signals(now),
                    Some(Source::Waker) => self.begin_shutdown(now),
                    // Both Redis sockets are pumped every turn anyway.
                    Some(Source::Redis) => {}
                    Some(Source::MetricsListener) => {
                        if let Some(endpoint) = &mut self.metrics {
                            endpoint.on_listener_event();
                        }
                    }
                    Some(Source::MetricsConnection(key)) => {
                        if let Some(endpoint) = &mut self.metrics {
                            let readable =
                                event.is_readable() || event.is_read_closed() || event.is_error();
                            let writable = event.is_writable() || event.is_write_closed();
                            endpoint.on_connection_event(key, readable, writable);
                        }
                    }
                    Some(Source::Client(key)) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            if let Some(conn) = self.conns.get_mut(key) {
                                conn.read_ready = true;
                            }
                            self.conns.schedule_read(key);
                        }
                        if event.is_writable() || event.is_write_closed() {
                            self.conns.schedule_flush(key);
                        }
                    }
                    None => {}
                }
            }
            if self.exit_now {
                return Ok(Stopped::Forced);
            }
            self.fire_timers(now);
            self.accept_connections(now);
            self.read_connections(now);
            self.chat.end_turn(&mut self.conns);
            if self.cluster_io.is_some() {
                self.pump_cluster(now);
                self.chat.end_turn(&mut self.conns);
            }
            self.flush_connections();
            self.log_chat_events();
            self.warn_about_skips(now);
            self.close_connections();
            // Leave notices of what just closed go out next turn, which
            // starts at once because they put connections on the flush list.
            self.chat.end_turn(&mut self.conns);
            if self.cluster_io.is_some() {
                // What this turn gave the other servers (batches, reports
                // of lines written just now) goes out now.
                self.pump_cluster(Instant::now());
            }
            self.serve_metrics(now);
            self.finish_turn(now);
            if self.shutdown_finished(Instant::now()) {
                return Ok(Stopped::Orderly);
            }
        }
    }

    fn publish_stats(&self) {
        let Some(shared) = &self.published else {
            return;
        };
        let stats = ServerStats {
            connections: self.conns.len(),
            chat: self.chat.stats(),
            timers: self.timers.len(),
            queued_bytes: self.conns.queued_bytes(),
            peak_queue: self.conns.peak_queue(),
            accepted: self.acceptor.accepted(),
        };
        if let Ok(mut slot) = shared.lock() {
            *slot = stats;
        }
    }

    /// Lets connections in once the cluster has guest numbers, or once the
    /// hold has passed (Redis unreachable at start: numbers are then local,
    /// and a clash is renamed when the servers meet).
    fn hold_admissions_for_the_cluster(&mut self, now: Instant) {
        let Some(until) = self.cluster_admission_hold else {
            return;
        };
        let stocked = self
            .chat
            .peers()
            .as_ref()
            .is_some_and(Cluster::has_guest_numbers);
        let held = !stocked && now < until;
        self.acceptor.hold(held);
        if !held {
            self.cluster_admission_hold = None;
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let metrics_work = self.metrics.as_ref().is_some_and(|m| m.has_work());
        if self.conns.has_work() || self.acceptor.can_accept() || metrics_work {
            return Some(Duration::ZERO);
        }
        let timers = self.timers.timeout(now);
        let mut cluster_deadlines = [None, None];
        if let Some(io) = &self.cluster_io {
            let cluster = self.chat.peers().as_ref();
            // Output Redis did not take yet waits for a writable event.
            if io.has_work() || cluster.is_some_and(Cluster::has_output) {
                return Some(Duration::ZERO);
            }
            cluster_deadlines = [io.next_wakeup(), cluster.and_then(Cluster::next_wakeup)];
        }
        let deadlines = [
            self.shutdown.poll_timeout(),
            self.telemetry_deadline(),
            self.cluster_admission_hold,
        ];
        deadlines
            .into_iter()
            .chain(cluster_deadlines)
            .flatten()
            .map(|at| at.saturating_duration_since(now))
            .chain(timers)
            .min()
    }

    fn check_descriptor_limit(&self) {
        let limit = match fd_limit::raise_to_hard_limit() {
            Ok((limit, before)) => {
                if limit > before {
                    info!("open-file limit raised from {before} to {limit}");
                } else {
                    info!("open-file limit is {limit}");
                }
                limit
            }
            Err(err) => {
                warn!("cannot read or raise the open-file limit: {err}");
                return;
            }
        };
        let wanted = self.wanted_descriptors;
        if wanted > limit {
            warn!(
                "--max-clients + --max-waiting need about {wanted} descriptors but the open-file limit is {limit}: accepting will pause when they run out"
            );
        }
    }
}

/// A node id for this process: std's randomly keyed hasher over the pid
/// and the time, so two servers started together still differ.
fn random_node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since.as_nanos());
    }
    // Small enough to stay exact wherever it is shown as a number.
    hasher.finish() >> 12
}

/// The chat's own settings, taken from the daemon's.
fn chat_config(config: &Config) -> ChatConfig {
    ChatConfig {
        max_clients: config.max_clients,
        max_waiting: config.max_waiting,
        max_per_ip: config.max_per_ip,
        max_line: config.max_line,
        announce_limit: config.announce_limit,
    }
}
