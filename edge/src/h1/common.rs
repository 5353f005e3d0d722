//! Rules both sides of an HTTP/1.1 connection read alike: the bounds of a head, where a
//! head ends, `content-length`, `transfer-encoding` and `connection`, and the one timer
//! and read step every wait on the connection goes through.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

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
    fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
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
