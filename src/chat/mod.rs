//! The chat itself, as a sans-IO state machine.
//!
//! `Chat` knows clients, nicknames, rooms, the waiting line and receipts. It
//! never touches a socket, a clock or a logger: the transport calls its
//! `on_*` methods and it answers by queueing lines through the [`Outbox`]
//! trait, which it defines and the transport implements. Unit tests drive it
//! with a recording fake.

mod batch;
mod command;
mod faults;
mod names;
mod peers;
mod receipts;
mod rooms;

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::ops::Range;

use batch::{send_shared, SharedPiece, Speakers};
use bytes::Bytes;
use command::Command;
pub use faults::RemoteDeparture;
use names::{NickError, Nicknames};
pub use peers::{Alone, Claim, ClaimAnswer, Peers, Route, Ticket};
pub use receipts::ReceiptTag;
use receipts::{Finished, Origin, Receipts};
use rooms::{canonical_room_name, RoomId, Rooms, LOBBY};

/// A connection as the transport names it. The transport may reuse an id
/// once it has reported the disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub usize);

/// What became of a line handed to [`Outbox::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The client's output queue is full; the transport counts the skip and
    /// reports it later through [`Chat::on_lines_skipped`].
    Skipped,
}

/// Where the chat's output goes. Defined here, next to its only consumer, so
/// the chat can be tested without the network.
pub trait Outbox {
    /// Queues one complete line (ending in `\r\n`) for `to`. A line with a
    /// receipt tag must later be reported to [`Chat::on_written`] or
    /// [`Chat::on_dropped`] exactly once, unless it was skipped.
    fn send(&mut self, to: ClientId, line: Bytes, receipt: Option<ReceiptTag>) -> Sent;
    /// Queues `count` complete lines, in order, in one chunk. A transport
    /// whose queue cannot take the whole chunk splits it at line ends and
    /// skips what does not fit, line by line. This default does exactly that
    /// through `send`. The chat knows `count` from how it built the chunk;
    /// passing it saves every recipient a scan of the bytes, which with many
    /// speakers (each getting its own cut of the turn) would cost speakers
    /// times the turn's size.
    fn send_lines(&mut self, to: ClientId, lines: Bytes, _count: u32) {
        for line in split_lines(lines) {
            self.send(to, line, None);
        }
    }
    /// Closes `to` once what is already queued for it has been written.
    /// The chat has already forgotten the client; `why` is for the log.
    fn close(&mut self, to: ClientId, why: Close);
    /// Stops taking input from `to` until [`release_input`] for it: the
    /// chat waits for the other servers' answer to its last line, and its
    /// next lines must not overtake that answer.
    ///
    /// [`release_input`]: Outbox::release_input
    fn hold_input(&mut self, _to: ClientId) {}
    fn release_input(&mut self, _to: ClientId) {}
}

/// How many lines a chunk of complete lines holds.
pub fn count_lines(chunk: &[u8]) -> u32 {
    chunk.iter().filter(|&&byte| byte == b'\n').count() as u32
}

/// The lines of a chunk given to [`Outbox::send_lines`], each with its line
/// ending, as slices of the chunk.
pub fn split_lines(mut chunk: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        if chunk.is_empty() {
            return None;
        }
        let end = chunk
            .iter()
            .position(|&byte| byte == b'\n')
            .map_or(chunk.len(), |at| at + 1);
        Some(chunk.split_to(end))
    })
}

/// Something the transport may want to log, which the chat (having no
/// logger) reports instead. The transport drains them with
/// [`Chat::take_events`] every loop turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    /// A chatting client changed its nickname.
    Renamed {
        id: ClientId,
        old: String,
        new: String,
    },
    /// A chatting client left the chat (any cause, shutdown included),
    /// under this nickname; the transport closes its connection later.
    Left { id: ClientId, nick: String },
}

/// Why a client went away without `/quit`; decides the leave notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// It hung up, reset, or its socket failed.
    Hangup,
    /// It did not take its output within the write timeout.
    TooSlow,
    /// It sent nothing within the idle timeout.
    Idle,
}

/// Why the chat ends a connection. The chat is the one that knows, so the
/// transport logs this instead of guessing from what it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client sent `/quit`.
    Quit,
    /// The client's first line was an HTTP request.
    HttpRequest,
    /// Never admitted.
    Refused(Refusal),
    /// Sent nothing within the idle timeout.
    Idle,
    /// The server is shutting down.
    Shutdown,
}

/// Why a new connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Chat and waiting line both full.
    ServerFull,
    /// Too many connections from the address.
    TooManyFromAddress,
    /// The server is shutting down and takes no one new.
    ShuttingDown,
}

impl Refusal {
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::ServerFull => "server full",
            Refusal::TooManyFromAddress => "too many connections from the address",
            Refusal::ShuttingDown => "server shutting down",
        }
    }
}

/// Limits the chat enforces itself. Built by whoever configures the
/// transport, so the chat depends on no outside settings type.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub max_clients: usize,
    pub max_waiting: usize,
    /// 0 means no limit.
    pub max_per_ip: usize,
    pub max_line: usize,
    pub announce_limit: usize,
}

/// What happened to a new connection, for the transport's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Chatting {
        nick: String,
    },
    /// In the waiting line at this 1-based place.
    Waiting {
        place: usize,
    },
    /// Turned away and closed.
    Refused(Refusal),
}

struct Client {
    /// Distinguishes this client from earlier holders of the same id.
    serial: u64,
    ip: IpAddr,
    /// `None` while in the waiting line.
    chatter: Option<Chatter>,
}

struct Chatter {
    nick: String,
    room: RoomId,
    receipts: bool,
    /// Room lines sent with receipts on, for the `#SEQ` in receipts.
    receipt_seq: u64,
}

/// Names listed by `/who` and rooms listed by `/rooms` before the list is
/// cut short, so one command cannot produce a megabyte line.
const LIST_LIMIT: usize = 100;

const HELP: &[&str] = &[
    "commands:",
    "/help               this list",
    "/nick NAME          change your nickname (1-24 letters, digits, _ or -)",
    "/join #ROOM         move to a room, creating it if needed",
    "/rooms              list the rooms and how many are in each",
    "/who                list the people in your room",
    "/msg NICK TEXT      send a direct message",
    "/me TEXT            describe an action",
    "/receipts on|off    report how many received each of your lines",
    "/quit [REASON]      leave",
    "//TEXT              say a line that starts with /",
];

/// A request to the other servers a client waits for.
enum Awaited {
    Nick { new: String },
    Who,
    Rooms,
    Direct { target_nick: String },
}

struct Waiter {
    client: ClientId,
    serial: u64,
    awaited: Awaited,
}

/// How a direct message handed to the other servers fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectOutcome {
    Delivered,
    Left,
    TooSlow,
    NoSuchUser,
}

pub struct Chat<P: Peers = Alone> {
    config: ChatConfig,
    peers: P,
    next_ticket: Ticket,
    waiters: HashMap<Ticket, Waiter>,
    clients: Vec<Option<Client>>,
    next_serial: u64,
    chatting: usize,
    waiting: VecDeque<ClientId>,
    per_ip: HashMap<IpAddr, usize>,
    nicks: Nicknames,
    rooms: Rooms,
    /// Rooms whose batch may hold lines of this turn.
    batched_rooms: Vec<RoomId>,
    /// Working memory for handing out room batches.
    speakers: Speakers,
    receipts: Receipts,
    /// Settled direct messages from other servers, to report back.
    relayed: Vec<(u64, bool)>,
    /// Settled room receipts of other servers' lines: (relay, recipients
    /// here, delivered here), to report back.
    relayed_receipts: Vec<(u64, u64, u64)>,
    shut_down: bool,
    events: Vec<ChatEvent>,
    /// `/msg` lines to an existing user, since start.
    direct_messages: u64,
}

impl Chat<Alone> {
    pub fn new(config: ChatConfig) -> Self {
        Chat::with_peers(config, Alone)
    }
}

impl<P: Peers> Chat<P> {
    pub fn with_peers(config: ChatConfig, peers: P) -> Self {
        Chat {
            config,
            peers,
            next_ticket: 0,
            waiters: HashMap::new(),
            clients: Vec::new(),
            next_serial: 0,
            chatting: 0,
            waiting: VecDeque::new(),
            per_ip: HashMap::new(),
            nicks: Nicknames::default(),
            rooms: Rooms::default(),
            batched_rooms: Vec::new(),
            speakers: Speakers::default(),
            receipts: Receipts::default(),
            relayed: Vec::new(),
            relayed_receipts: Vec::new(),
            shut_down: false,
            events: Vec::new(),
            direct_messages: 0,
        }
    }

    /// A new connection from `ip`: welcomed, put in line, or refused.
    pub fn on_connect(&mut self, out: &mut impl Outbox, id: ClientId, ip: IpAddr) -> Admission {
        if self.shut_down {
            out.send(id, error_line("server is shutting down"), None);
            return refuse(out, id, Refusal::ShuttingDown);
        }
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if self.config.max_per_ip > 0 && from_ip >= self.config.max_per_ip {
            out.send(
                id,
                error_line("too many connections from your address"),
                None,
            );
            return refuse(out, id, Refusal::TooManyFromAddress);
        }
        let has_room = self.chatting < self.config.max_clients;
        if !has_room && self.waiting.len() >= self.config.max_waiting {
            out.send(id, error_line("server full, try again later"), None);
            return refuse(out, id, Refusal::ServerFull);
        }
        *self.per_ip.entry(ip).or_insert(0) += 1;
        self.next_serial += 1;
        let client = Client {
            serial: self.next_serial,
            ip,
            chatter: None,
        };
        if self.clients.len() <= id.0 {
            self.clients.resize_with(id.0 + 1, || None);
        }
        self.clients[id.0] = Some(client);
        if has_room {
            let nick = self.admit(out, id);
            Admission::Chatting { nick }
        } else {
            self.waiting.push_back(id);
            let place = self.waiting.len();
            out.send(
                id,
                notice_line(format_args!("server full, you are number {place} in line")),
                None,
            );
            Admission::Waiting { place }
        }
    }

    /// One cleaned, non-empty input line from `id`.
    pub fn on_line(&mut self, out: &mut impl Outbox, id: ClientId, line: &str) {
        if self.chatter(id).is_none() {
            // Waiting clients' input is discarded, as is anything from a
            // client the chat has already let go.
            return;
        }
        match command::parse(line) {
            Command::Say(text) => self.say_to_room(out, id, Speech::Line, text),
            Command::Me(text) => self.say_to_room(out, id, Speech::Action, text),
            Command::Help => {
                for help in HELP {
                    self.deliver(out, id, notice_line(help), None);
                }
            }
            Command::Nick(new) => self.rename(out, id, new),
            Command::Join(room) => self.join(out, id, room),
            Command::Rooms => self.list_rooms(out, id),
            Command::Who => self.list_members(out, id),
            Command::Msg { to, text } => self.direct_message(out, id, to, text),
            Command::Receipts(on) => {
                if let Some(chatter) = self.chatter_mut(id) {
                    chatter.receipts = on;
                }
                let state = if on { "on" } else { "off" };
                self.deliver(out, id, notice_line(format_args!("receipts {state}")), None);
            }
            Command::Quit(reason) => {
                let suffix = match reason {
                    Some(reason) => format!(": {reason}"),
                    None => String::new(),
                };
                // Leaving first hands out the room's pending lines, so the
                // goodbye is the last thing the client reads.
                self.remove(out, id, &suffix);
                out.send(id, notice_line("bye"), None);
                out.close(id, Close::Quit);
            }
            Command::Usage(usage) => {
                self.deliver(out, id, error_line(format_args!("usage: {usage}")), None);
            }
            Command::Unknown(word) => {
                self.deliver(
                    out,
                    id,
                    error_line(format_args!("unknown command {word}, try /help")),
                    None,
                );
            }
        }
    }

    /// The client sent a line longer than `max_line`.
    pub fn on_line_too_long(&mut self, out: &mut impl Outbox, id: ClientId) {
        if self.chatter(id).is_some() {
            let max = self.config.max_line;
            let line = error_line(format_args!("line too long (max {max} bytes)"));
            self.deliver(out, id, line, None);
        }
    }

    /// The client's first line was an HTTP request: explain and close.
    pub fn on_http_request(&mut self, out: &mut impl Outbox, id: ClientId) {
        if self.client(id).is_none() {
            return;
        }
        self.remove(out, id, "");
        out.send(
            id,
            error_line("this is a chat server: connect with telnet or nc"),
            None,
        );
        out.close(id, Close::HttpRequest);
    }

    /// The client sent nothing for `timeout_secs`: its room hears it left
    /// idle, it is told why, and closed.
    pub fn on_idle(&mut self, out: &mut impl Outbox, id: ClientId, timeout_secs: u64) {
        self.on_disconnect(out, id, LeaveReason::Idle);
        out.send(
            id,
            error_line(format_args!("disconnected: idle for {timeout_secs} s")),
            None,
        );
        out.close(id, Close::Idle);
    }

    /// The connection is gone (or being closed by the transport). Ids the
    /// chat has already let go are ignored, so the transport may report every
    /// close.
    pub fn on_disconnect(&mut self, out: &mut impl Outbox, id: ClientId, reason: LeaveReason) {
        let suffix = match reason {
            LeaveReason::Hangup => "",
            LeaveReason::TooSlow => " (too slow)",
            LeaveReason::Idle => " (idle)",
        };
        self.remove(out, id, suffix);
    }

    /// A receipt-tagged line was written whole into the client's socket.
    pub fn on_written(&mut self, out: &mut impl Outbox, tag: ReceiptTag) {
        self.settle(out, tag, true);
    }

    /// A receipt-tagged line will never be written: its connection closed.
    pub fn on_dropped(&mut self, out: &mut impl Outbox, tag: ReceiptTag) {
        self.settle(out, tag, false);
    }

    /// `count` lines were skipped for `id` because its output was full; its
    /// queue has drained enough to tell it so.
    pub fn on_lines_skipped(&mut self, out: &mut impl Outbox, id: ClientId, count: u64) {
        if self.chatter(id).is_some() {
            let line = notice_line(format_args!(
                "{count} lines skipped, you were too slow to keep up"
            ));
            self.deliver(out, id, line, None);
        }
    }

    /// Orderly shutdown: what was said so far is handed out, then every
    /// client is told and closed; later connects are refused.
    pub fn on_shutdown(&mut self, out: &mut impl Outbox) {
        self.end_turn(out);
        self.shut_down = true;
        let notice = notice_line("server shutting down");
        for (index, slot) in self.clients.iter_mut().enumerate() {
            if let Some(client) = slot.take() {
                let id = ClientId(index);
                if let Some(chatter) = client.chatter {
                    // The names are free for the other servers' users.
                    self.peers.release_nick(&chatter.nick.to_ascii_lowercase());
                    let room = self.rooms.get(chatter.room).name.as_str();
                    self.peers.member_left(room, &chatter.nick);
                    let nick = chatter.nick;
                    self.events.push(ChatEvent::Left { id, nick });
                }
                out.send(id, notice.clone(), None);
                out.close(id, Close::Shutdown);
            }
        }
        self.waiting.clear();
        self.per_ip.clear();
        self.chatting = 0;
        // Nobody holds a name or sits in a room any more, and the stats
        // published after the shutdown must say so. Pending receipts stay:
        // the transport still reports their copies, and nobody is told.
        self.nicks = Nicknames::default();
        self.rooms = Rooms::default();
    }

    /// Hands out the room lines batched during this loop turn. The
    /// transport calls this once per turn, before it writes to sockets.
    pub fn end_turn(&mut self, out: &mut impl Outbox) {
        for room in std::mem::take(&mut self.batched_rooms) {
            self.flush_room(out, room);
        }
    }

    /// The nickname of a chatting client, for the transport's log.
    pub fn nick(&self, id: ClientId) -> Option<&str> {
        self.chatter(id).map(|chatter| chatter.nick.as_str())
    }

    pub fn peers(&self) -> &P {
        &self.peers
    }

    pub fn peers_mut(&mut self) -> &mut P {
        &mut self.peers
    }

    /// Lines said in `room` on another server: every member here gets them,
    /// after what the room said here before. `receipts` are the lines
    /// whose sender wants a receipt, each with the relay that names it in
    /// the report back ([`Chat::take_relayed_receipts`]).
    pub fn on_remote_lines(
        &mut self,
        out: &mut impl Outbox,
        room: &str,
        lines: Bytes,
        receipts: &[(u64, Range<usize>)],
    ) {
        let Some(room) = self.rooms.find(room) else {
            for (relay, _) in receipts {
                self.relayed_receipts.push((*relay, 0, 0));
            }
            return;
        };
        self.flush_room(out, room);
        let members = &self.rooms.get(room).members;
        if receipts.is_empty() {
            let count = count_lines(&lines);
            for &member in members {
                out.send_lines(member, lines.clone(), count);
            }
            return;
        }
        let tagged: Vec<(ReceiptTag, Range<usize>)> = receipts
            .iter()
            .filter(|(_, range)| range.start <= range.end && range.end <= lines.len())
            .map(|(relay, range)| {
                let tag = self.receipts.open_relayed_room(*relay, members.len());
                (tag, range.clone())
            })
            .collect();
        // The same cuts for every member, counted once.
        let mut pieces: Vec<SharedPiece> = Vec::with_capacity(2 * tagged.len() + 1);
        let mut at = 0;
        for (tag, range) in &tagged {
            if range.start > at {
                let untagged = lines.slice(at..range.start);
                let count = count_lines(&untagged);
                pieces.push((untagged, count, None));
            }
            pieces.push((lines.slice(range.clone()), 1, Some(*tag)));
            at = range.end;
        }
        if at < lines.len() {
            let rest = lines.slice(at..);
            let count = count_lines(&rest);
            pieces.push((rest, count, None));
        }
        let mut skipped = Vec::new();
        for &member in members {
            send_shared(out, member, &pieces, &mut skipped);
        }
        if members.is_empty() {
            // Nobody here to wait for: this server's part is nothing.
            for (tag, _) in &tagged {
                if let Some(finished) = self.receipts.peers_will_report(*tag, 0) {
                    self.report(out, finished);
                }
            }
        }
        for tag in skipped {
            self.settle(out, tag, false);
        }
    }

    /// Room receipts of other servers' lines settled since the last call,
    /// as `(relay, recipients, delivered)`, to report back.
    pub fn take_relayed_receipts(&mut self) -> Vec<(u64, u64, u64)> {
        std::mem::take(&mut self.relayed_receipts)
    }

    /// `servers` other servers got the line with receipt `tag` and will
    /// report their part.
    pub fn on_receipt_servers(&mut self, out: &mut impl Outbox, tag: ReceiptTag, servers: u64) {
        if let Some(finished) = self.receipts.peers_will_report(tag, servers) {
            self.report(out, finished);
        }
    }

    /// Another server's part of receipt `tag`.
    pub fn on_receipt_report(
        &mut self,
        out: &mut impl Outbox,
        tag: ReceiptTag,
        recipients: u64,
        delivered: u64,
    ) {
        let (recipients, delivered) = (recipients as usize, delivered as usize);
        if let Some(finished) = self.receipts.peer_reported(tag, recipients, delivered) {
            self.report(out, finished);
        }
    }

    /// A direct message from another server for the local user `target`;
    /// `relay` names it in the report. An outcome known at once is
    /// returned; otherwise it comes from [`Chat::take_relayed`] once the
    /// line is written or dropped.
    pub fn on_remote_direct(
        &mut self,
        out: &mut impl Outbox,
        target: &str,
        line: Bytes,
        relay: u64,
    ) -> Option<DirectOutcome> {
        let Some(id) = self.nicks.owner(target) else {
            return Some(DirectOutcome::NoSuchUser);
        };
        let tag = self.receipts.open_relayed(relay);
        if self.deliver(out, id, line, Some(tag)) == Sent::Skipped {
            self.receipts.cancel(tag);
            return Some(DirectOutcome::TooSlow);
        }
        None
    }

    /// Relayed direct messages settled since the last call, as `(relay,
    /// delivered)`, for the transport to report back.
    pub fn take_relayed(&mut self) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.relayed)
    }

    /// The other servers answered the nickname claim `ticket`.
    pub fn on_nick_claim(&mut self, out: &mut impl Outbox, ticket: Ticket, answer: ClaimAnswer) {
        let Some((id, Awaited::Nick { new })) = self.take_waiter(out, ticket) else {
            // Nobody waits for it any more: the client left, and the name
            // was released with it.
            return;
        };
        let folded = new.to_ascii_lowercase();
        match answer {
            ClaimAnswer::Granted => {
                if self.nicks.owner(&new).is_some_and(|holder| holder != id) {
                    // A local client took it while the others were asked;
                    // our node holds the key for that one.
                    self.deliver(
                        out,
                        id,
                        error_line(format_args!("nickname {new} is taken")),
                        None,
                    );
                    return;
                }
                self.apply_rename(out, id, &new);
            }
            ClaimAnswer::Taken => {
                self.deliver(
                    out,
                    id,
                    error_line(format_args!("nickname {new} is taken")),
                    None,
                );
            }
            ClaimAnswer::Unanswered => {
                self.peers.release_nick(&folded);
                self.deliver(
                    out,
                    id,
                    error_line("the other servers did not answer, try again"),
                    None,
                );
            }
        }
    }

    /// The member names of a room on every server, for `/who` `ticket`;
    /// `None` when the others did not answer.
    pub fn on_member_list(
        &mut self,
        out: &mut impl Outbox,
        ticket: Ticket,
        names: Option<Vec<String>>,
    ) {
        let Some((id, Awaited::Who)) = self.take_waiter(out, ticket) else {
            return;
        };
        match names {
            Some(mut names) => {
                let Some(room) = self
                    .chatter(id)
                    .map(|c| self.rooms.get(c.room).name.clone())
                else {
                    return;
                };
                let total = names.len();
                if total > LIST_LIMIT {
                    names.select_nth_unstable_by(LIST_LIMIT, |a, b| by_name(a, b));
                    names.truncate(LIST_LIMIT);
                }
                names.sort_unstable_by(|a, b| by_name(a, b));
                let mut text = format!("in {room}: {}", names.join(", "));
                if total > LIST_LIMIT {
                    let _ = write!(text, ", … and {} more", total - LIST_LIMIT);
                }
                self.deliver(out, id, notice_line(text), None);
            }
            None => self.list_local_members(out, id),
        }
    }

    /// Every room and its member count on every server, for `/rooms`
    /// `ticket`; `None` when the others did not answer.
    pub fn on_room_list(
        &mut self,
        out: &mut impl Outbox,
        ticket: Ticket,
        rooms: Option<Vec<(String, usize)>>,
    ) {
        let Some((id, Awaited::Rooms)) = self.take_waiter(out, ticket) else {
            return;
        };
        match rooms {
            Some(mut rooms) => {
                if !rooms.iter().any(|(name, _)| name == LOBBY) {
                    rooms.push((LOBBY.to_string(), 0));
                }
                rooms.sort_unstable();
                let listing = rooms.iter().map(|(name, count)| (name.as_str(), *count));
                let text = room_listing(listing, rooms.len());
                self.deliver(out, id, notice_line(text), None);
            }
            None => self.list_local_rooms(out, id),
        }
    }

    /// The direct message `ticket` is on its way (or its target is known
    /// not to exist): its sender's input is taken again.
    pub fn on_direct_looked_up(&mut self, out: &mut impl Outbox, ticket: Ticket) {
        let Some(waiter) = self.waiters.get(&ticket) else {
            return;
        };
        let same = self
            .client(waiter.client)
            .is_some_and(|client| client.serial == waiter.serial);
        if same {
            out.release_input(waiter.client);
        }
    }

    /// What became of a direct message handed to the other servers.
    pub fn on_direct_report(
        &mut self,
        out: &mut impl Outbox,
        ticket: Ticket,
        outcome: DirectOutcome,
    ) {
        let Some((id, Awaited::Direct { target_nick })) = self.take_waiter(out, ticket) else {
            return;
        };
        let line = match outcome {
            DirectOutcome::Delivered => notice_line(format_args!("delivered to {target_nick}")),
            DirectOutcome::Left => error_line(format_args!(
                "{target_nick} left before your message was delivered"
            )),
            DirectOutcome::TooSlow => error_line(format_args!(
                "{target_nick} is not keeping up, your message was not delivered"
            )),
            DirectOutcome::NoSuchUser => error_line(format_args!("no such user: {target_nick}")),
        };
        self.deliver(out, id, line, None);
    }

    fn ticket(&mut self, client: ClientId, awaited: Awaited) -> Option<Ticket> {
        let serial = self.client(client)?.serial;
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.waiters.insert(
            ticket,
            Waiter {
                client,
                serial,
                awaited,
            },
        );
        Some(ticket)
    }

    /// The client still waiting for `ticket`, its input released.
    fn take_waiter(
        &mut self,
        out: &mut impl Outbox,
        ticket: Ticket,
    ) -> Option<(ClientId, Awaited)> {
        let waiter = self.waiters.remove(&ticket)?;
        let same = self
            .client(waiter.client)
            .is_some_and(|client| client.serial == waiter.serial && client.chatter.is_some());
        if !same {
            return None;
        }
        if !matches!(waiter.awaited, Awaited::Direct { .. }) {
            out.release_input(waiter.client);
        }
        Some((waiter.client, waiter.awaited))
    }

    /// What happened since the last call that the transport may log. The
    /// transport must drain these every loop turn, or they pile up.
    pub fn take_events(&mut self) -> Vec<ChatEvent> {
        std::mem::take(&mut self.events)
    }

    /// Direct messages sent to an existing user since start.
    pub fn direct_messages(&self) -> u64 {
        self.direct_messages
    }

    /// Counts for logs, tests and leak checks.
    pub fn stats(&self) -> ChatStats {
        ChatStats {
            chatting: self.chatting,
            waiting: self.waiting.len(),
            nicknames: self.nicks.len(),
            rooms: self.rooms.len(),
            pending_receipts: self.receipts.len(),
            addresses: self.per_ip.len(),
        }
    }

    fn client(&self, id: ClientId) -> Option<&Client> {
        self.clients.get(id.0)?.as_ref()
    }

    fn chatter(&self, id: ClientId) -> Option<&Chatter> {
        self.client(id)?.chatter.as_ref()
    }

    fn chatter_mut(&mut self, id: ClientId) -> Option<&mut Chatter> {
        self.clients.get_mut(id.0)?.as_mut()?.chatter.as_mut()
    }

    /// Moves a known client into the chat: guest name, lobby, welcome.
    fn admit(&mut self, out: &mut impl Outbox, id: ClientId) -> String {
        let number = self.peers.guest_number();
        let nick = self.nicks.claim_guest(id, number);
        if self.peers.spans_servers() {
            self.peers.claim_nick(0, &nick);
        }
        let room = self.enter_room(out, LOBBY, id, &nick);
        if let Some(Some(client)) = self.clients.get_mut(id.0) {
            client.chatter = Some(Chatter {
                nick: nick.clone(),
                room,
                receipts: false,
                receipt_seq: 0,
            });
        }
        self.chatting += 1;
        let here = self.room_size(room);
        out.send(
            id,
            notice_line(format_args!(
                "welcome {nick} - you are in {LOBBY} ({here} here), type /help for commands"
            )),
            None,
        );
        self.announce(room, id, format_args!("{nick} joined {LOBBY}"));
        nick
    }

    /// Forgets a client, telling its room with `suffix` after the leave
    /// notice, and lets the first waiting client in if a place freed up.
    fn remove(&mut self, out: &mut impl Outbox, id: ClientId, suffix: &str) {
        let Some(client) = self.clients.get_mut(id.0).and_then(Option::take) else {
            return;
        };
        if let Some(count) = self.per_ip.get_mut(&client.ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&client.ip);
            }
        }
        match client.chatter {
            None => self.waiting.retain(|&waiting| waiting != id),
            Some(chatter) => {
                let room_name = self.rooms.get(chatter.room).name.clone();
                self.announce(
                    chatter.room,
                    id,
                    format_args!("{} left {room_name}{suffix}", chatter.nick),
                );
                self.leave_room(out, chatter.room, id, &chatter.nick);
                self.nicks.release(&chatter.nick);
                self.peers.release_nick(&chatter.nick.to_ascii_lowercase());
                self.chatting -= 1;
                let nick = chatter.nick;
                self.events.push(ChatEvent::Left { id, nick });
                if let Some(next) = self.waiting.pop_front() {
                    self.admit(out, next);
                }
            }
        }
    }

    /// Hands out what was said in the room before it loses a member, so
    /// that member still gets it and the receipt counts stay exact.
    fn leave_room(&mut self, out: &mut impl Outbox, room: RoomId, id: ClientId, nick: &str) {
        self.flush_room(out, room);
        let name = self
            .peers
            .spans_servers()
            .then(|| self.rooms.get(room).name.clone());
        self.rooms
            .leave(room, id, member_order(&self.clients, id, nick));
        if let Some(name) = name {
            self.peers.member_left(&name, nick);
        }
    }

    /// Hands out what was said in the room before a newcomer arrives, who
    /// must not get it.
    fn enter_room(
        &mut self,
        out: &mut impl Outbox,
        name: &str,
        id: ClientId,
        nick: &str,
    ) -> RoomId {
        if let Some(room) = self.rooms.find(name) {
            self.flush_room(out, room);
        }
        let room = self
            .rooms
            .join(name, id, member_order(&self.clients, id, nick));
        self.peers.member_joined(name, nick);
        room
    }

    /// Members of a room on every server, as far as known.
    fn room_size(&self, room: RoomId) -> usize {
        let room = self.rooms.get(room);
        room.members.len() + self.peers.remote_members(&room.name)
    }

    /// Batches a line for everyone in the sender's room but the sender, with
    /// a receipt if the sender asked for them.
    fn say_to_room(&mut self, out: &mut impl Outbox, id: ClientId, speech: Speech, text: &str) {
        let Some(client) = self.clients.get_mut(id.0).and_then(Option::as_mut) else {
            return;
        };
        let origin = Origin {
            client: id,
            serial: client.serial,
        };
        let Some(chatter) = client.chatter.as_mut() else {
            return;
        };
        let Some(room) = self.rooms.get_mut(chatter.room) else {
            return;
        };
        let recipients = room.members.len() - 1;
        let spans = self.peers.spans_servers();
        let mut receipt = None;
        let mut unheard = None;
        if chatter.receipts {
            chatter.receipt_seq += 1;
            if recipients == 0 && !spans {
                unheard = Some(chatter.receipt_seq);
            } else {
                let seq = chatter.receipt_seq;
                receipt = Some(self.receipts.open_room(origin, seq, recipients, spans));
            }
        }
        if recipients > 0 || spans {
            if room.batch.is_empty() {
                self.batched_rooms.push(chatter.room);
            }
            let nick = chatter.nick.as_str();
            match speech {
                Speech::Line => room.batch.push_parts(&[nick, ": ", text], id, receipt),
                Speech::Action => room.batch.push_parts(&["* ", nick, " ", text], id, receipt),
            }
        }
        if let Some(seq) = unheard {
            let line = notice_line(format_args!("#{seq} delivered to 0 of 0"));
            self.deliver(out, id, line, None);
        }
    }

    /// Batches a join, leave or rename notice for everyone in `room` but
    /// `subject`, unless the room is too big for such notices to be worth
    /// their cost.
    fn announce(&mut self, room: RoomId, subject: ClientId, text: std::fmt::Arguments<'_>) {
        let Some(members_room) = self.rooms.get_mut(room) else {
            return;
        };
        let members = &members_room.members;
        let spans = self.peers.spans_servers();
        let nobody_else = !spans && members.iter().all(|&member| member == subject);
        let size = members.len() + self.peers.remote_members(&members_room.name);
        if nobody_else || size > self.config.announce_limit {
            return;
        }
        if members_room.batch.is_empty() {
            self.batched_rooms.push(room);
        }
        members_room.batch.push("* ", text, subject, None);
    }

    /// Queues the room's batched lines for its members.
    fn flush_room(&mut self, out: &mut impl Outbox, room: RoomId) {
        let Some(room) = self.rooms.get_mut(room) else {
            return;
        };
        if room.batch.is_empty() {
            return;
        }
        let block = room.batch.take();
        let skipped = block.deliver(&room.members, &mut self.speakers, out);
        if self.peers.spans_servers() {
            let receipts = block.receipts();
            self.peers
                .room_batch(&room.name, block.bytes(), block.line_count(), &receipts);
        }
        for tag in skipped {
            self.settle(out, tag, false);
        }
    }

    /// Queues a line for one client, after whatever its room said earlier
    /// in this turn: batching must not let a direct line overtake it.
    fn deliver(
        &mut self,
        out: &mut impl Outbox,
        to: ClientId,
        line: Bytes,
        receipt: Option<ReceiptTag>,
    ) -> Sent {
        if let Some(room) = self.chatter(to).map(|chatter| chatter.room) {
            self.flush_room(out, room);
        }
        out.send(to, line, receipt)
    }

    fn rename(&mut self, out: &mut impl Outbox, id: ClientId, new: &str) {
        let Some(old) = self.nick(id) else {
            return;
        };
        let folded = new.to_ascii_lowercase();
        let free_here =
            names::is_valid_nick(new) && self.nicks.owner(new).is_none_or(|holder| holder == id);
        if free_here && self.peers.spans_servers() && old.to_ascii_lowercase() != folded {
            let Some(ticket) = self.ticket(
                id,
                Awaited::Nick {
                    new: new.to_string(),
                },
            ) else {
                return;
            };
            match self.peers.claim_nick(ticket, &folded) {
                Claim::Granted => {
                    self.waiters.remove(&ticket);
                }
                Claim::Pending => {
                    out.hold_input(id);
                    return;
                }
            }
        }
        self.apply_rename(out, id, new);
    }

    fn apply_rename(&mut self, out: &mut impl Outbox, id: ClientId, new: &str) {
        let Some(old) = self.nick(id).map(str::to_string) else {
            return;
        };
        match self.nicks.rename(id, &old, new) {
            Err(NickError::Invalid) => {
                self.deliver(
                    out,
                    id,
                    error_line("invalid nickname: use 1 to 24 letters, digits, _ or -"),
                    None,
                );
            }
            Err(NickError::Taken) => {
                self.deliver(
                    out,
                    id,
                    error_line(format_args!("nickname {new} is taken")),
                    None,
                );
            }
            Ok(()) => {
                let Some(chatter) = self.chatter_mut(id) else {
                    return;
                };
                chatter.nick = new.to_string();
                let room = chatter.room;
                self.rooms.resort(
                    room,
                    id,
                    member_order(&self.clients, id, &old),
                    member_order(&self.clients, id, new),
                );
                if !old.eq_ignore_ascii_case(new) {
                    self.peers.release_nick(&old.to_ascii_lowercase());
                }
                if old != new && self.peers.spans_servers() {
                    let name = self.rooms.get(room).name.as_str();
                    self.peers.member_renamed(name, &old, new);
                }
                self.deliver(
                    out,
                    id,
                    notice_line(format_args!("you are now {new}")),
                    None,
                );
                if old != new {
                    self.announce(room, id, format_args!("{old} is now known as {new}"));
                    let new = new.to_string();
                    self.events.push(ChatEvent::Renamed { id, old, new });
                }
            }
        }
    }

    fn join(&mut self, out: &mut impl Outbox, id: ClientId, requested: &str) {
        let Some(name) = canonical_room_name(requested) else {
            self.deliver(
                out,
                id,
                error_line("invalid room name: use # and 1 to 32 letters, digits, _ or -"),
                None,
            );
            return;
        };
        let Some(chatter) = self.chatter(id) else {
            return;
        };
        let (old_room, nick) = (chatter.room, chatter.nick.clone());
        if self.rooms.find(&name) == Some(old_room) {
            self.deliver(
                out,
                id,
                error_line(format_args!("you are already in {name}")),
                None,
            );
            return;
        }
        let old_name = self.rooms.get(old_room).name.clone();
        self.announce(old_room, id, format_args!("{nick} left {old_name}"));
        self.leave_room(out, old_room, id, &nick);
        let room = self.enter_room(out, &name, id, &nick);
        if let Some(chatter) = self.chatter_mut(id) {
            chatter.room = room;
        }
        self.announce(room, id, format_args!("{nick} joined {name}"));
        let here = self.room_size(room);
        self.deliver(
            out,
            id,
            notice_line(format_args!("you joined {name} ({here} here)")),
            None,
        );
    }

    fn list_rooms(&mut self, out: &mut impl Outbox, id: ClientId) {
        if self.peers.spans_servers() {
            if let Some(ticket) = self.ticket(id, Awaited::Rooms) {
                if self.peers.list_rooms(ticket) {
                    out.hold_input(id);
                    return;
                }
                self.waiters.remove(&ticket);
            }
        }
        let text = room_listing(self.rooms.listing(), self.rooms.len());
        self.deliver(out, id, notice_line(text), None);
    }

    fn list_local_rooms(&mut self, out: &mut impl Outbox, id: ClientId) {
        let text = room_listing(self.rooms.listing(), self.rooms.len());
        self.deliver(out, id, notice_line(text), None);
    }

    fn list_members(&mut self, out: &mut impl Outbox, id: ClientId) {
        let Some(chatter) = self.chatter(id) else {
            return;
        };
        if self.peers.spans_servers() {
            let room = self.rooms.get(chatter.room).name.clone();
            if let Some(ticket) = self.ticket(id, Awaited::Who) {
                if self.peers.list_members(ticket, &room) {
                    out.hold_input(id);
                    return;
                }
                self.waiters.remove(&ticket);
            }
        }
        self.list_local_members(out, id);
    }

    fn list_local_members(&mut self, out: &mut impl Outbox, id: ClientId) {
        let Some(chatter) = self.chatter(id) else {
            return;
        };
        let room = self.rooms.get(chatter.room);
        // The members are kept in the order shown.
        let names: Vec<&str> = room
            .members
            .iter()
            .take(LIST_LIMIT)
            .filter_map(|&member| self.nick(member))
            .collect();
        let mut text = format!("in {}: {}", room.name, names.join(", "));
        if room.members.len() > LIST_LIMIT {
            let _ = write!(text, ", … and {} more", room.members.len() - LIST_LIMIT);
        }
        self.deliver(out, id, notice_line(text), None);
    }

    fn direct_message(&mut self, out: &mut impl Outbox, id: ClientId, to: &str, text: &str) {
        let Some(target) = self.nicks.owner(to) else {
            if self.peers.spans_servers() && names::is_valid_nick(to) {
                if let Some(nick) = self.nick(id) {
                    let line = text_line(format_args!("(dm) {nick}: {text}"));
                    let awaited = Awaited::Direct {
                        target_nick: to.to_string(),
                    };
                    if let Some(ticket) = self.ticket(id, awaited) {
                        let folded = to.to_ascii_lowercase();
                        if self.peers.direct(ticket, &folded, line) == Route::Remote {
                            // Its later lines wait until the message is
                            // on its way, so none overtakes it.
                            out.hold_input(id);
                            return;
                        }
                        self.waiters.remove(&ticket);
                    }
                }
            }
            self.deliver(
                out,
                id,
                error_line(format_args!("no such user: {to}")),
                None,
            );
            return;
        };
        let (Some(client), Some(nick), Some(target_nick)) =
            (self.client(id), self.nick(id), self.nick(target))
        else {
            return;
        };
        let origin = Origin {
            client: id,
            serial: client.serial,
        };
        let line = text_line(format_args!("(dm) {nick}: {text}"));
        let target_nick = target_nick.to_string();
        self.direct_messages += 1;
        let tag = self.receipts.open_direct(origin, target_nick.clone());
        if self.deliver(out, target, line, Some(tag)) == Sent::Skipped {
            // Not "left": the recipient is there but not reading.
            self.receipts.cancel(tag);
            self.deliver(
                out,
                id,
                error_line(format_args!(
                    "{target_nick} is not keeping up, your message was not delivered"
                )),
                None,
            );
        }
    }

    fn settle(&mut self, out: &mut impl Outbox, tag: ReceiptTag, delivered: bool) {
        if let Some(finished) = self.receipts.settle(tag, delivered) {
            self.report(out, finished);
        }
    }

    /// Tells the sender how its line fared, if the sender is still the same
    /// client.
    fn report(&mut self, out: &mut impl Outbox, finished: Finished) {
        let (origin, line) = match finished {
            Finished::Room {
                origin,
                seq,
                recipients,
                delivered,
            } => (
                origin,
                notice_line(format_args!(
                    "#{seq} delivered to {delivered} of {recipients}"
                )),
            ),
            Finished::Direct {
                origin,
                target_nick,
                delivered: true,
            } => (
                origin,
                notice_line(format_args!("delivered to {target_nick}")),
            ),
            Finished::Relayed { relay, delivered } => {
                self.relayed.push((relay, delivered));
                return;
            }
            Finished::RelayedRoom {
                relay,
                recipients,
                delivered,
            } => {
                self.relayed_receipts
                    .push((relay, recipients as u64, delivered as u64));
                return;
            }
            Finished::Direct {
                origin,
                target_nick,
                delivered: false,
            } => (
                origin,
                error_line(format_args!(
                    "{target_nick} left before your message was delivered"
                )),
            ),
        };
        let still_there = self
            .client(origin.client)
            .is_some_and(|client| client.serial == origin.serial && client.chatter.is_some());
        if still_there {
            self.deliver(out, origin.client, line, None);
        }
    }
}

fn refuse(out: &mut impl Outbox, id: ClientId, why: Refusal) -> Admission {
    out.close(id, Close::Refused(why));
    Admission::Refused(why)
}

/// How a room line is shown.
#[derive(Clone, Copy)]
enum Speech {
    /// `nick: text`
    Line,
    /// `* nick text`, from `/me`
    Action,
}

/// Counts of what the chat holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatStats {
    pub chatting: usize,
    pub waiting: usize,
    pub nicknames: usize,
    pub rooms: usize,
    pub pending_receipts: usize,
    pub addresses: usize,
}

/// How `other` sorts against `subject`, named `nick`, in a room's member
/// list. The subject itself compares equal whatever name the table holds for
/// it, so it is found while it is being renamed or after it was forgotten.
fn member_order<'a>(
    clients: &'a [Option<Client>],
    subject: ClientId,
    nick: &'a str,
) -> impl FnMut(&ClientId) -> std::cmp::Ordering + 'a {
    move |&other| {
        if other == subject {
            return std::cmp::Ordering::Equal;
        }
        let other_nick = clients
            .get(other.0)
            .and_then(Option::as_ref)
            .and_then(|client| client.chatter.as_ref())
            .map(|chatter| chatter.nick.as_str());
        other_nick.map_or(std::cmp::Ordering::Less, |other_nick| {
            by_name(other_nick, nick)
        })
    }
}

/// Orders nicknames ignoring case, then by exact spelling, without
/// allocating: `/who` in a room of thousands compares many pairs.
fn by_name(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|byte| byte.to_ascii_lowercase())
        .cmp(b.bytes().map(|byte| byte.to_ascii_lowercase()))
        .then_with(|| a.cmp(b))
}

/// The `/rooms` line: the first rooms of `listing` (sorted by name) of
/// `total`.
fn room_listing<'a>(listing: impl Iterator<Item = (&'a str, usize)>, total: usize) -> String {
    let mut text = String::from("rooms: ");
    for (index, (name, count)) in listing.take(LIST_LIMIT).enumerate() {
        if index > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "{name} ({count})");
    }
    if total > LIST_LIMIT {
        let _ = write!(text, ", … and {} more", total - LIST_LIMIT);
    }
    text
}

fn framed(prefix: &str, text: impl std::fmt::Display) -> Bytes {
    let mut line = String::with_capacity(64);
    line.push_str(prefix);
    let _ = write!(line, "{text}");
    line.push_str("\r\n");
    Bytes::from(line)
}

fn text_line(text: impl std::fmt::Display) -> Bytes {
    framed("", text)
}

fn notice_line(text: impl std::fmt::Display) -> Bytes {
    framed("* ", text)
}

fn error_line(text: impl std::fmt::Display) -> Bytes {
    framed("! ", text)
}

#[cfg(test)]
mod tests;
