//! What the reactor counts and what a scrape reports.

use std::marker::PhantomData;

use super::histogram::Histogram;

/// A closed set of label values for one labelled series. Every value is
/// exported from the start, at zero, so that `rate()` and alerts see a
/// series before its first event.
pub trait Label: Copy + 'static {
    /// The label's name in the exposition, e.g. `reason`.
    const NAME: &'static str;
    const ALL: &'static [Self];
    /// The label's value in the exposition: lower case, underscores.
    fn value(self) -> &'static str;
    /// Position in [`Label::ALL`].
    fn index(self) -> usize;
}

/// Why a new connection was turned away before it could chat or wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The chat and the waiting line were both full.
    ServerFull,
    /// `--max-per-ip` connections from that address already.
    TooManyFromAddress,
    /// Accepted while a shutdown was under way.
    ShuttingDown,
}

impl Label for RefuseReason {
    const NAME: &'static str = "reason";
    const ALL: &'static [Self] = &[
        RefuseReason::ServerFull,
        RefuseReason::TooManyFromAddress,
        RefuseReason::ShuttingDown,
    ];

    fn value(self) -> &'static str {
        match self {
            RefuseReason::ServerFull => "server_full",
            RefuseReason::TooManyFromAddress => "too_many_from_address",
            RefuseReason::ShuttingDown => "shutting_down",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a chat connection (chatting or waiting) ended. Mirrors the
/// reactor's close causes; refusals are counted apart, as
/// [`RefuseReason`], not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The client typed `/quit`.
    Quit,
    /// The client closed its side.
    HungUp,
    /// Took no output for `--write-timeout`.
    TooSlow,
    /// Sent nothing for `--idle-timeout`.
    Idle,
    /// Reset, or any other socket error.
    Reset,
    /// Sent an HTTP request to the chat port.
    HttpRequest,
    /// Closed by the chat itself for any other reason.
    ClosedByServer,
    /// Still connected when the server shut down.
    Shutdown,
}

impl Label for DisconnectCause {
    const NAME: &'static str = "cause";
    const ALL: &'static [Self] = &[
        DisconnectCause::Quit,
        DisconnectCause::HungUp,
        DisconnectCause::TooSlow,
        DisconnectCause::Idle,
        DisconnectCause::Reset,
        DisconnectCause::HttpRequest,
        DisconnectCause::ClosedByServer,
        DisconnectCause::Shutdown,
    ];

    fn value(self) -> &'static str {
        match self {
            DisconnectCause::Quit => "quit",
            DisconnectCause::HungUp => "hung_up",
            DisconnectCause::TooSlow => "too_slow",
            DisconnectCause::Idle => "idle",
            DisconnectCause::Reset => "reset",
            DisconnectCause::HttpRequest => "http_request",
            DisconnectCause::ClosedByServer => "closed_by_server",
            DisconnectCause::Shutdown => "shutdown",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Most label values any [`Label`] may have; a fixed array keeps a
/// counter increment free of allocation and hashing.
const MAX_LABEL_VALUES: usize = 16;

/// One counter per value of `L`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally<L: Label> {
    counts: [u64; MAX_LABEL_VALUES],
    label: PhantomData<L>,
}

impl<L: Label> Default for Tally<L> {
    fn default() -> Self {
        debug_assert!(L::ALL.len() <= MAX_LABEL_VALUES);
        Tally {
            counts: [0; MAX_LABEL_VALUES],
            label: PhantomData,
        }
    }
}

impl<L: Label> Tally<L> {
    pub fn add(&mut self, label: L) {
        self.counts[label.index()] += 1;
    }

    pub fn get(&self, label: L) -> u64 {
        self.counts[label.index()]
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(label value, count)` for every value, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        L::ALL
            .iter()
            .map(|&label| (label.value(), self.counts[label.index()]))
    }
}

/// Counters the reactor keeps and only ever increments. Plain integers:
/// the reactor is single-threaded, and a scrape reads them in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub connections_accepted: u64,
    pub connections_refused: Tally<RefuseReason>,
    pub disconnects: Tally<DisconnectCause>,
    /// Lines read from clients and handed to the chat (commands included).
    pub lines_received: u64,
    /// Copies of lines the recipients' sockets took whole (one line to 10
    /// people is 10): counted when written, so a copy still queued when its
    /// connection dies is not in it, nor is a skipped line.
    pub lines_delivered: u64,
    /// Lines not queued for a too-slow client (`--max-outbuf`).
    pub lines_skipped: u64,
    pub direct_messages: u64,
    /// Bytes the kernel accepted from us on chat connections.
    pub bytes_written: u64,
}

/// Values read from the live state at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub clients_chatting: u64,
    pub clients_waiting: u64,
    pub rooms: u64,
    /// Output bytes queued on all chat connections, not yet written.
    pub output_queued_bytes: u64,
}

/// Everything one scrape reports. The loop-turn count is the histogram's
/// count, so the two cannot disagree. Cluster mode will add an optional
/// field of its own here (link state, publications in and out, lines
/// lost), rendered by [`super::render`] when present.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub gauges: Gauges,
    pub counters: &'a Counters,
    pub loop_turns: &'a Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_labels<L: Label + std::fmt::Debug + PartialEq>() {
        assert!(L::ALL.len() <= MAX_LABEL_VALUES);
        for (position, &label) in L::ALL.iter().enumerate() {
            assert_eq!(label.index(), position, "{label:?}");
            let value = label.value();
            assert!(
                value.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{value}"
            );
        }
        let mut values: Vec<_> = L::ALL.iter().map(|l| l.value()).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), L::ALL.len());
    }

    #[test]
    fn label_sets_are_consistent() {
        check_labels::<RefuseReason>();
        check_labels::<DisconnectCause>();
    }

    #[test]
    fn tally_counts_per_label_and_lists_every_label() {
        let mut tally = Tally::<DisconnectCause>::default();
        tally.add(DisconnectCause::Quit);
        tally.add(DisconnectCause::Quit);
        tally.add(DisconnectCause::Shutdown);
        assert_eq!(tally.get(DisconnectCause::Quit), 2);
        assert_eq!(tally.get(DisconnectCause::Idle), 0);
        assert_eq!(tally.total(), 3);
        let listed: Vec<_> = tally.iter().collect();
        assert_eq!(listed.len(), DisconnectCause::ALL.len());
        assert_eq!(listed[0], ("quit", 2));
        assert_eq!(listed.last(), Some(&("shutdown", 1)));
    }
}
