//! The Prometheus text exposition format, version 0.0.4.

use std::fmt::Write;

use super::histogram::Histogram;
use super::series::{Label, Snapshot, Tally};

/// The `Content-Type` of what [`render`] produces.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every series of `snapshot`. Names follow the Prometheus
/// conventions: one `apollonion_` prefix, `_total` on counters, base units
/// (`_seconds`, `_bytes`) in the name.
pub fn render(snapshot: &Snapshot<'_>) -> String {
    let gauges = &snapshot.gauges;
    let counters = snapshot.counters;
    let mut out = Exposition::default();

    out.header(
        "apollonion_build_info",
        "gauge",
        "Always 1; the version label names the running build.",
    );
    out.sample(
        "apollonion_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    out.header(
        "apollonion_clients",
        "gauge",
        "Client connections, chatting or in the waiting line.",
    );
    out.sample(
        "apollonion_clients",
        &[("state", "chatting")],
        gauges.clients_chatting,
    );
    out.sample(
        "apollonion_clients",
        &[("state", "waiting")],
        gauges.clients_waiting,
    );
    out.gauge(
        "apollonion_rooms",
        "Rooms with at least one member.",
        gauges.rooms,
    );
    out.gauge(
        "apollonion_output_queued_bytes",
        "Output bytes queued for chat clients and not yet written.",
        gauges.output_queued_bytes,
    );

    out.counter(
        "apollonion_connections_accepted_total",
        "Chat connections accepted from the listening socket.",
        counters.connections_accepted,
    );
    out.tally(
        "apollonion_connections_refused_total",
        "Chat connections closed at once instead of chatting or waiting.",
        &counters.connections_refused,
    );
    out.tally(
        "apollonion_disconnects_total",
        "Chat connections that ended, by cause.",
        &counters.disconnects,
    );
    out.counter(
        "apollonion_lines_received_total",
        "Lines read from clients, commands included.",
        counters.lines_received,
    );
    out.counter(
        "apollonion_lines_delivered_total",
        "Line copies written whole into recipients' sockets (one line to ten people is ten).",
        counters.lines_delivered,
    );
    out.counter(
        "apollonion_lines_skipped_total",
        "Line copies not queued because the recipient was too slow.",
        counters.lines_skipped,
    );
    out.counter(
        "apollonion_direct_messages_total",
        "Direct messages sent with /msg.",
        counters.direct_messages,
    );
    out.counter(
        "apollonion_bytes_written_total",
        "Bytes written to chat clients.",
        counters.bytes_written,
    );
    out.counter(
        "apollonion_loop_turns_total",
        "Turns of the event loop.",
        snapshot.loop_turns.count(),
    );
    out.histogram(
        "apollonion_loop_turn_duration_seconds",
        "Time the event loop spent working in one turn, waiting excluded.",
        snapshot.loop_turns,
    );
    out.text
}

/// Appends metric families to a string. Help texts and label values here
/// are this crate's constants, so they need no escaping; a debug assert
/// keeps it that way.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        debug_assert!(!help.contains(['\\', '\n']));
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (position, (key, label)) in labels.iter().enumerate() {
                debug_assert!(!label.contains(['\\', '"', '\n']));
                if position > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{label}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "gauge", help);
        self.sample(name, &[], value);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        debug_assert!(name.ends_with("_total"));
        self.header(name, "counter", help);
        self.sample(name, &[], value);
    }

    fn tally<L: Label>(&mut self, name: &str, help: &str, tally: &Tally<L>) {
        debug_assert!(name.ends_with("_total"));
        self.header(name, "counter", help);
        for (label, count) in tally.iter() {
            self.sample(name, &[(L::NAME, label)], count);
        }
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.header(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, count) in histogram.cumulative_buckets() {
            self.sample(&bucket, &[("le", le)], count);
        }
        self.sample(&format!("{name}_sum"), &[], histogram.sum_seconds());
        self.sample(&format!("{name}_count"), &[], histogram.count());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::metrics::series::{Counters, DisconnectCause, Gauges, RefuseReason};

    fn example() -> (Counters, Histogram) {
        let mut counters = Counters {
            connections_accepted: 7,
            lines_received: 11,
            lines_delivered: 20,
            lines_skipped: 3,
            direct_messages: 2,
            bytes_written: 4096,
            ..Counters::default()
        };
        counters.connections_refused.add(RefuseReason::ServerFull);
        counters.disconnects.add(DisconnectCause::Quit);
        counters.disconnects.add(DisconnectCause::Quit);
        counters.disconnects.add(DisconnectCause::TooSlow);
        let mut histogram = Histogram::new();
        histogram.observe(Duration::from_micros(30));
        histogram.observe(Duration::from_millis(2));
        (counters, histogram)
    }

    fn rendered() -> String {
        let (counters, histogram) = example();
        render(&Snapshot {
            gauges: Gauges {
                clients_chatting: 5,
                clients_waiting: 1,
                rooms: 2,
                output_queued_bytes: 123,
            },
            counters: &counters,
            loop_turns: &histogram,
        })
    }

    /// Sample lines as `series{labels}` → value.
    fn samples(text: &str) -> HashMap<String, String> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("name and value");
                (series.to_owned(), value.to_owned())
            })
            .collect()
    }

    #[test]
    fn every_series_reports_its_value() {
        let text = rendered();
        let samples = samples(&text);
        let expect = [
            ("apollonion_clients{state=\"chatting\"}", "5"),
            ("apollonion_clients{state=\"waiting\"}", "1"),
            ("apollonion_rooms", "2"),
            ("apollonion_output_queued_bytes", "123"),
            ("apollonion_connections_accepted_total", "7"),
            (
                "apollonion_connections_refused_total{reason=\"server_full\"}",
                "1",
            ),
            (
                "apollonion_connections_refused_total{reason=\"too_many_from_address\"}",
                "0",
            ),
            (
                "apollonion_connections_refused_total{reason=\"shutting_down\"}",
                "0",
            ),
            ("apollonion_disconnects_total{cause=\"quit\"}", "2"),
            ("apollonion_disconnects_total{cause=\"too_slow\"}", "1"),
            ("apollonion_disconnects_total{cause=\"hung_up\"}", "0"),
            ("apollonion_disconnects_total{cause=\"shutdown\"}", "0"),
            ("apollonion_lines_received_total", "11"),
            ("apollonion_lines_delivered_total", "20"),
            ("apollonion_lines_skipped_total", "3"),
            ("apollonion_direct_messages_total", "2"),
            ("apollonion_bytes_written_total", "4096"),
            ("apollonion_loop_turns_total", "2"),
            (
                "apollonion_loop_turn_duration_seconds_bucket{le=\"0.00005\"}",
                "1",
            ),
            (
                "apollonion_loop_turn_duration_seconds_bucket{le=\"0.001\"}",
                "1",
            ),
            (
                "apollonion_loop_turn_duration_seconds_bucket{le=\"0.0025\"}",
                "2",
            ),
            (
                "apollonion_loop_turn_duration_seconds_bucket{le=\"+Inf\"}",
                "2",
            ),
            ("apollonion_loop_turn_duration_seconds_count", "2"),
            ("apollonion_loop_turn_duration_seconds_sum", "0.00203"),
        ];
        for (series, value) in expect {
            assert_eq!(
                samples.get(series).map(String::as_str),
                Some(value),
                "{series}\n{text}"
            );
        }
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = rendered();
        assert!(text.ends_with('\n'));
        let mut declared: Option<(String, String)> = None;
        let mut families = Vec::new();
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                let type_line = lines[at + 1];
                let kind = type_line
                    .strip_prefix(&format!("# TYPE {name} "))
                    .unwrap_or_else(|| panic!("TYPE after HELP for {name}"));
                assert!(["counter", "gauge", "histogram"].contains(&kind));
                assert!(name.starts_with("apollonion_"), "{name}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
                assert!(!families.contains(&name.to_owned()), "{name} twice");
                families.push(name.to_owned());
                declared = Some((name.to_owned(), kind.to_owned()));
            } else if !line.starts_with('#') {
                let (name, kind) = declared.as_ref().expect("sample after a header");
                let series = line.split(['{', ' ']).next().unwrap();
                let allowed = if kind == "histogram" {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| series == format!("{name}{suffix}"))
                } else {
                    series == name
                };
                assert!(allowed, "{line} under {name}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert_eq!(families.len(), 14, "{families:?}");
    }
}
