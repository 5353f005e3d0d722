//! Header fields through the data plane, both ways, against a raw-socket upstream that
//! records the bytes it got: end-to-end fields pass, hop-by-hop and gateway-owned ones do
//! not, an upstream cannot set the gateway's cookies, route classes remove and add fields.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{START, Stack};

/// The answer of the raw upstream: a redirect with every kind of field.
const ANSWER: &str = "HTTP/1.1 302 Found\r\n\
    location: /orders/7\r\n\
    set-cookie: session=abc; Path=/\r\n\
    set-cookie: __Host-gw_access=forged; Path=/; Secure\r\n\
    cache-control: no-store\r\n\
    etag: \"v4\"\r\n\
    www-authenticate: Bearer realm=\"orders\"\r\n\
    retry-after: 3\r\n\
    vary: accept\r\n\
    x-upstream: 1\r\n\
    server: raw-upstream\r\n\
    connection: x-hop\r\n\
    x-hop: 1\r\n\
    x-correlation-id: upstream-made\r\n\
    content-type: application/json\r\n\
    content-length: 2\r\n\r\n{}";

/// A raw upstream answering [`ANSWER`] to every request and recording request heads.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&heads);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    while buf.len() < end + 4 + length {
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + length);
                    record.lock().unwrap().push(head);
                    if socket.write_all(ANSWER.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, heads)
}

/// The fields of a recorded head, lower-cased names: `name: value`.
fn fields(head: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            format!("{}: {}", name.to_ascii_lowercase(), value.trim())
        })
        .collect()
}

#[tokio::test]
async fn end_to_end_fields_cross_both_ways_and_what_the_gateway_owns_does_not() {
    let stack = Stack::start(&[], |_| {
        [
            "--upstream-timeout=2s",
            "--request-header-add=query:x-env:test",
            "--request-header-remove=runner:x-debug",
            "--response-header-remove=query:server",
            "--response-header-add=query:strict-transport-security:max-age=63072000",
        ]
        .map(String::from)
        .to_vec()
    })
    .await;
    let (url, heads) = recording_upstream().await;
    stack.route("projection", "proj-h", &url, "acme").await;
    stack.route("runner", "run-h", &url, "acme").await;
    let (token, user_id) = stack
        .member("hedy@example.com", &[("acme", "tenant_admin")])
        .await;
    // redirects are the client's business: this client shows them as they come
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let query = format!("{}/v1/query/orders", stack.data.http);
    let ask = || {
        client
            .post(&query)
            .bearer_auth(&token)
            .header("x-tenant-id", "acme")
            .header("accept", "application/json")
            .header("if-match", "\"v3\"")
            .header("idempotency-key", "k-1")
            .header("x-custom", "kept")
            .header("x-principal-id", "someone-else")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("cookie", "__Host-gw_access=stolen; theme=dark")
            .header("connection", "keep-alive, x-drop")
            .header("x-drop", "hop")
            .json(&json!({}))
            .send()
    };
    let deadline = std::time::Instant::now() + START;
    let answer = loop {
        let answer = ask().await.unwrap();
        if answer.status().as_u16() == 302 {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never forwarded: {}",
            answer.status()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };

    // what the upstream got
    let head = heads.lock().unwrap().last().cloned().unwrap();
    let got = fields(&head);
    for want in [
        "accept: application/json",
        "if-match: \"v3\"",
        "idempotency-key: k-1",
        "x-custom: kept",
        "content-type: application/json",
        "cookie: theme=dark",
        "via: 1.1 gateway",
        "x-env: test",
        "x-tenant-id: acme",
        &format!("x-principal-id: {user_id}"),
    ] {
        assert!(
            got.iter().any(|f| f == want),
            "{want} missing upstream: {got:#?}"
        );
    }
    for never in [
        "authorization",
        "x-forwarded-for",
        "x-real-ip",
        "x-drop",
        "connection: keep-alive, x-drop",
    ] {
        assert!(
            !got.iter().any(|f| f.starts_with(never)),
            "{never} reached the upstream: {got:#?}"
        );
    }
    assert!(
        !head.contains("someone-else") && !head.contains("stolen"),
        "{head}"
    );

    // what the client got
    let h = answer.headers();
    for (name, value) in [
        ("location", "/orders/7"),
        ("cache-control", "no-store"),
        ("etag", "\"v4\""),
        ("www-authenticate", "Bearer realm=\"orders\""),
        ("retry-after", "3"),
        ("vary", "accept"),
        ("x-upstream", "1"),
        ("via", "1.1 gateway"),
        ("x-content-type-options", "nosniff"),
        ("strict-transport-security", "max-age=63072000"),
    ] {
        assert_eq!(
            h.get(name).map(|v| v.to_str().unwrap()),
            Some(value),
            "{name}"
        );
    }
    let cookies: Vec<&str> = h
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        vec!["session=abc; Path=/"],
        "never a gateway cookie"
    );
    assert!(h.get("server").is_none(), "removed for the query class");
    assert!(h.get("x-hop").is_none(), "named by connection: hop-by-hop");
    assert_ne!(
        h["x-correlation-id"], "upstream-made",
        "the gateway's own id"
    );

    // the runner class removes x-debug; the query class's additions are not its own
    let runner = client
        .get(format!("{}/admin/runner/jobs", stack.data.http))
        .bearer_auth(&token)
        .header("x-tenant-id", "acme")
        .header("x-debug", "1")
        .header("x-other", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(runner.status().as_u16(), 302);
    assert_eq!(runner.headers()["server"], "raw-upstream");
    let head = heads.lock().unwrap().last().cloned().unwrap();
    let got = fields(&head);
    assert!(got.iter().any(|f| f == "x-other: 2"), "{got:#?}");
    assert!(
        !got.iter()
            .any(|f| f.starts_with("x-debug") || f.starts_with("x-env")),
        "{got:#?}"
    );
}

#[tokio::test]
async fn header_settings_that_touch_what_the_gateway_owns_stop_the_start() {
    let keys = gateway_tests::SnapshotKeys::generate();
    for bad in [
        "--request-header-add=query:x-principal-id:admin",
        "--request-header-remove=query:x-tenant-id",
        "--response-header-remove=commands:server",
        "--response-header-add=query:x-correlation-id:fixed",
    ] {
        let verify = keys.verify_path();
        let args = ["--snapshot-verify-key-file", verify.as_str(), bad];
        let mut process = gateway_tests::process::PlaneProcess::spawn("data-plane", &args, &[]);
        let status = process.wait_exit(START);
        assert_eq!(status.code(), Some(2), "{bad}");
        let stderr = process.stderr().join("\n");
        assert!(stderr.contains("GATEWAY_REQUEST_HEADER"), "{bad}: {stderr}");
    }
}

#[tokio::test]
async fn every_401_carries_a_bearer_challenge_at_both_planes() {
    let stack = Stack::start(&[], |_| vec![]).await;
    // ready: its keys loaded (before that, a token that needs them is answered 503)
    gateway_tests::process::wait_for_status(
        &stack.client,
        &format!("{}/ready", stack.data.ops),
        200,
        super::START,
    )
    .await;
    let query = format!("{}/v1/query/orders", stack.data.http);
    for (token, want) in [
        (None, "Bearer realm=\"gateway\""),
        (
            Some("not-a-jwt"),
            "Bearer realm=\"gateway\", error=\"invalid_request\"",
        ),
    ] {
        let mut request = stack
            .client
            .post(&query)
            .header("x-tenant-id", "acme")
            .json(&json!({}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 401);
        assert_eq!(answer.headers()["www-authenticate"], want);
    }
    // the control plane's: a wrong password is a 401 too
    let answer = stack
        .client
        .post(format!("{}/v1/auth/signin", stack.base))
        .json(&json!({"email": "nobody@example.com", "password": "wrong password here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    assert_eq!(
        answer.headers()["www-authenticate"],
        "Bearer realm=\"gateway\""
    );
}
