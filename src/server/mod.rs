//! The reactor: one `mio::Poll`, one thread, every socket.
//!
//! Each loop turn: collect readiness, accept, read and hand lines to the
//! chat (which only queues output), flush every connection that got output
//! once, then close what must close. Closing last means a freed slab key can
//! never receive a stale event from the same turn.

mod accept;
mod closing;
mod connection;
mod connections;
mod control;
mod deadlines;
mod fd_limit;
mod input;
pub mod out_queue;
mod output;
mod rate;
mod shutdown;
mod timers;

pub use control::{ServerStats, ShutdownHandle, StatsHandle, Stopped};

use std::fmt;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::chat::{Admission, Chat, ChatConfig, ChatStats, ClientId, ReceiptTag};
use crate::line::Decoded;
use crate::Config;
use connection::{CloseCause, Connection, Phase};
use connections::Connections;
use out_queue::Flushed;
use rate::RateLimit;
use timers::{Timer, TimerKind, Timers};

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
/// Client tokens are their slab key plus this offset.
const FIRST_CLIENT: usize = 3;

/// Bytes read from one connection per loop turn, so a flooder cannot starve
/// the others; what is left is read next turn.
const READ_BUDGET: usize = 64 * 1024;
/// Size of one read; also the most undecoded input a connection holds.
const READ_CHUNK: usize = 16 * 1024;
/// Connections accepted per loop turn, so a connect storm cannot starve
/// clients already in.
const ACCEPT_BUDGET: usize = 256;
/// Connections the kernel may hold for us to accept (capped by
/// `net.core.somaxconn`, itself 4096 by default). mio listens with std's
/// 128: a reconnect storm overflows that between two loop turns, and every
/// dropped SYN costs its client a one-second retransmit.
const LISTEN_BACKLOG: libc::c_int = 4096;
/// How long accepting pauses after running out of file descriptors (a
/// close resumes it sooner).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Descriptors the process needs besides clients: listener, poller, signal
/// pipe, waker, standard streams.
const RESERVED_DESCRIPTORS: u64 = 16;
/// Flush passes per turn: flushing reports receipts, which queue more output.
const FLUSH_ROUNDS: usize = 4;

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
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            StartError::Setup { what, source } => write!(f, "cannot set up {what}: {source}"),
        }
    }
}

impl std::error::Error for StartError {}

/// The daemon: bind first (so the caller learns the address), then run.
pub struct Server {
    config: Config,
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Signals,
    waker: Arc<Waker>,
    chat: Chat,
    conns: Connections,
    /// Connections whose readiness has not been used up.
    read_list: Vec<usize>,
    timers: Timers,
    rate_limit: RateLimit,
    accept_ready: bool,
    /// Out of descriptors: wait for a close or the retry timer.
    accept_paused: bool,
    last_descriptor_warning: Option<Instant>,
    shutdown_started: Option<Instant>,
    shutdown_expired: bool,
    exit_now: bool,
    scratch: Box<[u8]>,
    accepted: u64,
    next_serial: u64,
    published: Option<Arc<Mutex<ServerStats>>>,
}

impl Server {
    /// Binds the listening socket and prepares the poller and signal pipe.
    pub fn bind(config: Config) -> Result<Server, StartError> {
        let setup = |what| move |source| StartError::Setup { what, source };
        let poll = Poll::new().map_err(setup("the poller"))?;
        let mut listener =
            TcpListener::bind(config.listen).map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        accept::widen_backlog(&listener);
        let local_addr = listener.local_addr().map_err(setup("the listener"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(setup("the listener"))?;
        let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(setup("signal handling"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(setup("signal handling"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(setup("the waker"))?);
        Ok(Server {
            chat: Chat::new(ChatConfig::from_config(&config)),
            conns: Connections::new(config.max_outbuf),
            rate_limit: RateLimit::new(config.rate, config.burst),
            config,
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            waker,
            read_list: Vec::new(),
            timers: Timers::default(),
            accept_ready: true,
            accept_paused: false,
            last_descriptor_warning: None,
            shutdown_started: None,
            shutdown_expired: false,
            exit_now: false,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            accepted: 0,
            next_serial: 0,
            published: None,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
    pub fn run(mut self) -> io::Result<Stopped> {
        info!("listening on {}", self.local_addr);
        self.check_descriptor_limit();
        let mut events = Events::with_capacity(1024);
        loop {
            self.publish_stats();
            let timeout = self.poll_timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            let now = Instant::now();
            self.conns.now = now;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_ready = true,
                    SIGNALS => self.on_signals(now),
                    WAKER => self.begin_shutdown(now),
                    Token(token) => {
                        let key = token - FIRST_CLIENT;
                        let Some(conn) = self.conns.slab.get_mut(key) else {
                            continue;
                        };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.read_ready = true;
                            if !conn.in_read_list {
                                conn.in_read_list = true;
                                self.read_list.push(key);
                            }
                        }
                        if event.is_writable() || event.is_write_closed() {
                            self.conns.schedule_flush(key);
                        }
                    }
                }
            }
            if self.exit_now {
                info!("second signal: exiting at once");
                return Ok(Stopped::Forced);
            }
            self.fire_timers(now);
            self.accept_connections(now);
            self.read_connections(now);
            self.chat.end_turn(&mut self.conns);
            self.flush_connections();
            self.close_connections();
            // Leave notices of what just closed go out next turn, which
            // starts at once because they put connections on the flush list.
            self.chat.end_turn(&mut self.conns);
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
            connections: self.conns.slab.len(),
            chat: self.chat.stats(),
            timers: self.timers.len(),
            queued_bytes: self.conns.queued_bytes,
            peak_queue: self.conns.peak_queue,
            accepted: self.accepted,
        };
        if let Ok(mut slot) = shared.lock() {
            *slot = stats;
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let can_accept = self.listener.is_some() && self.accept_ready && !self.accept_paused;
        let busy = !self.read_list.is_empty()
            || !self.conns.flush_list.is_empty()
            || !self.conns.close_list.is_empty()
            || can_accept;
        if busy {
            return Some(Duration::ZERO);
        }
        self.timers.timeout(now)
    }
}
