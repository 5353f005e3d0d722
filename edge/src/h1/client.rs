//! The client side: writing a request to an upstream and reading its answer, for the data
//! plane's pooled upstream calls and the container health probe. The caller owns the
//! connection and its buffers (pooling is the data plane's business); the framing rules
//! are the server's ([`common`](super::common), [`body`](super::body)), read from the
//! other side.
//!
//! What it speaks (RFC 9112):
//! - requests: origin-form target, `host`, the caller's headers, `content-length` for
//!   every body and for the methods that carry one; the body in the same write when small;
//! - answers: a status from 100 to 599 (RFC 9110 §15: a 3-digit code of those classes),
//!   up to 8 interim (1xx) answers skipped, 101 refused (§9.8: never asked for);
//!   the body framed by a final `chunked` coding, by `content-length`, or by the close;
//!   none for `HEAD`, 1xx, 204 and 304 (§6.3 items 1–2), and then the connection is not
//!   reused when such an answer declared a length or a coding (its body may still come
//!   and be read as the next answer); differing `content-length`s, a
//!   length beside a transfer coding (§6.3 item 3: a smuggling attempt, refused rather than
//!   resolved), a length that is not digits, a head over [`MAX_HEAD`] or a body over the
//!   caller's limit are refused. Repeated identical lengths are one length (§6.3 item 5).

use axum::body::Bytes;
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::body::{BodyError, Source};
use super::common::{
    ConnectionTokens, FieldSpans, Framing, HeadScan, MAX_HEAD, MAX_HEADERS, Read, content_length,
    field_name, final_coding_is_chunked, read_more,
};

/// Interim (1xx) answers read before the final one.
const MAX_INTERIM_ANSWERS: usize = 8;
/// Bodies up to this size are written together with the request head.
pub const COALESCE_BODY: usize = 16 * 1024;

/// One request: what is written after the request line and `host`.
pub struct Call<'a> {
    pub method: &'a Method,
    /// Origin-form target (path and query).
    pub path: &'a PathAndQuery,
    /// Headers besides `host` and `content-length`...
    pub headers: &'a [(&'a HeaderName, &'a HeaderValue)],
    /// ... and more after them (two lists, so that a caller adding its own fields to
    /// those it passes on need not build a third).
    pub more: &'a [(HeaderName, HeaderValue)],
    pub body: &'a Bytes,
    /// A body sent after the head, as it comes ([`send_body`]), instead of `body`.
    pub streamed: Option<Streamed>,
    /// The call may be sent twice (RFC 9110 §9.2.2): a kept-alive connection found closed
    /// after the request was written then gets it again on a new connection.
    pub idempotent: bool,
}

/// How a streamed request body is framed: its length when the client declared one
/// (lengths stay lengths), else the chunked coding (chunked stays chunked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Streamed {
    Length(u64),
    Chunked,
}

/// Why a streamed body did not go out whole.
#[derive(Debug)]
pub enum BodyFailed {
    /// The body's source failed (the client's connection: cut short, too large, too slow).
    Source(Box<dyn std::error::Error + Send + Sync>),
    /// The body was not as long as its declared length.
    Length,
    /// Writing to the upstream failed.
    Write(std::io::Error),
}

/// Writes the pieces of `body` on `io` as they come, chunk-coded for
/// [`Streamed::Chunked`] (the last chunk and an empty trailer section after them), then
/// flushes.
pub async fn send_body<I, B>(
    io: &mut I,
    body: &mut B,
    framing: Streamed,
    out: &mut Vec<u8>,
) -> Result<(), BodyFailed>
where
    I: AsyncWrite + Unpin,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let mut sent: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| BodyFailed::Source(err.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            Streamed::Length(length) if sent > length => return Err(BodyFailed::Length),
            Streamed::Length(_) => io.write_all(&data).await.map_err(BodyFailed::Write)?,
            Streamed::Chunked => {
                // the size line, the piece and its CRLF in one (vectored) write
                out.clear();
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                let mut chunk = bytes::Buf::chain(bytes::Buf::chain(&out[..], data), &b"\r\n"[..]);
                io.write_all_buf(&mut chunk)
                    .await
                    .map_err(BodyFailed::Write)?;
            }
        }
    }
    match framing {
        Streamed::Length(length) if sent != length => return Err(BodyFailed::Length),
        Streamed::Length(_) => {}
        Streamed::Chunked => io
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(BodyFailed::Write)?,
    }
    io.flush().await.map_err(BodyFailed::Write)
}

/// An answer: its status, its header fields but the framing ones (`content-length`,
/// `transfer-encoding`: the body is read whole here), and its body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The answer's `content-type`.
    pub fn content_type(&self) -> Option<&HeaderValue> {
        self.headers.get(axum::http::header::CONTENT_TYPE)
    }
}

/// Why a call got no (whole) answer.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, TLS, DNS, connect timeout): the request never
    /// left, so it may go elsewhere.
    Unreachable(String),
    /// Sent, or partly sent, but no answer came (reset, closed).
    Failed(String),
    /// What came back is not an HTTP/1.1 answer we can frame: not HTTP, a status outside
    /// 100–599, ambiguous framing, an unasked protocol switch, a head too large.
    Invalid(String),
    /// The answer began but was cut short or could not be read to its end.
    CutShort(String),
    /// The connection was closed or reset before any byte of an answer came.
    Closed(String),
    /// The request's streamed body failed on the client's side (cut short, too slow, not
    /// as long as declared): the call was given up.
    BodyFailed(String),
    /// The request's streamed body went past its limit: the call was given up.
    BodyTooLarge,
    /// The call's deadline passed before its answer's head (and small body) came.
    TimedOut,
}

/// The request head into `out` (cleared first), and the body after it when it is at most
/// [`COALESCE_BODY`] bytes (else the caller writes it after the head).
pub fn encode(out: &mut Vec<u8>, host: &HeaderValue, call: &Call<'_>) {
    out.clear();
    out.extend_from_slice(call.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(call.path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    let more = call.more.iter().map(|(name, value)| (name, value));
    for (name, value) in call.headers.iter().copied().chain(more) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // a length for every body, and for the methods that carry one even when empty
    let expects_body = matches!(*call.method, Method::POST | Method::PUT | Method::PATCH);
    if let Some(streamed) = call.streamed {
        match streamed {
            Streamed::Length(length) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Streamed::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        out.extend_from_slice(b"\r\n");
        return;
    }
    if !call.body.is_empty() || expects_body {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(call.body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if call.body.len() <= COALESCE_BODY {
        out.extend_from_slice(call.body);
    }
}

/// Writes `call` (encoded into `out`) on `io`.
pub async fn send<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut Vec<u8>,
    host: &HeaderValue,
    call: &Call<'_>,
) -> std::io::Result<()> {
    encode(out, host, call);
    io.write_all(out).await?;
    if call.streamed.is_none() && call.body.len() > COALESCE_BODY {
        io.write_all(call.body).await?;
    }
    io.flush().await
}

/// What an answer head says: its status, its fields but the framing ones, how its body
/// is framed, and whether the connection may carry another call after it.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    pub keep_alive: bool,
}

/// Reads one answer head (skipping 1xx interim ones) from `io`, with `buf` holding what
/// was read from it and not used yet; the head is taken out of `buf`, the body's first
/// bytes stay there. A declared length over `max_body` is refused.
pub async fn read_head<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    head_only: bool,
    max_body: u64,
) -> Result<Head, SendError> {
    let mut got_any = false;
    let mut interim = 0;
    let mut scan = HeadScan::default();
    loop {
        let head = if scan.worth_parsing(buf) {
            parse_head(buf, head_only, max_body)?
        } else {
            None
        };
        let Some(head) = head else {
            if buf.len() > MAX_HEAD {
                return Err(SendError::Invalid("the answer's head is too large".into()));
            }
            let nothing_yet = !got_any && buf.is_empty();
            if let Read::Closed = read_more(io, buf, None, None).await {
                return Err(if nothing_yet {
                    SendError::Closed("the connection closed before an answer".into())
                } else {
                    SendError::CutShort("the connection closed inside the answer's head".into())
                });
            }
            continue;
        };
        got_any = true;
        scan.reset();
        if head.status.is_informational() {
            interim += 1;
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(SendError::Invalid("unasked protocol switch".into()));
            }
            if interim > MAX_INTERIM_ANSWERS {
                return Err(SendError::Invalid("too many interim answers".into()));
            }
            continue;
        }
        return Ok(head);
    }
}

/// Reads one whole answer (skipping 1xx interim ones) from `io`, with `buf` holding what
/// was read from it and not used yet (the bytes after the answer stay there): the answer,
/// and whether the connection may carry another call. Bodies over `max_body` are refused.
pub async fn read_answer<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    head_only: bool,
    max_body: usize,
) -> Result<(Answer, bool), SendError> {
    let head = read_head(io, buf, head_only, max_body as u64).await?;
    let body = read_body(io, buf, head.framing, max_body).await?;
    Ok((
        Answer {
            status: head.status,
            headers: head.headers,
            body,
        },
        head.keep_alive,
    ))
}

/// The whole body of an answer framed by `framing`, at most `max_body` bytes.
pub async fn read_body<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    framing: Framing,
    max_body: usize,
) -> Result<Bytes, SendError> {
    let mut source = Source {
        io,
        buf,
        timer: None,
    };
    let cut =
        |err: BodyError| SendError::CutShort(format!("the answer's body: {}", err.describe()));
    match framing {
        Framing::Empty => Ok(Bytes::new()),
        Framing::Length(length) => source.read_length(length as usize).await.map_err(cut),
        Framing::Chunked => source.read_chunked(max_body).await.map_err(cut),
        Framing::UntilClose => source.read_to_close(max_body).await.map_err(cut),
    }
}

/// Parses the answer head at the start of `buf` and takes it out (`None` while it is
/// incomplete). The fields' names and values are slices of the head taken out, not copies.
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
    max_body: u64,
) -> Result<Option<Head>, SendError> {
    // left uninitialised: writing 128 empty fields cost more than parsing a typical head
    let mut fields = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let mut spans = FieldSpans::new();
    let (read, length) = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(length)) => (
            interpret(&response, buf, &mut spans, head_only, max_body)?,
            length,
        ),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(SendError::Invalid(format!("not an HTTP answer: {err}"))),
    };
    let head = buf.split_to(length).freeze();
    let bad = |what: &str| SendError::Invalid(format!("invalid answer: {what}"));
    // room for the few fields a proxy adds to an answer it relays (`via`, the correlation
    // and trace ids, `x-content-type-options`) without growing the map again
    let mut headers = HeaderMap::with_capacity(spans.len() + 4);
    for (name, value) in spans.fields(&head) {
        // httparse checked the name is a token and the value has no control character
        let name = field_name(name).map_err(|_| bad("a field name"))?;
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| bad("a field value"))?;
        headers.append(name, value);
    }
    Ok(Some(Head { headers, ..read }))
}

/// What an answer head says: status, content type, body framing (RFC 9112 §6.3) and
/// whether the connection stays open after it; the fields to keep (all but the framing
/// ones) noted in `spans`, as slices of `buf`.
fn interpret(
    response: &httparse::Response<'_, '_>,
    buf: &[u8],
    spans: &mut FieldSpans,
    head_only: bool,
    max_body: u64,
) -> Result<Head, SendError> {
    let bad = |what: &str| SendError::Invalid(format!("invalid answer: {what}"));
    let status = response
        .code
        .filter(|code| (100..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| bad("status"))?;
    let http10 = response.version == Some(0);
    let mut connection = ConnectionTokens::default();
    let mut declared: Option<u64> = None;
    let mut chunked = None;
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = content_length(header.value).ok_or_else(|| bad("content-length"))?;
            if declared.is_some_and(|known| known != value) {
                return Err(bad("two content-lengths"));
            }
            declared = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // the last field's final coding decides
            chunked = Some(final_coding_is_chunked(header.value));
        } else {
            if name.eq_ignore_ascii_case("connection") {
                connection.read(header.value);
            }
            spans.push(buf, name.as_bytes(), header.value);
        }
    }
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (no_body, chunked, declared) {
        (true, _, _) => Framing::Empty,
        (false, Some(true), None) => Framing::Chunked,
        (false, Some(_), Some(_)) => return Err(bad("content-length with transfer-encoding")),
        (false, Some(false), None) => Framing::UntilClose,
        (false, None, Some(length)) if length > max_body => {
            return Err(SendError::CutShort("the answer's body is too large".into()));
        }
        (false, None, Some(0)) => Framing::Empty,
        (false, None, Some(length)) => Framing::Length(length),
        (false, None, None) => Framing::UntilClose,
    };
    // an HTTP/1.0 answer with a transfer coding closes the connection (RFC 9112 §6.1); a
    // bodiless answer that declared a length or a coding may be followed by that body,
    // which must never be taken for the next call's answer
    let declared_body = chunked.is_some() || declared.is_some_and(|length| length > 0);
    // and a body framed by the close ends the connection with it
    let keep_alive = connection.persistent(http10)
        && !(http10 && chunked.is_some())
        && !(no_body && declared_body)
        && framing != Framing::UntilClose;
    Ok(Head {
        status,
        headers: HeaderMap::new(),
        framing,
        keep_alive,
    })
}

#[cfg(test)]
mod tests;
