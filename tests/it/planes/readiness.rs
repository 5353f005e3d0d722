//! Readiness across a NATS outage, with verified snapshots only, and a SIGTERM that drains.

use std::time::Duration;

use gateway_store::Bucket;
use gateway_tests::process::wait_for_status;
use serde_json::{Value, json};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::{Env, START, client};

/// Polls the standard gRPC health service until it reports `want` for the server (`""`).
async fn wait_for_grpc_health(url: &str, want: ServingStatus) {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_lazy();
    let mut client = HealthClient::new(channel);
    let deadline = std::time::Instant::now() + START;
    loop {
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.as_ref().ok() == Some(&(want as i32)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "grpc health of {url} is {status:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// In a NATS outage the control plane is not ready (it cannot write); a data plane stays
/// ready while its mirrors serve, within --max-staleness, and turns 503 past it (when it
/// fails closed): a load balancer reading /ready keeps it exactly as long as it serves.
/// Everything recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_store_on_the_control_plane_and_max_staleness_on_the_data_plane() {
    let mut env = Env::new();
    let (control_process, control) = env.control(&[]);
    // the default bound (60 s) and a short one
    let (data_process, _data, ops, grpc) = env.data_with_grpc(false, &[]);
    let (short_process, _short, short_ops, short_grpc) =
        env.data_with_grpc(false, &["--max-staleness", "1s"]);
    let pids = (
        control_process.pid(),
        data_process.pid(),
        short_process.pid(),
    );
    let client = client();
    for base in [&control, &ops, &short_ops] {
        wait_for_status(&client, &format!("{base}/ready"), 200, START).await;
    }
    for url in [&grpc, &short_grpc] {
        wait_for_grpc_health(url, ServingStatus::Serving).await;
    }
    env.nats.stop();
    let reasons = |body: &Value| body["checks"]["store"].as_str().unwrap_or("").to_string();
    for base in [&control, &short_ops] {
        wait_for_status(&client, &format!("{base}/ready"), 503, START).await;
        let body: Value = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(!reasons(&body).is_empty(), "{body}");
        if base == &short_ops {
            assert!(reasons(&body).contains("--max-staleness"), "{body}");
        }
        // alive all the same
        let health = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        let live = client.get(format!("{base}/live")).send().await.unwrap();
        assert_eq!(live.status(), 200);
    }
    wait_for_grpc_health(&short_grpc, ServingStatus::NotServing).await;
    // the short bound has passed, the default one has not: still ready, still serving
    let ready = client.get(format!("{ops}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    wait_for_grpc_health(&grpc, ServingStatus::Serving).await;
    env.nats.restart();
    for base in [&control, &ops, &short_ops] {
        wait_for_status(&client, &format!("{base}/ready"), 200, START).await;
    }
    for url in [&grpc, &short_grpc] {
        wait_for_grpc_health(url, ServingStatus::Serving).await;
    }
    assert_eq!(
        (
            control_process.pid(),
            data_process.pid(),
            short_process.pid()
        ),
        pids
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_is_ready_only_with_verified_snapshots_and_keeps_the_last_good_one() {
    let env = Env::new();
    let (_data, data, ops) = env.data(false, &[]);
    let client = client();
    wait_for_status(&client, &format!("{data}/health"), 200, START).await;
    let not_ready: Value = client
        .get(format!("{ops}/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        not_ready["checks"]["snapshots"]
            .as_str()
            .unwrap()
            .contains("routing"),
        "{not_ready}"
    );

    let store = env.store().await;
    let kv = store.kv(Bucket::Snapshots);
    let signer = &env.keys.signer;
    let forger = gateway_core::signed::DocSigningKey::generate();
    kv.put(
        "jwks",
        signer.sign("jwks", 1, 100, &json!({"keys": [{"status": "current", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc", "kid": "k1", "alg": "EdDSA", "use": "sig"}}]})).unwrap(),
    )
    .await
    .unwrap();
    kv.put(
        "routing",
        forger
            .sign("routing", 1, 100, &json!({"forged": true}))
            .unwrap(),
    )
    .await
    .unwrap();
    // the forged routing document is rejected and counted; still not ready
    let deadline = std::time::Instant::now() + START;
    loop {
        let metrics = gateway_tests::metrics_text(&client, &ops).await;
        if metrics
            .contains("gateway_snapshot_rejects_total{kind=\"routing\",reason=\"unknown_key\"}")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reject not counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = client
        .get(format!("{ops}/ready"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503);

    kv.put(
        "routing",
        signer.sign("routing", 5, 100, &json!({"rev": 5})).unwrap(),
    )
    .await
    .unwrap();
    wait_for_status(&client, &format!("{ops}/ready"), 200, START).await;
    wait_for_status(&client, &format!("{data}/ready"), 200, START).await;

    // an older revision and a tampered document change nothing. Each is awaited before
    // the next write: with one value kept per key, a write the watcher has not delivered
    // yet is replaced by the next one.
    let rejected = |reason: &'static str| {
        let client = client.clone();
        let ops = ops.clone();
        async move {
            let deadline = std::time::Instant::now() + START;
            loop {
                let metrics = gateway_tests::metrics_text(&client, &ops).await;
                if metrics.contains(&format!("reason=\"{reason}\"")) {
                    return metrics;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{reason} not counted: {metrics}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    kv.put(
        "routing",
        signer.sign("routing", 4, 100, &json!({"rev": 4})).unwrap(),
    )
    .await
    .unwrap();
    rejected("stale_revision").await;
    let tampered = String::from_utf8(
        signer
            .sign("routing", 9, 100, &json!({"rev": 9}))
            .unwrap()
            .to_vec(),
    )
    .unwrap()
    .replace("\"rev\":9", "\"rev\":10");
    kv.put("routing", tampered.into()).await.unwrap();
    let metrics = rejected("bad_signature").await;
    assert!(
        metrics.contains("gateway_snapshot_revision{kind=\"routing\"} 5"),
        "last good revision stays: {metrics}"
    );
    let status = client
        .get(format!("{ops}/ready"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_ready_503_drains_and_exits_zero() {
    let env = Env::new();
    let (mut control_process, control) = env.control(&["--drain-delay", "3s"]);
    let (mut data_process, _data, ops) = env.data(true, &["--drain-delay", "3s"]);
    let client = client();
    for (process, base) in [(&control_process, &control), (&data_process, &ops)] {
        wait_for_status(&client, &format!("{base}/ready"), 200, START).await;
        process.sigterm();
        // still serving during the drain delay, but no longer ready
        wait_for_status(&client, &format!("{base}/ready"), 503, START).await;
        let body: Value = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["checks"]["lifecycle"], "draining for shutdown");
    }
    for process in [&mut control_process, &mut data_process] {
        let status = process.wait_exit(START);
        assert_eq!(status.code(), Some(0));
    }
    assert!(
        client
            .get(format!("{control}/health"))
            .send()
            .await
            .is_err()
    );
}

/// A new data-plane replica is ready only once it holds every principal document the
/// store held when it started: a member signed in elsewhere is never refused by a replica
/// that says it is ready (the rolling-update race). The member's document is written last,
/// behind thousands of others, so it is the last one the replica's watch delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_plane_is_ready_only_with_every_principal_document() {
    let env = Env::new();
    let (_control, control) = env.control(&[]);
    let client = client();
    let store = env.store().await;
    let signer = env.keys.signer_clone();
    let authz = store.kv(Bucket::Authz);
    let mut writes = Vec::new();
    for i in 0..3000 {
        let id = format!("usr_filler{i:05}");
        let doc = signer
            .sign(
                "principal",
                1,
                gateway_core::unix_now(),
                &json!({"principal_id": id}),
            )
            .unwrap();
        let authz = std::sync::Arc::clone(&authz);
        writes.push(async move { authz.put(&format!("principal.{id}"), doc).await });
        if writes.len() == 200 {
            for done in futures::future::join_all(writes.drain(..)).await {
                done.unwrap();
            }
        }
    }
    for done in futures::future::join_all(writes.drain(..)).await {
        done.unwrap();
    }
    // the member, through the control plane: its document is the newest
    let admin: Value = client
        .post(format!("{control}/v1/auth/signin"))
        .json(&json!({"email": gateway_tests::SnapshotKeys::ADMIN_EMAIL, "password": gateway_tests::SnapshotKeys::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = admin["access_token"].as_str().unwrap();
    let password = "slate harbour copper 19";
    let user: Value = client
        .post(format!("{control}/v1/auth/signup"))
        .json(&json!({"email": "newcomer@example.com", "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = user["user_id"]
        .as_str()
        .unwrap_or_else(|| panic!("sign-up: {user}"));
    let assigned = client
        .post(format!("{control}/admin/assignments"))
        .bearer_auth(admin)
        .json(&json!({"principal_id": user_id, "tenant_id": "acme", "role": "tenant_member"}))
        .send()
        .await
        .unwrap();
    assert!(assigned.status().is_success(), "{}", assigned.status());
    let tokens: Value = client
        .post(format!("{control}/v1/auth/signin"))
        .json(&json!({"email": "newcomer@example.com", "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"].as_str().expect("signed in");

    // a new replica: the first moment it says ready, the member is known to it (the
    // empty routing of a fresh platform: an authorized call is 404 tenant_not_routed)
    let (_data, data, _ops, _grpc) = env.data_with_grpc(false, &[]);
    wait_for_status(&client, &format!("{data}/ready"), 200, START).await;
    let answer = client
        .post(format!("{data}/v1/query/orders"))
        .bearer_auth(token)
        .header("x-tenant-id", "acme")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "tenant_not_routed", "{body}");
}
