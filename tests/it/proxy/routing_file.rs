//! Routing from a local JSON file, reloaded when the file changes.

use std::time::Duration;

use gateway_tests::upstream;
use serde_json::json;

use super::{START, Stack, send};

/// Local development: routing from a plain JSON file, re-read when it changes; an invalid
/// change is refused and the last good table stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_from_a_file_is_reloaded_when_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing.json");
    let one = upstream::start(
        "file-one",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let two = upstream::start(
        "file-two",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let routing = |endpoint: &str| {
        json!({"projection": {"shards": {"p": [endpoint]}, "placement": {"acme": "p"}}}).to_string()
    };
    std::fs::write(&path, routing(&one.http_url())).unwrap();
    let flag = path.to_str().unwrap().to_string();
    let stack = Stack::start(&[], move |_| {
        [
            "--routing-file",
            flag.as_str(),
            "--routing-file-poll",
            "100ms",
        ]
        .map(String::from)
        .to_vec()
    })
    .await;
    // a signed routing document in the store does not override the file
    stack
        .route("projection", "elsewhere", "http://127.0.0.1:9", "acme")
        .await;
    let (token, _) = stack
        .member("filer@example.com", &[("acme", "tenant_member")])
        .await;
    let node_answering = || async {
        let (status, answer) = send(
            &stack.client,
            "POST",
            format!("{}/v1/query/v", stack.data.http),
            Some(&token),
            Some(json!({})),
            &[("x-tenant-id", "acme")],
        )
        .await;
        (status == 200).then(|| answer["node"].as_str().unwrap_or_default().to_string())
    };
    let wait_for = |node: &'static str| async move {
        let deadline = std::time::Instant::now() + START;
        loop {
            if node_answering().await.as_deref() == Some(node) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never routed to {node}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    wait_for("file-one").await;
    std::fs::write(&path, routing(&two.http_url())).unwrap();
    wait_for("file-two").await;
    // an invalid file is refused (counted) and the last good table stays
    std::fs::write(
        &path,
        json!({"projection": {"placement": {"acme": "ghost"}}}).to_string(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + START;
    loop {
        let metrics = stack.metrics().await;
        if metrics.contains("gateway_snapshot_rejects_total{kind=\"routing_file\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(node_answering().await.as_deref(), Some("file-two"));
    let (status, used) = send(
        &stack.client,
        "GET",
        format!("{}/admin/routing", stack.data.ops),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(used["revision"], 2);
}
