//! Nicknames: validation, case-insensitive uniqueness, fresh guest names.

use std::collections::HashMap;

use super::ClientId;

pub const MAX_NICK_LEN: usize = 24;

/// Why a requested nickname was refused. The texts are the protocol's.
#[derive(Debug, PartialEq, Eq)]
pub enum NickError {
    Invalid,
    Taken,
}

/// Nicknames are ASCII on purpose: look-alike Unicode letters would let one
/// user impersonate another while passing a case-insensitive check.
pub fn is_valid_nick(name: &str) -> bool {
    (1..=MAX_NICK_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Every nickname in use, keyed by its lower-case form so that `Bob` and
/// `bob` cannot both exist.
#[derive(Default)]
pub struct Nicknames {
    owners: HashMap<String, ClientId>,
    next_guest: u64,
}

impl Nicknames {
    /// Hands out `guest-N` with the next N of a counter that only grows
    /// (numbers of guests who left are not reused), skipping names someone
    /// claimed with `/nick`.
    /// A free guest name, numbered `number` when that is given (the
    /// cluster's numbers are unique already) or else the next one here.
    pub fn claim_guest(&mut self, owner: ClientId, number: Option<u64>) -> String {
        if let Some(number) = number {
            let name = format!("guest-{number}");
            if !self.owners.contains_key(&name) {
                self.owners.insert(name.clone(), owner);
                return name;
            }
        }
        loop {
            self.next_guest += 1;
            let name = format!("guest-{}", self.next_guest);
            if !self.owners.contains_key(&name) {
                self.owners.insert(name.clone(), owner);
                return name;
            }
        }
    }

    /// Moves `owner` from `old` to `new`. Changing only the case of one's own
    /// name is allowed.
    pub fn rename(&mut self, owner: ClientId, old: &str, new: &str) -> Result<(), NickError> {
        if !is_valid_nick(new) {
            return Err(NickError::Invalid);
        }
        let new_key = new.to_ascii_lowercase();
        match self.owners.get(&new_key) {
            Some(&holder) if holder != owner => return Err(NickError::Taken),
            _ => {}
        }
        self.owners.remove(&old.to_ascii_lowercase());
        self.owners.insert(new_key, owner);
        Ok(())
    }

    pub fn release(&mut self, name: &str) {
        self.owners.remove(&name.to_ascii_lowercase());
    }

    pub fn owner(&self, name: &str) -> Option<ClientId> {
        if !is_valid_nick(name) {
            return None;
        }
        self.owners.get(&name.to_ascii_lowercase()).copied()
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_follows_the_protocol() {
        assert!(is_valid_nick("a"));
        assert!(is_valid_nick("Zed_the-2nd"));
        assert!(is_valid_nick(&"x".repeat(24)));
        assert!(!is_valid_nick(""));
        assert!(!is_valid_nick(&"x".repeat(25)));
        assert!(!is_valid_nick("two words"));
        assert!(!is_valid_nick("café"));
        assert!(!is_valid_nick("a.b"));
    }

    #[test]
    fn uniqueness_ignores_case_but_allows_own_case_change() {
        let mut names = Nicknames::default();
        let alice = names.claim_guest(ClientId(1), None);
        let bob = names.claim_guest(ClientId(2), None);
        names.rename(ClientId(1), &alice, "Alice").unwrap();
        assert_eq!(
            names.rename(ClientId(2), &bob, "alice"),
            Err(NickError::Taken)
        );
        assert_eq!(names.rename(ClientId(1), "Alice", "ALICE"), Ok(()));
        assert_eq!(names.owner("alice"), Some(ClientId(1)));
        assert_eq!(names.owner(&alice), None, "old guest name is free again");
    }

    #[test]
    fn guest_names_skip_claimed_ones() {
        let mut names = Nicknames::default();
        let first = names.claim_guest(ClientId(1), None);
        assert_eq!(first, "guest-1");
        names.rename(ClientId(1), &first, "GUEST-2").unwrap();
        assert_eq!(names.claim_guest(ClientId(2), None), "guest-3");
        assert_eq!(names.owner("guest-2"), Some(ClientId(1)));
    }
}
