//! An in-memory stand-in for Redis, for unit tests of the cluster state
//! machine on a virtual clock: the few commands and the scripts it uses,
//! with Redis's replies.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::keys::{CLAIM_NICK, RELEASE_NICK};
use super::link::Reply;

#[derive(Default)]
pub struct FakeRedis {
    strings: HashMap<Bytes, (Bytes, Option<Instant>)>,
    sets: HashMap<Bytes, BTreeSet<Bytes>>,
    /// Every command run, for tests that count round trips.
    pub log: Vec<Vec<Bytes>>,
}

fn ok() -> Reply {
    Reply::Status(Bytes::from_static(b"OK"))
}

fn error(text: &str) -> Reply {
    Reply::Error(format!("ERR {text}"))
}

fn number(arg: &Bytes) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

impl FakeRedis {
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<Bytes> {
        let key = Bytes::copy_from_slice(key);
        match self.strings.get(&key) {
            Some((_, Some(expiry))) if *expiry <= now => {
                self.strings.remove(&key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    /// Milliseconds left to live, as `PTTL` (-1 without expiry, -2 absent).
    pub fn pttl(&mut self, key: &[u8], now: Instant) -> i64 {
        if self.get(key, now).is_none() {
            return -2;
        }
        match self.strings.get(key) {
            Some((_, Some(expiry))) => expiry.duration_since(now).as_millis() as i64,
            _ => -1,
        }
    }

    pub fn members(&self, key: &[u8]) -> Vec<Bytes> {
        self.sets
            .get(key)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn execute(&mut self, args: &[Bytes], now: Instant) -> Reply {
        self.log.push(args.to_vec());
        let Some(name) = args.first() else {
            return error("empty command");
        };
        match (name.to_ascii_uppercase().as_slice(), &args[1..]) {
            (b"GET", [key]) => match self.get(key, now) {
                Some(value) => Reply::Bulk(value),
                None => Reply::Nil,
            },
            (b"SET", [key, value, options @ ..]) => self.set(key, value, options, now),
            (b"DEL", keys) => {
                let mut removed = 0;
                for key in keys {
                    if self.get(key, now).is_some() {
                        self.strings.remove(key);
                        removed += 1;
                    }
                    if self.sets.remove(key).is_some() {
                        removed += 1;
                    }
                }
                Reply::Integer(removed)
            }
            (b"INCRBY", [key, by]) => {
                let Some(by) = number(by) else {
                    return error("not an integer");
                };
                let current = match self.get(key, now) {
                    Some(value) => match number(&value) {
                        Some(n) => n,
                        None => return error("value is not an integer"),
                    },
                    None => 0,
                };
                let next = current + by;
                self.strings
                    .insert(key.clone(), (Bytes::from(next.to_string()), None));
                Reply::Integer(next)
            }
            (b"SADD", [key, members @ ..]) => {
                let set = self.sets.entry(key.clone()).or_default();
                let added = members.iter().filter(|m| set.insert((*m).clone())).count();
                Reply::Integer(added as i64)
            }
            (b"SREM", [key, members @ ..]) => {
                let Some(set) = self.sets.get_mut(key) else {
                    return Reply::Integer(0);
                };
                let removed = members.iter().filter(|m| set.remove(*m)).count();
                Reply::Integer(removed as i64)
            }
            (b"EVAL", [script, numkeys, rest @ ..]) => {
                let Some(numkeys) = number(numkeys).and_then(|n| usize::try_from(n).ok()) else {
                    return error("bad numkeys");
                };
                if numkeys > rest.len() {
                    return error("numkeys too large");
                }
                let (keys, argv) = rest.split_at(numkeys);
                self.eval(script, keys, argv, now)
            }
            _ => error("unknown command or arguments for the fake Redis"),
        }
    }

    fn set(&mut self, key: &Bytes, value: &Bytes, options: &[Bytes], now: Instant) -> Reply {
        let mut only_new = false;
        let mut want_old = false;
        let mut expiry = None;
        let mut options = options.iter();
        while let Some(option) = options.next() {
            match option.to_ascii_uppercase().as_slice() {
                b"NX" => only_new = true,
                b"GET" => want_old = true,
                b"PX" => match options.next().and_then(number) {
                    Some(ms) if ms > 0 => expiry = Some(now + Duration::from_millis(ms as u64)),
                    _ => return error("invalid expire time"),
                },
                _ => return error("syntax error"),
            }
        }
        let old = self.get(key, now);
        if only_new && old.is_some() {
            return Reply::Nil;
        }
        self.strings.insert(key.clone(), (value.clone(), expiry));
        match (want_old, old) {
            (false, _) => ok(),
            (true, Some(old)) => Reply::Bulk(old),
            (true, None) => Reply::Nil,
        }
    }

    /// The scripts the cluster uses, done natively: a fake Redis has no Lua.
    fn eval(&mut self, script: &Bytes, keys: &[Bytes], argv: &[Bytes], now: Instant) -> Reply {
        match (&script[..], keys, argv) {
            (s, [nick_key, node_set], [node, folded]) if s == CLAIM_NICK.as_bytes() => {
                match self.get(nick_key, now) {
                    None => {
                        self.strings.insert(nick_key.clone(), (node.clone(), None));
                    }
                    Some(owner) if owner == node => {}
                    Some(_) => return Reply::Integer(0),
                }
                self.sets
                    .entry(node_set.clone())
                    .or_default()
                    .insert(folded.clone());
                Reply::Integer(1)
            }
            (s, [nick_key, node_set], [node, folded]) if s == RELEASE_NICK.as_bytes() => {
                if self.get(nick_key, now).as_ref() != Some(node) {
                    return Reply::Integer(0);
                }
                self.strings.remove(nick_key);
                if let Some(set) = self.sets.get_mut(node_set) {
                    set.remove(folded);
                }
                Reply::Integer(1)
            }
            _ => error("script unknown to the fake Redis"),
        }
    }
}
