//! A cutover under live traffic: no request fails.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Env, START, wait_for_revision};

/// Under live traffic, requests before the cutover reach the old shard, requests after
/// it the new one, and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_traffic_moves_to_the_new_shard_without_a_failure() {
    let env = Env::start(1, &[]).await;
    let (_dp, data) = env.data_plane("dp-live");
    let token = env.user("live@example.com", "tenant_member").await;
    let query = {
        let client = env.client.clone();
        let url = format!("{}/v1/query/orders", data.http);
        move || {
            let request = client
                .post(url.clone())
                .bearer_auth(&token)
                .header("x-tenant-id", "acme")
                .json(&json!({}));
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                (
                    status,
                    answer["node"].as_str().unwrap_or_default().to_string(),
                )
            }
        }
    };
    let deadline = Instant::now() + START;
    while query().await.0 != 200 {
        assert!(Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, query) = (stop.clone(), query.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(query().await);
            }
            seen
        })
    };
    // let some traffic reach the old shard first
    let deadline = Instant::now() + START;
    while env.old.node.recorded().len() < 20 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let id = env.plan("projection", "new").await;
    let (status, applied) = env.action(&id, "apply").await;
    assert_eq!(status, 200, "{applied}");
    wait_for_revision(
        &env.client,
        &data.ops,
        applied["applied_revision"].as_u64().unwrap(),
    )
    .await;
    let deadline = Instant::now() + START;
    while env.new.node.recorded().len() < 20 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = traffic.await.unwrap();
    assert!(
        seen.iter().all(|(status, _)| *status == 200),
        "a request failed"
    );
    let first_new = seen.iter().position(|(_, node)| node == "new").unwrap();
    assert!(first_new > 0);
    assert!(seen[..first_new].iter().all(|(_, node)| node == "old"));
    assert!(
        seen[first_new..].iter().all(|(_, node)| node == "new"),
        "a request reached the old shard after the cutover"
    );
}
