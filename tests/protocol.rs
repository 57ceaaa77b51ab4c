//! The wire protocol of SPEC section 2, checked over real sockets against a
//! server running in-process.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{connect_socket, Client, TestServer};

/// Joins one client per name, in order, and leaves every one of them with
/// nothing pending, so each test starts from a quiet room.
fn chatters<const N: usize>(server: &TestServer, names: [&str; N]) -> [Client; N] {
    let mut clients = names.map(|name| server.join_as(name));
    for client in &mut clients {
        client.drain();
    }
    clients
}

// ---- chat lines ----

#[test]
fn a_line_reaches_the_room_but_not_the_sender_nor_other_rooms() {
    let server = TestServer::start();
    let [mut alice, mut bob, mut carol] = chatters(&server, ["alice", "bob", "carol"]);
    carol.send("/join #elsewhere");
    carol.expect_line("* you joined #elsewhere (1 here)");
    alice.expect_line("* carol left #lobby");
    bob.expect_line("* carol left #lobby");

    alice.send("hello");
    bob.expect_line("alice: hello");
    // Bob has it, so the server has handled it: anything for the others
    // would already be queued ahead of their round trips.
    alice.expect_nothing_pending();
    carol.expect_nothing_pending();
    bob.expect_nothing_pending();
}

#[test]
fn welcome_names_a_fresh_guest_and_the_lobby_hears_the_join() {
    let server = TestServer::start();
    let mut first = server.connect();
    let welcome = first.expect_prefix("* welcome guest-");
    let first_nick = welcome["* welcome ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(
        first_nick["guest-".len()..]
            .bytes()
            .all(|b| b.is_ascii_digit()),
        "{welcome:?}"
    );

    let (mut second, second_nick) = server.join();
    assert!(second_nick.starts_with("guest-"));
    assert_ne!(first_nick, second_nick);
    first.expect_line(&format!("* {second_nick} joined #lobby"));
    second.send("/who");
    let mut nicks = [first_nick.as_str(), second_nick.as_str()];
    nicks.sort_unstable();
    second.expect_line(&format!("* in #lobby: {}", nicks.join(", ")));
}

#[test]
fn help_lists_every_command_as_notices() {
    let server = TestServer::start();
    let (mut alice, _) = server.join();
    alice.send("/help");
    let help = alice.drain();
    assert!(help.len() > 1, "{help:?}");
    for line in &help {
        assert!(line.starts_with("* "), "help line {line:?} is not a notice");
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
}

// ---- /nick ----

#[test]
fn nick_renames_and_tells_the_room() {
    let server = TestServer::start();
    let (mut alice, guest) = server.join();
    let [mut bob] = chatters(&server, ["bob"]);
    alice.drain();

    alice.send("/nick Alice_the-2nd");
    alice.expect_line("* you are now Alice_the-2nd");
    bob.expect_line(&format!("* {guest} is now known as Alice_the-2nd"));

    alice.send("shown as typed");
    bob.expect_line("Alice_the-2nd: shown as typed");
}

#[test]
fn nick_taken_ignoring_case_is_refused() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["Alice", "bob"]);
    bob.send("/nick aLiCe");
    bob.expect_line("! nickname aLiCe is taken");
    bob.send("still bob");
    alice.expect_line("bob: still bob");
    alice.expect_nothing_pending();
}

#[test]
fn invalid_nicknames_are_refused() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    let too_long = "x".repeat(25);
    for bad in ["two words", "café", "dot.ted", too_long.as_str()] {
        alice.send(&format!("/nick {bad}"));
        alice.expect_prefix("! invalid nickname: ");
    }
    let longest = "y".repeat(24);
    alice.send(&format!("/nick {longest}"));
    alice.expect_line(&format!("* you are now {longest}"));
    bob.expect_line(&format!("* alice is now known as {longest}"));
    bob.expect_nothing_pending();
}

// ---- rooms ----

#[test]
fn join_folds_the_room_name_and_tells_both_rooms() {
    let server = TestServer::start();
    let [mut alice, mut bob, mut carol] = chatters(&server, ["alice", "bob", "carol"]);

    bob.send("/join #Rust");
    bob.expect_line("* you joined #rust (1 here)");
    alice.expect_line("* bob left #lobby");
    carol.expect_line("* bob left #lobby");

    carol.send("/join #RUST");
    carol.expect_line("* you joined #rust (2 here)");
    bob.expect_line("* carol joined #rust");
    alice.expect_line("* carol left #lobby");

    alice.send("/rooms");
    alice.expect_line("* rooms: #lobby (1), #rust (2)");

    carol.send("rust only");
    bob.expect_line("carol: rust only");
    alice.expect_nothing_pending();
}

#[test]
fn an_emptied_room_disappears_but_the_lobby_stays() {
    let server = TestServer::start();
    let [mut alice] = chatters(&server, ["alice"]);
    alice.send("/join #a-room_1");
    alice.expect_line("* you joined #a-room_1 (1 here)");
    alice.send("/rooms");
    alice.expect_line("* rooms: #a-room_1 (1), #lobby (0)");
    alice.send("/join #lobby");
    alice.expect_line("* you joined #lobby (1 here)");
    alice.send("/rooms");
    alice.expect_line("* rooms: #lobby (1)");
}

#[test]
fn invalid_room_names_are_refused_and_the_client_stays() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    let too_long = format!("#{}", "r".repeat(33));
    for bad in ["rust", "#", "#two words", "#dot.ted", too_long.as_str()] {
        alice.send(&format!("/join {bad}"));
        alice.expect_prefix("! invalid room name");
    }
    alice.send("/rooms");
    alice.expect_line("* rooms: #lobby (2)");
    alice.send("still here");
    bob.expect_line("alice: still here");
}

#[test]
fn who_lists_the_room_sorted() {
    let server = TestServer::start();
    let [mut carol, _alice, _bob, mut dave] = chatters(&server, ["carol", "alice", "bob", "dave"]);
    dave.send("/join #other");
    dave.expect_line("* you joined #other (1 here)");
    carol.drain();
    carol.send("/who");
    carol.expect_line("* in #lobby: alice, bob, carol");
    dave.send("/who");
    dave.expect_line("* in #other: dave");
}

// ---- /msg and /me ----

#[test]
fn msg_reaches_only_its_target_and_is_confirmed() {
    let server = TestServer::start();
    let [mut alice, mut bob, mut carol] = chatters(&server, ["alice", "bob", "carol"]);
    carol.send("/join #elsewhere");
    carol.expect_line("* you joined #elsewhere (1 here)");
    alice.drain();
    bob.drain();

    carol.send("/msg alice psst,  across rooms");
    alice.expect_line("(dm) carol: psst,  across rooms");
    carol.expect_line("* delivered to alice");
    bob.expect_nothing_pending();
    carol.expect_nothing_pending();
}

#[test]
fn msg_to_an_unknown_user_is_an_error() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    alice.send("/msg nobody hello?");
    alice.expect_line("! no such user: nobody");
    bob.expect_nothing_pending();
}

#[test]
fn me_describes_an_action_to_the_others_only() {
    let server = TestServer::start();
    let [mut alice, mut bob, mut carol] = chatters(&server, ["alice", "bob", "carol"]);
    alice.send("/me waves at everyone");
    bob.expect_line("* alice waves at everyone");
    carol.expect_line("* alice waves at everyone");
    alice.expect_nothing_pending();
}

// ---- /receipts ----

#[test]
fn receipts_count_deliveries_and_number_them() {
    let server = TestServer::start();
    let [mut alice, mut bob, mut carol] = chatters(&server, ["alice", "bob", "carol"]);
    alice.send("/receipts on");
    alice.expect_prefix("* ");

    alice.send("first");
    bob.expect_line("alice: first");
    carol.expect_line("alice: first");
    alice.expect_line("* #1 delivered to 2 of 2");

    alice.send("/me counts too");
    bob.expect_line("* alice counts too");
    carol.expect_line("* alice counts too");
    alice.expect_line("* #2 delivered to 2 of 2");

    carol.send("/join #elsewhere");
    carol.expect_line("* you joined #elsewhere (1 here)");
    bob.expect_line("* carol left #lobby");
    alice.expect_line("* carol left #lobby");
    alice.send("third");
    bob.expect_line("alice: third");
    alice.expect_line("* #3 delivered to 1 of 1");

    alice.send("/receipts off");
    alice.expect_prefix("* ");
    alice.send("unreceipted");
    bob.expect_line("alice: unreceipted");
    alice.expect_nothing_pending();
}

#[test]
fn receipts_do_not_count_a_recipient_that_is_not_keeping_up() {
    // The stuck client's copy is either skipped (its queue is full) or
    // queued behind megabytes it never reads, until the write timeout
    // disconnects it; both count as not delivered. The cap is large so that
    // even a send buffer the kernel grows later can never drain the queue
    // down to that copy.
    let server = TestServer::start_with(|config| {
        config.max_outbuf = 8 << 20;
        config.write_timeout = Duration::from_secs(3);
    });
    let [mut alice] = chatters(&server, ["alice"]);
    // A client that never reads, with a small receive buffer so that the
    // kernel cannot soak up the flood below however it tunes itself.
    let mut stuck = Client::from_stream(connect_socket(server.addr, None, Some(4096)));
    stuck.expect_prefix("* welcome ");
    alice.drain();
    // 16 MB: more than the server's send buffer (at most 4 MB here) and the
    // 8 MB output cap hold.
    let flood: String = (0..16_000)
        .map(|n| format!("{n:05} {}\r\n", "x".repeat(1000)))
        .collect();
    alice.send_raw(flood.as_bytes());
    alice.drain();

    let [mut bob] = chatters(&server, ["bob"]);
    alice.drain();
    alice.send("/receipts on");
    alice.expect_prefix("* ");
    alice.send("are you there?");
    bob.expect_line("alice: are you there?");
    // If the stuck client was disconnected for it, its room heard first.
    let before = alice.read_until("* #1 delivered to 1 of 2");
    assert!(
        before
            .iter()
            .all(|line| line.ends_with("left #lobby (too slow)")),
        "{before:?}"
    );
    drop(stuck);
}

// ---- /quit, unknown commands, // ----

#[test]
fn quit_says_bye_closes_and_tells_the_room() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    bob.send("/quit");
    bob.expect_line("* bye");
    assert_eq!(bob.expect_closed(), Vec::<String>::new());
    alice.expect_line("* bob left #lobby");
    alice.send("/who");
    alice.expect_line("* in #lobby: alice");
}

#[test]
fn quit_with_a_reason_appends_it() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    bob.send("/quit gone fishing");
    bob.expect_line("* bye");
    assert_eq!(bob.expect_closed(), Vec::<String>::new());
    alice.expect_line("* bob left #lobby: gone fishing");
}

#[test]
fn an_unknown_command_points_to_help() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    alice.send("/dance now");
    alice.expect_line("! unknown command /dance, try /help");
    bob.expect_nothing_pending();
}

#[test]
fn a_double_slash_sends_a_line_starting_with_a_slash() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    alice.send("//nick is a command");
    bob.expect_line("alice: /nick is a command");
    alice.expect_nothing_pending();
}

// ---- line framing ----

#[test]
fn lf_crlf_and_cr_nul_all_end_a_line() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    alice.send_raw(b"lf\ncrlf\r\ncr nul\r\0");
    bob.expect_line("alice: lf");
    bob.expect_line("alice: crlf");
    bob.expect_line("alice: cr nul");
    bob.expect_nothing_pending();
}

#[test]
fn a_line_split_across_writes_arrives_whole() {
    const IAC: u8 = 0xff;
    const DO: u8 = 0xfd;
    const WONT: u8 = 0xfc;
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    // Each piece ends in a telnet request, whose answer proves the server
    // has read the piece before the next one is written; the second cut
    // falls inside the two-byte UTF-8 encoding of "é".
    let pieces: [&[u8]; 3] = [b"hel", b"lo, caf\xc3", b"\xa9 world"];
    for (option, piece) in (1u8..).zip(pieces) {
        alice.send_raw(piece);
        alice.send_raw(&[IAC, DO, option]);
        alice.expect_bytes(&[IAC, WONT, option]);
    }
    alice.send_raw(b"\r");
    alice.send_raw(b"\n");
    bob.expect_line("alice: hello, café world");
    bob.expect_nothing_pending();
}

#[test]
fn an_overlong_line_is_refused_and_the_connection_stays_usable() {
    let server = TestServer::start_with(|config| config.max_line = 32);
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    alice.send(&"x".repeat(33));
    alice.expect_line("! line too long (max 32 bytes)");
    alice.send(&"y".repeat(32));
    alice.send("short");
    bob.expect_line(&format!("alice: {}", "y".repeat(32)));
    bob.expect_line("alice: short");
    // An overlong line written in several pieces is still one line.
    alice.send_raw("z".repeat(20).as_bytes());
    alice.send_raw("z".repeat(20).as_bytes());
    alice.send_raw(b"z\r\n");
    alice.expect_line("! line too long (max 32 bytes)");
    alice.send("after");
    bob.expect_line("alice: after");
    alice.expect_nothing_pending();
    bob.expect_nothing_pending();
}

// ---- input cleaning ----

#[test]
fn terminal_escapes_are_removed() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    alice.send_raw(b"\x1b[2J\x1b[31mhi\r\n");
    bob.expect_line("alice: hi");
    alice.send_raw(b"\x1b]0;title\x07a\x07b\x1b[0mc\td\r\n");
    bob.expect_line("alice: abc\td");
    bob.expect_nothing_pending();
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    alice.send_raw(b"caf\xe9 ok\r\n");
    bob.expect_line("alice: caf\u{fffd} ok");
    // IAC IAC is a literal 0xFF byte, which is no UTF-8 either.
    alice.send_raw(b"a\xff\xffb\r\n");
    bob.expect_line("alice: a\u{fffd}b");
    bob.expect_nothing_pending();
}

#[test]
fn backspace_and_del_erase_the_character_before_them() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    alice.send_raw(b"helo\x08lo\r\n");
    bob.expect_line("alice: hello");
    alice.send_raw("caf\u{e9}\x7fe".as_bytes());
    alice.send_raw(b"\r\n");
    bob.expect_line("alice: cafe");
    bob.expect_nothing_pending();
}

#[test]
fn blank_lines_are_ignored_and_text_is_trimmed() {
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);
    alice.send_raw(b"\r\n   \r\n\t\r\n  spaced out \t\r\n");
    bob.expect_line("alice: spaced out");
    bob.expect_nothing_pending();
}

#[test]
fn an_http_request_is_answered_closed_and_never_shown() {
    let server = TestServer::start();
    let [mut alice] = chatters(&server, ["alice"]);
    let (mut browser, nick) = server.join();
    alice.expect_line(&format!("* {nick} joined #lobby"));

    browser.send_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
    browser.expect_line("! this is a chat server: connect with telnet or nc");
    assert_eq!(browser.expect_closed(), Vec::<String>::new());

    alice.expect_line(&format!("* {nick} left #lobby"));
    alice.expect_nothing_pending();
}

#[test]
fn telnet_requests_are_refused_once_per_option() {
    const IAC: u8 = 0xff;
    const WILL: u8 = 0xfb;
    const WONT: u8 = 0xfc;
    const DO: u8 = 0xfd;
    const DONT: u8 = 0xfe;
    let server = TestServer::start();
    let [mut alice, mut bob] = chatters(&server, ["alice", "bob"]);

    alice.send_raw(&[IAC, DO, 1, IAC, WILL, 3]);
    alice.expect_bytes(&[IAC, WONT, 1, IAC, DONT, 3]);

    // Asked again: no second answer, so the reply to /rooms comes next.
    alice.send_raw(&[IAC, DO, 1, IAC, WILL, 3]);
    alice.send("/rooms");
    alice.expect_bytes(b"* rooms: #lobby (2)\r\n");

    // Negotiation inside a line vanishes from the text.
    alice.send_raw(&[b'o', b'n', IAC, WILL, 24, b'e', b'\r', b'\n']);
    alice.expect_bytes(&[IAC, DONT, 24]);
    bob.expect_line("alice: one");
    bob.expect_nothing_pending();
    alice.expect_nothing_pending();
}

// ---- abrupt disconnects ----

#[test]
fn a_reset_does_not_disturb_the_others() {
    let server = TestServer::start();
    let [mut alice, mut bob, carol, dave] = chatters(&server, ["alice", "bob", "carol", "dave"]);

    carol.reset();
    alice.expect_line("* carol left #lobby");
    bob.expect_line("* carol left #lobby");

    dave.hang_up();
    alice.expect_line("* dave left #lobby");
    bob.expect_line("* dave left #lobby");

    alice.send("still here?");
    bob.expect_line("alice: still here?");
    bob.send("yes");
    alice.expect_line("bob: yes");
    alice.send("/who");
    alice.expect_line("* in #lobby: alice, bob");
}

#[test]
fn half_a_line_then_a_reset_is_never_shown() {
    let server = TestServer::start();
    let [mut alice, mut bob, mut carol] = chatters(&server, ["alice", "bob", "carol"]);
    carol.send_raw(b"this line never ends");
    carol.reset();
    alice.expect_line("* carol left #lobby");
    bob.expect_line("* carol left #lobby");
    alice.send("after");
    bob.expect_line("alice: after");
    bob.expect_nothing_pending();
    alice.expect_nothing_pending();
}

// ---- volume ----

#[test]
fn a_thousand_lines_reach_five_receivers_complete_and_in_order() {
    const LINES: usize = 1000;
    let server = TestServer::start();
    let mut receivers: Vec<Client> = (0..5).map(|_| server.join().0).collect();
    let [mut sender] = chatters(&server, ["sender"]);
    for receiver in &mut receivers {
        receiver.drain();
    }

    let mut batch = String::new();
    for n in 1..=LINES {
        batch.push_str(&format!("line {n:04}\r\n"));
    }
    sender.send_raw(batch.as_bytes());

    let expected: Vec<String> = (1..LINES).map(|n| format!("sender: line {n:04}")).collect();
    let last = format!("sender: line {LINES:04}");
    for receiver in &mut receivers {
        assert_eq!(receiver.read_until(&last), expected);
        receiver.expect_nothing_pending();
    }
    sender.expect_nothing_pending();
}

#[test]
fn fifty_clients_come_and_go_and_the_server_keeps_serving() {
    const CLIENTS: usize = 50;
    let server = TestServer::start();
    let [mut watcher] = chatters(&server, ["watcher"]);

    let mut guests = Vec::new();
    let mut nicks = BTreeSet::new();
    for _ in 0..CLIENTS {
        let (client, nick) = server.join();
        watcher.expect_line(&format!("* {nick} joined #lobby"));
        nicks.insert(nick);
        guests.push(client);
    }
    // Every way of leaving: /quit, a clean close and a reset.
    for (index, mut client) in guests.into_iter().enumerate() {
        match index % 3 {
            0 => client.send("/quit"),
            1 => client.hang_up(),
            _ => client.reset(),
        }
    }
    let mut left = BTreeSet::new();
    while left.len() < CLIENTS {
        let line = watcher.read_line().expect("leave notice");
        let nick = line
            .strip_prefix("* ")
            .and_then(|rest| rest.strip_suffix(" left #lobby"))
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        assert!(left.insert(nick.to_string()), "left twice: {line:?}");
    }
    assert_eq!(left, nicks);

    watcher.send("/rooms");
    watcher.expect_line("* rooms: #lobby (1)");
    let [mut newcomer] = chatters(&server, ["newcomer"]);
    watcher.drain();
    newcomer.send("/who");
    newcomer.expect_line("* in #lobby: newcomer, watcher");
    newcomer.send("anyone?");
    watcher.expect_line("newcomer: anyone?");
    server.stop().expect("orderly stop");
}
