//! The real binary under a real SIGTERM, and its exit codes.

mod common;
mod daemon;

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::PATIENCE;
use daemon::Daemon;

/// The daemon without a rate limit: at the default 10 lines/s a bulk
/// sender would take minutes.
fn start(extra: &[&str]) -> Daemon {
    let mut args = vec!["--rate", "0"];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

/// Runs the binary to completion, returning its status, stdout and stderr.
fn run_to_end(args: &[&str]) -> (ExitStatus, String, String) {
    let output = daemon::command(args)
        .stdin(Stdio::null())
        .output()
        .expect("run apollonion");
    (
        output.status,
        String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    )
}

/// A line of about 1 KB, numbered so that loss and reordering show.
fn numbered(n: usize) -> String {
    format!("line {n:05} {}", "x".repeat(1000))
}

#[test]
fn sigterm_delivers_accepted_lines_then_says_goodbye_and_exits_zero() {
    // 8 MB: more than loopback socket buffers hold (about 4 MB), so output
    // is still queued in the server when the signal arrives, and a cap big
    // enough that none of it is skipped.
    const LINES: usize = 8000;
    let mut daemon = start(&["--max-outbuf", "33554432", "--shutdown-grace", "30"]);
    let (mut reader, _) = daemon.join();
    let (mut sender, sender_nick) = daemon.join();

    let batch: String = (1..=LINES).map(|n| numbered(n) + "\r\n").collect();
    sender.send_raw(batch.as_bytes());
    // The server handles a client's lines in order, so once /rooms is
    // answered every numbered line has been queued for the reader.
    sender.send("/rooms");
    sender.expect_line("* rooms: #lobby (2)");

    daemon.signal(libc::SIGTERM);

    reader.expect_line(&format!("* {sender_nick} joined #lobby"));
    for n in 1..=LINES {
        reader.expect_line(&format!("{sender_nick}: {}", numbered(n)));
    }
    reader.expect_line("* server shutting down");
    assert_eq!(reader.expect_closed(), Vec::<String>::new());
    sender.expect_line("* server shutting down");
    assert_eq!(sender.expect_closed(), Vec::<String>::new());

    let refused = TcpStream::connect_timeout(&daemon.addr, PATIENCE)
        .expect_err("the listener is closed after shutdown");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");

    let status = daemon
        .exit_within(Duration::from_secs(5))
        .expect("exits within 5 s of the last client closing");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_second_signal_exits_at_once_while_output_is_still_pending() {
    let grace = Duration::from_secs(30);
    let mut daemon = start(&["--shutdown-grace", "30"]);
    // Never reads. 16 MB for it is far more than the socket buffers and the
    // 1 MB output cap hold, so the server has output it cannot deliver.
    let (_stuck, _) = daemon.join();
    let (mut sender, _) = daemon.join();

    let batch: String = (1..=16_000).map(|n| numbered(n) + "\r\n").collect();
    sender.send_raw(batch.as_bytes());
    sender.send("/rooms");
    sender.expect_line("* rooms: #lobby (2)");

    daemon.signal(libc::SIGTERM);
    // The sender's goodbye proves the first signal was handled on its own,
    // so the next one is a second signal, not part of the same wake-up.
    sender.expect_line("* server shutting down");
    assert_eq!(sender.expect_closed(), Vec::<String>::new());
    assert!(
        daemon.is_running(),
        "the server waits for the stuck client's output"
    );

    let second = Instant::now();
    daemon.signal(libc::SIGINT);
    let said = daemon.wait_for_log(|line| line.contains("received SIGINT during shutdown"));
    assert!(
        said.contains("bytes unsent on 1 connections"),
        "the exit says what it left behind: {said}"
    );
    let status = daemon
        .exit_within(Duration::from_secs(3))
        .expect("a second signal exits at once");
    assert!(second.elapsed() < grace / 10, "{:?}", second.elapsed());
    assert_eq!(
        status.code(),
        Some(130),
        "exited by itself, as interrupted: {status}"
    );
}

#[test]
fn a_bad_flag_value_is_one_line_on_stderr_and_exit_2() {
    let (status, stdout, stderr) = run_to_end(&["--max-clients", "lots"]);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(stderr.contains("--max-clients"), "{stderr:?}");
    assert!(stderr.contains("lots"), "{stderr:?}");
    assert_eq!(stdout, "");
}

#[test]
fn a_duration_too_large_for_the_clock_is_refused_with_exit_2() {
    for flag in ["--idle-timeout", "--write-timeout", "--shutdown-grace"] {
        let args = ["--listen", "127.0.0.1:0", flag, "18446744073709551615"];
        let (status, stdout, stderr) = daemon::run_within(&args, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{flag} 18446744073709551615 was accepted: still running"));
        assert_eq!(status.code(), Some(2), "{flag}: stderr {stderr:?}");
        assert_eq!(stderr.lines().count(), 1, "{flag}: stderr {stderr:?}");
        assert!(stderr.contains(flag), "{stderr:?}");
        assert_eq!(stdout, "");
    }
}

#[test]
fn version_prints_the_name_and_version_and_exits_0() {
    let (status, stdout, stderr) = run_to_end(&["--version"]);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(
        stdout,
        format!("apollonion {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn sighup_is_an_orderly_shutdown_named_in_the_log() {
    let mut daemon = start(&[]);
    let (mut client, _) = daemon.join();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log(|line| line.contains("received SIGHUP, shutting down"));
    client.expect_line("* server shutting down");
    let status = daemon
        .exit_within(PATIENCE)
        .expect("exits after an orderly shutdown");
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn an_address_in_use_exits_1_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, _, stderr) = run_to_end(&["--listen", &addr]);
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(&addr), "{stderr:?} does not name {addr}");
    drop(taken);
}

#[test]
fn help_lists_every_flag_with_its_default_and_exits_0() {
    let (status, help, stderr) = run_to_end(&["--help"]);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    let flags = [
        ("--listen", "127.0.0.1:8080"),
        ("--max-clients", "10000"),
        ("--max-waiting", "1000"),
        ("--max-per-ip", "64"),
        ("--max-line", "4096"),
        ("--max-outbuf", "1048576"),
        ("--write-timeout", "30"),
        ("--idle-timeout", "0"),
        ("--rate", "10"),
        ("--burst", "50"),
        ("--announce-limit", "100"),
        ("--shutdown-grace", "5"),
        ("--log-level", "info"),
    ];
    let lines: Vec<&str> = help.lines().collect();
    for (flag, default) in flags {
        let start = lines
            .iter()
            .position(|line| line.split_whitespace().next() == Some(flag))
            .unwrap_or_else(|| panic!("{flag} missing from {help}"));
        // A flag's entry runs up to the line that starts the next one.
        let end = lines[start + 1..]
            .iter()
            .position(|line| line.trim_start().starts_with("--"))
            .map_or(lines.len(), |offset| start + 1 + offset);
        let entry = lines[start..end].join("\n");
        assert!(
            entry.contains(default),
            "{flag}: default {default} missing from {entry:?}"
        );
    }
}
