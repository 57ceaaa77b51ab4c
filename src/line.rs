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
//! 1. telnet: strips `IAC` sequences and produces refusals;
//! 2. line endings: `LF`, `CR LF` and `CR NUL` end a line;
//! 3. line editing: backspace/DEL, C0 controls and `ESC` sequences are
//!    applied to the partial line, which is capped at `max_line` bytes;
//! 4. at the end of a line: UTF-8 repair, C1 removal, trimming and the
//!    one-off HTTP check.
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
    /// Three bytes to send back to the client verbatim: a telnet refusal
    /// `IAC WONT x` (answer to `IAC DO x`) or `IAC DONT x` (answer to
    /// `IAC WILL x`).
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
    /// Answered options, one bit per option byte, so that each is refused at
    /// most once however often a client asks.
    refused_do: [u64; 4],
    refused_will: [u64; 4],
    telnet: Telnet,
    escape: Escape,
    /// A CR was seen; what follows decides whether it ends the line.
    pending_cr: bool,
    /// The current line went over `max_line` and is skipped up to its end.
    discarding: bool,
    /// A line already produced an event, so the HTTP check is over.
    first_line_done: bool,
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
            refused_do: [0; 4],
            refused_will: [0; 4],
            telnet: Telnet::Data,
            escape: Escape::Normal,
            pending_cr: false,
            discarding: false,
            first_line_done: false,
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

    /// True while pushed bytes remain that `next` has not consumed yet.
    #[must_use]
    pub fn has_unread_input(&self) -> bool {
        self.pos < self.input.len()
    }

    /// Bytes currently held (unconsumed raw input + the partial line), for
    /// memory accounting.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        (self.input.len() - self.pos) + self.line.len()
    }

    fn decode(&mut self) -> Option<Decoded> {
        while self.pos < self.input.len() {
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
        None
    }

    fn telnet_byte(&mut self, b: u8) -> Option<Decoded> {
        match self.telnet {
            Telnet::Data => {
                if b == IAC {
                    self.telnet = Telnet::Iac;
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
                self.refuse(command, b)
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

    /// We support no telnet options, but a client that asks for one waits for
    /// an answer, so each request is refused once; answering repeats could be
    /// abused to make us write without bound.
    fn refuse(&mut self, command: u8, option: u8) -> Option<Decoded> {
        let (seen, reply) = match command {
            DO => (&mut self.refused_do, WONT),
            WILL => (&mut self.refused_will, DONT),
            _ => return None,
        };
        let word = &mut seen[usize::from(option >> 6)];
        let bit = 1u64 << (option & 63);
        if *word & bit != 0 {
            return None;
        }
        *word |= bit;
        Some(Decoded::TelnetReply([IAC, reply, option]))
    }

    fn data_byte(&mut self, b: u8) -> Option<Decoded> {
        if self.pending_cr {
            self.pending_cr = false;
            if b == b'\n' || b == 0 {
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
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Non-zero exactly when some byte of `word` is zero.
    let has_zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGH;
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
/// sequences), and trims.
fn clean_line(raw: Vec<u8>) -> String {
    // C0 controls and DEL never reach this point, and every C1 control and
    // 8-bit CSI is encoded starting with 0xC2: a line without that byte
    // (all plain ASCII chat, for one) needs no per-character scan.
    let may_hold_c1 = raw.contains(&0xc2);
    let mut text = match String::from_utf8(raw) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    };
    if may_hold_c1 && text.chars().any(is_unwanted_control) {
        text = strip_controls(&text);
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

fn strip_controls(text: &str) -> String {
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
        } else if !is_unwanted_control(c) {
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

    /// Pushes each chunk in turn and drains all events after each push.
    fn decode_chunks(max_line: usize, chunks: &[&[u8]]) -> Vec<Decoded> {
        let mut decoder = LineDecoder::new(max_line);
        let mut events = Vec::new();
        for chunk in chunks {
            decoder.push(chunk);
            events.extend(&mut decoder);
            assert!(!decoder.has_unread_input());
        }
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
            let whole = decode(max_line, &input);

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
        fn output_is_always_clean(input in input_bytes(), max_line in 1usize..64) {
            let mut decoder = LineDecoder::new(max_line);
            decoder.push(&input);
            for event in &mut decoder {
                if let Decoded::Line(text) = event {
                    prop_assert!(!text.is_empty());
                    prop_assert!(text.len() <= max_line, "{:?} longer than {}", text, max_line);
                    prop_assert!(
                        !text.chars().any(|c| c.is_control() && c != '\t'),
                        "control character in {:?}", text
                    );
                    prop_assert!(!text.contains('\x1b'), "ESC in {:?}", text);
                    prop_assert_eq!(text.trim(), text.as_str());
                }
            }
            prop_assert!(decoder.buffered_len() <= max_line);
        }
    }
}
