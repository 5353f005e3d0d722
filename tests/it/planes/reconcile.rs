//! The data plane's mirrors reconcile with a real NATS: a watch made to miss an event, a
//! bucket wiped and restored under a live watch, and a watch stuck while heartbeats are
//! written. The follower runs in this process so that the store can be wrapped with the
//! fault; everything under the wrapper is the real NATS backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use gateway_core::signed::{DocSigningKey, DocVerifyingKeys};
use gateway_store::{
    Bucket, KeysPage, KvBucket, KvEntry, Revision, Revisions, Store, StoreError, WatchEvent,
    WatchFrom, WatchStream,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Env;
use data_plane::Mirrors;
use data_plane::mirror;

/// The reconciliation period of these tests.
const PERIOD: Duration = Duration::from_millis(500);

/// What the wrapper does to the authz bucket.
#[derive(Default)]
struct Faults {
    /// Drop the next watch event that puts this key (once).
    drop_next_put_of: std::sync::Mutex<Option<String>>,
    /// Watch events dropped so far.
    dropped: AtomicUsize,
    /// Once set: watches deliver nothing more and listings never answer.
    stuck: AtomicBool,
}

struct Faulty {
    inner: Arc<dyn KvBucket>,
    faults: Arc<Faults>,
}

#[async_trait::async_trait]
impl KvBucket for Faulty {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        self.inner.get(key).await
    }
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, StoreError> {
        self.inner.create(key, value).await
    }
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: Revision,
    ) -> Result<Revision, StoreError> {
        self.inner.update(key, value, revision).await
    }
    async fn put(&self, key: &str, value: Bytes) -> Result<Revision, StoreError> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(), StoreError> {
        self.inner.delete(key, expected).await
    }
    async fn keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeysPage, StoreError> {
        self.inner.keys(prefix, after, limit).await
    }
    async fn revisions(&self, prefix: &str) -> Result<Revisions, StoreError> {
        if self.faults.stuck.load(Ordering::SeqCst) {
            futures::future::pending::<()>().await;
        }
        self.inner.revisions(prefix).await
    }
    async fn watch(&self, prefix: &str, from: WatchFrom) -> Result<WatchStream, StoreError> {
        let faults = Arc::clone(&self.faults);
        let watch = self.inner.watch(prefix, from).await?;
        Ok(watch
            .filter_map(move |event| {
                let faults = Arc::clone(&faults);
                async move {
                    if faults.stuck.load(Ordering::SeqCst) {
                        // stuck: nothing more is delivered (and the stream never ends)
                        futures::future::pending::<()>().await;
                    }
                    if let Ok(WatchEvent::Put(entry)) = &event {
                        let mut target = faults.drop_next_put_of.lock().unwrap();
                        if target.as_deref() == Some(entry.key.as_str()) {
                            *target = None;
                            faults.dropped.fetch_add(1, Ordering::SeqCst);
                            return None;
                        }
                    }
                    Some(event)
                }
            })
            .boxed())
    }
}

/// The env's NATS store with its authz bucket behind [`Faulty`].
async fn faulty_store(env: &Env) -> (Store, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let wrapped = {
        let faults = Arc::clone(&faults);
        env.store().await.map_buckets(move |bucket, inner| {
            if bucket == Bucket::Authz {
                Arc::new(Faulty {
                    inner,
                    faults: Arc::clone(&faults),
                })
            } else {
                inner
            }
        })
    };
    (wrapped, faults)
}

/// The signed effective-rights document of `principal` at `revision`; the revision is
/// also its `tokens_valid_after`, so the applied copy shows which revision it is.
fn principal_doc(signer: &DocSigningKey, principal: &str, revision: u64) -> Bytes {
    signer
        .sign(
            "principal",
            revision,
            1_700_000_000,
            &json!({"principal_id": principal, "tokens_valid_after": revision}),
        )
        .unwrap()
}

fn applied_revision(mirrors: &Mirrors, principal: &str) -> Option<u64> {
    mirrors.principal(principal).map(|doc| doc.revision)
}

async fn wait_for_revision(mirrors: &Mirrors, principal: &str, want: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while applied_revision(mirrors, principal) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{principal}: revision {:?} applied, {want} expected within {within:?}",
            applied_revision(mirrors, principal)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the authz follower on `store` with [`PERIOD`] and waits for its replay.
fn follow_authz(
    store: &Store,
    signer: &DocSigningKey,
    shutdown: &CancellationToken,
) -> Arc<Mirrors> {
    let mirrors = Arc::new(Mirrors::new(false, false));
    tokio::spawn(mirror::follow(
        store.clone(),
        Bucket::Authz,
        Arc::new(DocVerifyingKeys::new([signer.verifying_key()])),
        Arc::clone(&mirrors),
        PERIOD,
        shutdown.clone(),
    ));
    mirrors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_event_that_never_arrives_is_applied_by_the_next_reconciliation() {
    let env = Env::new();
    let (store, faults) = faulty_store(&env).await;
    let signer = &env.keys.signer;
    let kv = store.kv(Bucket::Authz);
    kv.put("principal.usr_a", principal_doc(signer, "usr_a", 1))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let mirrors = follow_authz(&store, signer, &shutdown);
    wait_for_revision(&mirrors, "usr_a", 1, Duration::from_secs(10)).await;

    // a role removal whose event the watch never delivers
    *faults.drop_next_put_of.lock().unwrap() = Some("principal.usr_a".into());
    kv.put("principal.usr_a", principal_doc(signer, "usr_a", 2))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while faults.dropped.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the event was never dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(applied_revision(&mirrors, "usr_a"), Some(1));
    // converges within one reconciliation period (and scheduling slack)
    wait_for_revision(&mirrors, "usr_a", 2, PERIOD * 3).await;
    // and the watch keeps working afterwards
    kv.put("principal.usr_a", principal_doc(signer, "usr_a", 3))
        .await
        .unwrap();
    wait_for_revision(&mirrors, "usr_a", 3, Duration::from_secs(5)).await;
    assert_eq!(faults.dropped.load(Ordering::SeqCst), 1);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_wiped_and_restored_under_a_live_watch_converges() {
    let env = Env::new();
    let store = env.store().await;
    let signer = &env.keys.signer;
    let kv = store.kv(Bucket::Authz);
    // a long history, so the watch's high-water mark is far above what a new bucket holds
    for revision in 1..=40 {
        kv.put("principal.usr_b", principal_doc(signer, "usr_b", revision))
            .await
            .unwrap();
    }
    let shutdown = CancellationToken::new();
    let mirrors = follow_authz(&store, signer, &shutdown);
    wait_for_revision(&mirrors, "usr_b", 40, Duration::from_secs(10)).await;

    // the bucket is deleted and made again (a restore from a backup starts the same way)
    let client = async_nats::connect(env.nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .delete_key_value(format!("{}authz", env.prefix))
        .await
        .unwrap();
    let restored = env.store().await;
    let restored_kv = restored.kv(Bucket::Authz);
    assert_eq!(restored_kv.revisions("principal.").await.unwrap().last, 0);
    // restored: an older document of usr_b, then changes made since
    restored_kv
        .put("principal.usr_b", principal_doc(signer, "usr_b", 30))
        .await
        .unwrap();
    restored_kv
        .put("principal.usr_b", principal_doc(signer, "usr_b", 41))
        .await
        .unwrap();
    restored_kv
        .put("principal.usr_c", principal_doc(signer, "usr_c", 1))
        .await
        .unwrap();
    wait_for_revision(&mirrors, "usr_b", 41, PERIOD * 6).await;
    wait_for_revision(&mirrors, "usr_c", 1, PERIOD * 6).await;
    // and later changes reach it through the watch made on the restored bucket
    restored_kv
        .put("principal.usr_c", principal_doc(signer, "usr_c", 2))
        .await
        .unwrap();
    wait_for_revision(&mirrors, "usr_c", 2, Duration::from_secs(5)).await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_watch_fails_closed_after_max_staleness_while_heartbeats_are_written() {
    const MAX_STALENESS: i64 = 2;
    let env = Env::new();
    let (store, faults) = faulty_store(&env).await;
    let signer = &env.keys.signer;
    store
        .kv(Bucket::Authz)
        .put("principal.usr_d", principal_doc(signer, "usr_d", 1))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let mirrors = follow_authz(&store, signer, &shutdown);
    wait_for_revision(&mirrors, "usr_d", 1, Duration::from_secs(10)).await;
    // the snapshots feed is not followed here: count it as current throughout
    let keep_snapshots_fresh = {
        let (mirrors, shutdown) = (Arc::clone(&mirrors), shutdown.clone());
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                mirrors.touch_feed(Bucket::Snapshots, gateway_core::unix_now());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::spawn(mirror::heartbeat(
        store.clone(),
        Arc::clone(&mirrors),
        "replica-d".into(),
        shutdown.clone(),
    ));
    // with no change to deliver, reconciliations alone keep the mirror confirmed for
    // longer than the bound
    tokio::time::sleep(Duration::from_secs(MAX_STALENESS as u64 + 1)).await;
    let now = gateway_core::unix_now();
    assert!(
        mirrors.staleness(now).unwrap() <= 1,
        "{:?}",
        mirrors.staleness(now)
    );

    faults.stuck.store(true, Ordering::SeqCst);
    let stuck_at = gateway_core::unix_now();
    let rebalance = store.kv(Bucket::Rebalance);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // a heartbeat written after the mirror stopped being confirmed...
        let beat = rebalance
            .get("replica.data.replica-d")
            .await
            .unwrap()
            .map(|entry| serde_json::from_slice::<serde_json::Value>(&entry.value).unwrap());
        let beat_at = beat
            .as_ref()
            .and_then(|b| b["seen_at"].as_i64())
            .unwrap_or(0);
        let now = gateway_core::unix_now();
        let staleness = mirrors.staleness(now).unwrap();
        // ...does not keep it fresh: past the bound it fails closed
        if beat_at > stuck_at + MAX_STALENESS && staleness > MAX_STALENESS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "staleness {staleness} s with the last heartbeat at {beat_at} (stuck at {stuck_at})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the same decision the proxy makes (proxy::authenticate refuses with state_stale)
    let staleness = mirrors.staleness(gateway_core::unix_now()).unwrap();
    assert!(staleness > MAX_STALENESS);
    shutdown.cancel();
    keep_snapshots_fresh.await.unwrap();
}
