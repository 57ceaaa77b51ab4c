//! Flow control over real sockets (issue 7, the reactor's part): a reader
//! that keeps up loses nothing however many talk at once, a reader that
//! drains slowly is told what it missed instead of being dropped, one that
//! reads nothing is still dropped, and the kernel's send buffers stay
//! capped.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use apollonion::Config;
use common::{connect_socket, Client, TestServer, PATIENCE};

/// These tests judge how fast a reader can be or how slowly it reads: they
/// run one at a time so that they do not slow each other down.
static MACHINE: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The count in a `* N lines skipped, you were too slow to keep up` notice.
fn skipped_in(line: &str) -> Option<u64> {
    line.strip_prefix("* ")?
        .strip_suffix(" lines skipped, you were too slow to keep up")?
        .parse()
        .ok()
}

/// A line of exactly `len` bytes that says who sent it and its number.
fn tagged_line(talker: usize, seq: usize, len: usize) -> String {
    let head = format!("t{talker:03} s{seq:05} ");
    format!("{head}{}", "x".repeat(len - head.len()))
}

/// The talker and sequence number in a chat line made by `tagged_line`.
fn tag_of(line: &str) -> Option<(usize, usize)> {
    let text = line.split_once(": ")?.1;
    let talker = text.get(1..4)?.parse().ok()?;
    let seq = text.get(6..11)?.parse().ok()?;
    Some((talker, seq))
}

/// Reads chat lines made by `tagged_line` until `expected` have arrived,
/// checking each talker's order. Any skip notice fails the test; join
/// notices are passed over.
fn read_every_line(reader: &mut Client, expected: usize) {
    let mut next: HashMap<usize, usize> = HashMap::new();
    let mut got = 0;
    while got < expected {
        let Some(line) = reader.read_line() else {
            panic!("closed after {got} of {expected} lines");
        };
        if let Some(count) = skipped_in(&line) {
            panic!("a fast reader lost {count} lines after receiving {got} of {expected}");
        }
        if line.starts_with("* ") && line.ends_with(" joined #lobby") {
            continue;
        }
        let (talker, seq) =
            tag_of(&line).unwrap_or_else(|| panic!("unexpected line {:.80?}", line));
        let want = next.entry(talker).or_insert(0);
        assert_eq!(seq, *want, "talker {talker}: line {seq} after {want}");
        *want += 1;
        got += 1;
    }
}

/// Issue 7, case 1, scaled down: with default flags, many talkers each send
/// 16 lines of 4,000 bytes at the same moment (within their burst). A
/// reader that reads as fast as it can gets every line, with no skip.
#[test]
fn a_fast_reader_gets_every_line_when_many_talk_at_once() {
    let _machine = exclusive();
    const TALKERS: usize = 30;
    const LINES: usize = 16;
    let defaults = Config::default();
    let server = TestServer::start_with(|config| {
        config.rate = defaults.rate;
        config.burst = defaults.burst;
        config.max_per_ip = defaults.max_per_ip;
    });
    let (mut reader, _) = server.join();
    let start = Arc::new(Barrier::new(TALKERS + 1));
    let talkers: Vec<_> = (0..TALKERS)
        .map(|talker| {
            let (mut client, _) = server.join();
            let start = Arc::clone(&start);
            let burst: String = (0..LINES)
                .map(|seq| tagged_line(talker, seq, 4000) + "\r\n")
                .collect();
            thread::spawn(move || {
                start.wait();
                client.send_raw(burst.as_bytes());
                // Kept open until the reader is done: a hang-up would be a
                // leave notice, and this is about lines.
                client
            })
        })
        .collect();
    start.wait();
    read_every_line(&mut reader, TALKERS * LINES);
    let talkers: Vec<Client> = talkers.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(reader.drain().is_empty(), "the reader had more pending");
    drop(talkers);
    server.stop().unwrap();
}

/// Issue 7, case 1's minimal form: a 16 KiB output cap, one talker sends
/// five lines of 4,000 bytes in one write; an idle reader gets all five.
#[test]
fn a_fast_reader_gets_a_burst_bigger_than_its_cap() {
    let _machine = exclusive();
    let defaults = Config::default();
    let server = TestServer::start_with(|config| {
        config.rate = defaults.rate;
        config.burst = defaults.burst;
        config.max_per_ip = defaults.max_per_ip;
        config.max_outbuf = 16384;
    });
    let (mut reader, _) = server.join();
    let (mut talker, talker_nick) = server.join();
    reader.expect_line(&format!("* {talker_nick} joined #lobby"));
    let burst: String = (0..5)
        .map(|seq| tagged_line(0, seq, 4000) + "\r\n")
        .collect();
    talker.send_raw(burst.as_bytes());
    read_every_line(&mut reader, 5);
    let pending = reader.drain();
    assert!(pending.is_empty(), "after the burst: {pending:.200?}");
    server.stop().unwrap();
}

/// Sends numbered 1,000-byte lines at about `per_second` until `stop`,
/// returning how many it sent.
fn talk_until(mut talker: Client, per_second: u32, stop: Arc<AtomicBool>) -> (Client, usize) {
    let started = Instant::now();
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        // Ten lines at a time, paced by the clock (pacing, not waiting for
        // the server: what matters is that it outruns the reader).
        let due = (started.elapsed().as_secs_f64() * f64::from(per_second)) as usize;
        if sent >= due {
            thread::sleep(Duration::from_millis(5));
            continue;
        }
        let batch: String = (sent..sent + 10)
            .map(|seq| tagged_line(0, seq, 1000) + "\r\n")
            .collect();
        talker.send_raw(batch.as_bytes());
        sent += 10;
    }
    (talker, sent)
}

/// What a reader has seen of one talker's numbered lines.
#[derive(Default, Debug)]
struct Tally {
    received: u64,
    skipped: u64,
    notices: u64,
    next: usize,
}

impl Tally {
    fn take(&mut self, line: &str) {
        if let Some(count) = skipped_in(line) {
            assert!(count > 0, "{line:?}");
            self.skipped += count;
            self.notices += 1;
        } else if let Some((_, seq)) = tag_of(line) {
            assert!(seq >= self.next, "line {seq} after {}", self.next);
            self.next = seq + 1;
            self.received += 1;
        } else {
            assert!(line.starts_with("* "), "unexpected line {line:.80?}");
        }
    }
}

/// Issue 7, case 2, scaled down: a talker produces far faster than a
/// reader reads; the reader keeps reading, a little at a time, for more
/// than twice the write timeout. It stays connected, is told exactly what
/// it missed, and gets everything else in order. A client in the same room
/// that reads nothing at all is still dropped.
#[test]
fn a_slow_reader_that_keeps_reading_is_told_what_it_missed_not_dropped() {
    let _machine = exclusive();
    let write_timeout = Duration::from_secs(2);
    let server = TestServer::start_with(|config| {
        config.write_timeout = write_timeout;
        config.max_outbuf = 16384;
    });
    let mut slow = Client::from_stream(connect_socket(server.addr, None, Some(4096)));
    slow.expect_prefix("* welcome ");
    let mut silent = Client::from_stream(connect_socket(server.addr, None, Some(4096)));
    let silent_nick = silent.expect_prefix("* welcome ")["* welcome ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let (talker, _) = server.join();

    let stop = Arc::new(AtomicBool::new(false));
    let talking = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || talk_until(talker, 200, stop))
    };
    // About 20 KB/s against the talker's 200 KB/s, for 2.5 write timeouts.
    let mut tally = Tally::default();
    let mut raw = slow.stream().try_clone().unwrap();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 1000];
    let slow_until = Instant::now() + write_timeout * 5 / 2;
    while Instant::now() < slow_until {
        match raw.read(&mut chunk) {
            Ok(0) => panic!("the slow reader was dropped: {tally:?}"),
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == ErrorKind::ConnectionReset => {
                panic!("the slow reader was dropped: {tally:?}")
            }
            Err(err) => panic!("the slow reader got nothing for {PATIENCE:?}: {err}"),
        }
        while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8(pending[..end].to_vec()).unwrap();
            assert!(
                !line.contains("left #lobby") || line.contains(&silent_nick),
                "{line}"
            );
            tally.take(&line);
            pending.drain(..end + 2);
        }
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let (_talker, sent) = talking.join().unwrap();

    // Now it reads at full speed: every line sent is either received or
    // counted in a notice, exactly.
    let text = String::from_utf8(pending).unwrap();
    let mut tail = String::new();
    for part in text.split_inclusive("\r\n") {
        match part.strip_suffix("\r\n") {
            Some(line) => tally.take(line),
            None => tail = part.to_string(),
        }
    }
    let mut first = true;
    while tally.received + tally.skipped < sent as u64 {
        let line = slow
            .read_line()
            .unwrap_or_else(|| panic!("the slow reader was dropped: {tally:?} of {sent}"));
        let line = if first && !tail.is_empty() {
            first = false;
            format!("{tail}{line}")
        } else {
            line
        };
        tally.take(&line);
    }
    assert_eq!(
        tally.received + tally.skipped,
        sent as u64,
        "{tally:?} of {sent}"
    );
    assert!(tally.notices > 0, "never told about a skip: {tally:?}");
    assert!(slow.drain().is_empty(), "more pending after {tally:?}");
    eprintln!("slow reader: {tally:?} of {sent} lines");

    // The client that read nothing was dropped: what the kernel held for
    // it, then the end of the stream.
    let mut raw = silent.stream().try_clone().unwrap();
    let mut got = Vec::new();
    match raw.read_to_end(&mut got) {
        Ok(_) => {}
        Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
        Err(err) => panic!("the client that reads nothing stayed connected: {err}"),
    }
    server.stop().unwrap();
}

/// The largest send queue (`tx_queue`, bytes the peer has not acknowledged)
/// of the established IPv4 sockets whose local port is `port`, from
/// `/proc/net/tcp`, and how many there are.
fn server_send_queues(port: u16) -> Vec<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let mut queues = Vec::new();
    for row in table.lines().skip(1) {
        let fields: Vec<&str> = row.split_whitespace().collect();
        let (Some(local), Some(state), Some(queues_field)) =
            (fields.get(1), fields.get(3), fields.get(4))
        else {
            continue;
        };
        let local_port = local
            .rsplit_once(':')
            .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
        // 01 is ESTABLISHED; the listener and closing sockets are not ours.
        if local_port != Some(port) || *state != "01" {
            continue;
        }
        let tx = queues_field
            .split_once(':')
            .and_then(|(tx, _)| usize::from_str_radix(tx, 16).ok())
            .expect("tx_queue:rx_queue");
        queues.push(tx);
    }
    queues
}

/// Issue 7, case 4, scaled down: clients that never read no longer make
/// the kernel hold megabytes each. Their server-side send queues stay near
/// the `--sndbuf` cap (which Linux doubles).
#[test]
fn clients_that_never_read_cost_the_kernel_only_the_capped_send_buffer() {
    let _machine = exclusive();
    const NON_READERS: usize = 24;
    const LINES: usize = 600;
    let sndbuf = Config::default().sndbuf;
    let server = TestServer::start();
    let port = server.addr.port();
    let idle: Vec<Client> = (0..NON_READERS).map(|_| server.join().0).collect();
    let (mut reader, _) = server.join();
    let (mut talker, talker_nick) = server.join();
    reader.expect_line(&format!("* {talker_nick} joined #lobby"));
    let flood: String = (0..LINES)
        .map(|seq| tagged_line(0, seq, 4000) + "\r\n")
        .collect();
    let sending = thread::spawn(move || {
        talker.send_raw(flood.as_bytes());
        talker
    });
    read_every_line(&mut reader, LINES);
    let _talker = sending.join().unwrap();

    // Every line has been handled and written as far as each socket takes.
    let queues = server_send_queues(port);
    let non_readers: Vec<usize> = queues.iter().copied().filter(|&q| q > 0).collect();
    let largest = queues.iter().copied().max().unwrap_or(0);
    let total: usize = queues.iter().sum();
    eprintln!(
        "kernel send queues of {} server sockets: largest {largest} B, total {total} B ({} B per client that reads nothing)",
        queues.len(),
        total / NON_READERS
    );
    assert!(
        non_readers.len() >= NON_READERS,
        "the clients that read nothing hold no output: {queues:?}"
    );
    // An skb may overshoot the limit once; megabytes may not.
    let bound = 2 * sndbuf + 64 * 1024;
    assert!(
        largest <= bound,
        "a server socket holds {largest} B in the kernel (bound {bound}): {queues:?}"
    );
    drop(idle);
    server.stop().unwrap();
}
