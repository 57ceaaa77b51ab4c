//! The start of the sans-IO `Cluster` state machine: this node's
//! registration (its alive key), nickname claims and guest-number blocks.
//!
//! It speaks to Redis only through [`Request`]s it queues and the
//! [`Reply`]s the caller hands back, and learns the time only from `now`
//! arguments, so it is tested against a fake Redis (`fake_redis.rs`) on a
//! virtual clock. The reactor's part: pass each request to
//! [`CommandLink::push_command`](super::link::CommandLink::push_command)
//! with its id as the tag, route replies to [`Cluster::on_reply`], and
//! report ids that never got one (queue full, link lost) to
//! [`Cluster::on_unanswered`].

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::keys::{Keys, CLAIM_NICK, RELEASE_NICK};
use super::link::Reply;
use super::wire::NodeId;

pub type RequestId = u64;

/// One Redis command for the command link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    pub args: Vec<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This node now holds the name cluster-wide.
    Granted,
    /// Another node's user has it.
    Taken,
    /// Redis did not answer (link down, queue full): the caller decides,
    /// by SPEC §4 to keep serving its own users.
    Unanswered,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// The answer to [`Cluster::claim_nick`], with the caller's ticket.
    NickClaim {
        ticket: u64,
        folded: String,
        outcome: ClaimOutcome,
    },
    /// Guest numbers are available again after
    /// [`Cluster::take_guest_number`] found none.
    GuestNumbersReady,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `--cluster-name`: the prefix of every key and channel.
    pub cluster_name: String,
    pub node: NodeId,
    /// `--node-timeout`: the alive key lives this long unless refreshed.
    pub node_timeout: Duration,
    /// Guest numbers reserved per `INCRBY`.
    pub guest_block: u64,
}

impl ClusterSettings {
    pub fn new(cluster_name: &str, node: NodeId) -> ClusterSettings {
        ClusterSettings {
            cluster_name: cluster_name.to_string(),
            node,
            node_timeout: Duration::from_secs(10),
            guest_block: 100,
        }
    }
}

/// What a request was for, to act on its reply.
enum Purpose {
    Claim { ticket: u64, folded: String },
    Release,
    GuestBlock,
    Alive,
    JoinNodes,
}

pub struct Cluster {
    settings: ClusterSettings,
    keys: Keys,
    node_text: Bytes,
    link_up: bool,
    next_id: RequestId,
    requests: VecDeque<Request>,
    waiting: HashMap<RequestId, Purpose>,
    events: VecDeque<ClusterEvent>,
    /// Reserved guest numbers not yet handed out.
    guests: Range<u64>,
    /// The next block once the current one runs low.
    spare_guests: Option<Range<u64>>,
    guest_block_asked: bool,
    someone_waits_for_guests: bool,
    next_alive_refresh: Option<Instant>,
}

impl Cluster {
    pub fn new(settings: ClusterSettings) -> Cluster {
        let keys = Keys::new(&settings.cluster_name);
        let node_text = Bytes::from(settings.node.to_string());
        Cluster {
            settings,
            keys,
            node_text,
            link_up: false,
            next_id: 0,
            requests: VecDeque::new(),
            waiting: HashMap::new(),
            events: VecDeque::new(),
            guests: 0..0,
            spare_guests: None,
            guest_block_asked: false,
            someone_waits_for_guests: false,
            next_alive_refresh: None,
        }
    }

    pub fn node(&self) -> NodeId {
        self.settings.node
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn is_link_up(&self) -> bool {
        self.link_up
    }

    fn request(&mut self, purpose: Purpose, args: Vec<Bytes>) {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id, purpose);
        self.requests.push_back(Request { id, args });
    }

    /// The command link finished its handshake: announce this node, mark
    /// it alive and make sure guest numbers are in stock.
    pub fn link_up(&mut self, now: Instant) {
        self.link_up = true;
        let nodes = self.keys.nodes();
        let node = self.node_text.clone();
        self.request(Purpose::JoinNodes, vec!["SADD".into(), nodes, node]);
        self.refresh_alive(now);
        self.stock_guests();
    }

    /// The command link is gone. Whatever waited on it is settled now as
    /// unanswered; its replies, should any come, are for a dead link.
    pub fn link_down(&mut self) {
        self.link_up = false;
        self.next_alive_refresh = None;
        self.requests.clear();
        let mut ids: Vec<RequestId> = self.waiting.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.on_unanswered(id);
        }
    }

    /// Runs what is due at `now`: the alive key's refresh.
    pub fn tick(&mut self, now: Instant) {
        if self.next_alive_refresh.is_some_and(|at| at <= now) {
            self.refresh_alive(now);
        }
    }

    /// When [`tick`](Cluster::tick) next has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.next_alive_refresh
    }

    fn refresh_alive(&mut self, now: Instant) {
        let ttl_ms = self.settings.node_timeout.as_millis().max(1).to_string();
        let key = self.keys.alive(self.settings.node);
        let node = self.node_text.clone();
        self.request(
            Purpose::Alive,
            vec!["SET".into(), key, node, "PX".into(), ttl_ms.into()],
        );
        // Three refreshes per timeout: one lost or late refresh does not
        // make the others count this node lost.
        self.next_alive_refresh = Some(now + self.settings.node_timeout / 3);
    }

    /// Asks for `folded` (a case-folded nickname) cluster-wide; the answer
    /// comes as a [`ClusterEvent::NickClaim`] with `ticket`.
    pub fn claim_nick(&mut self, ticket: u64, folded: &str) {
        if !self.link_up {
            self.events.push_back(ClusterEvent::NickClaim {
                ticket,
                folded: folded.to_string(),
                outcome: ClaimOutcome::Unanswered,
            });
            return;
        }
        let args = self.nick_script(CLAIM_NICK, folded);
        let folded = folded.to_string();
        self.request(Purpose::Claim { ticket, folded }, args);
    }

    /// Frees a name this node held; a no-op in Redis if another node has
    /// claimed it since.
    pub fn release_nick(&mut self, folded: &str) {
        if !self.link_up {
            return;
        }
        let args = self.nick_script(RELEASE_NICK, folded);
        self.request(Purpose::Release, args);
    }

    fn nick_script(&self, script: &'static str, folded: &str) -> Vec<Bytes> {
        vec![
            "EVAL".into(),
            Bytes::from_static(script.as_bytes()),
            "2".into(),
            self.keys.nick(folded),
            self.keys.node_nicks(self.settings.node),
            self.node_text.clone(),
            Bytes::copy_from_slice(folded.as_bytes()),
        ]
    }

    /// A guest number unique across the cluster, at once from the reserved
    /// block; `None` when none is in stock (a
    /// [`ClusterEvent::GuestNumbersReady`] follows once there are).
    pub fn take_guest_number(&mut self) -> Option<u64> {
        if self.guests.is_empty() {
            if let Some(spare) = self.spare_guests.take() {
                self.guests = spare;
            }
        }
        let number = self.guests.next();
        if number.is_none() {
            self.someone_waits_for_guests = true;
        }
        self.stock_guests();
        number
    }

    /// Keeps a spare block, so numbers are handed out without waiting.
    fn stock_guests(&mut self) {
        let low = (self.guests.end - self.guests.start) <= self.settings.guest_block / 2;
        if self.link_up && low && self.spare_guests.is_none() && !self.guest_block_asked {
            self.guest_block_asked = true;
            let block = self.settings.guest_block.max(1).to_string();
            let key = self.keys.guest_counter();
            self.request(
                Purpose::GuestBlock,
                vec!["INCRBY".into(), key, block.into()],
            );
        }
    }

    /// The next command for Redis.
    pub fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    /// The next thing the chat must hear about.
    pub fn poll_event(&mut self) -> Option<ClusterEvent> {
        self.events.pop_front()
    }

    pub fn on_reply(&mut self, id: RequestId, reply: Reply) {
        let Some(purpose) = self.waiting.remove(&id) else {
            return;
        };
        match purpose {
            Purpose::Claim { ticket, folded } => {
                let outcome = match reply {
                    Reply::Integer(1) => ClaimOutcome::Granted,
                    Reply::Integer(0) => ClaimOutcome::Taken,
                    _ => ClaimOutcome::Unanswered,
                };
                self.events.push_back(ClusterEvent::NickClaim {
                    ticket,
                    folded,
                    outcome,
                });
            }
            Purpose::GuestBlock => {
                self.guest_block_asked = false;
                let block = self.settings.guest_block.max(1);
                // INCRBY answers the block's last number.
                if let Some(end) = reply.integer().and_then(|n| u64::try_from(n).ok()) {
                    let block = end.saturating_sub(block) + 1..end + 1;
                    if self.guests.is_empty() {
                        self.guests = block;
                    } else {
                        self.spare_guests = Some(block);
                    }
                    if self.someone_waits_for_guests {
                        self.someone_waits_for_guests = false;
                        self.events.push_back(ClusterEvent::GuestNumbersReady);
                    }
                }
            }
            Purpose::Release | Purpose::Alive | Purpose::JoinNodes => {}
        }
    }

    /// `id` will never be answered: the link failed or its queue was full.
    pub fn on_unanswered(&mut self, id: RequestId) {
        let Some(purpose) = self.waiting.remove(&id) else {
            return;
        };
        match purpose {
            Purpose::Claim { ticket, folded } => self.events.push_back(ClusterEvent::NickClaim {
                ticket,
                folded,
                outcome: ClaimOutcome::Unanswered,
            }),
            Purpose::GuestBlock => self.guest_block_asked = false,
            Purpose::Release | Purpose::Alive | Purpose::JoinNodes => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_redis::FakeRedis;
    use super::*;

    /// Nodes sharing one fake Redis, on one virtual clock.
    struct World {
        redis: FakeRedis,
        now: Instant,
    }

    impl World {
        fn new() -> World {
            World {
                redis: FakeRedis::default(),
                now: Instant::now(),
            }
        }

        /// Carries every queued request of `node` to Redis and its reply
        /// back, as the reactor will.
        fn exchange(&mut self, node: &mut Cluster) {
            while let Some(request) = node.poll_request() {
                let reply = self.redis.execute(&request.args, self.now);
                node.on_reply(request.id, reply);
            }
        }

        fn node(&mut self, id: NodeId) -> Cluster {
            let mut node = Cluster::new(ClusterSettings::new("t", id));
            node.link_up(self.now);
            self.exchange(&mut node);
            node
        }

        fn events(node: &mut Cluster) -> Vec<ClusterEvent> {
            std::iter::from_fn(|| node.poll_event()).collect()
        }
    }

    fn claim(ticket: u64, folded: &str, outcome: ClaimOutcome) -> ClusterEvent {
        ClusterEvent::NickClaim {
            ticket,
            folded: folded.into(),
            outcome,
        }
    }

    #[test]
    fn a_nickname_goes_to_the_first_node_and_back_when_released() {
        let mut world = World::new();
        let mut a = world.node(1);
        let mut b = world.node(2);
        a.claim_nick(10, "ada");
        world.exchange(&mut a);
        b.claim_nick(20, "ada");
        world.exchange(&mut b);
        assert_eq!(
            World::events(&mut a),
            vec![claim(10, "ada", ClaimOutcome::Granted)]
        );
        assert_eq!(
            World::events(&mut b),
            vec![claim(20, "ada", ClaimOutcome::Taken)]
        );
        assert_eq!(world.redis.members(b"t:nicks:1"), vec![Bytes::from("ada")]);

        // Claiming again what one holds (a re-registration) is granted.
        a.claim_nick(11, "ada");
        world.exchange(&mut a);
        assert_eq!(
            World::events(&mut a),
            vec![claim(11, "ada", ClaimOutcome::Granted)]
        );

        // B's release of a name it does not hold frees nothing.
        b.release_nick("ada");
        world.exchange(&mut b);
        assert_eq!(world.redis.get(b"t:nick:ada", world.now), Some("1".into()));

        a.release_nick("ada");
        world.exchange(&mut a);
        assert_eq!(world.redis.get(b"t:nick:ada", world.now), None);
        assert!(world.redis.members(b"t:nicks:1").is_empty());
        b.claim_nick(21, "ada");
        world.exchange(&mut b);
        assert_eq!(
            World::events(&mut b),
            vec![claim(21, "ada", ClaimOutcome::Granted)]
        );
    }

    #[test]
    fn claims_without_a_link_are_answered_at_once_as_unanswered() {
        let mut node = Cluster::new(ClusterSettings::new("t", 1));
        node.claim_nick(5, "bob");
        assert_eq!(node.poll_request(), None);
        assert_eq!(
            World::events(&mut node),
            vec![claim(5, "bob", ClaimOutcome::Unanswered)]
        );
    }

    #[test]
    fn a_lost_link_settles_waiting_claims() {
        let mut world = World::new();
        let mut node = world.node(1);
        node.claim_nick(1, "x");
        node.claim_nick(2, "y");
        let first = node.poll_request().unwrap();
        node.link_down();
        assert_eq!(
            World::events(&mut node),
            vec![
                claim(1, "x", ClaimOutcome::Unanswered),
                claim(2, "y", ClaimOutcome::Unanswered)
            ]
        );
        // A reply arriving for the dead link changes nothing.
        node.on_reply(first.id, Reply::Integer(1));
        assert_eq!(node.poll_event(), None);
        assert_eq!(node.poll_request(), None);
    }

    #[test]
    fn guest_numbers_come_in_disjoint_blocks_without_waiting() {
        let mut world = World::new();
        let mut a = world.node(1);
        let mut b = world.node(2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            for node in [&mut a, &mut b] {
                let number = node.take_guest_number().expect("in stock");
                assert!(number >= 1);
                assert!(seen.insert(number), "guest-{number} handed out twice");
                world.exchange(node);
            }
        }
        assert_eq!(World::events(&mut a), vec![]);
        // One INCRBY per block, not per guest.
        let incrs = world.redis.log.iter().filter(|c| c[0] == "INCRBY").count();
        assert!(incrs <= 2 * (1000 / 100 + 2), "{incrs} INCRBYs");
    }

    #[test]
    fn out_of_guest_numbers_until_redis_answers() {
        let mut world = World::new();
        let mut node = Cluster::new(ClusterSettings {
            guest_block: 2,
            ..ClusterSettings::new("t", 1)
        });
        assert_eq!(node.take_guest_number(), None);
        node.link_up(world.now);
        world.exchange(&mut node);
        assert_eq!(
            World::events(&mut node),
            vec![ClusterEvent::GuestNumbersReady]
        );
        assert_eq!(node.take_guest_number(), Some(1));
        assert_eq!(node.take_guest_number(), Some(2));
        // The refill asked for after the first number is not answered yet.
        let refill = node.poll_request().expect("a refill");
        assert_eq!(node.take_guest_number(), None);
        node.on_reply(refill.id, world.redis.execute(&refill.args, world.now));
        assert_eq!(
            World::events(&mut node),
            vec![ClusterEvent::GuestNumbersReady]
        );
        assert_eq!(node.take_guest_number(), Some(3));
    }

    #[test]
    fn the_alive_key_stays_while_refreshed_and_expires_after_the_timeout() {
        let mut world = World::new();
        let mut node = world.node(7);
        let timeout = Duration::from_secs(10);
        assert_eq!(world.redis.members(b"t:nodes"), vec![Bytes::from("7")]);
        assert_eq!(world.redis.pttl(b"t:alive:7", world.now), 10_000);
        for _ in 0..30 {
            let wake = node.next_wakeup().expect("a refresh is scheduled");
            assert!(wake - world.now <= timeout / 3);
            world.now = wake;
            node.tick(world.now);
            world.exchange(&mut node);
            assert!(world.redis.get(b"t:alive:7", world.now).is_some());
        }
        // A node that stops refreshing is gone after the timeout.
        node.link_down();
        assert_eq!(node.next_wakeup(), None);
        world.now += timeout - Duration::from_millis(1);
        assert!(world.redis.get(b"t:alive:7", world.now).is_some());
        world.now += Duration::from_millis(1);
        assert_eq!(world.redis.get(b"t:alive:7", world.now), None);
    }
}
