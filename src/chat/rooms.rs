//! Rooms and their members, each kept in the order listings show them, so
//! `/rooms` and `/who` cost what they list rather than what exists.

use std::cmp::Ordering;
use std::collections::BTreeMap;

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
    /// Sorted the way `/who` lists them (by nickname, ignoring case), so a
    /// listing reads the first names instead of sorting thousands. The
    /// order is the caller's: it passes a comparison against the member in
    /// question, since only it knows the names. Joining and leaving are a
    /// binary search and one move of the tail: a few microseconds for
    /// 10,000 members, and no memory beyond the id itself, which matters
    /// because most connections idle in one big room.
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

pub struct Rooms {
    rooms: Slab<Room>,
    /// Sorted by name, which is the order `/rooms` lists them in.
    by_name: BTreeMap<String, RoomId>,
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
        let by_name = BTreeMap::from([(LOBBY.to_string(), lobby)]);
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

    /// Finds or creates the room and adds `member` where `order` places it:
    /// `order(other)` tells how `other` sorts against the newcomer.
    pub fn join(
        &mut self,
        canonical_name: &str,
        member: ClientId,
        order: impl FnMut(&ClientId) -> Ordering,
    ) -> RoomId {
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
        insert_sorted(&mut self.rooms[id.0].members, member, order);
        id
    }

    /// Removes `member`, found with `order` as it was placed; removes the
    /// room too when it empties, except the lobby.
    pub fn leave(
        &mut self,
        id: RoomId,
        member: ClientId,
        order: impl FnMut(&ClientId) -> Ordering,
    ) {
        let room = &mut self.rooms[id.0];
        remove_sorted(&mut room.members, member, order);
        if room.members.is_empty() && id != self.lobby {
            let room = self.rooms.remove(id.0);
            self.by_name.remove(&room.name);
        }
    }

    /// Moves `member` from where `old` placed it to where `new` does, after
    /// a rename.
    pub fn resort(
        &mut self,
        id: RoomId,
        member: ClientId,
        old: impl FnMut(&ClientId) -> Ordering,
        new: impl FnMut(&ClientId) -> Ordering,
    ) {
        let members = &mut self.rooms[id.0].members;
        remove_sorted(members, member, old);
        insert_sorted(members, member, new);
    }

    /// Rooms with their member counts, by name.
    pub fn listing(&self) -> impl Iterator<Item = (&str, usize)> {
        self.by_name
            .iter()
            .map(|(name, id)| (name.as_str(), self.rooms[id.0].members.len()))
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }
}

fn insert_sorted(
    members: &mut Vec<ClientId>,
    member: ClientId,
    order: impl FnMut(&ClientId) -> Ordering,
) {
    let at = members.binary_search_by(order).unwrap_or_else(|at| at);
    members.insert(at, member);
}

fn remove_sorted(
    members: &mut Vec<ClientId>,
    member: ClientId,
    order: impl FnMut(&ClientId) -> Ordering,
) {
    let found = match members.binary_search_by(order) {
        Ok(at) if members[at] == member => Some(at),
        // Only if the order was not kept; the member must go all the same.
        _ => members.iter().position(|&other| other == member),
    };
    if let Some(at) = found {
        members.remove(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members ordered by their id, standing in for the chat's names.
    fn by_id(member: ClientId) -> impl FnMut(&ClientId) -> Ordering {
        move |other| other.cmp(&member)
    }

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
        let rust = rooms.join("#rust", ClientId(1), by_id(ClientId(1)));
        assert_eq!(rooms.len(), 2);
        rooms.leave(rust, ClientId(1), by_id(ClientId(1)));
        assert_eq!(rooms.find("#rust"), None);
        let lobby = rooms.join(LOBBY, ClientId(1), by_id(ClientId(1)));
        rooms.leave(lobby, ClientId(1), by_id(ClientId(1)));
        assert_eq!(rooms.find(LOBBY), Some(lobby));
    }

    #[test]
    fn members_stay_in_order_through_joins_leaves_and_moves() {
        let mut rooms = Rooms::default();
        let lobby = rooms.find(LOBBY).unwrap();
        for id in [5, 1, 9, 3, 7] {
            rooms.join(LOBBY, ClientId(id), by_id(ClientId(id)));
        }
        let ids = |rooms: &Rooms| -> Vec<usize> {
            rooms
                .get(lobby)
                .members
                .iter()
                .map(|member| member.0)
                .collect()
        };
        assert_eq!(ids(&rooms), [1, 3, 5, 7, 9]);
        rooms.leave(lobby, ClientId(5), by_id(ClientId(5)));
        assert_eq!(ids(&rooms), [1, 3, 7, 9]);
        // Client 3 takes a name that sorts after 7's.
        rooms.resort(lobby, ClientId(3), by_id(ClientId(3)), |other| {
            other.cmp(&ClientId(8))
        });
        assert_eq!(ids(&rooms), [1, 7, 3, 9]);
        // A member the order cannot find is still removed.
        rooms.leave(lobby, ClientId(3), by_id(ClientId(3)));
        assert_eq!(ids(&rooms), [1, 7, 9]);
    }

    #[test]
    fn the_listing_is_by_name() {
        let mut rooms = Rooms::default();
        for (id, name) in ["#b", "#a", "#zz", "#m"].into_iter().enumerate() {
            rooms.join(name, ClientId(id), by_id(ClientId(id)));
        }
        let names: Vec<&str> = rooms.listing().map(|(name, _)| name).collect();
        assert_eq!(names, ["#a", "#b", "#lobby", "#m", "#zz"]);
    }
}
