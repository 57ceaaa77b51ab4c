//! How the chat reaches the other servers of a cluster.
//!
//! Defined here, beside its only consumer, like [`Outbox`](super::Outbox):
//! the chat says what it needs from its peers and the cluster code
//! implements it. Alone ([`Alone`]), every answer is immediate and local, so
//! a single server behaves and performs exactly as without a cluster.

use std::ops::Range;

use bytes::Bytes;

use super::ReceiptTag;

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
    /// turn, after the local members got them. `receipts` are the lines
    /// whose sender wants a receipt: the other servers' parts come through
    /// [`Chat::on_receipt_servers`](super::Chat::on_receipt_servers) and
    /// [`Chat::on_receipt_report`](super::Chat::on_receipt_report).
    fn room_batch(
        &mut self,
        room: &str,
        lines: &Bytes,
        line_count: u64,
        receipts: &[(ReceiptTag, Range<usize>)],
    );
    /// A member here (by display nick) joined, left, or was renamed in
    /// `room`.
    fn member_joined(&mut self, room: &str, nick: &str);
    fn member_left(&mut self, room: &str, nick: &str);
    fn member_renamed(&mut self, room: &str, old: &str, new: &str);
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
    fn room_batch(
        &mut self,
        _room: &str,
        _lines: &Bytes,
        _line_count: u64,
        _receipts: &[(ReceiptTag, Range<usize>)],
    ) {
    }
    fn member_joined(&mut self, _room: &str, _nick: &str) {}
    fn member_left(&mut self, _room: &str, _nick: &str) {}
    fn member_renamed(&mut self, _room: &str, _old: &str, _new: &str) {}
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::super::{Chat, ChatConfig, ClientId, Close, Outbox, Sent};
    use super::*;

    const HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// Other servers that answer only when the test says so.
    #[derive(Default)]
    struct Scripted {
        claims: Vec<(Ticket, String)>,
        batches: Vec<(String, String, usize)>,
        remote: usize,
    }

    impl Peers for Scripted {
        fn spans_servers(&self) -> bool {
            true
        }
        fn claim_nick(&mut self, ticket: Ticket, folded: &str) -> Claim {
            if ticket == 0 {
                return Claim::Granted;
            }
            self.claims.push((ticket, folded.to_string()));
            Claim::Pending
        }
        fn release_nick(&mut self, _folded: &str) {}
        fn guest_number(&mut self) -> Option<u64> {
            None
        }
        fn room_batch(
            &mut self,
            room: &str,
            lines: &Bytes,
            _line_count: u64,
            receipts: &[(ReceiptTag, Range<usize>)],
        ) {
            let lines = String::from_utf8_lossy(lines).into_owned();
            self.batches.push((room.to_string(), lines, receipts.len()));
        }
        fn member_joined(&mut self, _room: &str, _nick: &str) {}
        fn member_left(&mut self, _room: &str, _nick: &str) {}
        fn member_renamed(&mut self, _room: &str, _old: &str, _new: &str) {}
        fn remote_members(&self, _room: &str) -> usize {
            self.remote
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

    #[derive(Default)]
    struct Out {
        sent: Vec<(ClientId, String)>,
        tags: Vec<ReceiptTag>,
        held: Vec<ClientId>,
    }

    impl Outbox for Out {
        fn send(&mut self, to: ClientId, line: Bytes, receipt: Option<ReceiptTag>) -> Sent {
            self.tags.extend(receipt);
            self.sent
                .push((to, String::from_utf8_lossy(&line).into_owned()));
            Sent::Queued
        }
        fn close(&mut self, _to: ClientId, _why: Close) {}
        fn hold_input(&mut self, to: ClientId) {
            self.held.push(to);
        }
        fn release_input(&mut self, to: ClientId) {
            self.held.retain(|&held| held != to);
        }
    }

    impl Out {
        fn take(&mut self, id: ClientId) -> Vec<String> {
            let (mine, rest) = std::mem::take(&mut self.sent)
                .into_iter()
                .partition(|(to, _)| *to == id);
            self.sent = rest;
            mine.into_iter().map(|(_, line)| line).collect()
        }
    }

    fn chat() -> (Chat<Scripted>, Out, ClientId, ClientId) {
        let config = ChatConfig {
            max_clients: 10,
            max_waiting: 0,
            max_per_ip: 0,
            max_line: 512,
            announce_limit: 100,
        };
        let mut chat = Chat::with_peers(config, Scripted::default());
        let mut out = Out::default();
        let (a, b) = (ClientId(1), ClientId(2));
        chat.on_connect(&mut out, a, HOST);
        chat.on_connect(&mut out, b, HOST);
        chat.end_turn(&mut out);
        out.sent.clear();
        chat.peers_mut().batches.clear();
        (chat, out, a, b)
    }

    #[test]
    fn a_nickname_claim_holds_the_client_until_the_other_servers_answer() {
        let (mut chat, mut out, a, b) = chat();
        chat.on_line(&mut out, a, "/nick Ada");
        assert_eq!(out.held, [a], "its next lines wait for the answer");
        assert!(out.take(a).is_empty());
        let (ticket, folded) = chat.peers_mut().claims.pop().expect("asked");
        assert_eq!(folded, "ada");
        chat.on_nick_claim(&mut out, ticket, ClaimAnswer::Granted);
        assert!(out.held.is_empty());
        assert_eq!(out.take(a), ["* you are now Ada\r\n"]);
        chat.end_turn(&mut out);
        assert_eq!(out.take(b), ["* guest-1 is now known as Ada\r\n"]);

        chat.on_line(&mut out, b, "/nick Taken");
        let (ticket, _) = chat.peers_mut().claims.pop().expect("asked");
        chat.on_nick_claim(&mut out, ticket, ClaimAnswer::Taken);
        assert_eq!(out.take(b), ["! nickname Taken is taken\r\n"]);
        chat.on_line(&mut out, b, "/nick Slow");
        let (ticket, _) = chat.peers_mut().claims.pop().expect("asked");
        chat.on_nick_claim(&mut out, ticket, ClaimAnswer::Unanswered);
        assert_eq!(
            out.take(b),
            ["! the other servers did not answer, try again\r\n"]
        );
        assert_eq!(chat.nick(b), Some("guest-2"));
        // A late answer for a ticket nobody waits for changes nothing.
        chat.on_nick_claim(&mut out, ticket, ClaimAnswer::Granted);
        assert_eq!(chat.nick(b), Some("guest-2"));
    }

    #[test]
    fn a_lone_speaker_is_heard_by_the_peers_and_remote_lines_reach_every_member() {
        let (mut chat, mut out, a, b) = chat();
        chat.on_line(&mut out, a, "/join #solo");
        chat.end_turn(&mut out);
        chat.peers_mut().batches.clear();
        chat.on_line(&mut out, a, "anyone?");
        chat.end_turn(&mut out);
        assert_eq!(
            chat.peers().batches,
            [("#solo".to_string(), "guest-1: anyone?\r\n".to_string(), 0)]
        );
        out.sent.clear();
        let lines = Bytes::from_static(b"far: one\r\nfar: two\r\n");
        chat.on_remote_lines(&mut out, "#lobby", lines, &[]);
        assert_eq!(out.take(b), ["far: one\r\n", "far: two\r\n"]);
        assert!(out.take(a).is_empty(), "not a member of #lobby any more");
    }

    #[test]
    fn a_receipt_waits_for_the_other_servers_parts() {
        let (mut chat, mut out, a, b) = chat();
        chat.on_line(&mut out, a, "/receipts on");
        chat.on_line(&mut out, a, "counted");
        chat.end_turn(&mut out);
        assert_eq!(chat.peers().batches.last().map(|batch| batch.2), Some(1));
        let tag = *out.tags.last().expect("b's copy is tagged");
        chat.on_written(&mut out, tag);
        out.take(b);
        assert_eq!(
            out.take(a),
            ["* receipts on\r\n"],
            "two servers still to hear from"
        );
        chat.on_receipt_servers(&mut out, tag, 2);
        chat.on_receipt_report(&mut out, tag, 3, 3);
        assert!(out.take(a).is_empty());
        chat.on_receipt_report(&mut out, tag, 2, 1);
        assert_eq!(out.take(a), ["* #1 delivered to 5 of 6\r\n"]);
    }

    #[test]
    fn a_join_counts_the_members_the_other_servers_have() {
        let (mut chat, mut out, a, _b) = chat();
        chat.peers_mut().remote = 5;
        chat.on_line(&mut out, a, "/join #big");
        assert_eq!(out.take(a), ["* you joined #big (6 here)\r\n"]);
    }
}
