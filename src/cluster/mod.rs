//! Cluster mode: several servers sharing one chat through Redis (SPEC §4).
//!
//! Without `--redis` none of this runs. With it, each server keeps two more
//! sockets in its one `mio::Poll`: a command connection and a subscriber
//! connection to Redis. Everything that decides anything is sans-IO, like
//! the chat core, and tested on a virtual clock.
//!
//! # Modules
//!
//! - [`url`]: the `--redis` URL.
//! - [`link`]: one Redis connection as a state machine over bytes:
//!   handshake, pipelined commands with tags ([`link::CommandLink`]),
//!   subscriptions and pushed messages ([`link::SubscriberLink`]), a
//!   bounded output queue.
//! - [`socket`]: the `mio` TCP stream under a link, pumped by the reactor
//!   with its own tokens.
//! - [`wire`]: what servers publish to each other (room batches, direct
//!   messages, reports, presence), with per-stream sequence numbers.
//! - [`reconnect`]: backoff between attempts and the warning throttle.
//! - [`keys`]: key and channel names, and the Lua scripts.
//! - [`state`]: the `Cluster` state machine, begun: registration (alive
//!   key), nickname claims, guest-number blocks.
//!
//! # The plan for wiring it in
//!
//! **The `Cluster` state machine** (in [`state`], growing) sits beside
//! `Chat`. Events in: replies to its requests (`on_reply(id, reply)` /
//! `on_unanswered(id)`), messages from the subscriber (`on_message(channel,
//! payload)`, decoded with [`wire::Envelope::decode`]), `link_up(now)` /
//! `link_down()`, `tick(now)`. Out: [`state::Request`]s for the command
//! link (`poll_request`), subscription changes for the subscriber link, and
//! [`state::ClusterEvent`]s for the chat (`poll_event`): claim answers,
//! remote batches to hand to local members, direct messages, reports,
//! presence changes, lost servers' leaves, loss counts.
//!
//! **The chat's side** is a trait the chat core defines for reaching its
//! peers, shaped roughly as:
//!
//! ```text
//! trait Peers {
//!     fn claim_nick(&mut self, ticket: u64, folded: &str) -> Claim; // Granted now | Pending
//!     fn release_nick(&mut self, folded: &str);
//!     fn guest_number(&mut self) -> Option<u64>;
//!     fn room_batch(&mut self, room: &str, lines: &[u8], line_count: u64,
//!                   receipts: &[WireReceipt]);   // once per room per turn
//!     fn direct(&mut self, ticket: u64, target: &str, line: &[u8]) -> Route; // Local | Remote | Unknown
//!     fn members_changed(&mut self, room: &str, local_members: u64);
//!     fn remote_members(&self, room: &str) -> u64; // for (K here), /rooms, --announce-limit
//! }
//! ```
//!
//! Alone (no `--redis`), the implementation grants every claim at once,
//! counts guests locally and drops publications, so single-server
//! behaviour and speed do not change. With Redis, it is the `Cluster`.
//!
//! **Fan-out**: at the end of a loop turn the chat's room batches (one
//! shared buffer per room, as today) go out as one `PUBLISH` per room:
//! [`wire::encode_room_batch_header`] then the batch buffer, passed as two
//! parts to [`link::CommandLink::push_publish`] (one copy, into the link's
//! queue). Receivers skip their own origin, check the stream's sequence
//! number (a gap is the exact number of lines lost), and queue
//! `RoomBatch::lines` (a slice of the received payload) to every local
//! member of the room. `PUBLISH`'s reply, the number of subscribed servers
//! (ours included), tells how many receipt reports to wait for.
//!
//! **Keys and channels** (prefix `P` = `--cluster-name`, see [`keys`]):
//! `P:room:ROOM` channel (subscribed while this server has members there);
//! `P:node:ID` channel (direct messages, delivery and receipt reports,
//! hello/shutdown); `P:nick:FOLDED` → owner node (claimed and released by
//! the scripts in [`keys`], which also keep `P:nicks:ID`, the node's
//! names); `P:guest` counter (blocks by `INCRBY`); `P:members:ROOM` hash;
//! `P:alive:ID` with a TTL of `--node-timeout`, refreshed every third of
//! it; `P:nodes` set; `P:reap:ID` lock (`SET NX PX`) taken by the one server
//! that removes a lost node's members and names in one script.
//!
//! **Faults** (issue 12) follow from these pieces: the link's byte cap
//! drops and counts; [`reconnect::Backoff`] and
//! [`reconnect::WarnThrottle`] pace reconnection; on `link_up` the node
//! re-claims its names (the claim script is idempotent for the holder) and
//! re-registers memberships; sequence gaps report loss; a subscriber the
//! server dropped shows up as a closed socket, then a gap.

#[cfg(test)]
mod fake_redis;
pub mod keys;
pub mod link;
pub mod reconnect;
pub mod socket;
pub mod state;
pub mod url;
pub mod wire;
