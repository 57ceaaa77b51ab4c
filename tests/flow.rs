//! Flow control under load, against the real binary: listings that cost the
//! whole server, and memory that must stay bounded by what the out-queues
//! count.

mod common;
mod daemon;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use common::{connect_socket, raise_open_file_limit, Client};
use daemon::Daemon;

/// Both tests load the machine; they must not overlap.
static MACHINE: Mutex<()> = Mutex::new(());

/// Reads until a line that starts with `prefix`.
fn read_until_prefix(client: &mut Client, prefix: &str) {
    loop {
        match client.read_line() {
            Some(line) if line.starts_with(prefix) => return,
            Some(_) => {}
            None => panic!("connection closed before {prefix:?}…"),
        }
    }
}

/// Clients that send `command` in batches of `BATCH`, as fast as the
/// server answers, until `stop` is set. Returns how many answers they read.
fn spam(
    addr: SocketAddr,
    command: &'static str,
    answer: &'static str,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<usize> {
    const BATCH: usize = 200;
    let (mut client, _) = Client::join(addr);
    thread::spawn(move || {
        let batch = format!("{command}\r\n").repeat(BATCH);
        let mut answers = 0;
        while !stop.load(Ordering::Relaxed) {
            client.send_raw(batch.as_bytes());
            let mut got = 0;
            while got < BATCH {
                let line = client.read_line().expect("an answer");
                if line.starts_with(answer) {
                    got += 1;
                }
            }
            answers += got;
        }
        answers
    })
}

#[test]
fn listing_rooms_and_members_does_not_hold_up_a_bystander() {
    let _machine = MACHINE.lock().unwrap_or_else(PoisonError::into_inner);
    raise_open_file_limit();
    // Rooms of one member each, and as many more in the lobby.
    const ROOMS: usize = 2500;
    const IN_LOBBY: usize = 2500;
    const SPAMMERS: usize = 4;
    const PATIENCE: Duration = Duration::from_secs(1);
    let daemon = Daemon::start(&["--rate", "0", "--max-per-ip", "0", "--idle-timeout", "3600"]);
    let mut crowd = Vec::with_capacity(ROOMS + IN_LOBBY);
    for room in 0..ROOMS {
        let mut client = Client::connect(daemon.addr);
        client.send(&format!("/join #room-{room}"));
        crowd.push(client);
    }
    for client in &mut crowd {
        read_until_prefix(client, "* you joined #room-");
    }
    for _ in 0..IN_LOBBY {
        let (client, _) = Client::join(daemon.addr);
        crowd.push(client);
    }
    let (mut bystander, _) = Client::join(daemon.addr);
    let (mut listener, _) = Client::join(daemon.addr);
    bystander.send("/join #quiet");
    read_until_prefix(&mut bystander, "* you joined #quiet");
    listener.send("/join #quiet");
    read_until_prefix(&mut listener, "* you joined #quiet");

    let stop = Arc::new(AtomicBool::new(false));
    let mut spammers = Vec::new();
    for _ in 0..SPAMMERS {
        spammers.push(spam(daemon.addr, "/rooms", "* rooms: ", stop.clone()));
        spammers.push(spam(daemon.addr, "/who", "* in #lobby: ", stop.clone()));
    }
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    let mut said = 0;
    while started.elapsed() < Duration::from_secs(3) {
        said += 1;
        let sent = Instant::now();
        bystander.send(&format!("line {said}"));
        let nick_line = format!(": line {said}");
        loop {
            let line = listener.read_line().expect("the bystander's line");
            if line.ends_with(&nick_line) {
                break;
            }
        }
        slowest = slowest.max(sent.elapsed());
        if slowest > PATIENCE {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let answers: usize = spammers
        .into_iter()
        .map(|spammer| spammer.join().expect("spammer"))
        .sum();
    eprintln!(
        "listings: {answers} answers in {:?}; the bystander's slowest of {said} lines took {slowest:?}",
        started.elapsed()
    );
    assert!(answers > 0, "the spammers were answered");
    assert!(
        slowest < PATIENCE,
        "a bystander's line took {slowest:?} to reach its room"
    );
}

/// About `size` bytes of lines of `line_len` bytes, CRLF included.
fn lines(size: usize, line_len: usize, tag: char) -> Vec<u8> {
    let line = format!("{}\r\n", tag.to_string().repeat(line_len - 2));
    line.repeat(size / line_len).into_bytes()
}

#[test]
fn slices_kept_by_a_slow_reader_do_not_pin_whole_turns() {
    let _machine = MACHINE.lock().unwrap_or_else(PoisonError::into_inner);
    const FLOODERS: usize = 4;
    const RUN: Duration = Duration::from_secs(10);
    // Five clients with a 1 MiB cap each, and a piece of a turn pinning at
    // most four times what it counts: well under this. Before the short
    // lines were copied, each kept its whole turn alive (58 MiB after 10 s
    // here, and growing).
    const BOUND_KIB: u64 = 16 * 1024;
    let daemon = Daemon::start(&[
        "--rate",
        "0",
        "--max-per-ip",
        "0",
        "--max-outbuf",
        "1048576",
        "--idle-timeout",
        "3600",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    // A reader with a tiny receive buffer that takes about 150 KB/s: it
    // always has a nearly full queue, so the short lines are what fits.
    let mut reader = connect_socket(daemon.addr, None, Some(4096));
    reader
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let reading = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut buf = [0; 4096];
            let mut total = 0;
            while !stop.load(Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                    Err(err) if err.kind() == ErrorKind::TimedOut => {}
                    Err(err) => panic!("slow reader: {err}"),
                }
                thread::sleep(Duration::from_millis(25));
            }
            total
        })
    };
    let mut flooders = Vec::new();
    for flooder in 0..FLOODERS {
        let (client, _) = Client::join(daemon.addr);
        let stream: TcpStream = client.stream().try_clone().expect("clone");
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .expect("write timeout");
        // The flooders read everything they are sent, fast, so only the slow
        // reader's queue is ever full.
        let mut drain = stream.try_clone().expect("clone");
        drain
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let stop_draining = stop.clone();
        thread::spawn(move || {
            let mut buf = vec![0; 1 << 16];
            while !stop_draining.load(Ordering::Relaxed) {
                match drain.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(err)
                        if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        });
        let stop = stop.clone();
        let tag = char::from(b'a' + flooder as u8);
        flooders.push(thread::spawn(move || {
            let mut stream = stream;
            let mut burst = lines(256 * 1024, 4000, tag);
            burst.extend_from_slice(format!("short {tag}\r\n").as_bytes());
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(&burst).is_err() {
                    break;
                }
            }
        }));
    }
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < RUN {
        thread::sleep(Duration::from_millis(250));
        peak = peak.max(daemon.rss_kib());
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().expect("flooder");
    }
    let read = reading.join().expect("slow reader");
    eprintln!("memory: peak VmRSS {peak} KiB over {RUN:?}; the slow reader took {read} bytes");
    assert!(read > 0, "the slow reader was sent something");
    assert!(
        peak < BOUND_KIB,
        "VmRSS reached {peak} KiB with a 1 MiB output cap and 5 clients"
    );
}
