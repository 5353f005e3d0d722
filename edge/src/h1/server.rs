//! The server side of both planes' HTTP/1.1 listeners: one task per connection reads a
//! request head with httparse, reads the body (bounded: whole, or streamed to the service
//! as it arrives when it is larger than [`ConnLimits::stream_above`] or chunked), hands
//! the request to the service and writes its answer as its body comes, then reads the
//! next request from the same buffer.
//!
//! Why our own and not hyper's: hyper's server connection (with axum's h1/h2 detection,
//! its body channel, dispatcher and encoder) was the largest item left on the request
//! path, about 14k instructions of a proxied query (docs/benchmarks.md, sixth
//! comparison). This loop does the same protocol work in the connection's own task,
//! with one buffer per connection and one write per answer. HTTP/2 (ALPN `h2` on TLS,
//! or the prior-knowledge preface on plain TCP) still goes to hyper ([`Outcome::Http2`]).
//!
//! What it accepts and refuses (RFC 9112; the rules shared with the client are in
//! [`common`](super::common) and [`body`](super::body)):
//! - a head of at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields, else 431
//!   `headers_too_large`; anything httparse will not parse (obs-fold, spaces before the
//!   colon, bare CR, a version other than 1.0 or 1.1), else 400 `malformed_request`;
//! - exactly one `Host` in an HTTP/1.1 request (§3.2), else 400 `malformed_request`, and
//!   that one a host and optional port, else 400 `invalid_host`;
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
//! rest of what the client sent is never read as a request. A body read whole is read
//! before the service runs, so a refused one never reaches it. A streamed body reaches
//! the service piece by piece (at most two pieces queued: back-pressure); if it then
//! fails (cut short, too slow, too large, broken framing) the service's future is
//! dropped (cancelling what it was doing, e.g. an upstream call) and the refusal is the
//! answer. A service that answers before its streamed body was read whole gets its
//! answer written, and the connection is closed after it (the rest of the body is never
//! read as a request). With streaming on, the connection is also read while the service
//! works: a client that closes it cancels its request.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use gateway_core::{ErrorCode, Reason};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::body::{BodyError, Decoder, Source};
use super::common::{
    ConnectionTokens, FieldSpans, Framing, HeadScan, KEEP_BUFFER, MAX_HEAD, MAX_HEADERS, Read,
    Timer, content_length, deadline, field_name, read_more,
};
use super::write::write_response;
use crate::error::ApiError;

#[cfg(test)]
mod tests;

/// Bounds of a listener's connections.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// The listener's name in metrics (`public`, `grpc`, `ops`, `api`).
    pub listener: &'static str,
    /// Most connections open at once; at the cap the listener stops accepting until one
    /// closes ([`crate::listen`]). With at most [`MAX_HEAD`] plus `max_body` plus an
    /// answer's write buffer held per HTTP/1.1 connection, this bounds the listener's memory.
    pub max_connections: usize,
    /// Largest request body read (413 past it).
    pub max_body: usize,
    /// From the connection's start or the previous answer to the next complete head:
    /// an idle connection is closed after it, a head still arriving gets 408.
    pub head_timeout: Duration,
    /// From a complete head to the end of its body (408 past it); for a streamed body,
    /// the longest wait for its next piece; and the longest wait for each piece of an
    /// answer to be written.
    pub body_timeout: Duration,
    /// `Some(n)`: request bodies over `n` bytes (and chunked ones) are streamed to the
    /// service as they arrive, with back-pressure, instead of being read whole first; and
    /// while the service works, the connection is watched: a client that leaves cancels
    /// the request (the service's future is dropped). `None`: bodies are read whole.
    pub stream_above: Option<usize>,
}

impl ConnLimits {
    /// The defaults with `max_body`: 60 s for the next head, 60 s for a body,
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub fn with_max_body(max_body: usize) -> ConnLimits {
        ConnLimits {
            listener: "http",
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_body,
            head_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            stream_above: None,
        }
    }
}

/// Connections a listener holds at once unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

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
        if let Framing::Length(length) = framing
            && length > limits.max_body as u64
        {
            refuse(
                &mut io,
                &mut out,
                Some(&request),
                too_large(limits.max_body),
            )
            .await;
            return Outcome::Closed;
        }
        let streamed = match (framing, limits.stream_above) {
            (Framing::Empty | Framing::UntilClose, _) | (_, None) => false,
            (Framing::Length(length), Some(above)) => length > above as u64,
            (Framing::Chunked, Some(_)) => true,
        };
        if !matches!(framing, Framing::Empty | Framing::UntilClose)
            && expect_continue
            && buf.is_empty()
            && request.version() == Version::HTTP_11
        {
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
        let body = match framing {
            Framing::Empty | Framing::UntilClose => Bytes::new(),
            _ if streamed => Bytes::new(),
            framing => {
                timer.set(deadline(limits.body_timeout));
                let mut source = Source {
                    io: &mut io,
                    buf: &mut buf,
                    timer: Some(&mut timer),
                };
                let read = match framing {
                    Framing::Length(length) => source.read_length(length as usize).await,
                    _ => source.read_chunked(limits.max_body).await,
                };
                match read {
                    Ok(body) => body,
                    Err(BodyError::Closed) => return Outcome::Closed,
                    Err(err) => {
                        refuse(&mut io, &mut out, Some(&request), body_refusal(err, limits)).await;
                        return Outcome::Closed;
                    }
                }
            }
        };
        let head_only = request.method() == Method::HEAD;
        let http10 = request.version() == Version::HTTP_10;
        let large_body = streamed || body.len() > KEEP_BUFFER;
        let mut pieces = None;
        let request = request.map(|()| {
            if streamed {
                let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_QUEUE);
                pieces = Some(sender);
                let length = match framing {
                    Framing::Length(length) => Some(length),
                    _ => None,
                };
                Body::new(Incoming { receiver, length })
            } else if body.is_empty() {
                Body::empty()
            } else {
                Body::from(body)
            }
        });
        let parts_for_refusal = pieces.as_ref().map(|_| {
            let mut head = Request::new(());
            *head.method_mut() = request.method().clone();
            if let Some(id) = request.headers().get(&crate::http::CORRELATION_NAME) {
                head.headers_mut()
                    .insert(crate::http::CORRELATION_NAME.clone(), id.clone());
            }
            head
        });
        let ready = std::future::poll_fn(|cx| service.poll_ready(cx)).await;
        let call = match ready {
            Ok(()) => service.call(request),
            Err(never) => match never {},
        };
        // the service runs while the body streams in and the client is watched; the
        // request (and an upstream call in flight) is dropped before a refusal is written
        let served = serve_request(&mut io, &mut buf, &mut timer, call, pieces, framing, limits);
        let (response, body_unread) = match served.await {
            Served::Answer(response, body_unread) => (response, body_unread),
            Served::Gone => return Outcome::Closed,
            Served::Refused(err) => {
                refuse(&mut io, &mut out, parts_for_refusal.as_ref(), err).await;
                return Outcome::Closed;
            }
        };
        if body_unread {
            // what is left of the body is never read as a request
            keep_alive = false;
        }
        if stop.is_cancelled() {
            keep_alive = false;
        }
        // a small answer is bounded as a whole, a larger (or streamed) one step by step;
        // `Some(reusable)` once written
        let small = super::write::small(&response);
        let write = write_response(
            &mut io,
            &mut out,
            response,
            head_only,
            http10,
            keep_alive,
            (!small).then_some(limits.body_timeout),
        );
        let written = if small {
            tokio::time::timeout(limits.body_timeout, write)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            write.await.ok()
        };
        if written != Some(true) {
            // bounded: over TLS a shutdown writes, and the client may not be reading
            let _ = tokio::time::timeout(LINGER, io.shutdown()).await;
            if written.is_some() && body_unread {
                // the rest of the request body is not read: read and dropped for a while,
                // so that closing with it unread does not turn the answer into a reset
                linger(&mut io).await;
            }
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

/// Pieces of a streamed request body held between the connection and the service: with
/// at most [`super::body::PIECE`] bytes each, this bounds a streamed body's memory.
const STREAM_QUEUE: usize = 2;

/// A request body streamed to the service as it arrives ([`ConnLimits::stream_above`]).
struct Incoming {
    receiver: tokio::sync::mpsc::Receiver<Result<Bytes, BodyError>>,
    /// What is left of the declared length, if one was declared.
    length: Option<u64>,
}

impl http_body::Body for Incoming {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let polled = self.receiver.poll_recv(cx);
        if let Poll::Ready(Some(Ok(piece))) = &polled
            && let Some(left) = self.length.as_mut()
        {
            *left = left.saturating_sub(piece.len() as u64);
        }
        polled.map(|item| item.map(|piece| piece.map(http_body::Frame::data)))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.length {
            Some(length) => http_body::SizeHint::with_exact(length),
            None => http_body::SizeHint::default(),
        }
    }
}

/// How streaming a request body to its service ended.
enum Pumped {
    /// Read to its end and handed over.
    Whole,
    /// The service dropped the body before its end.
    Abandoned,
    /// The body could not be read (closed, too slow, too large, broken framing).
    Failed(BodyError),
}

/// Reads the body framed by `framing` piece by piece and hands the pieces to the service
/// through `sender`, waiting while it holds [`STREAM_QUEUE`] of them (back-pressure). Each
/// piece must come within `body_timeout` of the previous one.
async fn pump<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    timer: &mut Timer,
    framing: Framing,
    limits: &ConnLimits,
    sender: tokio::sync::mpsc::Sender<Result<Bytes, BodyError>>,
) -> Pumped {
    let mut decoder = Decoder::new(framing, limits.max_body as u64);
    loop {
        let piece = {
            let mut source = Source {
                io: &mut *io,
                buf: &mut *buf,
                timer: Some(&mut *timer),
            };
            decoder.next(&mut source).await
        };
        match piece {
            Ok(Some(piece)) => {
                if sender.send(Ok(piece)).await.is_err() {
                    return Pumped::Abandoned;
                }
                timer.set(deadline(limits.body_timeout));
            }
            Ok(None) => return Pumped::Whole,
            Err(err) => {
                // the service sees the body fail, not end
                let _ = sender.try_send(Err(err));
                return Pumped::Failed(err);
            }
        }
    }
}

/// How serving one request ended.
enum Served {
    /// The service's answer, and whether the request body was left unread.
    Answer(Response, bool),
    /// The client left (its request was dropped).
    Gone,
    /// The streamed body could not be read: this refusal is the answer.
    Refused(ApiError),
}

/// Runs the service's `call` while a streamed request body is pumped to it (`pieces`)
/// and, with streaming on, while the connection is watched for the client leaving.
async fn serve_request<I, F>(
    io: &mut I,
    buf: &mut BytesMut,
    timer: &mut Timer,
    call: F,
    pieces: Option<tokio::sync::mpsc::Sender<Result<Bytes, BodyError>>>,
    framing: Framing,
    limits: &ConnLimits,
) -> Served
where
    I: AsyncRead + Unpin,
    F: Future<Output = Result<Response, Infallible>>,
{
    let mut call = std::pin::pin!(call);
    let mut body_unread = false;
    if let Some(sender) = pieces {
        timer.set(deadline(limits.body_timeout));
        let pumped = {
            let pump = pump(&mut *io, &mut *buf, &mut *timer, framing, limits, sender);
            let mut pump = std::pin::pin!(pump);
            tokio::select! {
                biased;
                response = call.as_mut() => {
                    // answered before its body was read whole
                    let Ok(response) = response;
                    return Served::Answer(response, true);
                }
                pumped = pump.as_mut() => pumped,
            }
        };
        match pumped {
            Pumped::Whole => {}
            Pumped::Abandoned => body_unread = true,
            Pumped::Failed(BodyError::Closed) => return Served::Gone,
            Pumped::Failed(err) => return Served::Refused(body_refusal(err, limits)),
        }
    }
    let response = if limits.stream_above.is_some() {
        tokio::select! {
            biased;
            response = call.as_mut() => response,
            () = watch(io, buf) => {
                // the client left: its request is dropped (an upstream call in flight is
                // cancelled with it)
                metrics::counter!("gateway_client_gone_total", "listener" => limits.listener)
                    .increment(1);
                return Served::Gone;
            }
        }
    } else {
        call.await
    };
    let Ok(response) = response;
    Served::Answer(response, body_unread)
}

/// Reads what the client sends while its request is served (pipelined requests stay in
/// `buf`, at most a head's worth), and returns when the client closes the connection.
async fn watch<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) {
    loop {
        if buf.len() >= MAX_HEAD {
            return std::future::pending().await;
        }
        if !matches!(read_more(io, buf, None, None).await, Read::Data) {
            return;
        }
    }
}

/// The refusal of a body that could not be read.
fn body_refusal(err: BodyError, limits: &ConnLimits) -> ApiError {
    match err {
        BodyError::TooLarge => too_large(limits.max_body),
        BodyError::TimedOut => timed_out(),
        other => malformed(other.describe()),
    }
}

/// A request head, its body's framing and what it asks of the connection.
pub struct Parsed {
    pub request: Request<()>,
    pub framing: Framing,
    pub expect_continue: bool,
    pub keep_alive: bool,
}

/// Why a request head was not taken.
pub enum HeadError {
    /// The HTTP/2 connection preface.
    Http2,
    /// Refused with this answer.
    Refused(ApiError),
}

/// A `host` value as RFC 9112 §3.2 and RFC 9110 §7.2 define it: `uri-host [ ":" port ]`,
/// without user information; an empty value is refused too (every target the gateway
/// serves has an authority).
fn valid_host(value: &[u8]) -> bool {
    plain_host(value) || parsed_host(value)
}

/// The usual `host`: a name or IPv4 address of letters, digits, dots and hyphens, and an
/// optional port of up to 5 digits within 16 bits; told in one pass, without the URI
/// parser (everything it takes, [`parsed_host`] takes too).
fn plain_host(value: &[u8]) -> bool {
    let (host, port) = match value.iter().position(|b| *b == b':') {
        Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
        None => (value, None),
    };
    !host.is_empty()
        && host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && port.is_none_or(|port| {
            (1..=5).contains(&port.len())
                && port.iter().all(u8::is_ascii_digit)
                && port
                    .iter()
                    .fold(0u32, |n, digit| n * 10 + u32::from(digit - b'0'))
                    <= u32::from(u16::MAX)
        })
}

/// Any `host` the URI parser reads as an authority without user information, with a
/// non-empty host and a port that fits in 16 bits (IPv6 literals among them).
fn parsed_host(value: &[u8]) -> bool {
    !value.is_empty()
        && !value.contains(&b'@')
        && axum::http::uri::Authority::try_from(value).is_ok_and(|authority| {
            // whatever follows the host is `:port`, and the port fits in 16 bits
            let has_port = authority.as_str().len() > authority.host().len();
            !authority.host().is_empty() && (!has_port || authority.port_u16().is_some())
        })
}

fn malformed(message: &str) -> ApiError {
    ApiError::bad_request(message.to_string()).with_reason(Reason::MalformedRequest)
}

fn ambiguous() -> ApiError {
    ApiError::bad_request("the request's length is ambiguous").with_reason(Reason::AmbiguousFraming)
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
    let mut scan = HeadScan::default();
    let mut skipped = 0;
    loop {
        // blank lines before a request line are skipped, a head's worth at most
        let blank = blank_prefix(buf);
        if blank > 0 {
            skipped += blank;
            if skipped > MAX_HEAD {
                return Err(HeadError::Refused(malformed("too many blank lines")));
            }
            bytes::Buf::advance(buf, blank);
            scan.reset();
        }
        {
            let preface = &H2_PREFACE[..buf.len().min(H2_PREFACE.len())];
            if first && buf.starts_with(preface) {
                if preface.len() == H2_PREFACE.len() {
                    return Err(HeadError::Http2);
                }
            } else if scan.worth_parsing(buf)
                && let Some(parsed) = parse_head(buf)?
            {
                return Ok(Some(parsed));
            }
            if buf.len() > MAX_HEAD {
                return Err(HeadError::Refused(head_too_large()));
            }
        }
        // shutdown closes the connection unless a head is complete: one arriving slowly
        // would hold the drain to its deadline
        match read_more(io, buf, Some(timer), Some(stop.as_mut())).await {
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

/// Parses the head at the start of `buf`; `Ok(None)` while it is incomplete. On success
/// the head is taken out of `buf` (its bytes shared by the request's header values).
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Parsed>, HeadError> {
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
    let mut spans = FieldSpans::new();
    for field in parsed.headers.iter() {
        spans.push(buf, field.name.as_bytes(), field.value);
    }
    let head = buf.split_to(length).freeze();

    let uri = Uri::from_maybe_shared(head.slice(target.0..target.1))
        .map_err(|_| refused("the request target is not a URI"))?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut framing = Framing::Empty;
    let (mut lengths, mut codings, mut hosts) = (0, 0, 0);
    let mut chunked = false;
    let mut expect_continue = false;
    let mut connection = ConnectionTokens::default();
    for (name, value) in spans.fields(&head) {
        let name = field_name(name).map_err(|_| refused("a header name is not a token"))?;
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| refused("a header value holds a control character"))?;
        match name {
            header::CONTENT_LENGTH => {
                // §6.3 item 5: a list or an invalid value is unrecoverable for a request
                lengths += 1;
                let length = content_length(value.as_bytes())
                    .ok_or_else(|| HeadError::Refused(ambiguous()))?;
                framing = Framing::Length(length);
            }
            header::TRANSFER_ENCODING => {
                // §6.3 item 4: a request whose final coding is not chunked cannot be framed;
                // stricter than that, only the lone coding `chunked` is taken
                codings += 1;
                chunked = value
                    .as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"chunked");
            }
            header::HOST => {
                hosts += 1;
                if !valid_host(value.as_bytes()) {
                    return Err(HeadError::Refused(
                        ApiError::bad_request("the host header is not a host and port")
                            .with_reason(Reason::InvalidHost),
                    ));
                }
            }
            header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            header::CONNECTION => connection.read(value.as_bytes()),
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
    let keep_alive = connection.persistent(version == Version::HTTP_10);
    Ok(Some(Parsed {
        request,
        framing,
        expect_continue,
        keep_alive,
    }))
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
        write_response(io, out, response, head_only, false, false, Some(LINGER)).await?;
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
