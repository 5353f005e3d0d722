//! Kept-alive connections to upstream endpoints, and the calls made on them.
//!
//! The HTTP/1.1 of a call (writing the request, reading and framing the answer) is
//! `gateway_edge::h1::client`, the same rules the listeners read requests with; this module
//! keeps only pooling. It is on the gateway's hot path, so it is small: no task per
//! connection, the call written and its answer read from the caller's own future. An
//! answer body over [`WHOLE_ANSWER`] (or chunked, or framed by the close) is not read
//! there: it streams from the connection as the client takes it ([`Reply::body`]), and
//! the connection comes back to the pool after the body's end. A streamed request body
//! ([`Call::streamed`]) is written while the answer is awaited.
//!
//! Each [`Endpoint`](crate::upstream::Endpoint) keeps its idle connections: a short stack
//! behind a lock held for a push or a pop, most recently used first (the warmest, and the
//! cold ones age out at the bottom).
//!
//! A kept-alive connection is where one caller's answer could reach another (an upstream
//! that writes more than it declared, late), so reuse has rules:
//! - **partitioned by tenant**: a connection carries calls of one tenant only, the tenant
//!   of its first call; another tenant's call never takes it, whatever the upstream sends;
//! - a connection goes back only after an answer whose framing ended exactly: not when it
//!   said `connection: close`, was framed by the close, or left bytes after it; not after a
//!   204, 304 or HEAD answer that declared a length or a transfer coding (its "body" may
//!   still come); not after an error answer (4xx, 5xx) to a request with a body (the
//!   upstream may have answered without reading it, and would read it as the next request);
//! - at checkout, a real non-blocking peek at the socket (a `recv` with `MSG_PEEK`, not the
//!   reactor's possibly stale readiness): a byte pending or the end of the stream, and the
//!   connection is dropped and the next one tried.
//!
//! Closed at the very moment the request went out, the request is sent again on a new
//! connection when that is safe (see [`Conns::call`]). Connections idle past
//! `idle_timeout`, or closed by the upstream, are dropped by a sweep.

use parking_lot::Mutex;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Instant as TokioInstant;

use axum::http::{HeaderValue, Method, Uri};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use gateway_edge::h1::body::{BodyError, Decoder, Source};
use gateway_edge::h1::client;
use gateway_edge::h1::common::{Framing, KEEP_BUFFER, Timer, deadline};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

pub use gateway_edge::h1::client::{Answer, Call, SendError, Streamed};

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

/// Largest answer body [`Conns::call`] gathers.
#[cfg(test)]
pub const MAX_ANSWER_BODY: usize = 32 * 1024 * 1024;

/// Answer bodies up to this size are read whole before the answer is relayed (the
/// connection then goes back to the pool at once); larger ones, chunked ones and those
/// framed by the close are streamed.
pub const WHOLE_ANSWER: usize = 64 * 1024;

/// An upstream's answer: status, fields but the framing ones, and its body (whole, or
/// streamed from the connection; lengths stay lengths, other bodies go out chunked).
pub struct Reply {
    pub status: axum::http::StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: axum::body::Body,
}

/// The whole of `body`, at most `max` bytes.
pub async fn collect(body: axum::body::Body, max: usize) -> Result<Bytes, SendError> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => Err(SendError::CutShort(format!("the answer's body: {err}"))),
    }
}

/// A streamed answer body: read from its connection piece by piece as the client takes
/// it, each piece within `idle` of the last; the connection goes back to its pool after
/// the body's end when the answer allows (`home`), and is closed otherwise (a client that
/// leaves drops the body, and with it the connection: the upstream sees the call end).
struct Download {
    conn: Option<Conn>,
    decoder: Decoder,
    idle: Duration,
    home: Option<(Arc<Conns>, PoolPolicy, HeaderValue)>,
}

impl Download {
    async fn next(&mut self) -> Option<Result<Bytes, BodyError>> {
        let conn = self.conn.as_mut()?;
        conn.timer.set(deadline(self.idle));
        let mut source = Source {
            io: &mut conn.stream,
            buf: &mut conn.read,
            timer: Some(&mut conn.timer),
        };
        match self.decoder.next(&mut source).await {
            Ok(Some(piece)) => Some(Ok(piece)),
            Ok(None) => {
                let conn = self.conn.take();
                if let (Some(conn), Some((conns, policy, partition))) = (conn, self.home.take())
                    && conn.read.is_empty()
                {
                    conns.put_back(conn, policy, &partition);
                }
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, "an upstream answer's body was cut short");
                metrics::counter!("gateway_upstream_body_errors_total").increment(1);
                self.conn = None;
                Some(Err(err))
            }
        }
    }
}

/// `work`, unless the connection's deadline (`timer`) passes first.
async fn within<F: std::future::Future>(
    timer: &mut Timer,
    work: F,
) -> Result<F::Output, SendError> {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = work.as_mut().poll(cx) {
            return Poll::Ready(Ok(done));
        }
        if timer.poll_expired(cx) {
            return Poll::Ready(Err(SendError::TimedOut));
        }
        Poll::Pending
    })
    .await
}

/// A body of a declared length: relayed with that length.
struct Sized {
    inner: axum::body::Body,
    left: u64,
}

impl http_body::Body for Sized {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.left = self.left.saturating_sub(data.len() as u64);
        }
        polled
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// Sends the streamed request `body` on `conn` (its head is written) while reading the
/// answer's head: an upstream may answer before reading the whole body. Gives the
/// connection back with the head, and whether the body went out whole.
async fn upload_body(
    conn: Conn,
    body: &mut axum::body::Body,
    framing: client::Streamed,
    head_only: bool,
) -> (Conn, Result<(client::Head, bool), SendError>) {
    let Conn {
        stream,
        mut read,
        mut write,
        timer,
    } = conn;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let result = {
        let send = client::send_body(&mut writer, body, framing, &mut write);
        let head = client::read_head(&mut reader, &mut read, head_only, u64::MAX);
        let mut send = std::pin::pin!(send);
        let mut head = std::pin::pin!(head);
        let mut sent = None;
        loop {
            tokio::select! {
                done = send.as_mut(), if sent.is_none() => match done {
                    Ok(()) => sent = Some(true),
                    Err(client::BodyFailed::Source(err)) if gateway_edge::http::over_limit(&*err) => {
                        break Err(SendError::BodyTooLarge);
                    }
                    Err(client::BodyFailed::Source(err)) => {
                        break Err(SendError::BodyFailed(err.to_string()));
                    }
                    Err(client::BodyFailed::Length) => {
                        break Err(SendError::BodyFailed(
                            "the body is not as long as declared".into(),
                        ));
                    }
                    // the upstream stopped reading: its answer may still come
                    Err(client::BodyFailed::Write(_)) => sent = Some(false),
                },
                head = head.as_mut() => break head.map(|head| (head, sent == Some(true))),
            }
        }
    };
    let conn = Conn {
        stream: reader.unsplit(writer),
        read,
        write,
        timer,
    };
    (conn, result)
}

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

enum Stream {
    Plain(TcpStream),
    Tls(Box<TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(&mut **stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(&mut **stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // nothing buffered in user space
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(stream) => Pin::new(&mut **stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(&mut **stream).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(&mut **stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }
}

impl Stream {
    /// Whether the idle connection is still usable: the upstream has neither closed it nor
    /// sent anything unasked. Never waits: one `recv(MSG_PEEK)` on the socket, which sees
    /// what has arrived even when the reactor has not been told yet (and, over TLS, the
    /// plaintext rustls already holds).
    fn still_open(&mut self) -> bool {
        match self {
            Stream::Plain(stream) => quiet(stream),
            Stream::Tls(stream) => {
                let mut probe = [0u8; 1];
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                let nothing_decrypted = matches!(
                    Pin::new(&mut **stream).poll_read(&mut cx, &mut buf),
                    Poll::Pending
                );
                // TLS records not yet read (a late answer, or the peer's close_notify)
                let tcp = match stream.inner() {
                    MaybeHttpsStream::Https(tls) => Some(tls.inner().get_ref().0.inner().inner()),
                    MaybeHttpsStream::Http(_) => None,
                };
                nothing_decrypted && tcp.is_none_or(quiet)
            }
        }
    }
}

/// Whether nothing is pending on `tcp` and it is not closed: a non-blocking peek (the
/// socket is in non-blocking mode) that must find no byte.
fn quiet(tcp: &TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(
        socket2::SockRef::from(tcp).peek(&mut probe),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock
    )
}

/// One kept-alive connection, with its read buffer and the buffer requests are written
/// from.
struct Conn {
    stream: Stream,
    read: BytesMut,
    write: Vec<u8>,
    /// The deadline of the call the connection carries, then of each piece of a streamed
    /// answer: one timer for the connection's life, moved only when it fires before the
    /// deadline in force (each call's deadline is later than the last, so calls do not
    /// register and cancel a timer each).
    timer: Timer,
}

struct Idle {
    conn: Conn,
    since: Instant,
    /// The tenant whose calls this connection carries.
    partition: HeaderValue,
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
        self.idle.lock().len()
    }

    /// Sends `call` on an idle connection of `partition` (the caller's tenant), or on a new
    /// one when none is left, and reads the answer's head: the answer, its body read whole
    /// when it is small ([`WHOLE_ANSWER`]) or already here, else streamed from the
    /// connection as the client takes it (the connection then goes back to the pool, when
    /// it may, once the body has been read to its end). With `upload`, the request's body
    /// is that stream ([`Call::streamed`]), sent while the answer is awaited: an upstream
    /// may answer before it has read it all. The connection is kept for the next call of
    /// the same partition when it may be (see the module doc).
    ///
    /// A kept-alive connection the upstream closed while it sat idle (seen only once the
    /// request is written) is not the call's failure: the request goes out once more on a
    /// new connection when it could not be written, or when it was written but is
    /// idempotent, has no streamed body, and nothing came back.
    ///
    /// All of it, up to the answer's head (and its small body), within `by`, else
    /// [`SendError::TimedOut`]; each piece of a streamed answer then within `idle` of the
    /// last.
    #[allow(clippy::too_many_arguments)] // the call, where it goes, and its two time limits
    pub async fn exchange(
        self: &Arc<Self>,
        connector: &Connector,
        policy: PoolPolicy,
        partition: &HeaderValue,
        call: &Call<'_>,
        mut upload: Option<&mut axum::body::Body>,
        by: TokioInstant,
        idle: Duration,
    ) -> Result<Reply, SendError> {
        let head_only = *call.method == Method::HEAD;
        let mut fresh_only = false;
        // The request goes out once the runtime has polled for I/O again: the calls that
        // became ready together are written together, so an upstream on another core is
        // woken once for the lot instead of once per call (a wake-up of an idle core is an
        // interrupt sent by this one, a VM exit on a virtual machine; docs/benchmarks.md,
        // sixteenth comparison). The idle connection is taken after the yield, so its peek
        // is as late as it can be.
        tokio::task::yield_now().await;
        loop {
            let idle_conn = if fresh_only {
                None
            } else {
                self.take_idle(policy, partition)
            };
            let reused = idle_conn.is_some();
            let mut conn = match idle_conn {
                Some(conn) => conn,
                None => self.connect(connector, by).await?,
            };
            conn.timer.set(by);
            let sent = within(
                &mut conn.timer,
                client::send(&mut conn.stream, &mut conn.write, &self.host, call),
            )
            .await?;
            if let Err(err) = sent {
                if reused {
                    fresh_only = true;
                    continue;
                }
                return Err(SendError::Failed(format!("writing the request: {err}")));
            }
            let (conn, read) = match (upload.as_deref_mut(), call.streamed) {
                (Some(body), Some(framing)) => {
                    match tokio::time::timeout_at(by, upload_body(conn, body, framing, head_only))
                        .await
                    {
                        Ok(done) => done,
                        Err(_) => return Err(SendError::TimedOut),
                    }
                }
                _ => {
                    let head = within(
                        &mut conn.timer,
                        client::read_head(&mut conn.stream, &mut conn.read, head_only, u64::MAX),
                    )
                    .await?;
                    (conn, head.map(|head| (head, true)))
                }
            };
            match read {
                Ok((head, body_sent)) => {
                    // an error answer may have come before the body was read: the rest of
                    // the body would be read as the next request
                    let has_body = call.streamed.is_some() || !call.body.is_empty();
                    let body_maybe_unread = !body_sent
                        || (has_body
                            && (head.status.is_client_error() || head.status.is_server_error()));
                    let reusable = head.keep_alive && !body_maybe_unread;
                    return self
                        .reply(conn, head, reusable, policy, partition, idle)
                        .await;
                }
                Err(SendError::Closed(_)) if reused && call.idempotent && upload.is_none() => {
                    fresh_only = true
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Sends `call` and reads its whole answer (bodies up to [`MAX_ANSWER_BODY`]).
    #[cfg(test)]
    pub async fn call(
        self: &Arc<Self>,
        connector: &Connector,
        policy: PoolPolicy,
        partition: &HeaderValue,
        call: &Call<'_>,
    ) -> Result<Answer, SendError> {
        let reply = self
            .exchange(
                connector,
                policy,
                partition,
                call,
                None,
                deadline(Duration::from_secs(60)),
                Duration::from_secs(60),
            )
            .await?;
        let body = crate::pool::collect(reply.body, MAX_ANSWER_BODY).await?;
        Ok(Answer {
            status: reply.status,
            headers: reply.headers,
            body,
        })
    }

    /// The answer whose head is `head`, read from `conn`: its body whole when small, else
    /// streamed.
    async fn reply(
        self: &Arc<Self>,
        mut conn: Conn,
        head: client::Head,
        reusable: bool,
        policy: PoolPolicy,
        partition: &HeaderValue,
        idle: Duration,
    ) -> Result<Reply, SendError> {
        let whole = match head.framing {
            Framing::Empty => Some(Bytes::new()),
            Framing::Length(length)
                if length <= WHOLE_ANSWER as u64 || length <= conn.read.len() as u64 =>
            {
                Some(
                    within(
                        &mut conn.timer,
                        client::read_body(
                            &mut conn.stream,
                            &mut conn.read,
                            head.framing,
                            WHOLE_ANSWER,
                        ),
                    )
                    .await??,
                )
            }
            _ => None,
        };
        let body = match whole {
            Some(body) => {
                if reusable && conn.read.is_empty() {
                    self.put_back(conn, policy, partition);
                }
                if body.is_empty() {
                    axum::body::Body::empty()
                } else {
                    axum::body::Body::from(body)
                }
            }
            None => {
                let length = match head.framing {
                    Framing::Length(length) => Some(length),
                    _ => None,
                };
                let download = Download {
                    conn: Some(conn),
                    decoder: Decoder::new(head.framing, u64::MAX),
                    idle,
                    home: reusable.then(|| (Arc::clone(self), policy, partition.clone())),
                };
                let stream = futures::stream::unfold(download, |mut download| async move {
                    download.next().await.map(|piece| (piece, download))
                });
                let body = axum::body::Body::from_stream(stream);
                match length {
                    Some(length) => axum::body::Body::new(Sized {
                        inner: body,
                        left: length,
                    }),
                    None => body,
                }
            }
        };
        Ok(Reply {
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    /// Keeps a connection whose answer was read in full for the next call.
    fn put_back(&self, mut conn: Conn, policy: PoolPolicy, partition: &HeaderValue) {
        // a large answer's buffer is not held by an idle connection
        if conn.read.capacity() > KEEP_BUFFER {
            conn.read = BytesMut::with_capacity(16 * 1024);
        }
        let mut idle = self.idle.lock();
        if idle.len() < policy.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
                partition: partition.clone(),
            });
        }
    }

    /// Drops the connections idle for longer than the policy allows, and those the
    /// upstream has closed.
    pub fn sweep(&self, policy: PoolPolicy, now: Instant) {
        let stale: Vec<Idle> = {
            let mut idle = self.idle.lock();
            let mut stale = Vec::new();
            for mut c in std::mem::take(&mut *idle) {
                if now.duration_since(c.since) < policy.idle_timeout && c.conn.stream.still_open() {
                    idle.push(c);
                } else {
                    stale.push(c);
                }
            }
            stale
        };
        // closed outside the lock
        drop(stale);
    }

    /// The most recently used idle connection of `partition` that is still open.
    fn take_idle(&self, policy: PoolPolicy, partition: &HeaderValue) -> Option<Conn> {
        loop {
            let Idle {
                mut conn, since, ..
            } = {
                let mut idle = self.idle.lock();
                let at = idle.iter().rposition(|c| c.partition == *partition)?;
                idle.remove(at)
            };
            if since.elapsed() < policy.idle_timeout && conn.stream.still_open() {
                return Some(conn);
            }
        }
    }

    /// A new connection, made before `by` (else [`SendError::TimedOut`]).
    async fn connect(&self, connector: &Connector, by: TokioInstant) -> Result<Conn, SendError> {
        let io =
            match tokio::time::timeout_at(by, connector.clone().oneshot(self.connect_to.clone()))
                .await
            {
                Ok(io) => io.map_err(|err| SendError::Unreachable(err.to_string()))?,
                Err(_) => return Err(SendError::TimedOut),
            };
        let stream = match io {
            MaybeHttpsStream::Http(tcp) => Stream::Plain(tcp.into_inner()),
            tls => Stream::Tls(Box::new(TokioIo::new(tls))),
        };
        Ok(Conn {
            stream,
            read: BytesMut::with_capacity(16 * 1024),
            write: Vec::with_capacity(1024),
            timer: Timer::new(by),
        })
    }
}

#[cfg(test)]
mod tests;
