//! Room lines collected during one loop turn and handed out together.
//!
//! Every line said in a room during a turn is written into one shared
//! buffer. At the end of the turn the buffer is frozen, and each member gets
//! the part meant for it as slices of that one buffer: a member that said
//! nothing this turn gets the whole turn as a single slice, so its out-queue
//! gains one entry and its socket one `writev` segment however many lines
//! there were. Nothing is copied per recipient.
//!
//! Batching must never reorder what one sender sends. The chat keeps that by
//! flushing a room's batch before anything else reaches a member directly
//! (a direct message, a reply, a receipt) and before the room's membership
//! changes, so "who was in the room when it was said" stays exact.

use std::fmt::{self, Write as _};
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::{ClientId, Outbox, ReceiptTag, Sent};

/// Below this size a block is not worth copying out of (see
/// [`Block::share`]).
const SMALL_BLOCK: usize = 4096;

struct Segment {
    /// End offset of this line in the buffer; it starts where the previous
    /// one ended.
    end: usize,
    /// Who does not get this line: its sender, or the subject of a notice.
    origin: ClientId,
    receipt: Option<ReceiptTag>,
}

/// The lines of one room in the current turn.
#[derive(Default)]
pub struct RoomBatch {
    buf: BytesMut,
    segments: Vec<Segment>,
}

impl RoomBatch {
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Appends one line made of `parts`, copied straight into the shared
    /// buffer, with CRLF after it. The hot path: every chat line comes
    /// through here, so it avoids the formatting machinery.
    pub fn push_parts(&mut self, parts: &[&str], origin: ClientId, receipt: Option<ReceiptTag>) {
        for part in parts {
            self.buf.extend_from_slice(part.as_bytes());
        }
        self.end_line(origin, receipt);
    }

    /// Appends one line, formatted straight into the shared buffer, with
    /// `prefix` before and CRLF after it.
    pub fn push(
        &mut self,
        prefix: &str,
        text: fmt::Arguments<'_>,
        origin: ClientId,
        receipt: Option<ReceiptTag>,
    ) {
        self.buf.extend_from_slice(prefix.as_bytes());
        // Writing into a BytesMut cannot fail.
        let _ = self.buf.write_fmt(text);
        self.end_line(origin, receipt);
    }

    fn end_line(&mut self, origin: ClientId, receipt: Option<ReceiptTag>) {
        self.buf.extend_from_slice(b"\r\n");
        self.segments.push(Segment {
            end: self.buf.len(),
            origin,
            receipt,
        });
    }

    /// Freezes the turn's lines into a block to hand out. The buffer starts
    /// afresh, so every block is its own allocation and a slice kept by a
    /// slow client pins only its own turn.
    pub fn take(&mut self) -> Block {
        Block {
            bytes: std::mem::take(&mut self.buf).freeze(),
            segments: std::mem::take(&mut self.segments),
        }
    }
}

/// A frozen turn of one room's lines.
pub struct Block {
    bytes: Bytes,
    segments: Vec<Segment>,
}

impl Block {
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn line_count(&self) -> u64 {
        self.segments.len() as u64
    }

    /// Queues each member's share: every line except its own. Returns the
    /// receipts of lines that were skipped for a full queue, which count as
    /// not delivered.
    pub fn deliver(&self, members: &[ClientId], out: &mut impl Outbox) -> Vec<ReceiptTag> {
        let mut skipped = Vec::new();
        let mut origins: Vec<ClientId> = Vec::new();
        for segment in &self.segments {
            if !origins.contains(&segment.origin) {
                origins.push(segment.origin);
            }
        }
        let any_receipts = self.segments.iter().any(|s| s.receipt.is_some());
        for &member in members {
            let is_origin = origins.contains(&member);
            if !is_origin && !any_receipts {
                out.send_lines(member, self.bytes.clone());
            } else {
                self.deliver_share(member, is_origin, out, &mut skipped);
            }
        }
        skipped
    }

    /// The general path: skip the member's own lines, send receipt-tagged
    /// lines as entries of their own, and everything else in runs.
    fn deliver_share(
        &self,
        member: ClientId,
        is_origin: bool,
        out: &mut impl Outbox,
        skipped: &mut Vec<ReceiptTag>,
    ) {
        let mut run: Option<Range<usize>> = None;
        let mut start = 0;
        for segment in &self.segments {
            let line = start..segment.end;
            start = segment.end;
            if segment.origin == member || segment.receipt.is_some() {
                if let Some(run) = run.take() {
                    out.send_lines(member, self.share(run, is_origin));
                }
                if let (true, Some(tag)) = (segment.origin != member, segment.receipt) {
                    if out.send(member, self.share(line, is_origin), Some(tag)) == Sent::Skipped {
                        skipped.push(tag);
                    }
                }
                continue;
            }
            run = Some(run.map_or(line.clone(), |run| run.start..line.end));
        }
        if let Some(run) = run {
            out.send_lines(member, self.share(run, is_origin));
        }
    }

    /// A slice of the block, or a copy of it when the slice is a small part
    /// of a big block and goes to one of the block's senders. A slice keeps
    /// its whole block alive, so a client that talks a lot and reads slowly
    /// would otherwise pin whole turns of the room for a few bytes each.
    /// Members who said nothing get everything, so for them a slice is
    /// always most of its block.
    fn share(&self, range: Range<usize>, is_origin: bool) -> Bytes {
        let small_part = range.len() * 4 < self.bytes.len();
        if is_origin && small_part && self.bytes.len() > SMALL_BLOCK {
            Bytes::copy_from_slice(&self.bytes[range])
        } else {
            self.bytes.slice(range)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what each member was sent, chunk by chunk.
    #[derive(Default)]
    struct Chunks {
        sent: Vec<(ClientId, Vec<u8>, Option<ReceiptTag>)>,
        full: Vec<ClientId>,
    }

    impl Outbox for Chunks {
        fn send(&mut self, to: ClientId, line: Bytes, receipt: Option<ReceiptTag>) -> Sent {
            if self.full.contains(&to) {
                return Sent::Skipped;
            }
            self.sent.push((to, line.to_vec(), receipt));
            Sent::Queued
        }

        fn send_lines(&mut self, to: ClientId, lines: Bytes) {
            self.sent.push((to, lines.to_vec(), None));
        }

        fn close(&mut self, _to: ClientId, _why: crate::chat::Close) {}
    }

    impl Chunks {
        fn of(&self, member: ClientId) -> Vec<String> {
            self.sent
                .iter()
                .filter(|(to, _, _)| *to == member)
                .map(|(_, bytes, _)| String::from_utf8(bytes.clone()).unwrap())
                .collect()
        }
    }

    const A: ClientId = ClientId(1);
    const B: ClientId = ClientId(2);
    const C: ClientId = ClientId(3);

    #[test]
    fn a_quiet_member_gets_the_whole_turn_in_one_chunk() {
        let mut batch = RoomBatch::default();
        batch.push("", format_args!("a: one"), A, None);
        batch.push("", format_args!("a: two"), A, None);
        let mut out = Chunks::default();
        let skipped = batch.take().deliver(&[A, B, C], &mut out);
        assert!(skipped.is_empty());
        assert_eq!(out.of(B), ["a: one\r\na: two\r\n"]);
        assert_eq!(out.of(C), ["a: one\r\na: two\r\n"]);
        assert!(
            out.of(A).is_empty(),
            "the sender gets none of its own lines"
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn a_sender_gets_the_others_lines_in_order_around_its_own() {
        let mut batch = RoomBatch::default();
        batch.push("", format_args!("b: 1"), B, None);
        batch.push("", format_args!("b: 2"), B, None);
        batch.push("", format_args!("a: 3"), A, None);
        batch.push("* ", format_args!("b waves"), B, None);
        let mut out = Chunks::default();
        batch.take().deliver(&[A, B, C], &mut out);
        assert_eq!(out.of(A), ["b: 1\r\nb: 2\r\n", "* b waves\r\n"]);
        assert_eq!(out.of(B), ["a: 3\r\n"]);
        assert_eq!(out.of(C), ["b: 1\r\nb: 2\r\na: 3\r\n* b waves\r\n"]);
    }

    #[test]
    fn receipt_lines_travel_alone_with_their_tag_and_skips_are_reported() {
        let mut batch = RoomBatch::default();
        batch.push("", format_args!("b: plain"), B, None);
        batch.push("", format_args!("a: tagged"), A, Some(ReceiptTag(7)));
        batch.push("", format_args!("b: after"), B, None);
        let mut out = Chunks {
            full: vec![C],
            ..Chunks::default()
        };
        let skipped = batch.take().deliver(&[A, B, C], &mut out);
        assert_eq!(skipped, [ReceiptTag(7)], "C's queue was full");
        let to_b: Vec<_> = out.sent.iter().filter(|(to, _, _)| *to == B).collect();
        assert_eq!(to_b.len(), 1);
        assert_eq!(to_b[0].1, b"a: tagged\r\n");
        assert_eq!(to_b[0].2, Some(ReceiptTag(7)));
        assert_eq!(out.of(A), ["b: plain\r\n", "b: after\r\n"]);
        assert_eq!(out.of(C), ["b: plain\r\n", "b: after\r\n"]);
    }

    #[test]
    fn a_small_share_of_a_big_block_is_copied_for_its_sender_only() {
        let mut batch = RoomBatch::default();
        let long = "x".repeat(200);
        for _ in 0..100 {
            batch.push("", format_args!("a: {long}"), A, None);
        }
        batch.push("", format_args!("b: short"), B, None);
        let block = batch.take();
        let block_start = block.bytes.as_ptr() as usize;
        let block_end = block_start + block.bytes.len();
        let inside = |bytes: &Bytes| (block_start..block_end).contains(&(bytes.as_ptr() as usize));
        assert!(!inside(&block.share(0..10, true)), "copied for a sender");
        assert!(
            inside(&block.share(0..10, false)),
            "sliced for everyone else"
        );
        assert!(inside(&block.share(0..block.bytes.len() / 2, true)));
    }
}
