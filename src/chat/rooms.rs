//! Rooms and their members, with O(1) join and leave.

use std::collections::HashMap;

use slab::Slab;

use super::batch::RoomBatch;
use super::ClientId;

pub const LOBBY: &str = "#lobby";
pub const MAX_ROOM_NAME_LEN: usize = 32;

/// Index of a room; stable for the room's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomId(usize);

pub struct Room {
    pub name: String,
    /// Unordered; a member's position is remembered by the caller (the
    /// `slot` handed out by `join`) so leaving is a swap-remove.
    pub members: Vec<ClientId>,
    /// Lines said in the room during the current loop turn.
    pub batch: RoomBatch,
}

/// Folds a `#name` to its canonical lower-case form, or `None` if it is not a
/// valid room name.
pub fn canonical_room_name(name: &str) -> Option<String> {
    let body = name.strip_prefix('#')?;
    let valid = (1..=MAX_ROOM_NAME_LEN).contains(&body.len())
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then(|| name.to_ascii_lowercase())
}

/// What a member leaving moved: the member that now sits in the freed slot,
/// whose remembered slot must be updated.
pub struct Moved {
    pub member: ClientId,
    pub slot: usize,
}

pub struct Rooms {
    rooms: Slab<Room>,
    by_name: HashMap<String, RoomId>,
    lobby: RoomId,
}

impl Default for Rooms {
    fn default() -> Self {
        let mut rooms = Slab::new();
        let lobby = RoomId(rooms.insert(Room {
            name: LOBBY.to_string(),
            members: Vec::new(),
            batch: RoomBatch::default(),
        }));
        let by_name = HashMap::from([(LOBBY.to_string(), lobby)]);
        Rooms {
            rooms,
            by_name,
            lobby,
        }
    }
}

impl Rooms {
    pub fn get(&self, id: RoomId) -> &Room {
        &self.rooms[id.0]
    }

    /// A room that may have been removed since its id was taken.
    pub fn get_mut(&mut self, id: RoomId) -> Option<&mut Room> {
        self.rooms.get_mut(id.0)
    }

    pub fn find(&self, canonical_name: &str) -> Option<RoomId> {
        self.by_name.get(canonical_name).copied()
    }

    /// Finds or creates the room and adds `member`, returning the room and
    /// the member's slot in it.
    pub fn join(&mut self, canonical_name: &str, member: ClientId) -> (RoomId, usize) {
        let id = match self.by_name.get(canonical_name) {
            Some(&id) => id,
            None => {
                let id = RoomId(self.rooms.insert(Room {
                    name: canonical_name.to_string(),
                    members: Vec::new(),
                    batch: RoomBatch::default(),
                }));
                self.by_name.insert(canonical_name.to_string(), id);
                id
            }
        };
        let members = &mut self.rooms[id.0].members;
        members.push(member);
        (id, members.len() - 1)
    }

    /// Removes the member at `slot`; removes the room too when it empties,
    /// except the lobby.
    pub fn leave(&mut self, id: RoomId, slot: usize) -> Option<Moved> {
        let room = &mut self.rooms[id.0];
        room.members.swap_remove(slot);
        let moved = room.members.get(slot).map(|&member| Moved { member, slot });
        if room.members.is_empty() && id != self.lobby {
            let room = self.rooms.remove(id.0);
            self.by_name.remove(&room.name);
        }
        moved
    }

    /// Rooms with their member counts, sorted by name.
    pub fn listing(&self) -> Vec<(&str, usize)> {
        let mut list: Vec<(&str, usize)> = self
            .rooms
            .iter()
            .map(|(_, room)| (room.name.as_str(), room.members.len()))
            .collect();
        list.sort_unstable();
        list
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_validated_and_folded() {
        assert_eq!(canonical_room_name("#Rust").as_deref(), Some("#rust"));
        assert_eq!(canonical_room_name("#a_b-1").as_deref(), Some("#a_b-1"));
        assert_eq!(canonical_room_name("rust"), None);
        assert_eq!(canonical_room_name("#"), None);
        assert_eq!(canonical_room_name(&format!("#{}", "x".repeat(33))), None);
        assert!(canonical_room_name(&format!("#{}", "x".repeat(32))).is_some());
        assert_eq!(canonical_room_name("#a b"), None);
    }

    #[test]
    fn rooms_are_created_on_join_and_removed_when_empty_but_not_the_lobby() {
        let mut rooms = Rooms::default();
        let (rust, slot) = rooms.join("#rust", ClientId(1));
        assert_eq!(rooms.len(), 2);
        assert!(rooms.leave(rust, slot).is_none());
        assert_eq!(rooms.find("#rust"), None);
        let (lobby, slot) = rooms.join(LOBBY, ClientId(1));
        rooms.leave(lobby, slot);
        assert_eq!(rooms.find(LOBBY), Some(lobby));
    }

    #[test]
    fn leaving_reports_the_member_moved_into_the_freed_slot() {
        let mut rooms = Rooms::default();
        let lobby = rooms.find(LOBBY).unwrap();
        rooms.join(LOBBY, ClientId(1));
        rooms.join(LOBBY, ClientId(2));
        rooms.join(LOBBY, ClientId(3));
        let moved = rooms.leave(lobby, 0).unwrap();
        assert_eq!((moved.member, moved.slot), (ClientId(3), 0));
        assert_eq!(rooms.get(lobby).members, vec![ClientId(3), ClientId(2)]);
        assert!(rooms.leave(lobby, 1).is_none(), "last slot moves nobody");
    }
}
