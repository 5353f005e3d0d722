//! Serving a listener: plain or TLS accept, HTTP/1.x by our own loop (`crate::h1`),
//! HTTP/2 by hyper, and a bounded graceful drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::*;

/// ALPN protocols of an HTTP listener: HTTP/2 (gRPC-capable clients) and HTTP/1.1.
pub const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Serves `app` (and `fast` ahead of it) on `listener`, over TLS when `tls` is given,
/// until `stop`; then answers what is in flight and closes idle connections, for at most
/// `drain_timeout`.
///
/// HTTP/1.x connections are served by [`crate::h1`]; HTTP/2 ones (ALPN `h2`, or the
/// prior-knowledge preface on plain TCP) by hyper.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::TlsReloader>>,
    app: Router,
    fast: Option<FastRoute>,
    limits: crate::h1::ConnLimits,
    stop: CancellationToken,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let cap = crate::listen::ConnectionCap::new(limits.listener, limits.max_connections);
    let mut incoming = match tls {
        Some(tls) => Incoming::Tls(crate::tls::TlsListener::new(listener, tls, cap)?),
        None => Incoming::Plain(listener, cap),
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = incoming.accept() => accepted,
        };
        // reap finished connections, so the set holds only live ones
        while connections.try_join_next().is_some() {}
        let stop = stop.clone();
        match accepted {
            Accepted::Plain(stream, peer) => {
                let front = Front::new(&fast, &app, peer);
                connections.spawn(connection(stream, front, limits, stop, false));
            }
            Accepted::Tls(stream, peer) => {
                let h2 = stream.get_ref().get_ref().1.alpn_protocol() == Some(b"h2");
                let front = Front::new(&fast, &app, peer);
                connections.spawn(connection(stream, front, limits, stop, h2));
            }
        }
    }
    // stop accepting (the port is released), then let the connections finish
    drop(incoming);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(drain_timeout, drained).await.is_err() {
        tracing::warn!(
            drain_timeout_ms = drain_timeout.as_millis() as u64,
            connections = connections.len(),
            "drain deadline passed, closing remaining connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

enum Incoming {
    Plain(TcpListener, crate::listen::ConnectionCap),
    Tls(crate::tls::TlsListener),
}

type Capped<I> = crate::listen::Capped<I>;

enum Accepted {
    Plain(Capped<tokio::net::TcpStream>, std::net::SocketAddr),
    Tls(
        Box<Capped<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>,
        std::net::SocketAddr,
    ),
}

impl Incoming {
    async fn accept(&mut self) -> Accepted {
        match self {
            Incoming::Plain(listener, cap) => {
                let (stream, peer) = crate::listen::accept(listener, cap).await;
                Accepted::Plain(stream, peer)
            }
            Incoming::Tls(listener) => match listener.next().await {
                Some((stream, peer)) => Accepted::Tls(Box::new(stream), peer),
                // the handshake loop only ends when the listener is dropped
                None => std::future::pending().await,
            },
        }
    }
}

/// Serves one connection: HTTP/1.x here, HTTP/2 by hyper.
async fn connection<I>(
    mut io: I,
    front: Front,
    limits: crate::h1::ConnLimits,
    stop: CancellationToken,
    h2: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        return serve_h2(io, front, limits, stop).await;
    }
    match crate::h1::serve_connection(&mut io, front.clone(), &limits, &stop).await {
        crate::h1::Outcome::Closed => {}
        crate::h1::Outcome::Http2(read) => {
            serve_h2(crate::h1::Rewind::new(read, io), front, limits, stop).await;
        }
    }
}

/// Pings of an HTTP/2 connection: one after this much silence, and the connection is
/// dropped when the answer does not come within as long again.
const H2_PING: Duration = Duration::from_secs(20);
/// How long an idle HTTP/2 connection being closed waits for its peer.
const H2_IDLE_GRACE: Duration = Duration::from_secs(2);
/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 256;

/// Requests of one HTTP/2 connection: in flight, and when the last one ended.
#[derive(Default)]
struct H2Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds since `started` at the last request's end (0: none yet).
    last_ms: std::sync::atomic::AtomicU64,
}

/// Serves an HTTP/2 connection with hyper: pings a silent peer, and closes the connection
/// gracefully once it has had no request in flight for `limits.head_timeout` (a peer that
/// answers pings but sends nothing, or trickles a header block, does not hold it), or when
/// `stop` fires.
async fn serve_h2<I>(io: I, front: Front, limits: crate::h1::ConnLimits, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let started = tokio::time::Instant::now();
    let activity = Arc::new(H2Activity::default());
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: axum::http::Request<hyper::body::Incoming>| {
            let mut front = front.clone();
            let activity = Arc::clone(&activity);
            activity.in_flight.fetch_add(1, Ordering::SeqCst);
            // the body must arrive within the body timeout of its head, as on HTTP/1.1: a
            // stream that stalls its body does not hold a handler (and its share of the
            // connection's streams) for longer
            let answer = tower::Service::call(
                &mut front,
                request.map(|body| {
                    axum::body::Body::new(DeadlineBody::new(body, limits.body_timeout))
                }),
            );
            async move {
                let answer = answer.await;
                let ended = started.elapsed().as_millis().max(1) as u64;
                activity.last_ms.store(ended, Ordering::SeqCst);
                activity.in_flight.fetch_sub(1, Ordering::SeqCst);
                answer
            }
        })
    };
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(H2_PING))
        .keep_alive_timeout(H2_PING)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let idle = loop {
        let last = Duration::from_millis(activity.last_ms.load(Ordering::SeqCst));
        // with a request in flight, look again a whole limit later
        let since = if activity.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::Instant::now()
        } else {
            started + last
        };
        let idle_at = since
            .checked_add(limits.head_timeout)
            .unwrap_or_else(|| since + Duration::from_secs(365 * 24 * 3600));
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = stop.cancelled() => break false,
            _ = tokio::time::sleep_until(idle_at) => {
                let unchanged = activity.last_ms.load(Ordering::SeqCst) == last.as_millis() as u64;
                if unchanged && activity.in_flight.load(Ordering::SeqCst) == 0 {
                    break true;
                }
            }
        }
    };
    // GOAWAY; in-flight streams finish (for a stop, the drain deadline bounds them). An
    // idle peer gets a short grace to acknowledge, then the socket is dropped: a peer that
    // never answers the closing ping must not hold the connection.
    connection.as_mut().graceful_shutdown();
    if idle {
        let _ = tokio::time::timeout(H2_IDLE_GRACE, connection).await;
    } else {
        let _ = connection.await;
    }
}

/// A request body that fails once `deadline` passes before its end.
struct DeadlineBody<B> {
    body: B,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<B> DeadlineBody<B> {
    fn new(body: B, within: Duration) -> DeadlineBody<B> {
        DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(within)),
        }
    }
}

/// The error of a request body that did not arrive in time.
#[derive(Debug)]
struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive within the body timeout")
    }
}

impl std::error::Error for BodyTimedOut {}

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let std::task::Poll::Ready(frame) = std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            return std::task::Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Waits for the shutdown signal, turns `/ready` to 503, keeps serving for `drain_delay`
/// (so load balancers notice), then tells the servers to stop accepting.
pub async fn coordinate_shutdown(
    shutdown: CancellationToken,
    readiness: Arc<Readiness>,
    drain_delay: Duration,
    stop_accepting: CancellationToken,
) {
    shutdown.cancelled().await;
    tracing::info!(
        drain_delay_ms = drain_delay.as_millis() as u64,
        "shutdown requested, draining"
    );
    readiness.start_draining();
    tokio::time::sleep(drain_delay).await;
    stop_accepting.cancel();
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("sigterm received"),
                        _ = ctrl_c => tracing::info!("sigint received"),
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for sigterm");
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        token.cancel();
    });
}
