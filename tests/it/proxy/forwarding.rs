//! Queries and commands authorized, routed and forwarded; runner, admin and auth routes forwarded.

use std::time::Duration;

use gateway_tests::upstream;
use serde_json::{Value, json};

use super::{PASSWORD, START, Stack, send};

/// A fresh access token of the reader of the query test.
async fn reader_token(client: &reqwest::Client, base: &str) -> String {
    let (_, answer) = send(
        client,
        "POST",
        format!("{base}/v1/auth/signin"),
        None,
        Some(json!({"email": "reader@example.com", "password": PASSWORD})),
        &[],
    )
    .await;
    answer["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_authenticated_authorized_routed_and_forwarded() {
    let stack = Stack::start(&[], |_| vec!["--upstream-timeout".into(), "2s".into()]).await;
    let node = upstream::start(
        "shard-q",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("projection", "proj-1", &node.http_url(), "acme")
        .await;
    let (token, user_id) = stack
        .member(
            "reader@example.com",
            &[("acme", "tenant_member"), ("globex", "tenant_member")],
        )
        .await;
    let (client, base, data, admin) = (&stack.client, &stack.base, &stack.data, &stack.admin);
    let query = format!("{}/v1/query/orders_by_customer", data.http);
    let acme = [("x-tenant-id", "acme")];

    // the mirrors converge: poll until the query goes through
    let deadline = std::time::Instant::now() + START;
    let answer = loop {
        let (status, answer) = send(
            client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({"customer": "c-1"})),
            &acme,
        )
        .await;
        if status == 200 {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "query never allowed: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(answer["node"], "shard-q");
    assert_eq!(answer["tenant_id"], "acme");
    assert_eq!(answer["query"]["customer"], "c-1");

    // correlation, trace and identity reach the upstream; a spoofed identity header does not
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _) = send(
        client,
        "POST",
        query.clone(),
        Some(&token),
        Some(json!({})),
        &[
            ("x-tenant-id", "acme"),
            ("x-correlation-id", "q-77"),
            ("traceparent", traceparent),
            ("x-principal-id", "usr_evil"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let seen = node.node.recorded().into_iter().last().unwrap();
    assert_eq!(seen.header("x-tenant-id"), Some("acme"));
    assert_eq!(seen.header("x-principal-id"), Some(user_id.as_str()));
    assert_eq!(seen.header("x-correlation-id"), Some("q-77"));
    assert!(
        seen.header("traceparent")
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    assert!(
        !seen
            .header("traceparent")
            .unwrap()
            .contains("00f067aa0ba902b7"),
        "the gateway is the parent"
    );

    // refusals, each in the envelope
    type Case<'a> = (
        Option<&'a str>,
        Vec<(&'a str, &'a str)>,
        String,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (None, acme.to_vec(), query.clone(), 401, "missing_token"),
        (
            Some("not.a.token"),
            acme.to_vec(),
            query.clone(),
            401,
            "malformed_token",
        ),
        (Some(admin), vec![], query.clone(), 400, "missing_tenant"),
        (
            Some(&token),
            vec![("x-tenant-id", "Not A Tenant")],
            query.clone(),
            400,
            "invalid_tenant",
        ),
        (
            Some(&token),
            vec![("x-tenant-id", "acme"), ("x-tenant-id", "globex")],
            query.clone(),
            400,
            "ambiguous_tenant",
        ),
        (
            Some(&token),
            vec![("x-tenant-id", "initech")],
            query.clone(),
            403,
            "not_tenant_member",
        ),
        (
            Some(&token),
            vec![("x-tenant-id", "globex")],
            query.clone(),
            404,
            "tenant_not_routed",
        ),
        (
            Some(&token),
            acme.to_vec(),
            format!("{}/v1/query/a%2Fb", data.http),
            400,
            "invalid_path",
        ),
    ];
    for (token, headers, url, status, code) in cases {
        let (got, answer) = send(
            client,
            "POST",
            url.clone(),
            token,
            Some(json!({})),
            &headers,
        )
        .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{url} {headers:?}: {answer}"
        );
        assert!(answer["error"]["correlation_id"].is_string());
    }

    // global sign-out reaches the data plane: the old token is refused (poll with a deadline)
    let sign_out_everywhere = |token: String, round: &'static str| {
        let query = query.clone();
        async move {
            let (status, _) = send(
                client,
                "POST",
                format!("{base}/v1/auth/signout"),
                Some(&token),
                Some(json!({"all": true})),
                &[],
            )
            .await;
            assert_eq!(status, 204, "{round}");
            let deadline = std::time::Instant::now() + START;
            loop {
                let (status, answer) = send(
                    client,
                    "POST",
                    query.clone(),
                    Some(&token),
                    Some(json!({})),
                    &acme,
                )
                .await;
                if status == 401 && answer["error"]["code"] == "token_revoked" {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{round}: sign-out not enforced: {status} {answer}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    sign_out_everywhere(token.clone(), "first sign-out").await;
    // sign in and sign out everywhere again, quickly: a token issued in the same second as
    // the previous sign-out carries the next second as iat, and the next sign-out must
    // refuse it as well (it once did not: the data plane knows no sessions, only
    // tokens_valid_after)
    for round in ["second sign-out", "third sign-out", "fourth sign-out"] {
        let again = reader_token(client, base).await;
        sign_out_everywhere(again, round).await;
    }

    // the upstream goes away: a typed 503, not a hang
    let fresh = reader_token(client, base).await;
    drop(node);
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, answer) = send(
            client,
            "POST",
            query.clone(),
            Some(&fresh),
            Some(json!({})),
            &acme,
        )
        .await;
        if status == 503 {
            assert_eq!(answer["error"]["code"], "upstream_unavailable");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upstream outage not reported: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_to_the_aggregate_shard_over_grpc_and_http_alike() {
    use gateway_proto::aggregate::v1::SubmitCommandRequest;
    use gateway_proto::aggregate::v1::command_service_client::CommandServiceClient;
    let stack = Stack::start(&[], |_| vec![]).await;
    let node = upstream::start(
        "shard-c",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("aggregate", "agg-1", &node.grpc_url(), "acme")
        .await;
    stack
        .admin(
            "POST",
            "/admin/roles",
            json!({"name": "order_writer", "rights": ["command.submit:order"]}),
        )
        .await;
    let (token, user_id) = stack
        .member("writer@example.com", &[("acme", "order_writer")])
        .await;
    let (client, data) = (&stack.client, &stack.data);

    let mut grpc = CommandServiceClient::connect(data.grpc.clone())
        .await
        .unwrap();
    let command = |id: &str,
                   aggregate_type: &str,
                   expected: Option<u64>,
                   tenant: &str,
                   token: Option<&str>| {
        let mut request = tonic::Request::new(SubmitCommandRequest {
            aggregate_type: aggregate_type.into(),
            aggregate_id: "o-1".into(),
            command_type: "PlaceOrder".into(),
            command_id: id.into(),
            payload: br#"{"sku":"x"}"#.to_vec(),
            content_type: "application/json".into(),
            expected_version: expected,
            metadata: Default::default(),
        });
        request
            .metadata_mut()
            .insert("x-tenant-id", tenant.parse().unwrap());
        request
            .metadata_mut()
            .insert("x-correlation-id", "cmd-1".parse().unwrap());
        // end-to-end metadata crosses the gateway; forged identity does not
        request
            .metadata_mut()
            .insert("x-echo", "round-trip".parse().unwrap());
        request
            .metadata_mut()
            .insert("x-principal-id", "usr_forged".parse().unwrap());
        request.metadata_mut().insert_bin(
            "x-blob-bin",
            tonic::metadata::MetadataValue::from_bytes(&[0, 1, 255]),
        );
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };
    // T6.1: forwarded with tenant metadata, events returned (poll until the mirrors converge)
    let deadline = std::time::Instant::now() + START;
    let first = loop {
        match grpc
            .submit_command(command("c-1", "order", Some(0), "acme", Some(&token)))
            .await
        {
            Ok(answer) => {
                // the aggregate's answer metadata comes back, the gateway's stamp on top
                let metadata = answer.metadata();
                assert_eq!(metadata.get("x-echo").unwrap(), "round-trip");
                assert_eq!(metadata.get("x-aggregate-node").unwrap(), "shard-c");
                assert_eq!(metadata.get("x-correlation-id").unwrap(), "cmd-1");
                break answer.into_inner();
            }
            Err(status) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "command never accepted: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    assert_eq!(first.aggregate_version, 1);
    assert_eq!(first.events[0].event_type, "PlaceOrder");
    assert_eq!(first.events[0].metadata["tenant_id"], "acme");
    let seen = node.node.recorded().into_iter().last().unwrap();
    assert_eq!(seen.header("x-tenant-id"), Some("acme"));
    assert_eq!(seen.header("x-principal-id"), Some(user_id.as_str()));
    assert_eq!(seen.header("x-correlation-id"), Some("cmd-1"));
    assert!(seen.header("traceparent").is_some());
    assert_eq!(seen.header("x-echo"), Some("round-trip"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the token stays at the gateway"
    );

    // refusals map to gRPC codes; domain errors of the aggregate pass through
    let cases = [
        (
            command("c-2", "order", None, "acme", None),
            tonic::Code::Unauthenticated,
        ),
        (
            command("c-3", "invoice", None, "acme", Some(&token)),
            tonic::Code::PermissionDenied,
        ),
        (
            command("c-4", "order", None, "globex", Some(&token)),
            tonic::Code::PermissionDenied,
        ),
        (
            command("c-5", "order", Some(0), "acme", Some(&token)),
            tonic::Code::FailedPrecondition,
        ),
    ];
    for (request, code) in cases {
        let status = grpc.submit_command(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }

    // T6.2: the HTTP wrapper answers the same shape; the gateway supplies a command_id
    let (status, answer) = send(
        client,
        "POST",
        format!("{}/v1/commands/order/o-1", data.http),
        Some(&token),
        Some(json!({"command_type": "AddLine", "payload": {"sku": "y"}, "expected_version": 1})),
        &[("x-tenant-id", "acme")],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["aggregate_version"], 2);
    assert_eq!(answer["events"][0]["payload"]["sku"], "y");
    assert_eq!(answer["events"][0]["sequence"], 2);
    assert_eq!(answer["command_id"].as_str().unwrap().len(), 36);
    let (status, answer) = send(
        client,
        "POST",
        format!("{}/v1/commands/order/o-1", data.http),
        Some(&token),
        Some(json!({"command_type": "AddLine", "expected_version": 1})),
        &[("x-tenant-id", "acme")],
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("failed_precondition"))
    );
    let (status, _) = send(
        client,
        "POST",
        format!("{}/v1/commands/order/o-1", data.http),
        Some(&token),
        Some(json!({"no": "type"})),
        &[("x-tenant-id", "acme")],
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_admin_and_auth_forwarding_through_the_data_plane() {
    let stack = Stack::start(&["--trusted-proxies", "127.0.0.1"], |base| {
        vec!["--control-plane-url".into(), base.to_string()]
    })
    .await;
    let node = upstream::start(
        "shard-r",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let (client, data) = (&stack.client, &stack.data);
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    // the auth flows work through the data plane, and the control plane sees the real client
    let (status, _) = send(
        client,
        "POST",
        format!("{}/v1/auth/signup", data.http),
        None,
        Some(json!({"email": "ops@example.com", "password": PASSWORD})),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = send(
        &from(23),
        "POST",
        format!("{}/v1/auth/signin", data.http),
        None,
        Some(json!({"email": "ops@example.com", "password": PASSWORD})),
        &[("x-forwarded-for", "6.6.6.6")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let jwks: Value = client
        .get(format!("{}/.well-known/jwks.json", data.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!jwks["keys"].as_array().unwrap().is_empty());
    let store = stack.store().await;
    let audit = store
        .audit()
        .read(&gateway_store::AuditQuery {
            tenant: None,
            from_seq: 1,
            limit: 100,
        })
        .await
        .unwrap();
    let signin = audit
        .iter()
        .rev()
        .map(|r| serde_json::from_slice::<Value>(&r.data).unwrap())
        .find(|r| r["action"] == "auth.signin" && r["outcome"] == "ok")
        .unwrap();
    assert_eq!(
        signin["client_ip"], "127.0.0.23",
        "the client's address, not the spoofed header"
    );

    // runner admin: runner.admin in the tenant, normalised paths
    stack
        .route("runner", "run-1", &node.http_url(), "acme")
        .await;
    let (_, me) = send(
        client,
        "GET",
        format!("{}/v1/auth/session", data.http),
        Some(&token),
        None,
        &[],
    )
    .await;
    let user_id = me["user_id"].as_str().unwrap().to_string();
    stack
        .admin(
            "POST",
            "/admin/assignments",
            json!({"principal_id": user_id, "tenant_id": "acme", "role": "tenant_member"}),
        )
        .await;
    let runner = format!("{}/admin/runner/workflows/wf-1?force=true", data.http);
    let acme = [("x-tenant-id", "acme")];
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, answer) =
            send(client, "DELETE", runner.clone(), Some(&token), None, &acme).await;
        if status == 403 && answer["error"]["code"] == "no_matching_right" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member not refused: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stack
        .admin(
            "POST",
            "/admin/assignments",
            json!({"principal_id": user_id, "tenant_id": "acme", "role": "tenant_admin"}),
        )
        .await;
    let deadline = std::time::Instant::now() + START;
    let answer = loop {
        let (status, answer) =
            send(client, "DELETE", runner.clone(), Some(&token), None, &acme).await;
        if status == 200 {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "admin not allowed: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        (answer["runner_path"].as_str(), answer["method"].as_str()),
        (Some("workflows/wf-1"), Some("DELETE"))
    );
    let (status, answer) = send(
        client,
        "GET",
        format!("{}/admin/runner/a%2F..%2Fsecrets", data.http),
        Some(&token),
        None,
        &acme,
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_path"))
    );
}
