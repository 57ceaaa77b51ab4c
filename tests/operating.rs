//! What an operator sees: `/metrics`, the metrics port under hostile
//! input, systemd notification and socket activation, and the log lines
//! that follow a user. The real binary, over real sockets.

mod common;
mod daemon;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{connect_socket, Client, PATIENCE};
use daemon::Daemon;

/// Starts the daemon with a metrics port and returns it with that port's
/// address.
fn start_with_metrics(extra: &[&str]) -> (Daemon, SocketAddr) {
    let mut args = vec![
        "--rate",
        "0",
        "--max-per-ip",
        "0",
        "--metrics",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(&args);
    let line = daemon.wait_for_log(|line| line.contains("serving metrics on http://"));
    let at = line.find("http://").unwrap() + "http://".len();
    let addr = line[at..]
        .trim()
        .trim_end_matches("/metrics")
        .parse()
        .unwrap_or_else(|_| panic!("no address in {line:?}"));
    (daemon, addr)
}

/// Sends `request` and reads the whole response (the server closes after
/// one): the status code and the body.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request).expect("send the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("the whole response, then a close");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {response:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// Every sample of a scrape, keyed by name and labels as written
/// (`apollonion_clients{state="chatting"}`).
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    check_with_promtool(&body);
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line:?}"));
            (key.to_string(), value)
        })
        .collect()
}

/// Runs `promtool check metrics` on the exposition when promtool is
/// installed (the `prometheus` package).
fn check_with_promtool(exposition: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool is not installed; skipping its check of the exposition");
        return;
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(exposition.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sample(samples: &HashMap<String, f64>, key: &str) -> u64 {
    let value = samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key}; got {samples:#?}"));
    *value as u64
}

fn numbered(n: usize) -> String {
    format!("line {n:05} {}", "x".repeat(1000))
}

/// The count in a `* N lines skipped, you were too slow to keep up` notice.
fn skipped_in(line: &str) -> Option<u64> {
    line.strip_prefix("* ")?
        .strip_suffix(" lines skipped, you were too slow to keep up")?
        .parse()
        .ok()
}

/// What a client made of a flood of numbered lines.
struct Share {
    /// Skipped lines its notices reported.
    reported: u64,
    /// Skip notices it got.
    notices: u64,
}

/// Reads the flood from `sender` until every line is accounted for,
/// received or reported skipped, checking order.
fn read_flood(client: &mut Client, sender: &str, lines: usize) -> Share {
    let mut share = Share {
        reported: 0,
        notices: 0,
    };
    let mut last = 0;
    let mut received = 0u64;
    while received + share.reported < lines as u64 {
        let line = client.read_line().expect("still open");
        if let Some(count) = skipped_in(&line) {
            share.reported += count;
            share.notices += 1;
            continue;
        }
        let n: usize = line
            .strip_prefix(&format!("{sender}: line "))
            .and_then(|rest| rest.get(..5))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        assert!(n > last, "line {n} after {last}");
        last = n;
        received += 1;
    }
    share
}

#[test]
fn metrics_count_what_the_clients_did() {
    let (daemon, metrics) =
        start_with_metrics(&["--max-outbuf", "262144", "--write-timeout", "120"]);
    let (mut a, a_nick) = daemon.join();
    let (mut b, b_nick) = daemon.join();
    a.expect_line(&format!("* {b_nick} joined #lobby"));
    for n in 0..10 {
        a.send(&format!("from a {n}"));
    }
    for n in 0..10 {
        b.expect_line(&format!("{a_nick}: from a {n}"));
    }
    for n in 0..5 {
        b.send(&format!("from b {n}"));
    }
    for n in 0..5 {
        a.expect_line(&format!("{b_nick}: from b {n}"));
    }
    a.send(&format!("/msg {b_nick} psst"));
    b.expect_line(&format!("(dm) {a_nick}: psst"));
    a.expect_line(&format!("* delivered to {b_nick}"));

    let first = scrape(metrics);
    assert_eq!(sample(&first, "apollonion_connections_accepted_total"), 2);
    assert_eq!(sample(&first, r#"apollonion_clients{state="chatting"}"#), 2);
    assert_eq!(sample(&first, r#"apollonion_clients{state="waiting"}"#), 0);
    assert_eq!(sample(&first, "apollonion_rooms"), 1);
    assert_eq!(sample(&first, "apollonion_lines_received_total"), 16);
    // Two welcomes, one join notice, 15 lines, the DM and its receipt.
    assert_eq!(sample(&first, "apollonion_lines_delivered_total"), 20);
    assert_eq!(sample(&first, "apollonion_direct_messages_total"), 1);
    assert_eq!(sample(&first, "apollonion_lines_skipped_total"), 0);
    assert!(sample(&first, "apollonion_bytes_written_total") > 0);
    assert!(sample(&first, "apollonion_loop_turns_total") > 0);
    assert_eq!(
        sample(&first, "apollonion_loop_turns_total"),
        sample(&first, "apollonion_loop_turn_duration_seconds_count")
    );

    // A client that never reads, behind a tiny receive buffer: lines for
    // it are skipped once its queue is full.
    const LINES: usize = 8000;
    let mut lagging = Client::from_stream(connect_socket(daemon.addr, None, Some(4096)));
    let lagging_nick = lagging.expect_prefix("* welcome ")["* welcome ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    a.expect_line(&format!("* {lagging_nick} joined #lobby"));
    b.expect_line(&format!("* {lagging_nick} joined #lobby"));
    let flood: String = (1..=LINES).map(|n| numbered(n) + "\r\n").collect();
    let writer = std::thread::spawn(move || {
        a.send_raw(flood.as_bytes());
        a
    });
    // The reader keeps up as well as it can; should it fall behind too, it
    // is told, and the counts below allow for it.
    let b_share = read_flood(&mut b, &a_nick, LINES);
    let mut a = writer.join().unwrap();

    let second = scrape(metrics);
    let skipped = sample(&second, "apollonion_lines_skipped_total");
    assert!(
        skipped > b_share.reported,
        "the lagging client never fell behind"
    );
    assert_eq!(
        sample(&second, "apollonion_lines_received_total"),
        16 + LINES as u64
    );
    // The lagging client now reads, and is told exactly what it missed.
    let lagging_share = read_flood(&mut lagging, &a_nick, LINES);
    assert_eq!(
        lagging_share.reported + b_share.reported,
        skipped,
        "skips counted = skips reported to the clients"
    );
    // Both readers have now read every line written to them, notices
    // included: every copy of the flood was delivered or skipped, and the
    // counter counts each delivered line once. The 3 are the lagging
    // client's welcome and its join notices to a and b.
    let third = scrape(metrics);
    let notices = b_share.notices + lagging_share.notices;
    assert_eq!(
        sample(&third, "apollonion_lines_delivered_total") + skipped,
        20 + 3 + 2 * LINES as u64 + notices,
        "delivered + skipped = offered"
    );
    let warning = daemon.wait_for_log(|line| line.contains("lines skipped"));
    assert!(
        warning.contains("WARN") && warning.contains(&lagging_nick),
        "{warning}"
    );

    a.send("/quit");
    a.expect_line("* bye");
    a.expect_closed();
    daemon.wait_for_log(|line| line.contains("disconnected: quit"));
    b.hang_up();
    daemon.wait_for_log(|line| line.contains("disconnected: hung up"));
    let third = scrape(metrics);
    assert_eq!(
        sample(&third, r#"apollonion_disconnects_total{cause="quit"}"#),
        1
    );
    assert_eq!(
        sample(&third, r#"apollonion_disconnects_total{cause="hung_up"}"#),
        1
    );
    assert_eq!(
        sample(&third, r#"apollonion_disconnects_total{cause="too_slow"}"#),
        0
    );
    assert_eq!(sample(&third, r#"apollonion_clients{state="chatting"}"#), 1);
    assert_eq!(
        sample(
            &third,
            r#"apollonion_connections_refused_total{reason="server_full"}"#
        ),
        0
    );
    drop(lagging);
}

#[test]
fn hostile_input_on_the_metrics_port_never_disturbs_the_chat() {
    let (daemon, metrics) = start_with_metrics(&[]);
    let (mut a, a_nick) = daemon.join();
    let (mut b, b_nick) = daemon.join();
    a.expect_line(&format!("* {b_nick} joined #lobby"));

    // A silent peer, one that stops half-way, and a crowd past the cap.
    let silent = TcpStream::connect(metrics).unwrap();
    let mut trickler = TcpStream::connect(metrics).unwrap();
    trickler.write_all(b"GET /metr").unwrap();
    let crowd: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(metrics).ok())
        .collect();

    // Garbage and an oversized request, sent while the crowd holds the
    // slots: each gets a 400, or is closed unanswered when no slot is
    // free. Either way the chat below is unhurt.
    let garbage =
        std::thread::spawn(move || raw_exchange(metrics, b"\x16\x03\x01garbage\r\n\r\n".to_vec()));
    let oversized = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "y".repeat(64 * 1024)
    );
    let oversized = std::thread::spawn(move || raw_exchange(metrics, oversized.into_bytes()));

    for round in 0..20 {
        let started = Instant::now();
        a.send(&format!("ping {round}"));
        b.expect_line(&format!("{a_nick}: ping {round}"));
        b.send(&format!("pong {round}"));
        a.expect_line(&format!("{b_nick}: pong {round}"));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "round {round} took {:?}",
            started.elapsed()
        );
    }
    for response in [garbage.join().unwrap(), oversized.join().unwrap()] {
        assert!(
            response.is_empty() || response.starts_with("HTTP/1.1 400 "),
            "{response:?}"
        );
    }
    drop(crowd);
    // With the crowd gone each answer is exact. The server frees the
    // crowd's slots as it sees each close, a bounded number per turn; until
    // then a new connection may still find them full and be closed
    // unanswered (with its request unread, so by a reset), and is retried.
    let deadline = Instant::now() + PATIENCE;
    let answered = |request: &[u8]| loop {
        let response = raw_exchange(metrics, request.to_vec());
        if let Some(code) = response.strip_prefix("HTTP/1.1 ") {
            return code.get(..3).and_then(|code| code.parse::<u16>().ok());
        }
        assert!(
            Instant::now() < deadline,
            "the crowd's slots were never freed"
        );
    };
    assert_eq!(answered(b"\x16\x03\x01garbage\r\n\r\n"), Some(400));
    assert_eq!(answered(b"GET /secrets HTTP/1.1\r\n\r\n"), Some(404));
    let too_big = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "y".repeat(64 * 1024)
    );
    assert_eq!(answered(too_big.as_bytes()), Some(400));

    // The silent and the trickling peer are closed by the server.
    for (name, mut stream) in [("silent", silent), ("trickler", trickler)] {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        match stream.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
            Err(err) => panic!("{name}: not closed: {err}"),
        }
        assert!(started.elapsed() < PATIENCE, "{name}");
        assert!(
            rest.is_empty(),
            "{name} got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    let samples = scrape(metrics);
    assert_eq!(sample(&samples, "apollonion_connections_accepted_total"), 2);
    assert_eq!(
        sample(&samples, r#"apollonion_clients{state="chatting"}"#),
        2
    );
}

/// Sends `request` and returns whatever comes back before the close,
/// tolerating a close without an answer.
fn raw_exchange(addr: SocketAddr, request: Vec<u8>) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = stream.write_all(&request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn systemd_hears_ready_status_and_stopping_in_order() {
    let path = std::env::temp_dir().join(format!("apollonion-notify-it-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let receiver = UnixDatagram::bind(&path).unwrap();
    receiver.set_read_timeout(Some(PATIENCE)).unwrap();
    let receive = || {
        let mut buf = [0u8; 512];
        let len = receiver
            .recv(&mut buf)
            .expect("a notification within the timeout");
        String::from_utf8_lossy(&buf[..len]).into_owned()
    };

    let mut command = daemon::command(&["--listen", "127.0.0.1:0", "--log-level", "info"]);
    command.env("NOTIFY_SOCKET", &path);
    let mut daemon = Daemon::spawn(command);
    assert_eq!(receive(), "READY=1");
    assert_eq!(receive(), "STATUS=0 chatting, 0 waiting");
    let (_client, _) = daemon.join();
    loop {
        let state = receive();
        assert!(state.starts_with("STATUS="), "{state}");
        if state == "STATUS=1 chatting, 0 waiting" {
            break;
        }
    }
    daemon.signal(libc::SIGTERM);
    loop {
        let state = receive();
        if state == "STOPPING=1" {
            break;
        }
        assert!(state.starts_with("STATUS="), "{state} before STOPPING=1");
    }
    let status = daemon.exit_within(PATIENCE).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_listening_socket_passed_by_systemd_is_served() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let passed = listener.as_raw_fd();
    // `sh` sets LISTEN_PID to its own pid, which exec keeps for the daemon.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_apollonion"))
        .args([
            "--listen",
            "127.0.0.1:1",
            "--log-level",
            "info",
            "--rate",
            "0",
        ])
        .env("LISTEN_FDS", "1");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("APOLLONION_") {
            command.env_remove(name);
        }
    }
    // SAFETY: dup2 and fcntl are async-signal-safe; the listener goes on
    // fd 3 without close-on-exec, as systemd passes it.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(passed, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let daemon = Daemon::spawn(command);
    assert_eq!(daemon.addr, addr, "serves the passed socket, not --listen");
    drop(listener);
    let (mut a, a_nick) = daemon.join();
    let (mut b, b_nick) = daemon.join();
    a.expect_line(&format!("* {b_nick} joined #lobby"));
    a.send("hello through systemd's socket");
    b.expect_line(&format!("{a_nick}: hello through systemd's socket"));
}

#[test]
fn logs_follow_a_user_by_nickname() {
    let daemon = Daemon::start(&["--rate", "0"]);
    let (mut a, guest) = daemon.join();
    let (mut b, b_guest) = daemon.join();
    a.expect_line(&format!("* {b_guest} joined #lobby"));
    a.send("/nick ada");
    a.expect_line("* you are now ada");
    let rename = daemon.wait_for_log(|line| line.contains("is now ada"));
    assert!(
        rename.contains("INFO") && rename.contains(&format!("{guest} is now ada")),
        "{rename}"
    );
    a.send("/quit bye all");
    a.expect_line("* bye");
    a.expect_closed();
    let quit = daemon.wait_for_log(|line| line.contains("disconnected"));
    assert!(quit.contains("(ada) disconnected: quit"), "{quit}");
    b.expect_line(&format!("* {guest} is now known as ada"));
    b.expect_line("* ada left #lobby: bye all");
    b.hang_up();
    let hung_up = daemon.wait_for_log(|line| line.contains("disconnected"));
    assert!(
        hung_up.contains(&format!("({b_guest}) disconnected: hung up")),
        "{hung_up}"
    );
}
