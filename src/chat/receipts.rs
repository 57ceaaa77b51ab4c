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
    },
    Direct {
        origin: Origin,
        target_nick: String,
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
}

/// Outstanding receipts. Tags are reused only after every copy was
/// reported, so a stale report cannot hit a newer receipt.
#[derive(Default)]
pub struct Receipts {
    pending: Slab<Pending>,
}

impl Receipts {
    pub fn open_room(&mut self, origin: Origin, seq: u64, recipients: usize) -> ReceiptTag {
        ReceiptTag(self.pending.insert(Pending::Room {
            origin,
            seq,
            recipients,
            delivered: 0,
            outstanding: recipients,
        }))
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
        let done = match self.pending.get_mut(tag.0)? {
            Pending::Room {
                delivered,
                outstanding,
                ..
            } => {
                *outstanding = outstanding.saturating_sub(1);
                if was_delivered {
                    *delivered += 1;
                }
                *outstanding == 0
            }
            Pending::Direct { .. } | Pending::Relayed { .. } => true,
        };
        if !done {
            return None;
        }
        Some(match self.pending.remove(tag.0) {
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
        })
    }

    /// Forgets a receipt whose line was never queued anywhere.
    pub fn cancel(&mut self, tag: ReceiptTag) {
        self.pending.try_remove(tag.0);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }
}
