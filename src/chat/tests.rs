//! The chat core driven through its `on_*` calls, with a recording outbox in
//! place of the network. Each test reads as the protocol: a client sends a
//! line, other clients expect (or do not expect) lines.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

fn config() -> ChatConfig {
    ChatConfig {
        max_clients: 1000,
        max_waiting: 10,
        max_per_ip: 0,
        max_line: 4096,
        announce_limit: 100,
    }
}

/// The fake transport: records every line and close, and refuses lines for
/// clients in `full` the way a transport with a full output queue does.
#[derive(Default)]
struct Recorder {
    sent: Vec<(ClientId, String, Option<ReceiptTag>)>,
    closed: Vec<ClientId>,
    /// Why each of `closed` was closed, in the same order.
    close_reasons: Vec<Close>,
    full: HashSet<ClientId>,
    /// Tagged copies not yet reported back, kept apart from `sent` so that
    /// reading a client's lines does not settle them.
    unsettled: Vec<(ClientId, ReceiptTag)>,
}

impl Outbox for Recorder {
    fn send(&mut self, to: ClientId, line: Bytes, receipt: Option<ReceiptTag>) -> Sent {
        if self.full.contains(&to) {
            return Sent::Skipped;
        }
        let line = String::from_utf8(line.to_vec()).expect("server lines are UTF-8");
        if let Some(tag) = receipt {
            self.unsettled.push((to, tag));
        }
        self.sent.push((to, line, receipt));
        Sent::Queued
    }

    fn close(&mut self, to: ClientId, why: Close) {
        self.closed.push(to);
        self.close_reasons.push(why);
    }
}

/// A chat and its fake transport, with the calls a transport makes.
struct Net {
    chat: Chat,
    out: Recorder,
    next_id: usize,
}

impl Net {
    fn new() -> Self {
        Net::with(config())
    }

    fn with(config: ChatConfig) -> Self {
        Net {
            chat: Chat::new(config),
            out: Recorder::default(),
            next_id: 0,
        }
    }

    fn connect(&mut self) -> ClientId {
        self.connect_from(LOCALHOST).0
    }

    fn connect_from(&mut self, ip: IpAddr) -> (ClientId, Admission) {
        let id = ClientId(self.next_id);
        self.next_id += 1;
        (id, self.connect_as(id, ip))
    }

    /// Connects under a chosen id, as a transport reusing a freed slot does.
    fn connect_as(&mut self, id: ClientId, ip: IpAddr) -> Admission {
        let admission = self.chat.on_connect(&mut self.out, id, ip);
        self.end_turn();
        admission
    }

    /// `N` clients in the lobby, with the welcome and join chatter forgotten.
    fn chatters<const N: usize>(&mut self) -> [ClientId; N] {
        let ids = std::array::from_fn(|_| self.connect());
        self.out.sent.clear();
        ids
    }

    fn say(&mut self, id: ClientId, line: &str) {
        self.chat.on_line(&mut self.out, id, line);
        self.end_turn();
    }

    /// What the transport does after every event: hand out the turn's
    /// batched room lines.
    fn end_turn(&mut self) {
        self.chat.end_turn(&mut self.out);
    }

    /// Everything sent to `id` since the last call, without the `\r\n`.
    fn lines(&mut self, id: ClientId) -> Vec<String> {
        let (mine, others) = std::mem::take(&mut self.out.sent)
            .into_iter()
            .partition(|(to, _, _)| *to == id);
        self.out.sent = others;
        mine.into_iter()
            .map(|(_, line, _)| {
                line.strip_suffix("\r\n")
                    .unwrap_or_else(|| panic!("{line:?} does not end in CRLF"))
                    .to_string()
            })
            .collect()
    }

    /// Lines for `id`, asserting there is exactly one.
    fn line(&mut self, id: ClientId) -> String {
        let lines = self.lines(id);
        assert_eq!(lines.len(), 1, "expected one line, got {lines:?}");
        lines.into_iter().next().unwrap()
    }

    fn nothing_sent(&self) -> bool {
        self.out.sent.is_empty()
    }

    fn nick(&self, id: ClientId) -> String {
        self.chat.nick(id).expect("a chatting client").to_string()
    }

    fn take_unsettled(&mut self, id: ClientId) -> Vec<ReceiptTag> {
        let (mine, others) = std::mem::take(&mut self.out.unsettled)
            .into_iter()
            .partition(|(to, _)| *to == id);
        self.out.unsettled = others;
        mine.into_iter().map(|(_, tag)| tag).collect()
    }

    /// The socket took everything queued for `id`.
    fn flush(&mut self, id: ClientId) {
        for tag in self.take_unsettled(id) {
            self.chat.on_written(&mut self.out, tag);
            self.end_turn();
        }
    }

    /// Whatever was queued for `id` will never be written.
    fn drop_queue(&mut self, id: ClientId) {
        for tag in self.take_unsettled(id) {
            self.chat.on_dropped(&mut self.out, tag);
            self.end_turn();
        }
    }

    /// The connection is gone: the transport reports it and drops its queue.
    fn hang_up(&mut self, id: ClientId, reason: LeaveReason) {
        self.chat.on_disconnect(&mut self.out, id, reason);
        self.end_turn();
        self.drop_queue(id);
    }
}

/// The nickname a welcome line hands out.
fn welcomed_nick(line: &str) -> &str {
    let rest = line
        .strip_prefix("* welcome ")
        .unwrap_or_else(|| panic!("{line:?} is not a welcome"));
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(rest.len());
    &rest[..end]
}

// Connecting

#[test]
fn a_newcomer_is_welcomed_with_a_guest_name_and_announced_to_the_lobby() {
    let mut net = Net::new();
    let alice = net.connect();
    let welcome = net.line(alice);
    assert!(welcome.starts_with("* welcome guest-"), "{welcome}");
    let alice_nick = welcomed_nick(&welcome).to_string();
    assert_eq!(net.nick(alice), alice_nick);

    let bob = net.connect();
    let bob_nick = welcomed_nick(&net.line(bob)).to_string();
    assert_ne!(alice_nick, bob_nick);
    assert_eq!(net.line(alice), format!("* {bob_nick} joined #lobby"));
    assert!(
        net.nothing_sent(),
        "the newcomer gets no join notice of its own"
    );
}

#[test]
fn guests_get_distinct_names() {
    let mut net = Net::new();
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let id = net.connect();
        let welcome = net.lines(id).remove(0);
        let nick = welcomed_nick(&welcome);
        assert!(nick.starts_with("guest-"), "{nick}");
        assert!(seen.insert(nick.to_ascii_lowercase()), "{nick} twice");
    }
}

#[test]
fn a_waiting_line_forms_when_the_chat_is_full() {
    let mut net = Net::with(ChatConfig {
        max_clients: 2,
        max_waiting: 2,
        ..config()
    });
    let [alice, bob] = [net.connect(), net.connect()];
    net.out.sent.clear();

    let (carol, admission) = net.connect_from(LOCALHOST);
    assert_eq!(admission, Admission::Waiting { place: 1 });
    assert_eq!(net.line(carol), "* server full, you are number 1 in line");
    let (dave, admission) = net.connect_from(LOCALHOST);
    assert_eq!(admission, Admission::Waiting { place: 2 });
    assert_eq!(net.line(dave), "* server full, you are number 2 in line");
    assert!(net.nothing_sent(), "waiting clients are not announced");

    let (eve, admission) = net.connect_from(LOCALHOST);
    assert_eq!(admission, Admission::Refused(Refusal::ServerFull));
    assert_eq!(net.line(eve), "! server full, try again later");
    assert_eq!(net.out.closed, [eve]);
    net.chat
        .on_disconnect(&mut net.out, eve, LeaveReason::Hangup);
    assert_eq!(net.chat.stats().waiting, 2);

    net.say(carol, "let me in");
    net.say(carol, "/nick impatient");
    net.say(carol, "/quit");
    assert!(net.nothing_sent(), "input while waiting is discarded");
    assert_eq!(net.out.closed, [eve]);

    net.hang_up(alice, LeaveReason::Hangup);
    let welcome = net.line(carol);
    let carol_nick = welcomed_nick(&welcome).to_string();
    assert_eq!(net.nick(carol), carol_nick);
    assert_eq!(
        net.lines(bob),
        [
            "* guest-1 left #lobby".to_string(),
            format!("* {carol_nick} joined #lobby")
        ]
    );
    assert!(net.lines(dave).is_empty(), "dave is still waiting");
    assert_eq!(net.chat.stats().chatting, 2);
    assert_eq!(net.chat.stats().waiting, 1);

    net.say(carol, "made it");
    assert_eq!(net.line(bob), format!("{carol_nick}: made it"));
}

#[test]
fn a_waiting_client_that_hangs_up_leaves_the_line_and_the_rest_keep_order() {
    let mut net = Net::with(ChatConfig {
        max_clients: 2,
        max_waiting: 3,
        ..config()
    });
    let [alice, bob] = [net.connect(), net.connect()];
    let [carol, dave, erin] = [net.connect(), net.connect(), net.connect()];
    net.out.sent.clear();

    net.hang_up(dave, LeaveReason::Hangup);
    assert!(net.nothing_sent(), "a waiting client leaves no notice");
    assert_eq!(net.chat.stats().waiting, 2);

    net.hang_up(alice, LeaveReason::Hangup);
    assert!(net.line(carol).starts_with("* welcome "));
    assert!(net.lines(erin).is_empty());

    net.hang_up(bob, LeaveReason::Hangup);
    assert!(net.line(erin).starts_with("* welcome "));
    assert!(net.lines(dave).is_empty());
    assert_eq!(net.chat.stats().waiting, 0);
    assert_eq!(net.chat.stats().chatting, 2);

    // The line has room again.
    let (_, admission) = net.connect_from(LOCALHOST);
    assert_eq!(admission, Admission::Waiting { place: 1 });
}

#[test]
fn too_many_connections_from_one_address_are_refused() {
    let mut net = Net::with(ChatConfig {
        max_per_ip: 2,
        ..config()
    });
    let first = net.connect();
    net.connect();
    net.out.sent.clear();

    let (third, admission) = net.connect_from(LOCALHOST);
    assert_eq!(admission, Admission::Refused(Refusal::TooManyFromAddress));
    assert_eq!(net.line(third), "! too many connections from your address");
    assert_eq!(net.out.closed, [third]);
    net.chat
        .on_disconnect(&mut net.out, third, LeaveReason::Hangup);

    let (other, admission) = net.connect_from(ELSEWHERE);
    assert!(
        matches!(admission, Admission::Chatting { .. }),
        "{admission:?}"
    );
    assert!(net.lines(other)[0].starts_with("* welcome "));

    net.hang_up(first, LeaveReason::Hangup);
    let (_, admission) = net.connect_from(LOCALHOST);
    assert!(
        matches!(admission, Admission::Chatting { .. }),
        "{admission:?}"
    );
}

#[test]
fn waiting_clients_count_against_their_address() {
    let mut net = Net::with(ChatConfig {
        max_clients: 1,
        max_per_ip: 2,
        ..config()
    });
    net.connect();
    let (_, admission) = net.connect_from(LOCALHOST);
    assert_eq!(admission, Admission::Waiting { place: 1 });
    let (_, admission) = net.connect_from(LOCALHOST);
    assert_eq!(admission, Admission::Refused(Refusal::TooManyFromAddress));
}

#[test]
fn an_http_request_is_answered_and_closed() {
    let mut net = Net::new();
    let [browser] = net.chatters();
    net.chat.on_http_request(&mut net.out, browser);
    net.end_turn();
    assert_eq!(
        net.line(browser),
        "! this is a chat server: connect with telnet or nc"
    );
    assert_eq!(net.out.closed, [browser]);
    assert_eq!(net.out.close_reasons, [Close::HttpRequest]);
    assert_eq!(net.chat.stats().chatting, 0);
    assert_eq!(net.chat.stats().addresses, 0);
}

// Chatting

#[test]
fn a_line_reaches_every_other_member_of_the_room_and_no_one_else() {
    let mut net = Net::new();
    let [alice, bob, carol, dave] = net.chatters();
    net.say(dave, "/join #elsewhere");
    net.out.sent.clear();

    net.say(alice, "hello");
    assert_eq!(net.lines(bob), ["guest-1: hello"]);
    assert_eq!(net.lines(carol), ["guest-1: hello"]);
    assert!(
        net.lines(alice).is_empty(),
        "the sender never gets its line back"
    );
    assert!(net.lines(dave).is_empty(), "other rooms hear nothing");
    assert!(net.nothing_sent());
}

#[test]
fn a_double_slash_says_a_line_starting_with_slash() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "//join is a command");
    assert_eq!(
        net.line(bob),
        format!("{}: /join is a command", net.nick(alice))
    );
    assert!(net.lines(alice).is_empty());
}

#[test]
fn lines_from_one_sender_arrive_in_order() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    for n in 0..5 {
        net.say(alice, &format!("line {n}"));
    }
    let expected: Vec<String> = (0..5).map(|n| format!("guest-1: line {n}")).collect();
    assert_eq!(net.lines(bob), expected);
}

#[test]
fn help_lists_every_command_as_notices_to_the_asker_only() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/help");
    let help = net.lines(alice);
    assert!(!help.is_empty());
    for line in &help {
        assert!(line.starts_with("* "), "{line}");
    }
    for command in [
        "/nick",
        "/join",
        "/rooms",
        "/who",
        "/msg",
        "/me",
        "/receipts",
        "/quit",
        "//",
    ] {
        assert!(
            help.iter().any(|line| line.contains(command)),
            "{command} missing from {help:?}"
        );
    }
    assert!(net.lines(bob).is_empty());
}

#[test]
fn an_unknown_command_points_to_help() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/dance wildly");
    assert_eq!(net.line(alice), "! unknown command /dance, try /help");
    assert!(net.lines(bob).is_empty());
}

#[test]
fn a_too_long_line_is_refused_and_the_client_stays() {
    let mut net = Net::with(ChatConfig {
        max_line: 512,
        ..config()
    });
    let [alice, bob] = net.chatters();
    net.chat.on_line_too_long(&mut net.out, alice);
    net.end_turn();
    assert_eq!(net.line(alice), "! line too long (max 512 bytes)");
    assert!(net.out.closed.is_empty());
    net.say(alice, "short one");
    assert_eq!(net.line(bob), "guest-1: short one");
}

#[test]
fn skipped_lines_are_counted_to_the_slow_client() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.chat.on_lines_skipped(&mut net.out, alice, 7);
    net.end_turn();
    assert_eq!(
        net.line(alice),
        "* 7 lines skipped, you were too slow to keep up"
    );
    assert!(net.lines(bob).is_empty());
}

#[test]
fn me_describes_an_action_to_the_room() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/me waves");
    assert_eq!(net.line(bob), "* guest-1 waves");
    assert!(net.lines(alice).is_empty());
}

// Nicknames

#[test]
fn nick_renames_and_tells_the_room() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/nick Alice");
    assert_eq!(net.line(alice), "* you are now Alice");
    assert_eq!(net.line(bob), "* guest-1 is now known as Alice");
    net.say(alice, "hi");
    assert_eq!(net.line(bob), "Alice: hi", "shown as typed");
}

#[test]
fn a_taken_nick_is_refused_ignoring_case() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/nick alice");
    net.out.sent.clear();
    net.say(bob, "/nick ALICE");
    assert_eq!(net.line(bob), "! nickname ALICE is taken");
    assert!(net.lines(alice).is_empty());
    assert_eq!(net.nick(bob), "guest-2");
}

#[test]
fn an_invalid_nick_is_refused() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    for bad in [&"x".repeat(25)[..], "a.b", "two words", "café", "<script>"] {
        net.say(alice, &format!("/nick {bad}"));
        let line = net.line(alice);
        assert!(line.starts_with("! invalid nickname: "), "{bad}: {line}");
    }
    net.say(alice, "/nick");
    assert_eq!(net.line(alice), "! usage: /nick NAME");
    assert_eq!(net.nick(alice), "guest-1");
    assert!(net.lines(bob).is_empty());

    net.say(alice, &format!("/nick {}", "x".repeat(24)));
    assert_eq!(net.line(alice), format!("* you are now {}", "x".repeat(24)));
}

#[test]
fn changing_the_case_of_ones_own_nick_is_allowed() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/nick alice");
    net.out.sent.clear();
    net.say(alice, "/nick ALICE");
    assert_eq!(net.line(alice), "* you are now ALICE");
    assert_eq!(net.line(bob), "* alice is now known as ALICE");
}

#[test]
fn an_old_nick_is_free_after_a_rename() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/nick alice");
    net.say(alice, "/nick alicia");
    net.out.sent.clear();
    net.say(bob, "/nick Alice");
    assert_eq!(net.line(bob), "* you are now Alice");
    net.say(bob, "/nick guest-1");
    assert_eq!(
        net.line(bob),
        "* you are now guest-1",
        "guest names free up too"
    );
}

#[test]
fn guest_names_skip_names_claimed_with_nick() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/nick guest-3");
    net.say(bob, "/nick GUEST-5");
    net.out.sent.clear();

    let mut nicks = Vec::new();
    for _ in 0..3 {
        let id = net.connect();
        nicks.push(net.nick(id));
    }
    assert_eq!(nicks, ["guest-4", "guest-6", "guest-7"]);
}

// Rooms

#[test]
fn join_moves_to_a_room_folded_to_lower_case() {
    let mut net = Net::new();
    let [alice, bob, carol] = net.chatters();
    net.say(alice, "/join #Rust");
    assert_eq!(net.line(alice), "* you joined #rust (1 here)");
    assert_eq!(net.line(bob), "* guest-1 left #lobby");
    assert_eq!(net.line(carol), "* guest-1 left #lobby");

    net.say(bob, "/join #RUST");
    assert_eq!(net.line(bob), "* you joined #rust (2 here)");
    assert_eq!(net.line(alice), "* guest-2 joined #rust");
    assert_eq!(net.line(carol), "* guest-2 left #lobby");

    net.say(alice, "rustaceans only");
    assert_eq!(net.line(bob), "guest-1: rustaceans only");
    assert!(net.lines(carol).is_empty());
}

#[test]
fn join_refuses_bad_names_and_the_room_one_is_in() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    for bad in [
        "rust",
        "#",
        "#two words",
        "#caf\u{e9}",
        &format!("#{}", "x".repeat(33)),
    ] {
        net.say(alice, &format!("/join {bad}"));
        let line = net.line(alice);
        assert!(line.starts_with("! invalid room name"), "{bad}: {line}");
    }
    net.say(alice, "/join");
    assert_eq!(net.line(alice), "! usage: /join #ROOM");
    net.say(alice, "/join #LOBBY");
    assert_eq!(net.line(alice), "! you are already in #lobby");
    net.say(alice, "/join #rust");
    net.out.sent.clear();
    net.say(alice, "/join #Rust");
    assert_eq!(net.line(alice), "! you are already in #rust");
    assert!(net.lines(bob).is_empty());
    assert_eq!(net.chat.stats().rooms, 2);
}

#[test]
fn rooms_exist_while_someone_is_in_them_but_the_lobby_always_exists() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    assert_eq!(net.chat.stats().rooms, 1);

    net.say(alice, "/join #rust");
    assert_eq!(net.chat.stats().rooms, 2);
    net.say(bob, "/join #rust");
    net.out.sent.clear();
    net.say(alice, "/rooms");
    assert_eq!(net.line(alice), "* rooms: #lobby (0), #rust (2)");

    net.say(alice, "/join #lobby");
    net.say(bob, "/join #go");
    assert_eq!(net.chat.stats().rooms, 2, "#rust is gone, #go is new");
    net.out.sent.clear();
    net.say(alice, "/rooms");
    assert_eq!(net.line(alice), "* rooms: #go (1), #lobby (1)");

    net.hang_up(bob, LeaveReason::Hangup);
    net.hang_up(alice, LeaveReason::Hangup);
    assert_eq!(net.chat.stats().rooms, 1);
    let carol = net.connect();
    net.out.sent.clear();
    net.say(carol, "/rooms");
    assert_eq!(net.line(carol), "* rooms: #lobby (1)");
}

#[test]
fn rooms_lists_every_room_sorted_with_counts() {
    let mut net = Net::new();
    let ids: [ClientId; 6] = net.chatters();
    net.say(ids[0], "/join #rust");
    net.say(ids[1], "/join #rust");
    net.say(ids[2], "/join #ada");
    net.out.sent.clear();
    net.say(ids[3], "/rooms");
    assert_eq!(net.line(ids[3]), "* rooms: #ada (1), #lobby (3), #rust (2)");

    net.say(ids[2], "/join #rust");
    net.out.sent.clear();
    net.say(ids[3], "/rooms");
    assert_eq!(net.line(ids[3]), "* rooms: #lobby (3), #rust (3)");
}

#[test]
fn who_lists_the_room_sorted() {
    let mut net = Net::new();
    let [carol, alice, bob, other] = net.chatters();
    net.say(carol, "/nick carol");
    net.say(alice, "/nick alice");
    net.say(bob, "/nick bob");
    net.say(other, "/join #other");
    net.out.sent.clear();
    net.say(bob, "/who");
    assert_eq!(net.line(bob), "* in #lobby: alice, bob, carol");
    net.say(other, "/who");
    assert_eq!(net.line(other), "* in #other: guest-4");
}

#[test]
fn who_in_a_huge_room_lists_the_first_hundred_and_counts_the_rest() {
    let mut net = Net::new();
    let ids: [ClientId; 150] = net.chatters();
    net.say(ids[0], "/who");
    let line = net.line(ids[0]);
    let listed = line
        .strip_prefix("* in #lobby: ")
        .and_then(|rest| rest.strip_suffix(", … and 50 more"))
        .unwrap_or_else(|| panic!("{line}"));
    let listed: Vec<&str> = listed.split(", ").collect();
    assert_eq!(listed.len(), 100);
    let mut all: Vec<String> = ids.iter().map(|&id| net.nick(id)).collect();
    all.sort();
    assert_eq!(listed, all[..100], "the first hundred in sorted order");
}

#[test]
fn who_lists_a_hundred_names_in_full_and_cuts_from_the_hundred_and_first() {
    let mut net = Net::new();
    let ids: [ClientId; 100] = net.chatters();
    net.say(ids[0], "/who");
    let line = net.line(ids[0]);
    assert!(!line.contains('…'), "{line}");
    assert_eq!(line.split(", ").count(), 100);

    net.connect();
    net.out.sent.clear();
    net.say(ids[0], "/who");
    let line = net.line(ids[0]);
    assert!(line.ends_with(", … and 1 more"), "{line}");
    assert_eq!(line.split(", ").count(), 101, "100 names and the tail");
}

// Direct messages

#[test]
fn a_direct_message_reaches_its_target_and_is_confirmed_once_written() {
    let mut net = Net::new();
    let [alice, bob, carol] = net.chatters();
    net.say(bob, "/join #elsewhere");
    net.out.sent.clear();

    net.say(alice, "/msg guest-2 psst, over here");
    assert_eq!(net.line(bob), "(dm) guest-1: psst, over here");
    assert!(net.lines(carol).is_empty());
    assert!(
        net.lines(alice).is_empty(),
        "not confirmed before it is written"
    );

    net.flush(bob);
    assert_eq!(net.line(alice), "* delivered to guest-2");
    assert_eq!(net.chat.stats().pending_receipts, 0);
}

#[test]
fn a_direct_message_whose_target_leaves_first_is_reported_undelivered() {
    // The transport may report the dropped copy before or after the
    // disconnect; either way the sender hears the same.
    for dropped_first in [true, false] {
        let mut net = Net::new();
        let [alice, bob] = net.chatters();
        net.say(alice, "/msg guest-2 are you there?");
        net.out.sent.clear();
        if dropped_first {
            net.drop_queue(bob);
            net.chat
                .on_disconnect(&mut net.out, bob, LeaveReason::Hangup);
        } else {
            net.hang_up(bob, LeaveReason::Hangup);
        }
        let mut lines = net.lines(alice);
        lines.sort();
        assert_eq!(
            lines,
            [
                "! guest-2 left before your message was delivered",
                "* guest-2 left #lobby",
            ]
        );
        assert_eq!(net.chat.stats().pending_receipts, 0);
    }
}

#[test]
fn a_direct_message_needs_a_known_nick_and_text() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/msg nobody hello");
    assert_eq!(net.line(alice), "! no such user: nobody");
    net.say(alice, "/msg guest-2");
    assert_eq!(net.line(alice), "! usage: /msg NICK TEXT");
    net.say(alice, "/msg");
    assert_eq!(net.line(alice), "! usage: /msg NICK TEXT");
    assert!(net.lines(bob).is_empty());
    assert_eq!(net.chat.stats().pending_receipts, 0);
}

#[test]
fn a_direct_message_finds_its_target_ignoring_case() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(bob, "/nick Bob");
    net.out.sent.clear();
    net.say(alice, "/msg BOB hi");
    assert_eq!(net.line(bob), "(dm) guest-1: hi");
    net.flush(bob);
    assert_eq!(net.line(alice), "* delivered to Bob");
}

#[test]
fn a_direct_message_to_a_full_queue_is_refused_at_once() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.out.full.insert(bob);
    net.say(alice, "/msg guest-2 hello?");
    assert_eq!(
        net.line(alice),
        "! guest-2 is not keeping up, your message was not delivered"
    );
    assert_eq!(net.chat.stats().pending_receipts, 0);
    assert!(net.out.unsettled.is_empty());
}

// Receipts

#[test]
fn receipts_can_be_turned_on_and_off() {
    let mut net = Net::new();
    let [alice] = net.chatters();
    net.say(alice, "/receipts on");
    assert_eq!(net.line(alice), "* receipts on");
    net.say(alice, "/receipts OFF");
    assert_eq!(net.line(alice), "* receipts off");
    net.say(alice, "/receipts");
    assert_eq!(net.line(alice), "! usage: /receipts on|off");
}

#[test]
fn a_receipt_follows_once_every_copy_is_written() {
    let mut net = Net::new();
    let [alice, bob, carol, dave] = net.chatters();
    net.say(alice, "/receipts on");
    net.out.sent.clear();

    net.say(alice, "one");
    net.flush(bob);
    net.flush(carol);
    assert!(
        net.lines(alice).is_empty(),
        "dave's copy is not settled yet"
    );
    net.flush(dave);
    assert_eq!(net.line(alice), "* #1 delivered to 3 of 3");

    net.say(alice, "two");
    for id in [bob, carol, dave] {
        net.flush(id);
    }
    assert_eq!(net.line(alice), "* #2 delivered to 3 of 3");
    assert_eq!(net.chat.stats().pending_receipts, 0);
}

#[test]
fn a_recipient_that_leaves_before_its_copy_is_written_is_not_counted() {
    let mut net = Net::new();
    let [alice, bob, carol, dave] = net.chatters();
    net.say(alice, "/receipts on");
    net.say(alice, "anyone?");
    net.out.sent.clear();

    net.flush(carol);
    net.hang_up(bob, LeaveReason::Hangup);
    assert_eq!(net.lines(alice), ["* guest-2 left #lobby"]);
    net.flush(dave);
    assert_eq!(net.line(alice), "* #1 delivered to 2 of 3");
}

#[test]
fn a_recipient_with_a_full_queue_is_not_counted() {
    let mut net = Net::new();
    let [alice, bob, carol, dave] = net.chatters();
    net.say(alice, "/receipts on");
    net.out.sent.clear();

    net.out.full.insert(carol);
    net.say(alice, "one");
    assert!(net.lines(alice).is_empty());
    net.flush(bob);
    assert!(net.lines(alice).is_empty());
    net.flush(dave);
    assert_eq!(net.line(alice), "* #1 delivered to 2 of 3");

    net.out.full.extend([bob, dave]);
    net.say(alice, "two");
    assert_eq!(
        net.line(alice),
        "* #2 delivered to 0 of 3",
        "nothing to wait for"
    );
    assert_eq!(net.chat.stats().pending_receipts, 0);
}

#[test]
fn a_receipt_for_an_empty_room_comes_at_once() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/join #quiet");
    net.say(alice, "/receipts on");
    net.out.sent.clear();
    net.say(alice, "echo?");
    assert_eq!(net.line(alice), "* #1 delivered to 0 of 0");
    assert!(net.lines(bob).is_empty());
    assert_eq!(net.chat.stats().pending_receipts, 0);
}

#[test]
fn me_lines_get_receipts_too() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/receipts on");
    net.say(alice, "/me waves");
    net.say(alice, "hello");
    net.out.sent.clear();
    net.flush(bob);
    assert_eq!(
        net.lines(alice),
        ["* #1 delivered to 1 of 1", "* #2 delivered to 1 of 1"]
    );
}

#[test]
fn with_receipts_off_no_receipts_are_asked_or_sent() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "plain");
    net.say(alice, "/receipts on");
    net.say(alice, "/receipts off");
    net.say(alice, "plain again");
    assert!(net.out.sent.iter().all(|(_, _, tag)| tag.is_none()));
    assert!(net.out.unsettled.is_empty());
    net.out.sent.clear();
    net.flush(bob);
    assert!(net.nothing_sent());
    assert_eq!(net.chat.stats().pending_receipts, 0);
}

#[test]
fn receipts_of_two_senders_are_counted_apart() {
    let mut net = Net::new();
    let [alice, bob, carol] = net.chatters();
    net.say(alice, "/receipts on");
    net.say(bob, "/receipts on");
    net.say(alice, "from alice");
    net.say(bob, "from bob");
    net.out.sent.clear();

    net.flush(carol);
    assert!(
        net.lines(alice).is_empty(),
        "bob has not written alice's line"
    );
    assert!(
        net.lines(bob).is_empty(),
        "alice has not written bob's line"
    );
    net.hang_up(bob, LeaveReason::Hangup);
    assert_eq!(
        net.lines(alice),
        ["* guest-2 left #lobby", "* #1 delivered to 1 of 2"]
    );
    assert_eq!(net.line(carol), "* guest-2 left #lobby");
    net.flush(alice);
    assert!(net.nothing_sent(), "bob is gone, his receipt goes nowhere");
    assert_eq!(net.chat.stats().pending_receipts, 0);
}

#[test]
fn a_receipt_for_a_departed_sender_never_reaches_a_client_reusing_its_id() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/receipts on");
    net.say(alice, "/msg guest-2 direct");
    net.say(alice, "to the room");
    net.hang_up(alice, LeaveReason::Hangup);

    assert!(matches!(
        net.connect_as(alice, LOCALHOST),
        Admission::Chatting { .. }
    ));
    let newcomer = alice;
    net.say(newcomer, "/receipts on");
    net.out.sent.clear();

    net.flush(bob);
    assert!(net.lines(newcomer).is_empty());
    assert_eq!(net.chat.stats().pending_receipts, 0);
}

// Leaving

#[test]
fn an_idle_client_is_told_why_its_room_hears_it_and_it_is_closed() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "hello");
    net.out.sent.clear();

    net.chat.on_idle(&mut net.out, alice, 300);
    net.end_turn();
    assert_eq!(net.line(alice), "! disconnected: idle for 300 s");
    assert_eq!(net.out.closed, [alice]);
    assert_eq!(net.out.close_reasons, [Close::Idle]);
    assert_eq!(net.line(bob), "* guest-1 left #lobby (idle)");
    assert_eq!(net.chat.stats().chatting, 1);
}

#[test]
fn a_connect_during_shutdown_is_refused_as_shutting_down_not_full() {
    let mut net = Net::new();
    net.chat.on_shutdown(&mut net.out);
    let (late, admission) = net.connect_from(LOCALHOST);
    assert_eq!(admission, Admission::Refused(Refusal::ShuttingDown));
    assert_eq!(net.line(late), "! server is shutting down");
    assert_eq!(
        net.out.close_reasons,
        [Close::Refused(Refusal::ShuttingDown)]
    );
}

#[test]
fn quit_says_bye_closes_and_tells_the_room() {
    let mut net = Net::new();
    let [alice, bob, carol] = net.chatters();
    net.say(carol, "/join #elsewhere");
    net.out.sent.clear();

    net.say(alice, "/quit");
    assert_eq!(net.line(alice), "* bye");
    assert_eq!(net.out.closed, [alice]);
    assert_eq!(net.out.close_reasons, [Close::Quit]);
    assert_eq!(net.line(bob), "* guest-1 left #lobby");
    assert!(net.lines(carol).is_empty());

    net.hang_up(alice, LeaveReason::Hangup);
    assert!(
        net.nothing_sent(),
        "the later disconnect is not a second leave"
    );
    net.say(alice, "still here?");
    assert!(net.nothing_sent());
    assert_eq!(net.chat.stats().chatting, 2);
}

#[test]
fn quit_with_a_reason_tells_the_room_why() {
    let mut net = Net::new();
    let [alice, bob] = net.chatters();
    net.say(alice, "/quit gone fishing");
    assert_eq!(net.line(alice), "* bye");
    assert_eq!(net.line(bob), "* guest-1 left #lobby: gone fishing");
}

#[test]
fn a_disconnect_tells_the_room_why_and_frees_the_nick() {
    for (reason, notice) in [
        (LeaveReason::Hangup, "* alice left #lobby"),
        (LeaveReason::TooSlow, "* alice left #lobby (too slow)"),
        (LeaveReason::Idle, "* alice left #lobby (idle)"),
    ] {
        let mut net = Net::new();
        let [alice, bob] = net.chatters();
        net.say(alice, "/nick alice");
        net.out.sent.clear();

        net.hang_up(alice, reason);
        assert_eq!(net.line(bob), notice);
        assert!(net.nothing_sent());
        assert_eq!(net.chat.stats().chatting, 1);
        assert_eq!(net.chat.stats().nicknames, 1);

        net.say(bob, "/msg alice you there?");
        assert_eq!(net.line(bob), "! no such user: alice");
        net.say(bob, "/nick alice");
        assert_eq!(net.line(bob), "* you are now alice");

        net.hang_up(bob, reason);
        assert_eq!(net.chat.stats().chatting, 0);
    }
}

#[test]
fn the_last_one_out_of_a_room_removes_it() {
    let mut net = Net::new();
    let [alice] = net.chatters();
    net.say(alice, "/join #rust");
    assert_eq!(net.chat.stats().rooms, 2);
    net.hang_up(alice, LeaveReason::Idle);
    assert_eq!(net.chat.stats().rooms, 1);
}

// Large rooms

#[test]
fn rooms_past_the_announce_limit_get_no_join_leave_or_rename_notices() {
    let mut net = Net::with(ChatConfig {
        announce_limit: 3,
        ..config()
    });
    let [a, b, c] = [net.connect(), net.connect(), net.connect()];
    let lines = net.lines(a);
    assert_eq!(
        lines[1..],
        ["* guest-2 joined #lobby", "* guest-3 joined #lobby"]
    );
    net.out.sent.clear();

    let d = net.connect();
    assert!(net.line(d).starts_with("* welcome "));
    assert!(net.nothing_sent(), "four is past the limit of three");
    let e = net.connect();
    net.out.sent.clear();

    net.say(a, "/nick alice");
    assert_eq!(net.line(a), "* you are now alice");
    assert!(net.nothing_sent(), "no rename notice");

    net.say(a, "still talking");
    for id in [b, c, d, e] {
        assert_eq!(net.line(id), "alice: still talking");
    }

    net.say(e, "/join #rust");
    assert_eq!(net.line(e), "* you joined #rust (1 here)");
    assert!(net.nothing_sent(), "no leave notice from a room of five");

    net.hang_up(d, LeaveReason::Hangup);
    assert!(net.nothing_sent(), "no leave notice from a room of four");

    // Three members is not past the limit.
    net.hang_up(c, LeaveReason::Hangup);
    assert_eq!(net.line(a), "* guest-3 left #lobby");
    assert_eq!(net.line(b), "* guest-3 left #lobby");
}

#[test]
fn joining_a_room_past_the_announce_limit_is_quiet_but_the_joiner_is_told() {
    let mut net = Net::with(ChatConfig {
        announce_limit: 3,
        ..config()
    });
    let ids: [ClientId; 5] = net.chatters();
    for &id in &ids[..3] {
        net.say(id, "/join #big");
    }
    net.out.sent.clear();
    net.say(ids[3], "/join #big");
    assert_eq!(net.line(ids[3]), "* you joined #big (4 here)");
    assert_eq!(net.line(ids[4]), "* guest-4 left #lobby");
    assert!(net.nothing_sent(), "a room of four hears no join notice");
}

// Shutdown

#[test]
fn shutdown_tells_and_closes_everyone_and_refuses_newcomers() {
    let mut net = Net::with(ChatConfig {
        max_clients: 2,
        ..config()
    });
    let ids = [net.connect(), net.connect(), net.connect()];
    assert_eq!(net.chat.stats().waiting, 1);
    net.say(ids[0], "/join #rust");
    net.say(ids[1], "/join #rust");
    net.say(ids[0], "/receipts on");
    net.say(ids[0], "last words");
    net.out.sent.clear();

    net.chat.on_shutdown(&mut net.out);
    for id in ids {
        assert_eq!(net.line(id), "* server shutting down");
    }
    let mut closed = net.out.closed.clone();
    closed.sort();
    assert_eq!(closed, ids);
    assert_eq!(net.out.close_reasons, [Close::Shutdown; 3]);

    // The transport drains or drops what was queued before it closes.
    net.flush(ids[1]);
    for id in ids {
        net.hang_up(id, LeaveReason::Hangup);
    }
    assert!(
        net.nothing_sent(),
        "no leave notices or receipts after the shutdown notice"
    );
    assert_eq!(
        net.chat.stats(),
        ChatStats {
            chatting: 0,
            waiting: 0,
            nicknames: 0,
            rooms: 1,
            pending_receipts: 0,
            addresses: 0,
        }
    );

    net.out.closed.clear();
    let (late, admission) = net.connect_from(LOCALHOST);
    assert_eq!(admission, Admission::Refused(Refusal::ShuttingDown));
    assert_eq!(net.out.closed, [late]);
    assert!(net.lines(late).iter().all(|line| line.starts_with("! ")));
}

// Many clients

/// A tiny deterministic generator, so that the churn test is repeatable.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Nothing may be queued for a connection the transport has let go, a
/// `/rooms` listing must add up to everyone chatting, and every room's
/// members stay in the order `/who` shows them.
fn check_recipients(net: &mut Net, live: &[ClientId]) {
    let chat = &net.chat;
    for (name, count) in chat.rooms.listing() {
        let room = chat.rooms.get(chat.rooms.find(name).unwrap());
        assert_eq!(room.members.len(), count);
        let names: Vec<&str> = room
            .members
            .iter()
            .map(|&m| chat.nick(m).unwrap())
            .collect();
        assert!(
            names
                .windows(2)
                .all(|pair| by_name(pair[0], pair[1]).is_lt()),
            "{name} out of order: {names:?}"
        );
    }
    for (to, line, _) in std::mem::take(&mut net.out.sent) {
        assert!(live.contains(&to), "{line:?} sent to {to:?}, which is gone");
        if let Some(counts) = line.trim_end().strip_prefix("* rooms: ") {
            let total: usize = counts
                .split(", ")
                .map(|room| {
                    let (_, count) = room.rsplit_once(" (").unwrap();
                    count.trim_end_matches(')').parse::<usize>().unwrap()
                })
                .sum();
            assert_eq!(total, net.chat.stats().chatting);
        }
    }
}

#[test]
fn churn_leaves_nothing_behind() {
    let ips: Vec<IpAddr> = (1..=8)
        .map(|n| IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)))
        .collect();
    let mut net = Net::with(ChatConfig {
        max_clients: 40,
        max_waiting: 20,
        max_per_ip: 12,
        announce_limit: 10,
        ..config()
    });
    let mut rng = Lcg(7);
    let mut live: Vec<ClientId> = Vec::new();
    let mut free_ids: Vec<ClientId> = Vec::new();
    let mut connects = 0;

    while connects < 1000 || !live.is_empty() {
        let roll = rng.below(100);
        let winding_down = connects >= 1000;
        let mut leaving = Vec::new();
        // Arrivals slightly outpace departures, so the chat fills up, the
        // line forms and some connections are refused.
        if !winding_down && (live.is_empty() || roll < 16) {
            let id = free_ids.pop().unwrap_or_else(|| {
                net.next_id += 1;
                ClientId(net.next_id - 1)
            });
            live.push(id);
            net.connect_as(id, ips[rng.below(ips.len())]);
            connects += 1;
        } else {
            let id = live[rng.below(live.len())];
            let reason =
                [LeaveReason::Hangup, LeaveReason::TooSlow, LeaveReason::Idle][rng.below(3)];
            match roll {
                // Once every client has come, they drift away.
                60.. if winding_down => leaving.push((id, reason)),
                0..=44 => net.say(id, "hello"),
                45..=54 => net.say(id, &format!("/join #room-{}", rng.below(6))),
                55..=62 => net.say(id, &format!("/nick name-{}", rng.below(50))),
                63..=67 => net.say(id, "/receipts on"),
                68..=72 => {
                    let to = rng.below(connects);
                    net.say(id, &format!("/msg guest-{to} hi"));
                }
                73..=84 => net.flush(id),
                85..=88 => net.say(id, "/quit"),
                89..=91 => {
                    net.chat.on_http_request(&mut net.out, id);
                    net.end_turn();
                }
                92 => net.say(id, "/rooms"),
                _ => leaving.push((id, reason)),
            }
        }

        check_recipients(&mut net, &live);
        // The transport finishes off what the chat closed.
        leaving.extend(net.out.closed.drain(..).map(|id| (id, LeaveReason::Hangup)));
        for (id, reason) in leaving {
            net.hang_up(id, reason);
            live.retain(|&other| other != id);
            if !free_ids.contains(&id) {
                free_ids.push(id);
            }
        }
        check_recipients(&mut net, &live);

        let stats = net.chat.stats();
        assert_eq!(stats.nicknames, stats.chatting);
        assert!(stats.chatting <= 40 && stats.waiting <= 20, "{stats:?}");
        assert!(stats.waiting == 0 || stats.chatting == 40, "{stats:?}");
    }

    assert!(net.out.unsettled.is_empty());
    assert_eq!(
        net.chat.stats(),
        ChatStats {
            chatting: 0,
            waiting: 0,
            nicknames: 0,
            rooms: 1,
            pending_receipts: 0,
            addresses: 0,
        }
    );
}

// Any input at all

/// Lines that look like commands as often as like chat.
fn input_line() -> impl Strategy<Value = String> {
    let command = prop::sample::select(vec![
        "",
        "/",
        "//",
        "/nick ",
        "/join ",
        "/join #",
        "/msg ",
        "/msg guest-2 ",
        "/me ",
        "/receipts ",
        "/who",
        "/rooms",
        "/help",
        "/quit",
        "/NICK ",
        "/x",
    ]);
    (command, any::<String>()).prop_map(|(command, rest)| format!("{command}{rest}"))
}

proptest! {
    #[test]
    fn any_input_is_handled_and_never_echoed(lines in prop::collection::vec(input_line(), 1..20)) {
        let mut net = Net::new();
        let [alice, bob] = net.chatters();
        net.say(alice, "/receipts on");
        net.out.sent.clear();
        for line in &lines {
            let nick = net.chat.nick(alice).map(str::to_string);
            net.say(alice, line);
            net.flush(bob);
            let to_alice = net.lines(alice);
            for got in &to_alice {
                prop_assert!(
                    got.starts_with("* ") || got.starts_with("! "),
                    "{:?} sent {:?} back to its sender", line, got
                );
            }
            // Chat is the one thing the sender never sees; the room does.
            let room = |id| net.chat.chatter(id).map(|chatter| chatter.room);
            let together = room(alice).is_some() && room(alice) == room(bob);
            if let (Some(nick), false, true) = (nick, line.starts_with('/'), together) {
                prop_assert_eq!(net.lines(bob), [format!("{}: {}", nick, line)]);
            }
            net.out.sent.clear();
        }
        net.hang_up(alice, LeaveReason::Hangup);
        net.hang_up(bob, LeaveReason::Hangup);
        let stats = net.chat.stats();
        prop_assert_eq!(
            (stats.chatting, stats.nicknames, stats.rooms, stats.pending_receipts, stats.addresses),
            (0, 0, 1, 0, 0)
        );
    }
}

#[test]
fn renames_leaves_and_direct_messages_are_reported_for_the_transport_log() {
    let mut net = Net::new();
    let [a, b] = net.chatters::<2>();
    let old = net.nick(a);
    net.chat.take_events();
    net.say(a, "/nick ada");
    net.say(a, "/nick ada");
    net.say(b, "/msg ada hi");
    net.say(b, "/msg nobody hi");
    assert_eq!(net.chat.direct_messages(), 1);
    net.say(a, "/quit");
    let b_nick = net.nick(b);
    net.chat.on_shutdown(&mut net.out);
    assert_eq!(
        net.chat.take_events(),
        vec![
            ChatEvent::Renamed {
                id: a,
                old,
                new: "ada".into()
            },
            ChatEvent::Left {
                id: a,
                nick: "ada".into()
            },
            ChatEvent::Left {
                id: b,
                nick: b_nick
            },
        ]
    );
    assert!(net.chat.take_events().is_empty(), "drained");
}
