//! How the chat reaches the other servers of a cluster.
//!
//! Defined here, beside its only consumer, like [`Outbox`](super::Outbox):
//! the chat says what it needs from its peers and the cluster code
//! implements it. Alone ([`Alone`]), every answer is immediate and local, so
//! a single server behaves and performs exactly as without a cluster.

use bytes::Bytes;

/// The answer to a nickname claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The name is ours now.
    Granted,
    /// The other servers are being asked; the answer comes through
    /// [`Chat::on_nick_claim`](super::Chat::on_nick_claim) with the ticket.
    Pending,
}

/// How a pending claim or query was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimAnswer {
    Granted,
    Taken,
    /// No answer in time: the client is asked to try again.
    Unanswered,
}

/// A ticket the chat gives with a request whose answer comes later. Zero
/// means no answer is wanted.
pub type Ticket = u64;

/// Where a direct message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Handed to the peers; the delivery report comes later with the ticket.
    Remote,
    /// Nobody can be asked: no such user.
    Unknown,
}

pub trait Peers {
    /// Whether other servers may have members in any room. When they may,
    /// every room line is batched and handed to [`room_batch`], even with
    /// nobody else here.
    ///
    /// [`room_batch`]: Peers::room_batch
    fn spans_servers(&self) -> bool;
    /// Claims a case-folded nickname across the servers.
    fn claim_nick(&mut self, ticket: Ticket, folded: &str) -> Claim;
    fn release_nick(&mut self, folded: &str);
    /// A guest number no other server hands out; `None` to count locally.
    fn guest_number(&mut self) -> Option<u64>;
    /// The lines said in `room` during this loop turn, once per room per
    /// turn, after the local members got them.
    fn room_batch(&mut self, room: &str, lines: &Bytes, line_count: u64);
    /// A member (by display nick) joined or left `room`; `local` is how many
    /// members the room now has here.
    fn member_joined(&mut self, room: &str, nick: &str, local: usize);
    fn member_left(&mut self, room: &str, nick: &str, local: usize);
    /// Members of `room` on the other servers, as last heard.
    fn remote_members(&self, room: &str) -> usize;
    /// Asks for the member names of `room` on every server; `false` when
    /// only the local ones can be listed.
    fn list_members(&mut self, ticket: Ticket, room: &str) -> bool;
    /// Asks for every room and its member count on every server; `false`
    /// when only the local ones can be listed.
    fn list_rooms(&mut self, ticket: Ticket) -> bool;
    /// Sends `line` to the user `target` (case-folded) on another server.
    fn direct(&mut self, ticket: Ticket, target: &str, line: Bytes) -> Route;
}

/// A server on its own.
#[derive(Debug, Default, Clone, Copy)]
pub struct Alone;

impl Peers for Alone {
    fn spans_servers(&self) -> bool {
        false
    }
    fn claim_nick(&mut self, _ticket: Ticket, _folded: &str) -> Claim {
        Claim::Granted
    }
    fn release_nick(&mut self, _folded: &str) {}
    fn guest_number(&mut self) -> Option<u64> {
        None
    }
    fn room_batch(&mut self, _room: &str, _lines: &Bytes, _line_count: u64) {}
    fn member_joined(&mut self, _room: &str, _nick: &str, _local: usize) {}
    fn member_left(&mut self, _room: &str, _nick: &str, _local: usize) {}
    fn remote_members(&self, _room: &str) -> usize {
        0
    }
    fn list_members(&mut self, _ticket: Ticket, _room: &str) -> bool {
        false
    }
    fn list_rooms(&mut self, _ticket: Ticket) -> bool {
        false
    }
    fn direct(&mut self, _ticket: Ticket, _target: &str, _line: Bytes) -> Route {
        Route::Unknown
    }
}
