//! One loop turn's exchange with the other servers: Redis pumped, and what
//! came back handed to the chat.

use std::time::Instant;

use log::{info, warn};

use super::Server;
use crate::chat::{ClaimAnswer, DirectOutcome, ReceiptTag, RemoteDeparture};
use crate::cluster::state::{ClaimOutcome, Cluster, ClusterEvent, CONTACT_BACK, CONTACT_LOST};
use crate::cluster::wire::DepartureCause;

impl Server {
    pub(super) fn pump_cluster(&mut self, now: Instant) {
        let (Some(io), Some(cluster)) = (self.cluster_io.as_mut(), self.chat.peers_mut().as_mut())
        else {
            return;
        };
        cluster.tick(now);
        io.pump(self.poll.registry(), cluster, now);
        while let Some(event) = self.chat.peers_mut().as_mut().and_then(Cluster::poll_event) {
            self.on_cluster_event(event);
        }
        for (relay, delivered) in self.chat.take_relayed() {
            let outcome = if delivered {
                DirectOutcome::Delivered
            } else {
                DirectOutcome::Left
            };
            if let Some(cluster) = self.chat.peers_mut() {
                cluster.direct_settled(relay, outcome);
            }
        }
        for (relay, recipients, delivered) in self.chat.take_relayed_receipts() {
            if let Some(cluster) = self.chat.peers_mut() {
                cluster.receipt_settled(relay, recipients, delivered);
            }
        }
    }

    fn on_cluster_event(&mut self, event: ClusterEvent) {
        let out = &mut self.conns;
        match event {
            ClusterEvent::NickClaim {
                ticket, outcome, ..
            } => {
                let answer = match outcome {
                    ClaimOutcome::Granted => ClaimAnswer::Granted,
                    ClaimOutcome::Taken => ClaimAnswer::Taken,
                    ClaimOutcome::Unanswered => ClaimAnswer::Unanswered,
                };
                self.chat.on_nick_claim(out, ticket, answer);
            }
            ClusterEvent::GuestNumbersReady => {}
            ClusterEvent::RemoteLines {
                room,
                lines,
                receipts,
            } => {
                self.chat.on_remote_lines(out, &room, lines, &receipts);
            }
            ClusterEvent::ReceiptServers { tag, servers } => {
                let tag = ReceiptTag(tag as usize);
                self.chat.on_receipt_servers(out, tag, servers);
            }
            ClusterEvent::ReceiptReport {
                tag,
                recipients,
                delivered,
            } => {
                let tag = ReceiptTag(tag as usize);
                self.chat.on_receipt_report(out, tag, recipients, delivered);
            }
            ClusterEvent::RemoteDirect {
                target,
                line,
                relay,
            } => {
                if let Some(outcome) = self.chat.on_remote_direct(out, &target, line, relay) {
                    if let Some(cluster) = self.chat.peers_mut() {
                        cluster.direct_settled(relay, outcome);
                    }
                }
            }
            ClusterEvent::DirectLookedUp { ticket } => {
                self.chat.on_direct_looked_up(out, ticket);
            }
            ClusterEvent::DirectReport { ticket, outcome } => {
                self.chat.on_direct_report(out, ticket, outcome);
            }
            ClusterEvent::MemberList { ticket, names } => {
                self.chat.on_member_list(out, ticket, names);
            }
            ClusterEvent::RoomList { ticket, rooms } => {
                self.chat.on_room_list(out, ticket, rooms);
            }
            ClusterEvent::MembersLeft { room, nicks, cause } => {
                let why = match cause {
                    DepartureCause::LostServer => RemoteDeparture::LostServer,
                    DepartureCause::ShuttingDown => RemoteDeparture::ServerShuttingDown,
                };
                info!(
                    "{} users of another server left {room}: {why:?}",
                    nicks.len()
                );
                self.chat.on_remote_departure(out, &room, &nicks, why);
            }
            ClusterEvent::Contact { rooms, back } => {
                let text = if back { CONTACT_BACK } else { CONTACT_LOST };
                self.chat.tell_rooms(out, &rooms, text);
            }
            ClusterEvent::NickLost { folded } => {
                self.chat.on_nick_lost(out, &folded);
            }
            ClusterEvent::LinesLost { room, count } => {
                warn!("{count} lines of other servers in {room} were lost");
                self.chat.on_lines_lost(out, &room, count);
            }
        }
    }
}
