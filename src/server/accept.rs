//! Taking new connections: the accept loop, its budget and back-off, and
//! the listen backlog and descriptor limit it depends on.

use super::*;

impl Server {
    pub(super) fn accept_connections(&mut self, now: Instant) {
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

    pub(super) fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
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

    pub(super) fn check_descriptor_limit(&self) {
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
}

/// Raises the listen backlog of an already listening socket: calling
/// `listen` again only changes the queue length.
pub(super) fn widen_backlog(listener: &TcpListener) {
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
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS: i32 = 105;
    matches!(err.raw_os_error(), Some(ENOMEM | ENFILE | EMFILE | ENOBUFS))
}
