//! The start of the sans-IO `Cluster` state machine: this node's
//! registration (its alive key), nickname claims and guest-number blocks.
//!
//! It speaks to Redis only through [`Request`]s it queues and the
//! [`Reply`]s the caller hands back, and learns the time only from `now`
//! arguments, so it is tested against a fake Redis (`fake_redis.rs`) on a
//! virtual clock. The reactor's part: pass each request to
//! [`CommandLink::push_command`](super::link::CommandLink::push_command)
//! with its id as the tag, route replies to [`Cluster::on_reply`], and
//! report ids that never got one (queue full, link lost) to
//! [`Cluster::on_unanswered`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::keys::{Keys, CLAIM_NICK, REAP_LOST, RELEASE_NICK};
use super::link::{CommandLink, Reply};
use super::wire::{
    encode_direct_header, encode_room_batch_header, DeliveryOutcome, DeliveryReport, Departed,
    DepartureCause, Envelope, Header, Message, NodeEvent, NodeId, Presence, ReceiptReport,
    WireReceipt,
};
use crate::chat::{Claim, DirectOutcome, Peers, ReceiptTag, Route, Ticket};

/// How long a client waits for the other servers before it is told they
/// did not answer (SPEC §4).
pub const ANSWER_PATIENCE: Duration = Duration::from_secs(5);

/// How often a server looks for lost ones (at most; a third of the node
/// timeout when that is shorter), so a death is announced within the
/// timeout plus this.
pub const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// What the members of a room that spans servers are told when the link
/// to the others is lost, and when it is back (SPEC §4).
pub const CONTACT_LOST: &str =
    "lost contact with the other servers: only people on this server hear you";
pub const CONTACT_BACK: &str = "back in contact with the other servers";

/// A change of the subscriber link's channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    Subscribe(Bytes),
    Unsubscribe(Bytes),
}

pub type RequestId = u64;

/// One Redis command for the command link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    pub args: Vec<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This node now holds the name cluster-wide.
    Granted,
    /// Another node's user has it.
    Taken,
    /// Redis did not answer (link down, queue full): the caller decides,
    /// by SPEC §4 to keep serving its own users.
    Unanswered,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// The answer to [`Cluster::claim_nick`], with the caller's ticket.
    NickClaim {
        ticket: u64,
        folded: String,
        outcome: ClaimOutcome,
    },
    /// Guest numbers are available again after
    /// [`Cluster::take_guest_number`] found none.
    GuestNumbersReady,
    /// Lines said in a room on another server; the lines with a receipt,
    /// each with the relay naming it in the report back.
    RemoteLines {
        room: String,
        lines: Bytes,
        receipts: Vec<(u64, Range<usize>)>,
    },
    /// This many other servers got the room line with receipt `tag` and
    /// will report their part.
    ReceiptServers { tag: u64, servers: u64 },
    /// Another server's part of the receipt `tag`.
    ReceiptReport {
        tag: u64,
        recipients: u64,
        delivered: u64,
    },
    /// A direct message for a local user; `relay` names it in the report.
    RemoteDirect {
        target: String,
        line: Bytes,
        relay: u64,
    },
    /// The target of direct message `ticket` was looked up (and the
    /// message sent, if found): its sender may go on.
    DirectLookedUp { ticket: u64 },
    /// What became of a direct message this node sent.
    DirectReport { ticket: u64, outcome: DirectOutcome },
    /// `/who` across the servers; `None` when Redis did not answer.
    MemberList {
        ticket: u64,
        names: Option<Vec<String>>,
    },
    /// `/rooms` across the servers; `None` when Redis did not answer.
    RoomList {
        ticket: u64,
        rooms: Option<Vec<(String, usize)>>,
    },
    /// Another server's members of `room` are gone with it.
    MembersLeft {
        room: String,
        nicks: Vec<String>,
        cause: DepartureCause,
    },
    /// Members of these rooms are to be told [`CONTACT_LOST`] or
    /// [`CONTACT_BACK`].
    Contact { rooms: Vec<String>, back: bool },
    /// A name this server's user held was taken by another server's user
    /// while the link was down or this server was counted lost.
    NickLost { folded: String },
    /// Lines of other servers in `room` that never arrived.
    LinesLost { room: String, count: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `--cluster-name`: the prefix of every key and channel.
    pub cluster_name: String,
    pub node: NodeId,
    /// `--node-timeout`: the alive key lives this long unless refreshed.
    pub node_timeout: Duration,
    /// Guest numbers reserved per `INCRBY`.
    pub guest_block: u64,
}

impl ClusterSettings {
    pub fn new(cluster_name: &str, node: NodeId) -> ClusterSettings {
        ClusterSettings {
            cluster_name: cluster_name.to_string(),
            node,
            node_timeout: Duration::from_secs(10),
            guest_block: 100,
        }
    }
}

/// What a request was for, to act on its reply.
enum Purpose {
    Claim {
        ticket: u64,
        folded: String,
    },
    Release,
    /// Re-claiming a name held before the link was lost.
    Reclaim {
        folded: String,
    },
    GuestBlock,
    /// The alive key's refresh; `check`: a missing old value means the
    /// others counted this node lost meanwhile.
    Alive {
        check: bool,
    },
    JoinNodes,
    Reap,
    /// Replies nobody waits for: publications, membership bookkeeping.
    Fire,
    /// A room batch with receipts: the reply counts the servers that will
    /// report.
    RoomPublish {
        tags: Vec<u64>,
    },
    DirectLookup {
        ticket: u64,
        target: String,
        line: Bytes,
    },
    DirectSent {
        ticket: u64,
    },
    Members {
        ticket: u64,
    },
    Rooms {
        ticket: u64,
    },
}

pub struct Cluster {
    settings: ClusterSettings,
    keys: Keys,
    node_text: Bytes,
    link_up: bool,
    next_id: RequestId,
    requests: VecDeque<Request>,
    waiting: HashMap<RequestId, Purpose>,
    events: VecDeque<ClusterEvent>,
    /// Reserved guest numbers not yet handed out.
    guests: Range<u64>,
    /// The next block once the current one runs low.
    spare_guests: Option<Range<u64>>,
    guest_block_asked: bool,
    someone_waits_for_guests: bool,
    next_alive_refresh: Option<Instant>,
    /// The latest `now` given, for deadlines set by calls without one.
    now: Option<Instant>,
    /// Requests a client waits for, oldest first, with their deadlines.
    deadlines: VecDeque<(Instant, RequestId)>,
    subscriptions: VecDeque<Subscription>,
    /// Local members of each room by display nick.
    local: HashMap<String, HashSet<String>>,
    /// Members of each room on other servers, from their presence.
    remote: HashMap<String, HashMap<NodeId, u64>>,
    /// Rooms whose local count changed since presence was last published.
    presence_due: HashSet<String>,
    /// Sequence numbers of this node's publications.
    next_seq: u64,
    relays: HashMap<u64, (NodeId, u64)>,
    next_relay: u64,
    /// Rooms subscribed to but not yet confirmed, with the publications to
    /// them held back meanwhile: a server that published before its own
    /// subscription was in place could miss the answers.
    unconfirmed: HashMap<String, Vec<(Bytes, Vec<u64>)>>,
    /// Names (case-folded) this node holds, re-claimed after a reconnect.
    held_nicks: HashSet<String>,
    next_reap: Option<Instant>,
    /// Rooms told [`CONTACT_LOST`], to be told [`CONTACT_BACK`].
    apart: HashSet<String>,
    /// Direct messages sent whose delivery report has not come, with when
    /// they are given up.
    direct_deadlines: VecDeque<(Instant, u64)>,
    awaited_directs: HashSet<u64>,
    /// Room receipts whose other servers have not all reported.
    receipts: HashMap<u64, PendingReceipt>,
    receipt_deadlines: VecDeque<(Instant, u64)>,
    /// This node's next line number in each room's stream.
    room_seq: HashMap<String, u64>,
    /// The next line number expected from each (origin, room) stream.
    streams: HashMap<(NodeId, String), u64>,
    lines_lost: u64,
}

/// A receipt of ours waiting for the other servers' parts.
struct PendingReceipt {
    /// The other servers' member counts when the line went out, to count
    /// the recipients of a server that never reports.
    counts: HashMap<NodeId, u64>,
    reported: Vec<NodeId>,
    /// How many servers will report, once `PUBLISH` answered.
    servers: Option<u64>,
}

impl Cluster {
    pub fn new(settings: ClusterSettings) -> Cluster {
        let keys = Keys::new(&settings.cluster_name);
        let node_text = Bytes::from(settings.node.to_string());
        Cluster {
            settings,
            keys,
            node_text,
            link_up: false,
            next_id: 0,
            requests: VecDeque::new(),
            waiting: HashMap::new(),
            events: VecDeque::new(),
            guests: 0..0,
            spare_guests: None,
            guest_block_asked: false,
            someone_waits_for_guests: false,
            next_alive_refresh: None,
            now: None,
            deadlines: VecDeque::new(),
            subscriptions: VecDeque::new(),
            local: HashMap::new(),
            remote: HashMap::new(),
            presence_due: HashSet::new(),
            next_seq: 0,
            relays: HashMap::new(),
            next_relay: 0,
            unconfirmed: HashMap::new(),
            held_nicks: HashSet::new(),
            next_reap: None,
            apart: HashSet::new(),
            direct_deadlines: VecDeque::new(),
            awaited_directs: HashSet::new(),
            receipts: HashMap::new(),
            receipt_deadlines: VecDeque::new(),
            room_seq: HashMap::new(),
            streams: HashMap::new(),
            lines_lost: 0,
        }
    }

    /// Lines of other servers this node knows it missed, in all.
    pub fn lines_lost(&self) -> u64 {
        self.lines_lost
    }

    pub fn node(&self) -> NodeId {
        self.settings.node
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn is_link_up(&self) -> bool {
        self.link_up
    }

    fn request(&mut self, purpose: Purpose, args: Vec<Bytes>) {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id, purpose);
        self.requests.push_back(Request { id, args });
    }

    /// The command link finished its handshake: announce this node, mark
    /// it alive and make sure guest numbers are in stock.
    pub fn link_up(&mut self, now: Instant) {
        self.link_up = true;
        self.now = Some(now);
        let node_channel = self.keys.node_channel(self.settings.node);
        self.subscriptions
            .push_back(Subscription::Subscribe(node_channel));
        let rooms: Vec<String> = self.local.keys().cloned().collect();
        for room in &rooms {
            self.subscribe_room(room);
        }
        self.refresh_alive(now, false);
        self.register_all();
        self.next_reap = Some(now);
        self.stock_guests();
        if !self.apart.is_empty() {
            let rooms = self.apart.drain().collect();
            self.events
                .push_back(ClusterEvent::Contact { rooms, back: true });
        }
    }

    /// Puts this node's names, members and counts (back) into Redis and
    /// asks the other servers for theirs: after a reconnect, or when the
    /// others counted this node lost while it was only cut off.
    fn register_all(&mut self) {
        let lock = self.keys.reap_lock(self.settings.node);
        self.request(Purpose::Fire, vec!["DEL".into(), lock]);
        let nodes = self.keys.nodes();
        let node = self.node_text.clone();
        self.request(Purpose::JoinNodes, vec!["SADD".into(), nodes, node]);
        let mut names: Vec<String> = self.held_nicks.iter().cloned().collect();
        names.sort_unstable();
        for folded in names {
            let args = self.nick_script(CLAIM_NICK, &folded);
            self.request(Purpose::Reclaim { folded }, args);
        }
        let rooms: Vec<String> = self.local.keys().cloned().collect();
        for room in rooms {
            let names: Vec<String> = self.local[&room].iter().cloned().collect();
            for nick in names {
                self.register_member(&room, &nick);
            }
            self.count_room(&room);
            // The others' counts of this room are asked for again: they may
            // have dropped ours, and we theirs.
            let header = self.room_header(&room, 0);
            let payload = Envelope {
                header,
                message: Message::Node(NodeEvent::Hello),
            }
            .to_bytes();
            self.publish_to_room(&room, payload, Vec::new());
            self.presence_due.insert(room);
        }
    }

    /// The command link is gone. Whatever waited on it is settled now as
    /// unanswered; its replies, should any come, are for a dead link.
    pub fn link_down(&mut self) {
        self.link_up = false;
        let mut told: Vec<String> = self
            .remote
            .keys()
            .filter(|room| self.local.contains_key(*room) && !self.apart.contains(*room))
            .cloned()
            .collect();
        if !told.is_empty() {
            told.sort_unstable();
            self.apart.extend(told.iter().cloned());
            self.events.push_back(ClusterEvent::Contact {
                rooms: told,
                back: false,
            });
        }
        self.next_reap = None;
        self.subscriptions.clear();
        self.unconfirmed.clear();
        self.remote.clear();
        self.deadlines.clear();
        self.next_alive_refresh = None;
        self.requests.clear();
        let mut ids: Vec<RequestId> = self.waiting.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.on_unanswered(id);
        }
        // Reports cannot come any more: settle what waited for them now.
        self.expire_receipts_and_directs(None);
    }

    /// Settles the receipts and direct messages whose reports did not come
    /// by `now` (all of them when `None`): the silent servers' recipients
    /// count as not delivered.
    fn expire_receipts_and_directs(&mut self, now: Option<Instant>) {
        let due = |at: Instant| now.is_none_or(|now| at <= now);
        while let Some(&(at, tag)) = self.receipt_deadlines.front() {
            if !due(at) {
                break;
            }
            self.receipt_deadlines.pop_front();
            let Some(pending) = self.receipts.remove(&tag) else {
                continue;
            };
            let reported = pending.reported.len() as u64;
            let Some(servers) = pending.servers else {
                // PUBLISH never answered: only those who reported count.
                self.events.push_back(ClusterEvent::ReceiptServers {
                    tag,
                    servers: reported,
                });
                continue;
            };
            let mut silent_recipients: u64 = pending
                .counts
                .iter()
                .filter(|(node, _)| !pending.reported.contains(node))
                .map(|(_, count)| count)
                .sum();
            for _ in reported..servers {
                self.events.push_back(ClusterEvent::ReceiptReport {
                    tag,
                    recipients: std::mem::take(&mut silent_recipients),
                    delivered: 0,
                });
            }
        }
        while let Some(&(at, ticket)) = self.direct_deadlines.front() {
            if !due(at) {
                break;
            }
            self.direct_deadlines.pop_front();
            if self.awaited_directs.remove(&ticket) {
                self.events.push_back(ClusterEvent::DirectReport {
                    ticket,
                    outcome: DirectOutcome::Left,
                });
            }
        }
    }

    /// Runs what is due at `now`: the alive key's refresh.
    pub fn tick(&mut self, now: Instant) {
        self.now = Some(now);
        while let Some(&(at, id)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            self.on_unanswered(id);
        }
        if self.next_alive_refresh.is_some_and(|at| at <= now) {
            self.refresh_alive(now, true);
        }
        if self.next_reap.is_some_and(|at| at <= now) {
            self.look_for_lost_nodes(now);
        }
        self.expire_receipts_and_directs(Some(now));
    }

    /// When [`tick`](Cluster::tick) next has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        [
            self.deadlines.front().map(|&(at, _)| at),
            self.next_alive_refresh,
            self.next_reap,
            self.receipt_deadlines.front().map(|&(at, _)| at),
            self.direct_deadlines.front().map(|&(at, _)| at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn look_for_lost_nodes(&mut self, now: Instant) {
        let interval = REAP_INTERVAL.min(self.settings.node_timeout / 3);
        self.next_reap = Some(now + interval.max(Duration::from_millis(10)));
        let lock_ms = self.settings.node_timeout.as_millis().max(1).to_string();
        let args = vec![
            "EVAL".into(),
            Bytes::from_static(REAP_LOST.as_bytes()),
            "1".into(),
            self.keys.nodes(),
            Bytes::copy_from_slice(self.keys.prefix().as_bytes()),
            self.node_text.clone(),
            lock_ms.into(),
        ];
        self.request(Purpose::Reap, args);
    }

    /// The reaping script's answer: triples `node, room, nick`.
    fn on_reaped(&mut self, items: &[Reply]) {
        let text = |reply: &Reply| {
            reply
                .bytes()
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(str::to_string)
        };
        let mut rooms: Vec<(NodeId, String, Vec<String>)> = Vec::new();
        for triple in items.chunks(3) {
            let [node, room, nick] = triple else {
                continue;
            };
            let (Some(node), Some(room), Some(nick)) = (text(node), text(room), text(nick)) else {
                continue;
            };
            let Ok(node) = node.parse::<NodeId>() else {
                continue;
            };
            if room.is_empty() {
                self.forget_node(node);
                continue;
            }
            match rooms.iter_mut().find(|(n, r, _)| *n == node && *r == room) {
                Some((_, _, nicks)) => nicks.push(nick),
                None => rooms.push((node, room, vec![nick])),
            }
        }
        for (node, room, nicks) in rooms {
            let header = self.room_header(&room, 0);
            let departed = Departed {
                room: room.clone(),
                node,
                cause: DepartureCause::LostServer,
                nicks: nicks.clone(),
            };
            let payload = Envelope {
                header,
                message: Message::Departed(departed),
            }
            .to_bytes();
            let channel = self.keys.room_channel(&room);
            self.publish(channel, payload, Purpose::Fire);
            self.events.push_back(ClusterEvent::MembersLeft {
                room,
                nicks,
                cause: DepartureCause::LostServer,
            });
        }
    }

    /// Drops what this node knew of another one's rooms and streams.
    fn forget_node(&mut self, node: NodeId) {
        for counts in self.remote.values_mut() {
            counts.remove(&node);
        }
        self.remote.retain(|_, counts| !counts.is_empty());
        self.streams.retain(|(origin, _), _| *origin != node);
    }

    /// Orderly shutdown, first step (before the chat releases its names
    /// and memberships): who is in which room here.
    pub fn departures(&self) -> Vec<(String, Vec<String>)> {
        let mut rooms: Vec<(String, Vec<String>)> = self
            .local
            .iter()
            .map(|(room, names)| {
                let mut names: Vec<String> = names.iter().cloned().collect();
                names.sort_unstable();
                (room.clone(), names)
            })
            .collect();
        rooms.sort_unstable();
        rooms
    }

    /// Orderly shutdown, last step (after the names were released, so that
    /// whoever hears of the leaves can take the names): the other servers
    /// announce this node's users' leaves, and nobody needs to reap it.
    pub fn shutting_down(&mut self, departures: Vec<(String, Vec<String>)>) {
        if !self.link_up {
            return;
        }
        for (room, nicks) in departures {
            let header = self.room_header(&room, 0);
            let departed = Departed {
                room: room.clone(),
                node: self.settings.node,
                cause: DepartureCause::ShuttingDown,
                nicks,
            };
            let payload = Envelope {
                header,
                message: Message::Departed(departed),
            }
            .to_bytes();
            let channel = self.keys.room_channel(&room);
            self.publish(channel, payload, Purpose::Fire);
        }
        let nodes = self.keys.nodes();
        let node = self.node_text.clone();
        self.request(Purpose::Fire, vec!["SREM".into(), nodes, node]);
        let alive = self.keys.alive(self.settings.node);
        self.request(Purpose::Fire, vec!["DEL".into(), alive]);
        self.next_alive_refresh = None;
        self.next_reap = None;
    }

    /// A header in this node's stream of `room`, taking `lines` numbers.
    fn room_header(&mut self, room: &str, lines: u64) -> Header {
        let next = self.room_seq.entry(room.to_string()).or_insert(0);
        let seq = *next;
        *next += lines;
        Header {
            origin: self.settings.node,
            seq,
        }
    }

    /// Checks a publication of `origin` in `room` against the stream's
    /// numbering: a gap is lines lost; a number lower than expected is a
    /// stream that started over (the origin left the room and came back).
    fn follow_stream(&mut self, origin: NodeId, room: &str, seq: u64, lines: u64) {
        if !self.local.contains_key(room) {
            return;
        }
        let next = seq.saturating_add(lines);
        match self.streams.get_mut(&(origin, room.to_string())) {
            Some(expected) => {
                if seq > *expected {
                    let count = seq - *expected;
                    self.lines_lost += count;
                    self.events.push_back(ClusterEvent::LinesLost {
                        room: room.to_string(),
                        count,
                    });
                }
                *expected = next;
            }
            None => {
                self.streams.insert((origin, room.to_string()), next);
            }
        }
    }

    /// Whether requests or subscription changes wait to be sent.
    pub fn has_output(&self) -> bool {
        self.link_up
            && (!self.requests.is_empty()
                || !self.subscriptions.is_empty()
                || !self.presence_due.is_empty())
    }

    pub fn poll_subscription(&mut self) -> Option<Subscription> {
        self.subscriptions.pop_front()
    }

    /// A request a client waits for: answered as unanswered after
    /// [`ANSWER_PATIENCE`].
    fn awaited_request(&mut self, purpose: Purpose, args: Vec<Bytes>) {
        let id = self.next_id;
        self.request(purpose, args);
        if let Some(now) = self.now {
            self.deadlines.push_back((now + ANSWER_PATIENCE, id));
        }
    }

    fn header(&mut self) -> Header {
        self.next_seq += 1;
        Header {
            origin: self.settings.node,
            seq: self.next_seq,
        }
    }

    fn publish(&mut self, channel: Bytes, payload: Bytes, purpose: Purpose) {
        self.request(purpose, vec!["PUBLISH".into(), channel, payload]);
    }

    fn subscribe_room(&mut self, room: &str) {
        self.unconfirmed.insert(room.to_string(), Vec::new());
        self.subscriptions
            .push_back(Subscription::Subscribe(self.keys.room_channel(room)));
    }

    /// Publishes to a room's channel, or holds the payload back until the
    /// room's subscription is confirmed.
    fn publish_to_room(&mut self, room: &str, payload: Bytes, tags: Vec<u64>) {
        if let Some(held) = self.unconfirmed.get_mut(room) {
            held.push((payload, tags));
            return;
        }
        let channel = self.keys.room_channel(room);
        let purpose = if tags.is_empty() {
            Purpose::Fire
        } else {
            Purpose::RoomPublish { tags }
        };
        self.publish(channel, payload, purpose);
    }

    fn release_held(&mut self, room: &str) {
        for (payload, tags) in self.unconfirmed.remove(room).unwrap_or_default() {
            self.publish_to_room(room, payload, tags);
        }
    }

    /// Reports this server's part of another server's room receipt.
    pub fn receipt_settled(&mut self, relay: u64, recipients: u64, delivered: u64) {
        let Some((origin, tag)) = self.relays.remove(&relay) else {
            return;
        };
        if !self.link_up {
            return;
        }
        let channel = self.keys.node_channel(origin);
        let report = ReceiptReport {
            tag,
            recipients,
            delivered: delivered.min(recipients),
        };
        self.publish_envelope(channel, Message::ReceiptReport(report));
    }

    /// Redis confirmed a subscription of the subscriber link.
    pub fn on_subscribed(&mut self, channel: &Bytes) {
        if let Some(room) = self.room_of(channel) {
            self.release_held(&room);
        }
    }

    fn publish_envelope(&mut self, channel: Bytes, message: Message) {
        let header = self.header();
        let payload = Envelope { header, message }.to_bytes();
        self.publish(channel, payload, Purpose::Fire);
    }

    /// Publishes this node's member count of every room that changed, once
    /// per loop turn.
    pub fn publish_presence(&mut self) {
        if !self.link_up {
            return;
        }
        let due: Vec<String> = self.presence_due.drain().collect();
        for room in due {
            self.publish_room_presence(room);
        }
    }

    fn publish_room_presence(&mut self, room: String) {
        let members = self.local.get(&room).map_or(0, HashSet::len) as u64;
        let header = self.room_header(&room, 0);
        let name = room.clone();
        let message = Message::Presence(Presence { room, members });
        let payload = Envelope { header, message }.to_bytes();
        self.publish_to_room(&name, payload, Vec::new());
    }

    /// A message from the subscriber link.
    pub fn on_message(&mut self, channel: &Bytes, payload: &Bytes) {
        let Ok(envelope) = Envelope::decode(payload) else {
            return;
        };
        let origin = envelope.header.origin;
        if origin == self.settings.node {
            return;
        }
        let seq = envelope.header.seq;
        match envelope.message {
            Message::RoomBatch(batch) => {
                if let Some(room) = self.room_of(channel) {
                    self.follow_stream(origin, &room, seq, batch.line_count);
                    let receipts = batch
                        .receipts
                        .into_iter()
                        .map(|receipt| {
                            self.next_relay += 1;
                            self.relays.insert(self.next_relay, (origin, receipt.tag));
                            (self.next_relay, receipt.range)
                        })
                        .collect();
                    self.events.push_back(ClusterEvent::RemoteLines {
                        room,
                        lines: batch.lines,
                        receipts,
                    });
                }
            }
            Message::Presence(presence) => {
                self.follow_stream(origin, &presence.room, seq, 0);
                let counts = self.remote.entry(presence.room.clone()).or_default();
                let new = counts.insert(origin, presence.members).is_none();
                if presence.members == 0 {
                    counts.remove(&origin);
                }
                if counts.is_empty() {
                    self.remote.remove(&presence.room);
                }
                // A server new to the room does not know our count yet.
                if new && self.local.contains_key(&presence.room) {
                    self.presence_due.insert(presence.room);
                }
            }
            Message::Direct(direct) => {
                self.next_relay += 1;
                let relay = self.next_relay;
                self.relays.insert(relay, (origin, direct.tag));
                self.events.push_back(ClusterEvent::RemoteDirect {
                    target: direct.target,
                    line: direct.line,
                    relay,
                });
            }
            Message::DeliveryReport(report) => {
                if !self.awaited_directs.remove(&report.tag) {
                    return;
                }
                let outcome = match report.outcome {
                    DeliveryOutcome::Delivered => DirectOutcome::Delivered,
                    DeliveryOutcome::Left => DirectOutcome::Left,
                    DeliveryOutcome::TooSlow => DirectOutcome::TooSlow,
                    DeliveryOutcome::NoSuchUser => DirectOutcome::NoSuchUser,
                };
                self.events.push_back(ClusterEvent::DirectReport {
                    ticket: report.tag,
                    outcome,
                });
            }
            Message::ReceiptReport(report) => {
                let Some(pending) = self.receipts.get_mut(&report.tag) else {
                    // Settled already (its 5 s ran out): too late to count.
                    return;
                };
                pending.reported.push(origin);
                if pending
                    .servers
                    .is_some_and(|servers| pending.reported.len() as u64 >= servers)
                {
                    self.receipts.remove(&report.tag);
                }
                self.events.push_back(ClusterEvent::ReceiptReport {
                    tag: report.tag,
                    recipients: report.recipients,
                    delivered: report.delivered,
                });
            }
            Message::Departed(departed) if departed.node == self.settings.node => {
                // Reaped while only cut off (stopped, or slow): our users
                // are still here, so they are put back.
                if self.link_up {
                    self.register_all();
                }
            }
            Message::Departed(departed) => {
                if let Some(counts) = self.remote.get_mut(&departed.room) {
                    counts.remove(&departed.node);
                    if counts.is_empty() {
                        self.remote.remove(&departed.room);
                    }
                }
                self.streams.remove(&(departed.node, departed.room.clone()));
                self.events.push_back(ClusterEvent::MembersLeft {
                    room: departed.room,
                    nicks: departed.nicks,
                    cause: departed.cause,
                });
            }
            Message::Node(NodeEvent::ShuttingDown) => {
                for counts in self.remote.values_mut() {
                    counts.remove(&origin);
                }
                self.remote.retain(|_, counts| !counts.is_empty());
            }
            Message::Node(NodeEvent::Hello) => {
                // On a room channel: a server back from an outage wants our
                // count of the room.
                if let Some(room) = self.room_of(channel) {
                    self.follow_stream(origin, &room, seq, 0);
                    if self.local.contains_key(&room) {
                        self.presence_due.insert(room);
                    }
                }
            }
        }
    }

    /// Reports a relayed direct message's fate to the server it came from.
    pub fn direct_settled(&mut self, relay: u64, outcome: DirectOutcome) {
        let Some((origin, tag)) = self.relays.remove(&relay) else {
            return;
        };
        if !self.link_up {
            return;
        }
        let outcome = match outcome {
            DirectOutcome::Delivered => DeliveryOutcome::Delivered,
            DirectOutcome::Left => DeliveryOutcome::Left,
            DirectOutcome::TooSlow => DeliveryOutcome::TooSlow,
            DirectOutcome::NoSuchUser => DeliveryOutcome::NoSuchUser,
        };
        let channel = self.keys.node_channel(origin);
        self.publish_envelope(
            channel,
            Message::DeliveryReport(DeliveryReport { tag, outcome }),
        );
    }

    fn room_of(&self, channel: &Bytes) -> Option<String> {
        let prefix = self.keys.room_channel("");
        let room = channel.strip_prefix(prefix.as_ref())?;
        std::str::from_utf8(room).ok().map(str::to_string)
    }

    fn register_member(&mut self, room: &str, nick: &str) {
        let key = self.keys.members(room);
        let nick = Bytes::copy_from_slice(nick.as_bytes());
        let node = self.node_text.clone();
        self.request(Purpose::Fire, vec!["HSET".into(), key, nick, node]);
    }

    /// This node's member count of `room` in the rooms hash, as a field of
    /// its own so that re-registering after a reconnect is idempotent.
    fn count_room(&mut self, room: &str) {
        let key = self.keys.rooms();
        let field = Bytes::from(format!("{room}|{}", self.settings.node));
        let count = self.local.get(room).map_or(0, HashSet::len);
        if count == 0 {
            self.request(Purpose::Fire, vec!["HDEL".into(), key, field]);
        } else {
            let count = Bytes::from(count.to_string());
            self.request(Purpose::Fire, vec!["HSET".into(), key, field, count]);
        }
    }

    fn refresh_alive(&mut self, now: Instant, check: bool) {
        let ttl_ms = self.settings.node_timeout.as_millis().max(1).to_string();
        let key = self.keys.alive(self.settings.node);
        let node = self.node_text.clone();
        self.request(
            Purpose::Alive { check },
            vec![
                "SET".into(),
                key,
                node,
                "PX".into(),
                ttl_ms.into(),
                "GET".into(),
            ],
        );
        // Three refreshes per timeout: one lost or late refresh does not
        // make the others count this node lost.
        self.next_alive_refresh = Some(now + self.settings.node_timeout / 3);
    }

    /// Asks for `folded` (a case-folded nickname) cluster-wide; the answer
    /// comes as a [`ClusterEvent::NickClaim`] with `ticket`.
    pub fn claim_nick(&mut self, ticket: u64, folded: &str) {
        if !self.link_up {
            self.events.push_back(ClusterEvent::NickClaim {
                ticket,
                folded: folded.to_string(),
                outcome: ClaimOutcome::Unanswered,
            });
            return;
        }
        let args = self.nick_script(CLAIM_NICK, folded);
        let folded = folded.to_string();
        self.request(Purpose::Claim { ticket, folded }, args);
    }

    /// Frees a name this node held; a no-op in Redis if another node has
    /// claimed it since.
    pub fn release_nick(&mut self, folded: &str) {
        self.held_nicks.remove(folded);
        if !self.link_up {
            return;
        }
        let args = self.nick_script(RELEASE_NICK, folded);
        self.request(Purpose::Release, args);
    }

    fn nick_script(&self, script: &'static str, folded: &str) -> Vec<Bytes> {
        vec![
            "EVAL".into(),
            Bytes::from_static(script.as_bytes()),
            "2".into(),
            self.keys.nick(folded),
            self.keys.node_nicks(self.settings.node),
            self.node_text.clone(),
            Bytes::copy_from_slice(folded.as_bytes()),
        ]
    }

    /// Whether guest numbers from the shared counter are in stock.
    pub fn has_guest_numbers(&self) -> bool {
        !self.guests.is_empty() || self.spare_guests.as_ref().is_some_and(|r| !r.is_empty())
    }

    /// A guest number unique across the cluster, at once from the reserved
    /// block; `None` when none is in stock (a
    /// [`ClusterEvent::GuestNumbersReady`] follows once there are).
    pub fn take_guest_number(&mut self) -> Option<u64> {
        if self.guests.is_empty() {
            if let Some(spare) = self.spare_guests.take() {
                self.guests = spare;
            }
        }
        let number = self.guests.next();
        if number.is_none() {
            self.someone_waits_for_guests = true;
        }
        self.stock_guests();
        number
    }

    /// Keeps a spare block, so numbers are handed out without waiting.
    fn stock_guests(&mut self) {
        let low = (self.guests.end - self.guests.start) <= self.settings.guest_block / 2;
        if self.link_up && low && self.spare_guests.is_none() && !self.guest_block_asked {
            self.guest_block_asked = true;
            let block = self.settings.guest_block.max(1).to_string();
            let key = self.keys.guest_counter();
            self.request(
                Purpose::GuestBlock,
                vec!["INCRBY".into(), key, block.into()],
            );
        }
    }

    /// The next command for Redis.
    pub fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    /// Moves every queued request into `link`. A request the link refuses
    /// (its output queue is at its cap: Redis or the network is not
    /// keeping up) is dropped at once and settled as unanswered, never
    /// held: a dropped room publication leaves a gap in this node's
    /// numbering, which the receivers report as lines lost. Returns how
    /// many were dropped.
    pub fn send_requests(&mut self, link: &mut CommandLink<RequestId>) -> u64 {
        let mut dropped = 0;
        while let Some(request) = self.poll_request() {
            let args: Vec<&[u8]> = request.args.iter().map(|a| a.as_ref()).collect();
            if link.push_command(request.id, &args).is_err() {
                dropped += 1;
                self.on_unanswered(request.id);
            }
        }
        dropped
    }

    /// The next thing the chat must hear about.
    pub fn poll_event(&mut self) -> Option<ClusterEvent> {
        self.events.pop_front()
    }

    pub fn on_reply(&mut self, id: RequestId, reply: Reply) {
        let Some(purpose) = self.waiting.remove(&id) else {
            return;
        };
        match purpose {
            Purpose::Claim { ticket, folded } => {
                let outcome = match reply {
                    Reply::Integer(1) => ClaimOutcome::Granted,
                    Reply::Integer(0) => ClaimOutcome::Taken,
                    _ => ClaimOutcome::Unanswered,
                };
                if outcome == ClaimOutcome::Granted {
                    self.held_nicks.insert(folded.clone());
                }
                self.events.push_back(ClusterEvent::NickClaim {
                    ticket,
                    folded,
                    outcome,
                });
            }
            Purpose::GuestBlock => {
                self.guest_block_asked = false;
                let block = self.settings.guest_block.max(1);
                // INCRBY answers the block's last number.
                if let Some(end) = reply.integer().and_then(|n| u64::try_from(n).ok()) {
                    let block = end.saturating_sub(block) + 1..end + 1;
                    if self.guests.is_empty() {
                        self.guests = block;
                    } else {
                        self.spare_guests = Some(block);
                    }
                    if self.someone_waits_for_guests {
                        self.someone_waits_for_guests = false;
                        self.events.push_back(ClusterEvent::GuestNumbersReady);
                    }
                }
            }
            Purpose::Release | Purpose::JoinNodes | Purpose::Fire => {}
            Purpose::Reclaim { folded } => {
                if reply == Reply::Integer(0) && self.held_nicks.remove(&folded) {
                    self.events.push_back(ClusterEvent::NickLost { folded });
                }
            }
            Purpose::Alive { check } => {
                // The key had expired: the others counted this node lost
                // (and may have reaped it) while it was only cut off.
                if check && reply == Reply::Nil && self.link_up {
                    self.register_all();
                }
            }
            Purpose::Reap => {
                if let Reply::Array(items) = reply {
                    self.on_reaped(&items);
                }
            }
            Purpose::RoomPublish { tags } => {
                // Every subscriber gets it, this server included (its
                // subscription was confirmed before it published).
                let servers = reply.integer().map_or(0, |n| n.max(1) as u64 - 1);
                for tag in tags {
                    if let Some(pending) = self.receipts.get_mut(&tag) {
                        pending.servers = Some(servers);
                        if pending.reported.len() as u64 >= servers {
                            self.receipts.remove(&tag);
                        }
                    }
                    self.events
                        .push_back(ClusterEvent::ReceiptServers { tag, servers });
                }
            }
            Purpose::DirectLookup {
                ticket,
                target,
                line,
            } => {
                self.events
                    .push_back(ClusterEvent::DirectLookedUp { ticket });
                let node = reply
                    .bytes()
                    .and_then(|node| std::str::from_utf8(node).ok())
                    .and_then(|node| node.parse::<NodeId>().ok());
                match node {
                    Some(node) if node != self.settings.node => {
                        let mut payload = bytes::BytesMut::new();
                        let header = self.header();
                        encode_direct_header(&mut payload, header, ticket, &target);
                        payload.extend_from_slice(&line);
                        if let Some(now) = self.now {
                            self.awaited_directs.insert(ticket);
                            self.direct_deadlines
                                .push_back((now + ANSWER_PATIENCE, ticket));
                        }
                        let channel = self.keys.node_channel(node);
                        self.publish(channel, payload.freeze(), Purpose::DirectSent { ticket });
                    }
                    _ => self.events.push_back(ClusterEvent::DirectReport {
                        ticket,
                        outcome: DirectOutcome::NoSuchUser,
                    }),
                }
            }
            Purpose::DirectSent { ticket } => {
                if reply.integer() != Some(1) && self.awaited_directs.remove(&ticket) {
                    self.events.push_back(ClusterEvent::DirectReport {
                        ticket,
                        outcome: DirectOutcome::NoSuchUser,
                    });
                }
            }
            Purpose::Members { ticket } => {
                let names = match reply {
                    Reply::Array(items) => Some(
                        items
                            .iter()
                            .filter_map(|item| item.bytes())
                            .filter_map(|name| std::str::from_utf8(name).ok())
                            .map(str::to_string)
                            .collect(),
                    ),
                    _ => None,
                };
                self.events
                    .push_back(ClusterEvent::MemberList { ticket, names });
            }
            Purpose::Rooms { ticket } => {
                let rooms = match reply {
                    Reply::Array(items) => Some(sum_rooms(&items)),
                    _ => None,
                };
                self.events
                    .push_back(ClusterEvent::RoomList { ticket, rooms });
            }
        }
    }

    /// `id` will never be answered: the link failed or its queue was full.
    pub fn on_unanswered(&mut self, id: RequestId) {
        let Some(purpose) = self.waiting.remove(&id) else {
            return;
        };
        match purpose {
            Purpose::Claim { ticket, folded } => self.events.push_back(ClusterEvent::NickClaim {
                ticket,
                folded,
                outcome: ClaimOutcome::Unanswered,
            }),
            Purpose::GuestBlock => self.guest_block_asked = false,
            Purpose::Release
            | Purpose::Reclaim { .. }
            | Purpose::Alive { .. }
            | Purpose::Reap
            | Purpose::JoinNodes
            | Purpose::Fire => {}
            Purpose::RoomPublish { tags } => {
                for tag in tags {
                    let servers = self
                        .receipts
                        .remove(&tag)
                        .map_or(0, |pending| pending.reported.len() as u64);
                    self.events
                        .push_back(ClusterEvent::ReceiptServers { tag, servers });
                }
            }
            Purpose::DirectLookup { ticket, .. } => {
                self.events
                    .push_back(ClusterEvent::DirectLookedUp { ticket });
                self.events.push_back(ClusterEvent::DirectReport {
                    ticket,
                    outcome: DirectOutcome::NoSuchUser,
                })
            }
            Purpose::DirectSent { ticket } => {
                if self.awaited_directs.remove(&ticket) {
                    self.events.push_back(ClusterEvent::DirectReport {
                        ticket,
                        outcome: DirectOutcome::NoSuchUser,
                    })
                }
            }
            Purpose::Members { ticket } => self.events.push_back(ClusterEvent::MemberList {
                ticket,
                names: None,
            }),
            Purpose::Rooms { ticket } => self.events.push_back(ClusterEvent::RoomList {
                ticket,
                rooms: None,
            }),
        }
    }
}

/// The rooms hash (`ROOM|NODE` → count) summed per room.
fn sum_rooms(items: &[Reply]) -> Vec<(String, usize)> {
    let mut rooms: HashMap<String, usize> = HashMap::new();
    for pair in items.chunks(2) {
        let [field, count] = pair else {
            continue;
        };
        let field = field.bytes().and_then(|f| std::str::from_utf8(f).ok());
        let count = count
            .bytes()
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<usize>().ok());
        if let (Some(field), Some(count)) = (field, count) {
            if let Some((room, _node)) = field.rsplit_once('|') {
                *rooms.entry(room.to_string()).or_default() += count;
            }
        }
    }
    rooms.into_iter().filter(|&(_, count)| count > 0).collect()
}

impl Peers for Cluster {
    fn spans_servers(&self) -> bool {
        true
    }

    fn claim_nick(&mut self, ticket: Ticket, folded: &str) -> Claim {
        if ticket == 0 {
            self.held_nicks.insert(folded.to_string());
            if self.link_up {
                let args = self.nick_script(CLAIM_NICK, folded);
                self.request(Purpose::Fire, args);
            }
            return Claim::Granted;
        }
        if !self.link_up {
            self.events.push_back(ClusterEvent::NickClaim {
                ticket,
                folded: folded.to_string(),
                outcome: ClaimOutcome::Unanswered,
            });
            return Claim::Pending;
        }
        let args = self.nick_script(CLAIM_NICK, folded);
        let folded = folded.to_string();
        self.awaited_request(Purpose::Claim { ticket, folded }, args);
        Claim::Pending
    }

    fn release_nick(&mut self, folded: &str) {
        Cluster::release_nick(self, folded);
    }

    fn guest_number(&mut self) -> Option<u64> {
        self.take_guest_number()
    }

    fn room_batch(
        &mut self,
        room: &str,
        lines: &Bytes,
        line_count: u64,
        receipts: &[(ReceiptTag, Range<usize>)],
    ) {
        let tags: Vec<u64> = receipts.iter().map(|(tag, _)| tag.0 as u64).collect();
        if !self.link_up {
            for tag in tags {
                let servers = 0;
                self.events
                    .push_back(ClusterEvent::ReceiptServers { tag, servers });
            }
            return;
        }
        let wire: Vec<WireReceipt> = receipts
            .iter()
            .map(|(tag, range)| WireReceipt {
                tag: tag.0 as u64,
                range: range.clone(),
            })
            .collect();
        // A changed count goes first: the join notice in this batch then
        // finds the other servers already counting the newcomer.
        if self.presence_due.remove(room) {
            self.publish_room_presence(room.to_string());
        }
        if let Some(now) = self.now {
            let counts = self.remote.get(room).cloned().unwrap_or_default();
            for &tag in &tags {
                self.receipts.insert(
                    tag,
                    PendingReceipt {
                        counts: counts.clone(),
                        reported: Vec::new(),
                        servers: None,
                    },
                );
                self.receipt_deadlines
                    .push_back((now + ANSWER_PATIENCE, tag));
            }
        }
        let header = self.room_header(room, line_count);
        let mut payload = bytes::BytesMut::with_capacity(16 + lines.len());
        encode_room_batch_header(&mut payload, header, line_count, &wire);
        payload.extend_from_slice(lines);
        self.publish_to_room(room, payload.freeze(), tags);
    }

    fn member_joined(&mut self, room: &str, nick: &str) {
        let names = self.local.entry(room.to_string()).or_default();
        let first = names.is_empty();
        names.insert(nick.to_string());
        self.presence_due.insert(room.to_string());
        if !self.link_up {
            return;
        }
        if first {
            self.subscribe_room(room);
        }
        self.register_member(room, nick);
        self.count_room(room);
    }

    fn member_renamed(&mut self, room: &str, old: &str, new: &str) {
        if let Some(names) = self.local.get_mut(room) {
            names.remove(old);
            names.insert(new.to_string());
        }
        if !self.link_up {
            return;
        }
        let key = self.keys.members(room);
        let old = Bytes::copy_from_slice(old.as_bytes());
        self.request(Purpose::Fire, vec!["HDEL".into(), key, old]);
        self.register_member(room, new);
    }

    fn member_left(&mut self, room: &str, nick: &str) {
        let Some(names) = self.local.get_mut(room) else {
            return;
        };
        names.remove(nick);
        let last = names.is_empty();
        if last {
            self.local.remove(room);
            self.room_seq.remove(room);
            self.streams
                .retain(|(_, stream_room), _| stream_room != room);
        }
        self.presence_due.insert(room.to_string());
        if !self.link_up {
            return;
        }
        let key = self.keys.members(room);
        let field = Bytes::copy_from_slice(nick.as_bytes());
        self.request(Purpose::Fire, vec!["HDEL".into(), key, field]);
        self.count_room(room);
        if last {
            self.release_held(room);
            self.subscriptions
                .push_back(Subscription::Unsubscribe(self.keys.room_channel(room)));
        }
    }

    fn remote_members(&self, room: &str) -> usize {
        self.remote
            .get(room)
            .map_or(0, |counts| counts.values().sum::<u64>() as usize)
    }

    fn list_members(&mut self, ticket: Ticket, room: &str) -> bool {
        if !self.link_up {
            return false;
        }
        let key = self.keys.members(room);
        self.awaited_request(Purpose::Members { ticket }, vec!["HKEYS".into(), key]);
        true
    }

    fn list_rooms(&mut self, ticket: Ticket) -> bool {
        if !self.link_up {
            return false;
        }
        let key = self.keys.rooms();
        self.awaited_request(Purpose::Rooms { ticket }, vec!["HGETALL".into(), key]);
        true
    }

    fn direct(&mut self, ticket: Ticket, target: &str, line: Bytes) -> Route {
        if !self.link_up {
            return Route::Unknown;
        }
        let key = self.keys.nick(target);
        let target = target.to_string();
        self.awaited_request(
            Purpose::DirectLookup {
                ticket,
                target,
                line,
            },
            vec!["GET".into(), key],
        );
        Route::Remote
    }
}

/// Alone when `None`: every answer local and immediate.
impl<P: Peers> Peers for Option<P> {
    fn spans_servers(&self) -> bool {
        self.as_ref().is_some_and(P::spans_servers)
    }
    fn claim_nick(&mut self, ticket: Ticket, folded: &str) -> Claim {
        self.as_mut()
            .map_or(Claim::Granted, |p| p.claim_nick(ticket, folded))
    }
    fn release_nick(&mut self, folded: &str) {
        if let Some(p) = self {
            p.release_nick(folded);
        }
    }
    fn guest_number(&mut self) -> Option<u64> {
        self.as_mut().and_then(P::guest_number)
    }
    fn room_batch(
        &mut self,
        room: &str,
        lines: &Bytes,
        line_count: u64,
        receipts: &[(ReceiptTag, Range<usize>)],
    ) {
        if let Some(p) = self {
            p.room_batch(room, lines, line_count, receipts);
        }
    }
    fn member_joined(&mut self, room: &str, nick: &str) {
        if let Some(p) = self {
            p.member_joined(room, nick);
        }
    }
    fn member_left(&mut self, room: &str, nick: &str) {
        if let Some(p) = self {
            p.member_left(room, nick);
        }
    }
    fn member_renamed(&mut self, room: &str, old: &str, new: &str) {
        if let Some(p) = self {
            p.member_renamed(room, old, new);
        }
    }
    fn remote_members(&self, room: &str) -> usize {
        self.as_ref().map_or(0, |p| p.remote_members(room))
    }
    fn list_members(&mut self, ticket: Ticket, room: &str) -> bool {
        self.as_mut().is_some_and(|p| p.list_members(ticket, room))
    }
    fn list_rooms(&mut self, ticket: Ticket) -> bool {
        self.as_mut().is_some_and(|p| p.list_rooms(ticket))
    }
    fn direct(&mut self, ticket: Ticket, target: &str, line: Bytes) -> Route {
        self.as_mut()
            .map_or(Route::Unknown, |p| p.direct(ticket, target, line))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_redis::FakeRedis;
    use super::*;

    /// Nodes sharing one fake Redis, on one virtual clock.
    struct World {
        redis: FakeRedis,
        now: Instant,
    }

    impl World {
        fn new() -> World {
            World {
                redis: FakeRedis::default(),
                now: Instant::now(),
            }
        }

        /// Carries every queued request of `node` to Redis and its reply
        /// back, as the reactor will.
        fn exchange(&mut self, node: &mut Cluster) {
            while let Some(request) = node.poll_request() {
                let reply = self.redis.execute(&request.args, self.now);
                node.on_reply(request.id, reply);
            }
        }

        fn node(&mut self, id: NodeId) -> Cluster {
            let mut node = Cluster::new(ClusterSettings::new("t", id));
            node.link_up(self.now);
            self.exchange(&mut node);
            node
        }

        fn events(node: &mut Cluster) -> Vec<ClusterEvent> {
            std::iter::from_fn(|| node.poll_event()).collect()
        }
    }

    fn claim(ticket: u64, folded: &str, outcome: ClaimOutcome) -> ClusterEvent {
        ClusterEvent::NickClaim {
            ticket,
            folded: folded.into(),
            outcome,
        }
    }

    #[test]
    fn a_nickname_goes_to_the_first_node_and_back_when_released() {
        let mut world = World::new();
        let mut a = world.node(1);
        let mut b = world.node(2);
        a.claim_nick(10, "ada");
        world.exchange(&mut a);
        b.claim_nick(20, "ada");
        world.exchange(&mut b);
        assert_eq!(
            World::events(&mut a),
            vec![claim(10, "ada", ClaimOutcome::Granted)]
        );
        assert_eq!(
            World::events(&mut b),
            vec![claim(20, "ada", ClaimOutcome::Taken)]
        );
        assert_eq!(world.redis.members(b"t:nicks:1"), vec![Bytes::from("ada")]);

        // Claiming again what one holds (a re-registration) is granted.
        a.claim_nick(11, "ada");
        world.exchange(&mut a);
        assert_eq!(
            World::events(&mut a),
            vec![claim(11, "ada", ClaimOutcome::Granted)]
        );

        // B's release of a name it does not hold frees nothing.
        b.release_nick("ada");
        world.exchange(&mut b);
        assert_eq!(world.redis.get(b"t:nick:ada", world.now), Some("1".into()));

        a.release_nick("ada");
        world.exchange(&mut a);
        assert_eq!(world.redis.get(b"t:nick:ada", world.now), None);
        assert!(world.redis.members(b"t:nicks:1").is_empty());
        b.claim_nick(21, "ada");
        world.exchange(&mut b);
        assert_eq!(
            World::events(&mut b),
            vec![claim(21, "ada", ClaimOutcome::Granted)]
        );
    }

    #[test]
    fn claims_without_a_link_are_answered_at_once_as_unanswered() {
        let mut node = Cluster::new(ClusterSettings::new("t", 1));
        node.claim_nick(5, "bob");
        assert_eq!(node.poll_request(), None);
        assert_eq!(
            World::events(&mut node),
            vec![claim(5, "bob", ClaimOutcome::Unanswered)]
        );
    }

    #[test]
    fn a_lost_link_settles_waiting_claims() {
        let mut world = World::new();
        let mut node = world.node(1);
        node.claim_nick(1, "x");
        node.claim_nick(2, "y");
        let first = node.poll_request().unwrap();
        node.link_down();
        assert_eq!(
            World::events(&mut node),
            vec![
                claim(1, "x", ClaimOutcome::Unanswered),
                claim(2, "y", ClaimOutcome::Unanswered)
            ]
        );
        // A reply arriving for the dead link changes nothing.
        node.on_reply(first.id, Reply::Integer(1));
        assert_eq!(node.poll_event(), None);
        assert_eq!(node.poll_request(), None);
    }

    #[test]
    fn guest_numbers_come_in_disjoint_blocks_without_waiting() {
        let mut world = World::new();
        let mut a = world.node(1);
        let mut b = world.node(2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            for node in [&mut a, &mut b] {
                let number = node.take_guest_number().expect("in stock");
                assert!(number >= 1);
                assert!(seen.insert(number), "guest-{number} handed out twice");
                world.exchange(node);
            }
        }
        assert_eq!(World::events(&mut a), vec![]);
        // One INCRBY per block, not per guest.
        let incrs = world.redis.log.iter().filter(|c| c[0] == "INCRBY").count();
        assert!(incrs <= 2 * (1000 / 100 + 2), "{incrs} INCRBYs");
    }

    #[test]
    fn out_of_guest_numbers_until_redis_answers() {
        let mut world = World::new();
        let mut node = Cluster::new(ClusterSettings {
            guest_block: 2,
            ..ClusterSettings::new("t", 1)
        });
        assert_eq!(node.take_guest_number(), None);
        node.link_up(world.now);
        world.exchange(&mut node);
        assert_eq!(
            World::events(&mut node),
            vec![ClusterEvent::GuestNumbersReady]
        );
        assert_eq!(node.take_guest_number(), Some(1));
        assert_eq!(node.take_guest_number(), Some(2));
        // The refill asked for after the first number is not answered yet.
        let refill = node.poll_request().expect("a refill");
        assert_eq!(node.take_guest_number(), None);
        node.on_reply(refill.id, world.redis.execute(&refill.args, world.now));
        assert_eq!(
            World::events(&mut node),
            vec![ClusterEvent::GuestNumbersReady]
        );
        assert_eq!(node.take_guest_number(), Some(3));
    }

    #[test]
    fn the_alive_key_stays_while_refreshed_and_expires_after_the_timeout() {
        let mut world = World::new();
        let mut node = world.node(7);
        let timeout = Duration::from_secs(10);
        assert_eq!(world.redis.members(b"t:nodes"), vec![Bytes::from("7")]);
        assert_eq!(world.redis.pttl(b"t:alive:7", world.now), 10_000);
        for _ in 0..30 {
            let wake = node.next_wakeup().expect("a refresh is scheduled");
            assert!(wake - world.now <= timeout / 3);
            world.now = wake;
            node.tick(world.now);
            world.exchange(&mut node);
            assert!(world.redis.get(b"t:alive:7", world.now).is_some());
        }
        // A node that stops refreshing is gone after the timeout.
        node.link_down();
        assert_eq!(node.next_wakeup(), None);
        let left = world.redis.pttl(b"t:alive:7", world.now) as u64;
        assert!(left > timeout.as_millis() as u64 / 2, "refreshed lately");
        world.now += Duration::from_millis(left - 1);
        assert!(world.redis.get(b"t:alive:7", world.now).is_some());
        world.now += Duration::from_millis(2);
        assert_eq!(world.redis.get(b"t:alive:7", world.now), None);
    }

    fn envelope(origin: NodeId, message: Message) -> Bytes {
        let header = Header { origin, seq: 1 };
        Envelope { header, message }.to_bytes()
    }

    #[test]
    fn room_batches_of_other_servers_become_lines_and_our_own_are_skipped() {
        let mut world = World::new();
        let mut node = world.node(1);
        World::events(&mut node);
        let channel = node.keys().room_channel("#r");
        let batch = |tags: Vec<WireReceipt>| {
            Message::RoomBatch(super::super::wire::RoomBatch {
                line_count: 2,
                receipts: tags,
                lines: Bytes::from_static(b"x: 1\r\nx: 2\r\n"),
            })
        };
        node.on_message(&channel, &envelope(1, batch(Vec::new())));
        assert_eq!(World::events(&mut node), [], "our own echo");
        let receipt = WireReceipt {
            tag: 40,
            range: 6..12,
        };
        node.on_message(&channel, &envelope(2, batch(vec![receipt])));
        let events = World::events(&mut node);
        let [ClusterEvent::RemoteLines {
            room,
            lines,
            receipts,
        }] = &events[..]
        else {
            panic!("{events:?}")
        };
        assert_eq!(
            (room.as_str(), &lines[..]),
            ("#r", &b"x: 1\r\nx: 2\r\n"[..])
        );
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].1, 6..12);
        // The part reported back goes to the origin's channel, with its tag.
        node.receipt_settled(receipts[0].0, 3, 2);
        let publish = node.poll_request().expect("a report");
        assert_eq!(publish.args[1], node.keys().node_channel(2));
        let report = Envelope::decode(&publish.args[2]).expect("ours");
        assert_eq!(
            report.message,
            Message::ReceiptReport(ReceiptReport {
                tag: 40,
                recipients: 3,
                delivered: 2
            })
        );
    }

    #[test]
    fn presence_counts_other_servers_members_and_answers_newcomers() {
        let mut world = World::new();
        let mut node = world.node(1);
        node.member_joined("#r", "ann");
        world.exchange(&mut node);
        let channel = node.keys().room_channel("#r");
        node.on_subscribed(&channel);
        node.publish_presence();
        world.exchange(&mut node);
        let presence = |members| {
            Message::Presence(Presence {
                room: "#r".into(),
                members,
            })
        };
        node.on_message(&channel, &envelope(2, presence(4)));
        node.on_message(&channel, &envelope(3, presence(2)));
        assert_eq!(node.remote_members("#r"), 6);
        assert!(node.has_output(), "newcomers hear our count");
        node.on_message(&channel, &envelope(2, presence(0)));
        assert_eq!(node.remote_members("#r"), 2);
    }

    fn batch_at(origin: NodeId, seq: u64, lines: u64) -> Bytes {
        let header = Header { origin, seq };
        let message = Message::RoomBatch(super::super::wire::RoomBatch {
            line_count: lines,
            receipts: Vec::new(),
            lines: Bytes::from("x: y\r\n".repeat(lines as usize)),
        });
        Envelope { header, message }.to_bytes()
    }

    #[test]
    fn a_gap_in_a_room_stream_reports_exactly_the_lines_lost() {
        let mut world = World::new();
        let mut node = world.node(1);
        node.member_joined("#r", "ann");
        world.exchange(&mut node);
        World::events(&mut node);
        let channel = node.keys().room_channel("#r");
        node.on_message(&channel, &batch_at(2, 10, 3));
        node.on_message(&channel, &batch_at(2, 13, 2));
        let lost = |events: Vec<ClusterEvent>| -> Vec<u64> {
            events
                .into_iter()
                .filter_map(|e| match e {
                    ClusterEvent::LinesLost { count, .. } => Some(count),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(lost(World::events(&mut node)), Vec::<u64>::new());
        // Lines 15..22 never came.
        node.on_message(&channel, &batch_at(2, 22, 1));
        assert_eq!(lost(World::events(&mut node)), vec![7]);
        assert_eq!(node.lines_lost(), 7);
        // A stream that starts over (its server left the room and came
        // back) is no loss.
        node.on_message(&channel, &batch_at(2, 0, 1));
        assert_eq!(lost(World::events(&mut node)), Vec::<u64>::new());
    }

    #[test]
    fn our_room_streams_number_lines_not_publications() {
        let mut world = World::new();
        let mut node = world.node(1);
        node.member_joined("#r", "ann");
        world.exchange(&mut node);
        node.on_subscribed(&node.keys().room_channel("#r"));
        world.exchange(&mut node);
        let lines = Bytes::from_static(b"ann: a\r\nann: b\r\nann: c\r\n");
        Peers::room_batch(&mut node, "#r", &lines, 3, &[]);
        Peers::room_batch(&mut node, "#r", &lines, 3, &[]);
        let seqs: Vec<u64> = std::iter::from_fn(|| node.poll_request())
            .filter(|r| r.args[0] == "PUBLISH")
            .filter_map(|r| Envelope::decode(&r.args[2]).ok())
            .filter(|e| matches!(e.message, Message::RoomBatch(_)))
            .map(|e| e.header.seq)
            .collect();
        assert_eq!(seqs, vec![0, 3]);
    }

    #[test]
    fn a_full_link_drops_publications_and_the_receivers_report_exactly_those_lines() {
        use super::super::link::{LinkIo, LinkLimits};
        let mut world = World::new();
        let mut sender = world.node(2);
        let mut receiver = world.node(1);
        for (node, nick) in [(&mut sender, "ann"), (&mut receiver, "bob")] {
            node.member_joined("#r", nick);
            world.exchange(node);
            node.on_subscribed(&node.keys().room_channel("#r"));
            world.exchange(node);
            World::events(node);
        }
        let cap = 4096;
        let limits = LinkLimits {
            max_output: cap,
            max_input: 1 << 20,
        };
        let url = "redis://h".parse().expect("a URL");
        let mut link: CommandLink<RequestId> = CommandLink::new(&url, limits);
        // Redis reads nothing: the handshake and whatever fits stay queued.
        let line = Bytes::from(format!("ann: {}\r\n", "x".repeat(200)));
        let mut lines_dropped = 0;
        for _ in 0..100 {
            Peers::room_batch(&mut sender, "#r", &line, 1, &[]);
            lines_dropped += sender.send_requests(&mut link);
            assert!(link.output().len() <= cap, "{}", link.output().len());
        }
        assert!(lines_dropped > 80, "{lines_dropped}");
        // The socket drains; the next line goes out behind the gap.
        let queued = link.output().to_vec();
        link.advance_output(queued.len());
        Peers::room_batch(&mut sender, "#r", &line, 1, &[]);
        assert_eq!(sender.send_requests(&mut link), 0);
        let mut wire = queued;
        wire.extend_from_slice(link.output());

        // What reached Redis reaches the receiver, which counts the gap.
        let channel = receiver.keys().room_channel("#r");
        let mut received = 0;
        let mut lost = 0;
        let mut input = bytes::BytesMut::from(&wire[..]);
        while let Ok(Some((frame, _, _))) =
            redis_protocol::resp2::decode::decode_bytes_mut(&mut input)
        {
            let redis_protocol::resp2::types::BytesFrame::Array(args) = frame else {
                continue;
            };
            let Some(redis_protocol::resp2::types::BytesFrame::BulkString(payload)) = args.get(2)
            else {
                continue;
            };
            receiver.on_message(&channel, payload);
            for event in World::events(&mut receiver) {
                match event {
                    ClusterEvent::RemoteLines { .. } => received += 1,
                    ClusterEvent::LinesLost { count, .. } => lost += count,
                    _ => {}
                }
            }
        }
        assert_eq!(received + lines_dropped, 101);
        assert_eq!(lost, lines_dropped);
    }

    #[test]
    fn a_receipt_whose_server_never_reports_is_settled_after_five_seconds() {
        let mut world = World::new();
        let mut node = world.node(1);
        node.member_joined("#r", "ann");
        world.exchange(&mut node);
        let channel = node.keys().room_channel("#r");
        node.on_subscribed(&channel);
        let presence = |members| {
            let message = Message::Presence(Presence {
                room: "#r".into(),
                members,
            });
            let header = Header { origin: 2, seq: 0 };
            Envelope { header, message }.to_bytes()
        };
        node.on_message(&channel, &presence(4));
        World::events(&mut node);
        let lines = Bytes::from_static(b"ann: hi\r\n");
        Peers::room_batch(&mut node, "#r", &lines, 1, &[(ReceiptTag(9), 0..9)]);
        let publish = std::iter::from_fn(|| node.poll_request())
            .find(|r| {
                r.args[0] == "PUBLISH"
                    && Envelope::decode(&r.args[2])
                        .is_ok_and(|e| matches!(e.message, Message::RoomBatch(_)))
            })
            .expect("published");
        // Redis says two subscribers: us and server 2, which never reports.
        node.on_reply(publish.id, Reply::Integer(2));
        assert_eq!(
            World::events(&mut node),
            vec![ClusterEvent::ReceiptServers { tag: 9, servers: 1 }]
        );
        world.now += ANSWER_PATIENCE - Duration::from_millis(1);
        node.tick(world.now);
        assert_eq!(World::events(&mut node), vec![]);
        world.now += Duration::from_millis(1);
        node.tick(world.now);
        assert_eq!(
            World::events(&mut node),
            vec![ClusterEvent::ReceiptReport {
                tag: 9,
                recipients: 4,
                delivered: 0
            }]
        );
    }

    #[test]
    fn losing_the_link_tells_the_rooms_that_span_servers_once_and_their_return() {
        let mut world = World::new();
        let mut node = world.node(1);
        node.member_joined("#wide", "ann");
        node.member_joined("#mine", "bea");
        world.exchange(&mut node);
        let channel = node.keys().room_channel("#wide");
        let message = Message::Presence(Presence {
            room: "#wide".into(),
            members: 1,
        });
        let header = Header { origin: 2, seq: 0 };
        node.on_message(&channel, &Envelope { header, message }.to_bytes());
        World::events(&mut node);
        node.link_down();
        let lost = ClusterEvent::Contact {
            rooms: vec!["#wide".into()],
            back: false,
        };
        assert_eq!(World::events(&mut node), vec![lost]);
        node.link_down();
        assert_eq!(World::events(&mut node), vec![], "once");
        node.link_up(world.now);
        let events = World::events(&mut node);
        assert!(events.contains(&ClusterEvent::Contact {
            rooms: vec!["#wide".into()],
            back: true,
        }));
    }

    #[test]
    fn names_held_are_claimed_again_on_return_and_a_taken_one_is_reported() {
        let mut world = World::new();
        let mut a = world.node(1);
        let mut b = world.node(2);
        Peers::claim_nick(&mut a, 0, "ada");
        Peers::claim_nick(&mut a, 0, "amy");
        world.exchange(&mut a);
        a.link_down();
        // Meanwhile the names were freed (A was reaped) and B took one.
        world
            .redis
            .execute(&["DEL".into(), "t:nick:ada".into()], world.now);
        b.claim_nick(5, "ada");
        world.exchange(&mut b);
        a.link_up(world.now);
        world.exchange(&mut a);
        let events = World::events(&mut a);
        assert!(events.contains(&ClusterEvent::NickLost {
            folded: "ada".into()
        }));
        assert!(!events.contains(&ClusterEvent::NickLost {
            folded: "amy".into()
        }));
    }
}
