//! The reactor: one `mio::Poll`, one thread, every socket.
//!
//! Each loop turn: collect readiness, accept, read and hand lines to the
//! chat (which only queues output), flush every connection that got output
//! once, then close what must close. Closing last means a freed slab key can
//! never receive a stale event from the same turn.

mod connection;
mod connections;
mod out_queue;

use std::fmt;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::chat::{Admission, Chat, ChatConfig, ClientId, LeaveReason};
use crate::line::Decoded;
use crate::Config;
use connection::{CloseCause, Connection, Phase};
use connections::Connections;
use out_queue::Flushed;

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
/// How long accepting pauses after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
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
    accept_ready: bool,
    accept_paused_until: Option<Instant>,
    last_descriptor_warning: Option<Instant>,
    shutdown_deadline: Option<Instant>,
    shutdown_started: Option<Instant>,
    exit_now: bool,
    scratch: Box<[u8]>,
    accepted: u64,
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
            config,
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            waker,
            read_list: Vec::new(),
            accept_ready: true,
            accept_paused_until: None,
            last_descriptor_warning: None,
            shutdown_deadline: None,
            shutdown_started: None,
            exit_now: false,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            accepted: 0,
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

    /// Serves until an orderly shutdown completes. Returns an error only if
    /// the poller itself fails.
    pub fn run(mut self) -> io::Result<()> {
        info!("listening on {}", self.local_addr);
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            let now = Instant::now();
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
                return Ok(());
            }
            self.accept_connections(now);
            self.read_connections();
            self.flush_connections();
            self.close_connections();
            if self.shutdown_finished(Instant::now()) {
                return Ok(());
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        let can_accept = self.listener.is_some()
            && self.accept_ready
            && self.accept_paused_until.is_none_or(|until| until <= now);
        let busy = !self.read_list.is_empty()
            || !self.conns.flush_list.is_empty()
            || !self.conns.close_list.is_empty()
            || can_accept;
        if busy {
            return Some(Duration::ZERO);
        }
        [self.shutdown_deadline, self.accept_paused_until]
            .into_iter()
            .flatten()
            .min()
            .map(|deadline| deadline.saturating_duration_since(now))
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
        self.shutdown_deadline = Some(now + self.config.shutdown_grace);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.slab.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.conns.close_after_flush(key, CloseCause::Shutdown);
        }
        self.conns.ignore_cap = true;
        self.chat.on_shutdown(&mut self.conns);
    }

    fn shutdown_finished(&mut self, now: Instant) -> bool {
        let (Some(started), Some(deadline)) = (self.shutdown_started, self.shutdown_deadline)
        else {
            return false;
        };
        if !self.conns.slab.is_empty() && now < deadline {
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
        if !self.accept_ready || self.accept_paused_until.is_some_and(|until| until > now) {
            return;
        }
        self.accept_paused_until = None;
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_ready = false;
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if is_resource_exhaustion(&err) => {
                    // The backlog still holds connections and epoll will not
                    // say so again: retry on a timer instead of spinning.
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
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

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr) {
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
        entry.insert(Connection::new(stream, peer, self.config.max_line));
        self.accepted += 1;
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

    fn read_connections(&mut self) {
        for key in std::mem::take(&mut self.read_list) {
            if let Some(conn) = self.conns.slab.get_mut(key) {
                conn.in_read_list = false;
                self.read_connection(key);
            }
        }
    }

    /// Reads and handles input from one connection until the socket is
    /// drained or the turn's budget is spent.
    fn read_connection(&mut self, key: usize) {
        let mut budget = READ_BUDGET;
        loop {
            if !self.handle_input(key) {
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
    /// takes no more input.
    fn handle_input(&mut self, key: usize) -> bool {
        let id = ClientId(key);
        loop {
            let Some(conn) = self.conns.slab.get_mut(key) else {
                return false;
            };
            if conn.phase != Phase::Open {
                return false;
            }
            let Some(decoded) = conn.decoder.next() else {
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

    fn flush_connection(&mut self, key: usize, written: &mut Vec<crate::chat::ReceiptTag>) {
        let max_outbuf = self.conns.max_outbuf();
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        conn.in_flush_list = false;
        if conn.phase == Phase::Dead {
            return;
        }
        let wants_writable = match conn.out.write_to(&mut conn.stream, written) {
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
