//! Signed identity for upstreams: with `--assertion-signing-key-file` every forwarded call
//! carries `x-gateway-assertion`, which the reference upstream verifies with
//! `jsonwebtoken` against the keys the data plane publishes. Calls that skip the gateway
//! with no, forged, replayed, expired or re-targeted assertions are refused there.

use std::time::{Duration, Instant};

use base64::Engine;
use gateway_tests::upstream::{self, AssertionCheck};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

use super::{START, Stack, send};

/// A P-256 PKCS#8 key: (DER, PEM).
fn p256_key() -> (Vec<u8>, String) {
    let rng = ring::rand::SystemRandom::new();
    let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .unwrap()
        .as_ref()
        .to_vec();
    let body = base64::engine::general_purpose::STANDARD.encode(&der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    (der, pem)
}

/// An assertion with `claims`, signed by `der` under `kid`.
fn mint(der: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.typ = Some("gateway-assertion+jwt".into());
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ec_der(der),
    )
    .unwrap()
}

/// A call straight to the node (skipping the gateway) with `headers`.
async fn direct(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = client.post(url).json(&json!({}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_verify_the_gateway_assertion_and_refuse_calls_without_a_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let (der, pem) = p256_key();
    let key_path = dir.path().join("assertion.pem");
    std::fs::write(&key_path, pem).unwrap();
    let key_arg = key_path.to_string_lossy().into_owned();
    let stack = Stack::start(&[], |_| {
        vec!["--assertion-signing-key-file".into(), key_arg.clone()]
    })
    .await;
    let jwks_url = format!(
        "{}/.well-known/gateway-assertion-jwks.json",
        stack.data.http
    );
    let node = upstream::start_with(
        "shard-asserted",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        Some(AssertionCheck::new(
            &jwks_url,
            "cloudlysis-gateway",
            &["projection:p1", "runner:r1", "aggregate:a1"],
        )),
    )
    .await
    .unwrap();
    stack
        .route("projection", "p1", &node.http_url(), "acme")
        .await;
    stack.route("runner", "r1", &node.http_url(), "acme").await;
    stack
        .route("aggregate", "a1", &node.grpc_url(), "acme")
        .await;
    let (token, member) = stack
        .member("asserted@example.com", &[("acme", "tenant_admin")])
        .await;

    // the published key set: one ES256 key, no private part
    let jwks: Value = stack
        .client
        .get(&jwks_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    assert!(jwks["keys"][0].get("d").is_none(), "{jwks}");

    // through the gateway: verified by the node, even when the client sends its own
    let query = format!("{}/v1/query/v", stack.data.http);
    let deadline = Instant::now() + START;
    let answer = loop {
        let (status, answer) = send(
            &stack.client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({})),
            &[
                ("x-tenant-id", "acme"),
                ("x-gateway-assertion", "made.up.by-the-client"),
            ],
        )
        .await;
        if status == 200 {
            break answer;
        }
        assert!(Instant::now() < deadline, "{status} {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let claims = &answer["assertion"];
    assert_eq!(claims["sub"], member, "{answer}");
    assert_eq!(claims["tid"], "acme");
    assert_eq!(claims["aud"], "projection:p1");
    assert_eq!(claims["htm"], "POST");
    assert_eq!(claims["htu"], "/v1/query/v");
    assert!(claims["rgt"].as_str().is_some_and(|d| d.len() == 43));
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 30);
    // the runner passthrough, with its query string
    let (status, runner) = send(
        &stack.client,
        "GET",
        format!("{}/admin/runner/jobs?state=open", stack.data.http),
        Some(&token),
        None,
        &[("x-tenant-id", "acme")],
    )
    .await;
    assert_eq!(status, 200, "{runner}");
    assert_eq!(runner["assertion"]["aud"], "runner:r1");
    assert_eq!(runner["assertion"]["htu"], "/admin/runner/jobs?state=open");
    assert_eq!(runner["assertion"]["htm"], "GET");

    // a command, forwarded over gRPC: the assertion travels as metadata
    let (status, answer) = send(
        &stack.client,
        "POST",
        format!("{}/v1/commands/order/o-1", stack.data.http),
        Some(&token),
        Some(json!({"command_type": "AddLine", "payload": {"sku": "y"}})),
        &[("x-tenant-id", "acme")],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let command = node
        .node
        .recorded()
        .into_iter()
        .rfind(|r| r.protocol == "grpc")
        .unwrap();
    assert!(command.header("x-gateway-assertion").is_some());

    // what the node received from the gateway, to replay it straight to the node
    let received = node
        .node
        .recorded()
        .into_iter()
        .rfind(|r| r.path == "/v1/query/v")
        .unwrap();
    let header = |name: &str| received.header(name).unwrap().to_string();
    let assertion = header("x-gateway-assertion");
    let (tenant, principal, correlation) = (
        header("x-tenant-id"),
        header("x-principal-id"),
        header("x-correlation-id"),
    );
    let url = format!("{}/v1/query/v", node.http_url());
    let same = [
        ("x-tenant-id", tenant.as_str()),
        ("x-principal-id", principal.as_str()),
        ("x-correlation-id", correlation.as_str()),
        ("x-gateway-assertion", assertion.as_str()),
    ];
    let refused = |answer: &Value, why: &str| {
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{why}: {answer}");
    };
    // replayed as it was
    let (status, answer) = direct(&stack.client, &url, &same).await;
    assert_eq!(status, 401);
    refused(&answer, "replayed");
    // the same assertion for another path, tenant or principal
    let (status, answer) = direct(
        &stack.client,
        &format!("{}/v1/query/other", node.http_url()),
        &same,
    )
    .await;
    assert_eq!(status, 401);
    refused(&answer, "htu");
    let mut other_tenant = same;
    other_tenant[0] = ("x-tenant-id", "globex");
    let (status, answer) = direct(&stack.client, &url, &other_tenant).await;
    assert_eq!(status, 401);
    refused(&answer, "tid");
    let mut other_principal = same;
    other_principal[1] = ("x-principal-id", "usr_someone_else");
    let (status, answer) = direct(&stack.client, &url, &other_principal).await;
    assert_eq!(status, 401);
    refused(&answer, "sub");
    // none at all
    let (status, answer) = direct(&stack.client, &url, &same[..3]).await;
    assert_eq!(status, 401);
    refused(&answer, "no assertion");

    // minted outside the gateway: claims that would pass, under the gateway's kid
    let now = gateway_core::unix_now();
    let claims = |jti: &str, iat: i64, exp: i64| {
        json!({
            "iss": "cloudlysis-gateway", "aud": "projection:p1", "sub": principal,
            "tid": tenant, "rgt": "x", "rev": 1, "htm": "POST", "htu": "/v1/query/v",
            "cid": correlation, "iat": iat, "exp": exp, "jti": jti,
        })
    };
    let (other_der, _) = p256_key();
    let forged = mint(&other_der, &kid, &claims("forged-1", now, now + 30));
    let mut with = same;
    with[3] = ("x-gateway-assertion", forged.as_str());
    let (status, answer) = direct(&stack.client, &url, &with).await;
    assert_eq!(status, 401);
    refused(&answer, "InvalidSignature");
    // with the real key: expired, for another shard, then valid (the check is not a
    // blanket refusal)
    let expired = mint(&der, &kid, &claims("real-1", now - 120, now - 60));
    with[3] = ("x-gateway-assertion", expired.as_str());
    let (status, answer) = direct(&stack.client, &url, &with).await;
    assert_eq!(status, 401);
    refused(&answer, "ExpiredSignature");
    let mut elsewhere = claims("real-2", now, now + 30);
    elsewhere["aud"] = json!("projection:p9");
    let elsewhere = mint(&der, &kid, &elsewhere);
    with[3] = ("x-gateway-assertion", elsewhere.as_str());
    let (status, answer) = direct(&stack.client, &url, &with).await;
    assert_eq!(status, 401);
    refused(&answer, "InvalidAudience");
    let valid = mint(&der, &kid, &claims("real-3", now, now + 30));
    with[3] = ("x-gateway-assertion", valid.as_str());
    let (status, answer) = direct(&stack.client, &url, &with).await;
    assert_eq!(status, 200, "{answer}");
}
