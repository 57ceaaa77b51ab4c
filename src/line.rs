//! Turns a client's raw byte stream into clean chat lines.
//!
//! Clients are plain `nc` or `telnet` sessions, so the stream is whatever a
//! terminal happens to send: telnet negotiation, CR LF / CR NUL endings,
//! backspaces the terminal did not apply itself, ANSI escape sequences and
//! arbitrary garbage. Everything that could reach another user's terminal is
//! reduced here to printable text, so the rest of the daemon can treat a
//! [`Decoded::Line`] as trusted.
//!
//! The decoder is layered, each layer feeding the next; it works byte by
//! byte except on plain text, which a fast path copies a word at a time up
//! to the next special byte:
//!
//! 1. telnet: strips `IAC` sequences and answers negotiation (see
//!    [`negotiation`]);
//! 2. line endings: `LF`, `CR LF` and `CR NUL` end a line;
//! 3. line editing: backspace/DEL, C0 controls and `ESC` sequences are
//!    applied to the partial line, which is capped at `max_line` bytes;
//! 4. at the end of a line: UTF-8 repair, removal of C1 controls and of
//!    the characters that reorder or hide text, trimming and the one-off
//!    HTTP check.
//!
//! All state lives in the struct rather than on the stack, so a sequence cut
//! by a `push` boundary at any byte decodes exactly as if it had arrived in
//! one piece.
//!
//! It is pull-based: [`LineDecoder::push`] only stores bytes, and decoding
//! happens inside [`Iterator::next`], one event per call. That lets the
//! reactor stop as soon as a client's rate budget is spent and leave the
//! remaining bytes undecoded here instead of in some unbounded event queue.

use std::mem;

mod negotiation;

use negotiation::Negotiation;

/// One thing the decoder found in a client's byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A cleaned, trimmed, non-empty line of at most `max_line` bytes (UTF-8,
    /// no line ending).
    Line(String),
    /// An input line passed `max_line` bytes; it is being discarded up to its
    /// end. Emitted once per over-long line, as soon as it crosses the limit
    /// (not at its end), so a client streaming an endless line gets told at
    /// once.
    TooLong,
    /// The first line of the connection was an HTTP request line (e.g.
    /// `GET / HTTP/1.1`); its text is not returned.
    HttpRequest,
    /// Three bytes to send back to the client verbatim: a telnet
    /// negotiation command (`IAC WILL/WONT/DO/DONT x`), an answer or an
    /// offer.
    TelnetReply([u8; 3]),
}

const IAC: u8 = 255;
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;

const BS: u8 = 0x08;
const DEL: u8 = 0x7f;
const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;

/// Where the telnet layer is inside an `IAC` sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Telnet {
    Data,
    Iac,
    /// After `IAC WILL/WONT/DO/DONT`; holds that command byte.
    Option(u8),
    /// Inside `IAC SB ...`; the content is skipped, never buffered.
    Sub,
    SubIac,
}

/// Where the line-editing layer is inside a terminal escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    Normal,
    Esc,
    Csi,
    Osc,
    OscEsc,
}

/// Incremental decoder for one connection.
///
/// An idle decoder (all pushed input consumed, no partial line) holds no heap
/// allocation, because thousands of mostly idle connections each own one.
#[derive(Debug)]
pub struct LineDecoder {
    /// Raw bytes from the socket; `input[pos..]` is not decoded yet.
    input: Vec<u8>,
    pos: usize,
    /// The current line after telnet, escape and backspace processing; never
    /// longer than `max_line`.
    line: Vec<u8>,
    max_line: usize,
    negotiation: Negotiation,
    telnet: Telnet,
    escape: Escape,
    /// A CR was seen; what follows decides whether it ends the line.
    pending_cr: bool,
    /// The current line went over `max_line` and is skipped up to its end.
    discarding: bool,
    /// A line already produced an event, so the HTTP check is over.
    first_line_done: bool,
    /// The client half-closed: once the input is used up, the partial line
    /// is a line.
    at_eof: bool,
}

impl LineDecoder {
    /// `max_line`: the longest input line accepted, in bytes (>= 1).
    ///
    /// With 0, every line with any content is reported as too long.
    #[must_use]
    pub fn new(max_line: usize) -> Self {
        LineDecoder {
            input: Vec::new(),
            pos: 0,
            line: Vec::new(),
            max_line,
            negotiation: Negotiation::new(),
            telnet: Telnet::Data,
            escape: Escape::Normal,
            pending_cr: false,
            discarding: false,
            first_line_done: false,
            at_eof: false,
        }
    }

    /// Appends raw bytes read from the socket. Decoding is lazy: nothing is
    /// decoded until `next` is called.
    pub fn push(&mut self, input: &[u8]) {
        if input.is_empty() {
            return;
        }
        // Drop the consumed prefix first so the buffer only ever holds
        // undecoded bytes, however the caller interleaves push and next.
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(input);
    }

    /// The client sent its last byte (EOF): text after the last line end is
    /// delivered as a line by the following `next` calls, as if a line end
    /// had followed. An unfinished telnet command or escape sequence is
    /// dropped.
    pub fn finish(&mut self) {
        self.at_eof = true;
    }

    /// True while `next` may still have something to return without more
    /// input: pushed bytes not consumed yet, a telnet reply waiting to go
    /// out, or the last line after [`Self::finish`].
    #[must_use]
    pub fn has_unread_input(&self) -> bool {
        self.pos < self.input.len() || self.negotiation.has_pending() || self.at_eof
    }

    /// Bytes currently held (unconsumed raw input + the partial line), for
    /// memory accounting.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        (self.input.len() - self.pos) + self.line.len()
    }

    fn decode(&mut self) -> Option<Decoded> {
        loop {
            // Offers are decided while a byte is handled that may return an
            // event of its own, so they wait here, before the next byte.
            if let Some(reply) = self.negotiation.take_pending() {
                return Some(Decoded::TelnetReply(reply));
            }
            if self.pos >= self.input.len() {
                break;
            }
            if self.telnet == Telnet::Data && self.escape == Escape::Normal && !self.pending_cr {
                // Fast path: ordinary text needs no per-byte state changes,
                // so a whole run of it is copied (or skipped) at once.
                let start = self.pos;
                let run = find_special(&self.input[start..]).unwrap_or(self.input.len() - start);
                if run > 0 {
                    self.pos += run;
                    if self.discarding {
                        continue;
                    }
                    if run <= self.max_line.saturating_sub(self.line.len()) {
                        self.line.extend_from_slice(&self.input[start..start + run]);
                        continue;
                    }
                    return Some(self.start_discarding());
                }
            }
            let b = self.input[self.pos];
            self.pos += 1;
            if let Some(event) = self.telnet_byte(b) {
                return Some(event);
            }
        }
        if mem::take(&mut self.at_eof) {
            self.telnet = Telnet::Data;
            self.pending_cr = false;
            return self.end_line();
        }
        None
    }

    fn telnet_byte(&mut self, b: u8) -> Option<Decoded> {
        match self.telnet {
            Telnet::Data => {
                if b == IAC {
                    self.telnet = Telnet::Iac;
                    self.negotiation.client_speaks_telnet();
                    None
                } else {
                    self.data_byte(b)
                }
            }
            Telnet::Iac => {
                self.telnet = Telnet::Data;
                match b {
                    IAC => self.data_byte(IAC),
                    SB => {
                        self.telnet = Telnet::Sub;
                        None
                    }
                    WILL..=DONT => {
                        self.telnet = Telnet::Option(b);
                        None
                    }
                    // Two-byte commands (NOP, GA, AYT, ...) carry nothing a
                    // chat line needs, and unknown ones are dropped the same
                    // way rather than leaking a stray byte into the text.
                    _ => None,
                }
            }
            Telnet::Option(command) => {
                self.telnet = Telnet::Data;
                self.negotiation
                    .answer(command, b)
                    .map(Decoded::TelnetReply)
            }
            Telnet::Sub => {
                if b == IAC {
                    self.telnet = Telnet::SubIac;
                }
                None
            }
            Telnet::SubIac => {
                // Only IAC SE closes a subnegotiation; IAC IAC is an escaped
                // data byte and anything else is malformed, neither of which
                // may end it early and let option data leak into the line.
                self.telnet = if b == SE { Telnet::Data } else { Telnet::Sub };
                None
            }
        }
    }

    fn data_byte(&mut self, b: u8) -> Option<Decoded> {
        if self.pending_cr {
            self.pending_cr = false;
            if b == b'\n' || b == 0 {
                self.negotiation.client_speaks_telnet();
                return self.end_line();
            }
            // A CR that ends nothing is just a control character; it still
            // goes through line editing so it aborts an escape sequence like
            // any other control would. Controls never produce an event.
            let event = self.line_byte(b'\r');
            debug_assert!(event.is_none());
        }
        match b {
            b'\n' => self.end_line(),
            b'\r' => {
                self.pending_cr = true;
                None
            }
            _ => self.line_byte(b),
        }
    }

    fn line_byte(&mut self, b: u8) -> Option<Decoded> {
        if self.discarding {
            return None;
        }
        if self.escape == Escape::OscEsc {
            if b == b'\\' {
                self.escape = Escape::Normal;
                return None;
            }
            // An ESC inside OSC that is not the string terminator starts a
            // new sequence, as in a terminal.
            self.escape = Escape::Esc;
        }
        match self.escape {
            Escape::Normal | Escape::OscEsc => {}
            Escape::Esc => {
                self.escape = Escape::Normal;
                match b {
                    b'[' => {
                        self.escape = Escape::Csi;
                        return None;
                    }
                    b']' => {
                        self.escape = Escape::Osc;
                        return None;
                    }
                    // Other ESC sequences: only the ESC goes, the byte
                    // after it is ordinary input.
                    _ => {}
                }
            }
            Escape::Csi => match b {
                0x20..=0x3f => return None,
                0x40..=0x7e => {
                    self.escape = Escape::Normal;
                    return None;
                }
                // Not a CSI byte: the sequence is broken off and the byte
                // is handled as ordinary input.
                _ => self.escape = Escape::Normal,
            },
            Escape::Osc => {
                match b {
                    BEL => self.escape = Escape::Normal,
                    ESC => self.escape = Escape::OscEsc,
                    _ => {}
                }
                return None;
            }
        }
        match b {
            BS | DEL => {
                erase_last_char(&mut self.line);
                None
            }
            ESC => {
                self.escape = Escape::Esc;
                None
            }
            // Controls are dropped before they are stored, so backspace
            // erases what a terminal would have shown and they do not count
            // against the line limit.
            b'\t' => self.store(b),
            0x00..=0x1f => None,
            _ => self.store(b),
        }
    }

    fn store(&mut self, b: u8) -> Option<Decoded> {
        if self.line.len() >= self.max_line {
            return Some(self.start_discarding());
        }
        self.line.push(b);
        None
    }

    fn start_discarding(&mut self) -> Decoded {
        self.line = Vec::new();
        self.discarding = true;
        self.escape = Escape::Normal;
        self.first_line_done = true;
        Decoded::TooLong
    }

    fn end_line(&mut self) -> Option<Decoded> {
        // Escape sequences never span lines, so an unterminated one cannot
        // swallow the user's next message.
        self.escape = Escape::Normal;
        if mem::take(&mut self.discarding) || self.line.is_empty() {
            return None;
        }
        // Taking the buffer (not clearing it) both avoids a copy and leaves
        // an idle connection without an allocation.
        let text = clean_line(mem::take(&mut self.line));
        if text.is_empty() {
            return None;
        }
        // UTF-8 repair can grow the line (one bad byte becomes three), and a
        // Line is promised to fit in max_line.
        if text.len() > self.max_line {
            self.first_line_done = true;
            return Some(Decoded::TooLong);
        }
        if !mem::replace(&mut self.first_line_done, true) && looks_like_http_request(&text) {
            return Some(Decoded::HttpRequest);
        }
        Some(Decoded::Line(text))
    }
}

impl Iterator for LineDecoder {
    type Item = Decoded;

    /// Decodes and returns the next event, or None when the pushed input is
    /// used up (a partial line is kept across calls).
    ///
    /// Not fused: after None, pushing more input makes events available
    /// again.
    fn next(&mut self) -> Option<Decoded> {
        let event = self.decode();
        if self.pos >= self.input.len() {
            // Release the read buffer as soon as it is used up: idle
            // connections must not pin a socket-read-sized allocation each.
            self.input = Vec::new();
            self.pos = 0;
        }
        event
    }
}

/// Bytes the fast path must hand to the state machine: controls (line
/// endings, backspace, ESC, ...), DEL, and IAC.
fn is_special(b: u8) -> bool {
    b < 0x20 || b == DEL || b == IAC
}

/// Where the next special byte is, eight bytes at a time: plain text is
/// what the decoder sees most, and a byte-by-byte scan was its hottest loop.
fn find_special(bytes: &[u8]) -> Option<usize> {
    let (words, rest) = bytes.as_chunks::<8>();
    for (index, chunk) in words.iter().enumerate() {
        let word = u64::from_le_bytes(*chunk);
        let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
        let del = has_zero_byte(word ^ (ONES * u64::from(DEL)));
        let iac = has_zero_byte(!word);
        if below_space | del | iac != 0 {
            return chunk
                .iter()
                .position(|&b| is_special(b))
                .map(|at| index * 8 + at);
        }
    }
    let done = words.len() * 8;
    rest.iter().position(|&b| is_special(b)).map(|at| done + at)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Non-zero exactly when some byte of `word` is zero.
fn has_zero_byte(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGH
}

/// Whether a finished line may hold a character [`clean_line`] removes.
/// C0 controls and DEL never get this far; every C1 control and 8-bit CSI
/// is encoded starting with 0xC2, and every character in
/// [`hides_or_reorders_text`] with 0xE2 or 0xEF. A line without those bytes
/// (all plain ASCII chat, most other scripts) needs no per-character scan,
/// and this check runs eight bytes at a time.
fn may_hold_unwanted(bytes: &[u8]) -> bool {
    let is_lead = |b: u8| matches!(b, 0xc2 | 0xe2 | 0xef);
    let (words, rest) = bytes.as_chunks::<8>();
    words.iter().any(|chunk| {
        let word = u64::from_le_bytes(*chunk);
        let c2 = has_zero_byte(word ^ (ONES * 0xc2));
        let e2 = has_zero_byte(word ^ (ONES * 0xe2));
        let ef = has_zero_byte(word ^ (ONES * 0xef));
        c2 | e2 | ef != 0
    }) || rest.iter().any(|&b| is_lead(b))
}

/// Removes the last character a terminal would have displayed: a whole UTF-8
/// sequence when the line ends in one, otherwise a single (invalid) byte,
/// which is what would have shown as one U+FFFD.
fn erase_last_char(line: &mut Vec<u8>) {
    let Some(&last) = line.last() else {
        return;
    };
    if last.is_ascii() {
        line.pop();
        return;
    }
    let len = line.len();
    for width in 2..=len.min(4) {
        let start = len - width;
        if line[start] & 0xc0 != 0x80 {
            if std::str::from_utf8(&line[start..]).is_ok() {
                line.truncate(start);
                return;
            }
            break;
        }
    }
    line.pop();
}

/// Finishes a raw line: repairs UTF-8, removes what survived byte-level
/// cleaning but is still a control character (C1 controls, 8-bit CSI
/// sequences) or would reorder or hide text, and trims.
fn clean_line(raw: Vec<u8>) -> String {
    let may_hold_unwanted = may_hold_unwanted(&raw);
    let mut text = match String::from_utf8(raw) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    };
    if may_hold_unwanted && text.chars().any(is_unwanted) {
        text = strip_unwanted(&text);
    }
    let end = text.trim_end().len();
    text.truncate(end);
    let start = text.len() - text.trim_start().len();
    if start > 0 {
        text.drain(..start);
    }
    text
}

fn is_unwanted_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// Invisible characters that make a line read differently from what it
/// says: bidirectional embeddings, overrides and isolates (a right-to-left
/// override shows the rest of the line backwards), zero-width space, word
/// joiner and the BOM. ZWJ and ZWNJ are not here: emoji sequences and
/// several scripts need them.
fn hides_or_reorders_text(c: char) -> bool {
    matches!(
        c,
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200b}' | '\u{2060}' | '\u{feff}'
    )
}

fn is_unwanted(c: char) -> bool {
    is_unwanted_control(c) || hides_or_reorders_text(c)
}

fn strip_unwanted(text: &str) -> String {
    const CSI: char = '\u{9b}';
    let mut out = String::with_capacity(text.len());
    let mut in_csi = false;
    for c in text.chars() {
        if in_csi {
            match c {
                '\u{20}'..='\u{3f}' => continue,
                '\u{40}'..='\u{7e}' => {
                    in_csi = false;
                    continue;
                }
                _ => in_csi = false,
            }
        }
        if c == CSI {
            in_csi = true;
        } else if !is_unwanted(c) {
            out.push(c);
        }
    }
    out
}

/// True if `line` looks like an HTTP/1.x request line: METHOD SP TARGET SP
/// HTTP/digit... (methods GET HEAD POST PUT DELETE OPTIONS PATCH CONNECT
/// TRACE).
///
/// Matching is case-sensitive, as method names and the `HTTP` version token
/// are in HTTP itself: browsers and HTTP tools always send them upper case,
/// while a chat user typing `get / http/1.1` is better treated as talking.
/// The three parts must be separated by single spaces, and the version must
/// be `HTTP/` followed by a digit and then only digits and dots.
#[must_use]
pub fn looks_like_http_request(line: &str) -> bool {
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(number) = version.strip_prefix("HTTP/") else {
        return false;
    };
    METHODS.contains(&method)
        && !target.is_empty()
        && number.starts_with(|c: char| c.is_ascii_digit())
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DO_BINARY: Decoded = Decoded::TelnetReply([IAC, DO, 0]);

    /// Pushes each chunk in turn and drains all events after each push.
    fn decode_chunks_all(max_line: usize, chunks: &[&[u8]]) -> Vec<Decoded> {
        let mut decoder = LineDecoder::new(max_line);
        let mut events = Vec::new();
        for chunk in chunks {
            decoder.push(chunk);
            events.extend(&mut decoder);
            assert!(!decoder.has_unread_input());
        }
        events
    }

    fn decode_all(max_line: usize, input: &[u8]) -> Vec<Decoded> {
        decode_chunks_all(max_line, &[input])
    }

    /// As `decode_chunks_all`, without the BINARY request that any CR LF or
    /// IAC brings, for the tests about what becomes of the text.
    fn decode_chunks(max_line: usize, chunks: &[&[u8]]) -> Vec<Decoded> {
        let mut events = decode_chunks_all(max_line, chunks);
        events.retain(|event| *event != DO_BINARY);
        events
    }

    fn decode(max_line: usize, input: &[u8]) -> Vec<Decoded> {
        decode_chunks(max_line, &[input])
    }

    fn line(text: &str) -> Decoded {
        Decoded::Line(text.to_owned())
    }

    fn lines(texts: &[&str]) -> Vec<Decoded> {
        texts.iter().map(|t| line(t)).collect()
    }

    /// Asserts that every way of cutting `input` into up to three pushes
    /// decodes like the whole.
    fn assert_split_invariant(max_line: usize, input: &[u8], expected: &[Decoded]) {
        assert_eq!(decode(max_line, input), expected, "whole input {input:?}");
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let pieces = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(
                    decode_chunks(max_line, &pieces),
                    expected,
                    "input {input:?} split at {i} and {j}"
                );
            }
        }
    }

    // ---- line endings and whitespace ----

    #[test]
    fn lf_ends_a_line() {
        assert_eq!(decode(100, b"hello\n"), lines(&["hello"]));
    }

    #[test]
    fn crlf_ends_one_line() {
        assert_eq!(
            decode(100, b"hello\r\nworld\r\n"),
            lines(&["hello", "world"])
        );
    }

    #[test]
    fn cr_nul_ends_a_line() {
        assert_eq!(
            decode(100, b"hello\r\0world\r\0"),
            lines(&["hello", "world"])
        );
    }

    #[test]
    fn cr_nul_then_lf_gives_one_line() {
        assert_eq!(decode(100, b"hello\r\0\n"), lines(&["hello"]));
    }

    #[test]
    fn cr_and_lf_in_separate_pushes_give_one_line() {
        assert_eq!(decode_chunks(100, &[b"hello\r", b"\n"]), lines(&["hello"]));
        assert_eq!(decode_chunks(100, &[b"hello\r", b"\0"]), lines(&["hello"]));
        assert_eq!(
            decode_chunks(100, &[b"hello\r", b"\nnext\n"]),
            lines(&["hello", "next"])
        );
    }

    #[test]
    fn bare_cr_is_removed_and_does_not_end_the_line() {
        assert_eq!(decode(100, b"ab\rcd\n"), lines(&["abcd"]));
        assert_eq!(decode(100, b"ab\r\r\ncd\n"), lines(&["ab", "cd"]));
        // No LF or NUL follows yet, so nothing is emitted.
        assert_eq!(decode(100, b"hello\r"), vec![]);
    }

    #[test]
    fn several_lines_in_one_push() {
        assert_eq!(
            decode(100, b"one\ntwo\r\nthree\r\0"),
            lines(&["one", "two", "three"])
        );
    }

    #[test]
    fn partial_line_is_kept_across_pushes() {
        let mut decoder = LineDecoder::new(100);
        decoder.push(b"hel");
        assert_eq!(decoder.next(), None);
        assert_eq!(decoder.buffered_len(), 3);
        decoder.push(b"lo wor");
        assert_eq!(decoder.next(), None);
        decoder.push(b"ld\n");
        assert_eq!(decoder.next(), Some(line("hello world")));
        assert_eq!(decoder.next(), None);
    }

    #[test]
    fn empty_and_whitespace_lines_are_ignored() {
        assert_eq!(decode(100, b"\n\r\n\r\0   \n\t \t\r\nx\n"), lines(&["x"]));
    }

    #[test]
    fn lines_are_trimmed() {
        assert_eq!(decode(100, b"  \t hi there \t \r\n"), lines(&["hi there"]));
        // Unicode whitespace too (U+3000 IDEOGRAPHIC SPACE).
        assert_eq!(
            decode(100, "\u{3000}hi\u{3000}\n".as_bytes()),
            lines(&["hi"])
        );
    }

    #[test]
    fn tab_inside_a_line_is_kept() {
        assert_eq!(decode(100, b"a\tb\n"), lines(&["a\tb"]));
    }

    // ---- telnet ----

    #[test]
    fn iac_iac_is_a_data_byte_that_becomes_replacement_char() {
        assert_eq!(decode(100, b"a\xff\xffb\n"), lines(&["a\u{fffd}b"]));
    }

    #[test]
    fn two_byte_commands_are_removed() {
        for command in 240..=249u8 {
            let input = [b'a', IAC, command, b'b', b'\n'];
            assert_eq!(decode(100, &input), lines(&["ab"]), "command {command}");
        }
    }

    #[test]
    fn unknown_byte_after_iac_is_removed_with_it() {
        assert_eq!(decode(100, b"a\xffxb\n"), lines(&["ab"]));
    }

    #[test]
    fn option_negotiation_is_removed() {
        for command in [WILL, WONT, DO, DONT] {
            let input = [b'a', IAC, command, b'Z', b'b', b'\n'];
            let text_only: Vec<Decoded> = decode(100, &input)
                .into_iter()
                .filter(|e| !matches!(e, Decoded::TelnetReply(_)))
                .collect();
            assert_eq!(text_only, lines(&["ab"]), "command {command}");
        }
    }

    #[test]
    fn do_is_refused_with_wont_once_per_option() {
        assert_eq!(
            decode(100, b"\xff\xfd\x01\xff\xfd\x01\xff\xfd\x03hi\n\xff\xfd\x01"),
            vec![
                Decoded::TelnetReply([IAC, WONT, 1]),
                Decoded::TelnetReply([IAC, WONT, 3]),
                line("hi"),
            ]
        );
    }

    #[test]
    fn will_is_refused_with_dont_once_per_option() {
        assert_eq!(
            decode(100, b"\xff\xfb\x1f\xff\xfb\x1f\xff\xfb\xff"),
            vec![
                Decoded::TelnetReply([IAC, DONT, 31]),
                Decoded::TelnetReply([IAC, DONT, 255]),
            ]
        );
    }

    #[test]
    fn do_and_will_for_the_same_option_are_answered_separately() {
        assert_eq!(
            decode(100, b"\xff\xfd\x05\xff\xfb\x05"),
            vec![
                Decoded::TelnetReply([IAC, WONT, 5]),
                Decoded::TelnetReply([IAC, DONT, 5]),
            ]
        );
    }

    #[test]
    fn wont_and_dont_get_no_reply() {
        assert_eq!(decode(100, b"\xff\xfc\x01\xff\xfe\x01ok\n"), lines(&["ok"]));
    }

    #[test]
    fn replies_come_in_stream_order_with_lines() {
        assert_eq!(
            decode(100, b"one\n\xff\xfd\x01two\n"),
            vec![
                line("one"),
                Decoded::TelnetReply([IAC, WONT, 1]),
                line("two")
            ]
        );
    }

    #[test]
    fn subnegotiation_is_removed_with_its_content() {
        assert_eq!(
            decode(100, b"a\xff\xfa\x18\x00xterm\xff\xf0b\n"),
            lines(&["ab"])
        );
        // Line endings inside SB are content too.
        assert_eq!(
            decode(100, b"a\xff\xfa\x18\r\nxx\xff\xf0b\n"),
            lines(&["ab"])
        );
    }

    #[test]
    fn iac_iac_inside_subnegotiation_does_not_end_it() {
        assert_eq!(
            decode(100, b"a\xff\xfa\x18\xff\xff\xf0x\xff\xf0b\n"),
            lines(&["ab"])
        );
    }

    #[test]
    fn every_iac_form_survives_every_split() {
        let cases: [(&[u8], Vec<Decoded>); 7] = [
            (b"a\xff\xffb\n", lines(&["a\u{fffd}b"])),
            (b"a\xff\xf1b\r\n", lines(&["ab"])),
            (
                b"a\xff\xfd\x01b\n",
                vec![Decoded::TelnetReply([IAC, WONT, 1]), line("ab")],
            ),
            (
                b"a\xff\xfb\x03b\n",
                vec![Decoded::TelnetReply([IAC, DONT, 3]), line("ab")],
            ),
            (b"a\xff\xfc\x03\xff\xfe\x03b\n", lines(&["ab"])),
            (b"a\xff\xfa\x18\x00x\xff\xffy\xff\xf0b\r\0", lines(&["ab"])),
            (b"a\xff\xf9\rb\xff\xff\r\n", lines(&["ab\u{fffd}"])),
        ];
        for (input, expected) in cases {
            assert_split_invariant(100, input, &expected);
        }
    }

    #[test]
    fn a_telnet_line_end_brings_the_binary_request_after_the_line() {
        assert_eq!(
            decode_all(100, b"hi\r\nyo\r\n"),
            vec![line("hi"), DO_BINARY, line("yo")]
        );
        assert_eq!(
            decode_all(100, b"hi\r\0yo\r\0"),
            vec![line("hi"), DO_BINARY, line("yo")]
        );
        // An empty telnet line shows it as well as a full one.
        assert_eq!(decode_all(100, b"\r\n"), vec![DO_BINARY]);
    }

    #[test]
    fn an_iac_brings_the_binary_request_before_the_answer() {
        assert_eq!(
            decode_all(100, b"\xff\xfd\x01"),
            vec![DO_BINARY, Decoded::TelnetReply([IAC, WONT, 1])]
        );
        // IAC IAC too: only a telnet client escapes a 0xFF byte.
        assert_eq!(
            decode_all(100, b"a\xff\xffb\n"),
            vec![DO_BINARY, line("a\u{fffd}b")]
        );
    }

    #[test]
    fn a_bare_lf_client_never_gets_a_negotiation() {
        let events = decode_all(100, b"hi\nthere\n\n  \nca\rn\r \n\xc3\xa9\n\x1b[1mx\n");
        assert_eq!(events, lines(&["hi", "there", "can", "\u{e9}", "x"]));
    }

    #[test]
    fn the_clients_binary_answer_gets_no_reply() {
        // In binary mode telnet ends lines with a bare LF.
        assert_eq!(
            decode_all(100, b"/nick tina\r\n\xff\xfb\x00\xe6\x9c\xac\n"),
            vec![line("/nick tina"), DO_BINARY, line("\u{672c}")]
        );
    }

    #[test]
    fn the_clients_binary_offer_is_agreed_to_by_the_request() {
        assert_eq!(
            decode_all(100, b"\xff\xfb\x00hi\r\n"),
            vec![DO_BINARY, line("hi")]
        );
    }

    #[test]
    fn the_clients_request_for_our_binary_is_granted() {
        assert_eq!(
            decode_all(100, b"\xff\xfd\x00hi\r\n"),
            vec![DO_BINARY, Decoded::TelnetReply([IAC, WILL, 0]), line("hi")]
        );
    }

    #[test]
    fn timing_mark_is_answered_after_every_interrupt() {
        // What telnet sends for Ctrl-C: IAC IP IAC DO TIMING-MARK.
        let interrupt: &[u8] = b"\xff\xf4\xff\xfd\x06";
        let input = [b"a\r\n", interrupt, b"b\r\n", interrupt, interrupt].concat();
        let timing_mark = Decoded::TelnetReply([IAC, WILL, 6]);
        assert_eq!(
            decode_all(100, &input),
            vec![
                line("a"),
                DO_BINARY,
                timing_mark.clone(),
                line("b"),
                timing_mark.clone(),
                timing_mark,
            ]
        );
    }

    #[test]
    fn negotiation_survives_every_split() {
        let input = b"x\r\n\xff\xf4\xff\xfd\x06\xff\xfb\x00y\r\0";
        let expected = vec![
            line("x"),
            DO_BINARY,
            Decoded::TelnetReply([IAC, WILL, 6]),
            line("y"),
        ];
        assert_eq!(decode_all(100, input), expected);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let pieces = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(decode_chunks_all(100, &pieces), expected, "{i} {j}");
            }
        }
    }

    #[test]
    fn a_request_decided_at_the_end_of_the_input_is_still_pending() {
        let mut decoder = LineDecoder::new(100);
        decoder.push(b"hi\r\n");
        assert_eq!(decoder.next(), Some(line("hi")));
        // No bytes left, but the reactor must still ask for the request.
        assert!(decoder.has_unread_input());
        assert_eq!(decoder.next(), Some(DO_BINARY));
        assert!(!decoder.has_unread_input());
        assert_eq!(decoder.next(), None);
    }

    // ---- end of input ----

    /// Pushes `input`, drains it, then says EOF and drains again.
    fn decode_to_eof(max_line: usize, input: &[u8]) -> (Vec<Decoded>, Vec<Decoded>) {
        let mut decoder = LineDecoder::new(max_line);
        decoder.push(input);
        let before: Vec<Decoded> = decoder.by_ref().collect();
        decoder.finish();
        assert!(decoder.has_unread_input());
        let after: Vec<Decoded> = decoder.by_ref().collect();
        assert!(!decoder.has_unread_input());
        assert_eq!(decoder.buffered_len(), 0);
        (before, after)
    }

    #[test]
    fn text_before_eof_is_a_line() {
        assert_eq!(decode_to_eof(100, b"hi"), (vec![], lines(&["hi"])));
        assert_eq!(
            decode_to_eof(100, b"one\n two "),
            (lines(&["one"]), lines(&["two"]))
        );
    }

    #[test]
    fn eof_after_a_complete_line_adds_nothing() {
        assert_eq!(decode_to_eof(100, b"hi\n"), (lines(&["hi"]), vec![]));
        assert_eq!(decode_to_eof(100, b""), (vec![], vec![]));
        assert_eq!(decode_to_eof(100, b"hi\n   "), (lines(&["hi"]), vec![]));
    }

    #[test]
    fn eof_cuts_off_an_unfinished_sequence_but_not_the_text_before_it() {
        assert_eq!(decode_to_eof(100, b"hi\r"), (vec![], lines(&["hi"])));
        assert_eq!(decode_to_eof(100, b"hi\x1b[3"), (vec![], lines(&["hi"])));
        assert_eq!(
            decode_to_eof(100, b"hi\xff"),
            (vec![DO_BINARY], lines(&["hi"]))
        );
        assert_eq!(
            decode_to_eof(100, b"hi\xff\xfa\x18xterm"),
            (vec![DO_BINARY], lines(&["hi"]))
        );
    }

    #[test]
    fn eof_in_a_too_long_line_adds_nothing() {
        assert_eq!(
            decode_to_eof(3, b"abcdef"),
            (vec![Decoded::TooLong], vec![])
        );
    }

    #[test]
    fn an_http_request_line_before_eof_is_still_recognised() {
        assert_eq!(
            decode_to_eof(100, b"GET / HTTP/1.0"),
            (vec![], vec![Decoded::HttpRequest])
        );
    }

    #[test]
    fn eof_waits_for_unread_input_first() {
        let mut decoder = LineDecoder::new(100);
        decoder.push(b"a\nb\nc");
        decoder.finish();
        let events: Vec<Decoded> = decoder.by_ref().collect();
        assert_eq!(events, lines(&["a", "b", "c"]));
    }

    // ---- backspace ----

    #[test]
    fn backspace_and_del_erase_ascii() {
        assert_eq!(decode(100, b"helx\x08lo\n"), lines(&["hello"]));
        assert_eq!(decode(100, b"helx\x7flo\n"), lines(&["hello"]));
        assert_eq!(decode(100, b"abc\x08\x08\x08xyz\n"), lines(&["xyz"]));
    }

    #[test]
    fn backspace_erases_whole_multibyte_characters() {
        // 2-, 3- and 4-byte characters.
        assert_eq!(decode(100, "caf\u{e9}\x08e\n".as_bytes()), lines(&["cafe"]));
        assert_eq!(decode(100, "5\u{20ac}\x7f$\n".as_bytes()), lines(&["5$"]));
        assert_eq!(decode(100, "a\u{1f600}\x08b\n".as_bytes()), lines(&["ab"]));
        assert_eq!(
            decode(100, "\u{e9}\u{e9}\x08\x08x\n".as_bytes()),
            lines(&["x"])
        );
    }

    #[test]
    fn backspace_erases_one_invalid_byte_at_a_time() {
        // Each of these would have shown as one U+FFFD.
        assert_eq!(decode(100, b"a\x80\x80\x08\n"), lines(&["a\u{fffd}"]));
        assert_eq!(decode(100, b"a\xc3\x08b\n"), lines(&["ab"]));
    }

    #[test]
    fn backspace_at_line_start_does_nothing() {
        assert_eq!(decode(100, b"\x08\x08\x7fhi\n"), lines(&["hi"]));
        assert_eq!(decode(100, b"x\n\x08y\n"), lines(&["x", "y"]));
    }

    #[test]
    fn backspace_does_not_reach_into_the_previous_line() {
        assert_eq!(decode(100, b"ab\n\x08\x08\x08\n"), lines(&["ab"]));
    }

    // ---- cleaning ----

    #[test]
    fn invalid_utf8_becomes_replacement_char() {
        assert_eq!(
            decode(100, b"a\xc3(b\xfe\n"),
            lines(&["a\u{fffd}(b\u{fffd}"])
        );
    }

    #[test]
    fn c0_controls_are_removed() {
        assert_eq!(
            decode(100, b"a\x00b\x01c\x07d\x0ce\x1f\n"),
            lines(&["abcde"])
        );
    }

    #[test]
    fn c1_controls_are_removed() {
        assert_eq!(
            decode(100, "a\u{80}b\u{85}c\u{9f}d\n".as_bytes()),
            lines(&["abcd"])
        );
    }

    #[test]
    fn eight_bit_csi_sequences_are_removed() {
        assert_eq!(
            decode(100, "\u{9b}31mred\u{9b}0m\n".as_bytes()),
            lines(&["red"])
        );
    }

    #[test]
    fn ansi_colour_sequences_are_removed() {
        assert_eq!(decode(100, b"\x1b[31mred\x1b[0m\n"), lines(&["red"]));
        assert_eq!(decode(100, b"\x1b[1;38;5;208mx\x1b[m\n"), lines(&["x"]));
    }

    #[test]
    fn ansi_cursor_and_clear_sequences_are_removed() {
        assert_eq!(
            decode(100, b"\x1b[2J\x1b[H\x1b[10;5Hhi\x1b[A\x1b[?25l\n"),
            lines(&["hi"])
        );
        assert_eq!(decode(100, b"\x1b[2J\n"), vec![]);
    }

    #[test]
    fn other_escape_sequences_lose_their_esc() {
        assert_eq!(decode(100, b"a\x1bcb\n"), lines(&["acb"]));
        assert_eq!(decode(100, b"a\x1b\x1b[1mb\n"), lines(&["ab"]));
    }

    #[test]
    fn osc_sequences_are_removed() {
        assert_eq!(decode(100, b"a\x1b]0;title\x07b\n"), lines(&["ab"]));
        assert_eq!(decode(100, b"a\x1b]0;title\x1b\\b\n"), lines(&["ab"]));
    }

    #[test]
    fn unterminated_escape_ends_with_the_line() {
        assert_eq!(decode(100, b"a\x1b]0;title\nb\n"), lines(&["a", "b"]));
        assert_eq!(decode(100, b"a\x1b[12\nb\n"), lines(&["a", "b"]));
    }

    // ---- line length ----

    #[test]
    fn too_long_line_reported_once_then_next_line_decodes() {
        assert_eq!(
            decode(5, b"abcdefghijklmnop\nok\n"),
            vec![Decoded::TooLong, line("ok")]
        );
    }

    #[test]
    fn too_long_is_reported_when_the_limit_is_crossed() {
        let mut decoder = LineDecoder::new(5);
        decoder.push(b"abcdef");
        assert_eq!(decoder.next(), Some(Decoded::TooLong));
        decoder.push(b"ghijkl");
        assert_eq!(decoder.next(), None);
        decoder.push(b"\nok\n");
        assert_eq!(decoder.next(), Some(line("ok")));
        assert_eq!(decoder.next(), None);
    }

    #[test]
    fn line_of_exactly_max_line_is_accepted() {
        assert_eq!(decode(5, b"abcde\n"), lines(&["abcde"]));
        assert_eq!(decode(5, b"abcde\r\n"), lines(&["abcde"]));
    }

    #[test]
    fn line_of_max_line_plus_one_is_rejected() {
        assert_eq!(decode(5, b"abcdef\n"), vec![Decoded::TooLong]);
    }

    #[test]
    fn backspace_keeps_a_line_under_the_limit() {
        assert_eq!(decode(5, b"abcde\x08f\n"), lines(&["abcdf"]));
    }

    #[test]
    fn line_growing_past_max_line_by_utf8_repair_is_rejected() {
        // 4 input bytes fit, but the 2 invalid ones become 3-byte U+FFFDs,
        // 8 bytes in all.
        assert_eq!(decode(4, b"a\xc0b\xfe\n"), vec![Decoded::TooLong]);
        assert_eq!(decode(7, b"a\xc0b\xfe\n"), vec![Decoded::TooLong]);
        assert_eq!(decode(8, b"a\xc0b\xfe\n"), lines(&["a\u{fffd}b\u{fffd}"]));
        // IAC IAC stores one 0xFF byte, which is repaired the same way.
        assert_eq!(decode(2, b"\xff\xff\n"), vec![Decoded::TooLong]);
    }

    #[test]
    fn endless_line_is_not_buffered() {
        let mut decoder = LineDecoder::new(512);
        let chunk = [b'a'; 16 * 1024];
        let mut events = Vec::new();
        for _ in 0..64 {
            decoder.push(&chunk);
            events.extend(&mut decoder);
            assert!(decoder.buffered_len() <= 512);
        }
        assert_eq!(events, vec![Decoded::TooLong]);
        assert_eq!(decoder.buffered_len(), 0);

        decoder.push(&vec![b'b'; 1 << 20]);
        assert_eq!(decoder.next(), None);
        assert_eq!(decoder.buffered_len(), 0);

        decoder.push(b"\nhello\n");
        assert_eq!(decoder.next(), Some(line("hello")));
        assert_eq!(decoder.next(), None);
    }

    #[test]
    fn megabyte_without_newline_in_one_push() {
        let mut decoder = LineDecoder::new(100);
        decoder.push(&vec![b'x'; 1 << 20]);
        assert_eq!(decoder.next(), Some(Decoded::TooLong));
        assert_eq!(decoder.next(), None);
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn partial_line_up_to_the_limit_is_buffered() {
        let mut decoder = LineDecoder::new(10);
        decoder.push(b"abcdefghij");
        assert_eq!(decoder.next(), None);
        assert_eq!(decoder.buffered_len(), 10);
        decoder.push(b"\n");
        assert_eq!(decoder.next(), Some(line("abcdefghij")));
    }

    // ---- HTTP ----

    #[test]
    fn http_request_as_first_line() {
        assert_eq!(
            decode(100, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            vec![Decoded::HttpRequest, line("Host: example.com")]
        );
    }

    #[test]
    fn http_request_after_empty_lines_still_counts_as_first() {
        assert_eq!(
            decode(100, b"\r\n  \r\nGET / HTTP/1.0\r\n"),
            vec![Decoded::HttpRequest]
        );
    }

    #[test]
    fn http_request_as_second_line_is_a_line() {
        assert_eq!(
            decode(100, b"hi\nGET / HTTP/1.1\n"),
            lines(&["hi", "GET / HTTP/1.1"])
        );
    }

    #[test]
    fn too_long_first_line_ends_the_http_check() {
        assert_eq!(
            decode(20, b"0123456789abcdefghijk\nGET / HTTP/1.1\n"),
            vec![Decoded::TooLong, line("GET / HTTP/1.1")]
        );
    }

    #[test]
    fn telnet_replies_do_not_end_the_http_check() {
        assert_eq!(
            decode(100, b"\xff\xfd\x01GET / HTTP/1.1\n"),
            vec![Decoded::TelnetReply([IAC, WONT, 1]), Decoded::HttpRequest]
        );
    }

    #[test]
    fn http_request_line_positives() {
        for text in [
            "GET / HTTP/1.1",
            "GET / HTTP/1.0",
            "HEAD /index.html HTTP/1.1",
            "POST /api?x=1 HTTP/1.1",
            "PUT /a HTTP/1.1",
            "DELETE /a HTTP/1.1",
            "OPTIONS * HTTP/1.1",
            "PATCH /a HTTP/1.1",
            "CONNECT example.com:443 HTTP/1.1",
            "TRACE / HTTP/1.1",
            "GET http://example.com/ HTTP/1.1",
            "GET / HTTP/2",
        ] {
            assert!(looks_like_http_request(text), "{text:?}");
        }
    }

    #[test]
    fn http_request_line_negatives() {
        for text in [
            "GET me a coffee",
            "get / http/1.1",
            "Get / HTTP/1.1",
            "GET / http/1.1",
            "GET /",
            "GET  / HTTP/1.1",
            "GET / HTTP/1.1 extra",
            "GET / HTTP/",
            "GET / HTTP/x",
            "GET / HTTP/1.1a",
            "FETCH / HTTP/1.1",
            "GET\t/\tHTTP/1.1",
            "hello",
            "",
        ] {
            assert!(!looks_like_http_request(text), "{text:?}");
        }
    }

    // ---- text that hides or reorders itself ----

    const HIDDEN: [char; 12] = [
        '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
        '\u{2068}', '\u{2069}', '\u{200b}', '\u{2060}', '\u{feff}',
    ];

    #[test]
    fn bidi_controls_and_zero_width_characters_are_removed() {
        for c in HIDDEN {
            let input = format!("a{c}b{c}\n");
            assert_eq!(decode(100, input.as_bytes()), lines(&["ab"]), "{c:?}");
        }
    }

    #[test]
    fn a_right_to_left_override_cannot_turn_text_around() {
        let input = "see \u{202e}gnp.exe\u{202c} now\n";
        assert_eq!(decode(100, input.as_bytes()), lines(&["see gnp.exe now"]));
    }

    #[test]
    fn zwj_and_zwnj_stay() {
        let technologist = "\u{1f469}\u{200d}\u{1f4bb}";
        let persian = "\u{645}\u{6cc}\u{200c}\u{62e}\u{648}\u{627}\u{647}\u{645}";
        for text in [technologist, persian] {
            assert_eq!(decode(100, format!("{text}\n").as_bytes()), lines(&[text]));
        }
    }

    #[test]
    fn neighbours_of_the_removed_characters_stay() {
        let text =
            "a\u{200a}\u{200c}\u{200e}\u{2029}\u{202f}\u{2061}\u{2065}\u{206a}\u{fefe}\u{ff01}b";
        assert_eq!(decode(100, format!("{text}\n").as_bytes()), lines(&[text]));
    }

    #[test]
    fn removal_comes_before_trimming() {
        assert_eq!(
            decode(100, "\u{feff} hi \u{200b}\r\n".as_bytes()),
            lines(&["hi"])
        );
        assert_eq!(decode(100, "\u{200b}\u{2060}\n".as_bytes()), vec![]);
    }

    #[test]
    fn may_hold_unwanted_agrees_with_a_byte_by_byte_scan() {
        for lead in [0xc2u8, 0xe2, 0xef] {
            for len in 0..40 {
                for at in 0..=len {
                    let mut bytes: Vec<u8> = (0..len)
                        .map(|i| [b' ', 0xc1, 0xc3, 0xe1, 0xe3, 0xee, 0xf0, 0xff][i % 8])
                        .collect();
                    if at < len {
                        bytes[at] = lead;
                    }
                    assert_eq!(may_hold_unwanted(&bytes), at < len, "{bytes:?}");
                }
            }
        }
    }

    // ---- memory ----

    #[test]
    fn idle_decoder_holds_nothing() {
        let mut decoder = LineDecoder::new(100);
        assert_eq!(decoder.buffered_len(), 0);
        decoder.push(b"hello world\n");
        assert!(decoder.has_unread_input());
        assert_eq!(decoder.buffered_len(), 12);
        assert_eq!(decoder.next(), Some(line("hello world")));
        assert!(!decoder.has_unread_input());
        assert_eq!(decoder.buffered_len(), 0);
        assert_eq!(decoder.input.capacity(), 0);
        assert_eq!(decoder.line.capacity(), 0);
    }

    #[test]
    fn read_buffer_is_freed_once_consumed_even_mid_line() {
        let mut decoder = LineDecoder::new(100);
        decoder.push(b"partial");
        assert_eq!(decoder.next(), None);
        assert_eq!(decoder.input.capacity(), 0);
        assert_eq!(decoder.buffered_len(), 7);
    }

    #[test]
    fn unread_input_stays_until_pulled() {
        let mut decoder = LineDecoder::new(100);
        decoder.push(b"a\nb\nc\n");
        assert_eq!(decoder.next(), Some(line("a")));
        assert!(decoder.has_unread_input());
        assert_eq!(decoder.buffered_len(), 4);
        // Pushing more while input is unread appends after it.
        decoder.push(b"d\n");
        let rest: Vec<Decoded> = decoder.by_ref().collect();
        assert_eq!(rest, lines(&["b", "c", "d"]));
        assert!(!decoder.has_unread_input());
    }

    #[test]
    fn find_special_agrees_with_a_byte_by_byte_scan() {
        for special in [0u8, 0x08, 0x0d, 0x1b, 0x1f, DEL, IAC] {
            for len in 0..40 {
                for at in 0..=len {
                    let mut bytes = vec![b'a'; len];
                    // Bytes just beside the special ones must not count.
                    for (i, byte) in bytes.iter_mut().enumerate() {
                        *byte = [b' ', 0x7e, 0x80, 0xfe, b'z'][i % 5];
                    }
                    if at < len {
                        bytes[at] = special;
                    }
                    let expected = bytes.iter().position(|&b| is_special(b));
                    assert_eq!(find_special(&bytes), expected, "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn decoder_struct_is_small() {
        assert!(mem::size_of::<LineDecoder>() <= 160);
    }

    // ---- properties ----

    /// Bytes biased towards everything the state machine treats specially,
    /// so that short inputs actually hit telnet, line-ending, editing and
    /// escape states and their combinations.
    fn tricky_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            4 => prop::sample::select(vec![b'a', b'b', b' ', b'\t', b'1', b';', b'm']),
            3 => Just(IAC),
            3 => 240..=255u8,
            3 => prop::sample::select(vec![b'\r', b'\n', 0u8]),
            2 => prop::sample::select(vec![BS, DEL]),
            2 => prop::sample::select(vec![ESC, b'[', b']', BEL, b'\\']),
            2 => prop::sample::select(vec![0xc2, 0xc3, 0xe2, 0x82, 0xac, 0x9b, 0x80, 0xa9]),
            1 => any::<u8>(),
        ]
    }

    /// Whole sequences (and their truncations, via the bytes around them),
    /// because single random bytes rarely line up into e.g. `ESC [ 3 1 m`
    /// or `IAC SB ... IAC SE`.
    fn token() -> impl Strategy<Value = Vec<u8>> {
        let tokens: Vec<&'static [u8]> = vec![
            b"\x1b[31m",
            b"\x1b[2J",
            b"\x1b[?25l",
            b"\x1b]0;title\x07",
            b"\x1b]0;t\x1b\\",
            b"\x1bc",
            b"\xff\xfd\x01",
            b"\xff\xfb\x03",
            b"\xff\xfc\x01",
            b"\xff\xfe\x01",
            b"\xff\xf1",
            b"\xff\xff",
            b"\xff\xfa\x18\x00xterm\xff\xf0",
            b"\xff\xfa\x18\xff\xff\xf0\xff\xf0",
            b"\r\n",
            b"\r\0",
            b"\n",
            "\u{e9}".as_bytes(),
            "\u{20ac}".as_bytes(),
            "\u{1f600}".as_bytes(),
            "\u{9b}1;2m".as_bytes(),
            "\u{85}".as_bytes(),
            "\u{202e}".as_bytes(),
            "\u{2066}".as_bytes(),
            "\u{200b}".as_bytes(),
            "\u{feff}".as_bytes(),
            "\u{200d}".as_bytes(),
            b"\xe2\x80",
            b"\xef\xbb",
            b"GET / HTTP/1.1",
            b"hello",
            b"  ",
        ];
        prop_oneof![
            3 => prop::sample::select(tokens).prop_map(<[u8]>::to_vec),
            1 => tricky_byte().prop_map(|b| vec![b]),
        ]
    }

    fn input_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(tricky_byte(), 0..200),
            prop::collection::vec(token(), 0..40).prop_map(|t| t.concat()),
            prop::collection::vec(any::<u8>(), 0..200),
        ]
    }

    proptest! {
        #[test]
        fn split_pushes_decode_like_one_push(
            input in input_bytes(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            pulls in prop::collection::vec(0usize..3, 8),
            max_line in 1usize..40,
        ) {
            let whole = decode_all(max_line, &input);

            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut decoder = LineDecoder::new(max_line);
            let mut pieces = Vec::new();
            let mut start = 0;
            for (i, &cut) in cuts.iter().chain(std::iter::once(&input.len())).enumerate() {
                decoder.push(&input[start..cut]);
                start = cut;
                // Pull only a few events before the next push, as a reactor
                // out of budget would, so lazily left-over input is covered.
                for _ in 0..pulls[i % pulls.len()] {
                    pieces.extend(decoder.next());
                }
            }
            pieces.extend(&mut decoder);

            prop_assert_eq!(pieces, whole);
            prop_assert!(!decoder.has_unread_input());
        }

        #[test]
        fn output_is_always_clean(
            input in input_bytes(),
            max_line in 1usize..64,
            eof in any::<bool>(),
        ) {
            let mut decoder = LineDecoder::new(max_line);
            decoder.push(&input);
            let mut events: Vec<Decoded> = decoder.by_ref().collect();
            prop_assert!(decoder.buffered_len() <= max_line);
            if eof {
                decoder.finish();
                events.extend(&mut decoder);
                prop_assert_eq!(decoder.buffered_len(), 0);
            }
            for event in events {
                if let Decoded::Line(text) = event {
                    prop_assert!(!text.is_empty());
                    prop_assert!(text.len() <= max_line, "{:?} longer than {}", text, max_line);
                    prop_assert!(
                        !text.chars().any(|c| c.is_control() && c != '\t'),
                        "control character in {:?}", text
                    );
                    prop_assert!(!text.contains('\x1b'), "ESC in {:?}", text);
                    prop_assert!(
                        !text.chars().any(hides_or_reorders_text),
                        "hidden or reordering character in {:?}", text
                    );
                    prop_assert_eq!(text.trim(), text.as_str());
                }
            }
        }

        #[test]
        fn a_client_that_never_speaks_telnet_never_gets_a_negotiation(
            input in input_bytes(),
            max_line in 1usize..64,
        ) {
            // What nc sends: no IAC, and no CR right before LF or NUL.
            let mut input: Vec<u8> = input.into_iter().filter(|&b| b != IAC).collect();
            for i in 1..input.len() {
                if input[i - 1] == b'\r' && matches!(input[i], b'\n' | 0) {
                    input[i - 1] = b' ';
                }
            }
            let mut decoder = LineDecoder::new(max_line);
            decoder.push(&input);
            decoder.finish();
            for event in decoder {
                prop_assert!(!matches!(event, Decoded::TelnetReply(_)), "{:?}", event);
            }
        }
    }
}
