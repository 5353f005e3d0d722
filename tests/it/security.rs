//! The security battery: attacks and bad input against the real binaries, each case with
//! the refusal it must get and the standard it comes from. `docs/security.md` lists every
//! case of the battery, these and the ones that live with the feature they attack.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_tests::upstream;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::Authenticator;
use crate::proxy::{PASSWORD, START, Stack, send};

/// Limits high enough that the battery's own traffic never trips them (the abuse limits
/// have their own test in `auth.rs`).
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

/// `(status, error code)` of an answer.
fn refusal(answer: (u16, Value)) -> (u16, Option<String>) {
    let code = answer.1["error"]["code"].as_str().map(str::to_string);
    (answer.0, code)
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

/// Token forgeries beyond those of `proxy.rs` (alg none, HS256 with the public key, unknown
/// kid, tampered claims, expiry, audience, issuer, type claim, nbf) and token confusion
/// between the gateway's own credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_confused_credentials_are_refused_at_the_edge() {
    let (stack, node) = edge().await;
    let (client, data) = (&stack.client, &stack.data);
    let (token, _) = stack
        .member("holder@example.com", &[("acme", "tenant_member")])
        .await;
    until_allowed(&stack, &token).await;
    let query = format!("{}/v1/query/v", data.http);
    let acme = ("x-tenant-id", "acme");
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_string();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());

    // RFC 8725 §3.1/§3.10: a key the attacker embeds (jwk, jku, x5u) is never used; the
    // token is signed by the attacker's own Ed25519 key under our kid
    let attacker = gateway_core::signed::DocSigningKey::generate();
    let pem = attacker.to_pkcs8_pem().unwrap();
    let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let attacker_key = jsonwebtoken::EncodingKey::from_ed_der(
        &base64::engine::general_purpose::STANDARD
            .decode(der)
            .unwrap(),
    );
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let mut embedded = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    embedded.kid = Some(kid.clone());
    embedded.typ = Some("at+jwt".into());
    embedded.jku = Some("https://attacker.example/jwks.json".into());
    embedded.x5u = Some("https://attacker.example/cert.pem".into());
    let self_signed = jsonwebtoken::encode(&embedded, &claims, &attacker_key).unwrap();
    // a kid that is a path (or an injection) names no key
    let mut traversal = embedded.clone();
    traversal.kid = Some("../../../../dev/null".into());
    traversal.jku = None;
    traversal.x5u = None;
    let traversal = jsonwebtoken::encode(&traversal, &claims, &attacker_key).unwrap();

    // the gateway's other credentials, for type confusion (RFC 8725 §2.8, §3.11)
    let tokens = stack.signin_at_edge("holder@example.com").await;
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let (second, _) = stack.member("mfa-holder@example.com", &[]).await;
    let authed = |path: &str, body: Value| {
        send(
            client,
            "POST",
            format!("{}{path}", data.http),
            Some(&second),
            Some(body),
            &[],
        )
    };
    let (status, enrol) = authed("/v1/auth/mfa/totp/enroll", json!({})).await;
    assert_eq!(status, 200, "{enrol}");
    let mut app = Authenticator::new(enrol["secret"].as_str().unwrap());
    let (status, _) = authed(
        "/v1/auth/mfa/totp/confirm",
        json!({"code": app.next_code()}),
    )
    .await;
    assert_eq!(status, 200);
    let challenge = stack.signin_at_edge("mfa-holder@example.com").await;
    let mfa_token = challenge["mfa_token"].as_str().unwrap().to_string();

    type HeaderCase<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let header_cases: Vec<HeaderCase> = vec![
        (
            "ASVS 9.1.1 / RFC 8725 §3.1: jku and x5u ignored, signature by a foreign key",
            vec![("authorization", format!("Bearer {self_signed}"))],
            "bad_signature",
        ),
        (
            "RFC 8725 §3.10: kid is a lookup key, never a path",
            vec![("authorization", format!("Bearer {traversal}"))],
            "unknown_key",
        ),
        (
            "RFC 6750 §2.1: an empty bearer credential",
            vec![("authorization", "Bearer ".into())],
            "malformed_token",
        ),
        (
            "RFC 6750 §2.1: another scheme (Basic) is not a bearer token",
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            "malformed_token",
        ),
        (
            "RFC 8725 §2.1: a JWE-shaped (five-part) token",
            vec![(
                "authorization",
                format!(
                    "Bearer {}.{}.{}.{}.{}",
                    parts[0], "", parts[1], "", parts[2]
                ),
            )],
            "malformed_token",
        ),
        (
            "RFC 7515 §5.2: a header that is not JSON",
            vec![(
                "authorization",
                format!(
                    "Bearer {}.{}.{}",
                    URL_SAFE_NO_PAD.encode(b"{not json"),
                    parts[1],
                    parts[2]
                ),
            )],
            "malformed_token",
        ),
        (
            "RFC 7515 §5.2: a header that is JSON but not an object",
            vec![(
                "authorization",
                format!("Bearer {}.{}.{}", b64(&json!([kid])), parts[1], parts[2]),
            )],
            "malformed_token",
        ),
        (
            "RFC 9110 §11.6.2: two Authorization headers are ambiguous",
            vec![
                ("authorization", format!("Bearer {token}")),
                ("authorization", format!("Bearer {token}")),
            ],
            "ambiguous_token",
        ),
        (
            "RFC 8725 §3.11: a refresh token is not an access token",
            vec![("authorization", format!("Bearer {refresh}"))],
            "malformed_token",
        ),
        (
            "RFC 8725 §3.11: an MFA challenge is not an access token",
            vec![("authorization", format!("Bearer {mfa_token}"))],
            "malformed_token",
        ),
    ];
    for (case, headers, reason) in header_cases {
        let mut request = client.post(&query).header(acme.0, acme.1).json(&json!({}));
        for (name, value) in &headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (401, Some(reason)),
            "{case}: {answer}"
        );
    }

    // RFC 9700 §2.1 / RFC 6750 §2.3: a token in the query string is never read
    assert_eq!(
        refusal(
            send(
                client,
                "POST",
                format!("{query}?access_token={token}"),
                None,
                Some(json!({})),
                &[acme],
            )
            .await
        ),
        (401, Some("missing_token".into())),
        "token in the query string"
    );
    // confusion the other way round: each credential only where it belongs
    let flows = [
        (
            "an access token is not a refresh token",
            "/v1/auth/refresh",
            json!({"refresh_token": token}),
            "invalid_refresh_token",
        ),
        (
            "an MFA challenge is not a refresh token",
            "/v1/auth/refresh",
            json!({"refresh_token": mfa_token}),
            "invalid_refresh_token",
        ),
        (
            "a refresh token is not an MFA challenge",
            "/v1/auth/mfa/verify",
            json!({"mfa_token": refresh, "code": "123456"}),
            "invalid_mfa_token",
        ),
        (
            "an access token is not an MFA challenge",
            "/v1/auth/mfa/verify",
            json!({"mfa_token": token, "code": "123456"}),
            "invalid_mfa_token",
        ),
    ];
    for (case, path, body, reason) in flows {
        assert_eq!(
            refusal(
                send(
                    client,
                    "POST",
                    format!("{}{path}", data.http),
                    None,
                    Some(body),
                    &[]
                )
                .await
            ),
            (401, Some(reason.into())),
            "{case}"
        );
    }
    // RFC 6238 §5.2: codes of the wrong shape are bad input; a code three steps old is refused
    let verify = format!("{}/v1/auth/mfa/verify", data.http);
    for code in ["12345", "1234567", "abcdef", "12 456", "", "１２３４５６"] {
        let (status, answer) = send(
            client,
            "POST",
            verify.clone(),
            None,
            Some(json!({"mfa_token": mfa_token, "code": code})),
            &[],
        )
        .await;
        assert!(
            matches!(status, 400 | 401),
            "code {code:?}: {status} {answer}"
        );
    }
    let secret = totp_rs::Secret::try_from_base32(enrol["secret"].as_str().unwrap()).unwrap();
    let totp = totp_rs::Builder::new()
        .with_secret(secret.as_bytes().to_vec())
        .build()
        .unwrap();
    let stale = totp.generate((gateway_core::unix_now() as u64 / 30 - 3) * 30);
    // the challenge may have been spent by the shape probes above: a fresh one
    let challenge = stack.signin_at_edge("mfa-holder@example.com").await;
    assert_eq!(
        refusal(
            send(
                client,
                "POST",
                verify.clone(),
                None,
                Some(json!({"mfa_token": challenge["mfa_token"], "code": stale.to_string()})),
                &[],
            )
            .await
        ),
        (401, Some("invalid_mfa_code".into())),
        "a code from 90 s ago"
    );
    assert!(
        node.node.recorded().iter().all(|r| r.path == "/v1/query/v"),
        "only the warm-up queries reached the upstream"
    );
}

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
        ("cookie", "session=stolen"),
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
    for name in [
        "authorization",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "x-gateway-internal",
        "cookie",
    ] {
        assert_eq!(seen.header(name), None, "{name} was passed on");
    }
}

/// Bodies built to hurt parsers or hashers: refused in the envelope, nothing written, the
/// planes still answer afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_refused_change_nothing_and_the_planes_stay_up() {
    let (stack, _node) = edge().await;
    let (client, data) = (&stack.client, &stack.data);
    let signup = format!("{}/v1/auth/signup", data.http);
    let post_raw = |body: Vec<u8>, content_type: &'static str| {
        let signup = signup.clone();
        async move {
            let response = client
                .post(signup)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            (status, answer["error"]["code"].as_str().map(str::to_string))
        }
    };
    let email = "bomb@example.com";
    let depth = format!(
        "{{\"email\":\"{email}\",\"password\":\"{PASSWORD}\",\"x\":{}1{}}}",
        "[".repeat(1500),
        "]".repeat(1500)
    );
    let duplicate = format!(
        "{{\"email\":\"{email}\",\"email\":\"admin@example.com\",\"password\":\"{PASSWORD}\"}}"
    );
    let mut invalid_utf8 = format!("{{\"email\":\"{email}\",\"password\":\"").into_bytes();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc0, 0xaf]);
    invalid_utf8.extend_from_slice(b"\"}");
    let wide = format!(
        "{{\"email\":\"{email}\",\"password\":\"{PASSWORD}\",\"pad\":\"{}\"}}",
        "x".repeat(8 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, &'static str, u16, &str)> = vec![
        (
            "ASVS 13.1: JSON nested 1500 deep",
            depth.into_bytes(),
            "application/json",
            400,
            "json_too_deep",
        ),
        (
            "RFC 8259 §4 / CWE-436: a duplicated member is ambiguous",
            duplicate.into_bytes(),
            "application/json",
            400,
            "invalid_body",
        ),
        (
            "RFC 8259 §8.1: invalid UTF-8",
            invalid_utf8,
            "application/json",
            400,
            "malformed_json",
        ),
        (
            "ASVS 13.1: a body over the edge's limit",
            wide.into_bytes(),
            "application/json",
            413,
            "payload_too_large",
        ),
        (
            "ASVS 13.1: JSON sent as another media type",
            format!("{{\"email\":\"{email}\",\"password\":\"{PASSWORD}\"}}").into_bytes(),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
    ];
    for (case, body, content_type, status, code) in cases {
        assert_eq!(
            post_raw(body, content_type).await,
            (status, Some(code.to_string())),
            "{case}"
        );
    }
    // SP 800-63B §3.1.1.2 and ASVS 6.2: length bounds, a blocklist, every character allowed
    let long = "correct horse ".repeat(20);
    let passwords: Vec<(&str, String, u16, Option<&str>)> = vec![
        (
            "shorter than 15 (single-factor minimum)",
            "fourteen chars".into(),
            400,
            Some("password_too_short"),
        ),
        (
            "a common password",
            "Password1234567".into(),
            400,
            Some("password_too_common"),
        ),
        (
            "over the hashing bound (DoS)",
            "x".repeat(3000),
            400,
            Some("password_too_long"),
        ),
        (
            "280 characters",
            long.clone(),
            400,
            Some("password_too_long"),
        ),
        (
            "60 characters, spaces and non-ASCII are allowed",
            "Ünïcödé pass phrase with spaces — 日本語も使える 1234567890 abcdefg".into(),
            201,
            None,
        ),
    ];
    for (i, (case, password, status, code)) in passwords.into_iter().enumerate() {
        let (got, answer) = send(
            client,
            "POST",
            signup.clone(),
            None,
            Some(json!({"email": format!("pw{i}@example.com"), "password": password})),
            &[],
        )
        .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, code),
            "{case}: {answer}"
        );
    }
    // CWE-93: a line break in an address would inject mail headers
    for address in [
        "victim@example.com\r\nBcc: all@example.com",
        "victim@example.com\nx",
        "<script>@example.com",
        "a@b",
        "",
    ] {
        let (got, answer) = send(
            client,
            "POST",
            signup.clone(),
            None,
            Some(json!({"email": address, "password": PASSWORD})),
            &[],
        )
        .await;
        assert_eq!(got, 400, "{address:?}: {answer}");
    }
    // nothing was written: the address of every refused body is still free, and the planes
    // answer
    let (status, answer) = send(
        client,
        "POST",
        signup.clone(),
        None,
        Some(json!({"email": email, "password": PASSWORD})),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    for url in [
        format!("{}/ready", data.http),
        format!("{}/ready", stack.base),
    ] {
        assert_eq!(
            client.get(&url).send().await.unwrap().status().as_u16(),
            200
        );
    }
}

/// ASVS 6.3.7 / SP 800-63B §5.2.2: an attacker learns nothing about which accounts exist
/// from sign-in or password recovery: not from the status, the body or the time taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_and_recovery_do_not_reveal_which_accounts_exist() {
    let (stack, _node) = edge().await;
    let (client, data) = (&stack.client, &stack.data);
    stack.member("known@example.com", &[]).await;
    // the body without its per-request correlation id
    let answer = |path: &'static str, body: Value| async move {
        let (status, mut answer) = send(
            client,
            "POST",
            format!("{}{path}", data.http),
            None,
            Some(body),
            &[],
        )
        .await;
        if let Some(error) = answer.get_mut("error").and_then(Value::as_object_mut) {
            error.remove("correlation_id");
        }
        (status, answer)
    };
    let known = answer(
        "/v1/auth/signin",
        json!({"email": "known@example.com", "password": "not the password"}),
    )
    .await;
    let unknown = answer(
        "/v1/auth/signin",
        json!({"email": "nobody@example.com", "password": "not the password"}),
    )
    .await;
    assert_eq!(known.0, 401);
    assert_eq!(known, unknown, "sign-in answers alike");
    let known = answer("/v1/auth/forgot", json!({"email": "known@example.com"})).await;
    let unknown = answer("/v1/auth/forgot", json!({"email": "nobody@example.com"})).await;
    assert!((200..300).contains(&known.0), "{known:?}");
    assert_eq!(known, unknown, "recovery answers alike");

    // timing: an unknown account costs a password hash too. The medians of interleaved
    // attempts must be within 3x of each other; skipping the hash would be ~100x faster.
    let mut times = (Vec::new(), Vec::new());
    for i in 0..9 {
        for (email, into) in [
            ("known@example.com", &mut times.0),
            ("nobody@example.com", &mut times.1),
        ] {
            let started = Instant::now();
            let (status, _) = answer(
                "/v1/auth/signin",
                json!({"email": email, "password": format!("wrong guess {i}")}),
            )
            .await;
            into.push(started.elapsed());
            assert_eq!(status, 401);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (known, unknown) = (median(&mut times.0), median(&mut times.1));
    let ratio = known.as_secs_f64() / unknown.as_secs_f64();
    assert!(
        (1.0 / 3.0..3.0).contains(&ratio),
        "sign-in time reveals the account: known {known:?}, unknown {unknown:?}"
    );
}

/// T10.2 at the edge and in the admin API (the auth flows of one control plane have their
/// own test in `auth.rs`): both planes at trace level, every credential that passes
/// through them searched for in everything they wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_of_the_edge_or_the_admin_api() {
    let verbose = ["--log", "trace", "--log-format", "json"];
    let stack = Stack::start(&[&GENEROUS_LIMITS[..], &verbose[..]].concat(), |base| {
        let mut flags = vec!["--control-plane-url".to_string(), base.to_string()];
        flags.extend(verbose.iter().map(|f| f.to_string()));
        flags
    })
    .await;
    let node = upstream::start(
        "shard-l",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("projection", "l1", &node.http_url(), "acme")
        .await;
    let (client, data) = (&stack.client, &stack.data);
    let mut secrets = vec![PASSWORD.to_string(), stack.admin.clone()];
    let edge = |path: &str| format!("{}{path}", data.http);

    // the auth flows through the data plane, and traffic with bearer tokens
    let (token, user_id) = stack
        .member("logged@example.com", &[("acme", "tenant_member")])
        .await;
    secrets.push(token.clone());
    until_allowed(&stack, &token).await;
    let tokens = stack.signin_at_edge("logged@example.com").await;
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    secrets.push(tokens["access_token"].as_str().unwrap().to_string());
    secrets.push(refresh.clone());
    let (status, rotated) = send(
        client,
        "POST",
        edge("/v1/auth/refresh"),
        None,
        Some(json!({"refresh_token": refresh})),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let fresh = rotated["access_token"].as_str().unwrap().to_string();
    secrets.push(fresh.clone());
    secrets.push(rotated["refresh_token"].as_str().unwrap().to_string());
    let wrong = "not my passphrase at all";
    secrets.push(wrong.into());
    let (status, _) = send(
        client,
        "POST",
        edge("/v1/auth/signin"),
        None,
        Some(json!({"email": "logged@example.com", "password": wrong})),
        &[],
    )
    .await;
    assert_eq!(status, 401);
    for bearer in [&token, &fresh] {
        let (status, _) = send(
            client,
            "POST",
            edge("/v1/query/v"),
            Some(bearer),
            Some(json!({})),
            &[("x-tenant-id", "acme")],
        )
        .await;
        assert_eq!(status, 200);
    }
    // a forged token (a valid one with its signature changed) is refused, and not logged
    let forged = format!("{}AAAA", &token[..token.len() - 4]);
    secrets.push(forged.clone());
    let (status, _) = send(
        client,
        "POST",
        edge("/v1/query/v"),
        Some(&forged),
        Some(json!({})),
        &[("x-tenant-id", "acme")],
    )
    .await;
    assert_eq!(status, 401);

    // the admin flows that carry secrets
    let made = "granite heron above still lakes";
    secrets.push(made.into());
    stack
        .admin(
            "POST",
            "/admin/users",
            json!({"email": "made@example.com", "password": made}),
        )
        .await;
    let set = "copper kettle singing loudly tonight";
    secrets.push(set.into());
    stack
        .admin(
            "PUT",
            &format!("/admin/users/{user_id}/password"),
            json!({"password": set}),
        )
        .await;
    let account = stack
        .admin(
            "POST",
            "/admin/service-accounts",
            json!({"name": "ingest", "tenant_id": "acme"}),
        )
        .await;
    let id = account["id"].as_str().unwrap();
    secrets.push(account["client_secret"].as_str().unwrap().to_string());
    let rotated = stack
        .admin(
            "POST",
            &format!("/admin/service-accounts/{id}/rotate"),
            json!({"overlap_seconds": 60}),
        )
        .await;
    let client_secret = rotated["client_secret"].as_str().unwrap().to_string();
    secrets.push(client_secret.clone());
    let (status, service) = send(
        client,
        "POST",
        edge("/v1/auth/token"),
        None,
        Some(json!({"grant_type": "client_credentials", "client_id": id, "client_secret": client_secret})),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{service}");
    secrets.push(service["access_token"].as_str().unwrap().to_string());
    stack.admin("POST", "/admin/keys/rotate", json!({})).await;
    // key material the planes read
    for path in [stack.keys.kek_path(), stack.keys.signing_path()] {
        for line in std::fs::read_to_string(path).unwrap().lines() {
            if !line.starts_with("-----") && !line.trim().is_empty() {
                secrets.push(line.trim().to_string());
            }
        }
    }

    for (plane, process) in [("control", &stack.control), ("data", &stack.data_process)] {
        let logs = [process.logs(), process.stderr()].concat().join("\n");
        assert!(logs.lines().count() > 50, "{plane}: trace logging is on");
        assert!(logs.contains("request finished"), "{plane}");
        for secret in &secrets {
            assert!(secret.len() >= 8, "too short to search for: {secret:?}");
            // JWTs are also looked for by their signature alone
            let mut needles = vec![secret.as_str()];
            if secret.matches('.').count() == 2 && secret.starts_with("ey") {
                needles.push(secret.rsplit('.').next().unwrap());
            }
            for needle in needles {
                assert!(
                    !logs.contains(needle),
                    "{plane}: a secret was logged: {needle}"
                );
            }
        }
    }
}

/// `(name, value, attributes)` of every `set-cookie` of `response`.
fn set_cookies(response: &reqwest::Response) -> Vec<(String, String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let text = v.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            (name.into(), value.into(), attributes.to_string())
        })
        .collect()
}

/// ASVS 7.1 / 3.3 and the OWASP CSRF cheat sheet: browser sessions keep their tokens in
/// `__Host-` cookies that scripts cannot read (`HttpOnly; Secure; SameSite=Strict`), and a
/// cookie never authorizes a change without the CSRF token (double submit) or from a
/// cross-site fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sessions_use_strict_cookies_and_need_the_csrf_token_for_changes() {
    let (stack, node) = edge().await;
    let (client, data) = (&stack.client, &stack.data);
    let (bearer, _) = stack
        .member("browser@example.com", &[("acme", "tenant_member")])
        .await;
    until_allowed(&stack, &bearer).await;
    let signin = client
        .post(format!("{}/v1/auth/signin", data.http))
        .header("x-token-delivery", "cookie")
        .json(&json!({"email": "browser@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(signin.status(), 200);
    let cookies = set_cookies(&signin);
    let body: Value = signin.json().await.unwrap();
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none());
    let csrf = body["csrf_token"].as_str().unwrap().to_string();
    let names: Vec<&str> = cookies.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["__Host-gw_access", "__Host-gw_refresh", "__Host-gw_csrf"]
    );
    for (name, _, attributes) in &cookies {
        for attribute in ["Path=/", "Secure", "SameSite=Strict"] {
            assert!(attributes.contains(attribute), "{name}: {attributes}");
        }
        assert!(!attributes.contains("Domain"), "{name}: {attributes}");
        assert_eq!(
            attributes.contains("HttpOnly"),
            name != "__Host-gw_csrf",
            "{name}: {attributes}"
        );
    }
    assert_eq!(cookies[2].1, csrf);
    let jar = |cookies: &[(String, String, String)]| {
        cookies
            .iter()
            .map(|(n, v, _)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let session = jar(&cookies);
    let query = |cookie: String, extra: Vec<(&'static str, String)>| {
        let mut request = client
            .post(format!("{}/v1/query/v", data.http))
            .header("cookie", cookie)
            .header("x-tenant-id", "acme")
            .json(&json!({}));
        for (name, value) in extra {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body["error"]["code"].as_str().map(str::to_string))
        }
    };
    // the cookie and its CSRF token: served
    assert_eq!(
        query(session.clone(), vec![("x-csrf-token", csrf.clone())]).await,
        (200, None)
    );
    let refused = (403, Some("csrf_failed".to_string()));
    type CsrfCase<'a> = (&'a str, String, Vec<(&'static str, String)>);
    let cases: Vec<CsrfCase> = vec![
        ("no CSRF header", session.clone(), vec![]),
        (
            "a CSRF header of another session",
            session.clone(),
            vec![("x-csrf-token", "A".repeat(43))],
        ),
        (
            "the right token from a cross-site fetch",
            session.clone(),
            vec![
                ("x-csrf-token", csrf.clone()),
                ("sec-fetch-site", "cross-site".into()),
            ],
        ),
        (
            "a second (tossed) CSRF cookie",
            format!("{session}; __Host-gw_csrf={}", "B".repeat(43)),
            vec![("x-csrf-token", csrf.clone())],
        ),
        (
            "the header alone, no CSRF cookie",
            jar(&cookies[..1]),
            vec![("x-csrf-token", csrf.clone())],
        ),
    ];
    for (case, cookie, extra) in cases {
        assert_eq!(query(cookie, extra).await, refused, "{case}");
    }
    // reading needs no CSRF token: a GET on the runner passthrough authenticates by cookie
    // (and is then refused for lack of runner.admin, not for lack of a credential)
    let response = client
        .get(format!("{}/admin/runner/workflows", data.http))
        .header("cookie", session.clone())
        .header("x-tenant-id", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "no_matching_right"
    );

    // refresh by cookie: CSRF required, then new cookies; the old refresh cookie is spent
    let refresh = |cookie: String, token: Option<String>| {
        let mut request = client
            .post(format!("{}/v1/auth/refresh", data.http))
            .header("cookie", cookie)
            .header("x-token-delivery", "cookie")
            .json(&json!({}));
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        request.send()
    };
    let response = refresh(session.clone(), None).await.unwrap();
    assert_eq!(response.status(), 403);
    let response = refresh(session.clone(), Some(csrf.clone())).await.unwrap();
    assert_eq!(response.status(), 200);
    let renewed = set_cookies(&response);
    let renewed_csrf = response.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(renewed[0].1, cookies[0].1, "a new access token");
    assert_ne!(renewed[1].1, cookies[1].1, "a rotated refresh token");
    let renewed_session = jar(&renewed);
    assert_eq!(
        query(
            renewed_session.clone(),
            vec![("x-csrf-token", renewed_csrf.clone())]
        )
        .await,
        (200, None)
    );

    // sign-out by cookie clears the cookies
    let response = client
        .post(format!("{}/v1/auth/signout", data.http))
        .header("cookie", renewed_session.clone())
        .header("x-csrf-token", renewed_csrf.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let cleared = set_cookies(&response);
    assert_eq!(cleared.len(), 3);
    assert!(
        cleared
            .iter()
            .all(|(_, value, attributes)| value.is_empty() && attributes.contains("Max-Age=0"))
    );
    // and its refresh token is dead
    let response = refresh(renewed_session, Some(renewed_csrf)).await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        node.node
            .recorded()
            .iter()
            .all(|r| r.header("cookie").is_none() && r.header("x-csrf-token").is_none()),
        "browser credentials never reach an upstream"
    );
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
