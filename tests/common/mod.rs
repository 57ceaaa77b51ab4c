//! Shared test harness: a server started in-process on 127.0.0.1:0 and
//! line-oriented clients that synchronise on what the server sends.
#![allow(dead_code)] // each test binary uses a different part of it

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, Type};

use apollonion::{Config, Server, ShutdownHandle, StatsHandle, Stopped};

/// How long any single expectation may wait before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<Stopped>>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    /// Starts a server with defaults suited to tests (no rate limit) and
    /// whatever `adjust` changes.
    pub fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_with_stats(adjust).0
    }

    /// As `start_with`, also returning a handle to the server's counters
    /// (published once per loop turn).
    pub fn start_with_stats(adjust: impl FnOnce(&mut Config)) -> (TestServer, StatsHandle) {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            rate: 0,
            max_per_ip: 0,
            ..Config::default()
        };
        adjust(&mut config);
        config.validate().expect("test config is valid");
        let mut server = Server::bind(config).expect("bind");
        let stats = server.stats_handle();
        let addr = server.local_addr();
        let handle = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.run());
        let server = TestServer {
            addr,
            handle,
            thread: Some(thread),
        };
        (server, stats)
    }

    /// Connects and reads the welcome line, returning the client and its
    /// guest nickname.
    pub fn join(&self) -> (Client, String) {
        Client::join(self.addr)
    }

    /// Joins and renames to `nick`.
    pub fn join_as(&self, nick: &str) -> Client {
        let (mut client, _) = self.join();
        client.send(&format!("/nick {nick}"));
        client.expect_line(&format!("* you are now {nick}"));
        client
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Orderly shutdown, waiting for the server thread to finish.
    /// Asserts the shutdown was orderly, not cut short.
    pub fn stop(mut self) -> io::Result<()> {
        self.handle.shutdown().expect("wake server");
        let thread = self.thread.take().expect("running");
        let stopped = thread.join().expect("server thread panicked")?;
        assert_eq!(stopped, Stopped::Orderly);
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.handle.shutdown();
        }
    }
}

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects and reads the welcome line, returning the client and its
    /// guest nickname.
    pub fn join(addr: SocketAddr) -> (Client, String) {
        let mut client = Client::connect(addr);
        let welcome = client.expect_prefix("* welcome ");
        let nick = welcome["* welcome ".len()..]
            .split_whitespace()
            .next()
            .expect("nick in welcome")
            .to_string();
        (client, nick)
    }

    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    /// The next line, without its `\r\n` (which every server line must
    /// have), or `None` at end of stream.
    pub fn read_line(&mut self) -> Option<String> {
        match self.try_read_line() {
            Ok(line) => line,
            Err(err) => panic!("no line within {PATIENCE:?}: {err}"),
        }
    }

    /// As `read_line`, but a read timeout is returned, not a panic.
    fn try_read_line(&mut self) -> io::Result<Option<String>> {
        let mut raw = Vec::new();
        match self.reader.read_until(b'\n', &mut raw) {
            Ok(0) => Ok(None),
            Ok(_) => {
                assert!(raw.ends_with(b"\r\n"), "line without CRLF: {raw:?}");
                raw.truncate(raw.len() - 2);
                skip_negotiation(&mut raw);
                Ok(Some(String::from_utf8(raw).expect("server sent UTF-8")))
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The next line, which must be exactly `expected`.
    pub fn expect_line(&mut self, expected: &str) {
        match self.read_line() {
            Some(line) => assert_eq!(line, expected),
            None => panic!("connection closed, expected {expected:?}"),
        }
    }

    /// The next line, which must start with `prefix`.
    pub fn expect_prefix(&mut self, prefix: &str) -> String {
        match self.read_line() {
            Some(line) => {
                assert!(
                    line.starts_with(prefix),
                    "expected {prefix:?}…, got {line:?}"
                );
                line
            }
            None => panic!("connection closed, expected {prefix:?}…"),
        }
    }

    /// Reads until a line equal to `expected`, returning the lines before it.
    pub fn read_until(&mut self, expected: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            match self.read_line() {
                Some(line) if line == expected => return before,
                Some(line) => before.push(line),
                None => panic!("connection closed before {expected:?}; got {before:?}"),
            }
        }
    }

    /// Asserts the server sends this client nothing more, by making a round
    /// trip: `/rooms` is answered only after everything queued before it.
    pub fn expect_nothing_pending(&mut self) {
        self.send("/rooms");
        let line = self.read_line().expect("reply to /rooms");
        assert!(line.starts_with("* rooms: "), "unexpected line {line:?}");
    }

    /// Makes a round trip (`/rooms`) and returns every line the server sent
    /// this client before the reply: whatever was pending for it.
    pub fn drain(&mut self) -> Vec<String> {
        self.send("/rooms");
        let mut before = Vec::new();
        loop {
            match self.read_line() {
                Some(line) if line.starts_with("* rooms: ") => return before,
                Some(line) => before.push(line),
                None => panic!("connection closed before the reply to /rooms; got {before:?}"),
            }
        }
    }

    /// The next raw bytes, which must be exactly `expected` (for output that
    /// is not a text line, such as telnet replies).
    pub fn expect_bytes(&mut self, expected: &[u8]) {
        let got = self.read_exact_bytes(expected.len());
        assert_eq!(
            got,
            expected,
            "expected {:?}, got {:?}",
            String::from_utf8_lossy(expected),
            String::from_utf8_lossy(&got)
        );
    }

    /// Asserts the server closes the connection, after any lines it still
    /// sends; returns those lines.
    pub fn expect_closed(&mut self) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Each read waits only for what is left of the deadline, so the
            // deadline, not the read timeout, decides.
            self.writer.set_read_timeout(Some(left)).unwrap();
            match self.try_read_line() {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => {
                    self.writer.set_read_timeout(Some(PATIENCE)).unwrap();
                    return lines;
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(err) => panic!("reading until the close failed: {err}"),
            }
        }
        panic!("connection still open after {PATIENCE:?}; got {lines:?}");
    }

    /// Raw bytes until `count` have arrived.
    pub fn read_exact_bytes(&mut self, count: usize) -> Vec<u8> {
        let mut buf = vec![0; count];
        self.reader.read_exact(&mut buf).expect("read bytes");
        buf
    }

    pub fn hang_up(self) {
        let _ = self.writer.shutdown(Shutdown::Both);
    }

    /// Closes with a TCP reset instead of a FIN.
    pub fn reset(self) {
        let socket = self.writer;
        // SO_LINGER with a zero timeout turns close into RST.
        set_linger_zero(&socket);
        drop(socket);
        drop(self.reader);
    }
}

/// Removes the telnet negotiation (`IAC WILL/WONT/DO/DONT x`) the server
/// sends a client that ends lines with CR LF, as a telnet client would.
/// The server's text is UTF-8, which never holds the IAC byte 0xFF.
pub fn skip_negotiation(raw: &mut Vec<u8>) {
    const IAC: u8 = 0xff;
    while let Some(at) = raw.iter().position(|&b| b == IAC) {
        assert!(
            raw.len() >= at + 3 && (0xfb..=0xfe).contains(&raw[at + 1]),
            "IAC that is not a negotiation command: {raw:?}"
        );
        raw.drain(at..at + 3);
    }
}

/// Makes `close` send a reset rather than a FIN: an abrupt disconnect for
/// the tests that want one, and no TIME_WAIT entries left behind by tests
/// that open thousands of sockets.
pub fn set_linger_zero(socket: &TcpStream) {
    SockRef::from(socket)
        .set_linger(Some(Duration::ZERO))
        .expect("setsockopt(SO_LINGER)");
}

impl Client {
    /// A client on a socket connected by the test itself, for options that
    /// must be set before connecting (source address, receive buffer size).
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }
}

/// A TCP connection to `server` made by hand, for what std cannot do before
/// connecting: choosing the source address, and shrinking the receive
/// buffer (set later, the window already advertised would still let the
/// kernel soak up far more than the test means to).
pub fn connect_socket(
    server: SocketAddr,
    from: Option<Ipv4Addr>,
    rcvbuf: Option<usize>,
) -> TcpStream {
    let socket = Socket::new(Domain::for_address(server), Type::STREAM, None).expect("socket");
    if let Some(size) = rcvbuf {
        socket
            .set_recv_buffer_size(size)
            .expect("setsockopt(SO_RCVBUF)");
    }
    if let Some(ip) = from {
        let local = SocketAddr::from((ip, 0));
        socket
            .bind(&local.into())
            .unwrap_or_else(|err| panic!("bind {ip}: {err}"));
    }
    socket.connect(&server.into()).expect("connect");
    socket.into()
}

/// Raises this process's soft open-file limit to the hard limit, which it
/// returns.
pub fn raise_open_file_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0,
        "getrlimit"
    );
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit only reads the struct we pass.
    assert_eq!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) },
        0,
        "setrlimit"
    );
    limit.rlim_max
}
