//! Hostile bodies: refused, nothing changed, the planes stay up.

use serde_json::{Value, json};

use super::edge;
use crate::proxy::{PASSWORD, send};

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

/// An HTTP/2 stream whose body stalls after a few bytes (here a gRPC call on the data
/// plane's gRPC listener): the body timeout ends it as on HTTP/1.1, instead of the stream
/// holding a handler for as long as the peer likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_body_is_cut_at_the_body_timeout() {
    use http_body_util::BodyExt;
    let stack =
        crate::proxy::Stack::start(&[], |_| vec!["--http-body-timeout".into(), "1s".into()]).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>>(
        );
    let (sender, receiver) = tokio::sync::mpsc::channel::<
        Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >(1);
    // a gRPC frame header announcing 100 bytes, then nothing more
    sender
        .send(Ok(http_body::Frame::data(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 100,
        ]))))
        .await
        .unwrap();
    let body =
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let request = http::Request::post(format!(
        "{}/aggregate.gateway.v1.CommandService/SubmitCommand",
        stack.data.grpc
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(body.boxed())
    .unwrap();
    let answered = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let response = client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let trailers = body
            .collect()
            .await
            .ok()
            .and_then(|b| b.trailers().cloned());
        (parts, trailers)
    })
    .await
    .expect("the stalled stream was still open after 20 s");
    let (parts, trailers) = answered;
    let status = parts
        .headers
        .get("grpc-status")
        .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")))
        .map(|v| v.to_str().unwrap().to_string());
    assert!(
        status.as_deref().is_some_and(|s| s != "0"),
        "an error status: {:?} {:?}",
        parts,
        trailers
    );
    drop(sender);
}
