//! Request framing: smuggling, path tricks, spoofed headers, slow heads, idle connections, HTTP/2.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{edge, raw, until_allowed};
use crate::proxy::{START, send};

/// Requests that two parsers could read two ways, paths that mean something else after
/// decoding, spoofed identity headers: refused (or stripped) before any upstream sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_path_tricks_and_spoofed_headers_never_reach_an_upstream() {
    let (stack, node) = edge().await;
    let (client, data) = (&stack.client, &stack.data);
    let (token, user_id) = stack
        .member("edge@example.com", &[("acme", "tenant_admin")])
        .await;
    until_allowed(&stack, &token).await;
    node.node.clear();

    let head = |method: &str, path: &str, extra: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\
             x-tenant-id: acme\r\nContent-Type: application/json\r\nConnection: close\r\n{extra}\r\n"
        )
    };
    let smuggled = "GET /admin/runner/secrets HTTP/1.1\r\nHost: gateway\r\n\r\n";
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        (
            "RFC 9112 §6.3: two different content-lengths",
            format!(
                "{}{{}}",
                head(
                    "POST",
                    "/v1/query/v",
                    "Content-Length: 2\r\nContent-Length: 40\r\n"
                )
            ),
            400,
            None,
        ),
        (
            "RFC 9112 §6.1: a transfer coding other than chunked",
            format!(
                "{}2\r\n{{}}\r\n0\r\n\r\n",
                head(
                    "POST",
                    "/v1/query/v",
                    "Transfer-Encoding: gzip, chunked\r\n"
                )
            ),
            400,
            None,
        ),
        (
            "RFC 9110 §9.3.8: TRACE is not served",
            head("TRACE", "/v1/query/v", ""),
            405,
            None,
        ),
        (
            "RFC 9110 §9.3.6: no tunnel through the runner passthrough",
            head("CONNECT", "/admin/runner/x", ""),
            405,
            Some("method_not_allowed"),
        ),
        (
            "the query route takes POST only",
            head("GET", "/v1/query/v", ""),
            405,
            Some("method_not_allowed"),
        ),
        (
            "a view name is one segment",
            format!(
                "{}{{}}",
                head("POST", "/v1/query/v/more", "Content-Length: 2\r\n")
            ),
            404,
            Some("not_found"),
        ),
        (
            "ASVS 13.1: header section over the limit",
            head(
                "POST",
                "/v1/query/v",
                &format!(
                    "Content-Length: 2\r\nx-padding: {}\r\n",
                    "a".repeat(20 * 1024)
                ),
            ) + "{}",
            431,
            Some("headers_too_large"),
        ),
    ];
    // path tricks in the runner passthrough (ASVS 4.3, CWE-22, CWE-158): refused, never
    // normalised
    let tricks = [
        ("dot-dot segments", "/admin/runner/a/../../v1/query/v"),
        (
            "percent-encoded dots",
            "/admin/runner/%2e%2e/%2E%2E/secrets",
        ),
        ("a percent-encoded slash", "/admin/runner/a%2f..%2fsecrets"),
        ("double encoding", "/admin/runner/%252e%252e/secrets"),
        ("backslash as a separator", "/admin/runner/a%5c..%5csecrets"),
        ("an encoded NUL", "/admin/runner/wf%00.json"),
        ("empty segments", "/admin/runner//etc/passwd"),
    ];
    let cases = cases.into_iter().chain(
        tricks
            .into_iter()
            .map(|(case, path)| (case, head("GET", path, ""), 400, Some("invalid_path"))),
    );
    for (case, request, status, code) in cases {
        let (got, text) = raw(&data.http, &request).await;
        assert_eq!(got, status, "{case}: {text}");
        if let Some(code) = code {
            assert!(
                text.contains(&format!("\"code\":\"{code}\"")),
                "{case}: {text}"
            );
        }
    }
    assert!(
        node.node.recorded().is_empty(),
        "nothing reached the upstream: {:?}",
        node.node.recorded()
    );

    // tenant header abuse (ASVS 8.2.2: access control on the tenant the request names)
    let (_, stranger_id) = stack.member("stranger@example.com", &[]).await;
    let long_tenant = "a".repeat(4096);
    type TenantCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let tenant_cases: Vec<TenantCase> = vec![
        (
            "two x-tenant-id headers",
            vec![("x-tenant-id", "acme"), ("x-tenant-id", "globex")],
            400,
            "ambiguous_tenant",
        ),
        (
            "a tenant id with a path in it",
            vec![("x-tenant-id", "../acme")],
            400,
            "invalid_tenant",
        ),
        (
            "a tenant id of 4 KiB",
            vec![("x-tenant-id", long_tenant.as_str())],
            400,
            "invalid_tenant",
        ),
        (
            "a tenant the principal is not a member of",
            vec![("x-tenant-id", "globex")],
            403,
            "not_tenant_member",
        ),
    ];
    for (case, headers, status, code) in tenant_cases {
        let (got, answer) = send(
            client,
            "POST",
            format!("{}/v1/query/v", data.http),
            Some(&token),
            Some(json!({})),
            &headers,
        )
        .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{case}: {answer}"
        );
    }
    assert!(
        node.node.recorded().is_empty(),
        "{:?}",
        node.node.recorded()
    );

    // RFC 9112 §6.1: content-length together with transfer-encoding (CL.TE smuggling).
    // The gateway's connection refuses it (the RFC lets a server reject it or read by
    // transfer-encoding, and requires closing the connection either way): one answer,
    // 400 `ambiguous_framing`, the connection closed, so the bytes smuggled after the
    // chunked body are never read as a request. No `connection: close` from the client:
    // the connection must end because of the conflict.
    let chunked = "2\r\n{}\r\n0\r\n\r\n";
    let request = format!(
        "{}{chunked}{smuggled}",
        head(
            "POST",
            "/v1/query/v",
            &format!(
                "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                chunked.len() + smuggled.len()
            )
        )
        .replace("Connection: close\r\n", "")
    );
    let (status, text) = raw(&data.http, &request).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\"code\":\"ambiguous_framing\""), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer: {text}");
    assert!(
        node.node.recorded().is_empty(),
        "neither request reached the upstream: {:?}",
        node.node.recorded()
    );

    // spoofed identity and forwarding headers are not passed on: the upstream hears the
    // gateway's principal and tenant, never the client's token
    let spoofed = [
        ("x-tenant-id", "acme"),
        ("x-principal-id", stranger_id.as_str()),
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x-gateway-internal", "1"),
        ("cookie", "__Host-gw_access=stolen; session=theirs"),
    ];
    let (status, answer) = send(
        client,
        "POST",
        format!("{}/v1/query/v", data.http),
        Some(&token),
        Some(json!({})),
        &spoofed,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let recorded = node.node.recorded();
    assert_eq!(recorded.len(), 1);
    let seen = &recorded[0];
    assert_eq!(seen.header("x-principal-id"), Some(user_id.as_str()));
    assert_eq!(seen.header("x-tenant-id"), Some("acme"));
    for name in ["authorization", "x-forwarded-for", "forwarded", "x-real-ip"] {
        assert_eq!(seen.header(name), None, "{name} was passed on");
    }
    // end-to-end fields pass (RFC 9110 §7.6.1), the gateway's own cookies never do
    assert_eq!(seen.header("x-gateway-internal"), Some("1"));
    assert_eq!(seen.header("cookie"), Some("session=theirs"));
}

/// Slow-loris bounds of the real binary (`--http-head-timeout`): a head still arriving at
/// the limit gets 408 and the connection closes, an idle connection is closed without an
/// answer, a prompt client is served on a kept-alive connection; a zero limit is refused
/// at start. The same plain listener speaks HTTP/2 to a client that opens with its
/// preface (prior knowledge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_get_408_idle_connections_close_and_http2_is_served_by_prior_knowledge() {
    let refused = std::process::Command::new(gateway_tests::process::bin_path("data-plane"))
        .args(["--http-head-timeout", "0s"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("must be more than zero"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let nats = gateway_tests::nats::NatsServer::start();
    let keys = gateway_tests::SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    let (_data, data) = gateway_tests::spawn_data_plane(
        &nats.url(),
        &prefix,
        &keys,
        &["--snapshots-optional", "--http-head-timeout", "1s"],
    );
    let address = data.http.trim_start_matches("http://").to_string();
    let until_closed = |mut stream: tokio::net::TcpStream| async move {
        let mut answer = Vec::new();
        tokio::time::timeout(START, stream.read_to_end(&mut answer))
            .await
            .expect("closed before the deadline")
            .expect("read");
        String::from_utf8_lossy(&answer).to_string()
    };

    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: gateway\r\nx-a: ")
        .await
        .unwrap();
    let text = until_closed(slow).await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the limit: {:?}",
        started.elapsed()
    );

    let idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    assert_eq!(until_closed(idle).await, "", "closed without an answer");

    let mut prompt = tokio::net::TcpStream::connect(&address).await.unwrap();
    for _ in 0..2 {
        prompt
            .write_all(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        prompt.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        // the rest of the answer: a small JSON body, read up to its end
        let mut rest = Vec::new();
        while !rest.ends_with(b"}") {
            let mut byte = [0u8; 256];
            let read = prompt.read(&mut byte).await.unwrap();
            assert!(read > 0, "closed while kept alive");
            rest.extend_from_slice(&byte[..read]);
        }
    }

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .get(format!("{}/health", data.http))
        .header("x-correlation-id", "h2c-check")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-correlation-id"],
        "h2c-check",
        "the edge runs on HTTP/2 too"
    );

    // an HTTP/2 peer that opens and then sends nothing is closed at the same limit (pings
    // alone would not do it: a peer may answer them forever)
    let mut quiet = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    // the preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0)
    quiet
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frames = Vec::new();
    let closed = tokio::time::timeout(START, quiet.read_to_end(&mut frames)).await;
    assert!(closed.is_ok(), "the quiet HTTP/2 connection was closed");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the limit: {:?}",
        started.elapsed()
    );
    // a GOAWAY frame (type 7 on stream 0) told the peer why
    assert!(
        frames.windows(5).any(|w| w[3] == 7 && w[4] == 0),
        "no GOAWAY in {frames:?}"
    );
}
