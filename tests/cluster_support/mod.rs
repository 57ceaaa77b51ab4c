//! Chat-side helpers shared by the cluster tests: claiming a name through
//! Redis, reading past the notices that every server sends, entering a
//! room that spans servers.
#![allow(dead_code)] // each test binary uses a different part of it

use crate::common::Client;

/// Names `client` `nick`, claimed through Redis. A claim made before the
/// server joined the cluster is answered at once as unanswered, and is
/// tried again, so this also waits until the server has joined.
pub fn claim(client: &mut Client, nick: &str) {
    loop {
        client.send(&format!("/nick {nick}"));
        let line = answer(client);
        if line == format!("* you are now {nick}") {
            return;
        }
        assert_eq!(line, "! the other servers did not answer, try again");
    }
}

/// The next line that is not a join, leave or rename notice: those come
/// from every server, and one published before its server's subscription
/// was confirmed goes out once it is, so it may arrive after later events
/// (a join notice of someone already there when the reader came).
pub fn answer(client: &mut Client) -> String {
    loop {
        let line = client.read_line().expect("an answer");
        let notice = line.starts_with("* ")
            && !line.starts_with("* you ")
            && (line.contains(" joined #")
                || line.contains(" left #")
                || line.contains(" is now known as "));
        if !notice {
            return line;
        }
    }
}

/// Moves `joining` into `room`, and waits until everyone already there
/// has seen it arrive, so the room spans their servers from now on.
pub fn enter(joining: &mut Client, nick: &str, room: &str, already: &mut [&mut Client]) {
    joining.send(&format!("/join {room}"));
    let joined = answer(joining);
    assert!(
        joined.starts_with(&format!("* you joined {room} (")),
        "{joined}"
    );
    for member in already.iter_mut() {
        member.read_until(&format!("* {nick} joined {room}"));
    }
}

/// Moves each of `members` into `room` in turn, each announced to the ones
/// before it (see `enter`).
pub fn gather(room: &str, members: &mut [(&mut Client, &str)]) {
    for at in 0..members.len() {
        let (earlier, rest) = members.split_at_mut(at);
        let (joining, nick) = &mut rest[0];
        let mut already: Vec<&mut Client> = earlier
            .iter_mut()
            .map(|(client, _)| &mut **client)
            .collect();
        enter(joining, nick, room, &mut already);
    }
}
