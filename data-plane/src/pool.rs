//! Keep-alive HTTP/1.1 connections to one upstream endpoint.
//!
//! hyper's legacy pooled client did this for us before, at about 11k instructions a
//! request (callgrind): a pool keyed by scheme and authority behind a shared map, boxed
//! checkout and connect futures, a wrapper returning the connection on drop, and a task
//! spawned to put it back. Each [`Endpoint`](crate::upstream::Endpoint) now owns its idle
//! connections instead: a short stack behind a lock held for a push or a pop, most
//! recently used first (the warmest connection, and the cold ones age out at the bottom).
//!
//! A connection goes back on the stack only after its whole answer was read, and is
//! dropped instead when hyper has closed it or the stack is full. One found closed or idle
//! for too long is dropped when it comes up. A request the connection refused before
//! writing a byte of it (the upstream closed the keep-alive connection while it sat
//! idle) is sent again on the next connection: that is always safe, the upstream never
//! saw it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
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

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// Where calls to one endpoint go: the URI to connect to, the `host` header of its
/// requests, and its idle connections.
pub struct Conns {
    connect_to: Uri,
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
}

/// Why a call got no answer.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, TLS, DNS, connect timeout): the request never
    /// left, so it may go elsewhere.
    Unreachable(String),
    /// Sent, or partly sent, but no answer came (reset, closed, protocol error).
    Failed(String),
}

impl Conns {
    /// The connections of the endpoint at `url` (`http://` or `https://` with a host), or
    /// `None` when it is not such a URL.
    pub fn new(url: &str) -> Option<Conns> {
        let parts = url.parse::<Uri>().ok()?.into_parts();
        let (scheme, authority) = (parts.scheme?, parts.authority?);
        let host = HeaderValue::from_str(authority.as_str()).ok()?;
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

    /// Sends `request` (origin-form URI, `host` set) on an idle connection, or on a new one
    /// when none is left, and returns the answer. The connection is the caller's until the
    /// answer is read: give it back with [`Conns::put_back`].
    pub async fn send(
        &self,
        connector: &Connector,
        policy: PoolPolicy,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, SendRequest<Full<Bytes>>), SendError> {
        loop {
            let (mut sender, fresh) = match self.take_idle(policy).await {
                Some(sender) => (sender, false),
                None => (self.connect(connector).await?, true),
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut err) => match err.take_message() {
                    // refused before it was written: an idle connection the upstream had
                    // closed; the next one gets it (a new connection ends the loop)
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(SendError::Failed(err.into_error().to_string())),
                },
            }
        }
    }

    /// Keeps a connection whose answer was read in full for the next call.
    pub fn put_back(&self, sender: SendRequest<Full<Bytes>>, policy: PoolPolicy) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < policy.max_idle
        {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Drops the connections idle for longer than the policy allows, or closed.
    pub fn sweep(&self, policy: PoolPolicy, now: Instant) {
        let stale: Vec<Idle> = match self.idle.lock() {
            Ok(mut idle) => {
                let (keep, stale) = std::mem::take(&mut *idle).into_iter().partition(|c| {
                    !c.sender.is_closed() && now.duration_since(c.since) < policy.idle_timeout
                });
                *idle = keep;
                stale
            }
            Err(_) => return,
        };
        // closed outside the lock
        drop(stale);
    }

    /// The most recently used idle connection that is still open and ready.
    async fn take_idle(&self, policy: PoolPolicy) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let Idle { mut sender, since } = self.idle.lock().ok()?.pop()?;
            if since.elapsed() >= policy.idle_timeout {
                continue;
            }
            // ready at once unless its connection has not yet finished the last answer
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, connector: &Connector) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let io = connector
            .clone()
            .oneshot(self.connect_to.clone())
            .await
            .map_err(|err| SendError::Unreachable(err.to_string()))?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|err| SendError::Unreachable(err.to_string()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A real HTTP/1.1 server on loopback that answers `GET`s with `ok`, counting the
    /// connections it accepted and those the client closed; with `once`, it closes each
    /// connection after its first answer without saying so (as an upstream restarting or
    /// timing out an idle keep-alive connection does).
    struct Upstream {
        url: String,
        accepted: Arc<AtomicUsize>,
        closed_by_client: Arc<AtomicUsize>,
    }

    async fn upstream(once: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let (a, c) = (Arc::clone(&accepted), Arc::clone(&closed_by_client));
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                            if once {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            url,
            accepted,
            closed_by_client,
        }
    }

    fn get(conns: &Conns) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = Uri::from_static("/v1/query/v");
        request
            .headers_mut()
            .insert(axum::http::header::HOST, conns.host().clone());
        request
    }

    fn connector() -> Connector {
        super::connector(&crate::client_tls::ClientTls::default()).unwrap()
    }

    /// One call, answer read in full, connection given back.
    async fn call(conns: &Conns, connector: &Connector, policy: PoolPolicy) -> String {
        let (response, sender) = conns.send(connector, policy, get(conns)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        conns.put_back(sender, policy);
        String::from_utf8(body.to_vec()).unwrap()
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn calls_reuse_one_keep_alive_connection() {
        let up = upstream(false).await;
        let conns = Conns::new(&up.url).unwrap();
        assert_eq!(
            conns.host().to_str().unwrap(),
            up.url.trim_start_matches("http://")
        );
        let connector = connector();
        for _ in 0..10 {
            assert_eq!(call(&conns, &connector, PoolPolicy::default()).await, "ok");
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(conns.idle_count(), 1);
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_replaced_not_used() {
        let up = upstream(true).await;
        let conns = Conns::new(&up.url).unwrap();
        let connector = connector();
        for round in 1..=5 {
            assert_eq!(call(&conns, &connector, PoolPolicy::default()).await, "ok");
            assert_eq!(up.accepted.load(Ordering::SeqCst), round);
            // the connection task sees the upstream's close
            eventually("the closed connection is noticed", || {
                conns
                    .idle
                    .lock()
                    .unwrap()
                    .iter()
                    .all(|idle| idle.sender.is_closed())
            })
            .await;
        }
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_timeout_and_past_the_cap() {
        let up = upstream(false).await;
        let conns = Conns::new(&up.url).unwrap();
        let connector = connector();
        let policy = PoolPolicy {
            max_idle: 64,
            idle_timeout: Duration::from_secs(30),
        };
        call(&conns, &connector, policy).await;
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
            call(&conns, &connector, none).await;
        }
        assert_eq!(conns.idle_count(), 0);
        assert_eq!(up.accepted.load(Ordering::SeqCst), 4);
        eventually("the upstream sees every close", || {
            up.closed_by_client.load(Ordering::SeqCst) == 4
        })
        .await;
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_told_apart_and_bad_urls_have_no_connections() {
        // a port that was just free
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let conns = Conns::new(&url).unwrap();
        let err = conns
            .send(&connector(), PoolPolicy::default(), get(&conns))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, SendError::Unreachable(_)), "{err:?}");
        for bad in ["", "not a url", "/relative/path", "http://"] {
            assert!(Conns::new(bad).is_none(), "{bad:?}");
        }
    }
}
