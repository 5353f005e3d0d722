//! Forged and confused credentials, and sign-in and recovery that reveal no account.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::{edge, until_allowed};
use crate::auth::Authenticator;
use crate::proxy::send;

/// `(status, error code)` of an answer.
fn refusal(answer: (u16, Value)) -> (u16, Option<String>) {
    let code = answer.1["error"]["code"].as_str().map(str::to_string);
    (answer.0, code)
}

/// Token forgeries beyond those of `proxy/refusals.rs` (alg none, HS256 with the public
/// key, unknown kid, tampered claims, expiry, audience, issuer, type claim, nbf) and token
/// confusion between the gateway's own credentials.
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
