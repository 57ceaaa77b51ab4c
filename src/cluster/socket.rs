//! The socket under a Redis link: a non-blocking `mio` TCP stream that the
//! reactor registers with its own token and pumps on readiness.
//!
//! It knows nothing of RESP; it moves bytes between the stream and a
//! [`LinkIo`], reading and writing until `WouldBlock` as edge-triggered
//! readiness requires, with a read budget so one busy link cannot take a
//! whole loop turn.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::link::LinkIo;

/// Bytes asked of the kernel per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// How a read pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// The socket has nothing more for now; wait for the next event.
    Drained,
    /// The budget ran out with data possibly left: edge-triggered readiness
    /// will not say so again, so the caller must come back by itself.
    BudgetSpent,
    /// Redis closed the connection.
    Closed,
}

/// What one read pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOutcome {
    pub bytes: usize,
    pub status: ReadStatus,
}

pub struct RedisSocket {
    stream: TcpStream,
    peer: SocketAddr,
    connected: bool,
}

impl RedisSocket {
    /// Starts a non-blocking connect; it completes (or fails) later, which
    /// [`poll_connected`](RedisSocket::poll_connected) tells on a writable
    /// event.
    pub fn connect(peer: SocketAddr) -> io::Result<RedisSocket> {
        let stream = TcpStream::connect(peer)?;
        Ok(RedisSocket {
            stream,
            peer,
            connected: false,
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Registers for both directions once. There are only two such sockets
    /// and readiness is edge-triggered, so an always-on WRITABLE interest
    /// costs one event per drained output, and saves a `reregister` per
    /// queued command.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(&mut self.stream)
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the connect has completed: `Ok(false)` while it is still in
    /// progress, an error when it failed (refused, unreachable). Call on
    /// any event until it says `true`.
    pub fn poll_connected(&mut self) -> io::Result<bool> {
        if self.connected {
            return Ok(true);
        }
        if let Some(error) = self.stream.take_error()? {
            return Err(error);
        }
        match self.stream.peer_addr() {
            Ok(_) => {
                // Our own batching decides when to send; Nagle would only
                // add latency to the batch of a loop turn.
                self.stream.set_nodelay(true)?;
                self.connected = true;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads into `buf` until `WouldBlock`, end of stream or `budget`
    /// bytes. Does nothing before the connect completed.
    pub fn read_into(&mut self, buf: &mut BytesMut, budget: usize) -> io::Result<ReadOutcome> {
        let mut total = 0;
        if !self.connected {
            return Ok(ReadOutcome {
                bytes: 0,
                status: ReadStatus::Drained,
            });
        }
        loop {
            if total >= budget {
                return Ok(ReadOutcome {
                    bytes: total,
                    status: ReadStatus::BudgetSpent,
                });
            }
            let start = buf.len();
            let want = READ_CHUNK.min(budget - total).max(1);
            buf.resize(start + want, 0);
            let result = self.stream.read(&mut buf[start..]);
            let n = *result.as_ref().unwrap_or(&0);
            buf.truncate(start + n);
            match result {
                Ok(0) => {
                    return Ok(ReadOutcome {
                        bytes: total,
                        status: ReadStatus::Closed,
                    })
                }
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadOutcome {
                        bytes: total,
                        status: ReadStatus::Drained,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes from `data` until all of it is gone or `WouldBlock`; returns
    /// how much was written. Writes nothing before the connect completed.
    pub fn write_from(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut written = 0;
        if !self.connected {
            return Ok(0);
        }
        while written < data.len() {
            match self.stream.write(&data[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    /// Writes the link's pending output, as much as the socket takes.
    pub fn flush(&mut self, link: &mut impl LinkIo) -> io::Result<usize> {
        let written = self.write_from(link.output())?;
        link.advance_output(written);
        Ok(written)
    }

    /// Reads into the link's input buffer, up to `budget` bytes.
    pub fn fill(&mut self, link: &mut impl LinkIo, budget: usize) -> io::Result<ReadOutcome> {
        self.read_into(link.input_mut(), budget)
    }
}
