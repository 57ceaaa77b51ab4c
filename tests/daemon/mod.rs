//! The real `apollonion` binary as a child process, for tests that need what
//! only a separate process gives: its own open-file limit, its own memory
//! figures, its own CPU time.
#![allow(dead_code)] // each test binary uses a different part of it

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::common::Client;

/// How long the daemon may take to log what a test waits for.
pub const LOG_PATIENCE: Duration = Duration::from_secs(10);

/// The binary with a clean environment: an `APOLLONION_*` variable in the
/// developer's shell must not change what is tested.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_apollonion"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("APOLLONION_") {
            command.env_remove(name);
        }
    }
    command.args(args);
    command
}

/// A running daemon, killed when dropped so a failing test leaks nothing.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    /// Its stderr log, line by line, read on another thread so a full pipe
    /// can never block the server.
    log: Receiver<String>,
}

impl Daemon {
    /// Starts the binary on 127.0.0.1:0 with `args` added, and waits for it
    /// to log its address.
    pub fn start(args: &[&str]) -> Daemon {
        Self::start_with_open_files(args, None)
    }

    /// As `start`, with the soft and hard open-file limits both set to
    /// `open_files` in the child. Both: the server raises its soft limit to
    /// the hard one when it starts.
    pub fn start_with_open_files(args: &[&str], open_files: Option<libc::rlim_t>) -> Daemon {
        let mut command = command(&["--listen", "127.0.0.1:0", "--log-level", "info"]);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(limit) = open_files {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: runs in the forked child before exec and calls only
            // setrlimit, which is async-signal-safe, on a struct it owns.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        Self::spawn(command)
    }

    /// Starts a prepared command that runs the daemon (directly or through
    /// a shell that execs it), with its stderr piped here, and waits for it
    /// to log its address.
    pub fn spawn(mut command: Command) -> Daemon {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn apollonion");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut daemon = Daemon {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
        };
        let line = daemon.wait_for_log(|line| line.contains("listening on "));
        let at = line.find("listening on ").unwrap() + "listening on ".len();
        daemon.addr = line[at..]
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no address in {line:?}"));
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Log lines until one matches `wanted`, which is returned; the lines
    /// before it are dropped.
    pub fn wait_for_log(&self, wanted: impl FnMut(&str) -> bool) -> String {
        self.log_until(wanted).pop().expect("the matching line")
    }

    /// Log lines up to and including the first one that matches `wanted`.
    pub fn log_until(&self, mut wanted: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + LOG_PATIENCE;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let done = wanted(&line);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no such log line within {LOG_PATIENCE:?}; got {lines:#?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the daemon's log ended; got {lines:#?}")
                }
            }
        }
    }

    /// Log lines already written, without waiting.
    pub fn log_so_far(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// Connects and reads the welcome line, returning the client and its
    /// guest nickname.
    pub fn join(&self) -> (Client, String) {
        Client::join(self.addr)
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child, which has not been reaped (we still hold it).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// The exit status, if the process exits within `limit`.
    pub fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling a child process has no event to wait on; this only
            // paces the loop, the deadline decides.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// User plus system CPU time the process has used.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // The command name (field 2) may contain spaces; fields are counted
        // from the ')' that closes it. utime and stime are fields 14 and 15.
        let after_name = &stat[stat.rfind(')').expect("comm in stat") + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        assert!(per_second > 0, "sysconf(_SC_CLK_TCK)");
        Duration::from_secs_f64(ticks as f64 / per_second as f64)
    }

    /// Time the process's main thread has run on a CPU, to the nanosecond
    /// (`/proc/PID/schedstat`), for costs too small for `cpu_time`'s ticks.
    pub fn run_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/schedstat", self.pid()))
            .expect("read /proc/PID/schedstat");
        let ns = stat
            .split_whitespace()
            .next()
            .and_then(|field| field.parse().ok())
            .expect("run time in schedstat");
        Duration::from_nanos(ns)
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args` and returns its status, stdout and stderr,
/// or `None` (after killing it) if it is still running after `limit`: for
/// invocations that must exit by themselves.
pub fn run_within(args: &[&str], limit: Duration) -> Option<(ExitStatus, String, String)> {
    let mut child = command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apollonion");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        // Polling a child process has no event to wait on; this only paces
        // the loop, the deadline decides.
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().expect("collect output");
    Some((
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}
