//! Writing: one vectored flush per connection per turn, poll interest for
//! queues that cannot drain, receipts and skip notices.

use super::*;

impl Server {
    pub(super) fn flush_connections(&mut self) {
        let mut written = Vec::new();
        for _ in 0..FLUSH_ROUNDS {
            let list = std::mem::take(&mut self.conns.flush_list);
            if list.is_empty() {
                return;
            }
            for key in list {
                self.flush_connection(key, &mut written);
                for tag in written.drain(..) {
                    self.chat.on_written(&mut self.conns, tag);
                }
            }
        }
    }

    pub(super) fn flush_connection(&mut self, key: usize, written: &mut Vec<ReceiptTag>) {
        let max_outbuf = self.conns.max_outbuf();
        let now = self.conns.now;
        let Some(conn) = self.conns.slab.get_mut(key) else {
            return;
        };
        conn.in_flush_list = false;
        if conn.phase == Phase::Dead {
            return;
        }
        let pending_before = conn.out.pending();
        let result = conn.out.write_to(&mut conn.stream, written);
        let sent = pending_before - conn.out.pending();
        self.conns.queued_bytes -= sent;
        if sent > 0 {
            conn.last_output_progress = now;
        }
        let wants_writable = match result {
            Ok(Flushed::Drained) => false,
            Ok(Flushed::Blocked) => true,
            Err(err) => {
                debug!("client {key}: write failed: {err}");
                self.end_connection(key, Phase::Dead, CloseCause::Reset);
                return;
            }
        };
        if wants_writable != conn.wants_writable {
            let interest = if wants_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = Token(key + FIRST_CLIENT);
            if let Err(err) = self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, interest)
            {
                warn!("client {key}: cannot change poll interest: {err}");
                self.end_connection(key, Phase::Dead, CloseCause::Reset);
                return;
            }
            conn.wants_writable = wants_writable;
        }
        if wants_writable && !conn.stall_timer_armed {
            conn.stall_timer_armed = true;
            let serial = conn.serial;
            self.timers.schedule(
                conn.last_output_progress + self.config.write_timeout,
                Timer {
                    kind: TimerKind::WriteStall,
                    key,
                    serial,
                },
            );
        }
        let drained = conn.out.is_empty();
        if drained && conn.phase == Phase::Closing {
            self.conns.close_list.push(key);
        } else if conn.phase == Phase::Open
            && conn.out.skipped() > 0
            && conn.out.pending() < max_outbuf / 2
        {
            let skipped = conn.out.take_skipped();
            self.chat
                .on_lines_skipped(&mut self.conns, ClientId(key), skipped);
        }
    }
}
