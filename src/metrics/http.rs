//! One connection to the metrics port, sans IO: the reactor feeds the
//! bytes it reads and writes the response this hands back, then closes.
//!
//! Only what a scraper sends is understood: one `GET` or `HEAD` request,
//! answered with `Connection: close`. Everything else costs the server a
//! bounded buffer and a few seconds at most.

use std::time::{Duration, Instant};

/// Longest request head (request line and headers) accepted. Scrapers
/// send a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// How long a peer has, from accept, to send its whole request. A silent
/// or trickling peer is closed when it passes, answered or not.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The path served; a query string after it is ignored.
pub const METRICS_PATH: &str = "/metrics";

/// What to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 200 with the exposition; for `HEAD` the headers only.
    Metrics { head_only: bool },
    /// 404: a well-formed request for another path.
    NotFound,
    /// 405: a well-formed request with another method.
    MethodNotAllowed,
    /// 400: not HTTP/1.x, malformed, or longer than [`MAX_REQUEST_BYTES`].
    BadRequest,
}

impl Reply {
    pub fn status(self) -> u16 {
        match self {
            Reply::Metrics { .. } => 200,
            Reply::NotFound => 404,
            Reply::MethodNotAllowed => 405,
            Reply::BadRequest => 400,
        }
    }

    /// True when [`Reply::encode`] needs the rendered exposition.
    pub fn wants_metrics(self) -> bool {
        matches!(self, Reply::Metrics { .. })
    }

    /// The whole response. `metrics` is the exposition body, used only by
    /// [`Reply::Metrics`] (for `HEAD`, only its length is sent); pass
    /// anything, e.g. `&[]`, for the other replies.
    pub fn encode(self, metrics: &[u8]) -> Vec<u8> {
        let (reason, content_type, body, extra): (&str, &str, &[u8], &str) = match self {
            Reply::Metrics { .. } => ("OK", super::render::CONTENT_TYPE, metrics, ""),
            Reply::NotFound => (
                "Not Found",
                "text/plain; charset=utf-8",
                b"not found; metrics are at /metrics\n",
                "",
            ),
            Reply::MethodNotAllowed => (
                "Method Not Allowed",
                "text/plain; charset=utf-8",
                b"method not allowed\n",
                "Allow: GET, HEAD\r\n",
            ),
            Reply::BadRequest => (
                "Bad Request",
                "text/plain; charset=utf-8",
                b"bad request\n",
                "",
            ),
        };
        let head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            self.status(),
            body.len(),
        );
        let mut response = head.into_bytes();
        if self != (Reply::Metrics { head_only: true }) {
            response.extend_from_slice(body);
        }
        response
    }
}

/// The request state of one metrics connection.
///
/// After a reply the reactor writes it, shuts down its write side and
/// closes once the peer has closed or [`MetricsConn::deadline`] passes,
/// reading and discarding input meanwhile: closing a socket with unread
/// input sends a reset, which can destroy the response in flight.
#[derive(Debug)]
pub struct MetricsConn {
    head: Vec<u8>,
    /// Where the search for the end of the head resumes, so a request
    /// trickled one byte at a time is still scanned once.
    scanned: usize,
    /// Where the request line ends, once seen; until then, where the
    /// search for it resumes.
    line_end: Option<usize>,
    line_scanned: usize,
    deadline: Instant,
    replied: bool,
}

impl MetricsConn {
    /// A connection accepted at `now`.
    pub fn new(now: Instant) -> Self {
        MetricsConn {
            head: Vec::new(),
            scanned: 0,
            line_end: None,
            line_scanned: 0,
            deadline: now + REQUEST_TIMEOUT,
            replied: false,
        }
    }

    /// When the reactor closes this connection, whatever its state.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// True once a reply has been handed out; later input is ignored.
    pub fn has_replied(&self) -> bool {
        self.replied
    }

    /// Takes bytes read from the peer. Returns the reply as soon as it is
    /// known, exactly once; `None` while more of the request is needed, and
    /// for everything after the reply (pipelined requests included: the
    /// connection closes after one answer).
    pub fn on_bytes(&mut self, bytes: &[u8]) -> Option<Reply> {
        if self.replied {
            return None;
        }
        let room = MAX_REQUEST_BYTES - self.head.len();
        let taken = &bytes[..bytes.len().min(room)];
        self.head.extend_from_slice(taken);
        let reply = self.decide(bytes.len() > room);
        self.replied = reply.is_some();
        reply
    }

    fn decide(&mut self, overflowed: bool) -> Option<Reply> {
        if let Some(end) = self.find_head_end() {
            return Some(classify(&self.head[..end]));
        }
        if overflowed || self.head.len() >= MAX_REQUEST_BYTES {
            return Some(Reply::BadRequest);
        }
        // Reject what can never become a request without waiting for the
        // rest: a binary blob or a chat line should not hold a slot for
        // the whole timeout. Each byte is looked at once here, however the
        // request is cut into reads.
        if self.line_end.is_none() {
            let fresh = &self.head[self.line_scanned..];
            match fresh.iter().position(|&b| b == b'\n') {
                Some(offset) => {
                    let end = self.line_scanned + offset;
                    self.line_end = Some(end);
                    if parse_request_line(trim_cr(&self.head[..end])).is_none() {
                        return Some(Reply::BadRequest);
                    }
                }
                None => {
                    self.line_scanned = self.head.len();
                    if !could_start_request_line(&self.head) {
                        return Some(Reply::BadRequest);
                    }
                }
            }
        }
        None
    }

    /// Index just past the blank line ending the head, accepting bare LF
    /// line ends as lenient servers do.
    fn find_head_end(&mut self) -> Option<usize> {
        // Resume a few bytes back: the terminator may straddle two reads.
        let mut at = self.scanned.saturating_sub(3);
        while let Some(offset) = self.head[at..].iter().position(|&b| b == b'\n') {
            let newline = at + offset;
            let rest = &self.head[newline + 1..];
            if rest.first() == Some(&b'\n') {
                return Some(newline + 2);
            }
            if rest.starts_with(b"\r\n") {
                return Some(newline + 3);
            }
            if rest.is_empty() || rest == b"\r" {
                break;
            }
            at = newline + 1;
        }
        self.scanned = self.head.len();
        None
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Classifies a complete head (request line, headers, blank line).
fn classify(head: &[u8]) -> Reply {
    let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
    let Some((method, target)) = lines.next().and_then(parse_request_line) else {
        return Reply::BadRequest;
    };
    if !lines.all(|line| line.is_empty() || is_header_line(line)) {
        return Reply::BadRequest;
    }
    if method != b"GET" && method != b"HEAD" {
        return Reply::MethodNotAllowed;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    if path == METRICS_PATH.as_bytes() {
        Reply::Metrics {
            head_only: method == b"HEAD",
        }
    } else {
        Reply::NotFound
    }
}

/// `METHOD SP request-target SP HTTP/1.x`; yields the method and the
/// target in origin form (an absolute-form target loses its scheme and
/// authority).
fn parse_request_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some()
        || method.is_empty()
        || method.len() > MAX_METHOD_LEN
        || !method.iter().all(|&b| is_token(b))
    {
        return None;
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return None;
    }
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return None;
    }
    let origin = match strip_absolute_prefix(target) {
        Some([]) => b"/".as_slice(),
        Some(rest) => rest,
        None => target,
    };
    if origin.first() != Some(&b'/') {
        // Asterisk form and authority form name no path we serve.
        return Some((method, b"*"));
    }
    Some((method, origin))
}

/// The path part of `http://host[:port]/path`, if the target has that form.
fn strip_absolute_prefix(target: &[u8]) -> Option<&[u8]> {
    let lower: Vec<u8> = target.iter().take(8).map(u8::to_ascii_lowercase).collect();
    let scheme_len = if lower.starts_with(b"http://") {
        7
    } else if lower.starts_with(b"https://") {
        8
    } else {
        return None;
    };
    let rest = &target[scheme_len..];
    let path_start = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    Some(&rest[path_start..])
}

/// Longest method accepted; the standard ones have at most 7 letters and
/// WebDAV's longest 16.
const MAX_METHOD_LEN: usize = 16;

/// Could these bytes, with more to come, begin a request line? Only the
/// method is checked, so this looks at no more than its first few bytes;
/// the rest is judged once the line is complete.
fn could_start_request_line(partial: &[u8]) -> bool {
    let window = &partial[..partial.len().min(MAX_METHOD_LEN + 1)];
    match window.iter().position(|&b| b == b' ') {
        Some(space) => space > 0 && window[..space].iter().all(|&b| is_token(b)),
        None => window.len() <= MAX_METHOD_LEN && window.iter().all(|&b| is_token(b)),
    }
}

/// `field-name ":" field-value`, with no space before the colon and no
/// obsolete line folding.
fn is_header_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = &line[..colon];
    let value = &line[colon + 1..];
    !name.is_empty()
        && name.iter().all(|&b| is_token(b))
        && value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

/// An RFC 9110 `tchar`.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &[u8] =
        b"GET /metrics HTTP/1.1\r\nHost: localhost:9100\r\nUser-Agent: Prometheus/2.53\r\nAccept: text/plain;version=0.0.4;q=1,*/*;q=0.1\r\n\r\n";

    fn reply_to(request: &[u8]) -> Option<Reply> {
        MetricsConn::new(Instant::now()).on_bytes(request)
    }

    #[test]
    fn a_prometheus_scrape_gets_the_metrics() {
        assert_eq!(reply_to(SCRAPE), Some(Reply::Metrics { head_only: false }));
    }

    #[test]
    fn minimal_and_http_1_0_requests_are_served() {
        for request in [
            &b"GET /metrics HTTP/1.1\r\n\r\n"[..],
            b"GET /metrics HTTP/1.0\r\n\r\n",
            b"GET /metrics HTTP/1.1\n\n",
            b"GET /metrics HTTP/1.1\nHost: x\n\n",
            b"GET http://localhost:9100/metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ] {
            assert_eq!(
                reply_to(request),
                Some(Reply::Metrics { head_only: false }),
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn a_query_string_is_ignored() {
        assert_eq!(
            reply_to(b"GET /metrics?x=1&name[]=a HTTP/1.1\r\n\r\n"),
            Some(Reply::Metrics { head_only: false })
        );
    }

    #[test]
    fn head_gets_headers_only_with_the_body_length() {
        let reply = reply_to(b"HEAD /metrics HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(reply, Reply::Metrics { head_only: true });
        let response = String::from_utf8(reply.encode(b"abc 1\n")).unwrap();
        assert!(response.contains("Content-Length: 6\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\n"), "{response}");
    }

    #[test]
    fn other_paths_are_not_found() {
        for target in [
            "/",
            "/metric",
            "/metrics/",
            "/metricsx",
            "/METRICS",
            "*",
            "/%6Detrics",
        ] {
            let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(
                reply_to(request.as_bytes()),
                Some(Reply::NotFound),
                "{target}"
            );
        }
    }

    #[test]
    fn other_methods_are_not_allowed() {
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "get", "BREW"] {
            let request = format!("{method} /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(
                reply_to(request.as_bytes()),
                Some(Reply::MethodNotAllowed),
                "{method}"
            );
        }
        let response = String::from_utf8(Reply::MethodNotAllowed.encode(&[])).unwrap();
        assert!(response.starts_with("HTTP/1.1 405 "), "{response}");
        assert!(response.contains("Allow: GET, HEAD\r\n"), "{response}");
    }

    #[test]
    fn malformed_requests_are_bad() {
        for request in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /met rics HTTP/1.1\r\n\r\n",
            b" GET /metrics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"GET /m\xffetrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                reply_to(request),
                Some(Reply::BadRequest),
                "{}",
                String::from_utf8_lossy(request)
            );
        }
    }

    #[test]
    fn garbage_is_refused_at_once_without_waiting_for_more() {
        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], // a TLS hello
            b"hello, there",
            b"hello there\r\n",
            b"/nick bob\r\n",
            b"\x00\x00\x00",
            b"GET /metrics HTTP/1.1 \r\n", // bad request line, headers never come
            b"AVERYVERYLONGMETHODNAME",
        ] {
            assert_eq!(
                reply_to(garbage),
                Some(Reply::BadRequest),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
    }

    #[test]
    fn an_incomplete_request_waits_for_more() {
        for partial in [
            &b""[..],
            b"G",
            b"GET",
            b"GET /metr",
            b"GET /metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1\r",
            b"GET /metrics HTTP/1.1\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r",
        ] {
            assert_eq!(
                reply_to(partial),
                None,
                "{}",
                String::from_utf8_lossy(partial)
            );
        }
    }

    #[test]
    fn a_request_split_into_single_bytes_is_understood_once() {
        let mut conn = MetricsConn::new(Instant::now());
        let mut replies = Vec::new();
        for (at, byte) in SCRAPE.iter().enumerate() {
            if let Some(reply) = conn.on_bytes(std::slice::from_ref(byte)) {
                replies.push((at, reply));
            }
        }
        assert_eq!(
            replies,
            vec![(SCRAPE.len() - 1, Reply::Metrics { head_only: false })]
        );
        assert!(conn.has_replied());
    }

    #[test]
    fn a_request_split_at_every_point_is_understood() {
        for cut in 0..=SCRAPE.len() {
            let mut conn = MetricsConn::new(Instant::now());
            let first = conn.on_bytes(&SCRAPE[..cut]);
            let second = conn.on_bytes(&SCRAPE[cut..]);
            let reply = first.or(second);
            assert_eq!(
                reply,
                Some(Reply::Metrics { head_only: false }),
                "cut at {cut}"
            );
            assert!(first.is_none() || second.is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn only_the_first_of_pipelined_requests_is_answered() {
        let mut conn = MetricsConn::new(Instant::now());
        let mut two = SCRAPE.to_vec();
        two.extend_from_slice(b"GET /other HTTP/1.1\r\n\r\n\x00\xffjunk");
        assert_eq!(
            conn.on_bytes(&two),
            Some(Reply::Metrics { head_only: false })
        );
        assert_eq!(conn.on_bytes(b"GET /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(conn.on_bytes(&[0u8; 100_000]), None);
    }

    #[test]
    fn junk_after_a_complete_head_does_not_spoil_it() {
        let mut request = SCRAPE.to_vec();
        request.extend_from_slice(&[0xff; 20_000]);
        assert_eq!(
            reply_to(&request),
            Some(Reply::Metrics { head_only: false })
        );
    }

    #[test]
    fn an_oversized_request_is_bad_and_stays_bounded() {
        let mut conn = MetricsConn::new(Instant::now());
        assert_eq!(conn.on_bytes(b"GET /metrics HTTP/1.1\r\n"), None);
        let header = b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut reply = None;
        let mut fed = 0;
        while reply.is_none() && fed < 100_000 {
            reply = conn.on_bytes(header);
            fed += header.len();
        }
        assert_eq!(reply, Some(Reply::BadRequest));
        assert!(fed <= MAX_REQUEST_BYTES + header.len(), "fed {fed}");
        assert!(conn.head.capacity() <= 2 * MAX_REQUEST_BYTES);

        // A single huge read, and a huge target on one line.
        let mut huge = b"GET /".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 1 << 20));
        assert_eq!(reply_to(&huge), Some(Reply::BadRequest));
        huge.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(reply_to(&huge), Some(Reply::BadRequest));
    }

    #[test]
    fn a_request_just_under_the_cap_is_served() {
        let mut request = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        let tail = b"\r\n\r\n";
        let pad = MAX_REQUEST_BYTES - request.len() - tail.len();
        request.extend(std::iter::repeat_n(b'p', pad));
        request.extend_from_slice(tail);
        assert_eq!(request.len(), MAX_REQUEST_BYTES);
        assert_eq!(
            reply_to(&request),
            Some(Reply::Metrics { head_only: false })
        );
    }

    #[test]
    fn the_deadline_is_a_few_seconds_after_accept() {
        let accepted = Instant::now();
        let conn = MetricsConn::new(accepted);
        assert_eq!(conn.deadline(), accepted + REQUEST_TIMEOUT);
        assert!(!conn.is_expired(accepted));
        assert!(!conn.is_expired(accepted + REQUEST_TIMEOUT - Duration::from_millis(1)));
        assert!(conn.is_expired(accepted + REQUEST_TIMEOUT));
    }

    #[test]
    fn responses_are_complete_http_messages() {
        let body = b"apollonion_rooms 2\n";
        let ok = String::from_utf8(Reply::Metrics { head_only: false }.encode(body)).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(ok.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert!(ok.contains("\r\nConnection: close\r\n"));
        assert!(ok.ends_with("\r\n\r\napollonion_rooms 2\n"), "{ok}");

        for (reply, status) in [
            (Reply::NotFound, "404 Not Found"),
            (Reply::MethodNotAllowed, "405 Method Not Allowed"),
            (Reply::BadRequest, "400 Bad Request"),
        ] {
            let response = String::from_utf8(reply.encode(b"ignored")).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{head}"
            );
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{head}"
            );
            assert!(head.contains("Connection: close"), "{head}");
            assert!(!body.contains("ignored"));
            assert!(!reply.wants_metrics());
        }
    }
}
