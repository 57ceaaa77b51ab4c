//! Input cleaning and telnet negotiation (SPEC §2) over real sockets: what
//! reaches the others, and which bytes go back to nc and telnet clients.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use common::{Client, TestServer, PATIENCE};

const IAC: u8 = 0xff;
const WILL: u8 = 0xfb;
const DO: u8 = 0xfd;
const IP: u8 = 0xf4;
const BINARY: u8 = 0;
const TIMING_MARK: u8 = 6;

/// Everything the server sends until it closes the connection.
fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("read until close");
    got
}

// ---- end of input ----

#[test]
fn text_before_eof_is_a_line() {
    let server = TestServer::start();
    let mut bob = server.join_as("bob");
    let (mut piped, nick) = server.join();
    bob.expect_line(&format!("* {nick} joined #lobby"));

    // What `printf 'first\nno newline at end' | nc -N` does.
    piped.send_raw(b"first\nno newline at end");
    piped.stream().shutdown(Shutdown::Write).unwrap();

    bob.expect_line(&format!("{nick}: first"));
    bob.expect_line(&format!("{nick}: no newline at end"));
    bob.expect_line(&format!("* {nick} left #lobby"));
    assert_eq!(piped.expect_closed(), Vec::<String>::new());
}

#[test]
fn a_command_before_eof_is_obeyed() {
    let server = TestServer::start();
    let mut bob = server.join_as("bob");
    let (mut piped, nick) = server.join();
    bob.expect_line(&format!("* {nick} joined #lobby"));

    piped.send_raw(b"/quit  see you ");
    piped.stream().shutdown(Shutdown::Write).unwrap();

    bob.expect_line(&format!("* {nick} left #lobby: see you"));
    assert_eq!(piped.expect_closed(), vec!["* bye".to_string()]);
    bob.expect_nothing_pending();
}

// ---- characters that hide or reorder text ----

#[test]
fn bidi_controls_and_zero_width_characters_never_reach_the_others() {
    let server = TestServer::start();
    let mut bob = server.join_as("bob");
    let (mut alice, guest) = server.join();
    alice.send("/nick alice");
    alice.expect_line("* you are now alice");
    bob.expect_line(&format!("* {guest} joined #lobby"));
    bob.expect_line(&format!("* {guest} is now known as alice"));

    // A right-to-left override would show this as "see exe.png now".
    alice.send("see \u{202e}gnp.exe\u{202c} now");
    bob.expect_line("alice: see gnp.exe now");
    alice.send("\u{feff}a\u{200b}b\u{2060}c \u{2066}d\u{2069} \u{202a}e\u{202d}");
    bob.expect_line("alice: abc d e");
    alice.send("/me \u{202b}waves\u{202c}");
    bob.expect_line("* alice waves");
    // Nothing left but hidden characters: an empty line, ignored.
    alice.send("\u{200b}\u{2060}");
    // ZWJ and ZWNJ stay.
    alice.send("\u{1f469}\u{200d}\u{1f4bb} \u{645}\u{6cc}\u{200c}\u{62e}");
    bob.expect_line("alice: \u{1f469}\u{200d}\u{1f4bb} \u{645}\u{6cc}\u{200c}\u{62e}");

    alice.send("/quit \u{202e}olleh\u{2067}");
    bob.expect_line("* alice left #lobby: olleh");
    bob.expect_nothing_pending();
}

// ---- telnet negotiation ----

#[test]
fn a_bare_lf_client_never_receives_a_telnet_byte() {
    let server = TestServer::start();
    let mut other = server.join_as("other");
    let mut nc = TcpStream::connect(server.addr).unwrap();
    // Everything an nc user might type, UTF-8, empty lines and a bare CR
    // included; only the telnet ways of ending a line may bring an offer.
    nc.write_all(
        "/nick nora\nhello\n\n  \n/help\nr\u{e9}sum\u{e9} \u{672c}\rx\n/rooms\n/quit\n".as_bytes(),
    )
    .unwrap();
    let got = read_to_close(&mut nc);
    let text = String::from_utf8(got).expect("nc gets UTF-8 only");
    assert!(text.contains("* you are now nora\r\n"), "{text:?}");
    assert!(text.ends_with("* bye\r\n"), "{text:?}");
    assert!(!text.contains('\u{fffd}'));
    other.read_until("nora: hello");
    other.expect_line("nora: r\u{e9}sum\u{e9} \u{672c}x");
}

#[test]
fn a_crlf_client_is_asked_once_to_send_binary() {
    let server = TestServer::start();
    let mut tina = Client::connect(server.addr);
    tina.expect_prefix("* welcome ");
    // Nothing is offered before the client shows it speaks telnet.
    tina.send_raw(b"/nick tina\r\n");
    tina.expect_bytes(b"* you are now tina\r\n");
    tina.expect_bytes(&[IAC, DO, BINARY]);

    // Telnet's agreement needs no answer, and there is no second request;
    // in binary mode it ends lines with a bare LF.
    tina.send_raw(&[IAC, WILL, BINARY]);
    tina.send_raw(b"/rooms\r\n/rooms\n");
    tina.expect_bytes(b"* rooms: #lobby (1)\r\n* rooms: #lobby (1)\r\n");

    // Our own side is granted when asked for, once.
    tina.send_raw(&[IAC, DO, BINARY, IAC, DO, BINARY]);
    tina.send_raw(b"/rooms\n");
    tina.expect_bytes(&[IAC, WILL, BINARY]);
    tina.expect_bytes(b"* rooms: #lobby (1)\r\n");
}

#[test]
fn a_cr_nul_or_iac_client_is_asked_too() {
    let server = TestServer::start();
    let mut cr_nul = Client::connect(server.addr);
    cr_nul.expect_prefix("* welcome ");
    cr_nul.send_raw(b"/nick crnul\r\0");
    cr_nul.expect_bytes(b"* you are now crnul\r\n");
    cr_nul.expect_bytes(&[IAC, DO, BINARY]);

    let mut iac = Client::connect(server.addr);
    iac.expect_prefix("* welcome ");
    // An IAC NOP: no answer of its own, but telnet spoken.
    iac.send_raw(&[IAC, 0xf1]);
    iac.expect_bytes(&[IAC, DO, BINARY]);
}

#[test]
fn every_ctrl_c_gets_its_timing_mark_answered() {
    let server = TestServer::start();
    let mut bob = server.join_as("bob");
    let (mut tina, guest) = server.join();
    tina.send("/nick tina");
    tina.expect_bytes(b"* you are now tina\r\n");
    tina.expect_bytes(&[IAC, DO, BINARY]);
    bob.expect_line(&format!("* {guest} joined #lobby"));
    bob.expect_line(&format!("* {guest} is now known as tina"));

    // What telnet sends for Ctrl-C, before discarding output until the
    // timing mark is answered.
    let ctrl_c = [IAC, IP, IAC, DO, TIMING_MARK];
    for round in 1..=3 {
        tina.send_raw(&ctrl_c);
        tina.expect_bytes(&[IAC, WILL, TIMING_MARK]);
        bob.send(&format!("said after Ctrl-C number {round}"));
        tina.expect_bytes(format!("bob: said after Ctrl-C number {round}\r\n").as_bytes());
    }
}
