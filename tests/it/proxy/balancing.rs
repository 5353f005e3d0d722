//! Shards of several endpoints: balancing, circuit breaking, retries, deadlines, load shedding.

use std::time::Duration;

use gateway_tests::upstream;
use serde_json::{Value, json};

use super::{START, Stack, send};

/// A loopback port with nothing listening on it (connections are refused).
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// The data plane's view of one endpoint (`GET /admin/upstreams` on the ops listener).
async fn circuit_of(stack: &Stack, endpoint: &str) -> Option<Value> {
    let (status, report) = send(
        &stack.client,
        "GET",
        format!("{}/admin/upstreams", stack.data.ops),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{report}");
    report["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == endpoint)
        .cloned()
}

/// Several endpoints per shard, balancing, ejection by the circuit breaker and its
/// half-open recovery, retries only where safe, deadlines (504, `grpc-timeout` passed on)
/// and load shedding, against the real data plane and reference nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_are_balanced_failing_endpoints_ejected_and_load_shed() {
    use gateway_proto::aggregate::v1::SubmitCommandRequest;
    use gateway_proto::aggregate::v1::command_service_client::CommandServiceClient;
    let stack = Stack::start(&[], |_| {
        [
            "--query-timeout",
            "1s",
            "--circuit-failures",
            "3",
            "--circuit-open-for",
            "500ms",
            "--max-in-flight",
            "4",
        ]
        .map(String::from)
        .to_vec()
    })
    .await;
    let loopback = || "127.0.0.1:0".parse().unwrap();
    let a = upstream::start("node-a", loopback(), loopback())
        .await
        .unwrap();
    let b = upstream::start("node-b", loopback(), loopback())
        .await
        .unwrap();
    let (dead_1, dead_2, dead_3) = (dead_endpoint(), dead_endpoint(), dead_endpoint());
    let shard = |kind: &str, name: &str, endpoints: Vec<String>| {
        let (kind, name) = (kind.to_string(), name.to_string());
        let stack = &stack;
        async move {
            stack
                .admin(
                    "PUT",
                    &format!("/admin/routing/{kind}/shards/{name}"),
                    json!({ "endpoints": endpoints }),
                )
                .await;
        }
    };
    shard("projection", "pair", vec![a.http_url(), b.http_url()]).await;
    shard("projection", "flaky", vec![dead_1.clone(), a.http_url()]).await;
    shard("projection", "gone", vec![dead_2.clone()]).await;
    shard("aggregate", "agg", vec![dead_3.clone(), a.grpc_url()]).await;
    for (kind, tenant, name) in [
        ("projection", "pair", "pair"),
        ("projection", "flaky", "flaky"),
        ("projection", "gone", "gone"),
        ("aggregate", "flaky", "agg"),
    ] {
        stack
            .admin(
                "PUT",
                &format!("/admin/routing/{kind}/placements/{tenant}"),
                json!({ "shard": name }),
            )
            .await;
    }
    stack
        .admin(
            "POST",
            "/admin/roles",
            json!({"name": "all_reader", "rights": ["query.read", "command.submit:order"]}),
        )
        .await;
    let grants = [
        ("pair", "all_reader"),
        ("flaky", "all_reader"),
        ("gone", "all_reader"),
    ];
    let (token, user_id) = stack.member("lb@example.com", &grants).await;
    let client = &stack.client;
    let query_url = format!("{}/v1/query/orders", stack.data.http);
    let token_ref = token.as_str();
    let query = |tenant: &'static str, body: Value| {
        let url = query_url.clone();
        async move {
            send(
                client,
                "POST",
                url,
                Some(token_ref),
                Some(body),
                &[("x-tenant-id", tenant)],
            )
            .await
        }
    };
    let deadline = std::time::Instant::now() + START;
    while query("pair", json!({})).await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never routed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // balancing: both endpoints of the shard take their share
    for _ in 0..20 {
        assert_eq!(query("pair", json!({})).await.0, 200);
    }
    let (on_a, on_b) = (a.node.recorded().len(), b.node.recorded().len());
    assert!(on_a >= 5 && on_b >= 5, "a: {on_a}, b: {on_b}");

    // a refused endpoint costs no request (never reached: tried again on the other one),
    // and is ejected after 3 consecutive failures
    let before = a.node.recorded().len();
    for i in 0..10 {
        let (status, answer) = query("flaky", json!({"i": i})).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["node"], "node-a");
    }
    assert_eq!(a.node.recorded().len(), before + 10, "each query sent once");
    assert_eq!(
        circuit_of(&stack, &dead_1).await.unwrap()["circuit"],
        "open"
    );

    // one endpoint, unreachable: 503 with the cause, then the circuit opens and calls fail
    // fast with a retry-after until a probe finds the endpoint back
    for _ in 0..3 {
        let (status, answer) = query("gone", json!({})).await;
        assert_eq!(status, 503, "{answer}");
        assert_eq!(answer["error"]["code"], "upstream_unavailable");
    }
    let response = client
        .post(format!("{}/v1/query/orders", stack.data.http))
        .bearer_auth(&token)
        .header("x-tenant-id", "gone")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "circuit_open");
    let revived_addr: std::net::SocketAddr = dead_2.trim_start_matches("http://").parse().unwrap();
    let revived = upstream::start("node-revived", revived_addr, loopback())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, answer) = query("gone", json!({})).await;
        if status == 200 {
            assert_eq!(answer["node"], "node-revived");
            break;
        }
        assert_eq!(answer["error"]["code"], "circuit_open", "{answer}");
        assert!(std::time::Instant::now() < deadline, "never probed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        circuit_of(&stack, &dead_2).await.unwrap()["circuit"],
        "closed"
    );
    drop(revived);

    // a slow upstream: 504 at the query deadline (1 s), not when the upstream answers
    let started = std::time::Instant::now();
    let (status, answer) = query("pair", json!({"_reference": {"delay_ms": 3000}})).await;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(answer["error"]["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_millis(2500));
    // an upstream answer, even an error, is relayed and not retried
    let before = a.node.recorded().len() + b.node.recorded().len();
    let (status, answer) = query("pair", json!({"_reference": {"status": 500}})).await;
    assert_eq!(status, 500);
    assert_eq!(answer["error"]["code"], "injected");
    assert_eq!(
        a.node.recorded().len() + b.node.recorded().len(),
        before + 1
    );

    // load shedding: 4 slots; 6 concurrent slow queries → 4 answered, 2 shed at once
    let slow = json!({"_reference": {"delay_ms": 600}});
    let results = futures::future::join_all((0..6).map(|_| {
        client
            .post(format!("{}/v1/query/orders", stack.data.http))
            .bearer_auth(&token)
            .header("x-tenant-id", "pair")
            .json(&slow)
            .send()
    }))
    .await;
    let mut shed = 0;
    for response in results {
        let response = response.unwrap();
        match response.status().as_u16() {
            200 => {}
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                let answer: Value = response.json().await.unwrap();
                assert_eq!(answer["error"]["code"], "load_shed");
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(shed, 2);

    // commands: a refused aggregate endpoint is skipped (the gateway's command_id makes the
    // command safe to send again); the client's grpc-timeout bounds the call and is passed on
    let mut grpc = CommandServiceClient::connect(stack.data.grpc.clone())
        .await
        .unwrap();
    let command = |id: &str, timeout: Duration, delay: Option<&str>| {
        let mut metadata = std::collections::HashMap::new();
        if let Some(delay) = delay {
            metadata.insert("reference_delay_ms".to_string(), delay.to_string());
        }
        let mut request = tonic::Request::new(SubmitCommandRequest {
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            command_type: "Touch".into(),
            command_id: id.into(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            expected_version: None,
            metadata,
        });
        request.set_timeout(timeout);
        let metadata = request.metadata_mut();
        metadata.insert("x-tenant-id", "flaky".parse().unwrap());
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    a.node.clear();
    for i in 0..4 {
        let answer = grpc
            .submit_command(command(&format!("c-{i}"), Duration::from_secs(5), None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.command_id, format!("c-{i}"));
    }
    let commands: Vec<_> = a
        .node
        .recorded()
        .into_iter()
        .filter(|r| r.protocol == "grpc")
        .collect();
    assert_eq!(commands.len(), 4);
    for recorded in &commands {
        let timeout = recorded
            .header("grpc-timeout")
            .expect("grpc-timeout passed on");
        let timeout = data_plane::upstream::parse_grpc_timeout(timeout).unwrap();
        assert!(timeout > Duration::ZERO && timeout <= Duration::from_secs(5));
    }
    let status = grpc
        .submit_command(command("c-slow", Duration::from_millis(300), Some("3000")))
        .await
        .unwrap_err();
    // tonic's Channel enforces the deadline on its side too, and may answer CANCELLED first
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    // however short the deadline (under a millisecond: tonic's own server used to answer
    // CANCELLED from outside the handler, with no log line or metric), the gateway answers
    // DEADLINE_EXCEEDED with its error code, correlation id, log line and metric
    // (sent through a plain HTTP/2 client: tonic's Channel would give up on the deadline
    // itself, with CANCELLED, before the gateway's answer arrives)
    let mut plain = {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http::<tonic::body::Body>();
        CommandServiceClient::with_origin(client, stack.data.grpc.parse().unwrap())
    };
    for (id, timeout) in [
        ("c-slow-plain", Duration::from_millis(300)),
        ("c-short", Duration::from_micros(500)),
        ("c-shorter", Duration::from_nanos(1)),
    ] {
        let status = plain
            .submit_command(command(id, timeout, Some("3000")))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::DeadlineExceeded,
            "{id}: {status:?}"
        );
        // the gateway's answer: the upstream's part timed out, or the call's deadline
        // passed before the upstream was asked
        assert!(
            matches!(
                status
                    .metadata()
                    .get("x-error-code")
                    .map(|v| v.to_str().unwrap()),
                Some("upstream_timeout" | "deadline_exceeded")
            ),
            "{id}: {status:?}"
        );
        assert!(status.metadata().get("x-correlation-id").is_some(), "{id}");
    }
    let metrics = gateway_tests::metrics_text(&stack.client, &stack.data.ops).await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("gateway_grpc_requests_total{")
                && line.contains("code=\"DEADLINE_EXCEEDED\"")),
        "{metrics}"
    );
    assert!(
        stack.data_process.logs().iter().any(|line| {
            let line: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            line["message"] == "grpc request finished" && line["code"] == "DEADLINE_EXCEEDED"
        }),
        "no log line for the expired deadline"
    );

    // the log line of each request names the principal, the tenant and the upstream
    let logged = |message: &str, upstream: &str| {
        stack.data_process.logs().iter().any(|line| {
            let line: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            line["message"] == message
                && line["span"]["principal"] == user_id.as_str()
                && line["span"]["tenant"] == "flaky"
                && line["span"]["upstream"] == upstream
                && line["span"]["trace_id"]
                    .as_str()
                    .is_some_and(|t| t.len() == 32)
        })
    };
    assert!(logged("request finished", &a.http_url()));
    assert!(logged("grpc request finished", &a.grpc_url()));

    // and the metrics say what happened
    let metrics = stack.metrics().await;
    for expected in [
        "gateway_token_cache_total{result=\"hit\"}",
        "gateway_load_shed_total{route=\"query\"} 2",
        "gateway_upstream_retries_total{kind=\"projection\"}",
        "gateway_upstream_retries_total{kind=\"aggregate\"}",
        &format!("gateway_upstream_circuit_state{{endpoint=\"{dead_1}\"}} 1"),
        &format!("gateway_upstream_circuit_state{{endpoint=\"{dead_2}\"}} 0"),
        "gateway_upstream_errors_total{kind=\"projection\",endpoint=",
        "gateway_grpc_request_duration_seconds",
    ] {
        assert!(metrics.contains(expected), "{expected} missing");
    }
}
