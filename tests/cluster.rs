//! Cluster mode (SPEC §4): two or three servers in-process, one private
//! `redis-server`, clients on different servers. Every wait is on a line
//! the server sends, never a sleep.

mod cluster_support;
mod common;
mod redis_support;

use std::net::{Ipv4Addr, TcpListener};

use apollonion::cluster::url::RedisUrl;
use cluster_support::{answer, claim, enter, gather};
use common::{Client, TestServer};
use redis_support::RedisServer;

/// A Redis and `count` servers joined through it.
struct Cluster {
    servers: Vec<TestServer>,
    _redis: RedisServer,
}

fn cluster(count: usize) -> Option<Cluster> {
    let redis = RedisServer::start()?;
    let url: RedisUrl = redis.url(0).parse().expect("test URL");
    let servers = (0..count)
        .map(|_| {
            TestServer::start_with(|config| {
                config.redis = Some(url.clone());
                config.cluster_name = "test".into();
            })
        })
        .collect();
    Some(Cluster {
        servers,
        _redis: redis,
    })
}

/// A client of `server` named `nick` (see `claim`).
fn member(server: &TestServer, nick: &str) -> Client {
    let (mut client, _) = server.join();
    claim(&mut client, nick);
    client
}

#[test]
fn a_line_said_on_one_server_reaches_the_room_on_the_others_and_not_the_speaker() {
    let Some(cluster) = cluster(3) else { return };
    let [a, b, c] = &cluster.servers[..] else {
        unreachable!()
    };
    let mut ann = member(a, "ann");
    let mut bob = member(b, "bob");
    let mut cat = member(c, "cat");
    gather(
        "#t",
        &mut [(&mut ann, "ann"), (&mut bob, "bob"), (&mut cat, "cat")],
    );

    ann.send("hello from A");
    ann.send("/me waves");
    for far in [&mut bob, &mut cat] {
        assert_eq!(answer(far), "ann: hello from A");
        assert_eq!(answer(far), "* ann waves");
    }
    bob.send("hi from B");
    assert_eq!(answer(&mut ann), "bob: hi from B");
    assert_eq!(answer(&mut cat), "bob: hi from B");
    // The speaker got none of its own lines: the next thing it reads after
    // bob's line is the answer to its own question.
    ann.send("/nick Ann");
    assert_eq!(answer(&mut ann), "* you are now Ann");
    bob.read_until("* ann is now known as Ann");
    cat.read_until("* ann is now known as Ann");
    cat.send("/join #lobby");
    assert!(answer(&mut cat).starts_with("* you joined #lobby ("));
    ann.read_until("* cat left #t");
    bob.read_until("* cat left #t");
}

#[test]
fn a_nickname_held_on_another_server_is_refused_in_any_case() {
    let Some(cluster) = cluster(2) else { return };
    let _alice = member(&cluster.servers[0], "Alice");
    let (mut other, guest) = cluster.servers[1].join();
    // Until B has joined, the claim is unanswered; then it is refused.
    loop {
        other.send("/nick aLICE");
        let line = answer(&mut other);
        if line == "! nickname aLICE is taken" {
            break;
        }
        assert_eq!(line, "! the other servers did not answer, try again");
    }
    other.send("/nick alice2");
    assert_eq!(answer(&mut other), "* you are now alice2");
    assert!(guest.starts_with("guest-"));
}

#[test]
fn who_and_rooms_list_the_members_of_every_server() {
    let Some(cluster) = cluster(2) else { return };
    let mut ann = member(&cluster.servers[0], "ann");
    let mut bob = member(&cluster.servers[1], "bob");
    gather("#both", &mut [(&mut ann, "ann"), (&mut bob, "bob")]);
    ann.send("/who");
    assert_eq!(answer(&mut ann), "* in #both: ann, bob");
    bob.send("/who");
    assert_eq!(answer(&mut bob), "* in #both: ann, bob");
    ann.send("/nick Ann2");
    assert_eq!(answer(&mut ann), "* you are now Ann2");
    bob.read_until("* ann is now known as Ann2");
    bob.send("/who");
    assert_eq!(answer(&mut bob), "* in #both: Ann2, bob");
    bob.send("/rooms");
    let rooms = answer(&mut bob);
    assert!(rooms.starts_with("* rooms: #both (2), #lobby ("), "{rooms}");
    assert!(rooms.contains("#both (2)"), "{rooms}");
}

#[test]
fn a_join_counts_the_members_of_every_server() {
    let Some(cluster) = cluster(2) else { return };
    let mut ann = member(&cluster.servers[0], "ann");
    let mut bob = member(&cluster.servers[1], "bob");
    gather("#k", &mut [(&mut ann, "ann"), (&mut bob, "bob")]);
    // Bob's arrival reached ann, so A knows B's count; a third member on A
    // hears of both.
    let mut cy = member(&cluster.servers[0], "cy");
    cy.send("/join #k");
    assert_eq!(answer(&mut cy), "* you joined #k (3 here)");
}

#[test]
fn a_direct_message_crosses_servers_and_is_confirmed() {
    let Some(cluster) = cluster(2) else { return };
    let mut ann = member(&cluster.servers[0], "ann");
    let mut bob = member(&cluster.servers[1], "Bob");
    ann.send("/msg bob psst");
    assert_eq!(answer(&mut bob), "(dm) ann: psst");
    assert_eq!(answer(&mut ann), "* delivered to bob");
    bob.send("/msg ANN back");
    assert_eq!(answer(&mut ann), "(dm) Bob: back");
    assert_eq!(answer(&mut bob), "* delivered to ANN");
    ann.send("/msg nobody hello?");
    assert_eq!(answer(&mut ann), "! no such user: nobody");
}

#[test]
fn a_thousand_lines_from_one_sender_arrive_in_order_on_the_other_server() {
    let Some(cluster) = cluster(2) else { return };
    let mut ann = member(&cluster.servers[0], "ann");
    let mut bob = member(&cluster.servers[1], "bob");
    gather("#flood", &mut [(&mut ann, "ann"), (&mut bob, "bob")]);
    let lines: String = (0..1000).map(|n| format!("line {n}\r\n")).collect();
    ann.send_raw(lines.as_bytes());
    for n in 0..1000 {
        assert_eq!(answer(&mut bob), format!("ann: line {n}"));
    }
}

#[test]
fn without_redis_reachable_the_server_still_serves_local_chat() {
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let url: RedisUrl = format!("redis://127.0.0.1:{port}").parse().expect("URL");
    let server = TestServer::start_with(|config| config.redis = Some(url));
    let (mut ann, ann_nick) = server.join();
    let (mut bob, bob_nick) = server.join();
    ann.read_until(&format!("* {bob_nick} joined #lobby"));
    bob.send("local still works");
    ann.expect_line(&format!("{bob_nick}: local still works"));
    ann.send("/nick ann");
    ann.expect_line("! the other servers did not answer, try again");
    assert_ne!(ann_nick, bob_nick);
}

#[test]
fn a_receipt_counts_the_recipients_of_every_server() {
    let Some(cluster) = cluster(2) else { return };
    let [a, b] = &cluster.servers[..] else {
        unreachable!()
    };
    let mut ann = member(a, "ann");
    let mut bob = member(b, "bob");
    let mut bea = member(b, "bea");
    let mut cy = member(a, "cy");
    gather(
        "#r",
        &mut [
            (&mut ann, "ann"),
            (&mut bob, "bob"),
            (&mut bea, "bea"),
            (&mut cy, "cy"),
        ],
    );
    ann.send("/receipts on");
    assert_eq!(answer(&mut ann), "* receipts on");
    ann.send("counted");
    for far in [&mut bob, &mut bea, &mut cy] {
        assert_eq!(answer(far), "ann: counted");
    }
    assert_eq!(answer(&mut ann), "* #1 delivered to 3 of 3");
    // Alone in a room that spans no one: nobody anywhere to count.
    ann.send("/join #empty");
    assert!(answer(&mut ann).starts_with("* you joined #empty ("));
    ann.send("anyone?");
    assert_eq!(answer(&mut ann), "* #2 delivered to 0 of 0");
}

#[test]
fn a_direct_message_is_not_overtaken_by_the_senders_next_line() {
    let Some(cluster) = cluster(2) else { return };
    let mut ann = member(&cluster.servers[0], "ann");
    let mut bob = member(&cluster.servers[1], "bob");
    gather("#o", &mut [(&mut ann, "ann"), (&mut bob, "bob")]);
    // One write: the room line must wait for the lookup of bob's server.
    ann.send_raw(b"/msg bob first\r\nsecond\r\n");
    assert_eq!(answer(&mut bob), "(dm) ann: first");
    assert_eq!(answer(&mut bob), "ann: second");
    assert_eq!(answer(&mut ann), "* delivered to bob");
}

#[test]
fn the_announce_limit_counts_the_members_of_every_server() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url: RedisUrl = redis.url(0).parse().expect("test URL");
    let servers: Vec<TestServer> = (0..2)
        .map(|_| {
            TestServer::start_with(|config| {
                config.redis = Some(url.clone());
                config.announce_limit = 2;
            })
        })
        .collect();
    let mut ann = member(&servers[0], "ann");
    let mut bob = member(&servers[1], "bob");
    enter(&mut ann, "ann", "#cap", &mut []);
    // Two members, one per server: still announced.
    enter(&mut bob, "bob", "#cap", &mut [&mut ann]);
    // A third, on ann's server, makes three across the cluster: bob hears
    // no join notice, only what the newcomer says.
    let mut cy = member(&servers[0], "cy");
    cy.send("/join #cap");
    assert_eq!(answer(&mut cy), "* you joined #cap (3 here)");
    cy.send("hello");
    // (ann's own join notice may still come: A published it once its
    // subscription was confirmed.)
    let before = bob.read_until("cy: hello");
    assert!(
        !before.iter().any(|line| line.contains("cy joined")),
        "{before:?}"
    );
}

#[test]
fn servers_log_in_to_a_redis_that_wants_a_password() {
    let Some(redis) = RedisServer::start_with(Some("s3cret"), &[]) else {
        return;
    };
    let url: RedisUrl = redis.url(2).parse().expect("test URL");
    let servers: Vec<TestServer> = (0..2)
        .map(|_| TestServer::start_with(|config| config.redis = Some(url.clone())))
        .collect();
    let mut ann = member(&servers[0], "ann");
    let mut bob = member(&servers[1], "bob");
    gather("#auth", &mut [(&mut ann, "ann"), (&mut bob, "bob")]);
    bob.send("through AUTH and SELECT");
    assert_eq!(answer(&mut ann), "bob: through AUTH and SELECT");
}

#[test]
fn guests_welcomed_the_moment_two_servers_start_get_different_numbers() {
    // Each client connects as soon as its server listens, before the
    // server has heard from Redis: it is welcomed once the server has
    // guest numbers from the shared counter, never with a local guess
    // that another server may hand out too.
    for _ in 0..5 {
        let Some(cluster) = cluster(2) else {
            return;
        };
        let (_a, first) = cluster.servers[0].join();
        let (_b, second) = cluster.servers[1].join();
        assert_ne!(first, second, "both servers welcomed {first}");
    }
}
