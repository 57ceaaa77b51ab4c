//! What servers publish to each other through Redis.
//!
//! Every payload starts with a small binary header: a magic byte, the
//! message kind, the origin server's id and a sequence number, as LEB128
//! varints. Binary because it is read once per received message on the hot
//! path and carries only numbers and short names; the chat lines themselves
//! follow unchanged, exactly as they go to a client's socket (`\r\n` and
//! all), so the receiver hands them to its local members as slices of the
//! payload without copying or re-formatting them.
//!
//! Sequence numbers belong to one stream: one origin server publishing on
//! one channel. A receiver that joins a stream late takes the first number
//! it sees as its start. For room batches the number counts lines, not
//! publications (a batch of 3 lines starting at 10 is followed by one
//! starting at 13), so a gap tells the exact number of lines lost; for the
//! other kinds it counts messages.

use std::fmt;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

/// Identifies one server of the cluster for as long as it runs.
pub type NodeId = u64;

const MAGIC: u8 = 0xA1;

const KIND_ROOM_BATCH: u8 = 1;
const KIND_DIRECT: u8 = 2;
const KIND_DELIVERY_REPORT: u8 = 3;
const KIND_RECEIPT_REPORT: u8 = 4;
const KIND_PRESENCE: u8 = 5;
const KIND_NODE: u8 = 6;
const KIND_DEPARTED: u8 = 7;

/// Longest name (nickname or room) accepted on the wire; the chat's own
/// limits are far below it.
const MAX_NAME: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub origin: NodeId,
    /// Position in the (origin, channel) stream; see the module comment.
    pub seq: u64,
}

/// One line of a batch whose sender wants a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireReceipt {
    /// The origin's tag, sent back in the [`ReceiptReport`].
    pub tag: u64,
    /// Where the line is within [`RoomBatch::lines`].
    pub range: Range<usize>,
}

/// The lines said in one room on the origin server during one loop turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomBatch {
    pub line_count: u64,
    pub receipts: Vec<WireReceipt>,
    /// The lines as they go on the wire, each ending in `\r\n`.
    pub lines: Bytes,
}

/// A `/msg` to a user on the receiving server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Direct {
    /// Sent back in the [`DeliveryReport`].
    pub tag: u64,
    /// The target's nickname, case-folded.
    pub target: String,
    /// The line as the target gets it: `(dm) NICK: TEXT\r\n`.
    pub line: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Written into the target's socket.
    Delivered,
    /// The target left before it was written.
    Left,
    /// The target's output was full: not delivered.
    TooSlow,
    /// No such user on that server (any more).
    NoSuchUser,
}

impl DeliveryOutcome {
    fn code(self) -> u8 {
        match self {
            DeliveryOutcome::Delivered => 0,
            DeliveryOutcome::Left => 1,
            DeliveryOutcome::TooSlow => 2,
            DeliveryOutcome::NoSuchUser => 3,
        }
    }

    fn from_code(code: u8) -> Option<DeliveryOutcome> {
        Some(match code {
            0 => DeliveryOutcome::Delivered,
            1 => DeliveryOutcome::Left,
            2 => DeliveryOutcome::TooSlow,
            3 => DeliveryOutcome::NoSuchUser,
            _ => return None,
        })
    }
}

/// What became of a [`Direct`], sent to its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    pub tag: u64,
    pub outcome: DeliveryOutcome,
}

/// One server's part of a room receipt, sent to the line's origin once
/// every local copy is written or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptReport {
    pub tag: u64,
    /// Members of the room on the reporting server when the line came.
    pub recipients: u64,
    /// How many of them had the whole line written into their socket.
    pub delivered: u64,
}

/// How many members the origin server now has in a room, so the others
/// can count `(K here)` and apply `--announce-limit` without asking Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub room: String,
    pub members: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEvent {
    /// Started or reconnected: peers should send it what it needs
    /// (presence) and restart their streams' sequence tracking for it.
    Hello,
    /// Shutting down in order: its users leave, its names are free.
    ShuttingDown,
}

/// Why another server's users left all at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepartureCause {
    /// The server was found dead (its alive key expired) and reaped.
    LostServer,
    /// The server shut down in order.
    ShuttingDown,
}

/// Members of a room on `node` that are gone: published on the room's
/// channel by the server itself when it shuts down, or by the server that
/// reaped it when it was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departed {
    pub room: String,
    pub node: NodeId,
    pub cause: DepartureCause,
    pub nicks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    RoomBatch(RoomBatch),
    Direct(Direct),
    DeliveryReport(DeliveryReport),
    ReceiptReport(ReceiptReport),
    Presence(Presence),
    Node(NodeEvent),
    Departed(Departed),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub header: Header,
    pub message: Message,
}

/// Why a payload was not understood. Receivers count and drop such
/// payloads: they come from another version or something that is not us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    NotOurs,
    UnknownKind(u8),
    Truncated,
    Malformed(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::NotOurs => f.write_str("not an Apollonion publication"),
            WireError::UnknownKind(kind) => write!(f, "unknown message kind {kind}"),
            WireError::Truncated => f.write_str("truncated publication"),
            WireError::Malformed(what) => write!(f, "malformed publication: {what}"),
        }
    }
}

impl std::error::Error for WireError {}

fn put_varint(out: &mut impl BufMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

fn put_name(out: &mut impl BufMut, name: &str) {
    // Nicknames and rooms are short ASCII by the chat's rules; this only
    // keeps an oversized one from producing a payload nobody can decode.
    debug_assert!(name.len() <= MAX_NAME, "name too long for the wire");
    let name = &name.as_bytes()[..name.len().min(MAX_NAME)];
    put_varint(out, name.len() as u64);
    out.put_slice(name);
}

fn put_header(out: &mut impl BufMut, kind: u8, header: Header) {
    out.put_u8(MAGIC);
    out.put_u8(kind);
    put_varint(out, header.origin);
    put_varint(out, header.seq);
}

/// The part of a room batch publication before its lines. The payload is
/// this followed by the lines, which lets the publisher pass the chat's
/// batch buffer to [`CommandLink::push_publish`] as a second part instead
/// of copying it here first.
///
/// [`CommandLink::push_publish`]: super::link::CommandLink::push_publish
pub fn encode_room_batch_header(
    out: &mut impl BufMut,
    header: Header,
    line_count: u64,
    receipts: &[WireReceipt],
) {
    put_header(out, KIND_ROOM_BATCH, header);
    put_varint(out, line_count);
    put_varint(out, receipts.len() as u64);
    for receipt in receipts {
        put_varint(out, receipt.tag);
        put_varint(out, receipt.range.start as u64);
        put_varint(out, (receipt.range.end - receipt.range.start) as u64);
    }
}

/// The part of a direct message before its line (see
/// [`encode_room_batch_header`] for why it is split).
pub fn encode_direct_header(out: &mut impl BufMut, header: Header, tag: u64, target: &str) {
    put_header(out, KIND_DIRECT, header);
    put_varint(out, tag);
    put_name(out, target);
}

impl Envelope {
    /// The whole payload, for the small messages and for tests.
    pub fn encode(&self, out: &mut BytesMut) {
        let header = self.header;
        match &self.message {
            Message::RoomBatch(batch) => {
                encode_room_batch_header(out, header, batch.line_count, &batch.receipts);
                out.put_slice(&batch.lines);
            }
            Message::Direct(direct) => {
                encode_direct_header(out, header, direct.tag, &direct.target);
                out.put_slice(&direct.line);
            }
            Message::DeliveryReport(report) => {
                put_header(out, KIND_DELIVERY_REPORT, header);
                put_varint(out, report.tag);
                out.put_u8(report.outcome.code());
            }
            Message::ReceiptReport(report) => {
                put_header(out, KIND_RECEIPT_REPORT, header);
                put_varint(out, report.tag);
                put_varint(out, report.recipients);
                put_varint(out, report.delivered);
            }
            Message::Presence(presence) => {
                put_header(out, KIND_PRESENCE, header);
                put_name(out, &presence.room);
                put_varint(out, presence.members);
            }
            Message::Node(event) => {
                put_header(out, KIND_NODE, header);
                out.put_u8(match event {
                    NodeEvent::Hello => 0,
                    NodeEvent::ShuttingDown => 1,
                });
            }
            Message::Departed(departed) => {
                put_header(out, KIND_DEPARTED, header);
                put_name(out, &departed.room);
                put_varint(out, departed.node);
                out.put_u8(match departed.cause {
                    DepartureCause::LostServer => 0,
                    DepartureCause::ShuttingDown => 1,
                });
                put_varint(out, departed.nicks.len() as u64);
                for nick in &departed.nicks {
                    put_name(out, nick);
                }
            }
        }
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Reads a payload. Lines come out as slices of `payload`.
    pub fn decode(payload: &Bytes) -> Result<Envelope, WireError> {
        let mut reader = Reader { payload, at: 0 };
        if reader.byte()? != MAGIC {
            return Err(WireError::NotOurs);
        }
        let kind = reader.byte()?;
        let header = Header {
            origin: reader.varint()?,
            seq: reader.varint()?,
        };
        let message = match kind {
            KIND_ROOM_BATCH => Message::RoomBatch(reader.room_batch()?),
            KIND_DIRECT => {
                let tag = reader.varint()?;
                let target = reader.name()?;
                Message::Direct(Direct {
                    tag,
                    target,
                    line: reader.rest(),
                })
            }
            KIND_DELIVERY_REPORT => {
                let tag = reader.varint()?;
                let outcome = DeliveryOutcome::from_code(reader.byte()?)
                    .ok_or(WireError::Malformed("delivery outcome"))?;
                reader.end()?;
                Message::DeliveryReport(DeliveryReport { tag, outcome })
            }
            KIND_RECEIPT_REPORT => {
                let report = ReceiptReport {
                    tag: reader.varint()?,
                    recipients: reader.varint()?,
                    delivered: reader.varint()?,
                };
                if report.delivered > report.recipients {
                    return Err(WireError::Malformed("more delivered than recipients"));
                }
                reader.end()?;
                Message::ReceiptReport(report)
            }
            KIND_PRESENCE => {
                let room = reader.name()?;
                let members = reader.varint()?;
                reader.end()?;
                Message::Presence(Presence { room, members })
            }
            KIND_NODE => {
                let event = match reader.byte()? {
                    0 => NodeEvent::Hello,
                    1 => NodeEvent::ShuttingDown,
                    _ => return Err(WireError::Malformed("node event")),
                };
                reader.end()?;
                Message::Node(event)
            }
            KIND_DEPARTED => {
                let room = reader.name()?;
                let node = reader.varint()?;
                let cause = match reader.byte()? {
                    0 => DepartureCause::LostServer,
                    1 => DepartureCause::ShuttingDown,
                    _ => return Err(WireError::Malformed("departure cause")),
                };
                let count = reader.length()?;
                // Each name takes at least one byte.
                if count > payload.len() {
                    return Err(WireError::Truncated);
                }
                let mut nicks = Vec::with_capacity(count);
                for _ in 0..count {
                    nicks.push(reader.name()?);
                }
                reader.end()?;
                Message::Departed(Departed {
                    room,
                    node,
                    cause,
                    nicks,
                })
            }
            other => return Err(WireError::UnknownKind(other)),
        };
        Ok(Envelope { header, message })
    }
}

struct Reader<'a> {
    payload: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, WireError> {
        let byte = *self.payload.get(self.at).ok_or(WireError::Truncated)?;
        self.at += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(WireError::Malformed("varint overflow"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Malformed("varint too long"))
    }

    fn length(&mut self) -> Result<usize, WireError> {
        usize::try_from(self.varint()?).map_err(|_| WireError::Malformed("length"))
    }

    fn name(&mut self) -> Result<String, WireError> {
        let len = self.length()?;
        if len > MAX_NAME {
            return Err(WireError::Malformed("name too long"));
        }
        let end = self.at.checked_add(len).ok_or(WireError::Truncated)?;
        let bytes = self.payload.get(self.at..end).ok_or(WireError::Truncated)?;
        self.at = end;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Malformed("name not UTF-8"))
    }

    fn rest(&mut self) -> Bytes {
        let rest = self.payload.slice(self.at..);
        self.at = self.payload.len();
        rest
    }

    fn end(&self) -> Result<(), WireError> {
        if self.at == self.payload.len() {
            Ok(())
        } else {
            Err(WireError::Malformed("trailing bytes"))
        }
    }

    fn room_batch(&mut self) -> Result<RoomBatch, WireError> {
        let line_count = self.varint()?;
        let receipt_count = self.length()?;
        // Each receipt takes at least three bytes: a count beyond that is
        // garbage, and must not become a huge allocation.
        if receipt_count > (self.payload.len() - self.at) / 3 {
            return Err(WireError::Truncated);
        }
        if receipt_count as u64 > line_count {
            return Err(WireError::Malformed("more receipts than lines"));
        }
        let mut receipts = Vec::with_capacity(receipt_count);
        for _ in 0..receipt_count {
            let tag = self.varint()?;
            let start = self.length()?;
            let len = self.length()?;
            let end = start
                .checked_add(len)
                .ok_or(WireError::Malformed("range"))?;
            receipts.push(WireReceipt {
                tag,
                range: start..end,
            });
        }
        let lines = self.rest();
        if receipts.iter().any(|r| r.range.end > lines.len()) {
            return Err(WireError::Malformed("receipt range outside the lines"));
        }
        Ok(RoomBatch {
            line_count,
            receipts,
            lines,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header { origin: 3, seq: 41 }
    }

    #[test]
    fn room_batch_from_header_and_lines_parts() {
        let lines = b"ada: hi\r\n* bob waves\r\nada: ok\r\n";
        let receipts = [WireReceipt {
            tag: 7,
            range: 22..31,
        }];
        let mut out = BytesMut::new();
        encode_room_batch_header(&mut out, header(), 3, &receipts);
        out.put_slice(lines);
        let payload = out.freeze();
        let envelope = Envelope::decode(&payload).unwrap();
        assert_eq!(envelope.header, header());
        let Message::RoomBatch(batch) = envelope.message else {
            panic!("not a batch");
        };
        assert_eq!(batch.line_count, 3);
        assert_eq!(&batch.lines[..], lines);
        assert_eq!(
            &batch.lines[batch.receipts[0].range.clone()],
            b"ada: ok\r\n"
        );
        // A slice of the payload, not a copy.
        let offset = batch.lines.as_ptr() as usize - payload.as_ptr() as usize;
        assert_eq!(offset + lines.len(), payload.len());
    }

    #[test]
    fn header_is_small() {
        let mut out = BytesMut::new();
        encode_room_batch_header(
            &mut out,
            Header {
                origin: 5,
                seq: 100,
            },
            1,
            &[],
        );
        assert_eq!(out.len(), 6);
    }

    #[test]
    fn refusals() {
        let decode = |bytes: &[u8]| Envelope::decode(&Bytes::copy_from_slice(bytes));
        assert_eq!(decode(b""), Err(WireError::Truncated));
        assert_eq!(decode(b"hello"), Err(WireError::NotOurs));
        assert_eq!(decode(&[MAGIC, 99, 1, 1]), Err(WireError::UnknownKind(99)));
        assert_eq!(decode(&[MAGIC, KIND_NODE, 1, 1]), Err(WireError::Truncated));
        assert_eq!(
            decode(&[MAGIC, KIND_NODE, 1, 1, 0, 0]),
            Err(WireError::Malformed("trailing bytes"))
        );
        assert_eq!(
            decode(&[MAGIC, KIND_RECEIPT_REPORT, 1, 1, 9, 1, 2]),
            Err(WireError::Malformed("more delivered than recipients"))
        );
        let overlong = [
            MAGIC, KIND_NODE, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert_eq!(
            decode(&overlong),
            Err(WireError::Malformed("varint overflow"))
        );
        // A receipt count far beyond what the payload could hold.
        assert_eq!(
            decode(&[MAGIC, KIND_ROOM_BATCH, 1, 1, 0xff, 0x7f, 0xff, 0x7f]),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn largest_varint_round_trips() {
        let envelope = Envelope {
            header: Header {
                origin: u64::MAX,
                seq: u64::MAX - 1,
            },
            message: Message::Node(NodeEvent::ShuttingDown),
        };
        assert_eq!(Envelope::decode(&envelope.to_bytes()), Ok(envelope));
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9_#-]{0,40}"
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 0..200),
                proptest::collection::vec((any::<u64>(), any::<usize>(), any::<usize>()), 0..4),
                0u64..10
            )
                .prop_map(|(lines, picks, extra)| {
                    let receipts: Vec<_> = picks
                        .into_iter()
                        .map(|(tag, a, b)| {
                            let a = a % (lines.len() + 1);
                            let b = b % (lines.len() + 1);
                            WireReceipt {
                                tag,
                                range: a.min(b)..a.max(b),
                            }
                        })
                        .collect();
                    Message::RoomBatch(RoomBatch {
                        line_count: receipts.len() as u64 + extra,
                        receipts,
                        lines: Bytes::from(lines),
                    })
                }),
            (
                any::<u64>(),
                name(),
                proptest::collection::vec(any::<u8>(), 0..100)
            )
                .prop_map(|(tag, target, line)| Message::Direct(Direct {
                    tag,
                    target,
                    line: Bytes::from(line)
                })),
            (any::<u64>(), 0u8..4).prop_map(|(tag, code)| {
                Message::DeliveryReport(DeliveryReport {
                    tag,
                    outcome: DeliveryOutcome::from_code(code).unwrap(),
                })
            }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(tag, a, b)| {
                Message::ReceiptReport(ReceiptReport {
                    tag,
                    recipients: a.max(b),
                    delivered: a.min(b),
                })
            }),
            (name(), any::<u64>())
                .prop_map(|(room, members)| Message::Presence(Presence { room, members })),
            prop_oneof![Just(NodeEvent::Hello), Just(NodeEvent::ShuttingDown)]
                .prop_map(Message::Node),
            (
                name(),
                any::<u64>(),
                any::<bool>(),
                proptest::collection::vec(name(), 0..5)
            )
                .prop_map(|(room, node, lost, nicks)| Message::Departed(Departed {
                    room,
                    node,
                    cause: if lost {
                        DepartureCause::LostServer
                    } else {
                        DepartureCause::ShuttingDown
                    },
                    nicks,
                })),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(origin: u64, seq: u64, message in message()) {
            let envelope = Envelope { header: Header { origin, seq }, message };
            let bytes = envelope.to_bytes();
            prop_assert_eq!(Envelope::decode(&bytes), Ok(envelope));
            // Every proper prefix is refused or decodes to something else,
            // never panics.
            for cut in 0..bytes.len() {
                let _ = Envelope::decode(&bytes.slice(..cut));
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Envelope::decode(&Bytes::from(bytes));
        }

        #[test]
        fn garbage_after_a_valid_start_never_panics(
            kind in 0u8..8,
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = vec![MAGIC, kind, 1, 1];
            bytes.extend(tail);
            let _ = Envelope::decode(&Bytes::from(bytes));
        }
    }
}
