//! The periodic one-line summary at `info` (`--stats-interval`), sans IO:
//! the reactor asks when the next one is due and hands in the counts.

use std::time::{Duration, Instant};

use super::series::{Counters, Gauges};

/// Schedules the summary and remembers the counters at the previous one,
/// so each line reports what happened since.
#[derive(Debug, Clone)]
pub struct StatsLine {
    interval: Duration,
    next: Instant,
    previous: Counters,
}

impl StatsLine {
    /// `None` when `interval` is zero (summaries off). The first line is
    /// due one interval after `now`.
    pub fn new(interval: Duration, now: Instant) -> Option<Self> {
        if interval.is_zero() {
            return None;
        }
        Some(StatsLine {
            interval,
            next: now.checked_add(interval)?,
            previous: Counters::default(),
        })
    }

    /// When the reactor should wake to log the next line.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// The line to log if one is due at `now`, and schedules the next one.
    /// After a long stall the next line is one interval from `now`, not a
    /// burst of catch-up lines.
    pub fn poll(&mut self, now: Instant, gauges: &Gauges, counters: &Counters) -> Option<String> {
        if now < self.next {
            return None;
        }
        let line = format!(
            "stats: {} chatting, {} waiting, {} rooms; {} lines in, {} delivered, {} skipped, {} connections accepted in the last {}s",
            gauges.clients_chatting,
            gauges.clients_waiting,
            gauges.rooms,
            counters.lines_received.saturating_sub(self.previous.lines_received),
            counters.lines_delivered.saturating_sub(self.previous.lines_delivered),
            counters.lines_skipped.saturating_sub(self.previous.lines_skipped),
            counters.connections_accepted.saturating_sub(self.previous.connections_accepted),
            (now - (self.next - self.interval)).as_secs(),
        );
        self.previous = *counters;
        self.next = now.checked_add(self.interval).unwrap_or(now);
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges(chatting: u64) -> Gauges {
        Gauges {
            clients_chatting: chatting,
            clients_waiting: 1,
            rooms: 2,
            output_queued_bytes: 0,
        }
    }

    #[test]
    fn zero_interval_means_off() {
        assert!(StatsLine::new(Duration::ZERO, Instant::now()).is_none());
    }

    #[test]
    fn a_line_is_due_once_per_interval_with_the_counts_since_the_last() {
        let start = Instant::now();
        let interval = Duration::from_secs(300);
        let mut stats = StatsLine::new(interval, start).unwrap();
        assert_eq!(stats.deadline(), start + interval);
        let mut counters = Counters {
            lines_received: 10,
            lines_delivered: 40,
            connections_accepted: 3,
            ..Counters::default()
        };
        assert_eq!(
            stats.poll(
                start + interval - Duration::from_millis(1),
                &gauges(3),
                &counters
            ),
            None
        );

        let first = stats.poll(start + interval, &gauges(3), &counters).unwrap();
        assert_eq!(
            first,
            "stats: 3 chatting, 1 waiting, 2 rooms; 10 lines in, 40 delivered, 0 skipped, 3 connections accepted in the last 300s"
        );
        assert_eq!(stats.deadline(), start + 2 * interval);
        assert_eq!(stats.poll(start + interval, &gauges(3), &counters), None);

        counters.lines_received += 5;
        counters.lines_delivered += 7;
        counters.lines_skipped += 1;
        let second = stats
            .poll(start + 2 * interval, &gauges(4), &counters)
            .unwrap();
        assert!(
            second.contains("4 chatting")
                && second.contains("5 lines in, 7 delivered, 1 skipped, 0 connections"),
            "{second}"
        );
    }

    #[test]
    fn a_late_turn_logs_once_and_reschedules_from_now() {
        let start = Instant::now();
        let interval = Duration::from_secs(10);
        let mut stats = StatsLine::new(interval, start).unwrap();
        let late = start + Duration::from_secs(35);
        let line = stats.poll(late, &gauges(0), &Counters::default()).unwrap();
        assert!(line.ends_with("in the last 35s"), "{line}");
        assert_eq!(stats.poll(late, &gauges(0), &Counters::default()), None);
        assert_eq!(stats.deadline(), late + interval);
    }
}
