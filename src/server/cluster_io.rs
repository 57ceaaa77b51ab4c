//! The reactor's side of cluster mode: the two Redis sockets in the same
//! `Poll`, connected without blocking, pumped every loop turn, and
//! reconnected with backoff. What to send and what replies mean is the
//! sans-IO [`Cluster`]'s business.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Registry, Token};

use crate::cluster::link::{
    CommandEvent, CommandLink, LinkLimits, SubscriberEvent, SubscriberLink,
};
use crate::cluster::reconnect::{Backoff, WarnThrottle};
use crate::cluster::socket::{ReadStatus, RedisSocket};
use crate::cluster::state::{Cluster, RequestId, Subscription};
use crate::cluster::url::RedisUrl;

/// Bytes read from one Redis socket per loop turn.
const REDIS_READ_BUDGET: usize = 4 << 20;

/// How long connecting and the handshake may take: a Redis that accepts
/// nothing and refuses nothing (a black hole) must not leave the link
/// waiting for ever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Links {
    command: RedisSocket,
    command_link: CommandLink<RequestId>,
    subscriber: RedisSocket,
    subscriber_link: SubscriberLink,
    up: bool,
}

pub struct ClusterIo {
    url: RedisUrl,
    addr: SocketAddr,
    command_token: Token,
    subscriber_token: Token,
    links: Option<Links>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    warnings: WarnThrottle,
    /// A read stopped at its budget: come back without waiting for an event.
    more_to_read: bool,
    /// While connecting: when to give up.
    connect_deadline: Option<Instant>,
    /// Commands refused by the link's full output queue, in all.
    requests_dropped: u64,
    queue_full_warnings: WarnThrottle,
}

impl ClusterIo {
    pub fn new(
        url: RedisUrl,
        addr: SocketAddr,
        command_token: Token,
        subscriber_token: Token,
    ) -> Self {
        ClusterIo {
            url,
            addr,
            command_token,
            subscriber_token,
            links: None,
            retry_at: Some(Instant::now()),
            backoff: Backoff::for_redis(),
            warnings: WarnThrottle::for_redis(),
            more_to_read: false,
            connect_deadline: None,
            requests_dropped: 0,
            queue_full_warnings: WarnThrottle::for_redis(),
        }
    }

    /// When the reactor must wake up for Redis without an event.
    pub fn next_wakeup(&self) -> Option<Instant> {
        match (self.retry_at, self.connect_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn has_work(&self) -> bool {
        self.more_to_read
    }

    fn connect(&mut self, registry: &Registry) -> std::io::Result<Links> {
        let mut command = RedisSocket::connect(self.addr)?;
        command.register(registry, self.command_token)?;
        let mut subscriber = RedisSocket::connect(self.addr)?;
        subscriber.register(registry, self.subscriber_token)?;
        let limits = LinkLimits::default();
        Ok(Links {
            command,
            command_link: CommandLink::new(&self.url, limits),
            subscriber,
            subscriber_link: SubscriberLink::new(&self.url, limits),
            up: false,
        })
    }

    fn fail(&mut self, registry: &Registry, cluster: &mut Cluster, now: Instant, why: &str) {
        if let Some(mut links) = self.links.take() {
            let _ = links.command.deregister(registry);
            let _ = links.subscriber.deregister(registry);
            for id in links.command_link.take_unanswered() {
                cluster.on_unanswered(id);
            }
            if links.up {
                warn!("lost the Redis link to {}: {why}", self.url);
                cluster.link_down();
            }
        }
        if let Some(suppressed) = self.warnings.allow(now) {
            warn!(
                "cannot reach Redis at {}: {why} (local chat goes on; retrying){}",
                self.url,
                if suppressed > 0 {
                    format!(", {suppressed} more failures")
                } else {
                    String::new()
                }
            );
        }
        self.more_to_read = false;
        self.connect_deadline = None;
        self.retry_at = Some(self.backoff.next_attempt(now));
    }

    /// Moves what the cluster wants sent into the links, writes, reads, and
    /// hands replies and messages to the cluster.
    pub fn pump(&mut self, registry: &Registry, cluster: &mut Cluster, now: Instant) {
        if self.links.is_none() {
            if self.retry_at.is_some_and(|at| at <= now) {
                self.retry_at = None;
                match self.connect(registry) {
                    Ok(links) => {
                        self.links = Some(links);
                        self.connect_deadline = Some(now + CONNECT_TIMEOUT);
                    }
                    Err(err) => return self.fail(registry, cluster, now, &err.to_string()),
                }
            } else {
                // Nobody to send to: what the cluster queued is lost.
                while let Some(request) = cluster.poll_request() {
                    cluster.on_unanswered(request.id);
                }
                while cluster.poll_subscription().is_some() {}
                return;
            }
        }
        if let Err(why) = self.pump_links(cluster, now) {
            return self.fail(registry, cluster, now, &why);
        }
        let up = self.links.as_ref().is_some_and(|links| links.up);
        if up {
            self.connect_deadline = None;
        } else if self.connect_deadline.is_some_and(|at| at <= now) {
            let why = format!("no answer within {} s", CONNECT_TIMEOUT.as_secs());
            self.fail(registry, cluster, now, &why);
        }
    }

    fn pump_links(&mut self, cluster: &mut Cluster, now: Instant) -> Result<(), String> {
        let Some(links) = self.links.as_mut() else {
            return Ok(());
        };
        let connected = links.command.poll_connected().map_err(|e| e.to_string())?
            & links
                .subscriber
                .poll_connected()
                .map_err(|e| e.to_string())?;
        if !connected {
            return Ok(());
        }
        if links.up {
            cluster.publish_presence();
            let dropped = cluster.send_requests(&mut links.command_link);
            if dropped > 0 {
                self.requests_dropped += dropped;
                if let Some(suppressed) = self.queue_full_warnings.allow(now) {
                    warn!(
                        "the Redis link's output queue is full: {} commands dropped so far{}",
                        self.requests_dropped,
                        if suppressed > 0 {
                            format!(" ({suppressed} warnings held back)")
                        } else {
                            String::new()
                        }
                    );
                }
            }
            while let Some(change) = cluster.poll_subscription() {
                let _ = match &change {
                    Subscription::Subscribe(channel) => {
                        links.subscriber_link.subscribe(&[channel.as_ref()])
                    }
                    Subscription::Unsubscribe(channel) => {
                        links.subscriber_link.unsubscribe(&[channel.as_ref()])
                    }
                };
            }
        }
        links
            .subscriber
            .flush(&mut links.subscriber_link)
            .map_err(|e| e.to_string())?;
        links
            .command
            .flush(&mut links.command_link)
            .map_err(|e| e.to_string())?;
        let command_read = links
            .command
            .fill(&mut links.command_link, REDIS_READ_BUDGET)
            .map_err(|e| e.to_string())?;
        let subscriber_read = links
            .subscriber
            .fill(&mut links.subscriber_link, REDIS_READ_BUDGET)
            .map_err(|e| e.to_string())?;
        while let Some(event) = links.command_link.poll_event().map_err(|e| e.to_string())? {
            match event {
                CommandEvent::Ready => {}
                CommandEvent::Reply { tag, reply } => cluster.on_reply(tag, reply),
            }
        }
        while let Some(event) = links
            .subscriber_link
            .poll_event()
            .map_err(|e| e.to_string())?
        {
            match event {
                SubscriberEvent::Ready => {}
                SubscriberEvent::Message {
                    channel, payload, ..
                } => cluster.on_message(&channel, &payload),
                SubscriberEvent::Subscribed { channel, .. } => cluster.on_subscribed(&channel),
                SubscriberEvent::Error(message) => {
                    warn!("Redis refused a subscription: {message}");
                }
                _ => {}
            }
        }
        let closed = command_read.status == ReadStatus::Closed
            || subscriber_read.status == ReadStatus::Closed;
        if closed {
            return Err("Redis closed the connection".into());
        }
        self.more_to_read = command_read.status == ReadStatus::BudgetSpent
            || subscriber_read.status == ReadStatus::BudgetSpent;
        let ready = links.command_link.is_ready() && links.subscriber_link.is_ready();
        if !links.up && ready {
            links.up = true;
            self.backoff.succeeded();
            self.warnings.reset();
            info!(
                "joined the cluster through Redis at {} as node {}",
                self.url,
                cluster.node()
            );
            cluster.link_up(now);
            // Registration and subscriptions go out now, not next turn.
            return self.pump_links(cluster, now);
        }
        Ok(())
    }
}
