//! The metrics port's sockets: its listener and at most
//! [`MAX_CONNECTIONS`] HTTP connections, in the reactor's own poll.
//!
//! The request policy is [`MetricsConn`]'s; this does the system calls.
//! Every turn's work here is bounded (accepts, bytes read per connection)
//! and every connection ends by its deadline, so nothing sent to this port
//! can hold up the chat.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

use log::debug;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::metrics::{MetricsConn, Reply, MAX_CONNECTIONS, MAX_REQUEST_BYTES};

/// Bytes read from one metrics connection per loop turn: a whole request
/// and then some; the rest waits for the next turn.
const READ_BUDGET: usize = 2 * MAX_REQUEST_BYTES;
/// Size of one read.
const READ_CHUNK: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Collecting the request.
    Reading,
    /// Sending the response.
    Writing,
    /// Response sent and write side shut: reading and discarding until the
    /// peer closes, so that unread input does not turn the close into a
    /// reset that could destroy the response in flight.
    Draining,
}

struct Connection {
    stream: TcpStream,
    request: MetricsConn,
    stage: Stage,
    response: Vec<u8>,
    sent: usize,
    /// Readiness not used up (edge-triggered).
    readable: bool,
    writable: bool,
    /// The peer closed its side; close as soon as the response is out.
    peer_closed: bool,
}

pub struct MetricsEndpoint {
    listener: TcpListener,
    local_addr: SocketAddr,
    listener_ready: bool,
    conns: Slab<Connection>,
    /// Token of connection 0; connection `k` has `first_token + k`.
    first_token: usize,
    scratch: Box<[u8]>,
}

impl MetricsEndpoint {
    pub fn bind(
        addr: SocketAddr,
        registry: &Registry,
        listener_token: Token,
        first_token: usize,
    ) -> io::Result<MetricsEndpoint> {
        let mut listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, listener_token, Interest::READABLE)?;
        Ok(MetricsEndpoint {
            listener,
            local_addr,
            listener_ready: true,
            conns: Slab::with_capacity(MAX_CONNECTIONS),
            first_token,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn on_listener_event(&mut self) {
        self.listener_ready = true;
    }

    pub fn on_connection_event(&mut self, key: usize, readable: bool, writable: bool) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.readable |= readable;
            conn.writable |= writable;
        }
    }

    /// Whether a turn now would find something to do.
    pub fn has_work(&self) -> bool {
        self.listener_ready
            || self.conns.iter().any(|(_, conn)| match conn.stage {
                Stage::Reading | Stage::Draining => conn.readable,
                Stage::Writing => conn.writable,
            })
    }

    /// The earliest deadline of an open connection.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .iter()
            .map(|(_, conn)| conn.request.deadline())
            .min()
    }

    /// One turn: accept, serve every connection with readiness, close what
    /// has expired. `exposition` renders the metrics, called at most once.
    pub fn serve(
        &mut self,
        now: Instant,
        registry: &Registry,
        mut exposition: impl FnMut() -> String,
    ) {
        self.accept(now, registry);
        let mut body: Option<String> = None;
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let open = self.serve_one(key, &mut |reply: Reply| {
                let metrics = if reply.wants_metrics() {
                    body.get_or_insert_with(&mut exposition).as_bytes()
                } else {
                    &[]
                };
                reply.encode(metrics)
            });
            let expired = self
                .conns
                .get(key)
                .is_some_and(|conn| conn.request.is_expired(now));
            if !open || expired {
                self.close(key, registry);
            }
        }
    }

    /// Accepts up to the cap; beyond it, connections are accepted and
    /// closed at once, so a flood costs a bounded amount per turn and never
    /// a descriptor for long. The chat's listener is another socket.
    fn accept(&mut self, now: Instant, registry: &Registry) {
        for _ in 0..MAX_CONNECTIONS {
            if !self.listener_ready {
                return;
            }
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.listener_ready = false;
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // Out of descriptors, or the peer gave up in the
                    // backlog: either way retry next turn, not now.
                    debug!("metrics: accept failed: {err}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                debug!("metrics: {MAX_CONNECTIONS} connections open, closing the one from {peer}");
                continue;
            }
            let key = self.conns.vacant_key();
            let token = Token(self.first_token + key);
            if let Err(err) =
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            {
                debug!("metrics: cannot register the connection from {peer}: {err}");
                continue;
            }
            self.conns.insert(Connection {
                stream,
                request: MetricsConn::new(now),
                stage: Stage::Reading,
                response: Vec::new(),
                sent: 0,
                // Data may have arrived before registration.
                readable: true,
                writable: true,
                peer_closed: false,
            });
        }
    }

    /// Advances one connection as far as its readiness and this turn's
    /// budget allow. False when it should be closed now.
    fn serve_one(&mut self, key: usize, respond: &mut dyn FnMut(Reply) -> Vec<u8>) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let mut budget = READ_BUDGET;
        loop {
            match conn.stage {
                Stage::Reading | Stage::Draining => {
                    if !conn.readable {
                        return true;
                    }
                    if budget == 0 {
                        return true;
                    }
                    match conn.stream.read(&mut self.scratch) {
                        Ok(0) => {
                            conn.readable = false;
                            conn.peer_closed = true;
                            // Unanswered, or answered and drained: done.
                            return false;
                        }
                        Ok(n) => {
                            budget = budget.saturating_sub(n);
                            if conn.stage == Stage::Reading {
                                if let Some(reply) = conn.request.on_bytes(&self.scratch[..n]) {
                                    conn.response = respond(reply);
                                    conn.stage = Stage::Writing;
                                }
                            }
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            conn.readable = false;
                            return true;
                        }
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => {
                            debug!("metrics: read failed: {err}");
                            return false;
                        }
                    }
                }
                Stage::Writing => {
                    if conn.sent == conn.response.len() {
                        let _ = conn.stream.shutdown(Shutdown::Write);
                        conn.response = Vec::new();
                        if conn.peer_closed {
                            return false;
                        }
                        conn.stage = Stage::Draining;
                        continue;
                    }
                    if !conn.writable {
                        return true;
                    }
                    match conn.stream.write(&conn.response[conn.sent..]) {
                        Ok(0) => return false,
                        Ok(n) => conn.sent += n,
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            conn.writable = false;
                            return true;
                        }
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => {
                            debug!("metrics: write failed: {err}");
                            return false;
                        }
                    }
                }
            }
        }
    }

    fn close(&mut self, key: usize, registry: &Registry) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}
