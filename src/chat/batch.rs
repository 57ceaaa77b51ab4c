//! Room lines collected during one loop turn and handed out together.
//!
//! Every line said in a room during a turn is written into one shared
//! buffer. At the end of the turn the buffer is frozen, and each member gets
//! the part meant for it as slices of that one buffer: a member that said
//! nothing this turn gets the whole turn as a single slice, so its out-queue
//! gains one entry and its socket one `writev` segment however many lines
//! there were. Nothing is copied per recipient in that common case.
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

/// Working memory for [`Block::deliver`], kept by the chat between turns so
/// that handing out a block allocates nothing in the steady state.
///
/// It answers "which lines of this block did member M say?" in time
/// proportional to M's own lines, so a turn with S speakers and N members
/// costs O(N + lines) instead of O(N x S).
#[derive(Default)]
pub struct Speakers {
    /// Indices of the block's lines, grouped by origin, in order within each
    /// origin.
    lines_by_origin: Vec<(ClientId, u32)>,
    /// Indexed by client id: 1 + where the client's group starts in
    /// `lines_by_origin`, or 0 when it said nothing in this block. Only the
    /// entries of this block's origins are ever non-zero, and they are
    /// zeroed again when the block is done.
    group_start: Vec<u32>,
    /// Indices of the receipt-tagged lines, in order.
    tagged: Vec<u32>,
}

impl Speakers {
    fn index(&mut self, segments: &[Segment]) {
        self.lines_by_origin.clear();
        self.tagged.clear();
        for (index, segment) in segments.iter().enumerate() {
            let index = index as u32;
            self.lines_by_origin.push((segment.origin, index));
            if segment.receipt.is_some() {
                self.tagged.push(index);
            }
        }
        // Stable: each origin's lines stay in the order they were said.
        self.lines_by_origin.sort_by_key(|&(origin, _)| origin);
        let mut previous = None;
        for (at, &(origin, _)) in self.lines_by_origin.iter().enumerate() {
            if previous != Some(origin) {
                previous = Some(origin);
                if self.group_start.len() <= origin.0 {
                    self.group_start.resize(origin.0 + 1, 0);
                }
                self.group_start[origin.0] = at as u32 + 1;
            }
        }
    }

    /// Indices of the lines `member` said, in order.
    fn own_lines(&self, member: ClientId) -> impl Iterator<Item = u32> + '_ {
        let start = match self.group_start.get(member.0) {
            Some(&start) if start > 0 => start as usize - 1,
            _ => self.lines_by_origin.len(),
        };
        self.lines_by_origin[start..]
            .iter()
            .take_while(move |&&(origin, _)| origin == member)
            .map(|&(_, index)| index)
    }

    fn said_something(&self, member: ClientId) -> bool {
        self.group_start
            .get(member.0)
            .is_some_and(|&start| start > 0)
    }

    /// Forgets the block, in time proportional to its lines.
    fn clear(&mut self) {
        for &(origin, _) in &self.lines_by_origin {
            if let Some(start) = self.group_start.get_mut(origin.0) {
                *start = 0;
            }
        }
        self.lines_by_origin.clear();
        self.tagged.clear();
    }
}

/// One piece cut once for many recipients: untagged lines with their count,
/// or one receipt-tagged line (count 1).
pub type SharedPiece = (Bytes, u32, Option<ReceiptTag>);

/// Queues the same cut pieces for `member`, in order; a tagged line its
/// queue cannot take goes to `skipped` (it counts as not delivered).
pub fn send_shared(
    out: &mut impl Outbox,
    member: ClientId,
    pieces: &[SharedPiece],
    skipped: &mut Vec<ReceiptTag>,
) {
    for (bytes, count, receipt) in pieces {
        match receipt {
            None => out.send_lines(member, bytes.clone(), *count),
            Some(tag) => {
                if out.send(member, bytes.clone(), Some(*tag)) == Sent::Skipped {
                    skipped.push(*tag);
                }
            }
        }
    }
}

/// A frozen turn of one room's lines.
///
/// Memory invariant: every piece handed to the outbox either is a copy that
/// owns exactly its own bytes, or is a slice of the block at least a quarter
/// of the block's length, or a slice of a block of at most [`SMALL_BLOCK`]
/// bytes. A queued piece therefore keeps alive at most
/// `max(SMALL_BLOCK, 4 x its length)` bytes, and a recipient's memory stays
/// within a small factor of what its out-queue counts against its cap, for
/// every recipient, speaker or not. (A transport that splits a piece further
/// to fit its cap must copy the lines it keeps, for the same reason.) The
/// common case, a member who said nothing getting the whole block, is a
/// slice and copies nothing.
pub struct Block {
    bytes: Bytes,
    segments: Vec<Segment>,
}

/// One piece of the block meant for a recipient, in order.
enum Piece {
    /// Several untagged lines in one chunk, and how many.
    Lines(Range<usize>, u32),
    /// One receipt-tagged line.
    Tagged(Range<usize>, ReceiptTag),
}

impl Block {
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The lines that carry a receipt, where they are in [`Block::bytes`].
    pub fn receipts(&self) -> Vec<(ReceiptTag, Range<usize>)> {
        let mut start = 0;
        let mut tagged = Vec::new();
        for segment in &self.segments {
            if let Some(tag) = segment.receipt {
                tagged.push((tag, start..segment.end));
            }
            start = segment.end;
        }
        tagged
    }

    pub fn line_count(&self) -> u64 {
        self.segments.len() as u64
    }

    /// Queues each member's share: every line except its own. Returns the
    /// receipts of lines that were skipped for a full queue, which count as
    /// not delivered.
    pub fn deliver(
        &self,
        members: &[ClientId],
        speakers: &mut Speakers,
        out: &mut impl Outbox,
    ) -> Vec<ReceiptTag> {
        let mut skipped = Vec::new();
        speakers.index(&self.segments);
        // What every member who said nothing gets, cut and copied once for
        // all of them. Without receipts it is the whole block in one slice.
        let mut common: Vec<SharedPiece> = Vec::new();
        self.pieces(&[], &speakers.tagged, |piece| {
            common.push(match piece {
                Piece::Lines(range, count) => (self.share(range), count, None),
                Piece::Tagged(range, tag) => (self.share(range), 1, Some(tag)),
            });
        });
        let mut own = Vec::new();
        for &member in members {
            if speakers.said_something(member) {
                own.clear();
                own.extend(speakers.own_lines(member));
                self.pieces(&own, &speakers.tagged, |piece| {
                    self.send_piece(member, piece, out, &mut skipped)
                });
                continue;
            }
            send_shared(out, member, &common, &mut skipped);
        }
        speakers.clear();
        skipped
    }

    fn send_piece(
        &self,
        member: ClientId,
        piece: Piece,
        out: &mut impl Outbox,
        skipped: &mut Vec<ReceiptTag>,
    ) {
        match piece {
            Piece::Lines(range, count) => out.send_lines(member, self.share(range), count),
            Piece::Tagged(range, tag) => {
                if out.send(member, self.share(range), Some(tag)) == Sent::Skipped {
                    skipped.push(tag);
                }
            }
        }
    }

    /// Cuts the block into what one member gets, in order: the lines between
    /// cuts in runs, tagged lines alone, the member's own lines (`own`) not
    /// at all. Both index lists are ascending; the work is proportional to
    /// their lengths, not to the block's lines.
    fn pieces(&self, own: &[u32], tagged: &[u32], mut emit: impl FnMut(Piece)) {
        let (mut own, mut tagged) = (own.iter().peekable(), tagged.iter().peekable());
        let (mut run_start, mut run_first_line) = (0, 0);
        loop {
            let (cut, is_own) = match (own.peek(), tagged.peek()) {
                (None, None) => break,
                (Some(&&o), Some(&&t)) if o <= t => {
                    own.next();
                    if o == t {
                        tagged.next();
                    }
                    (o as usize, true)
                }
                (Some(&&o), None) => {
                    own.next();
                    (o as usize, true)
                }
                (_, Some(&&t)) => {
                    tagged.next();
                    (t as usize, false)
                }
            };
            let line = self.line(cut);
            if run_start < line.start {
                let count = (cut - run_first_line) as u32;
                emit(Piece::Lines(run_start..line.start, count));
            }
            if let (false, Some(tag)) = (is_own, self.segments[cut].receipt) {
                emit(Piece::Tagged(line.clone(), tag));
            }
            (run_start, run_first_line) = (line.end, cut + 1);
        }
        if run_start < self.bytes.len() {
            let count = (self.segments.len() - run_first_line) as u32;
            emit(Piece::Lines(run_start..self.bytes.len(), count));
        }
    }

    fn line(&self, index: usize) -> Range<usize> {
        let start = index
            .checked_sub(1)
            .map_or(0, |prev| self.segments[prev].end);
        start..self.segments[index].end
    }

    /// A slice of the block, or a copy of it when the slice is a small part
    /// of a big block: a slice keeps its whole block alive, so a recipient
    /// that reads slowly would otherwise pin whole turns of the room for a
    /// few bytes each (see the invariant on [`Block`]).
    fn share(&self, range: Range<usize>) -> Bytes {
        let small_part = range.len() * 4 < self.bytes.len();
        if small_part && self.bytes.len() > SMALL_BLOCK {
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

        fn send_lines(&mut self, to: ClientId, lines: Bytes, count: u32) {
            assert_eq!(
                count,
                crate::chat::count_lines(&lines),
                "the count handed over is the chunk's"
            );
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
        let skipped = batch
            .take()
            .deliver(&[A, B, C], &mut Speakers::default(), &mut out);
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
        batch
            .take()
            .deliver(&[A, B, C], &mut Speakers::default(), &mut out);
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
        let skipped = batch
            .take()
            .deliver(&[A, B, C], &mut Speakers::default(), &mut out);
        assert_eq!(skipped, [ReceiptTag(7)], "C's queue was full");
        let to_b: Vec<_> = out.sent.iter().filter(|(to, _, _)| *to == B).collect();
        assert_eq!(to_b.len(), 1);
        assert_eq!(to_b[0].1, b"a: tagged\r\n");
        assert_eq!(to_b[0].2, Some(ReceiptTag(7)));
        assert_eq!(out.of(A), ["b: plain\r\n", "b: after\r\n"]);
        assert_eq!(out.of(C), ["b: plain\r\n", "b: after\r\n"]);
    }

    /// Every chunk handed out, with whether it is a slice of the block.
    #[derive(Default)]
    struct Pieces {
        sent: Vec<(ClientId, Bytes)>,
    }

    impl Outbox for Pieces {
        fn send(&mut self, to: ClientId, line: Bytes, _receipt: Option<ReceiptTag>) -> Sent {
            self.sent.push((to, line));
            Sent::Queued
        }

        fn send_lines(&mut self, to: ClientId, lines: Bytes, _count: u32) {
            self.sent.push((to, lines));
        }

        fn close(&mut self, _to: ClientId, _why: crate::chat::Close) {}
    }

    /// Checks the invariant on [`Block`]: no piece keeps alive more than
    /// four times its own length of a block bigger than `SMALL_BLOCK`.
    fn assert_bounded_pins(block: &Block, out: &Pieces) -> (usize, usize) {
        let start = block.bytes.as_ptr() as usize;
        let inside =
            |bytes: &Bytes| (start..start + block.bytes.len()).contains(&(bytes.as_ptr() as usize));
        let (mut slices, mut copies) = (0, 0);
        for (to, bytes) in &out.sent {
            if inside(bytes) {
                slices += 1;
                assert!(
                    bytes.len() * 4 >= block.bytes.len() || block.bytes.len() <= SMALL_BLOCK,
                    "{to:?} got a {} byte slice of a {} byte block",
                    bytes.len(),
                    block.bytes.len()
                );
            } else {
                copies += 1;
            }
        }
        (slices, copies)
    }

    #[test]
    fn one_speaker_in_a_big_block_costs_no_copy() {
        let mut batch = RoomBatch::default();
        let long = "x".repeat(200);
        for _ in 0..100 {
            batch.push("", format_args!("a: {long}"), A, None);
        }
        let block = batch.take();
        let mut out = Pieces::default();
        block.deliver(&[A, B, C], &mut Speakers::default(), &mut out);
        assert_eq!(assert_bounded_pins(&block, &out), (2, 0));
    }

    #[test]
    fn a_small_share_of_a_big_block_is_copied_for_every_recipient() {
        let mut batch = RoomBatch::default();
        let long = "x".repeat(200);
        // A talks a lot with a receipt on one line; B says one short line
        // in the middle; C says nothing.
        for n in 0..100 {
            let receipt = (n == 50).then_some(ReceiptTag(9));
            batch.push("", format_args!("a: {long}"), A, receipt);
            if n == 10 {
                batch.push("", format_args!("b: short"), B, None);
            }
        }
        let block = batch.take();
        let mut out = Pieces::default();
        block.deliver(&[A, B, C], &mut Speakers::default(), &mut out);
        let (slices, copies) = assert_bounded_pins(&block, &out);
        assert!(slices > 0 && copies > 0, "{slices} slices, {copies} copies");
        let text = |member| -> String {
            out.sent
                .iter()
                .filter(|(to, _)| *to == member)
                .map(|(_, bytes)| String::from_utf8(bytes.to_vec()).unwrap())
                .collect()
        };
        assert_eq!(text(A), "b: short\r\n", "A's share is copied");
        assert_eq!(text(B).lines().count(), 100);
        assert_eq!(text(C).lines().count(), 101);
    }

    #[test]
    fn many_speakers_each_get_everyone_else_in_order_with_exact_receipts() {
        let members: Vec<ClientId> = (0..300).map(ClientId).collect();
        let mut batch = RoomBatch::default();
        // Speakers 0..200 say two lines each, interleaved; the odd ones ask
        // for receipts on their second line.
        for round in 0..2 {
            for speaker in 0..200usize {
                let receipt = (round == 1 && speaker % 2 == 1).then_some(ReceiptTag(speaker));
                batch.push(
                    "",
                    format_args!("{speaker}: {round}"),
                    ClientId(speaker),
                    receipt,
                );
            }
        }
        let block = batch.take();
        let full = members[250..].to_vec();
        let mut out = Chunks {
            full: full.clone(),
            ..Chunks::default()
        };
        let mut speakers = Speakers::default();
        let skipped = block.deliver(&members, &mut speakers, &mut out);
        // Every tagged line was refused once by each of the 50 full members.
        assert_eq!(skipped.len(), 100 * 50);
        let mut tagged_copies = std::collections::HashMap::new();
        for (_, _, receipt) in &out.sent {
            if let Some(tag) = receipt {
                *tagged_copies.entry(*tag).or_insert(0) += 1;
            }
        }
        assert_eq!(tagged_copies.len(), 100);
        assert!(
            tagged_copies.values().all(|&n| n == 250 - 1),
            "each tagged line reaches every other non-full member"
        );
        for &member in &members[..250] {
            let lines: Vec<String> = out
                .of(member)
                .concat()
                .lines()
                .map(str::to_string)
                .collect();
            let expected: Vec<String> = (0..2)
                .flat_map(|round| (0..200).map(move |speaker| (speaker, round)))
                .filter(|&(speaker, _)| ClientId(speaker) != member)
                .map(|(speaker, round)| format!("{speaker}: {round}"))
                .collect();
            assert_eq!(lines, expected, "{member:?}");
        }
        assert!(
            speakers.group_start.iter().all(|&start| start == 0),
            "scratch is clean"
        );
        // The same scratch serves the next block.
        let mut batch = RoomBatch::default();
        batch.push("", format_args!("7: again"), ClientId(7), None);
        let mut out = Chunks::default();
        batch
            .take()
            .deliver(&members[..10], &mut speakers, &mut out);
        assert!(out.of(ClientId(7)).is_empty());
        assert_eq!(out.of(ClientId(0)), ["7: again\r\n"]);
    }
}
