//! The server loop against raw bytes on an in-memory connection: pipelining, refusals,
//! framing of answers, deadlines, shutdown. (Over 600 lines: one case per rule of the
//! module doc, each with the bytes it sends.)

use super::*;
use axum::http::StatusCode;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

/// Echoes what it got: `method path body-length body` and the `x-echo` header, and
/// counts its calls. `/stream` answers with a body of unknown length.
fn echo(calls: Arc<AtomicUsize>) -> tower::util::BoxCloneService<Request, Response, Infallible> {
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
                    Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(b"hello "))),
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
        listener: "test",
        max_connections: 16,
        max_body: 1024,
        head_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        stream_above: None,
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
                    let size =
                        usize::from_str_radix(std::str::from_utf8(&pending[..end]).unwrap(), 16)
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
        ("an empty host", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400, "invalid_host"),
        ("a host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "invalid_host"),
        ("a host with user information", b"GET / HTTP/1.1\r\nHost: user@x\r\n\r\n", 400, "invalid_host"),
        ("a host with a path", b"GET / HTTP/1.1\r\nHost: x/y\r\n\r\n", 400, "invalid_host"),
        ("a port out of range", b"GET / HTTP/1.1\r\nHost: x:70000\r\n\r\n", 400, "invalid_host"),
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
    let mut request = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
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

#[test]
fn hosts_are_a_host_and_an_optional_port() {
    for good in [
        "x",
        "x:80",
        "[::1]:8080",
        "[::1]",
        "127.0.0.1",
        "api.example.com:443",
    ] {
        assert!(valid_host(good.as_bytes()), "{good}");
    }
    for bad in [
        "", "a b", "user@x", "x/y", "x:70000", "x:8o", ":80", "[::1", "x?y",
    ] {
        assert!(!valid_host(bad.as_bytes()), "{bad}");
    }
}

#[test]
fn the_quick_host_check_takes_nothing_the_parser_refuses() {
    // every string of up to 5 of these characters: what the one-pass check takes, the
    // URI parser's check takes too (the quick one only spares the usual host its cost)
    let alphabet = b"a0.-:9@[] /";
    let mut checked = 0;
    let mut taken = 0;
    let mut value = Vec::new();
    for length in 0..=5u32 {
        for mut index in 0..alphabet.len().pow(length) {
            value.clear();
            for _ in 0..length {
                value.push(alphabet[index % alphabet.len()]);
                index /= alphabet.len();
            }
            checked += 1;
            if plain_host(&value) {
                taken += 1;
                assert!(parsed_host(&value), "{:?}", String::from_utf8_lossy(&value));
            }
        }
    }
    assert!(
        checked > 100_000 && taken > 1_000,
        "{checked} checked, {taken} taken"
    );
    for (value, valid) in [
        ("x:65535", true),
        ("x:65536", false),
        ("x:", false),
        ("x:080", true),
        ("x:123456", false),
        ("-.-", true),
    ] {
        assert_eq!(plain_host(value.as_bytes()), valid, "{value}");
        assert_eq!(valid_host(value.as_bytes()), valid, "{value}");
    }
}
