//! Fan-out benchmarks: how fast one chat line reaches a room of N members.
//!
//! - `core_fanout/{1,100}_lines_per_turn/N`: the chat core handing one or
//!   a hundred lines said in one loop turn to a room of N members, into
//!   real out-queues (throughput in deliveries).
//! - `core_fanout/speakers/S`: S members of a 1,000-member room each say
//!   one line in the same turn (throughput in deliveries).
//! - `core_fanout/burst`: 60 members of a 100-member room each say 16
//!   lines of 4,000 bytes in one turn (into queues without a cap).
//! - `who/N` and `rooms/N`: one `/who` in a room of N members, one `/rooms`
//!   with N rooms.
//! - `flush/{vectored,write_per_line}/K`: K queued lines written into a
//!   loopback socket, with one vectored write versus one write per line (the
//!   baseline, measured in the same run).
//! - `end_to_end/N`: the server in-process on 127.0.0.1:0, one sender and N
//!   reading clients over loopback, driven by the load tool's driver with
//!   its exact delivery accounting (throughput in delivered lines).

#[path = "../examples/loadgen/driver.rs"]
mod driver;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use apollonion::chat::{Chat, ChatConfig, ClientId, Close, Outbox, ReceiptTag, Sent};
use apollonion::server::out_queue::OutQueue;
use apollonion::{Config, Server};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// One real out-queue per member, capped like the daemon's default unless
/// a benchmark needs room for a burst.
struct Queues {
    queues: Vec<OutQueue>,
}

const CAP: usize = 1 << 20;

impl Outbox for Queues {
    fn send(&mut self, to: ClientId, line: Bytes, receipt: Option<ReceiptTag>) -> Sent {
        let queued = self
            .queues
            .get_mut(to.0)
            .is_some_and(|queue| queue.push(line, receipt, false));
        if queued {
            Sent::Queued
        } else {
            Sent::Skipped
        }
    }

    fn send_lines(&mut self, to: ClientId, lines: Bytes, _count: u32) {
        self.send(to, lines, None);
    }

    fn close(&mut self, _to: ClientId, _why: Close) {}
}

impl Queues {
    fn clear(&mut self) {
        for queue in &mut self.queues {
            queue.discard();
        }
    }

    /// Empties one member's queue: a listing reaches only who asked for it.
    fn clear_one(&mut self, id: ClientId) {
        if let Some(queue) = self.queues.get_mut(id.0) {
            queue.discard();
        }
    }
}

fn room_of(members: usize) -> (Chat, Queues) {
    room_with_cap(members, CAP)
}

fn room_with_cap(members: usize, cap: usize) -> (Chat, Queues) {
    let mut chat = Chat::new(ChatConfig {
        max_clients: members + 1,
        max_waiting: 0,
        max_per_ip: 0,
        max_line: 4096,
        announce_limit: 100,
    });
    let mut out = Queues {
        queues: (0..members).map(|_| OutQueue::new(cap)).collect(),
    };
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for id in 0..members {
        chat.on_connect(&mut out, ClientId(id), ip);
    }
    chat.end_turn(&mut out);
    out.clear();
    (chat, out)
}

/// `lines` lines from one sender in one loop turn, handed out to the room.
fn core_fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("core_fanout");
    let line = "x".repeat(64);
    for lines_per_turn in [1, 100] {
        for members in [10, 100, 1000, 10_000] {
            let (mut chat, mut out) = room_of(members);
            group.throughput(Throughput::Elements(
                (members as u64 - 1) * lines_per_turn as u64,
            ));
            let id = BenchmarkId::new(format!("{lines_per_turn}_lines_per_turn"), members);
            group.bench_with_input(id, &members, |b, _| {
                b.iter(|| {
                    for _ in 0..lines_per_turn {
                        chat.on_line(&mut out, ClientId(0), &line);
                    }
                    chat.end_turn(&mut out);
                    out.clear();
                })
            });
        }
    }
    let members = 1000;
    for speakers in [1, 100, 1000] {
        let (mut chat, mut out) = room_of(members);
        group.throughput(Throughput::Elements(speakers as u64 * (members as u64 - 1)));
        let id = BenchmarkId::new("speakers", speakers);
        group.bench_with_input(id, &speakers, |b, &speakers| {
            b.iter(|| {
                for speaker in 0..speakers {
                    chat.on_line(&mut out, ClientId(speaker), &line);
                }
                chat.end_turn(&mut out);
                out.clear();
            })
        });
    }
    let (mut chat, mut out) = room_with_cap(100, usize::MAX / 2);
    let long = "y".repeat(4000);
    group.throughput(Throughput::Elements(60 * 16 * 99));
    group.bench_function("burst", |b| {
        b.iter(|| {
            // The reactor reads each connection's input whole, so each
            // speaker's lines are together in the turn.
            for speaker in 0..60 {
                for _ in 0..16 {
                    chat.on_line(&mut out, ClientId(speaker), &long);
                }
            }
            chat.end_turn(&mut out);
            out.clear();
        })
    });
    group.finish();
}

/// `/who` in one big room: it lists 100 names, whatever the room's size.
fn who(c: &mut Criterion) {
    let mut group = c.benchmark_group("who");
    for members in [100, 10_000] {
        let (mut chat, mut out) = room_of(members);
        group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter(|| {
                chat.on_line(&mut out, ClientId(0), "/who");
                out.clear_one(ClientId(0));
            })
        });
    }
    group.finish();
}

/// `/rooms` with one member in each of `rooms` rooms: it lists 100 rooms.
fn rooms(c: &mut Criterion) {
    let mut group = c.benchmark_group("rooms");
    for rooms in [100, 10_000] {
        let (mut chat, mut out) = room_of(rooms);
        for member in 1..rooms {
            chat.on_line(&mut out, ClientId(member), &format!("/join #room-{member}"));
        }
        chat.end_turn(&mut out);
        out.clear();
        group.bench_with_input(BenchmarkId::from_parameter(rooms), &rooms, |b, _| {
            b.iter(|| {
                chat.on_line(&mut out, ClientId(0), "/rooms");
                out.clear_one(ClientId(0));
            })
        });
    }
    group.finish();
}

/// A connected loopback pair: the writer under test and a reader that the
/// benchmark drains after each write so the socket never fills.
fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let writer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (reader, _) = listener.accept().expect("accept");
    writer.set_nodelay(true).expect("nodelay");
    (writer, reader)
}

fn drain(reader: &mut TcpStream, mut bytes: usize, buf: &mut [u8]) {
    while bytes > 0 {
        bytes -= reader.read(buf).expect("read");
    }
}

fn flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("flush");
    let line = Bytes::from(format!("{}\r\n", "x".repeat(62)));
    let (mut writer, mut reader) = socket_pair();
    let mut buf = vec![0; 1 << 20];
    for lines in [1, 16, 256] {
        let total = lines * line.len();
        group.throughput(Throughput::Elements(lines as u64));
        group.bench_with_input(BenchmarkId::new("vectored", lines), &lines, |b, &lines| {
            let mut queue = OutQueue::new(CAP);
            let mut written = Vec::new();
            b.iter(|| {
                for _ in 0..lines {
                    queue.push(line.clone(), None, false);
                }
                queue.write_to(&mut writer, &mut written).expect("write");
                drain(&mut reader, total, &mut buf);
            })
        });
        group.bench_with_input(
            BenchmarkId::new("write_per_line", lines),
            &lines,
            |b, &lines| {
                b.iter(|| {
                    for _ in 0..lines {
                        writer.write_all(&line).expect("write");
                    }
                    drain(&mut reader, total, &mut buf);
                })
            },
        );
    }
    group.finish();
}

/// Lines the sender sends per criterion iteration.
const LINES_PER_ITERATION: u64 = 100;

fn end_to_end(c: &mut Criterion) {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        rate: 0,
        max_per_ip: 0,
        ..Config::default()
    };
    let server = Server::bind(config).expect("bind");
    let addr = server.local_addr();
    let shutdown = server.shutdown_handle();
    let thread = std::thread::spawn(move || server.run());

    let mut group = c.benchmark_group("end_to_end");
    group.measurement_time(Duration::from_secs(5));
    for receivers in [10, 100, 1000] {
        let mut load = driver::LoadConfig::new(driver::Target::Apollonion, addr);
        load.receivers = receivers;
        load.linger = Duration::ZERO;
        let mut session = driver::Session::connect(&load).expect("connect the load");
        session.warm_up(1000).expect("warm-up");
        group.throughput(Throughput::Elements(LINES_PER_ITERATION * receivers as u64));
        group.bench_function(BenchmarkId::from_parameter(receivers), |b| {
            b.iter_custom(|iterations| {
                let report = session
                    .measure(driver::Stop::Lines(iterations * LINES_PER_ITERATION))
                    .expect("every line delivered");
                assert!(report.passed(), "lost or reordered lines");
                report.elapsed
            })
        });
    }
    group.finish();
    shutdown.shutdown().expect("stop the server");
    thread.join().expect("server thread").expect("server run");
}

criterion_group!(benches, core_fanout, who, rooms, flush, end_to_end);
criterion_main!(benches);
