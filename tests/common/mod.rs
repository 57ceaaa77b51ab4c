//! Shared test harness: a server started in-process on 127.0.0.1:0 and
//! line-oriented clients that synchronise on what the server sends.
#![allow(dead_code)] // each test binary uses a different part of it

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
        let mut raw = Vec::new();
        match self.reader.read_until(b'\n', &mut raw) {
            Ok(0) => None,
            Ok(_) => {
                assert!(raw.ends_with(b"\r\n"), "line without CRLF: {raw:?}");
                raw.truncate(raw.len() - 2);
                skip_negotiation(&mut raw);
                Some(String::from_utf8(raw).expect("server sent UTF-8"))
            }
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => None,
            Err(err) => panic!("no line within {PATIENCE:?}: {err}"),
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
        while Instant::now() < deadline {
            match self.read_line() {
                Some(line) => lines.push(line),
                None => return lines,
            }
        }
        panic!("connection still open; got {lines:?}");
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
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor and a correctly sized, live option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
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

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

pub fn set_int_option(
    socket: &TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) {
    // SAFETY: a valid descriptor and a correctly sized, live option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
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
    let SocketAddr::V4(server) = server else {
        panic!("test servers listen on IPv4 loopback")
    };
    // SAFETY: plain socket creation; the descriptor is owned by the
    // TcpStream at once, so it is closed on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if let Some(size) = rcvbuf {
        set_int_option(
            &stream,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            size as libc::c_int,
        );
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    if let Some(ip) = from {
        let local = sockaddr_in(SocketAddrV4::new(ip, 0));
        // SAFETY: a valid descriptor and a live, correctly sized address.
        let rc = unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) };
        assert_eq!(rc, 0, "bind {ip}: {}", std::io::Error::last_os_error());
    }
    let remote = sockaddr_in(server);
    // SAFETY: as for bind.
    let rc = unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    stream
}
