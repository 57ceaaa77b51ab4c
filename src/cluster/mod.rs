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
//! - [`state`]: the `Cluster` state machine: registration (alive key),
//!   nickname claims, guest-number blocks, room subscriptions and presence,
//!   fan-out and receipt reports, direct messages, `/who` and `/rooms`
//!   queries. It implements the chat's [`Peers`](crate::chat::Peers).
//!
//! # How it is wired in
//!
//! The chat is `Chat<Option<Cluster>>` in the server: `None` (no `--redis`)
//! is alone, answering at once. The reactor's side is
//! `server/cluster_io.rs` (the two sockets, tokens 4 and 5, connect,
//! handshake, reconnect with [`reconnect::Backoff`]) and
//! `server/cluster_turn.rs` (each loop turn: `tick`, pump the links, hand
//! [`state::ClusterEvent`]s to the chat's `on_*` methods, report settled
//! relays back). It pumps after the chat's `end_turn`, and again at the
//! end of the turn so that what the turn produced goes out at once.
//!
//! **Events in**: `on_reply` / `on_unanswered` (command link),
//! `on_message` and `on_subscribed` (subscriber link), `link_up(now)` /
//! `link_down()`, `tick(now)` (deadlines of what clients wait for, 5 s).
//! **Out**: [`state::Request`]s (`poll_request`), [`state::Subscription`]
//! changes (`poll_subscription`), [`state::ClusterEvent`]s (`poll_event`).
//!
//! **Fan-out**: at the end of a loop turn each room's batch goes out as
//! one `PUBLISH P:room:NAME` ([`wire::encode_room_batch_header`] then the
//! batch buffer). A room's publications are held back until Redis confirms
//! this server's subscription of it, and a changed member count
//! ([`wire::Presence`]) goes before the batch that announces the change.
//! Receivers skip their own origin and queue `RoomBatch::lines` (a slice of
//! the received payload) to every local member. `PUBLISH`'s reply, the
//! number of subscribed servers (ours included), tells how many receipt
//! reports to wait for. Receivers check the sequence numbers (per room, counting lines).
//!
//! **Keys and channels** (prefix `P` = `--cluster-name`, see [`keys`]):
//! `P:room:ROOM` channel (subscribed while this server has members there);
//! `P:node:ID` channel (direct messages, delivery and receipt reports,
//! hello/shutdown); `P:nick:FOLDED` → owner node (claimed and released by
//! the scripts in [`keys`], which also keep `P:nicks:ID`, the node's
//! names); `P:guest` counter (blocks by `INCRBY`); `P:members:ROOM` hash
//! (display nick → node, for `/who`); `P:rooms` hash (`ROOM|NODE` → that
//! node's member count, for `/rooms`);
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
//! Reaping: [`keys::REAP_LOST`], run every second by every node, removes
//! a lost node's traces atomically; [`wire::Departed`] carries its (or a
//! stopping node's) users per room; a node that finds itself reaped while
//! only cut off re-registers. The README's "Cluster mode" says what users
//! see.

#[cfg(test)]
mod fake_redis;
pub mod keys;
pub mod link;
pub mod reconnect;
pub mod socket;
pub mod state;
pub mod url;
pub mod wire;
