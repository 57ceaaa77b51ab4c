//! Cluster faults (SPEC §4 "Faults"): servers as child processes (killed,
//! stopped, shut down), one private `redis-server` (stopped and restarted
//! on the same port). Every wait is on a line a server sends, never a
//! sleep; every test stops by itself.

mod cluster_support;
mod common;
mod daemon;
mod redis_support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster_support::{answer, claim, enter, gather};
use common::Client;
use daemon::Daemon;
use redis_support::RedisServer;

/// The node timeout the servers run with: short, to keep the tests fast.
const NODE_TIMEOUT_SECS: u64 = 2;
/// SPEC §4: the leaves of a lost server come within the node timeout + 2 s;
/// one more second for a busy test machine.
const LOSS_DEADLINE: Duration = Duration::from_secs(NODE_TIMEOUT_SECS + 2 + 1);
/// Memory a surviving server may use after the faults.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

fn server(redis: &RedisServer) -> Daemon {
    let url = redis.url(0);
    let timeout = NODE_TIMEOUT_SECS.to_string();
    Daemon::start(&[
        "--redis",
        &url,
        "--cluster-name",
        "faults",
        "--node-timeout",
        &timeout,
    ])
}

/// A server that lets a client flood (no rate limit) and takes long to
/// count a stopped server as lost, so that a pause of a few seconds is a
/// slow subscriber, not a lost server; `extra` adds flags.
fn patient_server(redis: &RedisServer, extra: &[&str]) -> Daemon {
    let url = redis.url(0);
    let mut args = vec![
        "--redis",
        &url,
        "--cluster-name",
        "faults",
        "--node-timeout",
        "30",
        "--rate",
        "0",
    ];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

/// A client of `server` named `nick` (see `claim`).
fn member(server: &Daemon, nick: &str) -> Client {
    let (mut client, _) = server.join();
    claim(&mut client, nick);
    client
}

/// Asks `/who` until the listing is `expected` (the servers re-register
/// after a fault; the answer converges), within the client's patience.
fn who_until(client: &mut Client, expected: &str) -> Duration {
    let start = Instant::now();
    loop {
        client.send("/who");
        let line = answer(client);
        if line == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < common::PATIENCE,
            "/who still says {line:?}, not {expected:?}"
        );
        // Each /who is a round trip to Redis: this loop is paced by it.
    }
}

/// `speaker` says something and `listeners` hear it: the speaker's server
/// has then published its count of the room after hearing theirs (a count
/// goes out before the lines that follow it), so every server knows the
/// room spans the others.
fn spoken(speaker: &mut Client, nick: &str, listeners: &mut [&mut Client]) {
    speaker.send("sync");
    for listener in listeners.iter_mut() {
        listener.read_until(&format!("{nick}: sync"));
    }
}

fn assert_bounded(server: &Daemon) {
    let rss = server.rss_kib();
    assert!(rss < RSS_LIMIT_KIB, "RSS {rss} KiB");
}

#[test]
fn a_killed_server_s_users_leave_the_rooms_elsewhere_and_free_their_names() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = server(&redis);
    let b = server(&redis);
    let c = server(&redis);
    let mut ada = member(&a, "ada");
    let mut bob = member(&b, "bob");
    let mut cat = member(&c, "cat");
    gather(
        "#r",
        &mut [(&mut ada, "ada"), (&mut bob, "bob"), (&mut cat, "cat")],
    );

    a.signal(libc::SIGKILL);
    let killed = Instant::now();
    for far in [&mut bob, &mut cat] {
        far.read_until("* ada left #r (lost server)");
    }
    let took = killed.elapsed();
    eprintln!("leaves announced {took:?} after the kill");
    assert!(took < LOSS_DEADLINE, "{took:?}");

    // The name is free again, and the room counts only who is left.
    let mut ada2 = member(&c, "ada");
    enter(&mut ada2, "ada", "#r", &mut [&mut bob, &mut cat]);
    who_until(&mut bob, "* in #r: ada, bob, cat");
    assert_bounded(&b);
    assert_bounded(&c);
}

#[test]
fn an_orderly_shutdown_announces_its_users_leaves_and_frees_their_names_at_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut a = server(&redis);
    let b = server(&redis);
    let mut ada = member(&a, "ada");
    let mut bob = member(&b, "bob");
    gather("#r", &mut [(&mut ada, "ada"), (&mut bob, "bob")]);

    a.signal(libc::SIGTERM);
    ada.read_until("* server shutting down");
    bob.read_until("* ada left #r (server shutting down)");
    // No retry: the name was released before the leave was published.
    let (mut other, _) = b.join();
    other.send("/nick ada");
    assert_eq!(answer(&mut other), "* you are now ada");
    assert!(a.exit_within(Duration::from_secs(10)).is_some());
    assert_bounded(&b);
}

#[test]
fn redis_going_away_keeps_local_chat_and_tells_the_rooms_then_all_comes_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let a = server(&redis);
    let b = server(&redis);
    let mut ada = member(&a, "ada");
    let mut amy = member(&a, "amy");
    let mut bob = member(&b, "bob");
    gather(
        "#r",
        &mut [(&mut ada, "ada"), (&mut amy, "amy"), (&mut bob, "bob")],
    );
    spoken(&mut ada, "ada", &mut [&mut amy, &mut bob]);

    redis.stop();
    let lost = "* lost contact with the other servers: only people on this server hear you";
    for client in [&mut ada, &mut amy, &mut bob] {
        client.read_until(lost);
    }
    ada.send("still here?");
    assert_eq!(answer(&mut amy), "ada: still here?");

    redis.restart();
    let back = Instant::now();
    for client in [&mut ada, &mut amy, &mut bob] {
        client.read_until("* back in contact with the other servers");
    }
    let converged = who_until(&mut bob, "* in #r: ada, amy, bob");
    eprintln!(
        "/who right {:?} after Redis returned",
        back.elapsed().max(converged)
    );
    ada.send("hello again");
    assert_eq!(answer(&mut bob), "ada: hello again");
    // B counts A's members again.
    let (mut newcomer, _) = b.join();
    newcomer.send("/join #r");
    assert_eq!(answer(&mut newcomer), "* you joined #r (4 here)");
    let cpu = a.cpu_time();
    assert!(cpu < Duration::from_secs(5), "CPU {cpu:?}");
    assert_bounded(&a);
    assert_bounded(&b);
}

#[test]
fn a_server_cut_off_past_the_node_timeout_rejoins_and_its_taken_name_is_renamed() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = server(&redis);
    let b = server(&redis);
    let mut ada = member(&a, "ada");
    let mut amy = member(&a, "amy");
    let mut bob = member(&b, "bob");
    gather(
        "#r",
        &mut [(&mut ada, "ada"), (&mut amy, "amy"), (&mut bob, "bob")],
    );

    a.signal(libc::SIGSTOP);
    bob.read_until("* ada left #r (lost server)");
    let mut taker = member(&b, "ada");
    a.signal(libc::SIGCONT);
    let prefix = "* ada was taken while the servers were apart; you are now ";
    let notice = loop {
        let line = ada.read_line().expect("the rename notice");
        if line.starts_with(prefix) {
            break line;
        }
    };
    let guest = notice.rsplit(' ').next().expect("a name").to_string();
    assert!(guest.starts_with("guest-"), "{notice}");
    bob.read_until(&format!("* ada is now known as {guest}"));
    let mut names = [guest.clone(), "amy".to_string(), "bob".to_string()];
    names.sort();
    who_until(&mut bob, &format!("* in #r: {}", names.join(", ")));
    taker.send("/join #r");
    taker.read_until("* you joined #r (4 here)");
    assert_bounded(&b);
}

#[test]
fn a_receipt_waiting_on_a_server_that_never_reports_is_settled_after_5_s() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = server(&redis);
    let b = server(&redis);
    let c = server(&redis);
    let mut ada = member(&a, "ada");
    let mut bob = member(&b, "bob");
    let mut cat = member(&c, "cat");
    gather(
        "#r",
        &mut [(&mut ada, "ada"), (&mut bob, "bob"), (&mut cat, "cat")],
    );
    ada.send("/receipts on");
    assert_eq!(answer(&mut ada), "* receipts on");

    // Stopped, C still holds its subscription, so Redis counts it among
    // those who got the line, and its report never comes.
    c.signal(libc::SIGSTOP);
    let sent = Instant::now();
    ada.send("anyone?");
    assert_eq!(answer(&mut bob), "ada: anyone?");
    assert_eq!(answer(&mut ada), "* #1 delivered to 1 of 2");
    let took = sent.elapsed();
    assert!(took >= Duration::from_secs(4), "settled early: {took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    c.signal(libc::SIGCONT);
    assert_bounded(&a);
}

#[test]
fn a_direct_message_whose_target_s_server_never_reports_is_settled_after_5_s() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Not counted lost while stopped: what settles the message is its
    // own deadline, not a reaping.
    let a = patient_server(&redis, &[]);
    let b = patient_server(&redis, &[]);
    let mut ada = member(&a, "ada");
    let mut bob = member(&b, "bob");
    ada.send("/msg bob hello");
    assert_eq!(answer(&mut bob), "(dm) ada: hello");
    assert_eq!(answer(&mut ada), "* delivered to bob");

    // Stopped, B still holds its subscription: the message reaches Redis
    // and B's socket, and B's report never comes.
    b.signal(libc::SIGSTOP);
    let sent = Instant::now();
    ada.send("/msg bob are you there?");
    assert_eq!(
        answer(&mut ada),
        "! bob left before your message was delivered"
    );
    let took = sent.elapsed();
    eprintln!("settled {took:?} after the message");
    assert!(took >= Duration::from_secs(5), "settled early: {took:?}");
    assert!(took <= Duration::from_secs(10), "{took:?}");
    b.signal(libc::SIGCONT);
    // The late report changes nothing for ada: it comes before the next
    // message's, and no second outcome follows that one.
    bob.read_until("(dm) ada: are you there?");
    ada.send("/msg bob still there?");
    assert_eq!(answer(&mut ada), "* delivered to bob");
    ada.send("/rooms");
    let rooms = answer(&mut ada);
    assert!(rooms.starts_with("* rooms: "), "{rooms}");
    assert_bounded(&a);
    assert_bounded(&b);
}

/// What bob heard of ada's numbered lines: the numbered lines, and the
/// lines the loss notices counted.
struct Heard {
    received: u64,
    lost: u64,
}

/// Reads `client` until ada's line marked `end`, counting ada's numbered
/// lines (which must come in order) and the losses reported; every number
/// heard goes to `heard` as it comes.
fn count_numbered_lines(mut client: common::Client, heard: mpsc::Sender<u64>) -> Heard {
    let mut counts = Heard {
        received: 0,
        lost: 0,
    };
    let mut last = None;
    loop {
        let line = client.read_line().expect("bob stays connected");
        if let Some(rest) = line.strip_prefix("ada: ") {
            let mut words = rest.split(' ');
            let number: u64 = words
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unnumbered line {line:?}"));
            assert!(last.is_none_or(|last| number > last), "out of order");
            last = Some(number);
            counts.received += 1;
            let _ = heard.send(number);
            if words.next() == Some("end") {
                return counts;
            }
        } else if let Some(count) = line
            .strip_prefix("* ")
            .and_then(|rest| rest.strip_suffix(" lines from other servers were lost"))
        {
            counts.lost += count.parse::<u64>().expect("a count");
        } else {
            assert!(!line.contains("lines skipped"), "{line}");
        }
    }
}

#[test]
fn redis_dropping_a_slow_subscriber_is_reported_as_the_exact_number_of_lines_lost() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Redis drops a subscriber as soon as 256 KiB wait for it (the kernel's
    // socket buffers hold some MiB before that).
    let limit = "pubsub 256kb 128kb 1";
    assert_eq!(
        redis.command(&["CONFIG", "SET", "client-output-buffer-limit", limit]),
        "+OK"
    );
    let a = patient_server(&redis, &[]);
    // bob's own output queue is no limit here: what is measured is the
    // cluster's loss, not a slow client's skips.
    let b = patient_server(&redis, &["--max-outbuf", "268435456"]);
    let mut ada = member(&a, "ada");
    let mut bob = member(&b, "bob");
    gather("#r", &mut [(&mut ada, "ada"), (&mut bob, "bob")]);
    spoken(&mut ada, "ada", &mut [&mut bob]);
    let (heard_tx, heard) = mpsc::channel();
    let reader = std::thread::spawn(move || count_numbered_lines(bob, heard_tx));

    // B stops reading its subscriber socket; ada floods the room until
    // Redis logs that it dropped a client for its output buffer.
    b.signal(libc::SIGSTOP);
    let pad = "x".repeat(1000);
    let mut sent: u64 = 0;
    const LINES_PER_ROUND: u64 = 2_000;
    const MAX_ROUNDS: u64 = 16;
    let dropped = |redis: &RedisServer| redis.log().contains("overcoming of output buffer limits");
    for _ in 0..MAX_ROUNDS {
        for _ in 0..LINES_PER_ROUND {
            ada.send(&format!("{sent} {pad}"));
            sent += 1;
        }
        // Answered through A's command link, after the PUBLISHes before it.
        ada.send("/rooms");
        let rooms = answer(&mut ada);
        assert!(rooms.starts_with("* rooms: "), "{rooms}");
        if dropped(&redis) {
            break;
        }
    }
    assert!(
        dropped(&redis),
        "Redis kept the stopped subscriber after {sent} lines of 1 KB"
    );
    eprintln!("Redis dropped the stopped subscriber after {sent} lines");
    b.signal(libc::SIGCONT);
    b.wait_for_log(|line| line.contains("lost the Redis link"));
    b.wait_for_log(|line| line.contains("joined the cluster"));

    // Lines go on until bob hears one again: B is subscribed again, and
    // the gap has been reported.
    let first_probe = sent;
    let start = Instant::now();
    'probing: loop {
        ada.send(&format!("{sent} probe"));
        sent += 1;
        let wait_until = Instant::now() + Duration::from_millis(200);
        while let Ok(number) =
            heard.recv_timeout(wait_until.saturating_duration_since(Instant::now()))
        {
            if number >= first_probe {
                break 'probing;
            }
        }
        assert!(start.elapsed() < common::PATIENCE, "bob hears nothing");
    }
    ada.send(&format!("{sent} end"));
    sent += 1;
    let counts = reader.join().expect("bob's reader");
    eprintln!(
        "{sent} lines sent: {} received, {} reported lost",
        counts.received, counts.lost
    );
    assert!(counts.lost > 0, "nothing lost");
    assert_eq!(counts.received + counts.lost, sent);
    assert_bounded(&a);
    assert_bounded(&b);
}
