//! The store conformance suite on both backends, and NATS-specific behaviour.

use gateway_store::nats::NatsConfig;
use gateway_store::{Store, StoreConfig};
use gateway_tests::nats::NatsServer;

mod nats_backend {
    use super::*;

    async fn open() -> (Store, NatsServer) {
        let server = NatsServer::start();
        let store = Store::open(&StoreConfig::Nats(NatsConfig {
            url: server.url(),
            prefix: gateway_tests::unique_prefix(),
            ..NatsConfig::default()
        }))
        .await
        .expect("open nats store");
        (store, server)
    }

    gateway_store::store_conformance_tests!(open);
}

mod embedded_backend {
    use super::*;

    async fn open() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig::Embedded {
            path: dir.path().join("state.redb"),
        })
        .await
        .expect("open embedded store");
        (store, dir)
    }

    gateway_store::store_conformance_tests!(open);
}

/// T2.3 / T1.3: the store handle and its parts cross threads.
#[test]
fn store_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<std::sync::Arc<dyn gateway_store::KvBucket>>();
    assert_send_sync::<std::sync::Arc<dyn gateway_store::AuditLog>>();
    assert_send_sync::<gateway_core::signed::DocSigningKey>();
    assert_send_sync::<gateway_core::signed::DocVerifyingKeys>();
    assert_send_sync::<control_plane::AppState>();
    assert_send_sync::<data_plane::Mirrors>();
    assert_send_sync::<data_plane::Config>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_its_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::Embedded {
        path: dir.path().join("state.redb"),
    };
    let store = Store::open(&config).await.unwrap();
    let kv = store.kv(gateway_store::Bucket::Users);
    let revision = kv.put("user.1", "ada".into()).await.unwrap();
    store
        .audit()
        .append("_platform", "user.create", "{}".into())
        .await
        .unwrap();
    // a second process cannot open the same file while it is in use
    let second = Store::open(&config).await;
    assert!(matches!(
        second,
        Err(gateway_store::StoreError::Unavailable(_))
    ));
    drop(kv);
    drop(store);
    let store = Store::open(&config).await.unwrap();
    let kv = store.kv(gateway_store::Bucket::Users);
    let entry = kv.get("user.1").await.unwrap().unwrap();
    assert_eq!(
        (entry.value.as_ref(), entry.revision),
        (b"ada".as_ref(), revision)
    );
    // revisions keep increasing after a restart
    assert!(kv.put("user.2", "bob".into()).await.unwrap() > revision);
    let audit = store
        .audit()
        .read(&gateway_store::AuditQuery {
            tenant: None,
            from_seq: 1,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_store_errors_are_typed_while_the_server_is_down_and_recover() {
    let mut server = NatsServer::start();
    let store = Store::open(&StoreConfig::Nats(NatsConfig {
        url: server.url(),
        prefix: gateway_tests::unique_prefix(),
        timeout: std::time::Duration::from_secs(1),
        ..NatsConfig::default()
    }))
    .await
    .unwrap();
    let kv = store.kv(gateway_store::Bucket::Users);
    kv.put("user.1", "before".into()).await.unwrap();
    server.stop();
    match kv.get("user.1").await {
        Err(gateway_store::StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable while nats is down, got {other:?}"),
    }
    assert!(store.check().await.is_err());
    server.restart();
    // the client reconnects by itself; poll until it does
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(Some(entry)) = kv.get("user.1").await {
            assert_eq!(
                entry.value.as_ref(),
                b"before",
                "nothing written before the outage is lost"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "store did not recover"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(store.check().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_store_refuses_to_open_without_a_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = Store::open(&StoreConfig::Nats(NatsConfig {
        url: format!("nats://127.0.0.1:{port}"),
        timeout: std::time::Duration::from_millis(500),
        ..NatsConfig::default()
    }))
    .await;
    assert!(matches!(
        result,
        Err(gateway_store::StoreError::Unavailable(_))
    ));
}
