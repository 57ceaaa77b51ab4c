//! A fixed-bucket histogram of loop-turn durations.

use std::time::Duration;

/// Upper bounds of the buckets, in nanoseconds, with the `le` label each
/// renders as. An idle turn takes tens of microseconds and a turn that
/// fans one line out to 10,000 clients a few milliseconds; anything past
/// a quarter second is a stall worth seeing as such.
const BOUNDS: [(u64, &str); 12] = [
    (50_000, "0.00005"),
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
];

/// Counts per bucket (not cumulative: one increment per observation), plus
/// the `+Inf` bucket, the sum and the count. Observing is a short scan and
/// two additions, cheap enough for every loop turn.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// `counts[i]` holds observations in `(BOUNDS[i-1], BOUNDS[i]]`; the
    /// last slot holds those above every bound.
    counts: [u64; BOUNDS.len() + 1],
    sum_nanos: u128,
    count: u64,
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn observe(&mut self, duration: Duration) {
        let nanos = duration.as_nanos();
        let slot = BOUNDS
            .iter()
            .position(|&(bound, _)| nanos <= u128::from(bound))
            .unwrap_or(BOUNDS.len());
        self.counts[slot] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of all observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// `(le label, cumulative count)` for every bucket, `+Inf` last, as
    /// Prometheus expects them.
    pub fn cumulative_buckets(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let labels = BOUNDS.iter().map(|&(_, label)| label).chain(["+Inf"]);
        labels
            .zip(self.counts.iter())
            .scan(0u64, |running, (label, &count)| {
                *running += count;
                Some((label, *running))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(histogram: &Histogram) -> Vec<(&'static str, u64)> {
        histogram.cumulative_buckets().collect()
    }

    #[test]
    fn empty_histogram_has_every_bucket_at_zero() {
        let histogram = Histogram::new();
        let all = buckets(&histogram);
        assert_eq!(all.len(), 13);
        assert_eq!(all.first(), Some(&("0.00005", 0)));
        assert_eq!(all.last(), Some(&("+Inf", 0)));
        assert!(all.iter().all(|&(_, count)| count == 0));
        assert_eq!(histogram.count(), 0);
        assert_eq!(histogram.sum_seconds(), 0.0);
    }

    #[test]
    fn a_value_on_a_bound_falls_in_that_bucket() {
        // Prometheus buckets are "less than or equal".
        let mut histogram = Histogram::new();
        histogram.observe(Duration::from_micros(50));
        let all = buckets(&histogram);
        assert_eq!(all[0], ("0.00005", 1));
    }

    #[test]
    fn buckets_are_cumulative_and_inf_counts_everything() {
        let mut histogram = Histogram::new();
        histogram.observe(Duration::from_micros(10)); // first bucket
        histogram.observe(Duration::from_micros(51)); // 0.0001
        histogram.observe(Duration::from_millis(3)); // 0.005
        histogram.observe(Duration::from_secs(2)); // only +Inf
        let all = buckets(&histogram);
        let at = |label: &str| all.iter().find(|(l, _)| *l == label).map(|&(_, c)| c);
        assert_eq!(at("0.00005"), Some(1));
        assert_eq!(at("0.0001"), Some(2));
        assert_eq!(at("0.0025"), Some(2));
        assert_eq!(at("0.005"), Some(3));
        assert_eq!(at("0.25"), Some(3));
        assert_eq!(at("+Inf"), Some(4));
        assert_eq!(histogram.count(), 4);
        assert!(all.windows(2).all(|pair| pair[0].1 <= pair[1].1));
        let expected = 10e-6 + 51e-6 + 3e-3 + 2.0;
        assert!((histogram.sum_seconds() - expected).abs() < 1e-12);
    }

    #[test]
    fn labels_match_their_bounds() {
        for &(nanos, label) in &BOUNDS {
            let parsed: f64 = label.parse().unwrap();
            assert!((parsed * 1e9 - nanos as f64).abs() < 1e-3, "{label}");
        }
        assert!(BOUNDS.windows(2).all(|pair| pair[0].0 < pair[1].0));
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let mut histogram = Histogram::new();
        histogram.observe(Duration::MAX);
        histogram.observe(Duration::MAX);
        assert_eq!(histogram.count(), 2);
        assert_eq!(buckets(&histogram).last(), Some(&("+Inf", 2)));
    }
}
