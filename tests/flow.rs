//! Flow control under load, against the real binary: listings that cost the
//! whole server, and memory that must stay bounded by what the out-queues
//! count.

mod common;
mod daemon;

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
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

/// Issue 7's case 3 at its root: a client that floods the room with long
/// lines and never reads gets everyone else's short lines queued, and each
/// one, as a slice, would keep alive the whole turn of the room it came
/// from, which is mostly the flooder's own long lines. Its queue counts only
/// the short lines, so its cap never stops this; only copying them does
/// (`Block::share`). The issue's own recipe (short lines mixed into floods,
/// one slow reader) no longer shows it: a full queue takes nothing until it
/// is half empty, so few short lines get in, and that test passed with the
/// copy taken out.
#[test]
fn short_lines_queued_for_a_flooder_do_not_pin_its_own_long_lines() {
    let _machine = MACHINE.lock().unwrap_or_else(PoisonError::into_inner);
    const RUN: Duration = Duration::from_secs(2);
    // With the short lines copied the daemon stays near its idle size (5
    // MiB here); as slices, each kept about 80 KiB of the flooder's lines
    // alive: 150 MiB in this time.
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
    // The flooder reads a trickle through a tiny receive buffer, so what it
    // is sent stays queued in the daemon. Not nothing: a socket left with an
    // overfull receive buffer was seen (Linux 6.18) to stop sending for
    // good, probing a zero window while the daemon had read all it sent.
    let flooder = connect_socket(daemon.addr, None, Some(4096));
    let mut talker = Client::join(daemon.addr).0;
    let flooding = {
        let stop = stop.clone();
        let mut stream = flooder.try_clone().expect("clone");
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .expect("write timeout");
        thread::spawn(move || {
            let burst = lines(64 * 1024, 4000, 'f');
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(&burst).is_err() {
                    break;
                }
            }
        })
    };
    let trickling = {
        let stop = stop.clone();
        let mut trickle = flooder;
        thread::spawn(move || {
            let mut buf = [0; 256];
            while !stop.load(Ordering::Relaxed) {
                if matches!(trickle.read(&mut buf), Ok(0) | Err(_)) {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // The talker reads the flood as fast as it comes, so only the flooder's
    // queue grows.
    let draining = {
        let stop = stop.clone();
        let mut drain = talker.stream().try_clone().expect("clone");
        drain
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        thread::spawn(move || {
            let mut buf = vec![0; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                match drain.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(err)
                        if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        })
    };
    // First more than the kernel holds for the flooder (its send and
    // receive buffers), so that what follows waits in its queue; then short
    // lines a millisecond apart: about one per turn, each a small part of a
    // turn full of the flooder's lines. The pause paces the load; nothing
    // waits on it.
    talker.send_raw(&lines(256 * 1024, 4000, 't'));
    let started = Instant::now();
    let mut peak = 0;
    let mut said = 0u64;
    while started.elapsed() < RUN {
        said += 1;
        talker.send(&format!("s{said}"));
        thread::sleep(Duration::from_millis(1));
        if said.is_multiple_of(100) {
            peak = peak.max(daemon.rss_kib());
        }
    }
    peak = peak.max(daemon.rss_kib());
    stop.store(true, Ordering::Relaxed);
    // Killed first, so the flooder's blocked write fails at once.
    drop(daemon);
    flooding.join().expect("flooder");
    trickling.join().expect("flooder's reader");
    draining.join().expect("talker's reader");
    eprintln!("memory: peak VmRSS {peak} KiB after {said} short lines queued for a flooder");
    assert!(said > 500, "the talker spoke ({said} lines)");
    assert!(
        peak < BOUND_KIB,
        "VmRSS reached {peak} KiB: short lines kept the flooder's turns alive"
    );
}
