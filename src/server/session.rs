//! One connection's policy, without its socket: input decoding, the rate
//! limit, the idle and write-stall rules, and where it is in its life.
//!
//! Like the chat core, a `Session` never reads a clock: every method that
//! depends on time takes `now`, and `poll_timeout` says when it next needs
//! to be asked (`handle_timeout`). The reactor does the system calls and
//! keeps one timer per session at that deadline; the unit tests below drive
//! it on a virtual clock.

use std::time::{Duration, Instant};

use super::rate::{Bucket, RateLimit};
use crate::chat::Close;
use crate::line::{Decoded, LineDecoder};

/// The per-connection rules, the same for every session.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Close a client that sends nothing for this long; `None` is off.
    pub idle_timeout: Option<Duration>,
    /// Drop a client whose pending output does not move for this long.
    pub write_timeout: Duration,
    pub rate: RateLimit,
    pub max_line: usize,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading input and taking output.
    Open,
    /// No more input is taken; close once the output has drained.
    Closing,
    /// Close at the end of this loop turn, whatever is still queued.
    Dead,
}

/// Why a connection ended, for the disconnect log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The chat closed it, and says why.
    Chat(Close),
    /// The peer closed its side.
    HungUp,
    /// Its output did not move for the write timeout.
    TooSlow,
    /// Reading, writing or polling the socket failed.
    Reset,
}

impl CloseCause {
    pub fn describe(self) -> String {
        match self {
            CloseCause::Chat(Close::Quit) => "quit".into(),
            CloseCause::Chat(Close::HttpRequest) => "sent an HTTP request".into(),
            CloseCause::Chat(Close::Refused(why)) => format!("refused: {}", why.describe()),
            CloseCause::Chat(Close::Idle) => "idle".into(),
            CloseCause::Chat(Close::Shutdown) => "server shutdown".into(),
            CloseCause::HungUp => "hung up".into(),
            CloseCause::TooSlow => "too slow: took no output for the write timeout".into(),
            CloseCause::Reset => "connection error".into(),
        }
    }
}

/// What the session hands the reactor from its input.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Something decoded, for the chat (or a telnet reply to send back).
    Event(Decoded),
    /// Everything received so far is used: read more from the socket.
    NeedMore,
    /// The rate limit is spent until `poll_timeout`; leave the rest unread,
    /// so TCP pushes back on the sender.
    Paused,
    /// The connection takes no more input.
    Stopped,
}

/// A deadline that `handle_timeout` found passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Pending output was not seen to move for the write timeout. Before
    /// dropping the client, the reactor tries a write and looks at the
    /// kernel's send queue (`output_written`, `kernel_queue_seen`), then
    /// asks `is_stalled`: a socket that drains, however slowly, may not have
    /// become writable enough for epoll to say so.
    WriteStall,
    /// Nothing was received for the idle timeout: let the chat close it.
    Idle,
    /// The rate limit has a token again: input may be read.
    RateResumed,
}

pub struct Session {
    decoder: LineDecoder,
    bucket: Bucket,
    /// The rate limit refused a token: input waits until the bucket's next
    /// token (`Bucket::next_token_at`).
    paused: bool,
    last_input: Instant,
    /// While output is pending: when it last moved (was queued into an
    /// empty queue, the socket took bytes of it, or the kernel's send queue
    /// was seen to shrink). `None` when drained.
    output_moved: Option<Instant>,
    /// The kernel's send queue at the last look since output last moved in
    /// user space; a later look that finds it smaller proves the peer reads.
    /// `None` until looked at: a write that took bytes grew it.
    kernel_queue: Option<u32>,
    phase: Phase,
    cause: Option<CloseCause>,
    /// The chat waits for the other servers' answer to this client's last
    /// line; its next lines wait too.
    held: bool,
    /// The peer has closed its sending side.
    input_ended: bool,
}

impl Session {
    pub fn new(rules: &Rules, now: Instant) -> Self {
        Session {
            decoder: LineDecoder::new(rules.max_line),
            bucket: Bucket::new(now),
            paused: false,
            last_input: now,
            output_moved: None,
            kernel_queue: None,
            phase: Phase::Open,
            cause: None,
            held: false,
            input_ended: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Why the connection is ending; `None` while it is open.
    pub fn cause(&self) -> Option<CloseCause> {
        self.cause
    }

    /// Moves towards closing, never back towards open. The first cause given
    /// is the one kept: the only place the cause is written.
    pub fn end(&mut self, phase: Phase, cause: CloseCause) {
        if self.cause.is_none() {
            self.cause = Some(cause);
        }
        if self.phase == Phase::Open || phase == Phase::Dead {
            self.phase = phase;
        }
    }

    /// Whether reading the socket is useful now.
    pub fn wants_input(&self) -> bool {
        self.phase == Phase::Open && !self.paused && !self.held
    }

    /// Holds or releases input while the chat waits for other servers.
    pub fn hold(&mut self, held: bool) {
        self.held = held;
    }

    /// Bytes read from the socket.
    pub fn received(&mut self, bytes: &[u8], now: Instant) {
        self.decoder.push(bytes);
        self.last_input = now;
    }

    /// The peer closed its sending side: what is left without a line end
    /// becomes the last line. True the first time, when that last line may
    /// still have to be decoded; false once it has been, so the reactor
    /// hangs up.
    pub fn input_ended(&mut self) -> bool {
        if self.input_ended {
            return false;
        }
        self.input_ended = true;
        self.decoder.finish();
        true
    }

    /// The next thing decoded from the input, if the rate limit allows.
    pub fn next_input(&mut self, rules: &Rules, now: Instant) -> Input {
        if !self.wants_input() {
            return if self.phase == Phase::Open {
                Input::Paused
            } else {
                Input::Stopped
            };
        }
        if !self.decoder.has_unread_input() {
            return Input::NeedMore;
        }
        // Only lines cost a token, but which event comes next is known only
        // after decoding it: take a token on trial, give it back for
        // anything else.
        let bucket_before = self.bucket;
        if self.bucket.take(&rules.rate, now).is_err() {
            self.paused = true;
            return Input::Paused;
        }
        let decoded = self.decoder.next();
        if !matches!(decoded, Some(Decoded::Line(_) | Decoded::TooLong)) {
            self.bucket = bucket_before;
        }
        match decoded {
            Some(event) => Input::Event(event),
            None => Input::NeedMore,
        }
    }

    /// Output was queued; `was_empty` if the queue had nothing before.
    pub fn output_queued(&mut self, was_empty: bool, now: Instant) {
        if was_empty || self.output_moved.is_none() {
            self.output_moved = Some(now);
            self.kernel_queue = None;
        }
    }

    /// The socket took `bytes` of the pending output; `drained` if nothing
    /// is left.
    pub fn output_written(&mut self, bytes: usize, drained: bool, now: Instant) {
        if drained {
            self.output_moved = None;
            self.kernel_queue = None;
        } else if bytes > 0 {
            self.output_moved = Some(now);
            self.kernel_queue = None;
        }
    }

    /// Whether the reactor should look at the kernel's send queue after a
    /// write that left output pending: once per user-space movement, so the
    /// stall check has a reference to compare with.
    pub fn wants_kernel_queue(&self) -> bool {
        self.output_moved.is_some() && self.kernel_queue.is_none()
    }

    /// The kernel's send queue holds `bytes` not yet acknowledged by the
    /// peer (`SIOCOUTQ`). Less than at the last look means the peer took
    /// some: output moved, even though no write could add to it.
    pub fn kernel_queue_seen(&mut self, bytes: usize, now: Instant) {
        if self.output_moved.is_none() {
            return;
        }
        // A socket's queue is capped by its send buffer, an `int`.
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        if self.kernel_queue.is_some_and(|before| bytes < before) {
            self.output_moved = Some(now);
        }
        self.kernel_queue = Some(bytes);
    }

    /// After a `WriteStall` and the reactor's write attempt and look at the
    /// kernel's queue: whether output still has not moved for the write
    /// timeout, so the client takes nothing and must go.
    pub fn is_stalled(&self, rules: &Rules, now: Instant) -> bool {
        self.output_moved
            .and_then(|moved| moved.checked_add(rules.write_timeout))
            .is_some_and(|deadline| deadline <= now)
    }

    /// When `handle_timeout` must next be called; `None` if never.
    pub fn poll_timeout(&self, rules: &Rules) -> Option<Instant> {
        if self.phase == Phase::Dead {
            return None;
        }
        let stall = self
            .output_moved
            .and_then(|moved| moved.checked_add(rules.write_timeout));
        let mut next = stall;
        if self.phase == Phase::Open {
            let idle = rules
                .idle_timeout
                .and_then(|timeout| self.last_input.checked_add(timeout));
            next = earliest(next, idle);
            if self.paused {
                next = earliest(next, self.bucket.next_token_at(&rules.rate));
            }
        }
        next
    }

    /// Applies the deadlines passed at `now`, returning the one that
    /// matters most: a stall ends the connection whatever else is due.
    pub fn handle_timeout(&mut self, rules: &Rules, now: Instant) -> Option<Expired> {
        if self.phase == Phase::Dead {
            return None;
        }
        let passed = |deadline: Option<Instant>| deadline.is_some_and(|at| at <= now);
        let stall = self
            .output_moved
            .and_then(|moved| moved.checked_add(rules.write_timeout));
        if passed(stall) {
            return Some(Expired::WriteStall);
        }
        if self.phase != Phase::Open {
            return None;
        }
        let idle = rules
            .idle_timeout
            .and_then(|timeout| self.last_input.checked_add(timeout));
        if passed(idle) {
            return Some(Expired::Idle);
        }
        if self.paused
            && self
                .bucket
                .next_token_at(&rules.rate)
                .is_none_or(|at| at <= now)
        {
            self.paused = false;
            return Some(Expired::RateResumed);
        }
        None
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn rules() -> Rules {
        Rules {
            idle_timeout: Some(60 * SECOND),
            write_timeout: 30 * SECOND,
            rate: RateLimit::new(0, 0),
            max_line: 4096,
        }
    }

    /// Takes every event the session has, as the reactor would.
    fn drain(session: &mut Session, rules: &Rules, now: Instant) -> (Vec<Decoded>, Input) {
        let mut events = Vec::new();
        loop {
            match session.next_input(rules, now) {
                Input::Event(event) => events.push(event),
                other => return (events, other),
            }
        }
    }

    fn line(text: &str) -> Decoded {
        Decoded::Line(text.to_string())
    }

    #[test]
    fn a_silent_client_expires_exactly_at_the_idle_timeout() {
        let rules = rules();
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        assert_eq!(session.poll_timeout(&rules), Some(start + 60 * SECOND));
        let almost = start + 60 * SECOND - Duration::from_millis(1);
        assert_eq!(session.handle_timeout(&rules, almost), None);
        assert_eq!(
            session.handle_timeout(&rules, start + 60 * SECOND),
            Some(Expired::Idle)
        );
    }

    #[test]
    fn input_moves_the_idle_deadline_and_output_does_not() {
        let rules = rules();
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        let later = start + 50 * SECOND;
        session.output_queued(true, later);
        session.output_written(10, true, later);
        assert_eq!(session.poll_timeout(&rules), Some(start + 60 * SECOND));
        session.received(b"hi\r\n", later);
        assert_eq!(session.poll_timeout(&rules), Some(later + 60 * SECOND));
        // The old deadline fires (the reactor's timer is not cancelled):
        // nothing happens.
        assert_eq!(session.handle_timeout(&rules, start + 60 * SECOND), None);
        assert_eq!(
            session.handle_timeout(&rules, later + 60 * SECOND),
            Some(Expired::Idle)
        );
    }

    #[test]
    fn idle_off_means_no_deadline_at_all() {
        let rules = Rules {
            idle_timeout: None,
            ..rules()
        };
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        assert_eq!(session.poll_timeout(&rules), None);
        let next_year = start + 365 * 24 * 3600 * SECOND;
        assert_eq!(session.handle_timeout(&rules, next_year), None);
    }

    #[test]
    fn a_closing_client_is_not_idle_but_can_still_stall() {
        let rules = rules();
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        session.output_queued(true, start);
        session.end(Phase::Closing, CloseCause::HungUp);
        assert_eq!(session.poll_timeout(&rules), Some(start + 30 * SECOND));
        assert_eq!(
            session.handle_timeout(&rules, start + 30 * SECOND),
            Some(Expired::WriteStall)
        );
    }

    #[test]
    fn output_that_does_not_move_stalls_at_the_write_timeout() {
        let rules = rules();
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        session.received(b"x\r\n", start);
        session.output_queued(true, start);
        // More output queued behind a stuck queue does not count as movement.
        session.output_queued(false, start + 20 * SECOND);
        assert_eq!(session.poll_timeout(&rules), Some(start + 30 * SECOND));
        let just_before = start + 30 * SECOND - Duration::from_millis(1);
        assert_eq!(session.handle_timeout(&rules, just_before), None);
        assert_eq!(
            session.handle_timeout(&rules, start + 30 * SECOND),
            Some(Expired::WriteStall)
        );
    }

    #[test]
    fn a_slow_but_moving_reader_never_stalls() {
        let rules = rules();
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        session.output_queued(true, start);
        let mut now = start;
        for _ in 0..100 {
            now += 29 * SECOND;
            session.received(b"still here\r\n", now);
            assert_eq!(session.handle_timeout(&rules, now), None);
            session.output_written(1, false, now);
        }
        session.output_written(1, true, now);
        assert_eq!(session.poll_timeout(&rules), Some(now + 60 * SECOND));
    }

    #[test]
    fn a_stall_outranks_idleness_when_both_are_due() {
        let rules = Rules {
            idle_timeout: Some(30 * SECOND),
            ..rules()
        };
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        session.output_queued(true, start);
        assert_eq!(
            session.handle_timeout(&rules, start + 30 * SECOND),
            Some(Expired::WriteStall)
        );
    }

    #[test]
    fn the_rate_limit_pauses_input_and_resumes_on_time() {
        let rules = Rules {
            rate: RateLimit::new(10, 3),
            ..rules()
        };
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        session.received(b"1\n2\n3\n4\n5\n", start);
        let (events, next) = drain(&mut session, &rules, start);
        assert_eq!(events, [line("1"), line("2"), line("3")]);
        assert_eq!(next, Input::Paused);
        assert!(!session.wants_input());
        let resume = start + Duration::from_millis(100);
        assert_eq!(session.poll_timeout(&rules), Some(resume));
        let early = resume - Duration::from_millis(1);
        assert_eq!(session.handle_timeout(&rules, early), None);
        assert_eq!(next_input_now(&mut session, &rules, early), Input::Paused);
        assert_eq!(
            session.handle_timeout(&rules, resume),
            Some(Expired::RateResumed)
        );
        let (events, next) = drain(&mut session, &rules, resume);
        assert_eq!(events, [line("4")]);
        assert_eq!(next, Input::Paused);
    }

    #[test]
    fn a_held_session_keeps_its_lines_until_released() {
        let rules = rules();
        let now = Instant::now();
        let mut session = Session::new(&rules, now);
        session.received(b"/nick ada\nhello\n", now);
        assert_eq!(
            next_input_now(&mut session, &rules, now),
            Input::Event(line("/nick ada"))
        );
        // The chat waits for the other servers' answer.
        session.hold(true);
        assert!(!session.wants_input());
        assert_eq!(next_input_now(&mut session, &rules, now), Input::Paused);
        session.hold(false);
        let (events, next) = drain(&mut session, &rules, now);
        assert_eq!(events, [line("hello")]);
        assert_eq!(next, Input::NeedMore);
    }

    fn next_input_now(session: &mut Session, rules: &Rules, now: Instant) -> Input {
        session.next_input(rules, now)
    }

    #[test]
    fn only_lines_cost_tokens() {
        let rules = Rules {
            rate: RateLimit::new(1, 1),
            ..rules()
        };
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        // A telnet request, then a line: the request is answered (and the
        // IAC makes the server ask for BINARY) without spending the one
        // token the line needs.
        session.received(&[255, 253, 1], start);
        session.received(b"hello\r\n", start);
        let (events, next) = drain(&mut session, &rules, start);
        assert_eq!(
            events,
            [
                Decoded::TelnetReply([255, 253, 0]),
                Decoded::TelnetReply([255, 252, 1]),
                line("hello")
            ]
        );
        assert_eq!(next, Input::NeedMore);
    }

    #[test]
    fn a_flooder_gets_exactly_the_rate_over_ten_virtual_seconds() {
        let rules = Rules {
            rate: RateLimit::new(20, 5),
            ..rules()
        };
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        let mut now = start;
        let mut lines = 0;
        session.received(&b"x\r\n".repeat(1000), now);
        while now < start + 10 * SECOND {
            let (events, _) = drain(&mut session, &rules, now);
            lines += events.len();
            match session.poll_timeout(&rules) {
                Some(at) => now = at,
                None => break,
            }
            session.handle_timeout(&rules, now);
        }
        // A burst of 5, then 20 a second.
        assert!((204..=206).contains(&lines), "{lines}");
    }

    #[test]
    fn an_ended_session_takes_no_input_and_keeps_its_first_cause() {
        let rules = rules();
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        session.received(b"hello\r\n", start);
        session.end(Phase::Closing, CloseCause::Chat(Close::Quit));
        session.end(Phase::Dead, CloseCause::Reset);
        assert_eq!(session.phase(), Phase::Dead);
        assert_eq!(session.cause(), Some(CloseCause::Chat(Close::Quit)));
        assert_eq!(session.next_input(&rules, start), Input::Stopped);
        assert_eq!(session.poll_timeout(&rules), None);
    }

    #[test]
    fn deadlines_beyond_the_clock_are_never_rather_than_a_panic() {
        let rules = Rules {
            idle_timeout: Some(Duration::MAX),
            write_timeout: Duration::MAX,
            ..rules()
        };
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        session.output_queued(true, start);
        assert_eq!(session.poll_timeout(&rules), None);
        assert_eq!(session.handle_timeout(&rules, start + SECOND), None);
    }
    /// The reactor's side of a stall deadline, as in `timeouts.rs`: a
    /// write attempt that takes `written` bytes, a look at the kernel's
    /// queue, then the verdict.
    fn probe(
        session: &mut Session,
        rules: &Rules,
        written: usize,
        queue: usize,
        now: Instant,
    ) -> bool {
        assert_eq!(
            session.handle_timeout(rules, now),
            Some(Expired::WriteStall)
        );
        session.output_written(written, false, now);
        session.kernel_queue_seen(queue, now);
        session.is_stalled(rules, now)
    }

    /// Output queued and written in part; the socket then blocks with
    /// `queue` bytes in the kernel, as the reactor reports after a write.
    fn blocked_with(session: &mut Session, queue: usize, now: Instant) {
        session.output_queued(true, now);
        session.output_written(1000, false, now);
        assert!(session.wants_kernel_queue());
        session.kernel_queue_seen(queue, now);
        assert!(!session.wants_kernel_queue());
    }

    #[test]
    fn a_reader_that_takes_nothing_is_stalled_exactly_at_the_write_timeout() {
        let rules = rules();
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        blocked_with(&mut session, 100_000, start);
        assert_eq!(session.poll_timeout(&rules), Some(start + 30 * SECOND));
        let just_before = start + 30 * SECOND - Duration::from_millis(1);
        assert_eq!(session.handle_timeout(&rules, just_before), None);
        assert!(probe(&mut session, &rules, 0, 100_000, start + 30 * SECOND));
    }

    #[test]
    fn a_kernel_queue_that_shrinks_however_little_is_never_a_stall() {
        let rules = Rules {
            idle_timeout: None,
            ..rules()
        };
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        blocked_with(&mut session, 100_000, start);
        let mut now = start;
        let mut queue = 100_000;
        // A reader taking one byte per write timeout, never enough for the
        // socket to take a write: kept for a hundred periods.
        for _ in 0..100 {
            now += 30 * SECOND;
            queue -= 1;
            assert!(!probe(&mut session, &rules, 0, queue, now));
            assert_eq!(session.poll_timeout(&rules), Some(now + 30 * SECOND));
        }
        // Then it stops reading: gone one write timeout after the last look
        // that saw it move.
        assert!(probe(&mut session, &rules, 0, queue, now + 30 * SECOND));
    }

    #[test]
    fn a_write_taken_at_the_deadline_is_movement() {
        let rules = Rules {
            idle_timeout: None,
            ..rules()
        };
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        blocked_with(&mut session, 100_000, start);
        let deadline = start + 30 * SECOND;
        // The write fills the kernel queue again, so it looks no smaller.
        assert!(!probe(&mut session, &rules, 500, 100_000, deadline));
        assert_eq!(session.poll_timeout(&rules), Some(deadline + 30 * SECOND));
        assert!(probe(
            &mut session,
            &rules,
            0,
            100_000,
            deadline + 30 * SECOND
        ));
    }

    #[test]
    fn without_a_reference_look_a_full_kernel_queue_proves_nothing() {
        let rules = rules();
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        // The look after the write failed (no SIOCOUTQ): the first look at
        // the deadline has nothing to compare with.
        session.output_queued(true, start);
        assert!(probe(&mut session, &rules, 0, 50_000, start + 30 * SECOND));
    }

    #[test]
    fn a_growing_queue_after_the_look_is_not_movement() {
        let rules = rules();
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        blocked_with(&mut session, 100_000, start);
        assert!(probe(&mut session, &rules, 0, 100_001, start + 30 * SECOND));
    }

    #[test]
    fn a_drained_queue_needs_no_look_and_has_no_deadline() {
        let rules = Rules {
            idle_timeout: None,
            ..rules()
        };
        let start = Instant::now();
        let mut session = Session::new(&rules, start);
        blocked_with(&mut session, 100_000, start);
        session.output_written(10, true, start + SECOND);
        assert!(!session.wants_kernel_queue());
        assert_eq!(session.poll_timeout(&rules), None);
        session.kernel_queue_seen(0, start + SECOND);
        assert!(!session.is_stalled(&rules, start + 60 * SECOND));
    }
}
