//! The reference upstream node implements the contracts the data plane forwards to.

use gateway_proto::aggregate::v1::SubmitCommandRequest;
use gateway_proto::aggregate::v1::command_service_client::CommandServiceClient;
use gateway_tests::upstream;
use serde_json::{Value, json};

async fn node() -> upstream::RunningNode {
    upstream::start(
        "shard-test",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

fn command(id: &str, expected: Option<u64>) -> tonic::Request<SubmitCommandRequest> {
    let mut request = tonic::Request::new(SubmitCommandRequest {
        aggregate_type: "order".into(),
        aggregate_id: "o-1".into(),
        command_type: "PlaceOrder".into(),
        command_id: id.into(),
        payload: br#"{"sku":"x"}"#.to_vec(),
        content_type: String::new(),
        expected_version: expected,
        metadata: [("causation".to_string(), "c-1".to_string())].into(),
    });
    request
        .metadata_mut()
        .insert("x-tenant-id", "acme".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-correlation-id", "corr-1".parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_versioned_idempotent_and_recorded() {
    let node = node().await;
    let mut client = CommandServiceClient::connect(node.grpc_url())
        .await
        .unwrap();

    let first = client
        .submit_command(command("cmd-1", Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.aggregate_version, 1);
    assert_eq!(first.events.len(), 1);
    assert_eq!(first.events[0].event_type, "PlaceOrder");
    assert_eq!(first.events[0].sequence, 1);
    assert_eq!(first.events[0].metadata["tenant_id"], "acme");
    assert_eq!(first.events[0].metadata["causation"], "c-1");
    assert!(!first.replayed);

    // the same command_id replays the outcome without applying twice
    let replay = client
        .submit_command(command("cmd-1", Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.aggregate_version, 1);

    // optimistic concurrency
    let stale = client
        .submit_command(command("cmd-2", Some(0)))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
    let second = client
        .submit_command(command("cmd-2", Some(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.aggregate_version, 2);

    // command_id reuse for a different command
    let mut reused = command("cmd-1", None);
    reused.get_mut().aggregate_id = "o-2".into();
    let err = client.submit_command(reused).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);

    let mut empty = command("", None);
    empty.get_mut().command_id = " ".into();
    assert_eq!(
        client.submit_command(empty).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    let recorded = node.node.recorded();
    assert_eq!(recorded.len(), 6);
    assert!(recorded.iter().all(|r| r.protocol == "grpc"));
    assert_eq!(recorded[0].header("x-tenant-id"), Some("acme"));
    assert_eq!(recorded[0].header("x-correlation-id"), Some("corr-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_and_runner_calls_are_answered_and_recorded() {
    let node = node().await;
    let client = reqwest::Client::new();
    let answer: Value = client
        .post(format!("{}/v1/query/orders_by_customer", node.http_url()))
        .header("x-tenant-id", "acme")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"customer": "c-9"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["view_type"], "orders_by_customer");
    assert_eq!(answer["tenant_id"], "acme");
    assert_eq!(answer["query"]["customer"], "c-9");
    assert_eq!(answer["node"], "shard-test");

    let bad = client
        .post(format!("{}/v1/query/orders", node.http_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let runner: Value = client
        .delete(format!("{}/admin/runner/workflows/wf-1", node.http_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(runner["runner_path"], "workflows/wf-1");
    assert_eq!(runner["method"], "DELETE");

    let recorded: Value = client
        .get(format!("{}/_reference/requests", node.http_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recorded = recorded.as_array().unwrap();
    assert_eq!(recorded.len(), 3);
    assert_eq!(
        recorded[0]["headers"]["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(recorded[2]["path"], "/admin/runner/workflows/wf-1");
    let cleared = client
        .delete(format!("{}/_reference/requests", node.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), 204);
    assert!(node.node.recorded().is_empty());
}
