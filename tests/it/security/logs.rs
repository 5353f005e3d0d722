//! No secret reaches the logs of the edge or of the admin API.

use gateway_tests::upstream;
use serde_json::json;

use super::{GENEROUS_LIMITS, until_allowed};
use crate::proxy::{PASSWORD, Stack, send};

/// T10.2 at the edge and in the admin API (the auth flows of one control plane have their
/// own test in `auth/logs.rs`): both planes at trace level, every credential that passes
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
