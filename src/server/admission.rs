//! Taking new connections off the acceptor and into the chat.

use std::net::SocketAddr;
use std::time::Instant;

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::Interest;

use super::acceptor::{Accepted, ACCEPT_BACKOFF};
use super::connections::Connection;
use super::session::Session;
use super::socket_tuning;
use super::timers::{Timer, TimerKind};
use super::{telemetry, Server, Source, ACCEPT_BUDGET};
use crate::chat::{Admission, ClientId};

impl Server {
    pub(super) fn accept_connections(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            match self.acceptor.accept(now) {
                Accepted::Stream(stream, peer) => self.admit(stream, peer, now),
                Accepted::Done => return,
                Accepted::Exhausted { error, warn } => {
                    if let Some(at) = now.checked_add(ACCEPT_BACKOFF) {
                        let retry = Timer {
                            kind: TimerKind::AcceptRetry,
                            key: 0,
                            serial: 0,
                        };
                        self.timers.schedule(at, retry);
                    }
                    if warn {
                        warn!(
                            "cannot accept: {error}; pausing accepts ({} connections open)",
                            self.conns.len()
                        );
                    }
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        // Output is already batched into one write per loop turn; Nagle
        // would only hold a reply back until the client acknowledges the
        // previous turn's lines, which a delayed ACK makes 40 ms.
        if let Err(err) = stream.set_nodelay(true) {
            debug!("client from {peer}: cannot set TCP_NODELAY: {err}");
        }
        if self.sndbuf > 0 {
            if let Err(err) = socket_tuning::cap_send_buffer(&stream, self.sndbuf) {
                debug!("client from {peer}: cannot set SO_SNDBUF: {err}");
            }
        }
        let key = self.conns.vacant_key();
        if let Err(err) = self.poll.registry().register(
            &mut stream,
            Source::client_token(key),
            Interest::READABLE,
        ) {
            warn!("cannot register connection from {peer}: {err}");
            return;
        }
        self.next_serial += 1;
        let session = Session::new(&self.rules, now);
        let conn = Connection::new(self.next_serial, stream, peer, session, self.max_outbuf);
        let key = self.conns.insert(conn);
        let admission = self
            .chat
            .on_connect(&mut self.conns, ClientId(key), peer.ip());
        match admission {
            Admission::Chatting { nick } => info!("client {key} from {peer} connected as {nick}"),
            Admission::Waiting { place } => {
                info!("client {key} from {peer} connected, waiting at place {place}")
            }
            Admission::Refused(why) => {
                self.telemetry.refused.add(telemetry::refuse_reason(why));
                info!("client {key} from {peer} refused: {}", why.describe())
            }
        }
        self.arm_timer(key);
    }
}
