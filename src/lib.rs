//! Apollonion: a single-threaded chat daemon for plain TCP/telnet clients.
//!
//! - [`line`] turns a client's byte stream into clean lines.
//! - [`chat`] is the chat itself, a sans-IO state machine.
//! - [`server`] is the `mio` reactor that connects the two to sockets.
//! - [`cluster`] joins several servers into one chat through Redis.
//! - [`config`] holds the settings and parses flags and environment.

pub mod chat;
pub mod cluster;
pub mod config;
pub mod line;
pub mod metrics;
pub mod server;
pub mod systemd;

pub use config::Config;
pub use server::{Server, ServerStats, ShutdownHandle, StartError, StatsHandle, Stopped};
