//! One connection to Redis as a sans-IO state machine.
//!
//! The socket side puts what it read into [`LinkIo::input_mut`] and writes
//! out [`LinkIo::output`]; everything else (the handshake, matching replies
//! to commands, telling pushed messages apart) happens here, so it is tested
//! by feeding bytes, without a Redis.
//!
//! Two roles, two types, because Redis itself treats them differently: a
//! [`CommandLink`] pipelines commands and gets one reply per command in
//! order; a [`SubscriberLink`] only (un)subscribes and then receives pushed
//! messages, which answer no command.
//!
//! Decoding uses `redis-protocol`'s `bytes` API: each frame is split off the
//! read buffer and frozen, so a message payload is a `Bytes` slice of what
//! the socket read, handed on without a copy. Encoding is done here: a
//! command is an array of bulk strings, short enough to write by hand, and
//! doing so lets a `PUBLISH` payload be assembled from parts (a header and
//! the chat's own batch buffer) with one copy into the output buffer.
//!
//! RESP2 is spoken (no `HELLO 3`): in RESP2 the subscriber's pushes and the
//! command replies live on different connections, which is what we want.

use std::collections::VecDeque;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::types::BytesFrame;

use super::url::RedisUrl;

/// A reply from Redis, decoupled from the codec's own frame type so that a
/// fake Redis in tests (and the cluster state machine) need not know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK` and other simple strings.
    Status(Bytes),
    /// `-ERR ...`: Redis refused the command. The link itself is fine.
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    /// A nil bulk string or nil array (`GET` of a missing key, `SET NX`
    /// that did not set).
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Status(s) if s.as_ref() == b"OK")
    }

    pub fn integer(&self) -> Option<i64> {
        match self {
            Reply::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Reply::Bulk(b) | Reply::Status(b) => Some(b),
            _ => None,
        }
    }

    fn from_frame(frame: BytesFrame) -> Reply {
        match frame {
            BytesFrame::SimpleString(s) => Reply::Status(s),
            BytesFrame::Error(e) => Reply::Error(e.to_string()),
            BytesFrame::Integer(n) => Reply::Integer(n),
            BytesFrame::BulkString(b) => Reply::Bulk(b),
            BytesFrame::Array(items) => {
                Reply::Array(items.into_iter().map(Reply::from_frame).collect())
            }
            BytesFrame::Null => Reply::Nil,
        }
    }
}

/// Why a link is unusable. The caller drops it, settles the commands it
/// still had waiting ([`CommandLink::take_unanswered`]) and reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// Redis answered a handshake step with an error (a wrong password,
    /// a database that does not exist).
    Refused { step: &'static str, message: String },
    /// Bytes that are not RESP, or a frame we have no use for.
    Protocol(String),
    /// A frame grew past the input limit without completing.
    FrameTooLarge { limit: usize },
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Refused { step, message } => write!(f, "Redis refused {step}: {message}"),
            LinkError::Protocol(what) => write!(f, "Redis protocol error: {what}"),
            LinkError::FrameTooLarge { limit } => {
                write!(f, "a reply from Redis exceeds {limit} bytes")
            }
        }
    }
}

impl std::error::Error for LinkError {}

/// The output queue is at its byte cap: the command was not queued. The
/// caller drops it and counts the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the Redis output queue is full")
    }
}

impl std::error::Error for QueueFull {}

/// Memory bounds of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLimits {
    /// Unsent bytes beyond which new commands are refused.
    pub max_output: usize,
    /// Buffered bytes of one incomplete frame beyond which the link fails.
    pub max_input: usize,
}

impl Default for LinkLimits {
    fn default() -> LinkLimits {
        LinkLimits {
            max_output: 8 << 20,
            max_input: 64 << 20,
        }
    }
}

/// The byte side of a link, which the socket wrapper drives.
pub trait LinkIo {
    /// Bytes waiting to be written.
    fn output(&self) -> &[u8];
    /// `n` bytes of [`output`](LinkIo::output) were written.
    fn advance_output(&mut self, n: usize);
    /// Where bytes read from the socket go.
    fn input_mut(&mut self) -> &mut BytesMut;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Auth,
    Select,
    Ping,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Auth => "AUTH",
            Step::Select => "SELECT",
            Step::Ping => "PING",
        }
    }
}

/// What both roles share: buffers, the handshake and decoding.
struct Core {
    out: BytesMut,
    input: BytesMut,
    limits: LinkLimits,
    /// Handshake replies still expected; they come before anything else.
    handshake: VecDeque<Step>,
    ready_reported: bool,
    failed: Option<LinkError>,
}

enum Decoded {
    Ready,
    Frame(Reply),
}

impl Core {
    fn new(url: &RedisUrl, limits: LinkLimits) -> Core {
        let mut core = Core {
            out: BytesMut::new(),
            input: BytesMut::new(),
            limits,
            handshake: VecDeque::new(),
            ready_reported: false,
            failed: None,
        };
        if let Some(password) = &url.password {
            match &url.username {
                Some(user) => core.encode(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => core.encode(&[b"AUTH", password.as_bytes()]),
            }
            core.handshake.push_back(Step::Auth);
        }
        if url.db != 0 {
            core.encode(&[b"SELECT", url.db.to_string().as_bytes()]);
            core.handshake.push_back(Step::Select);
        }
        // So that "ready" always means Redis answered, not merely that TCP
        // connected.
        if core.handshake.is_empty() {
            core.encode(&[b"PING"]);
            core.handshake.push_back(Step::Ping);
        }
        core
    }

    fn try_encode(&mut self, args: &[&[u8]]) -> Result<(), QueueFull> {
        let parts: Vec<&[&[u8]]> = args.iter().map(std::slice::from_ref).collect();
        self.encode_parts(&parts, self.limits.max_output)
    }

    fn try_encode_parts(&mut self, args: &[&[&[u8]]]) -> Result<(), QueueFull> {
        self.encode_parts(args, self.limits.max_output)
    }

    /// For the handshake, which is never refused for space.
    fn encode(&mut self, args: &[&[u8]]) {
        let parts: Vec<&[&[u8]]> = args.iter().map(std::slice::from_ref).collect();
        let _ = self.encode_parts(&parts, usize::MAX);
    }

    fn encode_parts(&mut self, args: &[&[&[u8]]], cap: usize) -> Result<(), QueueFull> {
        let len = encoded_len(args);
        if self.out.len().saturating_add(len) > cap {
            return Err(QueueFull);
        }
        self.out.reserve(len);
        put_header(&mut self.out, b'*', args.len());
        for arg in args {
            put_header(&mut self.out, b'$', arg.iter().map(|p| p.len()).sum());
            for part in *arg {
                self.out.extend_from_slice(part);
            }
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    fn fail(&mut self, error: LinkError) -> LinkError {
        self.failed = Some(error.clone());
        error
    }

    /// The next handshake completion or non-handshake frame.
    fn next(&mut self) -> Result<Option<Decoded>, LinkError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        loop {
            if self.handshake.is_empty() && !self.ready_reported {
                self.ready_reported = true;
                return Ok(Some(Decoded::Ready));
            }
            let frame = match decode_bytes_mut(&mut self.input) {
                Ok(Some((frame, _, _))) => frame,
                Ok(None) => {
                    if self.input.len() > self.limits.max_input {
                        let limit = self.limits.max_input;
                        return Err(self.fail(LinkError::FrameTooLarge { limit }));
                    }
                    return Ok(None);
                }
                Err(e) => return Err(self.fail(LinkError::Protocol(e.to_string()))),
            };
            let reply = Reply::from_frame(frame);
            match self.handshake.pop_front() {
                None => return Ok(Some(Decoded::Frame(reply))),
                Some(step) => {
                    if let Reply::Error(message) = reply {
                        let step = step.name();
                        return Err(self.fail(LinkError::Refused { step, message }));
                    }
                }
            }
        }
    }
}

fn digits(mut n: usize) -> usize {
    let mut count = 1;
    while n >= 10 {
        n /= 10;
        count += 1;
    }
    count
}

fn encoded_len(args: &[&[&[u8]]]) -> usize {
    let header = |n: usize| 1 + digits(n) + 2;
    header(args.len())
        + args
            .iter()
            .map(|arg| {
                let len: usize = arg.iter().map(|p| p.len()).sum();
                header(len) + len + 2
            })
            .sum::<usize>()
}

fn put_header(out: &mut BytesMut, kind: u8, n: usize) {
    out.put_u8(kind);
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
    out.extend_from_slice(b"\r\n");
}

/// What a command link yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEvent<T> {
    /// The handshake succeeded; comes once, before any reply.
    Ready,
    /// The reply to the command queued with `tag`. Redis errors
    /// (`Reply::Error`) arrive here too: they fail the command, not the link.
    Reply { tag: T, reply: Reply },
}

/// A connection for pipelined commands; replies come back in the order the
/// commands went out, each with its caller-chosen tag.
pub struct CommandLink<T> {
    core: Core,
    waiting: VecDeque<T>,
}

impl<T> CommandLink<T> {
    /// A link whose handshake (AUTH, SELECT, or a PING) is already queued.
    /// Commands may be queued at once: they go out after it.
    pub fn new(url: &RedisUrl, limits: LinkLimits) -> CommandLink<T> {
        CommandLink {
            core: Core::new(url, limits),
            waiting: VecDeque::new(),
        }
    }

    /// Queues a command, such as `[b"SET", key, owner, b"NX"]`.
    pub fn push_command(&mut self, tag: T, args: &[&[u8]]) -> Result<(), QueueFull> {
        self.core.try_encode(args)?;
        self.waiting.push_back(tag);
        Ok(())
    }

    /// Queues `PUBLISH channel payload` where the payload is the
    /// concatenation of `payload_parts`, copied once into the queue.
    pub fn push_publish(
        &mut self,
        tag: T,
        channel: &[u8],
        payload_parts: &[&[u8]],
    ) -> Result<(), QueueFull> {
        self.core
            .try_encode_parts(&[&[b"PUBLISH"], &[channel], payload_parts])?;
        self.waiting.push_back(tag);
        Ok(())
    }

    /// The next event from what was read so far, `None` when more input is
    /// needed. After an error the link stays failed.
    pub fn poll_event(&mut self) -> Result<Option<CommandEvent<T>>, LinkError> {
        match self.core.next()? {
            None => Ok(None),
            Some(Decoded::Ready) => Ok(Some(CommandEvent::Ready)),
            Some(Decoded::Frame(reply)) => match self.waiting.pop_front() {
                Some(tag) => Ok(Some(CommandEvent::Reply { tag, reply })),
                None => Err(self
                    .core
                    .fail(LinkError::Protocol("a reply to no command".into()))),
            },
        }
    }

    /// Commands sent or queued and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    /// The tags of every unanswered command, oldest first, so that a
    /// failed link's callers can be told.
    pub fn take_unanswered(&mut self) -> Vec<T> {
        self.waiting.drain(..).collect()
    }

    /// Whether the handshake has been answered and reported.
    pub fn is_ready(&self) -> bool {
        self.core.ready_reported
    }
}

impl<T> LinkIo for CommandLink<T> {
    fn output(&self) -> &[u8] {
        &self.core.out
    }
    fn advance_output(&mut self, n: usize) {
        let _ = self.core.out.split_to(n);
    }
    fn input_mut(&mut self) -> &mut BytesMut {
        &mut self.core.input
    }
}

/// What a subscriber link yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriberEvent {
    Ready,
    /// A published message. `pattern` is set for `PSUBSCRIBE` matches.
    /// `payload` is a slice of the read buffer.
    Message {
        channel: Bytes,
        payload: Bytes,
        pattern: Option<Bytes>,
    },
    /// Redis confirmed a `SUBSCRIBE` (or `PSUBSCRIBE`) of `channel`; `count`
    /// is how many channels and patterns this link now has.
    Subscribed {
        channel: Bytes,
        count: i64,
    },
    /// Redis confirmed an unsubscribe. `channel` is `None` when an
    /// unsubscribe-from-all found nothing to drop.
    Unsubscribed {
        channel: Option<Bytes>,
        count: i64,
    },
    /// The answer to [`SubscriberLink::ping`], proof the link is alive.
    Pong,
    /// Redis refused a command on this link (bad arguments, no permission).
    Error(String),
}

/// A connection that subscribes to channels and then only receives.
pub struct SubscriberLink {
    core: Core,
}

impl SubscriberLink {
    pub fn new(url: &RedisUrl, limits: LinkLimits) -> SubscriberLink {
        SubscriberLink {
            core: Core::new(url, limits),
        }
    }

    pub fn subscribe(&mut self, channels: &[&[u8]]) -> Result<(), QueueFull> {
        self.command(b"SUBSCRIBE", channels)
    }

    /// With no channels: from all of them.
    pub fn unsubscribe(&mut self, channels: &[&[u8]]) -> Result<(), QueueFull> {
        self.command(b"UNSUBSCRIBE", channels)
    }

    pub fn psubscribe(&mut self, patterns: &[&[u8]]) -> Result<(), QueueFull> {
        self.command(b"PSUBSCRIBE", patterns)
    }

    pub fn punsubscribe(&mut self, patterns: &[&[u8]]) -> Result<(), QueueFull> {
        self.command(b"PUNSUBSCRIBE", patterns)
    }

    /// Asks for a [`SubscriberEvent::Pong`]: a subscriber gets no replies
    /// otherwise, so this is how a silent link is told from a dead one.
    pub fn ping(&mut self) -> Result<(), QueueFull> {
        self.core.try_encode(&[b"PING"])
    }

    fn command(&mut self, name: &[u8], names: &[&[u8]]) -> Result<(), QueueFull> {
        let mut args = Vec::with_capacity(names.len() + 1);
        args.push(name);
        args.extend_from_slice(names);
        self.core.try_encode(&args)
    }

    pub fn poll_event(&mut self) -> Result<Option<SubscriberEvent>, LinkError> {
        let reply = match self.core.next()? {
            None => return Ok(None),
            Some(Decoded::Ready) => return Ok(Some(SubscriberEvent::Ready)),
            Some(Decoded::Frame(reply)) => reply,
        };
        match push_event(reply) {
            Ok(event) => Ok(Some(event)),
            Err(what) => Err(self.core.fail(LinkError::Protocol(what))),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.core.ready_reported
    }
}

impl LinkIo for SubscriberLink {
    fn output(&self) -> &[u8] {
        &self.core.out
    }
    fn advance_output(&mut self, n: usize) {
        let _ = self.core.out.split_to(n);
    }
    fn input_mut(&mut self) -> &mut BytesMut {
        &mut self.core.input
    }
}

fn push_event(reply: Reply) -> Result<SubscriberEvent, String> {
    let items = match reply {
        Reply::Error(message) => return Ok(SubscriberEvent::Error(message)),
        Reply::Array(items) => items,
        other => return Err(format!("unexpected frame for a subscriber: {other:?}")),
    };
    let mut items = items.into_iter();
    let kind = items.next();
    let rest: Vec<Reply> = items.collect();
    let kind = match &kind {
        Some(Reply::Bulk(kind)) => kind.as_ref(),
        _ => return Err("a push without a kind".into()),
    };
    let count = |reply: &Reply| reply.integer().ok_or("a count that is not an integer");
    let event = match (kind, rest.as_slice()) {
        (b"message", [Reply::Bulk(channel), Reply::Bulk(payload)]) => SubscriberEvent::Message {
            channel: channel.clone(),
            payload: payload.clone(),
            pattern: None,
        },
        (b"pmessage", [Reply::Bulk(pattern), Reply::Bulk(channel), Reply::Bulk(payload)]) => {
            SubscriberEvent::Message {
                channel: channel.clone(),
                payload: payload.clone(),
                pattern: Some(pattern.clone()),
            }
        }
        (b"subscribe" | b"psubscribe", [Reply::Bulk(channel), n]) => SubscriberEvent::Subscribed {
            channel: channel.clone(),
            count: count(n)?,
        },
        (b"unsubscribe" | b"punsubscribe", [channel, n]) => SubscriberEvent::Unsubscribed {
            channel: channel.bytes().cloned(),
            count: count(n)?,
        },
        (b"pong", _) => SubscriberEvent::Pong,
        (kind, _) => {
            return Err(format!(
                "unexpected push {:?}",
                String::from_utf8_lossy(kind)
            ))
        }
    };
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> RedisUrl {
        text.parse().unwrap()
    }

    fn sent(link: &mut impl LinkIo) -> Vec<u8> {
        let out = link.output().to_vec();
        link.advance_output(out.len());
        out
    }

    fn feed(link: &mut impl LinkIo, bytes: &[u8]) {
        link.input_mut().extend_from_slice(bytes);
    }

    #[test]
    fn handshake_with_user_password_and_db() {
        let mut link: CommandLink<u32> =
            CommandLink::new(&url("redis://bob:pw@h/3"), LinkLimits::default());
        link.push_command(7, &[b"GET", b"k"]).unwrap();
        assert_eq!(
            sent(&mut link),
            b"*3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$2\r\npw\r\n\
              *2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n\
              *2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
        assert_eq!(link.poll_event(), Ok(None));
        feed(&mut link, b"+OK\r\n+O");
        assert_eq!(link.poll_event(), Ok(None));
        assert!(!link.is_ready());
        feed(&mut link, b"K\r\n$1\r\nv\r\n");
        assert_eq!(link.poll_event(), Ok(Some(CommandEvent::Ready)));
        assert_eq!(
            link.poll_event(),
            Ok(Some(CommandEvent::Reply {
                tag: 7,
                reply: Reply::Bulk(Bytes::from_static(b"v"))
            }))
        );
        assert_eq!(link.poll_event(), Ok(None));
        assert_eq!(link.in_flight(), 0);
    }

    #[test]
    fn password_only_and_no_credentials() {
        let mut link: CommandLink<()> =
            CommandLink::new(&url("redis://:pw@h"), LinkLimits::default());
        assert_eq!(sent(&mut link), b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n");
        let mut link: CommandLink<()> = CommandLink::new(&url("redis://h"), LinkLimits::default());
        assert_eq!(sent(&mut link), b"*1\r\n$4\r\nPING\r\n");
        feed(&mut link, b"+PONG\r\n");
        assert_eq!(link.poll_event(), Ok(Some(CommandEvent::Ready)));
    }

    #[test]
    fn refused_password_fails_the_link_and_keeps_it_failed() {
        let mut link: CommandLink<u8> =
            CommandLink::new(&url("redis://:bad@h"), LinkLimits::default());
        link.push_command(1, &[b"PING"]).unwrap();
        feed(&mut link, b"-WRONGPASS invalid password\r\n-NOAUTH x\r\n");
        let error = LinkError::Refused {
            step: "AUTH",
            message: "WRONGPASS invalid password".into(),
        };
        assert_eq!(link.poll_event(), Err(error.clone()));
        assert_eq!(link.poll_event(), Err(error.clone()));
        assert_eq!(
            error.to_string(),
            "Redis refused AUTH: WRONGPASS invalid password"
        );
        assert_eq!(link.take_unanswered(), vec![1]);
    }

    #[test]
    fn pipelined_replies_match_tags_in_order_and_errors_are_replies() {
        let mut link: CommandLink<&str> =
            CommandLink::new(&url("redis://h"), LinkLimits::default());
        feed(&mut link, b"+PONG\r\n");
        assert_eq!(link.poll_event(), Ok(Some(CommandEvent::Ready)));
        link.push_command("set", &[b"SET", b"k", b"v", b"NX"])
            .unwrap();
        link.push_command("bad", &[b"NOPE"]).unwrap();
        link.push_command("incr", &[b"INCRBY", b"g", b"100"])
            .unwrap();
        link.push_command("get", &[b"GET", b"none"]).unwrap();
        link.push_command("multi", &[b"MGET", b"a", b"b"]).unwrap();
        assert_eq!(link.in_flight(), 5);
        feed(
            &mut link,
            b"$-1\r\n-ERR unknown command 'NOPE'\r\n:100\r\n$-1\r\n*2\r\n$1\r\nx\r\n$-1\r\n",
        );
        let mut replies = Vec::new();
        while let Some(event) = link.poll_event().unwrap() {
            match event {
                CommandEvent::Reply { tag, reply } => replies.push((tag, reply)),
                CommandEvent::Ready => panic!("ready twice"),
            }
        }
        assert_eq!(
            replies,
            vec![
                ("set", Reply::Nil),
                ("bad", Reply::Error("ERR unknown command 'NOPE'".into())),
                ("incr", Reply::Integer(100)),
                ("get", Reply::Nil),
                (
                    "multi",
                    Reply::Array(vec![Reply::Bulk(Bytes::from_static(b"x")), Reply::Nil])
                ),
            ]
        );
    }

    #[test]
    fn a_reply_to_nothing_is_a_protocol_error() {
        let mut link: CommandLink<u8> = CommandLink::new(&url("redis://h"), LinkLimits::default());
        feed(&mut link, b"+PONG\r\n:1\r\n");
        assert_eq!(link.poll_event(), Ok(Some(CommandEvent::Ready)));
        assert!(matches!(link.poll_event(), Err(LinkError::Protocol(_))));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut link: CommandLink<u8> = CommandLink::new(&url("redis://h"), LinkLimits::default());
        feed(&mut link, b"HTTP/1.1 400 Bad Request\r\n");
        assert!(matches!(link.poll_event(), Err(LinkError::Protocol(_))));
    }

    #[test]
    fn output_cap_refuses_commands_but_not_the_handshake() {
        let limits = LinkLimits {
            max_output: 40,
            max_input: 1024,
        };
        let mut link: CommandLink<u8> =
            CommandLink::new(&url("redis://:a-long-password@h"), limits);
        let handshake = link.output().len();
        assert!(handshake > 30);
        assert_eq!(link.push_command(1, &[b"SET", b"k", b"v"]), Err(QueueFull));
        assert_eq!(link.in_flight(), 0);
        link.advance_output(handshake);
        // `*3 $3 SET $1 k $1 v` is 27 bytes, `GET k` 20.
        link.push_command(1, &[b"SET", b"k", b"v"]).unwrap();
        assert_eq!(link.output().len(), 27);
        assert_eq!(link.push_command(2, &[b"GET", b"k"]), Err(QueueFull));
        link.advance_output(10);
        link.push_command(2, &[b"GET", b"k"]).unwrap();
        assert_eq!(link.in_flight(), 2);
    }

    #[test]
    fn publish_payload_from_parts() {
        let mut link: CommandLink<u8> = CommandLink::new(&url("redis://h"), LinkLimits::default());
        sent(&mut link);
        link.push_publish(9, b"p:room:x", &[b"HDR", b"line1\r\n", b""])
            .unwrap();
        assert_eq!(
            sent(&mut link),
            b"*3\r\n$7\r\nPUBLISH\r\n$8\r\np:room:x\r\n$10\r\nHDRline1\r\n\r\n"
        );
    }

    #[test]
    fn incomplete_frame_past_the_input_cap_fails() {
        let limits = LinkLimits {
            max_output: 1024,
            max_input: 16,
        };
        let mut link: CommandLink<u8> = CommandLink::new(&url("redis://h"), limits);
        feed(&mut link, b"+PONG\r\n$100\r\n0123456789012345678");
        assert_eq!(link.poll_event(), Ok(Some(CommandEvent::Ready)));
        assert_eq!(
            link.poll_event(),
            Err(LinkError::FrameTooLarge { limit: 16 })
        );
    }

    #[test]
    fn subscriber_gets_confirmations_messages_and_pongs() {
        let mut link = SubscriberLink::new(&url("redis://:pw@h"), LinkLimits::default());
        link.subscribe(&[b"a", b"b"]).unwrap();
        link.psubscribe(&[b"n:*"]).unwrap();
        link.ping().unwrap();
        assert_eq!(
            sent(&mut link),
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n\
              *3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n\
              *2\r\n$10\r\nPSUBSCRIBE\r\n$3\r\nn:*\r\n\
              *1\r\n$4\r\nPING\r\n"
        );
        feed(
            &mut link,
            b"+OK\r\n\
              *3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
              *3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n\
              *3\r\n$10\r\npsubscribe\r\n$3\r\nn:*\r\n:3\r\n\
              *2\r\n$4\r\npong\r\n$0\r\n\r\n\
              *3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n\
              *4\r\n$8\r\npmessage\r\n$3\r\nn:*\r\n$3\r\nn:1\r\n$2\r\nhi\r\n\
              *3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n\
              -ERR wrong number of arguments\r\n",
        );
        let b = |s: &'static [u8]| Bytes::from_static(s);
        let mut events = Vec::new();
        while let Some(event) = link.poll_event().unwrap() {
            events.push(event);
        }
        assert_eq!(
            events,
            vec![
                SubscriberEvent::Ready,
                SubscriberEvent::Subscribed {
                    channel: b(b"a"),
                    count: 1
                },
                SubscriberEvent::Subscribed {
                    channel: b(b"b"),
                    count: 2
                },
                SubscriberEvent::Subscribed {
                    channel: b(b"n:*"),
                    count: 3
                },
                SubscriberEvent::Pong,
                SubscriberEvent::Message {
                    channel: b(b"a"),
                    payload: b(b"hello"),
                    pattern: None
                },
                SubscriberEvent::Message {
                    channel: b(b"n:1"),
                    payload: b(b"hi"),
                    pattern: Some(b(b"n:*"))
                },
                SubscriberEvent::Unsubscribed {
                    channel: None,
                    count: 0
                },
                SubscriberEvent::Error("ERR wrong number of arguments".into()),
            ]
        );
    }

    #[test]
    fn message_payload_is_a_slice_of_the_read_buffer() {
        let mut link = SubscriberLink::new(&url("redis://h"), LinkLimits::default());
        feed(
            &mut link,
            b"+PONG\r\n*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$4\r\nbody\r\n",
        );
        let start = link.input_mut().as_ptr() as usize;
        let end = start + link.input_mut().len();
        assert_eq!(link.poll_event(), Ok(Some(SubscriberEvent::Ready)));
        let Ok(Some(SubscriberEvent::Message { payload, .. })) = link.poll_event() else {
            panic!("no message");
        };
        let at = payload.as_ptr() as usize;
        assert!(
            start <= at && at + payload.len() <= end,
            "payload was copied"
        );
    }

    #[test]
    fn unknown_push_fails_the_subscriber() {
        let mut link = SubscriberLink::new(&url("redis://h"), LinkLimits::default());
        feed(&mut link, b"+PONG\r\n:5\r\n");
        assert_eq!(link.poll_event(), Ok(Some(SubscriberEvent::Ready)));
        assert!(matches!(link.poll_event(), Err(LinkError::Protocol(_))));
    }

    #[test]
    fn encoded_length_matches_for_long_arguments() {
        let big = vec![b'x'; 12345];
        let mut link: CommandLink<u8> = CommandLink::new(&url("redis://h"), LinkLimits::default());
        sent(&mut link);
        link.push_command(1, &[b"SET", b"k", &big]).unwrap();
        let out = sent(&mut link);
        assert_eq!(out.len(), encoded_len(&[&[b"SET"], &[b"k"], &[&big]]));
        assert!(out.starts_with(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$12345\r\nxxx"));
        assert!(out.ends_with(b"xx\r\n"));
    }
}
