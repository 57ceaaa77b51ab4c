//! The metrics endpoint (`--metrics ADDR`), sans IO: the series the
//! reactor keeps, their Prometheus text rendering, and the state of one
//! HTTP connection to the metrics port. The reactor owns the sockets.
//!
//! Wiring, in short: keep a [`Counters`] and a [`Histogram`] in the
//! reactor and bump them as things happen; for each accepted metrics
//! connection keep a [`MetricsConn`], feed it what is read, and when it
//! hands back a [`Reply`], write `reply.encode(&render(&snapshot))`
//! (render only if [`Reply::wants_metrics`]) and close; close it
//! unanswered at [`MetricsConn::deadline`]. [`StatsLine`] turns the same
//! counters into the periodic `info` summary.

mod histogram;
mod http;
mod render;
mod series;
mod stats_line;

pub use histogram::Histogram;
pub use http::{MetricsConn, Reply, MAX_REQUEST_BYTES, METRICS_PATH, REQUEST_TIMEOUT};
pub use render::{render, CONTENT_TYPE};
pub use series::{Counters, DisconnectCause, Gauges, Label, RefuseReason, Snapshot, Tally};
pub use stats_line::StatsLine;

/// Metrics connections open at once; one more is closed on accept. Each
/// costs a descriptor and up to [`MAX_REQUEST_BYTES`] of buffer, and a
/// scraper needs one or two, so this keeps a flood of connections to the
/// metrics port from taking descriptors the chat needs.
pub const MAX_CONNECTIONS: usize = 64;
