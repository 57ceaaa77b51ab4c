//! The reactor: one `mio::Poll`, one thread, every socket.
//!
//! Each loop turn: collect readiness, accept, read and hand lines to the
//! chat (which only queues output), flush every connection that got output
//! once, then close what must close. Closing last means a freed slab key can
//! never receive a stale event from the same turn.

mod connection;
mod connections;
mod fd_limit;
pub mod out_queue;
mod rate;
mod timers;

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

use crate::chat::{Admission, Chat, ChatConfig, ChatStats, ClientId, LeaveReason, ReceiptTag};
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

/// Asks a running server, from another thread, for an orderly shutdown, as
/// SIGTERM would.
#[derive(Clone)]
pub struct ShutdownHandle {
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) -> io::Result<()> {
        self.waker.wake()
    }
}

/// How [`Server::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Output drained, or the shutdown grace ran out.
    Orderly,
    /// A second signal cut the shutdown short.
    Forced,
}

/// A snapshot of what the server holds, for tests and leak checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections in the slab (chatting, waiting and closing).
    pub connections: usize,
    pub chat: ChatStats,
    /// Entries in the timer heap, stale ones included.
    pub timers: usize,
    /// Output bytes queued on all connections.
    pub queued_bytes: usize,
    /// The most output bytes one connection has had queued at once.
    pub peak_queue: usize,
    pub accepted: u64,
}

/// Reads the server's latest [`ServerStats`] from another thread. The
/// server publishes them once per loop turn, before it sleeps.
#[derive(Clone)]
pub struct StatsHandle {
    shared: Arc<Mutex<ServerStats>>,
}

impl StatsHandle {
    pub fn get(&self) -> ServerStats {
        match self.shared.lock() {
            Ok(stats) => *stats,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}

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
        widen_backlog(&listener);
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
        let wanted =
            (self.config.max_clients + self.config.max_waiting) as u64 + RESERVED_DESCRIPTORS;
        if wanted > limit {
            warn!(
                "--max-clients + --max-waiting need about {wanted} descriptors but the open-file limit is {limit}: accepting will pause when they run out"
            );
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

    fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer.kind {
                TimerKind::ShutdownGrace => self.shutdown_expired = true,
                TimerKind::AcceptRetry => self.accept_paused = false,
                TimerKind::Idle => self.check_idle(timer, now),
                TimerKind::WriteStall => self.check_write_stall(timer, now),
                TimerKind::RateResume => {
                    if let Some(conn) = self.live_connection(timer) {
                        conn.rate_paused = false;
                        if !conn.in_read_list {
                            conn.in_read_list = true;
                            self.read_list.push(timer.key);
                        }
                    }
                }
            }
        }
    }

    /// The connection a timer was set for, unless it has closed since.
    fn live_connection(&mut self, timer: Timer) -> Option<&mut Connection> {
        self.conns
            .slab
            .get_mut(timer.key)
            .filter(|conn| conn.serial == timer.serial && conn.phase != Phase::Dead)
    }

    fn check_idle(&mut self, timer: Timer, now: Instant) {
        let idle_timeout = self.config.idle_timeout;
        let Some(conn) = self.live_connection(timer) else {
            return;
        };
        if conn.phase != Phase::Open {
            return;
        }
        let deadline = conn.last_input + idle_timeout;
        if deadline > now {
            self.timers.schedule(deadline, timer);
            return;
        }
        self.conns.close_after_flush(timer.key, CloseCause::Idle);
        self.chat
            .on_disconnect(&mut self.conns, ClientId(timer.key), LeaveReason::Idle);
    }

    fn check_write_stall(&mut self, timer: Timer, now: Instant) {
        let write_timeout = self.config.write_timeout;
        let Some(conn) = self.live_connection(timer) else {
            return;
        };
        conn.stall_timer_armed = false;
        if conn.out.is_empty() {
            return;
        }
        let deadline = conn.last_output_progress + write_timeout;
        if deadline > now {
            conn.stall_timer_armed = true;
            self.timers.schedule(deadline, timer);
            return;
        }
        warn!(
            "client {} from {}: no output taken for {} s, disconnecting",
            timer.key,
            conn.peer,
            write_timeout.as_secs()
        );
        self.conns.kill(timer.key, CloseCause::TooSlow);
        self.chat
            .on_disconnect(&mut self.conns, ClientId(timer.key), LeaveReason::TooSlow);
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

    fn on_signals(&mut self, now: Instant) {
        let received = self.signals.pending().count();
        if received == 0 {
            return;
        }
        if self.shutdown_started.is_some() || received > 1 {
            self.exit_now = true;
        } else {
            info!("signal received: shutting down");
            self.begin_shutdown(now);
        }
    }

    /// Stops accepting, tells everyone, and gives output `--shutdown-grace`
    /// to drain.
    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown_started.is_some() {
            return;
        }
        self.shutdown_started = Some(now);
        self.timers.schedule(
            now + self.config.shutdown_grace,
            Timer {
                kind: TimerKind::ShutdownGrace,
                key: 0,
                serial: 0,
            },
        );
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.slab.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.conns.close_after_flush(key, CloseCause::Shutdown);
        }
        // Lines said this turn are ordinary output, under the usual cap;
        // only the shutdown notice itself must get through regardless.
        self.chat.end_turn(&mut self.conns);
        self.conns.ignore_cap = true;
        self.chat.on_shutdown(&mut self.conns);
    }

    fn shutdown_finished(&mut self, now: Instant) -> bool {
        let Some(started) = self.shutdown_started else {
            return false;
        };
        if !self.conns.slab.is_empty() && !self.shutdown_expired {
            return false;
        }
        let unfinished = self.conns.slab.len();
        let unsent: usize = self
            .conns
            .slab
            .iter()
            .map(|(_, conn)| conn.out.pending())
            .sum();
        info!(
            "shutdown complete after {} ms: {} connections served, {} closed before their output drained ({} bytes unsent)",
            now.duration_since(started).as_millis(),
            self.accepted,
            unfinished,
            unsent
        );
        true
    }

    fn accept_connections(&mut self, now: Instant) {
        if !self.accept_ready || self.accept_paused {
            return;
        }
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_ready = false;
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if is_resource_exhaustion(&err) => {
                    // The backlog still holds connections and epoll will not
                    // say so again: retry on a timer instead of spinning.
                    self.accept_paused = true;
                    self.timers.schedule(
                        now + ACCEPT_BACKOFF,
                        Timer {
                            kind: TimerKind::AcceptRetry,
                            key: 0,
                            serial: 0,
                        },
                    );
                    let quiet = self
                        .last_descriptor_warning
                        .is_some_and(|at| now.duration_since(at) < Duration::from_secs(10));
                    if !quiet {
                        self.last_descriptor_warning = Some(now);
                        warn!(
                            "cannot accept: {err}; pausing accepts ({} connections open)",
                            self.conns.slab.len()
                        );
                    }
                    return;
                }
                Err(err) => debug!("accept failed: {err}"),
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        // Output is already batched into one write per loop turn; Nagle
        // would only hold a reply back until the client acknowledges the
        // previous turn's lines, which a delayed ACK makes 40 ms.
        if let Err(err) = stream.set_nodelay(true) {
            debug!("client from {peer}: cannot set TCP_NODELAY: {err}");
        }
        let entry = self.conns.slab.vacant_entry();
        let key = entry.key();
        if let Err(err) = self.poll.registry().register(
            &mut stream,
            Token(key + FIRST_CLIENT),
            Interest::READABLE,
        ) {
            warn!("cannot register connection from {peer}: {err}");
            return;
        }
        self.next_serial += 1;
        let serial = self.next_serial;
        entry.insert(Connection::new(
            serial,
            stream,
            peer,
            self.config.max_line,
            now,
        ));
        self.accepted += 1;
        if !self.config.idle_timeout.is_zero() {
            self.timers.schedule(
                now + self.config.idle_timeout,
                Timer {
                    kind: TimerKind::Idle,
                    key,
                    serial,
                },
            );
        }
        let admission = self
            .chat
            .on_connect(&mut self.conns, ClientId(key), peer.ip());
        match admission {
            Admission::Chatting { nick } => info!("client {key} from {peer} connected as {nick}"),
            Admission::Waiting { place } => {
                info!("client {key} from {peer} connected, waiting at place {place}")
            }
            Admission::ServerFull | Admission::TooManyFromAddress => {
                if let Some(conn) = self.conns.slab.get_mut(key) {
                    conn.cause = Some(CloseCause::Refused);
                }
                let why = if admission == Admission::ServerFull {
                    "server full"
                } else {
                    "too many connections from the address"
                };
                info!("client {key} from {peer} refused: {why}");
            }
        }
    }

    fn read_connections(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.read_list) {
            if let Some(conn) = self.conns.slab.get_mut(key) {
                conn.in_read_list = false;
                self.read_connection(key, now);
            }
        }
    }

    /// Reads and handles input from one connection until the socket is
    /// drained or the turn's budget is spent.
    fn read_connection(&mut self, key: usize, now: Instant) {
        let mut budget = READ_BUDGET;
        loop {
            if !self.handle_input(key, now) {
                return;
            }
            let Some(conn) = self.conns.slab.get_mut(key) else {
                return;
            };
            if !conn.read_ready {
                return;
            }
            if budget == 0 {
                conn.in_read_list = true;
                self.read_list.push(key);
                return;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.hang_up(key);
                    return;
                }
                Ok(n) => {
                    conn.decoder.push(&self.scratch[..n]);
                    conn.last_input = now;
                    budget = budget.saturating_sub(n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    conn.read_ready = false;
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!("client {key}: read failed: {err}");
                    self.conns.kill(key, CloseCause::Reset);
                    self.chat
                        .on_disconnect(&mut self.conns, ClientId(key), LeaveReason::Hangup);
                    return;
                }
            }
        }
    }

    /// Hands decoded input to the chat. Returns false once the connection
    /// takes no more input: closing, or paused by its rate limit (then the
    /// rest stays in the decoder, and the socket unread, so TCP pushes back).
    fn handle_input(&mut self, key: usize, now: Instant) -> bool {
        let id = ClientId(key);
        loop {
            let Some(conn) = self.conns.slab.get_mut(key) else {
                return false;
            };
            if conn.phase != Phase::Open || conn.rate_paused {
                return false;
            }
            if !conn.decoder.has_unread_input() {
                return true;
            }
            // Only lines cost a token, but which event comes next is known
            // only after decoding it: take a token on trial, give it back
            // for anything else.
            let bucket_before = conn.bucket;
            if let Err(resume_at) = conn.bucket.take(&self.rate_limit, now) {
                conn.rate_paused = true;
                self.timers.schedule(
                    resume_at,
                    Timer {
                        kind: TimerKind::RateResume,
                        key,
                        serial: conn.serial,
                    },
                );
                return false;
            }
            let decoded = conn.decoder.next();
            if !matches!(decoded, Some(Decoded::Line(_) | Decoded::TooLong)) {
                conn.bucket = bucket_before;
            }
            let Some(decoded) = decoded else {
                return true;
            };
            match decoded {
                Decoded::Line(line) => {
                    self.chat.on_line(&mut self.conns, id, &line);
                    let left_chat = self.chat.nick(id).is_none();
                    if let Some(conn) = self.conns.slab.get_mut(key) {
                        if left_chat && conn.phase == Phase::Closing {
                            conn.cause = Some(CloseCause::Quit);
                        }
                    }
                }
                Decoded::TooLong => self.chat.on_line_too_long(&mut self.conns, id),
                Decoded::HttpRequest => {
                    conn.cause = Some(CloseCause::HttpRequest);
                    self.chat.on_http_request(&mut self.conns, id);
                }
                Decoded::TelnetReply(reply) => {
                    self.conns.send_raw(key, Bytes::copy_from_slice(&reply));
                }
            }
        }
    }

    /// The peer closed its side. Output still queued is flushed, as a
    /// client that half-closes (`nc` after end of input) still reads.
    fn hang_up(&mut self, key: usize) {
        self.conns.close_after_flush(key, CloseCause::HungUp);
        self.chat
            .on_disconnect(&mut self.conns, ClientId(key), LeaveReason::Hangup);
    }

    fn flush_connections(&mut self) {
        let mut written = Vec::new();
        for _ in 0..FLUSH_ROUNDS {
            let list = std::mem::take(&mut self.conns.flush_list);
            if list.is_empty() {
                return;
            }
            for key in list {
                self.flush_connection(key, &mut written);
                for tag in written.drain(..) {
                    self.chat.on_written(&mut self.conns, tag);
                }
            }
        }
    }

    fn flush_connection(&mut self, key: usize, written: &mut Vec<ReceiptTag>) {
        let max_outbuf = self.conns.max_outbuf();
        let now = self.conns.now;
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        conn.in_flush_list = false;
        if conn.phase == Phase::Dead {
            return;
        }
        let pending_before = conn.out.pending();
        let result = conn.out.write_to(&mut conn.stream, written);
        let sent = pending_before - conn.out.pending();
        self.conns.queued_bytes -= sent;
        if sent > 0 {
            conn.last_output_progress = now;
        }
        let wants_writable = match result {
            Ok(Flushed::Drained) => false,
            Ok(Flushed::Blocked) => true,
            Err(err) => {
                debug!("client {key}: write failed: {err}");
                self.conns.kill(key, CloseCause::Reset);
                self.chat
                    .on_disconnect(&mut self.conns, ClientId(key), LeaveReason::Hangup);
                return;
            }
        };
        if wants_writable != conn.wants_writable {
            let interest = if wants_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = Token(key + FIRST_CLIENT);
            if let Err(err) = self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, interest)
            {
                warn!("client {key}: cannot change poll interest: {err}");
                self.conns.kill(key, CloseCause::Reset);
                self.chat
                    .on_disconnect(&mut self.conns, ClientId(key), LeaveReason::Hangup);
                return;
            }
            conn.wants_writable = wants_writable;
        }
        if wants_writable && !conn.stall_timer_armed {
            conn.stall_timer_armed = true;
            let serial = conn.serial;
            self.timers.schedule(
                conn.last_output_progress + self.config.write_timeout,
                Timer {
                    kind: TimerKind::WriteStall,
                    key,
                    serial,
                },
            );
        }
        let drained = conn.out.is_empty();
        if drained && conn.phase == Phase::Closing {
            self.conns.close_list.push(key);
        } else if conn.phase == Phase::Open
            && conn.out.skipped() > 0
            && conn.out.pending() < max_outbuf / 2
        {
            let skipped = conn.out.take_skipped();
            self.chat
                .on_lines_skipped(&mut self.conns, ClientId(key), skipped);
        }
    }

    fn close_connections(&mut self) {
        for key in std::mem::take(&mut self.conns.close_list) {
            let Some(conn) = self.conns.slab.get(key) else {
                continue;
            };
            let finished =
                conn.phase == Phase::Dead || (conn.phase == Phase::Closing && conn.out.is_empty());
            if !finished {
                continue;
            }
            let mut conn = self.conns.slab.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.conns.queued_bytes -= conn.out.pending();
            // A descriptor is free again: connections waiting in the backlog
            // raise no new event, so try accepting now.
            self.accept_paused = false;
            if conn.phase == Phase::Closing {
                close_gracefully(&mut conn.stream, &mut self.scratch);
            }
            let id = ClientId(key);
            self.chat
                .on_disconnect(&mut self.conns, id, LeaveReason::Hangup);
            for tag in conn.out.discard() {
                self.chat.on_dropped(&mut self.conns, tag);
            }
            let cause = conn.cause.unwrap_or(CloseCause::ClosedByChat);
            info!(
                "client {key} from {} disconnected: {}",
                conn.peer,
                cause.describe()
            );
        }
        self.prune_timers();
    }

    /// Under churn, timers of closed connections pile up until they come
    /// due (an idle timeout can be hours away); drop them once they
    /// outnumber the live ones.
    fn prune_timers(&mut self) {
        if self.timers.len() <= 4 * self.conns.slab.len() + 1024 {
            return;
        }
        let slab = &self.conns.slab;
        self.timers.retain(|timer| match timer.kind {
            TimerKind::AcceptRetry | TimerKind::ShutdownGrace => true,
            _ => slab
                .get(timer.key)
                .is_some_and(|conn| conn.serial == timer.serial),
        });
    }
}

/// Raises the listen backlog of an already listening socket: calling
/// `listen` again only changes the queue length.
fn widen_backlog(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen on a descriptor the listener owns; no memory is passed.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        warn!(
            "cannot raise the listen backlog: {}",
            io::Error::last_os_error()
        );
    }
}

/// Sends FIN after the last byte, and reads what the client still sent, so
/// the close does not turn into a reset that could destroy output the client
/// has not read yet.
fn close_gracefully(stream: &mut TcpStream, scratch: &mut [u8]) {
    let _ = stream.shutdown(Shutdown::Write);
    for _ in 0..4 {
        match stream.read(scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// Errors that mean the process or system is out of descriptors or memory
/// for sockets: accepting again at once would only spin.
fn is_resource_exhaustion(err: &io::Error) -> bool {
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    matches!(err.raw_os_error(), Some(ENOMEM | ENFILE | EMFILE | ENOBUFS))
}
