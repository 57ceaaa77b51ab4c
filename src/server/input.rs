//! Reading: taking input from the ready connections in round robin, one
//! decoded event at a time, within the flush pass's budget, and handing it
//! to the chat.
//!
//! Why a budget, and why per pass. The output cap (`--max-outbuf`) judges
//! what a reader has queued, and a reader is written once per pass over the
//! connections with output, which may take many turns (see `flush_list`).
//! If input were taken without bound, a reader's share could pass the cap
//! before its turn to be written came, and a reader as fast as loopback
//! would lose lines. So a pass hands the chat at most a quarter of
//! `--max-outbuf` of line bytes (each counted with the most a server line
//! adds to it), plus the one line that passes the mark; the budget is
//! refilled only when a new pass begins. Between two writes of one reader
//! lie the end of one pass and the start of the next, so a reader that
//! keeps up is never more than half its cap behind; only a reader that has
//! fallen well behind loses lines. Connections are served one event each
//! in turn, so every talker gets its share of the budget whatever the
//! others send, and those left over keep their place at the head of the
//! next turn that takes input.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::time::Instant;

use bytes::Bytes;
use log::debug;

use super::session::{CloseCause, Input, Phase};
use super::{Server, READ_BUDGET};
use crate::chat::ClientId;
use crate::config::MAX_LINE_OVERHEAD;
use crate::line::Decoded;

/// What serving one connection once left it with.
enum Served {
    /// Handed one event to the chat; there may be more.
    Event,
    /// Nothing more this turn: drained, paused, closing or gone.
    Done,
    /// Its raw read budget for the turn is spent: read again next turn.
    Later,
}

/// Line bytes one pass may hand the chat: a quarter of the output cap.
pub(super) fn pass_input_budget(max_outbuf: usize) -> usize {
    (max_outbuf / 4).max(1)
}

impl Server {
    pub(super) fn read_connections(&mut self, now: Instant) {
        if self.conns.flush_pass_began() {
            self.input_budget = pass_input_budget(self.max_outbuf);
        }
        let mut budget = self.input_budget;
        let mut ready: VecDeque<(usize, usize)> = self
            .conns
            .take_read_list()
            .into_iter()
            .map(|key| (key, 0))
            .collect();
        while let Some((key, read)) = ready.pop_front() {
            if budget == 0 {
                // In order, so that next turn starts where this one stopped.
                self.conns.schedule_read(key);
                for (key, _) in ready.drain(..) {
                    self.conns.schedule_read(key);
                }
                break;
            }
            let mut read = read;
            match self.serve_one(key, now, &mut read, &mut budget) {
                Served::Event => ready.push_back((key, read)),
                Served::Done => self.arm_timer(key),
                Served::Later => {
                    self.conns.schedule_read(key);
                    self.arm_timer(key);
                }
            }
        }
        self.input_budget = budget;
    }

    /// Hands the connection's next decoded event to the chat, reading the
    /// socket first if the decoder has nothing left. `read` counts the raw
    /// bytes read from it this turn; a line's cost comes off `budget`.
    fn serve_one(
        &mut self,
        key: usize,
        now: Instant,
        read: &mut usize,
        budget: &mut usize,
    ) -> Served {
        let id = ClientId(key);
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return Served::Done;
            };
            match conn.session.next_input(&self.rules, now) {
                Input::Event(event) => {
                    *budget = budget.saturating_sub(input_cost(&event));
                    match event {
                        Decoded::Line(line) => {
                            self.telemetry.lines_received += 1;
                            self.chat.on_line(&mut self.conns, id, &line);
                        }
                        Decoded::TooLong => self.chat.on_line_too_long(&mut self.conns, id),
                        Decoded::HttpRequest => self.chat.on_http_request(&mut self.conns, id),
                        Decoded::TelnetReply(reply) => {
                            self.conns.send_raw(key, Bytes::copy_from_slice(&reply));
                        }
                    }
                    return Served::Event;
                }
                // Closing, or paused by the rate limit: the rest stays in the
                // decoder and the socket unread, so TCP pushes back.
                Input::Paused | Input::Stopped => return Served::Done,
                Input::NeedMore => {}
            }
            if !conn.read_ready {
                return Served::Done;
            }
            if *read >= READ_BUDGET {
                return Served::Later;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    // Text after the last line end is a line: hand it over
                    // first (a rate pause leaves it for a later turn, whose
                    // read sees EOF again). Output still queued is flushed:
                    // a client that half-closes (`nc` after end of input)
                    // still reads.
                    if conn.session.input_ended() {
                        continue;
                    }
                    self.end_connection(key, Phase::Closing, CloseCause::HungUp);
                    return Served::Done;
                }
                Ok(n) => {
                    conn.session.received(&self.scratch[..n], now);
                    *read += n;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    conn.read_ready = false;
                    return Served::Done;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!("client {key}: read failed: {err}");
                    self.end_connection(key, Phase::Dead, CloseCause::Reset);
                    return Served::Done;
                }
            }
        }
    }
}

/// What an input event may queue for any one reader: a line with the most
/// a server line adds to it (nickname, prefix, CRLF). Replies to commands go
/// to their sender only and are counted alike; telnet replies are a few
/// bytes, and raw reading is bounded per connection anyway.
fn input_cost(event: &Decoded) -> usize {
    match event {
        Decoded::Line(line) => line.len() + MAX_LINE_OVERHEAD,
        Decoded::TooLong | Decoded::HttpRequest => MAX_LINE_OVERHEAD,
        Decoded::TelnetReply(_) => 0,
    }
}
