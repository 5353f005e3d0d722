//! A routing document over one NATS message (100,000 tenants placed, ~1.5 MB against the
//! server's 1 MiB `max_payload`): stored as parts and a manifest, changed by the control
//! plane through its admin API, and followed by the data plane.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gateway_core::authz::TenantId;
use gateway_core::routing::{KindRouting, RoutingDocument};
use gateway_store::{Bucket, large};
use gateway_tests::upstream;
use serde_json::json;

use super::{START, Stack, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_document_over_one_message_is_stored_in_parts_and_routes() {
    let stack = Stack::start(&[], |_| vec![]).await;
    let node = upstream::start(
        "shard-big",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let (token, _) = stack
        .member("many@example.com", &[("acme", "tenant_member")])
        .await;

    // 100,000 tenants on a shard, signed with the platform's key as the control plane signs
    let store = stack.store().await;
    let kv = store.kv(Bucket::Snapshots);
    let deadline = Instant::now() + START;
    let published = loop {
        if let Some(entry) = kv.get("routing").await.unwrap() {
            break entry;
        }
        assert!(Instant::now() < deadline, "no routing published");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let placement: BTreeMap<TenantId, String> = (0..100_000)
        .map(|i| {
            (
                TenantId::parse(&format!("bulk{i:06}")).unwrap(),
                "bulk".to_string(),
            )
        })
        .collect();
    let document = RoutingDocument {
        projection: KindRouting {
            placement,
            shards: BTreeMap::from([("bulk".to_string(), vec![node.http_url()])]),
            default_shard: None,
        },
        ..RoutingDocument::default()
    };
    let bytes = stack
        .keys
        .signer
        .sign("routing", 2, gateway_core::unix_now(), &document)
        .unwrap();
    assert!(bytes.len() > 1024 * 1024, "{} bytes", bytes.len());
    // as one message, NATS refuses it
    assert!(kv.put("routing.too-big", bytes.clone()).await.is_err());
    large::write(kv.as_ref(), "routing", bytes, Some(published.revision))
        .await
        .unwrap();

    // the control plane reads the large document, changes it and publishes it again
    stack
        .route("projection", "p1", &node.http_url(), "acme")
        .await;
    let routing = stack.admin("GET", "/admin/routing", json!(null)).await;
    assert_eq!(
        routing["routing"]["projection"]["placement"]
            .as_object()
            .unwrap()
            .len(),
        100_001
    );
    let revision = routing["revision"].as_u64().unwrap();
    assert_eq!(revision, 4);

    // stored as a manifest whose parts are the only ones left
    let head = kv.get("routing").await.unwrap().unwrap().value;
    assert!(large::is_manifest(&head));
    let manifest: serde_json::Value = serde_json::from_slice(&head).unwrap();
    let parts = kv.revisions("routing.parts.").await.unwrap().keys;
    assert_eq!(
        parts.len() as u64,
        manifest["large_value"]["parts"].as_u64().unwrap()
    );
    let id = manifest["large_value"]["id"].as_str().unwrap();
    assert!(parts.iter().all(|(key, _)| key.contains(id)), "{parts:?}");

    // the data plane follows it: acme's query reaches the node, a bulk tenant is routed
    let query = format!("{}/v1/query/v", stack.data.http);
    let deadline = Instant::now() + START;
    loop {
        let (status, answer) = send(
            &stack.client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({})),
            &[("x-tenant-id", "acme")],
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acme never routed: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(&format!(
            "gateway_snapshot_revision{{kind=\"routing\"}} {revision}"
        )),
        "{metrics}"
    );
}
