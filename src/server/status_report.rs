//! When to send systemd a new `STATUS=` line, sans IO: whenever the client
//! counts change, but at most once per [`STATUS_INTERVAL`], so a connect
//! storm costs a handful of datagrams, not one per client.

use std::time::{Duration, Instant};

pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct StatusReport {
    /// The counts last sent.
    sent: Option<(usize, usize)>,
    sent_at: Option<Instant>,
}

impl StatusReport {
    /// The status text to send at `now`, if the counts changed since the
    /// last one and the interval allows.
    pub fn poll(&mut self, now: Instant, chatting: usize, waiting: usize) -> Option<String> {
        if self.sent == Some((chatting, waiting)) || self.held_back(now) {
            return None;
        }
        self.sent = Some((chatting, waiting));
        self.sent_at = Some(now);
        Some(format!("{chatting} chatting, {waiting} waiting"))
    }

    /// When a change held back by the interval may be sent.
    pub fn deadline(&self, chatting: usize, waiting: usize) -> Option<Instant> {
        if self.sent == Some((chatting, waiting)) {
            return None;
        }
        self.sent_at.and_then(|at| at.checked_add(STATUS_INTERVAL))
    }

    fn held_back(&self, now: Instant) -> bool {
        self.sent_at
            .is_some_and(|at| now.saturating_duration_since(at) < STATUS_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_sent_at_most_once_per_interval() {
        let start = Instant::now();
        let mut report = StatusReport::default();
        assert_eq!(
            report.poll(start, 0, 0).as_deref(),
            Some("0 chatting, 0 waiting")
        );
        assert_eq!(report.poll(start, 0, 0), None, "unchanged");
        assert_eq!(report.deadline(0, 0), None);
        assert_eq!(report.poll(start, 1, 0), None, "too soon");
        assert_eq!(report.deadline(1, 0), Some(start + STATUS_INTERVAL));
        assert_eq!(
            report.poll(start + STATUS_INTERVAL, 2, 1).as_deref(),
            Some("2 chatting, 1 waiting")
        );
    }
}
