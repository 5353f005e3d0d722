//! The data plane without NATS: its mirrors, its cache file, failing closed when too stale.

use std::time::Duration;

use gateway_tests::upstream;
use serde_json::{Value, json};

use super::{START, Stack, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_serves_from_its_mirrors_while_nats_is_down_and_catches_up() {
    let mut stack = Stack::start(&[], |_| vec![]).await;
    let node = upstream::start(
        "shard-o",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("projection", "p1", &node.http_url(), "acme")
        .await;
    let (token, _) = stack
        .member(
            "steady@example.com",
            &[("acme", "tenant_member"), ("globex", "tenant_member")],
        )
        .await;
    let query = format!("{}/v1/query/v", stack.data.http);
    let deadline = std::time::Instant::now() + START;
    while send(
        &stack.client,
        "POST",
        query.clone(),
        Some(&token),
        Some(json!({})),
        &[("x-tenant-id", "acme")],
    )
    .await
    .0 != 200
    {
        assert!(std::time::Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    stack.nats.stop();
    // allowed calls keep going through, refused ones stay refused, from last-known-good state
    for _ in 0..20 {
        let (status, answer) = send(
            &stack.client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({})),
            &[("x-tenant-id", "acme")],
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let (status, _) = send(
            &stack.client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({})),
            &[("x-tenant-id", "initech")],
        )
        .await;
        assert_eq!(status, 403);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // NATS back: a change made afterwards reaches the data plane
    stack.nats.restart();
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, _) = send(
            &stack.client,
            "PUT",
            format!("{}/admin/routing/projection/placements/globex", stack.base),
            Some(&stack.admin),
            Some(json!({"shard": "p1"})),
            &[],
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "control plane did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, answer) = send(
            &stack.client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({})),
            &[("x-tenant-id", "globex")],
        )
        .await;
        if status == 200 {
            assert_eq!(answer["tenant_id"], "globex");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "data plane did not catch up: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A replica restarted while NATS is unreachable starts from its cache file of verified
/// documents (verified again on load) and serves; a tampered file is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_restarted_while_nats_is_down_serves_from_its_cache_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("mirrors.json");
    let cache_flag = cache.to_str().unwrap().to_string();
    let flag = cache_flag.clone();
    let mut stack = Stack::start(&[], move |_| {
        vec!["--mirror-cache-file".into(), flag.clone()]
    })
    .await;
    let node = upstream::start(
        "shard-cached",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("projection", "p1", &node.http_url(), "acme")
        .await;
    let (token, user_id) = stack
        .member("cached@example.com", &[("acme", "tenant_member")])
        .await;
    let query = |data: &gateway_tests::DataPlaneUrls, tenant: &'static str| {
        let request = stack
            .client
            .post(format!("{}/v1/query/v", data.http))
            .bearer_auth(&token)
            .header("x-tenant-id", tenant)
            .json(&json!({}));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let deadline = std::time::Instant::now() + START;
    while query(&stack.data, "acme").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // the cache file catches up with what the replica uses (written within a second)
    let deadline = std::time::Instant::now() + START;
    loop {
        let file: Value = std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let documents = &file["documents"];
        if documents["routing"].is_string()
            && documents["jwks"].is_string()
            && documents["principals"][&user_id].is_string()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "cache never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // NATS goes away, and the replica restarts
    stack.nats.stop();
    stack.data_process.sigterm();
    assert!(stack.data_process.wait_exit(START).success());
    let restarted = {
        let (process, urls) = gateway_tests::spawn_data_plane(
            &stack.nats.url(),
            &stack.prefix,
            &stack.keys,
            &["--mirror-cache-file", &cache_flag],
        );
        stack.data_process = process;
        urls
    };
    // it serves from the cache: allowed calls go through, others stay refused
    let (status, answer) = query(&restarted, "acme").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["node"], "shard-cached");
    assert_eq!(query(&restarted, "globex").await.0, 403);
    // and, serving within --max-staleness, it is ready and live: a load balancer sends it
    // traffic and Swarm's health check keeps it
    for probe in ["ready", "live"] {
        let answer = stack
            .client
            .get(format!("{}/{probe}", restarted.http))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "/{probe}");
    }

    // a tampered routing document in the file is refused on load
    let mut file: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    let routing = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        file["documents"]["routing"].as_str().unwrap(),
    )
    .unwrap();
    let routing = String::from_utf8(routing).unwrap();
    let tampered = routing.replace(&node.http_url(), "http://127.0.0.1:9");
    assert_ne!(routing, tampered);
    file["documents"]["routing"] = json!(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        tampered
    ));
    let tampered_path = dir.path().join("tampered.json");
    std::fs::write(&tampered_path, serde_json::to_vec(&file).unwrap()).unwrap();
    let (_tampered_process, tampered_urls) = gateway_tests::spawn_data_plane(
        &stack.nats.url(),
        &stack.prefix,
        &stack.keys,
        &["--mirror-cache-file", tampered_path.to_str().unwrap()],
    );
    let (status, answer) = query(&tampered_urls, "acme").await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "not_ready");

    // NATS back: the restarted replica connects and reports ready, without a restart
    stack.nats.restart();
    gateway_tests::process::wait_for_status(
        &stack.client,
        &format!("{}/ready", restarted.http),
        200,
        START,
    )
    .await;
    assert_eq!(query(&restarted, "acme").await.0, 200);
}

/// Past --max-staleness without reaching the store, authorization fails closed with a
/// clear 503 (revocations may be missing), says so in a metric and a log line, and
/// recovers by itself when the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_cut_off_too_long_fails_closed_and_recovers() {
    let mut stack = Stack::start(&[], |_| vec!["--max-staleness".into(), "2s".into()]).await;
    let node = upstream::start(
        "shard-stale",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("projection", "p1", &node.http_url(), "acme")
        .await;
    let (token, _) = stack
        .member("stale@example.com", &[("acme", "tenant_member")])
        .await;
    let query = || {
        send(
            &stack.client,
            "POST",
            format!("{}/v1/query/v", stack.data.http),
            Some(&token),
            Some(json!({})),
            &[("x-tenant-id", "acme")],
        )
    };
    let deadline = std::time::Instant::now() + START;
    while query().await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // the plane has been ready (every check passed, as a probe saw it): that is what keeps
    // it live below while it fails closed. Serving a member's query does not prove it
    // (a query needs that member's document, readiness every document of the replay)
    gateway_tests::process::wait_for_status(
        &stack.client,
        &format!("{}/ready", stack.data.http),
        200,
        START,
    )
    .await;
    stack.nats.stop();
    // within the bound it keeps serving; past it, a typed 503
    let deadline = std::time::Instant::now() + START;
    let refused = loop {
        let (status, answer) = query().await;
        if status == 503 {
            break answer;
        }
        assert_eq!(status, 200, "{answer}");
        assert!(std::time::Instant::now() < deadline, "never failed closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused["error"]["code"], "state_stale");
    // the gauge follows within its one-second tick
    let deadline = std::time::Instant::now() + START;
    loop {
        let metrics = stack.metrics().await;
        if metrics.contains("gateway_mirror_stale 1") {
            assert!(metrics.contains("gateway_stale_refusals_total"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.data_process.wait_for_log(
        "store unreachable for too long: failing closed (503 state_stale) until it is back",
        START,
    );
    // failing closed, it is not ready (a load balancer drops it) but still live (Swarm
    // does not replace it: a new task could not do better without the store)
    for (probe, want) in [("ready", 503), ("live", 200)] {
        let answer = stack
            .client
            .get(format!("{}/{probe}", stack.data.http))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), want, "/{probe}");
    }
    // the store back: it serves again without a restart
    stack.nats.restart();
    let deadline = std::time::Instant::now() + START;
    while query().await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack
        .data_process
        .wait_for_log("store reachable again: serving from fresh mirrors", START);
}
