//! What this machine's kernel charges for the work a chat server cannot
//! avoid: one small write to each of many loopback TCP sockets, and the
//! reader's read of it. No chat, no queues, no parsing: a floor to set the
//! daemon's figures against (bench/compare.sh prints it).
//!
//! A writer thread writes `--bytes` to each of `--sockets` connections in
//! turn for `--secs`; a reader thread polls the other ends (edge-triggered
//! `mio`, as the load tool does) and reads them. With two or more CPUs the
//! two threads are pinned to different ones, as the daemon and the load
//! tool usually run. Each thread's CPU time is divided by its syscalls.
//!
//! `cargo run --release --example write_floor -- [--sockets N] [--bytes B]
//! [--secs S]`

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

struct Options {
    sockets: usize,
    bytes: usize,
    secs: f64,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        sockets: 1000,
        bytes: 100,
        secs: 1.0,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: not a number: {value}");
        match flag.as_str() {
            "--sockets" => options.sockets = value.parse().map_err(|_| bad())?,
            "--bytes" => options.bytes = value.parse().map_err(|_| bad())?,
            "--secs" => options.secs = value.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if options.sockets == 0 || options.bytes == 0 || options.secs <= 0.0 {
        return Err("--sockets, --bytes and --secs must be above 0".into());
    }
    Ok(options)
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live
    // one.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Pins this thread to `cpu` where the machine has it; a floor measured
/// unpinned is still a floor, only noisier.
fn pin_to(cpu: usize) {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        return;
    }
    // SAFETY: cpu_set_t is plain bits; CPU_SET writes within it, and
    // sched_setaffinity reads it for this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[derive(Default)]
struct Side {
    calls: u64,
    bytes: u64,
    cpu: Duration,
}

fn read_all(streams: Vec<TcpStream>, stop: Arc<AtomicBool>) -> io::Result<Side> {
    pin_to(1);
    let mut poll = Poll::new()?;
    let mut streams: Vec<mio::net::TcpStream> = streams
        .into_iter()
        .map(mio::net::TcpStream::from_std)
        .collect();
    for (i, stream) in streams.iter_mut().enumerate() {
        poll.registry()
            .register(stream, Token(i), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0; 64 * 1024];
    let mut side = Side::default();
    let start = thread_cpu();
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for event in &events {
            let stream = &mut streams[event.token().0];
            loop {
                side.calls += 1;
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    // A short read emptied the socket: the next byte raises
                    // a new edge, as in the load tool.
                    Ok(n) if n < buf.len() => {
                        side.bytes += n as u64;
                        break;
                    }
                    Ok(n) => side.bytes += n as u64,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
        }
    }
    side.cpu = thread_cpu() - start;
    Ok(side)
}

fn write_round_robin(streams: &mut [TcpStream], bytes: usize, secs: f64) -> io::Result<Side> {
    pin_to(0);
    let message = vec![b'x'; bytes];
    let mut side = Side::default();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let start = thread_cpu();
    while Instant::now() < until {
        for stream in streams.iter_mut() {
            side.calls += 1;
            match stream.write(&message) {
                Ok(n) => side.bytes += n as u64,
                // A full socket is skipped, as a chat server would.
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }
    side.cpu = thread_cpu() - start;
    Ok(side)
}

fn run(options: &Options) -> io::Result<(Side, Side)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut writers = Vec::with_capacity(options.sockets);
    let mut readers = Vec::with_capacity(options.sockets);
    for _ in 0..options.sockets {
        let reader = TcpStream::connect(addr)?;
        let (writer, _) = listener.accept()?;
        writer.set_nodelay(true)?;
        writer.set_nonblocking(true)?;
        reader.set_nonblocking(true)?;
        writers.push(writer);
        readers.push(reader);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reading = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || read_all(readers, stop))
    };
    let written = write_round_robin(&mut writers, options.bytes, options.secs);
    stop.store(true, Ordering::Relaxed);
    let read = reading
        .join()
        .map_err(|_| io::Error::other("the reader thread panicked"))??;
    Ok((written?, read))
}

fn micros_per(side: &Side) -> f64 {
    side.cpu.as_secs_f64() * 1e6 / side.calls.max(1) as f64
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("write_floor: {message}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok((written, read)) => {
            println!(
                "{} loopback sockets, {}-byte writes for {} s: {:.2} us of writer CPU per write \
                 ({} writes, {:.0} MB), {:.2} us of reader CPU per read ({} reads)",
                options.sockets,
                options.bytes,
                options.secs,
                micros_per(&written),
                written.calls,
                written.bytes as f64 / 1e6,
                micros_per(&read),
                read.calls,
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("write_floor: {err} (raise the open-file limit for many sockets)");
            ExitCode::from(1)
        }
    }
}
