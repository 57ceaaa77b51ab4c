//! When to warn that lines were skipped for a client, sans IO: at most one
//! warning per client per [`SKIP_WARNING_INTERVAL`], carrying every skip
//! since the previous one. A client stuck behind a full queue can lose
//! thousands of lines a second; one log line per line would flood the log.

use std::time::{Duration, Instant};

/// The shortest gap between two skip warnings for one client.
pub const SKIP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct SkipWarnings {
    /// Lines skipped and not yet in a warning.
    unreported: u64,
    last_warning: Option<Instant>,
    /// On the reactor's list of clients to look at after this turn.
    listed: bool,
}

impl SkipWarnings {
    /// One more line skipped. True when the caller must put the client on
    /// its list for [`SkipWarnings::take_due`] (once per turn).
    pub fn skipped(&mut self) -> bool {
        self.unreported += 1;
        !std::mem::replace(&mut self.listed, true)
    }

    /// The count to warn about now, if a warning is due; otherwise the
    /// skips wait for the next warning (the next skip after the interval
    /// reports them all).
    pub fn take_due(&mut self, now: Instant) -> Option<u64> {
        self.listed = false;
        if self.unreported == 0 {
            return None;
        }
        let due = self
            .last_warning
            .is_none_or(|at| now.saturating_duration_since(at) >= SKIP_WARNING_INTERVAL);
        if !due {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_with_every_skip_in_between() {
        let start = Instant::now();
        let mut warnings = SkipWarnings::default();
        assert!(warnings.skipped());
        assert!(!warnings.skipped(), "listed once per turn");
        assert_eq!(warnings.take_due(start), Some(2));
        assert_eq!(warnings.take_due(start), None, "nothing new");

        let soon = start + SKIP_WARNING_INTERVAL - Duration::from_millis(1);
        assert!(warnings.skipped());
        assert_eq!(warnings.take_due(soon), None, "too soon");
        assert!(warnings.skipped(), "listed again in a later turn");
        let later = start + SKIP_WARNING_INTERVAL;
        assert_eq!(warnings.take_due(later), Some(2));
    }
}
