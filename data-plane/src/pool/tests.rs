//! The pool against a scripted upstream on loopback: connection reuse, idle limits, retries on a closed kept-alive connection, buffers given back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderName, StatusCode};
use bytes::Bytes;

/// What the test upstream answers to each request, in order, across connections.
enum Reply {
    /// These bytes, then the connection stays open.
    Keep(&'static [u8]),
    /// These bytes, then the upstream closes the connection without saying so.
    Close(&'static [u8]),
    /// These bytes, then 50 ms later the second ones, unasked, on the same connection.
    KeepThen(&'static [u8], &'static [u8]),
    /// No answer: the request is read and the connection closed (an idle connection
    /// closed by the upstream just as a request was written on it).
    Hangup,
    /// No answer: the request is read and the connection held open, silent, until the
    /// client closes it.
    Silent,
}

/// A real HTTP/1.1 upstream on loopback with scripted answers (the last one repeats),
/// recording the requests it read and counting connections accepted and closed by the
/// client.
struct Upstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    closed_by_client: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Told when unasked bytes ([`Reply::KeepThen`]) were written.
    stray_written: Arc<tokio::sync::Notify>,
}

async fn upstream(replies: Vec<Reply>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let closed_by_client = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let replies = Arc::new(replies);
    let stray_written = Arc::new(tokio::sync::Notify::new());
    let stray = Arc::clone(&stray_written);
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
            let stray = Arc::clone(&stray);
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
                        let mut all = r.lock();
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
                        Reply::KeepThen(bytes, unasked) => {
                            if socket.write_all(bytes).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            if socket.write_all(unasked).await.is_err() {
                                return;
                            }
                            stray.notify_one();
                        }
                        Reply::Hangup => return,
                        Reply::Silent => {
                            let mut rest = [0u8; 1024];
                            while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
                            c.fetch_add(1, Ordering::SeqCst);
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
        requests,
        stray_written,
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

fn connector() -> Connector {
    super::connector(&crate::client_tls::ClientTls::default()).unwrap()
}

async fn call_with(
    conns: &Arc<Conns>,
    policy: PoolPolicy,
    method: Method,
    body: &'static [u8],
) -> Result<Answer, SendError> {
    call_for(conns, policy, "acme", method, body).await
}

async fn call_for(
    conns: &Arc<Conns>,
    policy: PoolPolicy,
    tenant: &'static str,
    method: Method,
    body: &'static [u8],
) -> Result<Answer, SendError> {
    let tenant = HeaderValue::from_static(tenant);
    let name = HeaderName::from_static("x-tenant-id");
    let headers = [(&name, &tenant)];
    let path = PathAndQuery::from_static("/v1/query/v");
    let body = Bytes::from_static(body);
    let call = Call {
        idempotent: method.is_idempotent(),
        method: &method,
        path: &path,
        headers: &headers,
        more: &[],
        body: &body,
        streamed: None,
    };
    conns.call(&connector(), policy, &tenant, &call).await
}

async fn call(conns: &Arc<Conns>) -> Result<Answer, SendError> {
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
    let conns = Arc::new(Conns::new(&up.url).unwrap());
    for _ in 0..10 {
        let answer = call(&conns).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.content_type().unwrap(), "text/plain");
        assert_eq!(&answer.body[..], b"ok");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(conns.idle_count(), 1);
    let host = up.url.trim_start_matches("http://");
    let expected = format!(
        "POST /v1/query/v HTTP/1.1\r\nhost: {host}\r\nx-tenant-id: acme\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    assert_eq!(
        String::from_utf8(up.requests.lock()[0].clone()).unwrap(),
        expected
    );
    // a GET carries no length; a large body arrives whole (written apart from the head)
    call_with(&conns, PoolPolicy::default(), Method::GET, b"")
        .await
        .unwrap();
    let get = String::from_utf8(up.requests.lock()[10].clone()).unwrap();
    assert!(!get.contains("content-length"), "{get}");
    let big: &'static [u8] = Box::leak(vec![b'x'; 100 * 1024].into_boxed_slice());
    call_with(&conns, PoolPolicy::default(), Method::PUT, big)
        .await
        .unwrap();
    assert!(up.requests.lock()[11].ends_with(big));
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connections_the_upstream_closed_are_dropped_not_used() {
    let up = upstream(vec![Reply::Close(OK)]).await;
    let conns = Arc::new(Conns::new(&up.url).unwrap());
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
    let conns = Arc::new(Conns::new(&up.url).unwrap());
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
        // the answer to HEAD (without a length: one would end the connection)
        Reply::Keep(b"HTTP/1.1 200 OK\r\n\r\n"),
        // the upstream says it closes: the answer counts, the connection is not kept
        Reply::Keep(b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 4\r\n\r\ngone"),
        // framed by the close
        Reply::Close(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
        Reply::Keep(OK),
    ])
    .await;
    let conns = Arc::new(Conns::new(&up.url).unwrap());
    let policy = PoolPolicy::default();
    let chunked = call(&conns).await.unwrap();
    assert_eq!(
        (&chunked.body[..], chunked.content_type().unwrap().clone()),
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
async fn a_refused_or_cut_answer_never_leaves_its_connection_in_the_pool() {
    // the framing rules themselves are tested with the client (gateway_edge::h1::client)
    for reply in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
    ] {
        let up = upstream(vec![Reply::Close(reply)]).await;
        let conns = Arc::new(Conns::new(&up.url).unwrap());
        let err = call(&conns).await.err();
        assert!(
            matches!(err, Some(SendError::Invalid(_) | SendError::CutShort(_))),
            "{err:?}"
        );
        assert_eq!(conns.idle_count(), 0);
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_told_apart_and_bad_urls_have_no_connections() {
    // a port that was just free
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let conns = Arc::new(Conns::new(&url).unwrap());
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
    let conns = Arc::new(Conns::new(&up.url).unwrap());
    let policy = PoolPolicy::default();
    call(&conns).await.unwrap();
    // idempotent: sent again on a new connection, and answered
    let again = call_with(&conns, policy, Method::GET, b"").await.unwrap();
    assert_eq!(&again.body[..], b"ok");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(up.requests.lock().len(), 3);

    let up = upstream(vec![Reply::Keep(OK), Reply::Hangup, Reply::Keep(OK)]).await;
    let conns = Arc::new(Conns::new(&up.url).unwrap());
    call(&conns).await.unwrap();
    // a POST may have been acted on: not sent twice
    let err = call(&conns).await.err().unwrap();
    assert!(matches!(err, SendError::Closed(_)), "{err:?}");
    assert_eq!(up.requests.lock().len(), 2);
}

#[tokio::test]
async fn a_large_answer_leaves_no_large_buffer_behind() {
    let mut big = b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'z', 1 << 20));
    let up = upstream(vec![Reply::Keep(Box::leak(big.into_boxed_slice()))]).await;
    let conns = Arc::new(Conns::new(&up.url).unwrap());
    let answer = call(&conns).await.unwrap();
    assert_eq!(answer.body.len(), 1 << 20);
    drop(answer);
    let idle = conns.idle.lock();
    assert_eq!(idle.len(), 1);
    assert!(
        idle[0].conn.read.capacity() <= KEEP_BUFFER,
        "{}",
        idle[0].conn.read.capacity()
    );
}

#[tokio::test]
async fn connections_never_cross_tenants_nor_outlive_a_doubtful_answer() {
    let up = upstream(vec![Reply::Keep(OK)]).await;
    let conns = Arc::new(Conns::new(&up.url).unwrap());
    let policy = PoolPolicy::default();
    call_for(&conns, policy, "acme", Method::POST, b"{}")
        .await
        .unwrap();
    assert_eq!(conns.idle_count(), 1);
    // another tenant gets a connection of its own; each goes back to its tenant
    call_for(&conns, policy, "globex", Method::POST, b"{}")
        .await
        .unwrap();
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(conns.idle_count(), 2);
    for tenant in ["acme", "globex", "acme"] {
        call_for(&conns, policy, tenant, Method::POST, b"{}")
            .await
            .unwrap();
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        2,
        "each tenant reuses its own"
    );

    // no reuse after an error answer to a request with a body, nor after a 204 or a HEAD
    // answer that declared a length (its body may come late)
    for (reply, method, body) in [
        (
            &b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"[..],
            Method::POST,
            &b"{}"[..],
        ),
        (
            b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
            Method::POST,
            b"{}",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            Method::HEAD,
            b"",
        ),
    ] {
        let up = upstream(vec![Reply::Keep(reply)]).await;
        let conns = Arc::new(Conns::new(&up.url).unwrap());
        call_with(&conns, policy, method.clone(), body)
            .await
            .unwrap();
        assert_eq!(
            conns.idle_count(),
            0,
            "{method} {:?}",
            String::from_utf8_lossy(reply)
        );
    }
    // an error answer to a request without a body leaves the connection usable
    let up = upstream(vec![Reply::Keep(
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    )])
    .await;
    let conns = Arc::new(Conns::new(&up.url).unwrap());
    call_with(&conns, policy, Method::GET, b"").await.unwrap();
    assert_eq!(conns.idle_count(), 1);
}

#[tokio::test]
async fn bytes_the_upstream_sent_unasked_are_seen_at_checkout() {
    // an answer, then 50 ms later an unasked second one on the same connection
    let up = upstream(vec![
        Reply::KeepThen(OK, b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nSECRET"),
        Reply::Keep(OK),
    ])
    .await;
    let conns = Arc::new(Conns::new(&up.url).unwrap());
    call(&conns).await.unwrap();
    assert_eq!(conns.idle_count(), 1);
    // once the stray bytes are written (on loopback they are then in our socket's buffer,
    // but the reactor has not necessarily been told), the idle connection is not used
    up.stray_written.notified().await;
    let next = call(&conns).await.unwrap();
    assert_eq!(
        &next.body[..],
        b"ok",
        "the stray answer was not taken for this one"
    );
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        2,
        "a new connection was made"
    );
}

/// A 200 KiB answer with a length, and one chunked, leaked to be `'static`.
fn large_answers() -> (&'static [u8], &'static [u8], Vec<u8>) {
    let body: Vec<u8> = (0..200 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut length =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    length.extend_from_slice(&body);
    let mut chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(70_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    (
        Box::leak(length.into_boxed_slice()),
        Box::leak(chunked.into_boxed_slice()),
        body,
    )
}

async fn exchange(conns: &Arc<Conns>) -> super::Reply {
    call_by(conns, deadline(Duration::from_secs(5)))
        .await
        .unwrap()
}

#[tokio::test]
async fn large_answers_stream_and_their_connection_is_reused_only_after_their_end() {
    let (length, chunked, body) = large_answers();
    for (answer, sized) in [(length, true), (chunked, false)] {
        let up = upstream(vec![Reply::Keep(answer)]).await;
        let conns = Arc::new(Conns::new(&up.url).unwrap());
        // read to its end: the body as sent, its length kept, the connection kept
        let reply = exchange(&conns).await;
        let hint = axum::body::HttpBody::size_hint(&reply.body).exact();
        assert_eq!(hint, sized.then_some(body.len() as u64));
        assert_eq!(conns.idle_count(), 0, "taken while the body streams");
        let got = collect(reply.body, usize::MAX).await.unwrap();
        assert_eq!(&got[..], &body[..]);
        assert_eq!(conns.idle_count(), 1, "back once the body ended");
        // dropped after one piece: the connection is closed, never reused
        let reply = exchange(&conns).await;
        let mut stream = reply.body.into_data_stream();
        let first = futures::StreamExt::next(&mut stream)
            .await
            .unwrap()
            .unwrap();
        assert!(!first.is_empty() && first.len() < body.len());
        drop(stream);
        assert_eq!(conns.idle_count(), 0);
        let _ = collect(exchange(&conns).await.body, usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            up.accepted.load(Ordering::SeqCst),
            2,
            "a new connection after the drop"
        );
    }
}

/// One call on `conns` (a GET), all of it within `by`.
async fn call_by(conns: &Arc<Conns>, by: TokioInstant) -> Result<super::Reply, SendError> {
    let tenant = HeaderValue::from_static("acme");
    let path = PathAndQuery::from_static("/v1/query/v");
    let body = Bytes::new();
    let call = Call {
        idempotent: true,
        method: &Method::GET,
        path: &path,
        headers: &[],
        more: &[],
        body: &body,
        streamed: None,
    };
    conns
        .exchange(
            &connector(),
            PoolPolicy::default(),
            &tenant,
            &call,
            None,
            by,
            Duration::from_secs(5),
        )
        .await
}

#[tokio::test]
async fn a_kept_connection_outlives_its_last_deadline_and_a_silent_upstream_times_out() {
    let up = upstream(vec![Reply::Keep(OK), Reply::Keep(OK), Reply::Silent]).await;
    let conns = Arc::new(Conns::new(&up.url).unwrap());
    // the first call's deadline is short, and passes while its connection is idle
    let first = call_by(&conns, deadline(Duration::from_millis(50)))
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(conns.idle_count(), 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    // the connection's timer fired for the old deadline: the next call on it is not
    // taken for late
    let second = call_by(&conns, deadline(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(conns.idle_count(), 1);
    // no answer: the call ends at its deadline, and its connection is not kept
    let started = std::time::Instant::now();
    let third = call_by(&conns, deadline(Duration::from_millis(300))).await;
    let took = started.elapsed();
    assert!(
        matches!(third, Err(SendError::TimedOut)),
        "{:?}",
        third.err()
    );
    assert!(took >= Duration::from_millis(290), "ended early: {took:?}");
    assert_eq!(conns.idle_count(), 0);
    let deadline_at = std::time::Instant::now() + Duration::from_secs(5);
    while up.closed_by_client.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline_at,
            "the timed-out connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.requests.lock().len(), 3);
}
