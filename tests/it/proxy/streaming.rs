//! Bodies streamed both ways through the data plane, against a raw-TCP upstream and a
//! raw-TCP client (the framing on the wire is what is checked): a 100 MB answer and a
//! 100 MB upload pass with the data plane's memory flat, lengths stay lengths and chunked
//! stays chunked both ways, a client that leaves cancels the upstream call, and a
//! streamed upload over the limit is refused and cut.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{START, Stack, send};

const MB100: u64 = 100 * 1024 * 1024;

/// The byte at offset `at` of every test body: a period (251) that no piece or chunk size
/// divides, so a piece lost, repeated or reordered shows.
fn byte_at(at: u64) -> u8 {
    (at % 251) as u8
}

/// The test bodies' bytes, from any offset.
struct Pattern(Vec<u8>);

impl Pattern {
    const MAX_PIECE: usize = 1 << 20;

    fn new() -> Pattern {
        Pattern((0..(Self::MAX_PIECE + 251) as u64).map(byte_at).collect())
    }

    /// The `len` bytes at offset `at` (`len` at most 1 MiB).
    fn at(&self, at: u64, len: usize) -> &[u8] {
        let start = (at % 251) as usize;
        &self.0[start..start + len]
    }

    /// Whether `piece` is the pattern at offset `at`.
    fn matches(&self, at: u64, piece: &[u8]) -> bool {
        piece
            .chunks(Self::MAX_PIECE)
            .enumerate()
            .all(|(i, part)| part == self.at(at + (i * Self::MAX_PIECE) as u64, part.len()))
    }
}

/// How a message body was framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    None,
}

/// A message head as read off a socket: its first line and its fields (names lowercased).
struct Head {
    line: String,
    fields: Vec<(String, String)>,
}

impl Head {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn framing(&self) -> Framing {
        if self
            .field("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            Framing::Chunked
        } else if let Some(length) = self.field("content-length") {
            Framing::Length(length.parse().unwrap())
        } else {
            Framing::None
        }
    }

    fn status(&self) -> u16 {
        self.line.split(' ').nth(1).unwrap().parse().unwrap()
    }
}

/// One side of a raw HTTP/1.1 connection: the socket and what was read from it and not
/// used yet.
struct Wire {
    socket: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn new(socket: TcpStream) -> Wire {
        Wire {
            socket,
            buf: Vec::new(),
        }
    }

    /// Reads more; `false` when the connection closed.
    async fn fill(&mut self) -> bool {
        let mut chunk = vec![0u8; 256 * 1024];
        match self.socket.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn head(&mut self) -> Option<Head> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&self.buf[..end]).to_string();
                self.buf.drain(..end + 4);
                let mut lines = text.split("\r\n");
                let line = lines.next()?.to_string();
                let fields = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                return Some(Head { line, fields });
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads a body framed by `framing`, checking it against the pattern: (bytes read,
    /// whether every byte matched), or `None` when the connection closed before its end.
    async fn body(&mut self, framing: Framing, pattern: &Pattern) -> Option<(u64, bool)> {
        let mut at = 0u64;
        let mut intact = true;
        match framing {
            Framing::None => Some((0, true)),
            Framing::Length(length) => {
                while at < length {
                    if self.buf.is_empty() && !self.fill().await {
                        return None;
                    }
                    let take = (self.buf.len() as u64).min(length - at) as usize;
                    intact &= pattern.matches(at, &self.buf[..take]);
                    at += take as u64;
                    self.buf.drain(..take);
                }
                Some((at, intact))
            }
            Framing::Chunked => loop {
                let line_end = loop {
                    if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break end;
                    }
                    if !self.fill().await {
                        return None;
                    }
                };
                let line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = u64::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    // no trailers are sent in these tests: the empty line
                    while self.buf.len() < 2 {
                        if !self.fill().await {
                            return None;
                        }
                    }
                    assert_eq!(&self.buf[..2], b"\r\n", "the chunked body's end");
                    self.buf.drain(..2);
                    return Some((at, intact));
                }
                let mut left = size;
                while left > 0 {
                    if self.buf.is_empty() && !self.fill().await {
                        return None;
                    }
                    let take = (self.buf.len() as u64).min(left) as usize;
                    intact &= pattern.matches(at, &self.buf[..take]);
                    at += take as u64;
                    left -= take as u64;
                    self.buf.drain(..take);
                }
                while self.buf.len() < 2 {
                    if !self.fill().await {
                        return None;
                    }
                }
                assert_eq!(&self.buf[..2], b"\r\n", "a chunk's end");
                self.buf.drain(..2);
            },
        }
    }

    /// Writes `length` pattern bytes framed by `framing` (chunks of 1 MiB less 3 bytes
    /// for the chunked coding, so chunk and piece edges never meet).
    async fn write_body(
        &mut self,
        framing: Framing,
        length: u64,
        pattern: &Pattern,
    ) -> std::io::Result<()> {
        let piece = (Pattern::MAX_PIECE - 3) as u64;
        let mut at = 0;
        while at < length {
            let take = piece.min(length - at) as usize;
            if framing == Framing::Chunked {
                self.socket
                    .write_all(format!("{take:x}\r\n").as_bytes())
                    .await?;
            }
            self.socket.write_all(pattern.at(at, take)).await?;
            if framing == Framing::Chunked {
                self.socket.write_all(b"\r\n").await?;
            }
            at += take as u64;
        }
        if framing == Framing::Chunked {
            self.socket.write_all(b"0\r\n\r\n").await?;
        }
        Ok(())
    }
}

/// What the upstream saw, in order.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    fn push(&self, event: String) {
        self.0.lock().unwrap().push(event);
    }

    fn has(&self, event: &str) -> bool {
        self.0.lock().unwrap().iter().any(|e| e == event)
    }

    /// Waits (polling, bounded) until `event` was seen.
    async fn wait_for(&self, event: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.has(event) {
            assert!(
                Instant::now() < deadline,
                "never saw {event:?}; saw {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A raw-TCP upstream, by path:
/// - `/v1/query/upload`: reads the body (checking it) and answers
///   `{"received", "intact", "framing"}`; records `upload: cut short` when the body
///   does not arrive whole;
/// - `/v1/query/download-length` and `/v1/query/download-chunked`: 100 MB of the pattern,
///   with a length or chunked; records `<name>: write failed` when the gateway stops
///   taking it;
/// - `/v1/query/hold`: records `hold: started`, then waits up to 60 s for the gateway to
///   close the connection (`hold: closed by the gateway`) before answering;
/// - anything else: a small JSON answer.
async fn upstream(events: Events) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(Wire::new(socket), events.clone()));
        }
    });
    url
}

async fn serve(mut wire: Wire, events: Events) {
    let pattern = Pattern::new();
    while let Some(head) = wire.head().await {
        let path = head.line.split(' ').nth(1).unwrap_or("").to_string();
        let framing = head.framing();
        match path.as_str() {
            "/v1/query/upload" => {
                let Some((received, intact)) = wire.body(framing, &pattern).await else {
                    events.push("upload: cut short".into());
                    return;
                };
                let framing = match framing {
                    Framing::Length(_) => "length",
                    Framing::Chunked => "chunked",
                    Framing::None => "none",
                };
                let body =
                    json!({"received": received, "intact": intact, "framing": framing}).to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if wire.socket.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
            "/v1/query/download-length" | "/v1/query/download-chunked" => {
                if wire.body(framing, &pattern).await.is_none() {
                    return;
                }
                let (name, framing, head) = if path.ends_with("length") {
                    (
                        "download-length",
                        Framing::Length(MB100),
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {MB100}\r\n\r\n"
                        ),
                    )
                } else {
                    (
                        "download-chunked",
                        Framing::Chunked,
                        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
                    )
                };
                let written = async {
                    wire.socket.write_all(head.as_bytes()).await?;
                    wire.write_body(framing, MB100, &pattern).await
                };
                if written.await.is_err() {
                    events.push(format!("{name}: write failed"));
                    return;
                }
            }
            "/v1/query/hold" => {
                events.push("hold: started".into());
                let closed = tokio::time::timeout(Duration::from_secs(60), wire.fill()).await;
                if matches!(closed, Ok(false)) {
                    events.push("hold: closed by the gateway".into());
                    return;
                }
                return;
            }
            _ => {
                if wire.body(framing, &pattern).await.is_none() {
                    return;
                }
                let body = json!({"ok": true}).to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if wire.socket.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A stack whose tenant `alpha` is served by the raw upstream, and a member's token.
async fn stack_with_upstream(flags: &[&str], events: &Events) -> (Stack, String) {
    let mut flags: Vec<String> = flags.iter().map(|flag| flag.to_string()).collect();
    flags.extend(["--upstream-timeout".into(), "60s".into()]);
    let stack = Stack::start(&[], move |_| flags.clone()).await;
    let url = upstream(events.clone()).await;
    stack.route("projection", "proj-alpha", &url, "alpha").await;
    let (token, _) = stack
        .member("streamer@example.com", &[("alpha", "tenant_member")])
        .await;
    let deadline = Instant::now() + START;
    loop {
        let (status, answer) = plain_query(&stack, &token).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never allowed: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (stack, token)
}

/// A small query of tenant `alpha` through the data plane: (status, body).
async fn plain_query(stack: &Stack, token: &str) -> (u16, Value) {
    send(
        &stack.client,
        "POST",
        format!("{}/v1/query/plain", stack.data.http),
        Some(token),
        Some(json!({})),
        &[("x-tenant-id", "alpha")],
    )
    .await
}

/// Opens a raw connection to the data plane and writes a request head for `path` with
/// the body framing `framing`.
async fn open(stack: &Stack, token: &str, path: &str, framing: Framing) -> Wire {
    let address = stack.data.http.trim_start_matches("http://").to_string();
    let mut wire = Wire::new(TcpStream::connect(address.as_str()).await.unwrap());
    let framing = match framing {
        Framing::Length(length) => format!("content-length: {length}\r\n"),
        Framing::Chunked => "transfer-encoding: chunked\r\n".into(),
        Framing::None => "content-length: 0\r\n".into(),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\nx-tenant-id: alpha\r\n{framing}\r\n"
    );
    wire.socket.write_all(head.as_bytes()).await.unwrap();
    wire
}

/// Resident and peak resident memory of a process, in MiB.
fn memory_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find(|line| line.starts_with(key))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap()
    };
    (kib("VmRSS:") / 1024, kib("VmHWM:") / 1024)
}

#[tokio::test]
async fn a_100_mb_answer_and_upload_stream_through_with_memory_flat_and_framing_kept() {
    let events = Events::default();
    let (stack, token) = stack_with_upstream(&["--max-body-bytes", "200000000"], &events).await;
    let pattern = Pattern::new();
    let pid = stack.data_process.pid();
    let (rss_before, _) = memory_mib(pid);

    // answers: lengths stay lengths, chunked stays chunked, every byte as sent
    for (path, expected) in [
        ("/v1/query/download-length", Framing::Length(MB100)),
        ("/v1/query/download-chunked", Framing::Chunked),
    ] {
        let mut wire = open(&stack, &token, path, Framing::None).await;
        let head = wire.head().await.expect("an answer");
        assert_eq!(head.status(), 200, "{path}: {}", head.line);
        assert_eq!(head.framing(), expected, "{path}: {:?}", head.fields);
        let (read, intact) = wire.body(head.framing(), &pattern).await.expect(path);
        assert_eq!((read, intact), (MB100, true), "{path}");
    }

    // uploads: the upstream receives the framing the client chose, and every byte
    for (framing, name) in [
        (Framing::Length(MB100), "length"),
        (Framing::Chunked, "chunked"),
    ] {
        let mut wire = open(&stack, &token, "/v1/query/upload", framing).await;
        wire.write_body(framing, MB100, &pattern).await.unwrap();
        let head = wire.head().await.expect("an answer");
        assert_eq!(head.status(), 200, "{name}: {}", head.line);
        let Framing::Length(length) = head.framing() else {
            panic!("a small JSON answer has a length: {:?}", head.fields);
        };
        let mut body = Vec::new();
        while (wire.buf.len() as u64) < length {
            assert!(wire.fill().await, "the answer was cut");
        }
        body.extend_from_slice(&wire.buf[..length as usize]);
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            answer,
            json!({"received": MB100, "intact": true, "framing": name}),
            "{name}"
        );
    }

    // the same over HTTP/2 (hyper's side of the listener): a download keeps its length, an
    // upload arrives whole
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut answer = h2
        .post(format!("{}/v1/query/download-length", stack.data.http))
        .bearer_auth(&token)
        .header("x-tenant-id", "alpha")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.content_length(), Some(MB100));
    let (mut read, mut intact) = (0u64, true);
    while let Some(piece) = answer.chunk().await.unwrap() {
        intact &= pattern.matches(read, &piece);
        read += piece.len() as u64;
    }
    assert_eq!((read, intact), (MB100, true), "HTTP/2 download");
    let upload: Vec<u8> = (0..MB100).map(byte_at).collect();
    let answer: Value = h2
        .post(format!("{}/v1/query/upload", stack.data.http))
        .bearer_auth(&token)
        .header("x-tenant-id", "alpha")
        .body(upload)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["received"], json!(MB100), "HTTP/2 upload: {answer}");
    assert_eq!(answer["intact"], json!(true), "HTTP/2 upload: {answer}");

    // 600 MB went through; buffering any one body would have taken 100 MiB
    let (rss_after, peak) = memory_mib(pid);
    eprintln!("data plane RSS: {rss_before} MiB before, {rss_after} MiB after, peak {peak} MiB");
    assert!(
        peak < rss_before + 48,
        "the data plane's memory grew with the bodies: {rss_before} MiB before, peak {peak} MiB"
    );
    assert!(!events.has("upload: cut short"));
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_call() {
    let events = Events::default();
    let (stack, token) = stack_with_upstream(&["--max-body-bytes", "200000000"], &events).await;
    let pattern = Pattern::new();

    // waiting for the answer
    let wire = open(&stack, &token, "/v1/query/hold", Framing::None).await;
    events.wait_for("hold: started").await;
    drop(wire);
    events.wait_for("hold: closed by the gateway").await;

    // in the middle of a download
    let mut wire = open(&stack, &token, "/v1/query/download-length", Framing::None).await;
    let head = wire.head().await.expect("an answer");
    assert_eq!(head.framing(), Framing::Length(MB100));
    while wire.buf.len() < 1 << 20 {
        assert!(wire.fill().await);
    }
    drop(wire);
    events.wait_for("download-length: write failed").await;

    // in the middle of an upload
    let mut wire = open(&stack, &token, "/v1/query/upload", Framing::Length(MB100)).await;
    wire.write_body(Framing::Length(MB100), 3 << 20, &pattern)
        .await
        .unwrap();
    drop(wire);
    events.wait_for("upload: cut short").await;

    let metrics = stack.metrics().await;
    assert!(
        metrics.contains("gateway_client_gone_total{listener=\"public\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn streamed_uploads_over_the_limit_are_refused_and_cut() {
    let pattern = Pattern::new();
    // the listener's bound (the largest of every route class's limit), then a route
    // class's own limit under it
    for (flags, listener_bound) in [
        (vec!["--max-body-bytes", "1048576"], true),
        (
            vec![
                "--max-body-bytes",
                "8388608",
                "--class-max-body-bytes",
                "query:1048576",
            ],
            false,
        ),
    ] {
        let events = Events::default();
        let (stack, token) = stack_with_upstream(&flags, &events).await;

        // a declared length over the limit: refused before any byte goes upstream
        let mut wire = open(&stack, &token, "/v1/query/upload", Framing::Length(2 << 20)).await;
        let head = wire.head().await.expect("an answer");
        assert_eq!(head.status(), 413, "{flags:?}: {}", head.line);
        assert!(!events.has("upload: cut short"), "{flags:?}");

        // a chunked body streams until it passes the limit: then 413, and the upstream's
        // call is cut (its body never completes); a little past it only, as what follows a
        // refusal is read and dropped, so that the refusal is not lost to a reset
        let mut wire = open(&stack, &token, "/v1/query/upload", Framing::Chunked).await;
        let started = Instant::now();
        let written = wire
            .write_body(Framing::Chunked, (1 << 20) + (100 << 10), &pattern)
            .await;
        if let Err(err) = &written {
            let head = wire.head().await.map(|h| h.line);
            panic!(
                "{flags:?}: writing failed after {:?}: {err}; answer {head:?}",
                started.elapsed()
            );
        }
        let head = wire.head().await.expect("an answer");
        assert_eq!(head.status(), 413, "{flags:?}: {}", head.line);
        if listener_bound {
            // the connection's own refusal: nothing more is read from it
            assert_eq!(head.field("connection"), Some("close"), "{flags:?}");
        }
        events.wait_for("upload: cut short").await;

        // the data plane is still serving
        let (status, answer) = plain_query(&stack, &token).await;
        assert_eq!(status, 200, "{flags:?}: {answer}");
    }
}
