//! The HTTP/1.1 server side of both planes' listeners: one task per connection reads a
//! request head with httparse, reads the whole body (bounded), hands the request to the
//! service and writes its answer, then reads the next request from the same buffer.
//!
//! Why our own and not hyper's: hyper's server connection (with axum's h1/h2 detection,
//! its body channel, dispatcher and encoder) was the largest item left on the request
//! path, about 14k instructions of a proxied query (docs/benchmarks.md, sixth
//! comparison). This loop does the same protocol work in the connection's own task,
//! with one buffer per connection and one write per answer. HTTP/2 (ALPN `h2` on TLS,
//! or the prior-knowledge preface on plain TCP) still goes to hyper ([`Outcome::Http2`]).
//!
//! What it accepts and refuses (RFC 9112):
//! - a head of at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields, else 431
//!   `headers_too_large`; anything httparse will not parse (obs-fold, spaces before the
//!   colon, bare CR, a version other than 1.0 or 1.1), else 400 `malformed_request`;
//! - exactly one `Host` in an HTTP/1.1 request (§3.2), else 400 `malformed_request`;
//! - framing (§6): one `content-length` of digits, or one `transfer-encoding: chunked`
//!   (not in HTTP/1.0), never both, else 400 `ambiguous_framing`; chunk sizes of hex
//!   digits, extensions and trailers bounded, every chunk closed by CRLF;
//! - a body of at most `max_body` bytes, else 413 `payload_too_large` without reading it
//!   (a declared length) or once past it (chunked); `expect: 100-continue` is answered
//!   only when the body will be read;
//! - a complete head within `head_timeout` of the connection's start or of the previous
//!   answer (an idle connection is closed without an answer, a head still arriving gets
//!   408 `request_timeout`), a body within `body_timeout` of its head (408), and each
//!   answer written within `body_timeout` (a client that stops reading is dropped);
//! - blank lines before a request are skipped (RFC 9112 §2.2), at most a head's worth.
//!
//! Every refusal is an answer in the envelope with `connection: close`: after it, the
//! rest of what the client sent is never read as a request. Bodies are read whole before
//! the service runs (the gateway relays whole bodies anyway), so a service never sees a
//! partial body and a refused request never reaches one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::ApiError;
use gateway_core::ErrorCode;

/// Most bytes of a request head (request line and header fields).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields of a request.
pub const MAX_HEADERS: usize = 128;
/// Most bytes of a chunk-size line (extensions included) or of the trailer section.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most bytes of chunk extensions in one body.
const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// The connection buffer is given back to the allocator when it grew past this.
const KEEP_BUFFER: usize = 64 * 1024;
/// Answers are written in pieces of about this size.
const WRITE_CHUNK: usize = 64 * 1024;

/// Bounds of one connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Largest request body read (413 past it).
    pub max_body: usize,
    /// From the connection's start or the previous answer to the next complete head:
    /// an idle connection is closed after it, a head still arriving gets 408.
    pub head_timeout: Duration,
    /// From a complete head to the end of its body (408 past it).
    pub body_timeout: Duration,
}

impl ConnLimits {
    /// The defaults with `max_body`: 60 s for the next head, 60 s for a body.
    pub fn with_max_body(max_body: usize) -> ConnLimits {
        ConnLimits {
            max_body,
            head_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// One timer per connection for its deadlines. Setting a later deadline only records it;
/// the timer is moved when it fires early (or when a deadline comes sooner). On a busy
/// kept-alive connection, each request's deadline is later than the last, so requests do
/// not register and cancel a timer each: the timer wakes about once per timeout period.
struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// When the sleep fires.
    at: Instant,
    /// The deadline in force (never before `at`).
    wanted: Instant,
}

/// `after` from now, saturating far in the future (a huge configured limit must not
/// overflow the clock).
fn deadline(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

impl Timer {
    fn new(at: Instant) -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            at,
            wanted: at,
        }
    }

    fn set(&mut self, at: Instant) {
        self.wanted = at;
        if at < self.at {
            self.sleep.as_mut().reset(at);
            self.at = at;
        }
    }

    /// Whether the deadline in force has passed (else the task is woken when it might have).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
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
enum Read {
    Data,
    Closed,
    TimedOut,
    Stopped,
}

/// Reads more into `buf`, until the timer expires or (when given) `stop` fires.
async fn read_more<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    timer: &mut Timer,
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
        if timer.poll_expired(cx) {
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

/// How a connection ended.
pub enum Outcome {
    /// Closed (by either side, after a refusal, or for shutdown).
    Closed,
    /// The client opened with the HTTP/2 preface: the bytes read so far, to be replayed to
    /// an HTTP/2 server ([`Rewind`]).
    Http2(Bytes),
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Serves HTTP/1.x requests on `io` until either side closes, a request is refused, the
/// connection idles past its limit, or `stop` is cancelled (in-flight requests are
/// answered first, with `connection: close`).
pub async fn serve_connection<I, S>(
    mut io: I,
    mut service: S,
    limits: &ConnLimits,
    stop: &CancellationToken,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut first = true;
    let mut timer = Timer::new(deadline(limits.head_timeout));
    let mut stopped = std::pin::pin!(stop.clone().cancelled_owned());
    loop {
        let head = match read_head(&mut io, &mut buf, &mut timer, stopped.as_mut(), first).await {
            Ok(Some(head)) => head,
            Ok(None) => return Outcome::Closed,
            Err(HeadError::Http2) => return Outcome::Http2(buf.freeze()),
            Err(HeadError::Refused(err)) => {
                refuse(&mut io, &mut out, None, err).await;
                return Outcome::Closed;
            }
        };
        first = false;
        let Parsed {
            request,
            framing,
            expect_continue,
            mut keep_alive,
        } = head;
        let body = match framing {
            Framing::Empty => Bytes::new(),
            Framing::Length(length) if length > limits.max_body as u64 => {
                refuse(
                    &mut io,
                    &mut out,
                    Some(&request),
                    too_large(limits.max_body),
                )
                .await;
                return Outcome::Closed;
            }
            framing => {
                if expect_continue && buf.is_empty() && request.version() == Version::HTTP_11 {
                    let interim = async {
                        io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                        io.flush().await
                    };
                    if !matches!(
                        tokio::time::timeout(limits.body_timeout, interim).await,
                        Ok(Ok(()))
                    ) {
                        return Outcome::Closed;
                    }
                }
                timer.set(deadline(limits.body_timeout));
                let read = match framing {
                    Framing::Length(length) => {
                        read_exact(&mut io, &mut buf, length as usize, &mut timer).await
                    }
                    _ => read_chunked(&mut io, &mut buf, limits.max_body, &mut timer).await,
                };
                match read {
                    Ok(body) => body,
                    Err(BodyError::Closed) => return Outcome::Closed,
                    Err(BodyError::Refused(err)) => {
                        refuse(&mut io, &mut out, Some(&request), err).await;
                        return Outcome::Closed;
                    }
                }
            }
        };
        let head_only = request.method() == Method::HEAD;
        let http10 = request.version() == Version::HTTP_10;
        let large_body = body.len() > KEEP_BUFFER;
        let request = request.map(|()| {
            if body.is_empty() {
                Body::empty()
            } else {
                Body::from(body)
            }
        });
        let ready = std::future::poll_fn(|cx| service.poll_ready(cx)).await;
        let response = match ready {
            Ok(()) => match service.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
            Err(never) => match never {},
        };
        if stop.is_cancelled() {
            keep_alive = false;
        }
        let written = tokio::time::timeout(
            limits.body_timeout,
            write_response(&mut io, &mut out, response, head_only, http10, keep_alive),
        )
        .await;
        let written = matches!(written, Ok(Ok(true)));
        if !written || !keep_alive {
            // bounded: over TLS a shutdown writes, and the client may not be reading
            let _ = tokio::time::timeout(LINGER, io.shutdown()).await;
            return Outcome::Closed;
        }
        // after a large body the buffer's spare capacity understates what it holds
        if buf.is_empty() && (large_body || buf.capacity() > KEEP_BUFFER) {
            buf = BytesMut::with_capacity(8 * 1024);
        }
        if out.capacity() > KEEP_BUFFER {
            out = Vec::with_capacity(1024);
        }
        timer.set(deadline(limits.head_timeout));
    }
}

/// A request head, its body's framing and what it asks of the connection.
struct Parsed {
    request: Request<()>,
    framing: Framing,
    expect_continue: bool,
    keep_alive: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

enum HeadError {
    Http2,
    Refused(ApiError),
}

enum BodyError {
    Closed,
    Refused(ApiError),
}

fn malformed(message: &str) -> ApiError {
    ApiError::bad_request(message.to_string()).with_reason("malformed_request")
}

fn ambiguous() -> ApiError {
    ApiError::bad_request("the request's length is ambiguous").with_reason("ambiguous_framing")
}

fn too_large(max_body: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is over {max_body} bytes"),
    )
}

fn timed_out() -> ApiError {
    ApiError::new(
        ErrorCode::RequestTimeout,
        "the request did not arrive in time",
    )
}

fn head_too_large() -> ApiError {
    ApiError::new(
        ErrorCode::HeadersTooLarge,
        format!("the request head is over {MAX_HEAD} bytes or {MAX_HEADERS} fields"),
    )
}

/// Reads until `buf` holds a complete head, and parses it. `Ok(None)`: the connection
/// closed, idled out or is told to stop between requests. A head that arrives in pieces
/// is parsed again only once its end (an empty line) is in the buffer, so a client
/// trickling a head byte by byte does not make the parse quadratic.
async fn read_head<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    timer: &mut Timer,
    mut stop: Pin<&mut WaitForCancellationFutureOwned>,
    first: bool,
) -> Result<Option<Parsed>, HeadError> {
    let mut scanned = 0;
    let mut skipped = 0;
    loop {
        // blank lines before a request line are skipped, a head's worth at most
        let blank = blank_prefix(buf);
        if blank > 0 {
            skipped += blank;
            if skipped > MAX_HEAD {
                return Err(HeadError::Refused(malformed("too many blank lines")));
            }
            buf.advance(blank);
            scanned = 0;
        }
        if buf.len() > scanned {
            let preface = &H2_PREFACE[..buf.len().min(H2_PREFACE.len())];
            if first && buf.starts_with(preface) {
                if preface.len() == H2_PREFACE.len() {
                    return Err(HeadError::Http2);
                }
            } else if (scanned == 0 || has_head_end(&buf[scanned.saturating_sub(3)..]))
                && let Some(parsed) = parse_head(buf)?
            {
                return Ok(Some(parsed));
            }
            if buf.len() > MAX_HEAD {
                return Err(HeadError::Refused(head_too_large()));
            }
            scanned = buf.len();
        }
        // shutdown closes the connection unless a head is complete: one arriving slowly
        // would hold the drain to its deadline
        match read_more(io, buf, timer, Some(stop.as_mut())).await {
            Read::Data => {}
            Read::Stopped => return Ok(None),
            Read::Closed | Read::TimedOut if buf.is_empty() => return Ok(None),
            Read::Closed => {
                return Err(HeadError::Refused(malformed(
                    "the connection closed inside a request head",
                )));
            }
            Read::TimedOut => return Err(HeadError::Refused(timed_out())),
        }
    }
}

/// How many bytes of blank lines (CRLF or a bare LF) `buf` starts with.
fn blank_prefix(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match &buf[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            _ => return at,
        }
    }
}

/// `bytes` hold the end of a head: an empty line, after CRLF or a bare LF.
fn has_head_end(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|pair| pair == b"\n\n") || bytes.windows(3).any(|three| three == b"\n\r\n")
}

/// Parses the head at the start of `buf`; `Ok(None)` while it is incomplete. On success
/// the head is taken out of `buf` (its bytes shared by the request's header values).
fn parse_head(buf: &mut BytesMut) -> Result<Option<Parsed>, HeadError> {
    // left uninitialised: zeroing 128 fields cost more than parsing a typical head
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::Refused(head_too_large())),
        Err(err) => {
            return Err(HeadError::Refused(malformed(&format!(
                "the request head could not be parsed: {err}"
            ))));
        }
    };
    if length > MAX_HEAD {
        return Err(HeadError::Refused(head_too_large()));
    }
    // where each piece lies in the buffer, to take the head out without copying it
    let base = buf.as_ptr() as usize;
    let at = |piece: &[u8]| {
        let start = piece.as_ptr() as usize - base;
        (start, start + piece.len())
    };
    let refused = |message: &str| HeadError::Refused(malformed(message));
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| refused("the request method is not a token"))?;
    let target = at(parsed.path.unwrap_or_default().as_bytes());
    let ranges: Vec<_> = parsed
        .headers
        .iter()
        .map(|field| (at(field.name.as_bytes()), at(field.value)))
        .collect();
    let head = buf.split_to(length).freeze();

    let uri = Uri::from_maybe_shared(head.slice(target.0..target.1))
        .map_err(|_| refused("the request target is not a URI"))?;
    let mut headers = HeaderMap::with_capacity(ranges.len());
    let mut framing = Framing::Empty;
    let (mut lengths, mut codings, mut hosts) = (0, 0, 0);
    let mut chunked = false;
    let mut expect_continue = false;
    // HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 closes unless told
    // to keep it; `close` wins over `keep-alive`
    let (mut close, mut keep) = (false, false);
    for (name, value) in &ranges {
        let name = HeaderName::from_bytes(&head[name.0..name.1])
            .map_err(|_| refused("a header name is not a token"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.0..value.1))
            .map_err(|_| refused("a header value holds a control character"))?;
        match name {
            header::CONTENT_LENGTH => {
                lengths += 1;
                let digits = value.as_bytes();
                if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(HeadError::Refused(ambiguous()));
                }
                // past 18 digits it is over any body limit: 413, not an overflow
                let length = digits.iter().fold(0u64, |n, digit| {
                    n.saturating_mul(10).saturating_add(u64::from(digit - b'0'))
                });
                framing = Framing::Length(length);
            }
            header::TRANSFER_ENCODING => {
                codings += 1;
                chunked = value.as_bytes().eq_ignore_ascii_case(b"chunked");
            }
            header::HOST => hosts += 1,
            header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            header::CONNECTION => {
                for token in value.as_bytes().split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            _ => {}
        }
        headers.append(name, value);
    }
    if codings > 0 {
        if lengths > 0 || codings > 1 || !chunked || version == Version::HTTP_10 {
            return Err(HeadError::Refused(ambiguous()));
        }
        framing = Framing::Chunked;
    }
    if lengths > 1 {
        return Err(HeadError::Refused(ambiguous()));
    }
    if framing == Framing::Length(0) {
        framing = Framing::Empty;
    }
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
        return Err(refused("an HTTP/1.1 request needs exactly one host header"));
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let keep_alive = !close && (version == Version::HTTP_11 || keep);
    Ok(Some(Parsed {
        request,
        framing,
        expect_continue,
        keep_alive,
    }))
}

/// Reads more of a body into `buf`.
async fn fill<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    timer: &mut Timer,
) -> Result<(), BodyError> {
    // a client that keeps sending never lets the read wait on the timer
    if Instant::now() >= timer.wanted {
        return Err(BodyError::Refused(timed_out()));
    }
    match read_more(io, buf, timer, None).await {
        Read::Data => Ok(()),
        Read::Closed | Read::Stopped => Err(BodyError::Closed),
        Read::TimedOut => Err(BodyError::Refused(timed_out())),
    }
}

/// The next `length` bytes (the caller checked them against the limit).
async fn read_exact<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    length: usize,
    timer: &mut Timer,
) -> Result<Bytes, BodyError> {
    if buf.len() < length {
        // grow with what arrives: a declared length alone reserves at most 64 KiB
        buf.reserve((length - buf.len()).min(KEEP_BUFFER));
        while buf.len() < length {
            fill(io, buf, timer).await?;
        }
    }
    Ok(buf.split_to(length).freeze())
}

/// Where the line at the start of `buf` ends (its LF), reading more as needed; refused
/// with `too_long` past [`MAX_CHUNK_LINE`].
async fn line_end<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    timer: &mut Timer,
    too_long: &str,
) -> Result<usize, BodyError> {
    loop {
        if let Some(at) = buf.iter().take(MAX_CHUNK_LINE).position(|b| *b == b'\n') {
            return Ok(at);
        }
        if buf.len() >= MAX_CHUNK_LINE {
            return Err(BodyError::Refused(malformed(too_long)));
        }
        fill(io, buf, timer).await?;
    }
}

/// A chunked body (RFC 9112 §7.1), its trailer section read and dropped.
async fn read_chunked<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    max_body: usize,
    timer: &mut Timer,
) -> Result<Bytes, BodyError> {
    let mut body = BytesMut::new();
    let mut extensions = 0;
    loop {
        let line_end = line_end(io, buf, timer, "a chunk-size line is too long").await?;
        let size = chunk_size(&buf[..line_end])
            .ok_or_else(|| BodyError::Refused(malformed("a chunk size is not valid")))?;
        // extensions are dropped, but not read without end: 1-byte chunks with 4 KiB of
        // extension each would make a small body a huge upload
        extensions += buf[..line_end]
            .iter()
            .position(|b| *b == b';')
            .map_or(0, |at| line_end - at);
        if extensions > MAX_CHUNK_EXTENSIONS {
            return Err(BodyError::Refused(malformed(
                "the chunk extensions are too long",
            )));
        }
        buf.advance(line_end + 1);
        if size == 0 {
            break;
        }
        if body.len() as u64 + size > max_body as u64 {
            return Err(BodyError::Refused(too_large(max_body)));
        }
        let size = size as usize;
        while buf.len() < size + 2 {
            fill(io, buf, timer).await?;
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(BodyError::Refused(malformed(
                "a chunk does not end with CRLF",
            )));
        }
        buf.advance(size + 2);
    }
    // trailer fields, then the empty line
    let mut trailers = 0;
    loop {
        let line_end = line_end(io, buf, timer, "the trailer section is too long").await?;
        let line = &buf[..line_end];
        if line.last() != Some(&b'\r') || line[..line.len() - 1].contains(&b'\r') {
            return Err(BodyError::Refused(malformed(
                "a line does not end with CRLF",
            )));
        }
        let empty = line_end == 1;
        trailers += line_end + 1;
        if trailers > MAX_CHUNK_LINE {
            return Err(BodyError::Refused(malformed(
                "the trailer section is too long",
            )));
        }
        buf.advance(line_end + 1);
        if empty {
            return Ok(body.freeze());
        }
    }
}

/// The size of a chunk-size line without its LF: hex digits, optional extensions after
/// `;` (no CR or LF inside), then CR.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r")?;
    if line.contains(&b'\r') {
        return None;
    }
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = &line[digits..];
    // optional whitespace before `;` is spaces and tabs only (RFC 9112 §7.1.1's BWS)
    let blank = rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let rest = &rest[blank..];
    let visible = |b: &u8| *b == b'\t' || (0x20..0x7f).contains(b);
    if !(rest.is_empty() || (rest[0] == b';' && rest.iter().all(visible))) {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, digit| {
        let value = (*digit as char).to_digit(16)? as u64;
        Some(n * 16 + value)
    })
}

/// Answers `err` in the envelope, with `connection: close`; the correlation id is the
/// client's (when the head was parsed and it gave a valid one) or a new one.
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut Vec<u8>,
    request: Option<&Request<()>>,
    err: ApiError,
) {
    tracing::debug!(reason = err.envelope_code(), message = %err.message, "request refused by the connection");
    metrics::counter!("gateway_refused_requests_total", "reason" => err.envelope_code())
        .increment(1);
    let correlation = crate::http::CorrelationId::accept_or_mint(
        request.and_then(|request| request.headers().get(&crate::http::CORRELATION_NAME)),
    );
    let mut response =
        crate::http::in_correlation_scope(correlation.clone(), || err.into_response());
    response.headers_mut().insert(
        crate::http::CORRELATION_NAME.clone(),
        correlation.header_value(),
    );
    let head_only = request.is_some_and(|request| request.method() == Method::HEAD);
    let write = async {
        write_response(io, out, response, head_only, false, false).await?;
        io.shutdown().await
    };
    // a client that does not read its refusal is not waited for long
    if let Ok(Ok(())) = tokio::time::timeout(LINGER, write).await {
        linger(io).await;
    }
}

/// After a refusal, reads and drops what the client still sends (at most
/// [`LINGER_BYTES`], for at most [`LINGER`]) before the connection is dropped: closing a
/// socket with unread bytes makes the kernel send a reset, which can destroy the answer
/// before the client reads it.
async fn linger<I: AsyncRead + Unpin>(io: &mut I) {
    let mut sink = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let drain = async {
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(read) => left = left.saturating_sub(read),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Bounds of [`linger`].
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

thread_local! {
    /// The `date` header of the current second, formatted once a second per thread.
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
}

fn push_date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = second;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&cached.1);
        out.extend_from_slice(b"\r\n");
    });
}

/// Headers the connection writes itself: the handler's are dropped.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        *name,
        header::CONNECTION | header::TRANSFER_ENCODING | header::DATE | header::UPGRADE
    ) || name.as_str() == "keep-alive"
}

/// Writes `response` (its body in full). `Ok(false)`: the connection cannot carry another
/// request (the body failed or was shorter or longer than its declared size).
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: Response,
    head_only: bool,
    http10: bool,
    keep_alive: bool,
) -> std::io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let mut status = parts.status;
    let mut keep_alive = keep_alive;
    if status.is_informational() {
        // a 1xx as the final answer would be read as interim, and the next answer on the
        // connection taken for this request's
        tracing::error!(
            status = status.as_u16(),
            "a handler answered with a 1xx status"
        );
        status = StatusCode::INTERNAL_SERVER_ERROR;
        body = Body::empty();
        keep_alive = false;
    }
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    // an unknown length: chunked for HTTP/1.1, to the end of the connection for HTTP/1.0
    let chunked = !bodiless && declared.is_none() && !http10 && !head_only;
    let handler_closes = parts
        .headers
        .get(header::CONNECTION)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
    let keep_alive =
        keep_alive && !handler_closes && (bodiless || declared.is_some() || chunked || head_only);

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let handler_length = parts.headers.get(header::CONTENT_LENGTH).cloned();
    for (name, value) in &parts.headers {
        if hop_by_hop(name) || *name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !bodiless {
        match (declared, head_only, handler_length) {
            // an answer to HEAD keeps the length the handler gave, if any; an emptied body
            // (axum empties HEAD answers) does not mean the GET's length is 0
            (_, true, Some(length)) => push_field(out, b"content-length", length.as_bytes()),
            (Some(0), true, None) => {}
            (Some(length), _, _) => push_field(out, b"content-length", itoa_u64(length).as_slice()),
            (None, false, _) if chunked => push_field(out, b"transfer-encoding", b"chunked"),
            _ => {}
        }
    }
    push_date(out);
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if bodiless || head_only {
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(keep_alive);
    }
    let mut sent: u64 = 0;
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            complete = false;
            break;
        };
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers: not sent over HTTP/1.1
        };
        if data.is_empty() {
            continue;
        }
        // never past the declared length: the excess would be read as the next answer
        if let Some(declared) = declared
            && data.len() as u64 > declared - sent
        {
            data.truncate((declared - sent) as usize);
            complete = false;
        }
        sent += data.len() as u64;
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
        } else if out.len() + data.len() <= WRITE_CHUNK {
            out.extend_from_slice(&data);
        } else {
            io.write_all(out).await?;
            out.clear();
            io.write_all(&data).await?;
        }
        if out.len() >= WRITE_CHUNK {
            io.write_all(out).await?;
            out.clear();
        }
        if !complete {
            break;
        }
    }
    if chunked && complete {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    io.write_all(out).await?;
    io.flush().await?;
    let exact = declared.is_none_or(|declared| declared == sent);
    Ok(keep_alive && complete && exact)
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Decimal digits of `n`, without allocating.
struct Digits {
    bytes: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

fn itoa_u64(mut n: u64) -> Digits {
    let mut digits = Digits {
        bytes: [0; 20],
        start: 20,
    };
    loop {
        digits.start -= 1;
        digits.bytes[digits.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return digits;
        }
    }
}

/// An I/O object that first yields bytes already read from it: hands a connection whose
/// first bytes were read here to hyper's HTTP/2 server.
pub struct Rewind<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    pub fn new(prefix: Bytes, inner: I) -> Rewind<I> {
        Rewind { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let take = self.prefix.len().min(buf.remaining());
            let piece = self.prefix.split_to(take);
            buf.put_slice(&piece);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Echoes what it got: `method path body-length body` and the `x-echo` header, and
    /// counts its calls. `/stream` answers with a body of unknown length.
    fn echo(
        calls: Arc<AtomicUsize>,
    ) -> tower::util::BoxCloneService<Request, Response, Infallible> {
        tower::util::BoxCloneService::new(tower::service_fn(move |request: Request| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let (parts, body) = request.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                match parts.uri.path() {
                    "/liar" => return Ok(Response::new(Body::new(Liar))),
                    "/interim" => {
                        let mut response = Response::new(Body::empty());
                        *response.status_mut() = StatusCode::CONTINUE;
                        return Ok(response);
                    }
                    "/emptied" => return Ok(Response::new(Body::empty())),
                    "/big" => return Ok(Response::new(Body::from(vec![b'b'; 1 << 20]))),
                    _ => {}
                }
                if parts.uri.path() == "/stream" {
                    let frames = futures::stream::iter(vec![
                        Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(
                            b"hello ",
                        ))),
                        Ok(hyper::body::Frame::data(Bytes::from_static(b"world"))),
                    ]);
                    return Ok(Response::new(Body::new(http_body_util::StreamBody::new(
                        frames,
                    ))));
                }
                let text = format!(
                    "{} {} {} {}",
                    parts.method,
                    parts.uri,
                    body.len(),
                    String::from_utf8_lossy(&body)
                );
                let mut response = Response::new(Body::from(text));
                if let Some(echo) = parts.headers.get("x-echo") {
                    response.headers_mut().insert("x-echo", echo.clone());
                }
                Ok::<_, Infallible>(response)
            }
        }))
    }

    /// A body that declares 3 bytes and yields 8.
    struct Liar;

    impl axum::body::HttpBody for Liar {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
            Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
                b"abcSMUGG",
            )))))
        }

        fn size_hint(&self) -> hyper::body::SizeHint {
            hyper::body::SizeHint::with_exact(3)
        }
    }

    struct Conn {
        client: DuplexStream,
        calls: Arc<AtomicUsize>,
        served: tokio::task::JoinHandle<Outcome>,
        stop: CancellationToken,
    }

    fn limits() -> ConnLimits {
        ConnLimits {
            max_body: 1024,
            head_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
        }
    }

    fn open(limits: ConnLimits) -> Conn {
        let (client, mut server) = tokio::io::duplex(256 * 1024);
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let service = echo(Arc::clone(&calls));
        let served = tokio::spawn({
            let stop = stop.clone();
            async move { serve_connection(&mut server, service, &limits, &stop).await }
        });
        Conn {
            client,
            calls,
            served,
            stop,
        }
    }

    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        fn code(&self) -> String {
            let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
            json["error"]["code"].as_str().unwrap().to_string()
        }
    }

    /// Reads one answer (length-delimited, chunked, or to the end for a close).
    async fn answer(client: &mut DuplexStream, pending: &mut Vec<u8>, head_only: bool) -> Answer {
        let mut chunk = [0u8; 4096];
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(length) = parsed.parse(pending).unwrap() {
                let status = parsed.code.unwrap();
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into(),
                        )
                    })
                    .collect();
                pending.drain(..length);
                let find = |name: &str| {
                    headers
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                };
                let mut body = Vec::new();
                if head_only || status == 100 {
                } else if let Some(length) = find("content-length") {
                    let length: usize = length.parse().unwrap();
                    while pending.len() < length {
                        let read = client.read(&mut chunk).await.unwrap();
                        assert!(read > 0, "closed inside a body");
                        pending.extend_from_slice(&chunk[..read]);
                    }
                    body = pending.drain(..length).collect();
                } else if find("transfer-encoding").as_deref() == Some("chunked") {
                    loop {
                        while !pending.windows(2).any(|w| w == b"\r\n") {
                            let read = client.read(&mut chunk).await.unwrap();
                            pending.extend_from_slice(&chunk[..read]);
                        }
                        let end = pending.windows(2).position(|w| w == b"\r\n").unwrap();
                        let size = usize::from_str_radix(
                            std::str::from_utf8(&pending[..end]).unwrap(),
                            16,
                        )
                        .unwrap();
                        while pending.len() < end + 2 + size + 2 {
                            let read = client.read(&mut chunk).await.unwrap();
                            pending.extend_from_slice(&chunk[..read]);
                        }
                        body.extend_from_slice(&pending[end + 2..end + 2 + size]);
                        pending.drain(..end + 2 + size + 2);
                        if size == 0 {
                            break;
                        }
                    }
                } else {
                    client.read_to_end(pending).await.unwrap();
                    body = std::mem::take(pending);
                }
                return Answer {
                    status,
                    headers,
                    body,
                };
            }
            let read = client.read(&mut chunk).await.unwrap();
            assert!(
                read > 0,
                "closed before an answer: {:?}",
                String::from_utf8_lossy(pending)
            );
            pending.extend_from_slice(&chunk[..read]);
        }
    }

    /// Sends `bytes` and reads one answer.
    async fn exchange(conn: &mut Conn, bytes: &[u8]) -> Answer {
        conn.client.write_all(bytes).await.unwrap();
        answer(&mut conn.client, &mut Vec::new(), false).await
    }

    /// The server closed its side.
    async fn closed(conn: &mut Conn) -> bool {
        let mut rest = Vec::new();
        conn.client.read_to_end(&mut rest).await.is_ok() && rest.is_empty()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let mut conn = open(limits());
        conn.client
            .write_all(
                b"GET /a HTTP/1.1\r\nHost: x\r\nx-echo: one\r\n\r\n\
                  POST /b?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                  POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: t\r\n\r\n",
            )
            .await
            .unwrap();
        let mut pending = Vec::new();
        let first = answer(&mut conn.client, &mut pending, false).await;
        assert_eq!(
            (first.status, first.body.as_slice()),
            (200, &b"GET /a 0 "[..])
        );
        assert_eq!(first.header("x-echo"), Some("one"));
        assert!(first.header("date").is_some());
        assert_eq!(first.header("connection"), None);
        let second = answer(&mut conn.client, &mut pending, false).await;
        assert_eq!(second.body, b"POST /b?q=1 5 hello");
        let third = answer(&mut conn.client, &mut pending, false).await;
        assert_eq!(third.body, b"POST /c 5 abcde");
        assert_eq!(conn.calls.load(Ordering::SeqCst), 3);
        // the connection stays open for more
        let fourth = exchange(&mut conn, b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(fourth.body, b"GET /d 0 ");
    }

    #[tokio::test]
    async fn ambiguous_or_malformed_requests_are_refused_and_close_the_connection() {
        let cases: &[(&str, &[u8], u16, &str)] = &[
            ("length and chunked", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "ambiguous_framing"),
            ("two lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400, "ambiguous_framing"),
            ("a signed length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400, "ambiguous_framing"),
            ("a length list", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", 400, "ambiguous_framing"),
            ("gzip then chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, "ambiguous_framing"),
            ("chunked twice", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "ambiguous_framing"),
            ("chunked in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "ambiguous_framing"),
            ("no host", b"GET / HTTP/1.1\r\n\r\n", 400, "malformed_request"),
            ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "malformed_request"),
            ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nx-a: 1\r\n  2\r\n\r\n", 400, "malformed_request"),
            ("space before the colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, "malformed_request"),
            ("HTTP/2.0 in a request line", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400, "malformed_request"),
            ("a chunk size in 0x", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n", 400, "malformed_request"),
            ("a chunk without its CRLF", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400, "malformed_request"),
            ("an empty chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n", 400, "malformed_request"),
            ("a body over the limit", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n", 413, "payload_too_large"),
            ("a chunked body over the limit", &[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n".as_slice(), &[b'a'; 1024], b"\r\n1\r\nb\r\n0\r\n\r\n"].concat(), 413, "payload_too_large"),
            ("too many fields", &[b"GET / HTTP/1.1\r\nHost: x\r\n".as_slice(), &b"a: b\r\n".repeat(MAX_HEADERS), b"\r\n"].concat(), 431, "headers_too_large"),
            ("a head over 64 KiB", &[b"GET / HTTP/1.1\r\nHost: x\r\nx-a: ".as_slice(), &[b'a'; MAX_HEAD], b"\r\n\r\n"].concat(), 431, "headers_too_large"),
        ];
        for (case, bytes, status, code) in cases {
            let mut conn = open(limits());
            let got = exchange(&mut conn, bytes).await;
            assert_eq!(got.status, *status, "{case}");
            assert_eq!(got.code(), *code, "{case}");
            assert_eq!(got.header("connection"), Some("close"), "{case}");
            assert!(got.header("x-correlation-id").is_some(), "{case}");
            assert!(closed(&mut conn).await, "{case}: the connection is closed");
            assert_eq!(conn.calls.load(Ordering::SeqCst), 0, "{case}: never served");
        }
    }

    #[tokio::test]
    async fn a_refusal_echoes_a_valid_correlation_id() {
        let mut conn = open(limits());
        let got = exchange(
            &mut conn,
            b"POST / HTTP/1.1\r\nHost: x\r\nx-correlation-id: abc-123\r\nContent-Length: 9999\r\n\r\n",
        )
        .await;
        assert_eq!(got.status, 413);
        assert_eq!(got.header("x-correlation-id"), Some("abc-123"));
        assert!(String::from_utf8_lossy(&got.body).contains("abc-123"));
    }

    #[tokio::test]
    async fn expect_continue_gets_an_interim_answer_before_the_body_is_read() {
        let mut conn = open(limits());
        conn.client
            .write_all(
                b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
            )
            .await
            .unwrap();
        let mut pending = Vec::new();
        let interim = answer(&mut conn.client, &mut pending, false).await;
        assert_eq!(interim.status, 100);
        assert_eq!(conn.calls.load(Ordering::SeqCst), 0);
        conn.client.write_all(b"body").await.unwrap();
        let last = answer(&mut conn.client, &mut pending, false).await;
        assert_eq!(
            (last.status, last.body.as_slice()),
            (200, &b"POST /e 4 body"[..])
        );
        // over the limit: the final answer at once, no 100
        let refused = exchange(
            &mut conn,
            b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
        )
        .await;
        assert_eq!(refused.status, 413);
    }

    #[tokio::test]
    async fn close_head_http10_and_streamed_answers_are_framed_right() {
        // connection: close is honoured and echoed
        let mut conn = open(limits());
        let got = exchange(
            &mut conn,
            b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!((got.status, got.header("connection")), (200, Some("close")));
        assert!(closed(&mut conn).await);

        // HTTP/1.0: closed after the answer unless kept alive
        let mut conn = open(limits());
        let got = exchange(&mut conn, b"GET /a HTTP/1.0\r\n\r\n").await;
        assert_eq!((got.status, got.header("connection")), (200, Some("close")));
        assert!(closed(&mut conn).await);
        let mut conn = open(limits());
        let got = exchange(
            &mut conn,
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        )
        .await;
        assert_eq!(got.header("connection"), Some("keep-alive"));
        let again = exchange(&mut conn, b"GET /b HTTP/1.0\r\n\r\n").await;
        assert_eq!(again.body, b"GET /b 0 ");

        // HEAD: the length, no body; the connection goes on
        let mut conn = open(limits());
        conn.client
            .write_all(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut pending = Vec::new();
        let got = answer(&mut conn.client, &mut pending, true).await;
        assert_eq!(got.header("content-length"), Some("10"), "HEAD /h 0 ");
        let next = exchange(&mut conn, b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(next.body, b"GET /n 0 ");

        // a body of unknown length: chunked over HTTP/1.1, to the close over HTTP/1.0
        let mut conn = open(limits());
        let got = exchange(&mut conn, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(got.header("transfer-encoding"), Some("chunked"));
        assert_eq!(got.body, b"hello world");
        let mut conn = open(limits());
        let got = exchange(&mut conn, b"GET /stream HTTP/1.0\r\n\r\n").await;
        assert_eq!(
            (got.header("connection"), got.body.as_slice()),
            (Some("close"), &b"hello world"[..])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_close_and_slow_heads_get_408() {
        let mut conn = open(limits());
        // idle past the limit: closed without an answer
        assert!(closed(&mut conn).await);
        assert!(matches!(conn.served.await.unwrap(), Outcome::Closed));

        let mut conn = open(limits());
        conn.client
            .write_all(b"GET / HTTP/1.1\r\nHo")
            .await
            .unwrap();
        let got = answer(&mut conn.client, &mut Vec::new(), false).await;
        assert_eq!((got.status, got.code().as_str()), (408, "request_timeout"));

        // a body that stops arriving
        let mut conn = open(limits());
        conn.client
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let got = answer(&mut conn.client, &mut Vec::new(), false).await;
        assert_eq!(got.status, 408);
        assert_eq!(conn.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn each_answer_moves_the_head_deadline() {
        let mut conn = open(ConnLimits {
            head_timeout: Duration::from_secs(1),
            ..limits()
        });
        // six requests 0.9 s apart: 5.4 s in all, each within 1 s of the previous answer
        for i in 0..6 {
            tokio::time::sleep(Duration::from_millis(900)).await;
            let got = exchange(
                &mut conn,
                format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )
            .await;
            assert_eq!(got.status, 200, "request {i}");
        }
        // then idle past the limit: closed
        assert!(closed(&mut conn).await);
    }

    #[tokio::test]
    async fn close_wins_over_keep_alive() {
        for head in [
            &b"GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n",
        ] {
            let mut conn = open(limits());
            let got = exchange(&mut conn, head).await;
            assert_eq!(got.header("connection"), Some("close"));
            assert!(closed(&mut conn).await);
        }
    }

    #[tokio::test]
    async fn stopping_closes_idle_connections_and_ends_busy_ones_after_their_answer() {
        let mut conn = open(limits());
        let got = exchange(&mut conn, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(got.status, 200);
        conn.stop.cancel();
        assert!(closed(&mut conn).await);

        // a request whose head is here when stopping is still answered, then closed
        let mut conn = open(limits());
        conn.stop.cancel();
        let got = exchange(&mut conn, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!((got.status, got.header("connection")), (200, Some("close")));
    }

    #[tokio::test]
    async fn the_http2_preface_is_handed_over_with_what_was_read() {
        let mut conn = open(limits());
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        conn.client.write_all(&preface[..5]).await.unwrap();
        conn.client.write_all(&preface[5..]).await.unwrap();
        match conn.served.await.unwrap() {
            Outcome::Http2(read) => assert!(preface.starts_with(&read) && read.len() >= 16),
            Outcome::Closed => panic!("not handed over"),
        }
    }

    #[tokio::test]
    async fn blank_lines_before_a_request_are_skipped_but_bounded() {
        let mut conn = open(limits());
        let got = exchange(
            &mut conn,
            b"\r\n\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi\r\n",
        )
        .await;
        assert_eq!(got.body, b"POST /a 2 hi");
        // the stray CRLF after the body is not a request either
        let next = exchange(&mut conn, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(next.body, b"GET /b 0 ");

        let mut conn = open(limits());
        let got = exchange(&mut conn, &b"\r\n".repeat(MAX_HEAD)).await;
        assert_eq!(got.status, 400);
        assert_eq!(conn.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn answers_that_cannot_be_framed_as_given_are_cut_or_replaced_and_close() {
        // a body longer than it declared: cut at the declared length, then closed, so
        // the excess is never read as the next answer
        let mut conn = open(limits());
        let got = exchange(&mut conn, b"GET /liar HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(got.body, b"abc");
        assert!(closed(&mut conn).await);

        // a 1xx as the final answer: 500, closed
        let mut conn = open(limits());
        let got = exchange(&mut conn, b"GET /interim HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!((got.status, got.header("connection")), (500, Some("close")));

        // HEAD of an answer whose body was emptied: no length claimed
        let mut conn = open(limits());
        conn.client
            .write_all(b"HEAD /emptied HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = answer(&mut conn.client, &mut Vec::new(), true).await;
        assert_eq!((got.status, got.header("content-length")), (200, None));
    }

    #[tokio::test]
    async fn chunk_extensions_are_bounded_per_body() {
        let mut request =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..10 {
            request.extend_from_slice(format!("1;{}\r\na\r\n", "e".repeat(2000)).as_bytes());
        }
        request.extend_from_slice(b"0\r\n\r\n");
        let mut conn = open(ConnLimits {
            max_body: 1 << 20,
            ..limits()
        });
        let got = exchange(&mut conn, &request).await;
        assert_eq!(
            (got.status, got.code().as_str()),
            (400, "malformed_request")
        );
        assert_eq!(conn.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_and_an_unread_answer_are_bounded_by_the_body_limit() {
        // one byte every 100 ms of a 1000-byte body: 408 at the 5 s limit, though bytes
        // keep coming
        let mut conn = open(ConnLimits {
            max_body: 4096,
            ..limits()
        });
        conn.client
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut sent = 0;
        while !conn.served.is_finished() && sent < 1000 {
            let _ = conn.client.write_all(b"a").await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(sent < 1000, "stopped before the body was complete");
        // the answer went out at the limit; the task then drained for up to its linger
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(5)
                && waited < Duration::from_secs(5) + LINGER + Duration::from_secs(1),
            "{waited:?}"
        );
        let got = answer(&mut conn.client, &mut Vec::new(), false).await;
        assert_eq!(got.status, 408);
        assert_eq!(conn.calls.load(Ordering::SeqCst), 0);

        // a 1 MiB answer to a client that never reads: dropped at the limit
        let mut conn = open(limits());
        conn.client
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), &mut conn.served).await;
        assert!(
            matches!(outcome, Ok(Ok(Outcome::Closed))),
            "the writer gave up"
        );
    }

    #[tokio::test]
    async fn stopping_does_not_wait_for_a_head_still_arriving() {
        let mut conn = open(limits());
        conn.client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        conn.stop.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(2), &mut conn.served).await;
        assert!(matches!(outcome, Ok(Ok(Outcome::Closed))));
        assert_eq!(conn.calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn chunk_sizes_are_hex_with_bounded_extensions() {
        assert_eq!(chunk_size(b"1a\r"), Some(26));
        assert_eq!(chunk_size(b"0\r"), Some(0));
        assert_eq!(chunk_size(b"A; name=value\r"), Some(10));
        assert_eq!(chunk_size(b"fffffffffffffff\r"), Some(0xfff_ffff_ffff_ffff));
        for bad in [
            &b"\r"[..],
            b"1a",
            b"0x1a\r",
            b"-1\r",
            b"1 2\r",
            b"1ffffffffffffffff\r",
            b"1;a\rb\r",
            b"1;\x00\r",
            b"g\r",
            b"3\x0c;a\r",
        ] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// However the bytes of a pipelined stream are split into writes, the same answers
        /// come back.
        #[test]
        fn answers_do_not_depend_on_how_the_bytes_arrive(cuts in proptest::collection::vec(1usize..40, 1..30)) {
            let stream: &[u8] = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
                GET /d HTTP/1.1\r\nHost: x\r\n\r\n";
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let bodies = runtime.block_on(async {
                let mut conn = open(limits());
                let mut at = 0;
                for cut in cuts.iter().cycle() {
                    if at >= stream.len() {
                        break;
                    }
                    let end = (at + cut).min(stream.len());
                    conn.client.write_all(&stream[at..end]).await.unwrap();
                    at = end;
                    tokio::task::yield_now().await;
                }
                let mut pending = Vec::new();
                let mut bodies = Vec::new();
                for _ in 0..3 {
                    bodies.push(answer(&mut conn.client, &mut pending, false).await.body);
                }
                bodies
            });
            proptest::prop_assert_eq!(
                bodies,
                vec![b"POST /b 5 hello".to_vec(), b"POST /c 5 abcde".to_vec(), b"GET /d 0 ".to_vec()]
            );
        }
    }
}
