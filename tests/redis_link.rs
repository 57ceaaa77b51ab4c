//! The Redis link and its socket against a real, private `redis-server`,
//! driven by a small `mio` loop as the reactor will drive them.

mod redis_support;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use apollonion::cluster::link::{
    CommandEvent, CommandLink, LinkError, LinkIo, LinkLimits, Reply, SubscriberEvent,
    SubscriberLink,
};
use apollonion::cluster::socket::{ReadStatus, RedisSocket};
use apollonion::cluster::state::{ClaimOutcome, Cluster, ClusterEvent, ClusterSettings, RequestId};
use apollonion::cluster::url::RedisUrl;
use apollonion::cluster::wire::{Envelope, Header, Message, RoomBatch};
use bytes::Bytes;
use mio::{Events, Poll, Token};
use redis_support::RedisServer;

const PATIENCE: Duration = Duration::from_secs(10);
const READ_BUDGET: usize = 1 << 20;

/// One link over one socket, registered in the test's `Poll`.
struct Conn<L> {
    socket: RedisSocket,
    link: L,
}

/// What happened to a connection while waiting for its next event.
#[derive(Debug)]
enum Broken {
    Io(std::io::Error),
    Link(LinkError),
    Closed,
}

struct Loop {
    poll: Poll,
    events: Events,
    next_token: usize,
}

impl Loop {
    fn new() -> Loop {
        Loop {
            poll: Poll::new().expect("poll"),
            events: Events::with_capacity(64),
            next_token: 0,
        }
    }

    fn connect<L>(&mut self, addr: SocketAddr, link: L) -> Conn<L> {
        let mut socket = RedisSocket::connect(addr).expect("connect");
        socket
            .register(self.poll.registry(), Token(self.next_token))
            .expect("register");
        self.next_token += 1;
        Conn { socket, link }
    }

    /// Pumps `conn` until `next` yields an event. Every pass writes and
    /// reads before waiting, so a readiness edge consumed while another
    /// connection was being driven is not lost.
    fn next_event<L: LinkIo, E>(
        &mut self,
        conn: &mut Conn<L>,
        mut next: impl FnMut(&mut L) -> Result<Option<E>, LinkError>,
    ) -> Result<E, Broken> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(event) = next(&mut conn.link).map_err(Broken::Link)? {
                return Ok(event);
            }
            if conn.socket.poll_connected().map_err(Broken::Io)? {
                conn.socket.flush(&mut conn.link).map_err(Broken::Io)?;
                let read = conn
                    .socket
                    .fill(&mut conn.link, READ_BUDGET)
                    .map_err(Broken::Io)?;
                if let Some(event) = next(&mut conn.link).map_err(Broken::Link)? {
                    return Ok(event);
                }
                match read.status {
                    ReadStatus::Closed => return Err(Broken::Closed),
                    ReadStatus::BudgetSpent => continue,
                    ReadStatus::Drained => {}
                }
            }
            let now = Instant::now();
            assert!(now < deadline, "no event from Redis within {PATIENCE:?}");
            self.poll
                .poll(&mut self.events, Some(deadline - now))
                .expect("poll");
        }
    }

    fn reply<T: std::fmt::Debug>(&mut self, conn: &mut Conn<CommandLink<T>>) -> (T, Reply) {
        match self.next_event(conn, CommandLink::poll_event) {
            Ok(CommandEvent::Reply { tag, reply }) => (tag, reply),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn ready<T: std::fmt::Debug>(&mut self, conn: &mut Conn<CommandLink<T>>) {
        match self.next_event(conn, CommandLink::poll_event) {
            Ok(CommandEvent::Ready) => {}
            other => panic!("expected the handshake to succeed, got {other:?}"),
        }
    }

    fn subscriber_event(&mut self, conn: &mut Conn<SubscriberLink>) -> SubscriberEvent {
        self.next_event(conn, SubscriberLink::poll_event)
            .unwrap_or_else(|e| panic!("subscriber broke: {e:?}"))
    }

    /// A subscriber link to `addr`, ready and subscribed to `channel`.
    fn subscribed(
        &mut self,
        addr: SocketAddr,
        url: &RedisUrl,
        channel: &'static [u8],
    ) -> Conn<SubscriberLink> {
        let mut sub = self.connect(addr, SubscriberLink::new(url, LinkLimits::default()));
        sub.link.subscribe(&[channel]).unwrap();
        assert_eq!(self.subscriber_event(&mut sub), SubscriberEvent::Ready);
        assert_eq!(
            self.subscriber_event(&mut sub),
            SubscriberEvent::Subscribed {
                channel: Bytes::from_static(channel),
                count: 1
            }
        );
        sub
    }
}

fn url(text: &str) -> RedisUrl {
    text.parse().expect("test URL")
}

fn bulk(text: &'static [u8]) -> Reply {
    Reply::Bulk(Bytes::from_static(text))
}

#[test]
fn password_handshake_select_and_pipelined_commands() {
    let Some(redis) = RedisServer::start_with(Some("s3cret"), &[]) else {
        return;
    };
    let mut lp = Loop::new();
    let mut db2: Conn<CommandLink<&str>> = lp.connect(
        redis.addr(),
        CommandLink::new(&url(&redis.url(2)), LinkLimits::default()),
    );
    // Queued before the connect completes: it goes out after the handshake.
    db2.link
        .push_command("claim", &[b"SET", b"nick:ada", b"node-1", b"NX"])
        .unwrap();
    lp.ready(&mut db2);
    assert_eq!(lp.reply(&mut db2), ("claim", Reply::Status("OK".into())));

    db2.link
        .push_command("again", &[b"SET", b"nick:ada", b"node-2", b"NX"])
        .unwrap();
    db2.link
        .push_command("owner", &[b"GET", b"nick:ada"])
        .unwrap();
    db2.link.push_command("bogus", &[b"NOSUCHCOMMAND"]).unwrap();
    db2.link
        .push_command("guests", &[b"INCRBY", b"guest", b"100"])
        .unwrap();
    assert_eq!(db2.link.in_flight(), 4);
    assert_eq!(lp.reply(&mut db2), ("again", Reply::Nil));
    assert_eq!(lp.reply(&mut db2), ("owner", bulk(b"node-1")));
    let (tag, reply) = lp.reply(&mut db2);
    assert_eq!(tag, "bogus");
    assert!(
        matches!(&reply, Reply::Error(message) if message.starts_with("ERR unknown command")),
        "{reply:?}"
    );
    assert_eq!(lp.reply(&mut db2), ("guests", Reply::Integer(100)));

    // SELECT took effect: database 0 does not have the key.
    let mut db0: Conn<CommandLink<u8>> = lp.connect(
        redis.addr(),
        CommandLink::new(&url(&redis.url(0)), LinkLimits::default()),
    );
    db0.link.push_command(1, &[b"GET", b"nick:ada"]).unwrap();
    lp.ready(&mut db0);
    assert_eq!(lp.reply(&mut db0), (1, Reply::Nil));
}

#[test]
fn wrong_password_is_refused_with_redis_words() {
    let Some(redis) = RedisServer::start_with(Some("right"), &[]) else {
        return;
    };
    let mut lp = Loop::new();
    let wrong = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let mut conn: Conn<CommandLink<u8>> = lp.connect(
        redis.addr(),
        CommandLink::new(&url(&wrong), LinkLimits::default()),
    );
    conn.link.push_command(1, &[b"PING"]).unwrap();
    match lp.next_event(&mut conn, CommandLink::poll_event) {
        Err(Broken::Link(LinkError::Refused { step, message })) => {
            assert_eq!(step, "AUTH");
            assert!(message.contains("WRONGPASS"), "{message}");
        }
        other => panic!("expected AUTH to be refused, got {other:?}"),
    }
    assert_eq!(conn.link.take_unanswered(), vec![1]);
}

#[test]
fn acl_user_and_password() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut lp = Loop::new();
    let mut admin: Conn<CommandLink<u8>> = lp.connect(
        redis.addr(),
        CommandLink::new(&url(&redis.url(0)), LinkLimits::default()),
    );
    admin
        .link
        .push_command(
            1,
            &[
                b"ACL", b"SETUSER", b"chat", b"on", b">p@ss:w", b"~*", b"&*", b"+@all",
            ],
        )
        .unwrap();
    lp.ready(&mut admin);
    assert_eq!(lp.reply(&mut admin), (1, Reply::Status("OK".into())));

    // The password's ':' and '@' go percent-encoded in the URL.
    let user_url = format!("redis://chat:p%40ss%3Aw@127.0.0.1:{}", redis.port);
    let mut user: Conn<CommandLink<u8>> = lp.connect(
        redis.addr(),
        CommandLink::new(&url(&user_url), LinkLimits::default()),
    );
    user.link.push_command(2, &[b"ACL", b"WHOAMI"]).unwrap();
    lp.ready(&mut user);
    assert_eq!(lp.reply(&mut user), (2, bulk(b"chat")));
}

#[test]
fn published_batch_reaches_the_subscriber_intact() {
    let Some(redis) = RedisServer::start_with(Some("pw"), &[]) else {
        return;
    };
    let mut lp = Loop::new();
    let redis_url = url(&redis.url(0));
    let mut sub = lp.subscribed(redis.addr(), &redis_url, b"chat:room:lobby");

    let mut publisher: Conn<CommandLink<u32>> = lp.connect(
        redis.addr(),
        CommandLink::new(&redis_url, LinkLimits::default()),
    );
    lp.ready(&mut publisher);
    // A batch big enough to arrive over several reads.
    let mut lines = Vec::new();
    for i in 0..5000 {
        lines.extend_from_slice(format!("ada: line {i}\r\n").as_bytes());
    }
    let mut head = Vec::new();
    let header = Header {
        origin: 7,
        seq: 1000,
    };
    apollonion::cluster::wire::encode_room_batch_header(&mut head, header, 5000, &[]);
    publisher
        .link
        .push_publish(1, b"chat:room:lobby", &[&head, &lines])
        .unwrap();
    // PUBLISH answers how many subscribers got it.
    assert_eq!(lp.reply(&mut publisher), (1, Reply::Integer(1)));

    let SubscriberEvent::Message {
        channel,
        payload,
        pattern,
    } = lp.subscriber_event(&mut sub)
    else {
        panic!("expected the message");
    };
    assert_eq!(&channel[..], b"chat:room:lobby");
    assert_eq!(pattern, None);
    let envelope = Envelope::decode(&payload).expect("our own format");
    assert_eq!(envelope.header, header);
    let Message::RoomBatch(RoomBatch {
        line_count,
        lines: received,
        ..
    }) = envelope.message
    else {
        panic!("not a room batch");
    };
    assert_eq!(line_count, 5000);
    assert_eq!(received, Bytes::from(lines));

    // The subscriber is alive and answers pings.
    sub.link.ping().unwrap();
    assert_eq!(lp.subscriber_event(&mut sub), SubscriberEvent::Pong);
}

#[test]
fn connect_to_a_closed_port_fails() {
    // A port that was just free; nothing listens there now.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut lp = Loop::new();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut conn: Conn<CommandLink<u8>> = lp.connect(
        addr,
        CommandLink::new(&url("redis://127.0.0.1"), LinkLimits::default()),
    );
    match lp.next_event(&mut conn, CommandLink::poll_event) {
        Err(Broken::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("expected the connect to be refused, got {other:?}"),
    }
}

#[test]
fn redis_restart_closes_the_link_and_a_new_one_works() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let mut lp = Loop::new();
    let redis_url = url(&redis.url(0));
    let mut sub = lp.subscribed(redis.addr(), &redis_url, b"c");

    redis.restart();
    match lp.next_event(&mut sub, SubscriberLink::poll_event) {
        Err(Broken::Closed) | Err(Broken::Io(_)) => {}
        other => panic!("expected the link to break, got {other:?}"),
    }
    sub.socket.deregister(lp.poll.registry()).unwrap();

    // A new link to the restarted Redis gets ready and subscribes.
    lp.subscribed(redis.addr(), &redis_url, b"c");
}

/// Carries a `Cluster`'s requests over a real link until none is left
/// waiting, as the reactor will; the scripts run in real Redis's Lua.
fn exchange(lp: &mut Loop, conn: &mut Conn<CommandLink<RequestId>>, cluster: &mut Cluster) {
    let mut sent = 0;
    while let Some(request) = cluster.poll_request() {
        let args: Vec<&[u8]> = request.args.iter().map(|a| a.as_ref()).collect();
        conn.link.push_command(request.id, &args).unwrap();
        sent += 1;
    }
    for _ in 0..sent {
        let (id, reply) = lp.reply(conn);
        assert!(!matches!(reply, Reply::Error(_)), "{reply:?}");
        cluster.on_reply(id, reply);
    }
}

#[test]
fn cluster_claims_and_guest_blocks_against_real_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut lp = Loop::new();
    let redis_url = url(&redis.url(0));
    let mut nodes: Vec<(Cluster, Conn<CommandLink<RequestId>>)> = (1..=2)
        .map(|id| {
            let mut conn = lp.connect(
                redis.addr(),
                CommandLink::new(&redis_url, LinkLimits::default()),
            );
            lp.ready(&mut conn);
            let mut cluster = Cluster::new(ClusterSettings::new("it", id));
            cluster.link_up(Instant::now());
            (cluster, conn)
        })
        .collect();
    for (cluster, conn) in &mut nodes {
        exchange(&mut lp, conn, cluster);
    }
    let outcome = |cluster: &mut Cluster| match cluster.poll_event() {
        Some(ClusterEvent::NickClaim { outcome, .. }) => outcome,
        other => panic!("expected a claim answer, got {other:?}"),
    };

    let [(a, a_conn), (b, b_conn)] = nodes.as_mut_slice() else {
        unreachable!()
    };
    a.claim_nick(1, "ada");
    exchange(&mut lp, a_conn, a);
    assert_eq!(outcome(a), ClaimOutcome::Granted);
    b.claim_nick(2, "ada");
    exchange(&mut lp, b_conn, b);
    assert_eq!(outcome(b), ClaimOutcome::Taken);
    // The holder re-claiming (after a reconnect) is granted.
    a.claim_nick(3, "ada");
    exchange(&mut lp, a_conn, a);
    assert_eq!(outcome(a), ClaimOutcome::Granted);
    // A release by a node that does not hold it frees nothing.
    b.release_nick("ada");
    exchange(&mut lp, b_conn, b);
    b.claim_nick(4, "ada");
    exchange(&mut lp, b_conn, b);
    assert_eq!(outcome(b), ClaimOutcome::Taken);
    a.release_nick("ada");
    exchange(&mut lp, a_conn, a);
    b.claim_nick(5, "ada");
    exchange(&mut lp, b_conn, b);
    assert_eq!(outcome(b), ClaimOutcome::Granted);

    let ga = a
        .take_guest_number()
        .expect("a block was reserved at link up");
    let gb = b
        .take_guest_number()
        .expect("a block was reserved at link up");
    assert_ne!(ga, gb);

    // The alive key and the node's name set, as Redis holds them.
    b_conn
        .link
        .push_command(0, &[b"PTTL", b"it:alive:1"])
        .unwrap();
    b_conn
        .link
        .push_command(0, &[b"SMEMBERS", b"it:nicks:2"])
        .unwrap();
    b_conn
        .link
        .push_command(0, &[b"SMEMBERS", b"it:nicks:1"])
        .unwrap();
    let (_, ttl) = lp.reply(b_conn);
    let ttl = ttl.integer().expect("PTTL answers a number");
    assert!((1..=10_000).contains(&ttl), "alive key TTL {ttl} ms");
    assert_eq!(lp.reply(b_conn).1, Reply::Array(vec![bulk(b"ada")]));
    assert_eq!(lp.reply(b_conn).1, Reply::Array(vec![]));
}
