//! Bookkeeping for lines whose delivery the sender wants to hear about.

use slab::Slab;

use super::ClientId;

/// Identifies one outstanding receipt. The transport attaches it to every
/// queued copy of the line and reports each copy once: written or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReceiptTag(pub usize);

/// Who asked, so the answer never reaches a later client that reuses the
/// same `ClientId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub client: ClientId,
    pub serial: u64,
}

pub enum Pending {
    Room {
        origin: Origin,
        seq: u64,
        recipients: usize,
        delivered: usize,
        outstanding: usize,
        /// How many other servers will report their part; `None` until
        /// known (the publication's answer), `Some(0)` alone.
        peers_expected: Option<u64>,
        peers_reported: u64,
    },
    Direct {
        origin: Origin,
        target_nick: String,
    },
    /// A room line from another server, `relay` naming it there: its
    /// local part is reported back once every copy here is settled.
    RelayedRoom {
        relay: u64,
        recipients: usize,
        delivered: usize,
        outstanding: usize,
    },
    /// A direct message from another server; `relay` names it there.
    Relayed {
        relay: u64,
    },
}

/// What a finished receipt tells its sender.
pub enum Finished {
    Room {
        origin: Origin,
        seq: u64,
        recipients: usize,
        delivered: usize,
    },
    Direct {
        origin: Origin,
        target_nick: String,
        delivered: bool,
    },
    Relayed {
        relay: u64,
        delivered: bool,
    },
    RelayedRoom {
        relay: u64,
        recipients: usize,
        delivered: usize,
    },
}

/// Outstanding receipts. Tags are reused only after every copy was
/// reported, so a stale report cannot hit a newer receipt.
#[derive(Default)]
pub struct Receipts {
    pending: Slab<Pending>,
}

impl Receipts {
    /// A room line's receipt; with `peers_report`, it also waits for the
    /// other servers' parts ([`Receipts::peers_will_report`]).
    pub fn open_room(
        &mut self,
        origin: Origin,
        seq: u64,
        recipients: usize,
        peers_report: bool,
    ) -> ReceiptTag {
        ReceiptTag(self.pending.insert(Pending::Room {
            origin,
            seq,
            recipients,
            delivered: 0,
            outstanding: recipients,
            peers_expected: if peers_report { None } else { Some(0) },
            peers_reported: 0,
        }))
    }

    /// A room line from another server reaching `recipients` members here.
    pub fn open_relayed_room(&mut self, relay: u64, recipients: usize) -> ReceiptTag {
        ReceiptTag(self.pending.insert(Pending::RelayedRoom {
            relay,
            recipients,
            delivered: 0,
            outstanding: recipients,
        }))
    }

    /// `servers` other servers got the line and will report their part.
    pub fn peers_will_report(&mut self, tag: ReceiptTag, servers: u64) -> Option<Finished> {
        if let Some(Pending::Room { peers_expected, .. }) = self.pending.get_mut(tag.0) {
            *peers_expected = Some(servers);
        }
        self.finish_if_done(tag)
    }

    /// One other server's part: `recipients` members there, `delivered`
    /// of them got the line.
    pub fn peer_reported(
        &mut self,
        tag: ReceiptTag,
        recipients: usize,
        delivered: usize,
    ) -> Option<Finished> {
        if let Some(Pending::Room {
            recipients: total,
            delivered: got,
            peers_reported,
            ..
        }) = self.pending.get_mut(tag.0)
        {
            *total += recipients;
            *got += delivered;
            *peers_reported += 1;
        }
        self.finish_if_done(tag)
    }

    fn finish_if_done(&mut self, tag: ReceiptTag) -> Option<Finished> {
        let done = match self.pending.get(tag.0)? {
            Pending::Room {
                outstanding,
                peers_expected,
                peers_reported,
                ..
            } => *outstanding == 0 && peers_expected.is_some_and(|n| *peers_reported >= n),
            Pending::RelayedRoom { outstanding, .. } => *outstanding == 0,
            _ => false,
        };
        if done {
            self.finish(tag, true)
        } else {
            None
        }
    }

    pub fn open_direct(&mut self, origin: Origin, target_nick: String) -> ReceiptTag {
        ReceiptTag(self.pending.insert(Pending::Direct {
            origin,
            target_nick,
        }))
    }

    /// Settles one copy of the line; returns the outcome once the last copy
    /// is settled. Unknown tags are ignored.
    pub fn open_relayed(&mut self, relay: u64) -> ReceiptTag {
        ReceiptTag(self.pending.insert(Pending::Relayed { relay }))
    }

    pub fn settle(&mut self, tag: ReceiptTag, was_delivered: bool) -> Option<Finished> {
        match self.pending.get_mut(tag.0)? {
            Pending::Room {
                delivered,
                outstanding,
                ..
            }
            | Pending::RelayedRoom {
                delivered,
                outstanding,
                ..
            } => {
                *outstanding = outstanding.saturating_sub(1);
                if was_delivered {
                    *delivered += 1;
                }
                self.finish_if_done(tag)
            }
            Pending::Direct { .. } | Pending::Relayed { .. } => self.finish(tag, was_delivered),
        }
    }

    fn finish(&mut self, tag: ReceiptTag, was_delivered: bool) -> Option<Finished> {
        Some(match self.pending.try_remove(tag.0)? {
            Pending::Room {
                origin,
                seq,
                recipients,
                delivered,
                ..
            } => Finished::Room {
                origin,
                seq,
                recipients,
                delivered,
            },
            Pending::Direct {
                origin,
                target_nick,
            } => Finished::Direct {
                origin,
                target_nick,
                delivered: was_delivered,
            },
            Pending::Relayed { relay } => Finished::Relayed {
                relay,
                delivered: was_delivered,
            },
            Pending::RelayedRoom {
                relay,
                recipients,
                delivered,
                ..
            } => Finished::RelayedRoom {
                relay,
                recipients,
                delivered,
            },
        })
    }

    pub fn cancel(&mut self, tag: ReceiptTag) {
        self.pending.try_remove(tag.0);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }
}
