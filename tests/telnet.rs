//! The real Debian `telnet` client, typed into through a pseudo-terminal as
//! a person would, against a server running in-process (SPEC §2).
//!
//! The pty is driven with `libc` directly (posix_openpt and a
//! `Command::pre_exec` that only calls `setsid` and `ioctl(TIOCSCTTY)`):
//! that is all telnet needs for Ctrl-C to reach it as SIGINT from its
//! controlling terminal, and it spares the tests an expect-style crate.

mod common;

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use common::{TestServer, PATIENCE};

/// Whether a program is on PATH; when it is not, the test says so and
/// skips, unless CI demands every client be there.
fn client_installed(program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if found {
        return true;
    }
    assert!(
        std::env::var("APOLLONION_REQUIRE_CLIENTS").as_deref() != Ok("1"),
        "`{program}` is not installed, and APOLLONION_REQUIRE_CLIENTS=1 requires it"
    );
    eprintln!("skipping: `{program}` is not installed (apt-get install {program})");
    false
}

/// Everything the program wrote to its terminal so far, filled by a reader
/// thread, with a condition variable to wait on.
type Screen = Arc<(Mutex<Vec<u8>>, Condvar)>;

/// A program running on the slave side of a pseudo-terminal, as its
/// controlling terminal.
struct PtyProgram {
    child: Child,
    master: File,
    screen: Screen,
    /// How far `expect` has read the screen.
    seen: usize,
}

impl PtyProgram {
    fn spawn(program: &str, args: &[&str]) -> PtyProgram {
        let (master, slave_path) = open_pty();
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&slave_path)
            .expect("open pty slave");
        let mut command = Command::new(program);
        command
            .args(args)
            .env("TERM", "dumb")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: between fork and exec the closure only makes two
        // async-signal-safe calls. setsid gives the child its own session,
        // and TIOCSCTTY makes its stdin (the pty) that session's
        // controlling terminal, so a typed Ctrl-C becomes its SIGINT.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn under the pty");
        // The parent's copies of the slave went with `command`, so the
        // reader sees EIO (the end) once the child is gone.
        drop(command);

        let screen: Screen = Arc::default();
        let mut reader = master.try_clone().unwrap();
        let shared = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                let (bytes, changed) = &*shared;
                bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                changed.notify_all();
            }
        });
        PtyProgram {
            child,
            master,
            screen,
            seen: 0,
        }
    }

    /// Types bytes at the keyboard.
    fn type_bytes(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to the pty");
    }

    /// Types a line and presses Enter (which the terminal sends as CR).
    fn type_line(&mut self, text: &str) {
        self.type_bytes(format!("{text}\r").as_bytes());
    }

    /// Waits until `expected` appears on the screen after what earlier
    /// expectations matched.
    fn expect(&mut self, expected: &str) {
        let needle = expected.as_bytes();
        let deadline = Instant::now() + PATIENCE;
        let (bytes, changed) = &*self.screen;
        let mut screen = bytes.lock().unwrap();
        loop {
            if let Some(at) = screen[self.seen..]
                .windows(needle.len())
                .position(|window| window == needle)
            {
                self.seen += at + needle.len();
                return;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "{expected:?} not on the screen within {PATIENCE:?}; after the last match it shows {:?}",
                String::from_utf8_lossy(&screen[self.seen..])
            );
            screen = changed.wait_timeout(screen, deadline - now).unwrap().0;
        }
    }
}

impl Drop for PtyProgram {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new pseudo-terminal: its master side, and the path of its slave.
fn open_pty() -> (File, String) {
    // SAFETY: plain libc calls on a descriptor this function owns; the
    // descriptor is owned by a File at once, so it is closed on every path.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = File::from(OwnedFd::from_raw_fd(fd));
        assert_eq!(libc::grantpt(fd), 0, "grantpt");
        assert_eq!(libc::unlockpt(fd), 0, "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
        let path = CStr::from_ptr(name.as_ptr()).to_str().unwrap().to_owned();
        (master, path)
    }
}

/// What telnet sends for each of these characters without BINARY mode is
/// the failure this test is about: 0x83 (in `ă`) an interrupt, 0x9C (in
/// `本`) a break, 0x9D (in `ŝ`) its escape to the `telnet>` prompt.
const UTF8_LINE: &str = "Română: ăâ, 日本語, ŝ, 😀 and 👩‍💻";

#[test]
fn telnet_keeps_utf8_intact_and_hears_everything_after_two_ctrl_cs() {
    if !client_installed("telnet") {
        return;
    }
    assert!(Path::new("/dev/ptmx").exists(), "no pseudo-terminals here");
    let server = TestServer::start();
    let mut bob = server.join_as("bob");

    let port = server.addr.port().to_string();
    let mut tina = PtyProgram::spawn("telnet", &["127.0.0.1", &port]);
    tina.expect("* welcome ");
    let joined = bob.expect_prefix("* guest-");
    let guest = joined["* ".len()..].split(' ').next().unwrap().to_owned();

    tina.type_line("/nick tina");
    tina.expect("* you are now tina");
    bob.expect_line(&format!("* {guest} is now known as tina"));
    // A round trip: the reply comes after the request to send in BINARY
    // mode, so once telnet shows it, telnet has switched.
    tina.type_line("/rooms");
    tina.expect("* rooms: #lobby (2)");

    tina.type_line(UTF8_LINE);
    bob.expect_line(&format!("tina: {UTF8_LINE}"));
    // Enter still returns the cursor to the start of the line, so whatever
    // arrives next starts there too, not where her typing ended. (Telnet
    // turns the terminal's output processing off, and the echo becomes a
    // bare LF, when the server sends in BINARY mode.)
    tina.expect(&format!("{UTF8_LINE}\r\n"));

    for round in ["first", "second"] {
        // Ctrl-C: telnet sends IAC IP IAC DO TIMING-MARK and shows nothing
        // more until the timing mark is answered.
        tina.type_bytes(b"\x03");
        tina.expect("^C");
        tina.type_line("/who");
        tina.expect("* in #lobby: bob, tina");

        let said = format!("bob after the {round} Ctrl-C: {UTF8_LINE}");
        bob.send(&said);
        tina.expect(&format!("bob: {said}"));

        let typed = format!("tina after the {round} Ctrl-C: {UTF8_LINE}");
        tina.type_line(&typed);
        bob.expect_line(&format!("tina: {typed}"));
    }
    bob.expect_nothing_pending();
}
