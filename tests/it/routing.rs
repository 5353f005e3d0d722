//! Routing placement: validated admin changes published as signed revisions, seen by the
//! data plane, introspected per tenant, audited.

use std::time::Duration;

use gateway_store::nats::NatsConfig;
use gateway_store::{AuditQuery, Store, StoreConfig};
use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use serde_json::{Value, json};

const START: Duration = Duration::from_secs(30);

async fn call(
    client: &reqwest::Client,
    method: &str,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client
        .request(method.parse().unwrap(), url)
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_changes_are_validated_published_and_seen_by_the_data_plane() {
    let nats = NatsServer::start();
    let keys = SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    let (_control, base) = gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, &[]);
    let (_data, data) =
        gateway_tests::spawn_data_plane(&nats.url(), &prefix, &keys, &["--snapshots-optional"]);
    let client = reqwest::Client::new();
    let (status, tokens) = {
        let response = client
            .post(format!("{base}/v1/auth/signin"))
            .json(&json!({"email": SnapshotKeys::ADMIN_EMAIL, "password": SnapshotKeys::ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200);
    let admin = tokens["access_token"].as_str().unwrap().to_string();
    let store = Store::open(&StoreConfig::Nats(NatsConfig {
        url: nats.url(),
        prefix: prefix.clone(),
        ..NatsConfig::default()
    }))
    .await
    .unwrap();

    let (_, empty) = call(
        &client,
        "GET",
        format!("{base}/admin/routing"),
        &admin,
        None,
    )
    .await;
    // a fresh platform: the empty routing the control plane published at its start
    assert_eq!(empty["revision"], 1);
    // build a table step by step, each step one revision
    let steps = [
        (
            "PUT",
            "/admin/routing/aggregate/shards/agg-1",
            json!({"endpoints": ["http://127.0.0.1:9102"]}),
        ),
        (
            "PUT",
            "/admin/routing/aggregate/shards/agg-2",
            json!({"endpoints": ["http://127.0.0.1:9202", "http://127.0.0.1:9203"]}),
        ),
        (
            "PUT",
            "/admin/routing/aggregate/placements/acme",
            json!({"shard": "agg-2"}),
        ),
        (
            "PUT",
            "/admin/routing/projection/shards/proj-1",
            json!({"endpoints": ["http://127.0.0.1:9101"]}),
        ),
        (
            "PUT",
            "/admin/routing/projection/placements/acme",
            json!({"shard": "proj-1"}),
        ),
    ];
    let mut revision = 1;
    for (method, path, body) in steps {
        let (status, answer) =
            call(&client, method, format!("{base}{path}"), &admin, Some(body)).await;
        assert_eq!(status, 200, "{path}: {answer}");
        assert_eq!(answer["revision"], revision + 1);
        revision += 1;
    }
    // T3.1: the data plane uses the same revision (poll with a deadline)
    let deadline = std::time::Instant::now() + START;
    let used = loop {
        let response = client
            .get(format!("{}/admin/routing", data.ops))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            let body: Value = response.json().await.unwrap();
            if body["revision"] == revision {
                break body;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "data plane did not converge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(used["routing"]["aggregate"]["placement"]["acme"], "agg-2");

    // introspection per tenant, with the typed miss (T3.3)
    let (status, acme) = call(
        &client,
        "GET",
        format!("{base}/admin/routing/tenants/acme"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(acme["routes"]["aggregate"]["shard"], "agg-2");
    assert_eq!(
        acme["routes"]["projection"]["endpoints"],
        json!(["http://127.0.0.1:9101"])
    );
    assert_eq!(acme["routes"]["runner"]["error"], "tenant_not_routed");
    let (_, globex) = call(
        &client,
        "GET",
        format!("{base}/admin/routing/tenants/globex"),
        &admin,
        None,
    )
    .await;
    assert_eq!(globex["routes"]["aggregate"]["error"], "tenant_not_routed");

    // rejected updates change nothing
    let refused = [
        (
            "PUT",
            "/admin/routing/aggregate/placements/acme",
            json!({"shard": "ghost"}),
            400,
            "invalid_routing",
        ),
        (
            "PUT",
            "/admin/routing/runner/shards/r1",
            json!({"endpoints": ["ftp://x:1"]}),
            400,
            "invalid_routing",
        ),
        (
            "PUT",
            "/admin/routing/runner/shards/r1",
            json!({"endpoints": []}),
            400,
            "invalid_routing",
        ),
        (
            "PUT",
            "/admin/routing/runner/shards/Bad_Shard",
            json!({"endpoints": ["http://h:1"]}),
            400,
            "invalid_routing",
        ),
        (
            "PUT",
            "/admin/routing/warehouse/shards/w1",
            json!({"endpoints": ["http://h:1"]}),
            400,
            "invalid_kind",
        ),
        (
            "PUT",
            "/admin/routing/aggregate/placements/ACME",
            json!({"shard": "agg-1"}),
            400,
            "invalid_tenant",
        ),
        (
            "DELETE",
            "/admin/routing/aggregate/shards/agg-2",
            json!({}),
            400,
            "invalid_routing",
        ),
        (
            "PUT",
            "/admin/routing",
            json!({"expected_revision": 1, "confirm_empty": true, "routing": {}}),
            409,
            "routing_revision_conflict",
        ),
        (
            "PUT",
            "/admin/routing",
            json!({"routing": {"projection": {"shards": {"p": ["http://10.0.0.1:80"]}}}}),
            400,
            "routing_replace_unsafe",
        ),
        (
            "PUT",
            "/admin/routing",
            json!({"expected_revision": 0, "routing": {}}),
            400,
            "routing_replace_unsafe",
        ),
        (
            "PUT",
            "/admin/routing",
            json!({"expected_revision": 0, "routing": {"aggregate": {"default_shard": "nowhere"}}}),
            400,
            "invalid_routing",
        ),
    ];
    let audit_before = store
        .audit()
        .read(&AuditQuery {
            tenant: None,
            from_seq: 1,
            limit: 1000,
        })
        .await
        .unwrap();
    let refused_count = refused.len();
    for (method, path, body, status, code) in refused {
        let (got, answer) = call(
            &client,
            method,
            format!("{base}{path}"),
            &admin,
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body}"
        );
    }
    let (_, after) = call(
        &client,
        "GET",
        format!("{base}/admin/routing"),
        &admin,
        None,
    )
    .await;
    assert_eq!(after["revision"], revision, "nothing published");
    let audit_after = store
        .audit()
        .read(&AuditQuery {
            tenant: None,
            from_seq: 1,
            limit: 1000,
        })
        .await
        .unwrap();
    // each refused request left its intent and its refusal, and no record of a change
    let new: Vec<(String, String)> = audit_after[audit_before.len()..]
        .iter()
        .map(|r| {
            let record: Value = serde_json::from_slice(&r.data).unwrap();
            (
                r.action.clone(),
                record["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let pair = [
        ("admin.request".to_string(), "intent".to_string()),
        ("admin.request".to_string(), "refused".to_string()),
    ];
    assert_eq!(new.len(), 2 * refused_count, "{new:?}");
    assert!(new.chunks(2).all(|c| c == pair), "{new:?}");

    // every mutating routing route audits exactly once
    let cases = [
        (
            ("PUT", "/admin/routing"),
            "/admin/routing".to_string(),
            Some(json!({"expected_revision": revision, "routing": after["routing"]})),
            "admin.routing.replace",
        ),
        (
            ("POST", "/admin/routing/reload"),
            "/admin/routing/reload".to_string(),
            None,
            "admin.routing.reload",
        ),
        (
            ("PUT", "/admin/routing/{kind}/shards/{shard}"),
            "/admin/routing/runner/shards/run-1".to_string(),
            Some(json!({"endpoints": ["http://127.0.0.1:9301"]})),
            "admin.routing.shard.put",
        ),
        (
            ("PUT", "/admin/routing/{kind}/placements/{tenant_id}"),
            "/admin/routing/runner/placements/acme".to_string(),
            Some(json!({"shard": "run-1"})),
            "admin.routing.place",
        ),
        (
            ("DELETE", "/admin/routing/{kind}/placements/{tenant_id}"),
            "/admin/routing/runner/placements/acme".to_string(),
            None,
            "admin.routing.unplace",
        ),
        (
            ("DELETE", "/admin/routing/{kind}/shards/{shard}"),
            "/admin/routing/runner/shards/run-1".to_string(),
            None,
            "admin.routing.shard.delete",
        ),
    ];
    let routes =
        control_plane::openapi::mutating_routes(control_plane::admin::routing_routes::router());
    let declared: std::collections::BTreeSet<(&str, &str)> = routes
        .iter()
        .map(|(method, path)| (method.as_str(), path.as_str()))
        .collect();
    let covered: std::collections::BTreeSet<(&str, &str)> = cases.iter().map(|c| c.0).collect();
    assert_eq!(declared, covered);
    for (route, path, body, action) in cases {
        let before = store
            .audit()
            .read(&AuditQuery {
                tenant: None,
                from_seq: 1,
                limit: 1000,
            })
            .await
            .unwrap();
        let (status, answer) = call(&client, route.0, format!("{base}{path}"), &admin, body).await;
        assert_eq!(status, 200, "{route:?}: {answer}");
        let after = store
            .audit()
            .read(&AuditQuery {
                tenant: None,
                from_seq: 1,
                limit: 1000,
            })
            .await
            .unwrap();
        let new: Vec<&str> = after[before.len()..]
            .iter()
            .map(|r| r.action.as_str())
            .collect();
        assert_eq!(new, vec!["admin.request", action], "{route:?}");
    }
    // a plain user may not read or change routing
    let response = client
        .get(format!("{base}/admin/routing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

/// A fresh platform: the control plane publishes an empty signed routing at its first
/// start, so data planes (which need a verified routing to be ready, and so to pass their
/// container health checks) become ready before any shard is placed, and refuse tenants
/// as not routed. A restart publishes nothing new; a placed routing is never replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_platform_publishes_an_empty_routing_once_and_its_data_planes_become_ready() {
    let nats = NatsServer::start();
    let keys = SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    let client = reqwest::Client::new();
    let (first, base) = gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, &[]);
    // no --snapshots-optional: ready needs the verified keys and routing
    let (_data, data) = gateway_tests::spawn_data_plane(&nats.url(), &prefix, &keys, &[]);
    gateway_tests::process::wait_for_status(&client, &format!("{}/ready", data.ops), 200, START)
        .await;
    gateway_tests::process::wait_for_status(&client, &format!("{}/live", data.ops), 200, START)
        .await;
    let seen: Value = client
        .get(format!("{}/admin/routing", data.ops))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["revision"], 1, "{seen}");
    for kind in ["aggregate", "projection", "runner"] {
        assert_eq!(seen["routing"][kind]["shards"], json!({}), "{seen}");
        assert_eq!(seen["routing"][kind]["placement"], json!({}), "{seen}");
    }
    // a tenant request is refused as not routed (not as "not ready")
    let tokens: Value = client
        .post(format!("{base}/v1/auth/signin"))
        .json(
            &json!({"email": SnapshotKeys::ADMIN_EMAIL, "password": SnapshotKeys::ADMIN_PASSWORD}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = tokens["access_token"].as_str().unwrap().to_string();
    let answer = client
        .post(format!("{}/v1/query/orders", data.http))
        .bearer_auth(&admin)
        .header("x-tenant-id", "acme")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tenant_not_routed", "{body}");

    // place a tenant, then restart the control plane: its routing stays as it is
    let (status, placed) = call(
        &client,
        "PUT",
        format!("{base}/admin/routing/projection/shards/p1"),
        &admin,
        Some(json!({"endpoints": ["http://127.0.0.1:9101"]})),
    )
    .await;
    assert_eq!((status, &placed["revision"]), (200, &json!(2)), "{placed}");
    drop(first);
    let (_second, base) = gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, &[]);
    let (status, now) = call(
        &client,
        "GET",
        format!("{base}/admin/routing"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(now["revision"], 2, "{now}");
    assert_eq!(
        now["routing"]["projection"]["shards"]["p1"],
        json!(["http://127.0.0.1:9101"]),
        "{now}"
    );
}
