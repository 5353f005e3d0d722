//! HTTP/1.1 calls to upstream endpoints over kept-alive connections.
//!
//! The hot path of the gateway ends here, so this is a small HTTP/1.1 client of our own
//! rather than hyper's. hyper's legacy pooled client cost about 11k instructions per
//! request (callgrind), and its `http1` connection API still about 14k: a task per
//! connection, a channel and a oneshot between it and the caller, a header map for every
//! answer. This client writes the request from the caller's own future and reads the
//! answer there too, with `httparse` (the parser hyper uses). It keeps only what the
//! gateway relays: the status, the content type and the body.
//!
//! What it speaks (RFC 9112):
//! - requests: origin-form target, `host`, `accept-encoding: identity` (only the content
//!   type is relayed), the caller's headers, `content-length`; one write when the body is
//!   small;
//! - answers: up to 8 interim (1xx) answers skipped, 101 refused; the body framed by
//!   `transfer-encoding: chunked` (extensions and trailers skipped), by `content-length`,
//!   or by the connection's close; none for `HEAD`, 204 and 304; two different
//!   `content-length`s, a length next to a transfer coding, a length that is not digits, a
//!   chunk size without a digit, a head over 64 KiB or a body over [`MAX_ANSWER_BODY`] are
//!   refused.
//!
//! Each [`Endpoint`](crate::upstream::Endpoint) keeps its idle connections: a short stack
//! behind a lock held for a push or a pop, most recently used first (the warmest, and the
//! cold ones age out at the bottom). A connection goes back only after its whole answer was
//! read, and not when the answer said `connection: close`, was framed by the close, or
//! left bytes after it. One taken from the stack is checked first: closed by the upstream
//! meanwhile (EOF already seen by the reactor) or sending unasked bytes, it is dropped and
//! the next one tried. Closed at the very moment the request went out, the request is
//! sent again on a new connection when that is safe (see [`Conns::call`]). Connections
//! idle past `idle_timeout`, or closed by the upstream, are dropped by a sweep.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use bytes::{Buf, BytesMut};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// TCP (and TLS for `https://` endpoints) connections to upstreams.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The connector of forwarded calls: TCP with `TCP_NODELAY` and a connect timeout, TLS
/// (HTTP/1.1 by ALPN) to `https://` endpoints with `tls`.
pub fn connector(tls: &crate::client_tls::ClientTls) -> Result<Connector, String> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    http.set_nodelay(true);
    http.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.rustls()?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// Largest answer head (status line and headers) read from an upstream.
pub const MAX_ANSWER_HEAD: usize = 64 * 1024;
/// Largest answer body relayed; past it the call fails (502) rather than buffer without
/// bound.
pub const MAX_ANSWER_BODY: usize = 32 * 1024 * 1024;
/// Headers an answer may have.
const MAX_ANSWER_HEADERS: usize = 100;
/// Interim (1xx) answers read before the final one.
const MAX_INTERIM_ANSWERS: usize = 8;
/// Read buffers past this size are not kept with an idle connection.
const KEEP_BUFFER: usize = 64 * 1024;
/// Bodies up to this size are written together with the request head.
const COALESCE_BODY: usize = 16 * 1024;

/// How many idle connections an endpoint keeps, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct PoolPolicy {
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            max_idle: 64,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// One call: what [`Conns::call`] writes after the request line and `host`.
pub struct Call<'a> {
    pub method: &'a Method,
    /// Origin-form target (path and query).
    pub path: &'a PathAndQuery,
    /// Headers besides `host` and `content-length`.
    pub headers: &'a [(&'a HeaderName, &'a HeaderValue)],
    pub body: &'a Bytes,
    /// The call may be sent twice (RFC 9110 §9.2.2): a kept-alive connection found closed
    /// after the request was written then gets it again on a new connection.
    pub idempotent: bool,
}

/// What the gateway relays of an answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// Why a call got no (whole) answer.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, TLS, DNS, connect timeout): the request never
    /// left, so it may go elsewhere.
    Unreachable(String),
    /// Sent, or partly sent, but no answer came (reset, closed, not HTTP).
    Failed(String),
    /// The answer began but was cut short or could not be read to its end.
    CutShort(String),
    /// The connection was closed or reset before any byte of an answer came.
    Closed(String),
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>>),
}

impl Stream {
    async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match self {
            Stream::Plain(stream) => stream.read_buf(buf).await,
            Stream::Tls(stream) => stream.read_buf(buf).await,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(stream) => stream.write_all(bytes).await,
            Stream::Tls(stream) => stream.write_all(bytes).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            // nothing buffered in user space
            Stream::Plain(_) => Ok(()),
            Stream::Tls(stream) => stream.flush().await,
        }
    }

    /// Whether the idle connection is still usable: the upstream has neither closed it nor
    /// sent anything unasked. Never waits, and costs no system call unless the reactor has
    /// seen the socket become readable.
    fn still_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self {
            Stream::Plain(stream) => {
                matches!(stream.try_read(&mut probe), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(stream) => {
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                let mut buf = tokio::io::ReadBuf::new(&mut probe);
                matches!(
                    tokio::io::AsyncRead::poll_read(
                        std::pin::Pin::new(&mut **stream),
                        &mut cx,
                        &mut buf
                    ),
                    std::task::Poll::Pending
                )
            }
        }
    }
}

/// One kept-alive connection, with its read buffer and the buffer requests are written
/// from.
struct Conn {
    stream: Stream,
    read: BytesMut,
    write: Vec<u8>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Where calls to one endpoint go: the URI to connect to, the `host` header of its
/// requests, and its idle connections.
pub struct Conns {
    connect_to: Uri,
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
}

impl Conns {
    /// The connections of the endpoint at `url` (`http://` or `https://` with a host), or
    /// `None` when it is not such a URL.
    pub fn new(url: &str) -> Option<Conns> {
        let parts = url.parse::<Uri>().ok()?.into_parts();
        let (scheme, authority) = (parts.scheme?, parts.authority?);
        // never credentials (`user:pass@`) in the host header
        let host_port = authority.as_str().rsplit('@').next()?;
        let host = HeaderValue::from_str(host_port).ok()?;
        let connect_to = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .ok()?;
        Some(Conns {
            connect_to,
            host,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The `host` header of requests to this endpoint.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Idle connections now held.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    /// Sends `call` on an idle connection, or on a new one when none is left, and reads
    /// the whole answer; the connection is kept for the next call when it may be.
    ///
    /// A kept-alive connection the upstream closed while it sat idle (seen only once the
    /// request is written) is not the call's failure: the request goes out once more on a
    /// new connection when it could not be written, or when it was written but is
    /// idempotent and nothing came back.
    pub async fn call(
        &self,
        connector: &Connector,
        policy: PoolPolicy,
        call: &Call<'_>,
    ) -> Result<Answer, SendError> {
        let head_only = *call.method == Method::HEAD;
        let mut fresh_only = false;
        loop {
            let idle = if fresh_only {
                None
            } else {
                self.take_idle(policy)
            };
            let reused = idle.is_some();
            let mut conn = match idle {
                Some(conn) => conn,
                None => self.connect(connector).await?,
            };
            encode(&mut conn.write, &self.host, call);
            let sent = async {
                conn.stream.write_all(&conn.write).await?;
                if call.body.len() > COALESCE_BODY {
                    conn.stream.write_all(call.body).await?;
                }
                conn.stream.flush().await
            };
            if let Err(err) = sent.await {
                if reused {
                    fresh_only = true;
                    continue;
                }
                return Err(SendError::Failed(format!("writing the request: {err}")));
            }
            match read_answer(&mut conn, head_only).await {
                Ok((answer, reusable)) => {
                    if reusable && conn.read.is_empty() {
                        self.put_back(conn, policy);
                    }
                    return Ok(answer);
                }
                Err(SendError::Closed(_)) if reused && call.idempotent => fresh_only = true,
                Err(err) => return Err(err),
            }
        }
    }

    /// Keeps a connection whose answer was read in full for the next call.
    fn put_back(&self, mut conn: Conn, policy: PoolPolicy) {
        // a large answer's buffer is not held by an idle connection
        if conn.read.capacity() > KEEP_BUFFER {
            conn.read = BytesMut::with_capacity(16 * 1024);
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < policy.max_idle
        {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Drops the connections idle for longer than the policy allows, and those the
    /// upstream has closed.
    pub fn sweep(&self, policy: PoolPolicy, now: Instant) {
        let stale: Vec<Idle> = match self.idle.lock() {
            Ok(mut idle) => {
                let mut stale = Vec::new();
                for mut c in std::mem::take(&mut *idle) {
                    if now.duration_since(c.since) < policy.idle_timeout
                        && c.conn.stream.still_open()
                    {
                        idle.push(c);
                    } else {
                        stale.push(c);
                    }
                }
                stale
            }
            Err(_) => return,
        };
        // closed outside the lock
        drop(stale);
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(&self, policy: PoolPolicy) -> Option<Conn> {
        loop {
            let Idle { mut conn, since } = self.idle.lock().ok()?.pop()?;
            if since.elapsed() < policy.idle_timeout && conn.stream.still_open() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self, connector: &Connector) -> Result<Conn, SendError> {
        let io = connector
            .clone()
            .oneshot(self.connect_to.clone())
            .await
            .map_err(|err| SendError::Unreachable(err.to_string()))?;
        let stream = match io {
            MaybeHttpsStream::Http(tcp) => Stream::Plain(tcp.into_inner()),
            tls => Stream::Tls(Box::new(TokioIo::new(tls))),
        };
        Ok(Conn {
            stream,
            read: BytesMut::with_capacity(16 * 1024),
            write: Vec::with_capacity(1024),
        })
    }
}

/// The request head into `out` (cleared first), and the body after it when it is small.
fn encode(out: &mut Vec<u8>, host: &HeaderValue, call: &Call<'_>) {
    out.clear();
    out.extend_from_slice(call.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(call.path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    // only the content type is relayed, so the body must come without a content coding
    out.extend_from_slice(b"\r\naccept-encoding: identity\r\n");
    for (name, value) in call.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // a length for every body, and for the methods that carry one even when empty
    let expects_body = matches!(*call.method, Method::POST | Method::PUT | Method::PATCH);
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

/// How the body of an answer ends.
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads one answer (skipping 1xx interim ones) from `conn`: the answer, and whether the
/// connection may carry another call.
async fn read_answer(conn: &mut Conn, head_only: bool) -> Result<(Answer, bool), SendError> {
    let mut got_any = false;
    let mut interim = 0;
    // where the search for the end of the head resumes: a head trickled in is not parsed
    // again from its start for every byte
    let mut scanned = 0;
    loop {
        // the first look parses at once (a head usually comes whole, and httparse is
        // faster than a search); after a partial head, only once a blank line came
        let look = if scanned == 0 {
            scanned = conn.read.len();
            !conn.read.is_empty()
        } else {
            head_end(&conn.read, &mut scanned)
        };
        let parsed = if look {
            let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&conn.read) {
                Ok(httparse::Status::Complete(head_len)) => {
                    Some(interpret(&response, head_len, head_only)?)
                }
                Ok(httparse::Status::Partial) => None,
                Err(err) => return Err(SendError::Failed(format!("not an HTTP answer: {err}"))),
            }
        } else {
            None
        };
        let Some((status, head_len, content_type, framing, keep_alive)) = parsed else {
            if conn.read.len() > MAX_ANSWER_HEAD {
                return Err(SendError::Failed("the answer's head is too large".into()));
            }
            let nothing_yet = !got_any && conn.read.is_empty();
            let n = conn.stream.read_buf(&mut conn.read).await.map_err(|err| {
                if nothing_yet {
                    SendError::Closed(err.to_string())
                } else {
                    SendError::CutShort(err.to_string())
                }
            })?;
            if n == 0 {
                return Err(if nothing_yet {
                    SendError::Closed("the connection closed before an answer".into())
                } else {
                    SendError::CutShort("the connection closed inside the answer's head".into())
                });
            }
            continue;
        };
        got_any = true;
        conn.read.advance(head_len);
        scanned = 0;
        if status.is_informational() {
            interim += 1;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(SendError::Failed("unasked protocol switch".into()));
            }
            if interim > MAX_INTERIM_ANSWERS {
                return Err(SendError::Failed("too many interim answers".into()));
            }
            continue;
        }
        let (body, reusable) = match framing {
            Framing::Empty => (Bytes::new(), keep_alive),
            Framing::Length(length) => (read_exact(conn, length).await?, keep_alive),
            Framing::Chunked => (read_chunked(conn).await?, keep_alive),
            Framing::UntilClose => (read_to_close(conn).await?, false),
        };
        return Ok((
            Answer {
                status,
                content_type,
                body,
            },
            reusable,
        ));
    }
}

/// Whether the bytes of `buf` new since `scanned` hold the blank line that ends a head
/// (CRLF CRLF, or bare LFs as httparse accepts them); remembers how far it looked.
fn head_end(buf: &[u8], scanned: &mut usize) -> bool {
    let tail = &buf[scanned.saturating_sub(2).min(buf.len())..];
    *scanned = buf.len();
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

type Head = (StatusCode, usize, Option<HeaderValue>, Framing, bool);

/// What an answer head says: status, head length, content type, body framing (RFC 9112
/// §6.3) and whether the connection stays open after it.
fn interpret(
    response: &httparse::Response<'_, '_>,
    head_len: usize,
    head_only: bool,
) -> Result<Head, SendError> {
    let bad = |what: &str| SendError::Failed(format!("invalid answer: {what}"));
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| bad("status"))?;
    let http10 = response.version == Some(0);
    let mut keep_alive = !http10;
    let mut content_type = None;
    let mut length: Option<usize> = None;
    let mut chunked = None;
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-type") {
            content_type = HeaderValue::from_bytes(header.value).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            let digits = header.value.trim_ascii();
            let value = (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<usize>().ok())
                .flatten()
                .ok_or_else(|| bad("content-length"))?;
            if length.is_some_and(|l| l != value) {
                return Err(bad("two content-lengths"));
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // the last coding decides; chunked anywhere but last does not frame the body
            let last = header
                .value
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .rfind(|coding| !coding.is_empty())
                .unwrap_or_default();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (no_body, chunked, length) {
        (true, _, _) => Framing::Empty,
        (false, Some(true), None) => Framing::Chunked,
        // a length next to a transfer coding is a smuggling attempt, not a framing
        (false, Some(_), Some(_)) => return Err(bad("content-length with transfer-encoding")),
        (false, Some(false), None) => Framing::UntilClose,
        (false, None, Some(length)) if length > MAX_ANSWER_BODY => {
            return Err(SendError::CutShort("the answer's body is too large".into()));
        }
        (false, None, Some(0)) => Framing::Empty,
        (false, None, Some(length)) => Framing::Length(length),
        (false, None, None) => Framing::UntilClose,
    };
    // an HTTP/1.0 answer with a transfer coding closes the connection (RFC 9112 §6.1)
    let keep_alive = keep_alive && !(http10 && chunked.is_some());
    Ok((status, head_len, content_type, framing, keep_alive))
}

async fn fill(conn: &mut Conn, at_least: usize) -> Result<(), SendError> {
    while conn.read.len() < at_least {
        let n = conn
            .stream
            .read_buf(&mut conn.read)
            .await
            .map_err(|err| SendError::CutShort(err.to_string()))?;
        if n == 0 {
            return Err(SendError::CutShort(
                "the connection closed inside the answer".into(),
            ));
        }
    }
    Ok(())
}

async fn read_exact(conn: &mut Conn, length: usize) -> Result<Bytes, SendError> {
    // room for the body as it comes, not all of a declared length up front
    if conn.read.len() < length {
        conn.read
            .reserve((length - conn.read.len()).min(KEEP_BUFFER));
    }
    fill(conn, length).await?;
    Ok(conn.read.split_to(length).freeze())
}

async fn read_chunked(conn: &mut Conn) -> Result<Bytes, SendError> {
    let mut body = BytesMut::new();
    loop {
        let (skip, size) = loop {
            if conn.read.is_empty() {
                fill(conn, 1).await?;
            }
            // a size line without a digit is not a zero size (httparse would read it so)
            if !conn.read[0].is_ascii_hexdigit() {
                return Err(SendError::CutShort("invalid chunk size".into()));
            }
            match httparse::parse_chunk_size(&conn.read) {
                Ok(httparse::Status::Complete(found)) => break found,
                Ok(httparse::Status::Partial) if conn.read.len() < 4096 => {
                    let want = conn.read.len() + 1;
                    fill(conn, want).await?;
                }
                _ => return Err(SendError::CutShort("invalid chunk size".into())),
            }
        };
        conn.read.advance(skip);
        let size = usize::try_from(size)
            .ok()
            .filter(|size| body.len().saturating_add(*size) <= MAX_ANSWER_BODY)
            .ok_or_else(|| SendError::CutShort("the answer's body is too large".into()))?;
        if size == 0 {
            break;
        }
        fill(conn, size + 2).await?;
        body.extend_from_slice(&conn.read[..size]);
        if &conn.read[size..size + 2] != b"\r\n" {
            return Err(SendError::CutShort("invalid chunk end".into()));
        }
        conn.read.advance(size + 2);
    }
    // trailers: header lines up to an empty one, skipped
    let mut trailers = 0usize;
    loop {
        let end = loop {
            if let Some(end) = conn.read.windows(2).position(|w| w == b"\r\n") {
                break end;
            }
            if conn.read.len() > MAX_ANSWER_HEAD {
                return Err(SendError::CutShort("trailers too large".into()));
            }
            let want = conn.read.len() + 1;
            fill(conn, want).await?;
        };
        conn.read.advance(end + 2);
        trailers += end + 2;
        if end == 0 {
            break;
        }
        if trailers > MAX_ANSWER_HEAD {
            return Err(SendError::CutShort("trailers too large".into()));
        }
    }
    Ok(body.freeze())
}

async fn read_to_close(conn: &mut Conn) -> Result<Bytes, SendError> {
    loop {
        if conn.read.len() > MAX_ANSWER_BODY {
            return Err(SendError::CutShort("the answer's body is too large".into()));
        }
        let n = conn
            .stream
            .read_buf(&mut conn.read)
            .await
            .map_err(|err| SendError::CutShort(err.to_string()))?;
        if n == 0 {
            return Ok(conn.read.split().freeze());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// What the test upstream answers to each request, in order, across connections.
    enum Reply {
        /// These bytes, then the connection stays open.
        Keep(&'static [u8]),
        /// These bytes, then the upstream closes the connection without saying so.
        Close(&'static [u8]),
        /// No answer: the request is read and the connection closed (an idle connection
        /// closed by the upstream just as a request was written on it).
        Hangup,
    }

    /// A real HTTP/1.1 upstream on loopback with scripted answers (the last one repeats),
    /// recording the requests it read and counting connections accepted and closed by the
    /// client.
    struct Upstream {
        url: String,
        accepted: Arc<AtomicUsize>,
        closed_by_client: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    async fn upstream(replies: Vec<Reply>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(replies);
        let (a, c, r) = (
            Arc::clone(&accepted),
            Arc::clone(&closed_by_client),
            Arc::clone(&requests),
        );
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let (c, r, replies) = (Arc::clone(&c), Arc::clone(&r), Arc::clone(&replies));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // one request: the head, then content-length bytes of body
                        let request = loop {
                            let mut headers = [httparse::EMPTY_HEADER; 32];
                            let mut parsed = httparse::Request::new(&mut headers);
                            if let Ok(httparse::Status::Complete(head)) = parsed.parse(&buf) {
                                let length = parsed
                                    .headers
                                    .iter()
                                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                                    .map_or(0, |h| {
                                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                                    });
                                if buf.len() >= head + length {
                                    break buf.drain(..head + length).collect::<Vec<u8>>();
                                }
                            }
                            let mut chunk = [0u8; 64 * 1024];
                            let n = socket.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                c.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        };
                        let index = {
                            let mut all = r.lock().unwrap();
                            all.push(request);
                            (all.len() - 1).min(replies.len() - 1)
                        };
                        match replies[index] {
                            Reply::Keep(bytes) => {
                                if socket.write_all(bytes).await.is_err() {
                                    return;
                                }
                            }
                            Reply::Close(bytes) => {
                                let _ = socket.write_all(bytes).await;
                                return;
                            }
                            Reply::Hangup => return,
                        }
                    }
                });
            }
        });
        Upstream {
            url,
            accepted,
            closed_by_client,
            requests,
        }
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

    fn connector() -> Connector {
        super::connector(&crate::client_tls::ClientTls::default()).unwrap()
    }

    async fn call_with(
        conns: &Conns,
        policy: PoolPolicy,
        method: Method,
        body: &'static [u8],
    ) -> Result<Answer, SendError> {
        let tenant = HeaderValue::from_static("acme");
        let name = HeaderName::from_static("x-tenant-id");
        let headers = [(&name, &tenant)];
        let path = PathAndQuery::from_static("/v1/query/v");
        let body = Bytes::from_static(body);
        let call = Call {
            idempotent: method.is_idempotent(),
            method: &method,
            path: &path,
            headers: &headers,
            body: &body,
        };
        conns.call(&connector(), policy, &call).await
    }

    async fn call(conns: &Conns) -> Result<Answer, SendError> {
        call_with(conns, PoolPolicy::default(), Method::POST, b"{}").await
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn requests_are_written_exactly_and_one_connection_carries_them_all() {
        let up = upstream(vec![Reply::Keep(OK)]).await;
        let conns = Conns::new(&up.url).unwrap();
        for _ in 0..10 {
            let answer = call(&conns).await.unwrap();
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.content_type.unwrap(), "text/plain");
            assert_eq!(&answer.body[..], b"ok");
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(conns.idle_count(), 1);
        let host = up.url.trim_start_matches("http://");
        let expected = format!(
            "POST /v1/query/v HTTP/1.1\r\nhost: {host}\r\naccept-encoding: identity\r\nx-tenant-id: acme\r\ncontent-length: 2\r\n\r\n{{}}"
        );
        assert_eq!(
            String::from_utf8(up.requests.lock().unwrap()[0].clone()).unwrap(),
            expected
        );
        // a GET carries no length; a large body arrives whole (written apart from the head)
        call_with(&conns, PoolPolicy::default(), Method::GET, b"")
            .await
            .unwrap();
        let get = String::from_utf8(up.requests.lock().unwrap()[10].clone()).unwrap();
        assert!(!get.contains("content-length"), "{get}");
        let big: &'static [u8] = Box::leak(vec![b'x'; 100 * 1024].into_boxed_slice());
        call_with(&conns, PoolPolicy::default(), Method::PUT, big)
            .await
            .unwrap();
        assert!(up.requests.lock().unwrap()[11].ends_with(big));
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_dropped_not_used() {
        let up = upstream(vec![Reply::Close(OK)]).await;
        let conns = Conns::new(&up.url).unwrap();
        for round in 1..=3 {
            assert_eq!(&call(&conns).await.unwrap().body[..], b"ok");
            assert_eq!(up.accepted.load(Ordering::SeqCst), round);
            // the close is noticed without a call being spent on it
            eventually("the closed connection is dropped", || {
                conns.sweep(PoolPolicy::default(), Instant::now());
                conns.idle_count() == 0
            })
            .await;
        }
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_timeout_and_past_the_cap() {
        let up = upstream(vec![Reply::Keep(OK)]).await;
        let conns = Conns::new(&up.url).unwrap();
        let policy = PoolPolicy {
            max_idle: 64,
            idle_timeout: Duration::from_secs(30),
        };
        call_with(&conns, policy, Method::POST, b"{}")
            .await
            .unwrap();
        conns.sweep(policy, Instant::now());
        assert_eq!(conns.idle_count(), 1, "not idle for long yet");
        conns.sweep(policy, Instant::now() + Duration::from_secs(31));
        assert_eq!(conns.idle_count(), 0);
        eventually("the upstream sees the close", || {
            up.closed_by_client.load(Ordering::SeqCst) == 1
        })
        .await;

        // none kept: every call opens its own connection, and closes it
        let none = PoolPolicy {
            max_idle: 0,
            ..policy
        };
        for _ in 0..3 {
            call_with(&conns, none, Method::POST, b"{}").await.unwrap();
        }
        assert_eq!(conns.idle_count(), 0);
        assert_eq!(up.accepted.load(Ordering::SeqCst), 4);
        eventually("the upstream sees every close", || {
            up.closed_by_client.load(Ordering::SeqCst) == 4
        })
        .await;
    }

    #[tokio::test]
    async fn answers_are_framed_as_rfc_9112_says() {
        let up = upstream(vec![
            // chunked, with an extension and a trailer
            Reply::Keep(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nx-trailer: y\r\n\r\n",
            ),
            // an interim answer first
            Reply::Keep(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\nnew"),
            // no body, whatever the length says
            Reply::Keep(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Reply::Keep(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
            // the upstream says it closes: the answer counts, the connection is not kept
            Reply::Keep(b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 4\r\n\r\ngone"),
            // framed by the close
            Reply::Close(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
            Reply::Keep(OK),
        ])
        .await;
        let conns = Conns::new(&up.url).unwrap();
        let policy = PoolPolicy::default();
        let chunked = call(&conns).await.unwrap();
        assert_eq!(
            (&chunked.body[..], chunked.content_type.unwrap()),
            (
                &b"{\"a\":1}"[..],
                HeaderValue::from_static("application/json")
            )
        );
        let created = call(&conns).await.unwrap();
        assert_eq!(
            (created.status.as_u16(), &created.body[..]),
            (201, &b"new"[..])
        );
        let empty = call(&conns).await.unwrap();
        assert_eq!((empty.status.as_u16(), empty.body.len()), (204, 0));
        let head = call_with(&conns, policy, Method::HEAD, b"").await.unwrap();
        assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));
        assert_eq!(
            up.accepted.load(Ordering::SeqCst),
            1,
            "all on one connection"
        );
        let gone = call(&conns).await.unwrap();
        assert_eq!((gone.status.as_u16(), &gone.body[..]), (404, &b"gone"[..]));
        assert_eq!(conns.idle_count(), 0, "connection: close is honoured");
        let until_close = call(&conns).await.unwrap();
        assert_eq!(&until_close.body[..], b"until the end");
        assert_eq!(conns.idle_count(), 0);
        assert_eq!(&call(&conns).await.unwrap().body[..], b"ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn answers_that_cannot_be_framed_or_trusted_are_refused() {
        let cases: Vec<(&str, &'static [u8], bool)> = vec![
            ("not HTTP", b"HELLO\r\n\r\n", false),
            (
                "two content-lengths",
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
                false,
            ),
            (
                "a length next to a transfer coding",
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                false,
            ),
            ("an unasked protocol switch", b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            ("a body cut short", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true),
            (
                "a chunk cut short",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabc",
                true,
            ),
            ("an invalid chunk size", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", true),
            ("a length past the limit", b"HTTP/1.1 200 OK\r\ncontent-length: 999999999999\r\n\r\n", true),
            ("a signed length", b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok", false),
            (
                "a chunk size without a digit",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
                true,
            ),
            (
                "endless interim answers",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                false,
            ),
            ("nothing at all", b"", false),
        ];
        for (case, reply, cut_short) in cases {
            let up = upstream(vec![Reply::Close(reply)]).await;
            let conns = Conns::new(&up.url).unwrap();
            let err = call(&conns)
                .await
                .err()
                .unwrap_or_else(|| panic!("{case}: accepted"));
            match (&err, cut_short) {
                (SendError::CutShort(_), true)
                | (SendError::Failed(_) | SendError::Closed(_), false) => {}
                _ => panic!("{case}: {err:?}"),
            }
            assert_eq!(conns.idle_count(), 0, "{case}: not kept");
        }
        // a head that never ends is not read without bound
        let huge: &'static [u8] = Box::leak(
            [
                &b"HTTP/1.1 200 OK\r\nx-pad: "[..],
                &vec![b'a'; 2 * MAX_ANSWER_HEAD],
            ]
            .concat()
            .into_boxed_slice(),
        );
        let up = upstream(vec![Reply::Keep(huge)]).await;
        let conns = Conns::new(&up.url).unwrap();
        assert!(matches!(call(&conns).await, Err(SendError::Failed(_))));
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_told_apart_and_bad_urls_have_no_connections() {
        // a port that was just free
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let conns = Conns::new(&url).unwrap();
        let err = call(&conns).await.err().unwrap();
        assert!(matches!(err, SendError::Unreachable(_)), "{err:?}");
        for bad in ["", "not a url", "/relative/path", "http://"] {
            assert!(Conns::new(bad).is_none(), "{bad:?}");
        }
        // credentials in an endpoint URL never reach the host header
        let with_user = Conns::new("http://user:secret@127.0.0.1:9").unwrap();
        assert_eq!(with_user.host(), "127.0.0.1:9");
    }

    #[tokio::test]
    async fn a_connection_closed_as_the_request_went_out_is_retried_only_when_safe() {
        // the first connection answers once, then hangs up on the next request
        let up = upstream(vec![Reply::Keep(OK), Reply::Hangup, Reply::Keep(OK)]).await;
        let conns = Conns::new(&up.url).unwrap();
        let policy = PoolPolicy::default();
        call(&conns).await.unwrap();
        // idempotent: sent again on a new connection, and answered
        let again = call_with(&conns, policy, Method::GET, b"").await.unwrap();
        assert_eq!(&again.body[..], b"ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(up.requests.lock().unwrap().len(), 3);

        let up = upstream(vec![Reply::Keep(OK), Reply::Hangup, Reply::Keep(OK)]).await;
        let conns = Conns::new(&up.url).unwrap();
        call(&conns).await.unwrap();
        // a POST may have been acted on: not sent twice
        let err = call(&conns).await.err().unwrap();
        assert!(matches!(err, SendError::Closed(_)), "{err:?}");
        assert_eq!(up.requests.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn transfer_codings_and_http_1_0_are_read_as_rfc_9112_says() {
        let up = upstream(vec![
            // an empty element after chunked: still chunked
            Reply::Keep(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
            // HTTP/1.0 with keep-alive but a transfer coding: the connection is not kept
            Reply::Keep(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
            // HTTP/1.0 with keep-alive and a length: kept
            Reply::Keep(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok"),
            Reply::Keep(OK),
        ])
        .await;
        let conns = Conns::new(&up.url).unwrap();
        assert_eq!(&call(&conns).await.unwrap().body[..], b"ok");
        assert_eq!(conns.idle_count(), 1);
        assert_eq!(&call(&conns).await.unwrap().body[..], b"ok");
        assert_eq!(conns.idle_count(), 0);
        assert_eq!(&call(&conns).await.unwrap().body[..], b"ok");
        assert_eq!(conns.idle_count(), 1);
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_large_answer_leaves_no_large_buffer_behind() {
        let mut big = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'z', 1 << 20));
        let up = upstream(vec![Reply::Keep(Box::leak(big.into_boxed_slice()))]).await;
        let conns = Conns::new(&up.url).unwrap();
        let answer = call(&conns).await.unwrap();
        assert_eq!(answer.body.len(), 1 << 20);
        drop(answer);
        let idle = conns.idle.lock().unwrap();
        assert_eq!(idle.len(), 1);
        assert!(
            idle[0].conn.read.capacity() <= KEEP_BUFFER,
            "{}",
            idle[0].conn.read.capacity()
        );
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// One call against an upstream that answers `answer` and closes.
    fn answer_to(answer: Vec<u8>) -> Result<Answer, SendError> {
        runtime().block_on(async move {
            let up = upstream(vec![Reply::Close(Box::leak(answer.into_boxed_slice()))]).await;
            let conns = Conns::new(&up.url).unwrap();
            tokio::time::timeout(Duration::from_secs(5), call(&conns))
                .await
                .expect("an answer ending in a close is never waited on for ever")
        })
    }

    fn header_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            prop_oneof![
                Just("content-length"),
                Just("Transfer-Encoding"),
                Just("connection"),
                Just("content-type"),
                Just("x-other"),
            ],
            prop_oneof![
                Just("chunked".to_string()),
                Just("gzip, chunked".to_string()),
                Just("close".to_string()),
                (0u64..64).prop_map(|n| n.to_string()),
                "[ -~]{0,12}",
            ],
        )
            .prop_map(|(name, value)| format!("{name}: {value}\r\n"))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever an upstream sends, the call ends with an answer or a typed error: no
        /// panic, no wait past the close, never a body longer than what was sent.
        #[test]
        fn any_answer_is_read_or_refused(
            status in 100u16..600,
            headers in proptest::collection::vec(header_line(), 0..5),
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96),
        ) {
            let mut answer = format!("HTTP/1.1 {status} X\r\n").into_bytes();
            for line in &headers {
                answer.extend_from_slice(line.as_bytes());
            }
            answer.extend_from_slice(b"\r\n");
            answer.extend_from_slice(&rest);
            if let Ok(answer) = answer_to(answer) {
                proptest::prop_assert!(answer.body.len() <= rest.len());
                proptest::prop_assert!(answer.status.as_u16() >= 200);
            }
        }

        /// A chunked body, cut anywhere and with chunk extensions, reads back whole.
        #[test]
        fn chunked_bodies_read_back_whole(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(1usize..200, 0..8),
            extension in proptest::prelude::any::<bool>(),
        ) {
            let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            let mut left = &body[..];
            for cut in cuts.iter().copied().chain(std::iter::repeat(64)) {
                if left.is_empty() {
                    break;
                }
                let (chunk, rest) = left.split_at(cut.min(left.len()));
                answer.extend_from_slice(format!("{:x}", chunk.len()).as_bytes());
                if extension {
                    answer.extend_from_slice(b";name=value");
                }
                answer.extend_from_slice(b"\r\n");
                answer.extend_from_slice(chunk);
                answer.extend_from_slice(b"\r\n");
                left = rest;
            }
            answer.extend_from_slice(b"0\r\n\r\n");
            let read = answer_to(answer).map_err(|err| proptest::test_runner::TestCaseError::fail(format!("{err:?}")))?;
            proptest::prop_assert_eq!(&read.body[..], &body[..]);
        }
    }
}
