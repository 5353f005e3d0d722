//! Differential: the same bytes on one connection to our HTTP/1.1 server
//! (`h1::serve_connection`) and to hyper 1's (`hyper::server::conn::http1`), each with a
//! service that records every request it is handed (method, target, version, every header
//! field, the whole body) and answers 404 with no body. Request smuggling is two parsers
//! disagreeing on where requests begin and end; the rule:
//!
//! - for every i below both counts, request i is the same on both sides;
//! - ours may serve FEWER requests (it is deliberately stricter: duplicate identical
//!   lengths, a `transfer-encoding` other than a lone `chunked`, TE in HTTP/1.0, a missing
//!   `Host`, bare-LF chunk lines, ... are refused and the connection closed), never MORE:
//!   a request ours served and hyper refused (or never saw) is a failure.
//!
//! Comparison stops after a `CONNECT` or a request with an `upgrade` field (what follows
//! would be a tunnel if it were accepted; both answer 404, so it never is). Inputs that
//! start with the HTTP/2 preface are skipped (ours hands those to HTTP/2).
//!
//! Both servers run on a current-thread runtime whose clock is paused: the client writes
//! the whole input, keeps its side open (a half-close changes how each server treats
//! pipelined input), drains the answers, and each server is stopped after 5 s of (virtual,
//! so instant) time once it waits for bytes that never come. Our limits are large (1 MiB
//! bodies, 60 s timeouts) and hyper's field count matches ours (128), so limits make no
//! difference.
//!
//! Ours runs a second time with the input written in pieces (sizes from a hash of the
//! input, each piece read before the next is written) and must serve exactly the same
//! requests: where a request ends must not depend on how its bytes arrive.
//!
//! Where hyper differs legitimately, without a framing disagreement, the comparison is
//! normalised: trailer fields hyper refuses and ours drops unread
//! (`hyper_refused_only_the_trailers`), and a `connection` value holding obs-text, which
//! hyper does not read (`hyper_closed_on_an_unreadable_connection_value`). Both only let
//! ours serve more requests than hyper; requests both served are always compared whole.
#![no_main]

use std::cell::RefCell;
use std::convert::Infallible;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use axum::http::{Method, StatusCode, Version};
use axum::response::IntoResponse;
use bytes::Bytes;
use gateway_edge::h1::{ConnLimits, serve_connection};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;

#[path = "support.rs"]
mod support;
use support::{piece_sizes, with_runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

/// How long a server may wait for bytes that never come (virtual time: instant).
const IDLE: Duration = Duration::from_secs(5);

/// One request as a service saw it.
#[derive(Clone, PartialEq, Eq)]
struct Seen {
    method: Method,
    target: String,
    version: Version,
    /// Every field in the order the `HeaderMap` gives them (both sides build one the same
    /// way from the same head, so the order compares).
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Seen {
    fn new(parts: &axum::http::request::Parts, body: Vec<u8>) -> Seen {
        Seen {
            method: parts.method.clone(),
            target: parts.uri.to_string(),
            version: parts.version,
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
                .collect(),
            body,
        }
    }

    /// After this request, bytes on the connection would belong to a tunnel.
    fn ends_comparison(&self) -> bool {
        self.method == Method::CONNECT || self.headers.iter().any(|(name, _)| name == "upgrade")
    }
}

impl fmt::Debug for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {:?}", self.method, self.target, self.version)?;
        for (name, value) in &self.headers {
            write!(f, " | {name}: {}", value.escape_ascii())?;
        }
        write!(
            f,
            " | body ({} bytes): \"{}\"",
            self.body.len(),
            self.body.escape_ascii()
        )
    }
}

/// A request whose body hyper could not read: its head, the body bytes hyper read before
/// the error, and the error (with its causes).
struct Failed {
    seen: Seen,
    error: String,
}

/// The limits of our server: large, so that no limit makes a difference.
const LIMITS: ConnLimits = ConnLimits {
    listener: "fuzz",
    max_connections: 16,
    max_body: 1024 * 1024,
    head_timeout: Duration::from_secs(60),
    body_timeout: Duration::from_secs(60),
};

/// A connection carrying `input`: the client side (written, left open) and the server's.
async fn connection(input: &[u8]) -> (DuplexStream, DuplexStream) {
    // large enough for the input and every answer: no write ever waits for the other side
    let (mut client, server) = tokio::io::duplex(4 * 1024 * 1024);
    client.write_all(input).await.expect("duplex write");
    (client, server)
}

/// Writes `input` in pieces of `sizes` (cycled), letting the server read each piece before
/// the next is written, then reads the answers until the server side is gone.
async fn trickle_then_drain(mut client: DuplexStream, input: &[u8], sizes: &[usize]) {
    let mut rest = input;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at((*size).min(rest.len()));
        if client.write_all(piece).await.is_err() {
            break; // the server closed (after a refusal, or `connection: close`)
        }
        rest = after;
        // the server (the other branch of the same `join!`) is polled before the next
        // write: `join!` rotates which branch it polls first, so twice
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
    }
    drain(client).await;
}


/// Reads (and drops) the answers until the server side is gone.
async fn drain(mut client: DuplexStream) {
    let mut sink = vec![0u8; 16 * 1024];
    while let Ok(read) = client.read(&mut sink).await {
        if read == 0 {
            break;
        }
    }
}

/// Our server on `input`, written whole, or in pieces of `sizes` when given.
async fn ours(input: &[u8], sizes: Option<&[usize]>) -> Vec<Seen> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let record = seen.clone();
    let service = tower::service_fn(move |request: axum::extract::Request| {
        let record = record.clone();
        async move {
            let (parts, body) = request.into_parts();
            // the loop hands whole bodies: this never fails
            let body = body.collect().await.expect("a whole body").to_bytes();
            record.borrow_mut().push(Seen::new(&parts, body.to_vec()));
            Ok::<_, Infallible>(StatusCode::NOT_FOUND.into_response())
        }
    });
    let (client, server) = connection(if sizes.is_some() { &[] } else { input }).await;
    let stop = CancellationToken::new();
    let serve = async {
        let _ = tokio::time::timeout(IDLE, serve_connection(server, service, &LIMITS, &stop)).await;
    };
    match sizes {
        None => tokio::join!(serve, drain(client)),
        Some(sizes) => tokio::join!(serve, trickle_then_drain(client, input, sizes)),
    };
    seen.take()
}

async fn hyper(input: &[u8]) -> (Vec<Seen>, Option<Failed>) {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let failed = Rc::new(RefCell::new(None));
    let (record, record_failure) = (seen.clone(), failed.clone());
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let (record, record_failure) = (record.clone(), record_failure.clone());
        async move {
            let (parts, mut body) = request.into_parts();
            let mut data = Vec::new();
            let error = loop {
                match body.frame().await {
                    None => break None,
                    Some(Ok(frame)) => {
                        if let Ok(piece) = frame.into_data() {
                            data.extend_from_slice(&piece);
                        }
                    }
                    Some(Err(err)) => break Some(error_chain(&err)),
                }
            };
            let seen = Seen::new(&parts, data);
            match error {
                None => record.borrow_mut().push(seen),
                Some(error) => *record_failure.borrow_mut() = Some(Failed { seen, error }),
            }
            let answer = hyper::Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Empty::<Bytes>::new())
                .expect("an answer");
            Ok::<_, Infallible>(answer)
        }
    });
    let (client, server) = connection(input).await;
    let serve = async {
        let connection = hyper::server::conn::http1::Builder::new()
            // ours takes up to 128 fields (h1::MAX_HEADERS); hyper's default is 100
            .max_headers(gateway_edge::h1::MAX_HEADERS)
            .serve_connection(TokioIo::new(server), service);
        let _ = tokio::time::timeout(IDLE, connection).await;
    };
    tokio::join!(serve, drain(client));
    (seen.take(), failed.take())
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How many requests of `list` are compared: up to and with the first one after which the
/// connection would be a tunnel.
fn compared(list: &[Seen]) -> usize {
    list.iter()
        .position(Seen::ends_comparison)
        .map_or(list.len(), |at| at + 1)
}

/// Normalisation: hyper reads the trailer section of a chunked body as header fields
/// (httparse, at most 128 of them, each name and value valid) and fails the body when they
/// are not; ours finds the end of the trailer section the same way (lines ending in CRLF
/// up to an empty one, 4 KiB at most) and drops the fields unread. Both end the body at
/// the same byte, so this is no framing disagreement: what hyper refused is only the
/// content of fields the gateway never relays. The request is accepted when hyper read the
/// same head and the same body bytes before failing on the trailers; nothing after it is
/// compared (hyper closed the connection).
fn hyper_refused_only_the_trailers(ours: &Seen, failed: Option<&Failed>) -> bool {
    let Some(failed) = failed else {
        return false;
    };
    let trailer_error = [
        "Invalid header name",
        "Invalid header value",
        "Partial header",
        "chunk trailers count overflow",
        "invalid header name",
        "invalid header value",
        "invalid token",
        "invalid new line",
        "too many headers",
    ]
    .iter()
    .any(|what| failed.error.contains(what));
    trailer_error && failed.seen == *ours
}

/// Normalisation: hyper reads a `connection` value only when it is visible ASCII
/// (`HeaderValue::to_str`); a value holding obs-text (bytes 0x80 to 0xff, which RFC 9110
/// §5.5 allows in field values) counts as absent, so `connection: keep-alive, \xff` in an
/// HTTP/1.0 request does not keep hyper's connection, while ours reads the tokens of the
/// bytes and keeps it. The request itself was read the same way on both sides (compared
/// before this is asked); hyper then closed, ours read on. Whether a connection persists is
/// no framing disagreement: the bytes after the request are the same bytes from the same
/// client either way. Applies when hyper's own rule (RFC 9112 §9.3, hyper's `role.rs`)
/// closes with its `to_str` reading and keeps the connection with a byte reading.
fn hyper_closed_on_an_unreadable_connection_value(last: &Seen) -> bool {
    let keeps = |readable_only: bool| {
        let has = |value: &[u8], token: &[u8]| {
            // what `HeaderValue::to_str` accepts
            let visible = value
                .iter()
                .all(|b| *b == b'\t' || (0x20..0x7f).contains(b));
            if readable_only && !visible {
                return false;
            }
            value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        };
        let mut keep_alive = last.version == Version::HTTP_11;
        let mut saw_close = false;
        for (_, value) in last.headers.iter().filter(|(name, _)| name == "connection") {
            if saw_close || has(value, b"close") {
                saw_close = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = has(value, b"keep-alive");
            }
        }
        keep_alive
    };
    !keeps(true) && keeps(false)
}

fn list(requests: &[Seen]) -> String {
    requests
        .iter()
        .enumerate()
        .map(|(i, seen)| format!("\n  [{i}] {seen:?}"))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // ours hands the HTTP/2 preface to HTTP/2; huge inputs would outgrow the duplex buffer
    if data.starts_with(b"PRI * HTTP/2.0") || data.len() > 1024 * 1024 {
        return;
    }
    let sizes = piece_sizes(data);
    let (ours, ours_in_pieces, (theirs, failed)) = with_runtime(|runtime| {
        runtime.block_on(async {
            (
                ours(data, None).await,
                ours(data, Some(&sizes)).await,
                hyper(data).await,
            )
        })
    });
    let report = || {
        format!(
            "input: \"{}\"\nours:{}\nhyper:{}\nhyper failed on: {}",
            data.escape_ascii(),
            list(&ours),
            list(&theirs),
            failed
                .as_ref()
                .map_or("nothing".to_string(), |failed| format!(
                    "{:?} ({})",
                    failed.seen, failed.error
                )),
        )
    };
    // H1_DIFFERENTIAL_PRINT=1 shows what each side served (to read a seed's outcome)
    if std::env::var_os("H1_DIFFERENTIAL_PRINT").is_some() {
        eprintln!("{}\n", report());
    }
    // ours serves the same requests however the bytes arrive (HeadScan, partial heads,
    // bodies across reads)
    assert!(
        ours == ours_in_pieces,
        "ours served other requests with the input in pieces of {sizes:?}\n{}\nours in pieces:{}",
        report(),
        list(&ours_in_pieces)
    );
    let ours_n = compared(&ours);
    let theirs_n = compared(&theirs);
    for i in 0..ours_n.min(theirs_n) {
        assert!(ours[i] == theirs[i], "request {i} differs\n{}", report());
    }
    if ours_n > theirs_n {
        // hyper closed after the trailers it refused, or after a request whose connection
        // value it could not read: what ours served after that has nothing to be compared
        // with
        let normalised = hyper_refused_only_the_trailers(&ours[theirs_n], failed.as_ref())
            || (failed.is_none()
                && theirs_n > 0
                && hyper_closed_on_an_unreadable_connection_value(&theirs[theirs_n - 1]));
        assert!(
            normalised,
            "ours served {ours_n} requests, hyper {theirs_n}\n{}",
            report()
        );
    }
});
