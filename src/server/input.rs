//! Reading: draining a socket within its per-turn budget and rate limit,
//! and handing decoded input to the chat.

use super::*;

impl Server {
    pub(super) fn read_connections(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.read_list) {
            if let Some(conn) = self.conns.slab.get_mut(key) {
                conn.in_read_list = false;
                self.read_connection(key, now);
            }
        }
    }

    /// Reads and handles input from one connection until the socket is
    /// drained or the turn's budget is spent.
    pub(super) fn read_connection(&mut self, key: usize, now: Instant) {
        let mut budget = READ_BUDGET;
        loop {
            if !self.handle_input(key, now) {
                return;
            }
            let Some(conn) = self.conns.slab.get_mut(key) else {
                return;
            };
            if !conn.read_ready {
                return;
            }
            if budget == 0 {
                conn.in_read_list = true;
                self.read_list.push(key);
                return;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    // Text after the last line end is a line; a rate pause
                    // defers the hang-up to the next read, which sees EOF again.
                    conn.decoder.finish();
                    if self.handle_input(key, now) {
                        self.hang_up(key);
                    }
                    return;
                }
                Ok(n) => {
                    conn.decoder.push(&self.scratch[..n]);
                    conn.last_input = now;
                    budget = budget.saturating_sub(n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    conn.read_ready = false;
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!("client {key}: read failed: {err}");
                    self.end_connection(key, Phase::Dead, CloseCause::Reset);
                    return;
                }
            }
        }
    }

    /// Hands decoded input to the chat. Returns false once the connection
    /// takes no more input: closing, or paused by its rate limit (then the
    /// rest stays in the decoder, and the socket unread, so TCP pushes back).
    pub(super) fn handle_input(&mut self, key: usize, now: Instant) -> bool {
        let id = ClientId(key);
        loop {
            let Some(conn) = self.conns.slab.get_mut(key) else {
                return false;
            };
            if conn.phase != Phase::Open || conn.rate_paused {
                return false;
            }
            if !conn.decoder.has_unread_input() {
                return true;
            }
            // Only lines cost a token, but which event comes next is known
            // only after decoding it: take a token on trial, give it back
            // for anything else.
            let bucket_before = conn.bucket;
            if let Err(resume_at) = conn.bucket.take(&self.rate_limit, now) {
                conn.rate_paused = true;
                self.timers.schedule(
                    resume_at,
                    Timer {
                        kind: TimerKind::RateResume,
                        key,
                        serial: conn.serial,
                    },
                );
                return false;
            }
            let decoded = conn.decoder.next();
            if !matches!(decoded, Some(Decoded::Line(_) | Decoded::TooLong)) {
                conn.bucket = bucket_before;
            }
            let Some(decoded) = decoded else {
                return true;
            };
            match decoded {
                Decoded::Line(line) => {
                    self.chat.on_line(&mut self.conns, id, &line);
                    let left_chat = self.chat.nick(id).is_none();
                    if let Some(conn) = self.conns.slab.get_mut(key) {
                        if left_chat && conn.phase == Phase::Closing {
                            conn.cause = Some(CloseCause::Quit);
                        }
                    }
                }
                Decoded::TooLong => self.chat.on_line_too_long(&mut self.conns, id),
                Decoded::HttpRequest => {
                    conn.cause = Some(CloseCause::HttpRequest);
                    self.chat.on_http_request(&mut self.conns, id);
                }
                Decoded::TelnetReply(reply) => {
                    self.conns.send_raw(key, Bytes::copy_from_slice(&reply));
                }
            }
        }
    }

    /// The peer closed its side. Output still queued is flushed, as a
    /// client that half-closes (`nc` after end of input) still reads.
    pub(super) fn hang_up(&mut self, key: usize) {
        self.end_connection(key, Phase::Closing, CloseCause::HungUp);
    }
}
