//! The upstream keep-alive pool against a hostile upstream on raw sockets: stray bytes after
//! an answer, bodies behind bodiless answers, early answers to unread bodies, and bodies
//! smuggled on bodiless methods never reach another tenant's or user's request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{START, Stack, send};

/// One request as the raw upstream read it.
#[derive(Clone, Debug)]
struct Seen {
    connection: usize,
    path: String,
    tenant: String,
}

/// A raw-TCP upstream that answers by the request's path (see [`answer`]) and records
/// every request with the connection it came on.
struct RawUpstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            for connection in 0.. {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(socket, connection, Arc::clone(&record)));
            }
        });
        RawUpstream { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A complete answer with a JSON body.
fn json_answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one request head (and, unless `skip_body`, its content-length body) from `buf`
/// and `socket`: (method, path, tenant, body length). `None` when the connection closed.
async fn read_request(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
    skip_body: impl Fn(&str) -> bool,
) -> Option<(String, String, String, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
            let (mut tenant, mut length) = (String::new(), 0);
            for line in lines {
                let (name, value) = line.split_once(':')?;
                match name.trim().to_ascii_lowercase().as_str() {
                    "x-tenant-id" => tenant = value.trim().to_string(),
                    "content-length" => length = value.trim().parse().ok()?,
                    _ => {}
                }
            }
            buf.drain(..end + 4);
            if !skip_body(&path) {
                while buf.len() < length {
                    let mut chunk = [0u8; 4096];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..length);
            }
            return Some((method, path, tenant, length));
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The hostile behaviours, by path:
/// - `/v1/query/stray-<ms>`: the answer, then `<ms>` later a second, unasked answer
///   carrying the tenant's secret;
/// - `/v1/query/stray-before-next`: the answer, then, once the next request on the
///   connection has arrived, the unasked secret answer ahead of the real one;
/// - `/v1/query/no-content` and `HEAD`: `204` (or the HEAD answer) declaring a length, the
///   secret as a body behind it;
/// - `/admin/runner/early-401`: `401` at once, the request's body left unread (it is
///   then read as the next request);
/// - anything else: `{"for": <tenant>, "path": <path>}`.
async fn serve(mut socket: TcpStream, connection: usize, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let mut stray_before_next: Option<Vec<u8>> = None;
    loop {
        let Some((method, path, tenant, _)) =
            read_request(&mut socket, &mut buf, |path| path.ends_with("early-401")).await
        else {
            return;
        };
        seen.lock().unwrap().push(Seen {
            connection,
            path: path.clone(),
            tenant: tenant.clone(),
        });
        if let Some(stray) = stray_before_next.take()
            && socket.write_all(&stray).await.is_err()
        {
            return;
        }
        let secret = format!("{{\"SECRET\":\"meant-for-{tenant}\"}}");
        let written = if let Some(ms) = path.strip_prefix("/v1/query/stray-")
            && let Ok(ms) = ms.parse::<u64>()
        {
            let answer = json_answer("200 OK", &json!({"for": tenant}).to_string());
            if socket.write_all(&answer).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            socket.write_all(&json_answer("200 OK", &secret)).await
        } else if path == "/v1/query/stray-before-next" {
            stray_before_next = Some(json_answer("200 OK", &secret));
            let answer = json_answer("200 OK", &json!({"for": tenant}).to_string());
            socket.write_all(&answer).await
        } else if path == "/v1/query/no-content" || method == "HEAD" {
            let status = if method == "HEAD" {
                "200 OK"
            } else {
                "204 No Content"
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n",
                secret.len()
            );
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            socket.write_all(secret.as_bytes()).await
        } else if let Some(raw) = path.strip_prefix("/v1/query/raw-") {
            let answer: &[u8] = match raw {
                "status-600" => b"HTTP/1.1 600 Odd\r\ncontent-length: 0\r\n\r\n",
                "not-http" => b"HELLO THERE\r\n\r\n",
                "two-lengths" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
                "html" => b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 13\r\n\r\n<b>page</b>\r\n",
                _ => b"HTTP/1.1 205 Reset Content\r\ncontent-length: 4\r\n\r\nbody",
            };
            socket.write_all(answer).await
        } else if path.ends_with("early-401") {
            socket
                .write_all(&json_answer("401 Unauthorized", "{\"early\":true}"))
                .await
        } else {
            let answer = json!({"for": tenant, "path": path}).to_string();
            socket.write_all(&json_answer("200 OK", &answer)).await
        };
        if written.is_err() {
            return;
        }
    }
}

/// Polls `path` with `token` in `tenant` until the member's rights have reached the data
/// plane (a 200 of the plain route), then returns.
async fn until_allowed(stack: &Stack, token: &str, tenant: &str) {
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, answer) = query(stack, token, tenant, "ready").await;
        if status == 200 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never allowed: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn query(stack: &Stack, token: &str, tenant: &str, view: &str) -> (u16, Value) {
    send(
        &stack.client,
        "POST",
        format!("{}/v1/query/{view}", stack.data.http),
        Some(token),
        Some(json!({})),
        &[("x-tenant-id", tenant)],
    )
    .await
}

fn assert_no_secret(answer: &Value, of: &str) {
    assert!(
        !answer.to_string().contains("SECRET"),
        "{of} received another request's answer: {answer}"
    );
}

#[tokio::test]
async fn stray_bytes_after_an_answer_never_reach_another_tenant_or_user() {
    let stack = Stack::start(&[], |_| vec!["--upstream-timeout".into(), "2s".into()]).await;
    let upstream = RawUpstream::start().await;
    for tenant in ["alpha", "beta"] {
        stack
            .route(
                "projection",
                &format!("proj-{tenant}"),
                &upstream.url,
                tenant,
            )
            .await;
    }
    // two users of alpha, one of beta
    let (alice, _) = stack
        .member("alice@example.com", &[("alpha", "tenant_member")])
        .await;
    let (amos, _) = stack
        .member("amos@example.com", &[("alpha", "tenant_member")])
        .await;
    let (bob, _) = stack
        .member("bob@example.com", &[("beta", "tenant_member")])
        .await;
    for (token, tenant) in [(&alice, "alpha"), (&amos, "alpha"), (&bob, "beta")] {
        until_allowed(&stack, token, tenant).await;
    }

    for ms in [0u64, 3, 300] {
        let (status, answer) = query(&stack, &alice, "alpha", &format!("stray-{ms}")).await;
        assert_eq!((status, &answer["for"]), (200, &json!("alpha")), "{answer}");
        // the other tenant, at once and after the stray bytes came
        let (status, answer) = query(&stack, &bob, "beta", "plain").await;
        assert_eq!(status, 200, "{answer}");
        assert_no_secret(&answer, "beta");
        tokio::time::sleep(Duration::from_millis(ms + 50)).await;
        let (status, answer) = query(&stack, &bob, "beta", "plain").await;
        assert_eq!(status, 200, "{answer}");
        assert_no_secret(&answer, "beta");
        // another user of the same tenant, once the stray bytes are there
        let (status, answer) = query(&stack, &amos, "alpha", "plain").await;
        assert_eq!(status, 200, "{answer}");
        assert_no_secret(&answer, "another user of alpha");
    }

    // the worst case: the stray answer comes just ahead of the next request's answer, on
    // whatever connection the next request takes; another tenant's request never takes it
    let (status, _) = query(&stack, &alice, "alpha", "stray-before-next").await;
    assert_eq!(status, 200);
    for _ in 0..5 {
        let (status, answer) = query(&stack, &bob, "beta", "plain").await;
        assert_eq!(status, 200, "{answer}");
        assert_no_secret(&answer, "beta");
    }
    // no connection ever carried two tenants
    let seen = upstream.seen();
    for request in &seen {
        let others: Vec<&Seen> = seen
            .iter()
            .filter(|other| {
                other.connection == request.connection && other.tenant != request.tenant
            })
            .collect();
        assert!(
            others.is_empty(),
            "{request:?} shared a connection with {others:?}"
        );
    }
}

#[tokio::test]
async fn bodies_behind_bodiless_answers_and_early_answers_end_the_connection() {
    let stack = Stack::start(&[], |_| vec!["--upstream-timeout".into(), "2s".into()]).await;
    let upstream = RawUpstream::start().await;
    stack
        .route("projection", "proj-alpha", &upstream.url, "alpha")
        .await;
    stack
        .route("runner", "run-alpha", &upstream.url, "alpha")
        .await;
    let (alice, _) = stack
        .member("alice@example.com", &[("alpha", "tenant_admin")])
        .await;
    let (amos, _) = stack
        .member("amos@example.com", &[("alpha", "tenant_admin")])
        .await;
    until_allowed(&stack, &alice, "alpha").await;
    until_allowed(&stack, &amos, "alpha").await;

    // a 204 declaring a length, with the secret sent as its body a moment later
    let (status, _) = query(&stack, &alice, "alpha", "no-content").await;
    assert_eq!(status, 204);
    for _ in 0..3 {
        let (status, answer) = query(&stack, &amos, "alpha", "plain").await;
        assert_eq!(status, 200, "{answer}");
        assert_no_secret(&answer, "the next user");
    }
    // the same behind an answer to HEAD
    let head = stack
        .client
        .head(format!("{}/admin/runner/anything", stack.data.http))
        .bearer_auth(&alice)
        .header("x-tenant-id", "alpha")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, answer) = query(&stack, &amos, "alpha", "plain").await;
    assert_eq!(status, 200, "{answer}");
    assert_no_secret(&answer, "the user after a HEAD");

    // an early 401 to a request whose body the upstream did not read: the body (a whole
    // request with another identity) would be read as the next request on the connection
    let smuggled = "GET /admin/runner/smuggled HTTP/1.1\r\nhost: x\r\nx-tenant-id: alpha\r\n\
                    x-principal-id: someone-else\r\n\r\n";
    let early = stack
        .client
        .post(format!("{}/admin/runner/early-401", stack.data.http))
        .bearer_auth(&alice)
        .header("x-tenant-id", "alpha")
        .header("content-type", "text/plain")
        .body(smuggled)
        .send()
        .await
        .unwrap();
    assert_eq!(early.status().as_u16(), 401);
    for _ in 0..3 {
        let (status, answer) = send(
            &stack.client,
            "GET",
            format!("{}/admin/runner/mine", stack.data.http),
            Some(&amos),
            None,
            &[("x-tenant-id", "alpha")],
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["path"], "/admin/runner/mine", "{answer}");
    }
    let seen = upstream.seen();
    let early_connection = seen
        .iter()
        .find(|s| s.path.ends_with("early-401"))
        .map(|s| s.connection)
        .unwrap();
    assert!(
        !seen
            .iter()
            .any(|s| s.connection == early_connection && s.path == "/admin/runner/mine"),
        "a request went out on the connection whose body was left unread: {seen:?}"
    );
}

#[tokio::test]
async fn bodies_on_bodiless_methods_and_unknown_methods_are_refused() {
    let stack = Stack::start(&[], |_| vec!["--upstream-timeout".into(), "2s".into()]).await;
    let upstream = RawUpstream::start().await;
    stack
        .route("projection", "proj-alpha", &upstream.url, "alpha")
        .await;
    stack
        .route("runner", "run-alpha", &upstream.url, "alpha")
        .await;
    let (alice, _) = stack
        .member("alice@example.com", &[("alpha", "tenant_admin")])
        .await;
    until_allowed(&stack, &alice, "alpha").await;
    let before = upstream.seen().len();
    let runner = format!("{}/admin/runner/workflows", stack.data.http);
    let smuggled = "GET /admin/runner/smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    for method in ["GET", "HEAD", "DELETE", "OPTIONS"] {
        let answer = stack
            .client
            .request(method.parse().unwrap(), &runner)
            .bearer_auth(&alice)
            .header("x-tenant-id", "alpha")
            .body(smuggled)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 400, "{method} with a body");
    }
    // (CONNECT is refused too, but an HTTP client sends it in authority form to a proxy)
    for method in ["TRACE", "PROPFIND", "FOO"] {
        let answer = stack
            .client
            .request(method.parse().unwrap(), &runner)
            .bearer_auth(&alice)
            .header("x-tenant-id", "alpha")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 405, "{method}");
    }
    assert_eq!(
        upstream.seen().len(),
        before,
        "nothing reached the upstream"
    );
    // the allowed methods without a body still go through
    for method in ["GET", "DELETE", "OPTIONS"] {
        let (status, answer) = send(
            &stack.client,
            method,
            runner.clone(),
            Some(&alice),
            None,
            &[("x-tenant-id", "alpha")],
        )
        .await;
        assert_eq!(status, 200, "{method}: {answer}");
    }
}

#[tokio::test]
async fn broken_answers_are_bad_gateway_and_relayed_answers_are_never_sniffed() {
    let stack = Stack::start(&[], |_| vec!["--upstream-timeout".into(), "2s".into()]).await;
    let upstream = RawUpstream::start().await;
    stack
        .route("projection", "proj-alpha", &upstream.url, "alpha")
        .await;
    let (alice, _) = stack
        .member("alice@example.com", &[("alpha", "tenant_member")])
        .await;
    until_allowed(&stack, &alice, "alpha").await;
    let ask = |view: &'static str| {
        stack
            .client
            .post(format!("{}/v1/query/raw-{view}", stack.data.http))
            .bearer_auth(&alice)
            .header("x-tenant-id", "alpha")
            .json(&json!({}))
            .send()
    };
    for view in ["status-600", "not-http", "two-lengths"] {
        let answer = ask(view).await.unwrap();
        assert_eq!(answer.status().as_u16(), 502, "{view}");
        assert!(answer.headers().get("retry-after").is_none(), "{view}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_gateway", "{view}: {body}");
    }
    let html = ask("html").await.unwrap();
    assert_eq!(html.status().as_u16(), 200);
    assert_eq!(html.headers()["x-content-type-options"], "nosniff");
    let reset = ask("reset").await.unwrap();
    assert_eq!(reset.status().as_u16(), 205);
    assert!(
        reset.bytes().await.unwrap().is_empty(),
        "a 205 carries no body"
    );
}
