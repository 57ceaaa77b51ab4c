//! Handles for steering and watching a running server from other threads.

use std::io;
use std::sync::{Arc, Mutex};

use mio::Waker;

use crate::chat::ChatStats;

/// Asks a running server, from another thread, for an orderly shutdown, as
/// SIGTERM would.
#[derive(Clone)]
pub struct ShutdownHandle {
    pub(super) waker: Arc<Waker>,
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
    pub(super) shared: Arc<Mutex<ServerStats>>,
}

impl StatsHandle {
    pub fn get(&self) -> ServerStats {
        match self.shared.lock() {
            Ok(stats) => *stats,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}
