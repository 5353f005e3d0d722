//! Rules both sides of an HTTP/1.1 connection read alike: the bounds of a head, where a
//! head ends, `content-length`, `transfer-encoding` and `connection`, and the one timer
//! and read step every wait on the connection goes through.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use axum::http::HeaderName;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Most bytes of a head (request or status line and header fields), either way.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields of a head, either way.
pub const MAX_HEADERS: usize = 128;
/// Most bytes of a chunk-size line (extensions included) and of a trailer section.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most bytes of chunk extensions in one body.
pub const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// A connection's read buffer is given back to the allocator when it grew past this.
pub const KEEP_BUFFER: usize = 64 * 1024;

/// How the body of a message ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding (§7.1).
    Chunked,
    /// Everything until the connection closes (answers only, §6.3 item 8).
    UntilClose,
}

/// A `content-length` value (RFC 9112 §6.2, RFC 9110 §8.6): one or more decimal digits and
/// nothing else (no sign, no list, no spaces inside; the optional whitespace around a
/// field value is not part of it, RFC 9110 §5.5). Past 19 digits it saturates: such a
/// length is over every body limit, which refuses it, rather than wrapping to a small one.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, digit| {
        n.saturating_mul(10).saturating_add(u64::from(digit - b'0'))
    }))
}

/// Whether the final transfer coding of a `transfer-encoding` value is `chunked` (RFC 9112
/// §6.3 items 3 and 4: only a final `chunked` frames a body by chunks).
pub fn final_coding_is_chunked(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .rfind(|coding| !coding.is_empty())
        .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"))
}

/// What the `connection` fields of a message ask (RFC 9112 §9.3, §9.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionTokens {
    /// `close`: the connection ends after this message.
    pub close: bool,
    /// `keep-alive`: an HTTP/1.0 peer asks to keep the connection (RFC 9112 Appendix C.2.2).
    pub keep_alive: bool,
}

impl ConnectionTokens {
    /// Reads one `connection` field value (a comma-separated token list) into `self`.
    pub fn read(&mut self, value: &[u8]) {
        for token in value.split(|b| *b == b',') {
            let token = token.trim_ascii();
            self.close |= token.eq_ignore_ascii_case(b"close");
            self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }

    /// Whether the connection may carry another message: HTTP/1.1 keeps it unless told to
    /// close, HTTP/1.0 closes it unless told to keep it; `close` wins over `keep-alive`.
    pub fn persistent(self, http10: bool) -> bool {
        !self.close && (!http10 || self.keep_alive)
    }
}

/// Field names outside the registry that messages through the gateway often carry, kept
/// once: `HeaderName::from_bytes` copies such a name into a new allocation on every call
/// (registered names, `content-type` and the like, never allocate).
static COMMON_CUSTOM: [HeaderName; 9] = [
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("x-tenant-id"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-principal-id"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-correlation-id"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-gateway-assertion"),
];

/// A field name as [`HeaderName::from_bytes`] reads it (lower-cased; an error for what is
/// not a token), without an allocation for the [`COMMON_CUSTOM`] names.
pub fn field_name(name: &[u8]) -> Result<HeaderName, axum::http::header::InvalidHeaderName> {
    // by first letter and length: most names are told apart in a comparison or two
    let candidates: &[HeaderName] = match (name.first().map(|b| b | 0x20), name.len()) {
        (Some(b't'), 10) => &COMMON_CUSTOM[0..1],
        (Some(b't'), 11) => &COMMON_CUSTOM[1..2],
        (Some(b'x'), 11) => &COMMON_CUSTOM[2..3],
        (Some(b'x'), 12) => &COMMON_CUSTOM[3..4],
        (Some(b'x'), 14) => &COMMON_CUSTOM[4..5],
        (Some(b'x'), 15) => &COMMON_CUSTOM[5..6],
        (Some(b'x'), 16) => &COMMON_CUSTOM[6..7],
        (Some(b'x'), 17) => &COMMON_CUSTOM[7..8],
        (Some(b'x'), 19) => &COMMON_CUSTOM[8..9],
        _ => &[],
    };
    match candidates
        .iter()
        .find(|known| known.as_str().as_bytes().eq_ignore_ascii_case(name))
    {
        Some(known) => Ok(known.clone()),
        None => HeaderName::from_bytes(name),
    }
}

/// Fields of a head noted in place before [`FieldSpans`] turns to a list.
const INLINE_FIELDS: usize = 24;

/// Where the fields of a parsed head lie in its buffer, so that once the head is taken out
/// of the buffer as one shared piece, each field name and value is a slice of it rather
/// than a copy in an allocation of its own. The first [`INLINE_FIELDS`] are noted in
/// place (a head rarely has more), the rest in a list.
pub struct FieldSpans {
    inline: [(u32, u32, u32, u32); INLINE_FIELDS],
    more: Vec<(u32, u32, u32, u32)>,
    len: usize,
}

impl FieldSpans {
    pub fn new() -> FieldSpans {
        FieldSpans {
            inline: [(0, 0, 0, 0); INLINE_FIELDS],
            more: Vec::new(),
            len: 0,
        }
    }

    /// Notes a field whose `name` and `value` are slices of `head` (the buffer parsed).
    pub fn push(&mut self, head: &[u8], name: &[u8], value: &[u8]) {
        let base = head.as_ptr() as usize;
        let at = |piece: &[u8]| (piece.as_ptr() as usize).saturating_sub(base) as u32;
        let (name_at, value_at) = (at(name), at(value));
        let span = (
            name_at,
            name_at + name.len() as u32,
            value_at,
            value_at + value.len() as u32,
        );
        match self.inline.get_mut(self.len) {
            Some(slot) => *slot = span,
            None => self.more.push(span),
        }
        self.len += 1;
    }

    /// How many fields were noted.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The fields noted, in order, as slices of `head` (the parsed buffer's head, taken
    /// out of it whole): each name's bytes (see [`field_name`]) and its value, shared.
    pub fn fields<'a>(
        &'a self,
        head: &'a bytes::Bytes,
    ) -> impl Iterator<Item = (&'a [u8], bytes::Bytes)> + 'a {
        let inline = &self.inline[..self.len.min(INLINE_FIELDS)];
        inline.iter().chain(&self.more).map(
            move |&(name_start, name_end, value_start, value_end)| {
                (
                    &head[name_start as usize..name_end as usize],
                    head.slice(value_start as usize..value_end as usize),
                )
            },
        )
    }
}

impl Default for FieldSpans {
    fn default() -> Self {
        FieldSpans::new()
    }
}

/// Finds the end of a head in a buffer that fills in pieces. The first look says "parse"
/// at once (a head usually arrives whole, and parsing is cheaper than a search); after a
/// partial head, only once new bytes hold an empty line (CRLF CRLF, or the bare LFs that
/// httparse accepts), so a head trickled byte by byte is not parsed again from its start
/// for every byte.
#[derive(Debug, Default)]
pub struct HeadScan {
    scanned: usize,
}

impl HeadScan {
    /// Whether `buf` is worth parsing as a head now; remembers how far it looked.
    pub fn worth_parsing(&mut self, buf: &[u8]) -> bool {
        if buf.is_empty() {
            return false;
        }
        let first = self.scanned == 0;
        let tail = &buf[self.scanned.saturating_sub(3).min(buf.len())..];
        self.scanned = buf.len();
        first || tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
    }

    /// Starts over (the buffer's start moved).
    pub fn reset(&mut self) {
        self.scanned = 0;
    }
}

/// `after` from now, saturating far in the future (a huge configured limit must not
/// overflow the clock).
pub fn deadline(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// One timer per connection for its deadlines. Setting a later deadline only records it;
/// the timer is moved when it fires early (or when a deadline comes sooner). On a busy
/// kept-alive connection, each request's deadline is later than the last, so requests do
/// not register and cancel a timer each: the timer wakes about once per timeout period.
pub struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// When the sleep fires.
    at: Instant,
    /// The deadline in force (never before `at`).
    wanted: Instant,
}

impl Timer {
    pub fn new(at: Instant) -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            at,
            wanted: at,
        }
    }

    pub fn set(&mut self, at: Instant) {
        self.wanted = at;
        if at < self.at {
            self.sleep.as_mut().reset(at);
            self.at = at;
        }
    }

    /// Whether the deadline in force has passed already.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.wanted
    }

    /// Whether the deadline in force has passed (else the task is woken when it might have).
    pub fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= self.wanted {
                return true;
            }
            self.at = self.wanted;
            self.sleep.as_mut().reset(self.wanted);
        }
        false
    }
}

/// What one read from the connection gave.
pub enum Read {
    Data,
    /// End of stream, or an I/O error (the connection cannot go on either way).
    Closed,
    TimedOut,
    Stopped,
}

/// Reads more into `buf`, until `timer` (when given) expires or `stop` (when given) fires.
pub async fn read_more<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    mut timer: Option<&mut Timer>,
    mut stop: Option<Pin<&mut WaitForCancellationFutureOwned>>,
) -> Read {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(8 * 1024);
    }
    let mut read = std::pin::pin!(io.read_buf(buf));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = read.as_mut().poll(cx) {
            return Poll::Ready(match result {
                Ok(0) | Err(_) => Read::Closed,
                Ok(_) => Read::Data,
            });
        }
        if let Some(timer) = timer.as_mut()
            && timer.poll_expired(cx)
        {
            return Poll::Ready(Read::TimedOut);
        }
        if let Some(stop) = stop.as_mut()
            && stop.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Read::Stopped);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_digits_only_and_saturate() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"99999999999999999999999"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b" ",
            b"+1",
            b"-1",
            b"1,1",
            b"1 1",
            b"0x10",
            b"1e3",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn only_a_final_chunked_coding_frames_by_chunks() {
        assert!(final_coding_is_chunked(b"chunked"));
        assert!(final_coding_is_chunked(b"gzip, Chunked"));
        assert!(final_coding_is_chunked(b"chunked,"));
        assert!(!final_coding_is_chunked(b"chunked, gzip"));
        assert!(!final_coding_is_chunked(b"xchunked"));
        assert!(!final_coding_is_chunked(b""));
    }

    #[test]
    fn close_wins_and_http10_needs_keep_alive() {
        let tokens = |value: &[u8]| {
            let mut tokens = ConnectionTokens::default();
            tokens.read(value);
            tokens
        };
        assert!(tokens(b"").persistent(false));
        assert!(!tokens(b"").persistent(true));
        assert!(tokens(b"Keep-Alive").persistent(true));
        assert!(!tokens(b"keep-alive, close").persistent(true));
        assert!(!tokens(b"close, keep-alive").persistent(true));
        assert!(!tokens(b"upgrade, CLOSE").persistent(false));
    }

    #[test]
    fn field_names_read_as_the_http_crate_reads_them() {
        for name in [
            "X-Tenant-Id",
            "x-tenant-id",
            "TraceParent",
            "tracestate",
            "x-correlation-id",
            "X-GATEWAY-ASSERTION",
            "x-forwarded-proto",
            "x-tenant-ie",
            "content-type",
            "Transfer-Encoding",
            "te",
            "x",
            "x-custom-field",
        ] {
            assert_eq!(
                field_name(name.as_bytes()).unwrap(),
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "{name}"
            );
        }
        for bad in [&b""[..], b"x tenant", b"x-tenant-i\xff", b"(x)"] {
            assert!(
                field_name(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn field_spans_give_back_every_field_in_order() {
        // more fields than are noted in place
        let mut text = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..(INLINE_FIELDS + 9) {
            text.push_str(&format!("f{i}: value {i}\r\n"));
        }
        text.push_str("\r\n");
        let buf = bytes::Bytes::from(text);
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut fields);
        assert!(response.parse(&buf).unwrap().is_complete());
        let mut spans = FieldSpans::new();
        for field in response.headers.iter() {
            spans.push(&buf, field.name.as_bytes(), field.value);
        }
        assert_eq!(spans.len(), INLINE_FIELDS + 9);
        let got: Vec<(String, String)> = spans
            .fields(&buf)
            .map(|(name, value)| {
                (
                    String::from_utf8(name.to_vec()).unwrap(),
                    String::from_utf8(value.to_vec()).unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = (0..(INLINE_FIELDS + 9))
            .map(|i| (format!("f{i}"), format!("value {i}")))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_head_end_is_found_across_pieces() {
        let mut scan = HeadScan::default();
        assert!(!scan.worth_parsing(b""));
        // the first look always parses
        assert!(scan.worth_parsing(b"GET / HTTP/1.1\r\n"));
        assert!(!scan.worth_parsing(b"GET / HTTP/1.1\r\nhost: x\r"));
        // the empty line split between two reads
        assert!(scan.worth_parsing(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"));
        let mut scan = HeadScan::default();
        assert!(scan.worth_parsing(b"HTTP/1.1 200 OK\n"));
        assert!(scan.worth_parsing(b"HTTP/1.1 200 OK\n\n"));
    }
}
