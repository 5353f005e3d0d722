//! The security battery (every case listed in `docs/security.md`): attacks on the real binaries.

mod bodies;
mod cookies;
mod credentials;
mod logs;
mod requests;

use std::time::{Duration, Instant};

use gateway_tests::upstream;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::{START, Stack, send};

/// Limits high enough that the battery's own traffic never trips them (the abuse limits
/// have their own test in `auth/signin.rs`).
const GENEROUS_LIMITS: [&str; 10] = [
    "--limit-signup-per-ip",
    "1000/m",
    "--limit-signin-per-ip",
    "1000/m",
    "--limit-mfa-per-ip",
    "1000/m",
    "--limit-forgot-per-ip",
    "1000/m",
    "--lockout-free-failures",
    "100",
];

/// The stack with the data plane as the edge (auth forwarded to the control plane) and a
/// reference node serving every kind for tenant `acme`.
async fn edge() -> (Stack, upstream::RunningNode) {
    let stack = Stack::start(&GENEROUS_LIMITS, |base| {
        vec![
            "--control-plane-url".into(),
            base.to_string(),
            "--max-body-bytes".into(),
            "4096".into(),
        ]
    })
    .await;
    let node = upstream::start(
        "shard-s",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    for kind in ["projection", "runner"] {
        stack.route(kind, "s1", &node.http_url(), "acme").await;
    }
    (stack, node)
}

/// Polls until `token` may query tenant `acme` through the data plane.
async fn until_allowed(stack: &Stack, token: &str) {
    let deadline = Instant::now() + START;
    loop {
        let (status, answer) = send(
            &stack.client,
            "POST",
            format!("{}/v1/query/v", stack.data.http),
            Some(token),
            Some(json!({})),
            &[("x-tenant-id", "acme")],
        )
        .await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never allowed: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sends `request` as raw bytes (no client library to tidy it up) and reads the answer up
/// to the connection's end: `(status, full text)`.
async fn raw(base: &str, request: &str) -> (u16, String) {
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // a reset after the answer is fine: what was read is the answer
    let _ = tokio::time::timeout(START, stream.read_to_end(&mut answer))
        .await
        .expect("no answer before the deadline");
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
