//! A private `redis-server` for tests: its own loopback port, no
//! persistence, a temporary directory, killed by PID when dropped.
//!
//! Where `redis-server` is not installed, [`RedisServer::start`] prints why
//! and returns `None` so the test can skip, unless
//! `APOLLONION_REQUIRE_REDIS=1`, in which case it fails the test: CI sets
//! it so these tests always run there.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long Redis may take to answer its first PING.
const STARTUP_PATIENCE: Duration = Duration::from_secs(10);
/// Fresh ports tried when the one picked was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    extra_args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
}

fn required() -> bool {
    std::env::var("APOLLONION_REQUIRE_REDIS").is_ok_and(|v| v == "1")
}

fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A port that was free a moment ago. Redis cannot be told to pick one
/// (`--port 0` turns TCP off), so there is a race with other processes,
/// which the caller covers by retrying.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

impl RedisServer {
    /// A Redis without a password, or `None` (after saying why) when
    /// `redis-server` is missing and not required.
    pub fn start() -> Option<RedisServer> {
        Self::start_with(None, &[])
    }

    /// A Redis with `requirepass` set to `password` (when given) and
    /// further `redis-server` arguments.
    pub fn start_with(password: Option<&str>, extra_args: &[&str]) -> Option<RedisServer> {
        if !installed() {
            assert!(
                !required(),
                "redis-server is not installed and APOLLONION_REQUIRE_REDIS=1"
            );
            // Straight to stderr, not eprintln!, which the test harness
            // captures and shows only on failure.
            let _ = writeln!(
                std::io::stderr(),
                "skipped: redis-server is not installed (set APOLLONION_REQUIRE_REDIS=1 to fail instead)"
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "apollonion-redis-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the Redis temp dir");
        let mut server = RedisServer {
            port: 0,
            password: password.map(str::to_string),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            dir,
            child: None,
        };
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            if server.spawn() {
                return Some(server);
            }
        }
        panic!(
            "redis-server did not start in {PORT_ATTEMPTS} attempts; its log:\n{}",
            server.log()
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The `--redis` URL of this server, with its password and `db`.
    pub fn url(&self, db: u32) -> String {
        let credentials = match &self.password {
            Some(password) => format!(":{password}@"),
            None => String::new(),
        };
        format!("redis://{credentials}127.0.0.1:{}/{db}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts redis-server on `self.port` and waits for its PING; false
    /// when it exited (the port was taken) or never answered.
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let log = self.log_path().to_string_lossy().into_owned();
        let mut args: Vec<&str> = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
            "--logfile",
            &log,
            "--daemonize",
            "no",
        ];
        if let Some(password) = &self.password {
            args.extend(["--requirepass", password]);
        }
        args.extend(self.extra_args.iter().map(String::as_str));
        let mut child = match Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        let deadline = Instant::now() + STARTUP_PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if answers_ping(self.addr()) {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Kills Redis (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, as after a Redis restart.
    pub fn restart(&mut self) {
        self.stop();
        // The port was ours a moment ago; only a race with another process
        // can take it, which a few tries ride out.
        for _ in 0..PORT_ATTEMPTS {
            if self.spawn() {
                return;
            }
        }
        panic!(
            "redis-server did not restart on port {}; its log:\n{}",
            self.port,
            self.log()
        );
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether something on `addr` speaks RESP: `+PONG`, or `-NOAUTH` when it
/// wants a password, both prove Redis is up.
fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    match stream.read(&mut reply) {
        Ok(n) => reply[..n].starts_with(b"+PONG") || reply[..n].starts_with(b"-NOAUTH"),
        Err(_) => false,
    }
}

impl RedisServer {
    /// Runs one command on a fresh connection and returns its reply's
    /// text: a simple string, error or integer as written, a bulk string's
    /// contents. For test set-up (`CONFIG SET`), not for the servers' data.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(self.addr()).expect("connect to Redis");
        stream
            .set_read_timeout(Some(STARTUP_PATIENCE))
            .expect("read timeout");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).expect("send to Redis");
        let mut reader = std::io::BufReader::new(stream);
        let mut first = String::new();
        std::io::BufRead::read_line(&mut reader, &mut first).expect("Redis reply");
        let first = first.trim_end().to_string();
        let Some(len) = first.strip_prefix('$') else {
            return first;
        };
        let len: usize = len.parse().expect("bulk length");
        let mut body = vec![0; len + 2];
        reader.read_exact(&mut body).expect("bulk body");
        body.truncate(len);
        String::from_utf8(body).expect("UTF-8 reply")
    }
}
