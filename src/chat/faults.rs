//! What the chat tells its users when the other servers fail (SPEC §4
//! "Faults"): their users gone with a dead or stopping server, the link to
//! the others lost and back, a name taken while apart, lines lost.

use super::names::is_valid_nick;
use super::{member_order, notice_line, Chat, ChatEvent, ClientId, Outbox, Peers};

/// Why another server's users left all at once, as the leave notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteDeparture {
    LostServer,
    ServerShuttingDown,
}

impl RemoteDeparture {
    fn suffix(self) -> &'static str {
        match self {
            RemoteDeparture::LostServer => " (lost server)",
            RemoteDeparture::ServerShuttingDown => " (server shutting down)",
        }
    }
}

impl<P: Peers> Chat<P> {
    /// `nicks`, members of `room` on another server, are gone with it. The
    /// peers already stopped counting them; the room hears it unless it is
    /// bigger than `--announce-limit` (counting them, as for a local leave).
    pub fn on_remote_departure(
        &mut self,
        out: &mut impl Outbox,
        room: &str,
        nicks: &[String],
        why: RemoteDeparture,
    ) {
        let Some(id) = self.rooms.find(room) else {
            return;
        };
        let size = self.room_size(id) + nicks.len();
        if nicks.is_empty() || size > self.config.announce_limit {
            return;
        }
        // Not through the room's batch: that would be published to the
        // other servers, which announce it themselves.
        self.flush_room(out, id);
        let suffix = why.suffix();
        let members = self.rooms.get(id).members.clone();
        for nick in nicks {
            let line = notice_line(format_args!("{nick} left {room}{suffix}"));
            for &member in &members {
                out.send(member, line.clone(), None);
            }
        }
    }

    /// Tells every member of `rooms` here one notice (the link to the
    /// other servers lost or back).
    pub fn tell_rooms(&mut self, out: &mut impl Outbox, rooms: &[String], text: &str) {
        let line = notice_line(text);
        for room in rooms {
            let Some(id) = self.rooms.find(room) else {
                continue;
            };
            self.flush_room(out, id);
            for &member in &self.rooms.get(id).members {
                out.send(member, line.clone(), None);
            }
        }
    }

    /// `count` lines said in `room` on other servers never reached this one.
    pub fn on_lines_lost(&mut self, out: &mut impl Outbox, room: &str, count: u64) {
        let text = format!("{count} lines from other servers were lost");
        self.tell_rooms(out, &[room.to_string()], &text);
    }

    /// The name `folded` this server's user held was taken by another
    /// server's user while the two were apart: the user here, the later
    /// claimant, becomes a guest.
    pub fn on_nick_lost(&mut self, out: &mut impl Outbox, folded: &str) {
        let Some(id) = self.nicks.owner(folded) else {
            return;
        };
        let Some(old) = self.nick(id).map(str::to_string) else {
            return;
        };
        if !old.eq_ignore_ascii_case(folded) || !is_valid_nick(&old) {
            return;
        }
        self.nicks.release(&old);
        let number = self.peers.guest_number();
        let new = self.nicks.claim_guest(id, number);
        self.peers.claim_nick(0, &new);
        let Some(chatter) = self.chatter_mut(id) else {
            return;
        };
        chatter.nick = new.clone();
        let room = chatter.room;
        self.rooms.resort(
            room,
            id,
            member_order(&self.clients, id, &old),
            member_order(&self.clients, id, &new),
        );
        let name = self.rooms.get(room).name.clone();
        self.peers.member_renamed(&name, &old, &new);
        self.deliver(
            out,
            id,
            notice_line(format_args!(
                "{old} was taken while the servers were apart; you are now {new}"
            )),
            None,
        );
        self.announce(room, id, format_args!("{old} is now known as {new}"));
        self.events.push(ChatEvent::Renamed { id, old, new });
    }

    /// The client holding `nick` here, if any (for tests and the reactor).
    pub fn owner_of(&self, nick: &str) -> Option<ClientId> {
        self.nicks.owner(nick)
    }
}
