//! The listening socket and what accepting depends on: readiness, the
//! back-off after running out of descriptors, the throttle on the warning
//! about it, and the count of connections taken.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

/// Connections the kernel may hold for us to accept (capped by
/// `net.core.somaxconn`, itself 4096 by default). mio listens with std's
/// 128: a reconnect storm overflows that between two loop turns, and every
/// dropped SYN costs its client a one-second retransmit.
const LISTEN_BACKLOG: libc::c_int = 4096;
/// How long accepting pauses after running out of file descriptors (a
/// close resumes it sooner).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one out-of-descriptors warning in this long: under exhaustion
/// every retry fails the same way.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// What one accept attempt gave.
pub enum Accepted {
    Stream(TcpStream, SocketAddr),
    /// Nothing more to accept until the listener is readable again (or it
    /// is closed, or paused).
    Done,
    /// Out of descriptors or memory: accepting is paused until `resume`.
    /// `warn` is set when this is worth a log line.
    Exhausted {
        error: io::Error,
        warn: bool,
    },
}

pub struct Acceptor {
    /// `None` once the shutdown has closed it.
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    /// Readiness not yet used up (edge-triggered).
    ready: bool,
    /// Out of descriptors: wait for a close or the retry timer.
    paused: bool,
    /// Accepting waits for something else first (a cluster's first guest
    /// numbers); unlike `paused`, no timer or close ends it.
    held: bool,
    last_warning: Option<Instant>,
    /// Connections taken since start.
    accepted: u64,
}

impl Acceptor {
    /// Binds, widens the backlog and registers with the poller.
    pub fn bind(addr: SocketAddr, registry: &Registry, token: Token) -> io::Result<Acceptor> {
        let listener = TcpListener::bind(addr)?;
        widen_backlog(&listener);
        Self::register(listener, registry, token)
    }

    /// Takes a socket that is listening already (passed by systemd), as
    /// it is: its backlog is the socket unit's `Backlog=`.
    pub fn from_std(
        listener: std::net::TcpListener,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Acceptor> {
        listener.set_nonblocking(true)?;
        Self::register(TcpListener::from_std(listener), registry, token)
    }

    fn register(
        mut listener: TcpListener,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Acceptor> {
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(Acceptor {
            listener: Some(listener),
            local_addr,
            ready: true,
            paused: false,
            held: false,
            last_warning: None,
            accepted: 0,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    pub fn on_readable(&mut self) {
        self.ready = true;
    }

    /// Whether an accept now could take a connection.
    pub fn can_accept(&self) -> bool {
        self.listener.is_some() && self.ready && !self.paused && !self.held
    }

    /// Holds new connections in the kernel's backlog (`true`) or lets them
    /// in again; readiness is remembered meanwhile.
    pub fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// A descriptor was freed, or the back-off passed: try again.
    pub fn resume(&mut self) {
        self.paused = false;
    }

    pub fn accept(&mut self, now: Instant) -> Accepted {
        loop {
            if !self.can_accept() {
                return Accepted::Done;
            }
            let Some(listener) = &self.listener else {
                return Accepted::Done;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.accepted += 1;
                    return Accepted::Stream(stream, peer);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.ready = false;
                    return Accepted::Done;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if is_resource_exhaustion(&error) => {
                    // The backlog still holds connections and epoll will not
                    // say so again: the caller retries on a timer instead of
                    // spinning.
                    self.paused = true;
                    let warn = self
                        .last_warning
                        .is_none_or(|at| now.duration_since(at) >= WARNING_INTERVAL);
                    if warn {
                        self.last_warning = Some(now);
                    }
                    return Accepted::Exhausted { error, warn };
                }
                // The peer gave up while in the backlog, and the like: that
                // connection is lost, the next one may be fine.
                Err(err) => debug!("accept failed: {err}"),
            }
        }
    }

    /// Stops listening: new connects are refused by the kernel.
    pub fn close(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
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

/// Errors that mean the process or system is out of descriptors or memory
/// for sockets: accepting again at once would only spin.
fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOMEM | libc::ENFILE | libc::EMFILE | libc::ENOBUFS)
    )
}
