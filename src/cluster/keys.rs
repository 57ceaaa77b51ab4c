//! Names of the Redis keys and channels of one cluster, and the Lua
//! scripts that must run atomically on them.
//!
//! Every name starts with the cluster name (`--cluster-name`), so several
//! chats can share one Redis.

use bytes::Bytes;

use super::wire::NodeId;

/// Claims a nickname for a node, or confirms the node already holds it
/// (re-registration after a reconnect is the same call), and records it in
/// the node's set so the node's names can be freed together when it is
/// lost. Returns 1 when the node holds the name, 0 when another does.
///
/// KEYS: the nick key, the node's nick set. ARGV: the node id, the folded
/// nick.
pub const CLAIM_NICK: &str = "\
local owner = redis.call('GET', KEYS[1])
if owner == false then
  redis.call('SET', KEYS[1], ARGV[1])
elseif owner ~= ARGV[1] then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[2])
return 1";

/// Frees a nickname only if this node holds it, so a late release cannot
/// free a name another node claimed meanwhile. Returns 1 when freed.
///
/// KEYS and ARGV as for [`CLAIM_NICK`].
pub const RELEASE_NICK: &str = "\
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0";

/// Finds the nodes of `P:nodes` whose alive key expired and, for each one
/// whose reaping lock (`P:reap:ID`, `SET NX PX`) this node gets, removes
/// everything it registered: its room counts, its members, its names and
/// itself from the node set, in one atomic step. Returns a flat array of
/// triples `node, room, nick` (each reaped node first as `node, '', ''`), so
/// that the reaper can announce the leaves.
///
/// Key names are built in the script from the prefix: fine for one Redis,
/// not for Redis Cluster (which Apollonion does not support).
///
/// KEYS: the node set. ARGV: the prefix, this node's id, the lock's
/// lifetime in ms.
pub const REAP_LOST: &str = "local prefix = ARGV[1]
local out = {}
local rooms_key = prefix .. ':rooms'
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[2] and redis.call('EXISTS', prefix .. ':alive:' .. node) == 0
      and redis.call('SET', prefix .. ':reap:' .. node, ARGV[2], 'NX', 'PX', ARGV[3]) then
    table.insert(out, node) table.insert(out, '') table.insert(out, '')
    local suffix = '|' .. node
    for _, field in ipairs(redis.call('HKEYS', rooms_key)) do
      if #field > #suffix and string.sub(field, -#suffix) == suffix then
        redis.call('HDEL', rooms_key, field)
        local room = string.sub(field, 1, #field - #suffix)
        local members = prefix .. ':members:' .. room
        local hash = redis.call('HGETALL', members)
        for i = 1, #hash, 2 do
          if hash[i + 1] == node then
            redis.call('HDEL', members, hash[i])
            table.insert(out, node) table.insert(out, room) table.insert(out, hash[i])
          end
        end
      end
    end
    local nicks = prefix .. ':nicks:' .. node
    for _, nick in ipairs(redis.call('SMEMBERS', nicks)) do
      local key = prefix .. ':nick:' .. nick
      if redis.call('GET', key) == node then
        redis.call('DEL', key)
      end
    end
    redis.call('DEL', nicks)
    redis.call('SREM', KEYS[1], node)
  end
end
return out";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(cluster_name: &str) -> Keys {
        Keys {
            prefix: cluster_name.to_string(),
        }
    }

    /// The prefix every key and channel starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, parts: &[&str]) -> Bytes {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        Bytes::from(key)
    }

    /// Holds the id of the node whose user has this (case-folded) name.
    pub fn nick(&self, folded: &str) -> Bytes {
        self.key(&["nick", folded])
    }

    /// The set of names a node holds, for freeing them when it is lost.
    pub fn node_nicks(&self, node: NodeId) -> Bytes {
        self.key(&["nicks", &node.to_string()])
    }

    /// The counter guest numbers are reserved from, in blocks.
    pub fn guest_counter(&self) -> Bytes {
        self.key(&["guest"])
    }

    /// Exists, with a TTL, while the node is alive.
    pub fn alive(&self, node: NodeId) -> Bytes {
        self.key(&["alive", &node.to_string()])
    }

    /// The ids of all nodes believed to be in the cluster.
    pub fn nodes(&self) -> Bytes {
        self.key(&["nodes"])
    }

    /// Members of a room, as a hash of folded nick to node id.
    pub fn members(&self, room: &str) -> Bytes {
        self.key(&["members", room])
    }

    /// Member counts of every room, one field `ROOM|NODE` per node.
    pub fn rooms(&self) -> Bytes {
        self.key(&["rooms"])
    }

    /// Taken by the one node that removes a lost node's traces.
    pub fn reap_lock(&self, lost: NodeId) -> Bytes {
        self.key(&["reap", &lost.to_string()])
    }

    /// Where room batches of `room` are published.
    pub fn room_channel(&self, room: &str) -> Bytes {
        self.key(&["room", room])
    }

    /// Where a node receives direct messages, reports and control messages.
    pub fn node_channel(&self, node: NodeId) -> Bytes {
        self.key(&["node", &node.to_string()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_cluster_prefix() {
        let keys = Keys::new("chat1");
        assert_eq!(keys.nick("ada"), "chat1:nick:ada");
        assert_eq!(keys.node_nicks(7), "chat1:nicks:7");
        assert_eq!(keys.guest_counter(), "chat1:guest");
        assert_eq!(keys.alive(7), "chat1:alive:7");
        assert_eq!(keys.nodes(), "chat1:nodes");
        assert_eq!(keys.members("#rust"), "chat1:members:#rust");
        assert_eq!(keys.reap_lock(9), "chat1:reap:9");
        assert_eq!(keys.room_channel("#lobby"), "chat1:room:#lobby");
        assert_eq!(keys.node_channel(7), "chat1:node:7");
    }
}
