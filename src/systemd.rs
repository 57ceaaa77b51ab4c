//! The two pieces of the systemd protocol the daemon speaks, without
//! libsystemd: readiness notification (`$NOTIFY_SOCKET`, see sd_notify(3))
//! and socket activation (`$LISTEN_PID`/`$LISTEN_FDS`, see
//! sd_listen_fds(3)).
//!
//! Both read the process environment; call them at start-up, before any
//! thread is spawned, because [`listener_from_env`] also removes variables.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The state sent once the listening socket is open and the loop runs.
pub const READY: &str = "READY=1";
/// The state sent when an orderly shutdown starts.
pub const STOPPING: &str = "STOPPING=1";

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: RawFd = 3;

/// A `STATUS=` line for `systemctl status`. A newline would end the
/// assignment early and start a bogus one, so line breaks become spaces.
pub fn status(text: &str) -> String {
    let mut state = String::with_capacity(7 + text.len());
    state.push_str("STATUS=");
    state.extend(text.chars().map(|c| if c == '\n' { ' ' } else { c }));
    state
}

/// Sends state changes to the service manager.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
}

impl Notifier {
    /// The notifier systemd asked for with `$NOTIFY_SOCKET`, or `None` when
    /// the variable is unset (not run by systemd, or not `Type=notify`).
    /// A variable naming something unusable is logged and ignored: the
    /// daemon works without notification, and systemd will report the
    /// missing `READY=1` itself.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::connect(&value) {
            Ok(notifier) => Some(notifier),
            Err(err) => {
                log::warn!("NOTIFY_SOCKET={value:?} is unusable ({err}); not notifying systemd");
                None
            }
        }
    }

    /// A notifier for `address`: an absolute path, or `@name` for a Linux
    /// abstract socket, as `$NOTIFY_SOCKET` spells them.
    pub fn connect(address: &OsStr) -> io::Result<Notifier> {
        let target = notify_address(address.as_bytes())?;
        let socket = UnixDatagram::unbound()?;
        // A full or absent receiver must never stall the reactor.
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, target })
    }

    /// Sends one state datagram such as [`READY`] or [`status`]`(..)`.
    /// Never blocks: a busy service manager yields `WouldBlock`.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.target)?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification datagram was truncated",
            ));
        }
        Ok(())
    }
}

fn notify_address(address: &[u8]) -> io::Result<SocketAddr> {
    match address.first() {
        Some(b'/') => SocketAddr::from_pathname(OsStr::from_bytes(address)),
        Some(b'@') => abstract_address(&address[1..]),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "expected an absolute path or @abstract-name",
        )),
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// Why a socket passed by systemd cannot be used.
#[derive(Debug)]
pub enum ActivationError {
    /// `LISTEN_PID` or `LISTEN_FDS` is not a number.
    BadVariable {
        name: &'static str,
        value: String,
    },
    /// More sockets than the one the daemon listens on; the socket unit
    /// probably has a second `Listen…=` line.
    TooManySockets(usize),
    /// Descriptor 3 is not open.
    NotOpen(io::Error),
    /// Descriptor 3 is not an IPv4/IPv6 stream socket in the listening
    /// state (`what` says which part failed).
    NotTcpListener {
        what: &'static str,
    },
    Io(io::Error),
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::BadVariable { name, value } => {
                write!(f, "socket activation: {name}={value:?} is not a number")
            }
            ActivationError::TooManySockets(count) => write!(
                f,
                "socket activation passed {count} sockets; apollonion listens on exactly one \
                 (one ListenStream= in the socket unit)"
            ),
            ActivationError::NotOpen(err) => {
                write!(f, "socket activation: descriptor 3 is not open ({err})")
            }
            ActivationError::NotTcpListener { what } => write!(
                f,
                "socket activation: descriptor 3 is not a listening TCP socket ({what})"
            ),
            ActivationError::Io(err) => write!(f, "socket activation: {err}"),
        }
    }
}

impl std::error::Error for ActivationError {}

/// What `LISTEN_PID` and `LISTEN_FDS` say, before any descriptor is
/// touched: how many sockets, starting at fd 3, belong to this process.
/// Variables meant for another process (a parent that passed them on)
/// mean none, as in sd_listen_fds(3).
pub fn parse_listen_env(
    pid_var: Option<&str>,
    fds_var: Option<&str>,
    our_pid: u32,
) -> Result<usize, ActivationError> {
    let Some(pid_text) = pid_var else {
        return Ok(0);
    };
    let pid: u32 = pid_text
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadVariable {
            name: "LISTEN_PID",
            value: pid_text.to_owned(),
        })?;
    if pid != our_pid {
        return Ok(0);
    }
    let Some(fds_text) = fds_var else {
        return Ok(0);
    };
    fds_text
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadVariable {
            name: "LISTEN_FDS",
            value: fds_text.to_owned(),
        })
}

/// The listening socket systemd passed, if it passed one to this process.
/// The variables are removed either way so that nothing started later
/// mistakes them for its own. The listener is close-on-exec and left in
/// whatever blocking mode systemd gave it: the caller sets non-blocking.
///
/// Call once, at start-up: on success this process owns descriptor 3.
pub fn listener_from_env() -> Result<Option<TcpListener>, ActivationError> {
    let pid_var = std::env::var("LISTEN_PID").ok();
    let fds_var = std::env::var("LISTEN_FDS").ok();
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    match parse_listen_env(pid_var.as_deref(), fds_var.as_deref(), std::process::id())? {
        0 => Ok(None),
        1 => {
            // SAFETY: F_GETFD only queries the descriptor table.
            if unsafe { libc::fcntl(LISTEN_FDS_START, libc::F_GETFD) } < 0 {
                return Err(ActivationError::NotOpen(io::Error::last_os_error()));
            }
            // SAFETY: LISTEN_PID names this process, so by the socket
            // activation protocol descriptor 3 was opened for it and
            // nothing else in the process owns it; it was just checked to
            // be open.
            let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
            listener_from_fd(fd).map(Some)
        }
        count => Err(ActivationError::TooManySockets(count)),
    }
}

/// Checks that `fd` is a listening IPv4/IPv6 TCP socket and turns it into
/// a close-on-exec [`TcpListener`]. On error the descriptor is closed.
pub fn listener_from_fd(fd: OwnedFd) -> Result<TcpListener, ActivationError> {
    let raw = fd.as_raw_fd();
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` into the buffer we own.
    if unsafe { libc::fstat(raw, stat.as_mut_ptr()) } != 0 {
        return Err(ActivationError::Io(io::Error::last_os_error()));
    }
    // SAFETY: fstat succeeded, so the struct is initialised.
    let mode = unsafe { stat.assume_init() }.st_mode;
    if mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(ActivationError::NotTcpListener {
            what: "not a socket",
        });
    }
    if socket_option(raw, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(ActivationError::NotTcpListener {
            what: "not a stream socket",
        });
    }
    let domain = socket_option(raw, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(ActivationError::NotTcpListener {
            what: "not an IPv4 or IPv6 socket",
        });
    }
    if socket_option(raw, libc::SO_ACCEPTCONN)? == 0 {
        return Err(ActivationError::NotTcpListener {
            what: "not listening",
        });
    }
    set_cloexec(raw).map_err(ActivationError::Io)?;
    Ok(TcpListener::from(fd))
}

fn socket_option(fd: RawFd, option: libc::c_int) -> Result<libc::c_int, ActivationError> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(ActivationError::Io(io::Error::last_os_error()));
    }
    Ok(value)
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only touch the descriptor's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpStream, UdpSocket};
    use std::os::fd::IntoRawFd;
    use std::path::PathBuf;
    use std::time::Duration;

    fn temp_socket_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("apollonion-notify-{tag}-{}", std::process::id()))
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let len = socket.recv(&mut buf).expect("datagram within the timeout");
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    #[test]
    fn notifier_sends_states_in_order_to_a_path_socket() {
        let path = temp_socket_path("path");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();

        let notifier = Notifier::connect(path.as_os_str()).unwrap();
        notifier.notify(READY).unwrap();
        notifier.notify(&status("3 chatting, 1 waiting")).unwrap();
        notifier.notify(STOPPING).unwrap();

        assert_eq!(receive(&receiver), "READY=1");
        assert_eq!(receive(&receiver), "STATUS=3 chatting, 1 waiting");
        assert_eq!(receive(&receiver), "STOPPING=1");
        let _ = std::fs::remove_file(&path);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notifier_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("apollonion-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();

        let notifier = Notifier::connect(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.notify(READY).unwrap();
        assert_eq!(receive(&receiver), "READY=1");
    }

    #[test]
    fn notify_to_a_missing_socket_is_an_error_not_a_panic() {
        let path = temp_socket_path("missing");
        let _ = std::fs::remove_file(&path);
        let notifier = Notifier::connect(path.as_os_str()).unwrap();
        assert!(notifier.notify(READY).is_err());
    }

    #[test]
    fn relative_or_empty_notify_addresses_are_refused() {
        for bad in ["", "run/notify", "vsock:2:1234"] {
            assert!(Notifier::connect(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_keeps_the_datagram_one_assignment() {
        assert_eq!(status("a\nb"), "STATUS=a b");
        assert_eq!(status(""), "STATUS=");
    }

    #[test]
    fn listen_env_for_this_process_counts_its_sockets() {
        assert_eq!(parse_listen_env(Some("42"), Some("1"), 42).unwrap(), 1);
        assert_eq!(parse_listen_env(Some("42"), Some("2"), 42).unwrap(), 2);
        assert_eq!(parse_listen_env(Some("42"), Some("0"), 42).unwrap(), 0);
    }

    #[test]
    fn listen_env_for_another_process_or_absent_means_no_socket() {
        assert_eq!(parse_listen_env(None, None, 42).unwrap(), 0);
        assert_eq!(parse_listen_env(None, Some("1"), 42).unwrap(), 0);
        assert_eq!(parse_listen_env(Some("41"), Some("1"), 42).unwrap(), 0);
        // A stale variable for another process is not our business, even
        // when LISTEN_FDS is garbage.
        assert_eq!(parse_listen_env(Some("41"), Some("x"), 42).unwrap(), 0);
        assert_eq!(parse_listen_env(Some("42"), None, 42).unwrap(), 0);
    }

    #[test]
    fn listen_env_garbage_is_an_error() {
        for (pid, fds) in [
            ("x", "1"),
            ("", "1"),
            ("-1", "1"),
            ("42", "one"),
            ("42", "-1"),
        ] {
            let err = parse_listen_env(Some(pid), Some(fds), 42).unwrap_err();
            assert!(
                matches!(err, ActivationError::BadVariable { .. }),
                "{pid:?} {fds:?}: {err}"
            );
        }
    }

    #[test]
    fn a_listening_tcp_socket_is_adopted_close_on_exec() {
        let original = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = original.local_addr().unwrap();
        // Clear CLOEXEC as systemd's passed descriptors have it cleared.
        let raw = original.into_raw_fd();
        // SAFETY: the test owns `raw`.
        unsafe { libc::fcntl(raw, libc::F_SETFD, 0) };
        // SAFETY: `raw` came from into_raw_fd above and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let listener = listener_from_fd(fd).unwrap();
        assert_eq!(listener.local_addr().unwrap(), addr);
        // SAFETY: F_GETFD only reads flags.
        let flags = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let _client = TcpStream::connect(addr).unwrap();
        assert!(listener.accept().is_ok());
    }

    #[test]
    fn sockets_that_cannot_accept_tcp_are_refused() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(matches!(
            listener_from_fd(OwnedFd::from(udp)),
            Err(ActivationError::NotTcpListener { .. })
        ));

        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let connected = TcpStream::connect(server.local_addr().unwrap()).unwrap();
        assert!(matches!(
            listener_from_fd(OwnedFd::from(connected)),
            Err(ActivationError::NotTcpListener {
                what: "not listening"
            })
        ));

        let path = temp_socket_path("unix-listener");
        let _ = std::fs::remove_file(&path);
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(
            listener_from_fd(OwnedFd::from(unix)),
            Err(ActivationError::NotTcpListener { .. })
        ));
        let _ = std::fs::remove_file(&path);

        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(matches!(
            listener_from_fd(OwnedFd::from(file)),
            Err(ActivationError::NotTcpListener {
                what: "not a socket"
            })
        ));
    }

    /// Runs `listener_from_env` the way systemd would start the daemon: a
    /// fresh process whose descriptor 3 is a listening socket and whose
    /// `LISTEN_PID` is its own pid (set by `sh` before it execs the test
    /// binary again, so the pid stays the same).
    #[test]
    fn a_socket_passed_as_fd_3_is_taken_from_the_environment() {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let passed = listener.as_raw_fd();
        let mut child = Command::new("sh");
        child
            .arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" --exact systemd::tests::activated_child --ignored --nocapture --test-threads 1")
            .arg(std::env::current_exe().unwrap())
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "apollonion.socket")
            .env("APOLLONION_TEST_ACTIVATED_CHILD", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: dup2 is async-signal-safe; it puts the listener on fd 3
        // without CLOEXEC, as systemd does.
        unsafe {
            child.pre_exec(move || {
                if libc::dup2(passed, LISTEN_FDS_START) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // dup2 onto itself keeps CLOEXEC; clear it in every case.
                if libc::fcntl(LISTEN_FDS_START, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let output = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains(&format!("activated-listener={addr} env-cleared")),
            "{stdout}"
        );
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    /// The child half of the test above; does nothing unless started by it.
    #[test]
    #[ignore = "started by a_socket_passed_as_fd_3_is_taken_from_the_environment"]
    fn activated_child() {
        if std::env::var_os("APOLLONION_TEST_ACTIVATED_CHILD").is_none() {
            return;
        }
        let listener = listener_from_env()
            .expect("socket activation succeeds")
            .expect("a socket was passed");
        let addr = listener.local_addr().unwrap();
        // A client reaches the adopted socket.
        let _client = TcpStream::connect(addr).unwrap();
        listener.accept().unwrap();
        let cleared = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]
            .iter()
            .all(|name| std::env::var_os(name).is_none());
        if cleared {
            println!("activated-listener={addr} env-cleared");
        }
        // A second call finds nothing: the variables are gone.
        assert!(listener_from_env().unwrap().is_none());
    }
}
