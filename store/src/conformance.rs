//! The store conformance suite: the behaviour every backend must show, run against both
//! backends by the integration tests (`store_conformance_tests!`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::{AuditQuery, Bucket, KvBucket, Store, StoreError, WatchEvent, WatchFrom, WatchStream};

const WAIT: Duration = Duration::from_secs(10);

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    loop {
        match tokio::time::timeout(WAIT, watch.next()).await {
            Ok(Some(Ok(event))) => return event,
            Ok(Some(Err(err))) => tracing::warn!(error = %err, "transient watch error"),
            Ok(None) => panic!("watch ended"),
            Err(_) => panic!("no watch event within {WAIT:?}"),
        }
    }
}

/// get / create / update / put / delete and their typed errors.
pub async fn basic_operations(store: &Store) {
    let kv = store.kv(Bucket::Users);
    assert_eq!(kv.get("user.missing").await.unwrap(), None);
    let r1 = kv.create("user.1", b("one")).await.unwrap();
    let entry = kv.get("user.1").await.unwrap().unwrap();
    assert_eq!(entry.value, b("one"));
    assert_eq!(entry.revision, r1);
    assert_eq!(
        kv.create("user.1", b("again")).await,
        Err(StoreError::Conflict {
            key: "user.1".into()
        })
    );
    let r2 = kv.update("user.1", b("two"), r1).await.unwrap();
    assert!(r2 > r1);
    assert!(matches!(
        kv.update("user.1", b("stale"), r1).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        kv.update("user.never", b("x"), 1).await,
        Err(StoreError::Conflict { .. })
    ));
    let r3 = kv.put("user.1", b("three")).await.unwrap();
    assert!(r3 > r2);
    assert!(matches!(
        kv.delete("user.1", Some(r2)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(kv.get("user.1").await.unwrap().unwrap().value, b("three"));
    kv.delete("user.1", Some(r3)).await.unwrap();
    assert_eq!(kv.get("user.1").await.unwrap(), None);
    // deleting again is a no-op, and create works after a delete
    kv.delete("user.1", None).await.unwrap();
    let r4 = kv.create("user.1", b("reborn")).await.unwrap();
    assert!(r4 > r3);
    assert_eq!(kv.get("user.1").await.unwrap().unwrap().value, b("reborn"));
    // a failed write changed nothing
    assert_eq!(kv.get("user.1").await.unwrap().unwrap().revision, r4);
}

/// Bad keys and prefixes are refused by every operation, before touching the store.
pub async fn invalid_keys_are_refused(store: &Store) {
    let kv = store.kv(Bucket::Iam);
    for bad in ["", "a b", "a.*", "a.>", "a..b", ".a", "é"] {
        assert!(
            matches!(kv.get(bad).await, Err(StoreError::InvalidKey(_))),
            "{bad:?}"
        );
        assert!(matches!(
            kv.put(bad, b("x")).await,
            Err(StoreError::InvalidKey(_))
        ));
        assert!(matches!(
            kv.create(bad, b("x")).await,
            Err(StoreError::InvalidKey(_))
        ));
        assert!(matches!(
            kv.update(bad, b("x"), 1).await,
            Err(StoreError::InvalidKey(_))
        ));
        assert!(matches!(
            kv.delete(bad, None).await,
            Err(StoreError::InvalidKey(_))
        ));
    }
    assert!(matches!(
        kv.keys("role", None, 10).await,
        Err(StoreError::InvalidKey(_))
    ));
    assert!(kv.watch("role.*.", WatchFrom::New).await.is_err());
    assert_eq!(
        kv.keys("", None, 10).await.unwrap().keys,
        Vec::<String>::new()
    );
}

/// Of N concurrent updates with the same revision exactly one wins.
pub async fn concurrent_updates_have_one_winner(store: &Store) {
    const N: usize = 20;
    let kv = store.kv(Bucket::Sessions);
    let revision = kv.create("session.race", b("0")).await.unwrap();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(
                async move { kv.update("session.race", b(&i.to_string()), revision).await },
            )
        })
        .collect();
    let mut wins = Vec::new();
    let mut conflicts = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(rev) => wins.push((i, rev)),
            Err(StoreError::Conflict { .. }) => conflicts += 1,
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(wins.len(), 1, "exactly one update wins");
    assert_eq!(conflicts, N - 1);
    let entry = kv.get("session.race").await.unwrap().unwrap();
    assert_eq!(entry.value, b(&wins[0].0.to_string()));
    assert_eq!(entry.revision, wins[0].1);
}

/// Create-if-absent is exclusive under concurrency.
pub async fn concurrent_creates_are_exclusive(store: &Store) {
    const N: usize = 20;
    let kv = store.kv(Bucket::Users);
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move { kv.create("email.same", b(&i.to_string())).await })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(_) => winners.push(i),
            Err(StoreError::Conflict { .. }) => {}
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins");
    let entry = kv.get("email.same").await.unwrap().unwrap();
    assert_eq!(entry.value, b(&winners[0].to_string()));
}

/// The watch contract (see `KvBucket::watch`): per key, increasing revisions that
/// converge to the latest state; an intermediate revision may be merged away, but every
/// event seen is a change that was made, and nothing outside the prefix is seen.
pub async fn watch_converges_per_key_in_revision_order(store: &Store) {
    use std::collections::HashMap;
    let kv = store.kv(Bucket::Authz);
    let mut watch = kv.watch("principal.", WatchFrom::New).await.unwrap();
    // every put made: revision -> (key, value); the keys deleted at some point
    let mut puts: HashMap<u64, (String, Bytes)> = HashMap::new();
    let mut deleted_ever = std::collections::HashSet::new();
    for i in 0..30 {
        let key = format!("principal.p{}", i % 4);
        let value = b(&format!("v{i}"));
        let rev = kv.put(&key, value.clone()).await.unwrap();
        puts.insert(rev, (key.clone(), value));
        // noise outside the prefix
        kv.put("other.x", b("noise")).await.unwrap();
        if i % 7 == 6 {
            let current = kv.get(&key).await.unwrap().unwrap();
            kv.delete(&key, Some(current.revision)).await.unwrap();
            assert!(kv.get(&key).await.unwrap().is_none());
            deleted_ever.insert(key.clone());
        }
    }
    // where each key ends: Some(revision) of its last value, None when deleted
    let mut want: HashMap<String, Option<u64>> = HashMap::new();
    for i in 0..4 {
        let key = format!("principal.p{i}");
        let last = kv.get(&key).await.unwrap().map(|e| e.revision);
        want.insert(key, last);
    }
    let mut seen: HashMap<String, Option<u64>> = HashMap::new();
    let mut last_revision = 0;
    while seen != want {
        let event = next_event(&mut watch).await;
        assert!(event.revision() > last_revision, "revisions increase");
        last_revision = event.revision();
        match event {
            WatchEvent::Put(entry) => {
                let made = puts.get(&entry.revision);
                assert_eq!(
                    made,
                    Some(&(entry.key.clone(), entry.value.clone())),
                    "a put that was made: {entry:?}"
                );
                seen.insert(entry.key, Some(entry.revision));
            }
            WatchEvent::Delete { key, .. } => {
                assert!(
                    deleted_ever.contains(&key),
                    "a deletion that was made: {key}"
                );
                seen.insert(key, None);
            }
        }
    }
}

/// `Current` replays the latest value of each key, then follows; `Revision` replays from a
/// revision on.
pub async fn watch_replays_current_state_and_from_revision(store: &Store) {
    let kv = store.kv(Bucket::Snapshots);
    kv.put("routing", b("r1")).await.unwrap();
    let r2 = kv.put("routing", b("r2")).await.unwrap();
    let j1 = kv.put("jwks", b("j1")).await.unwrap();
    let mut current = kv.watch("", WatchFrom::Current).await.unwrap();
    let first = next_event(&mut current).await;
    let second = next_event(&mut current).await;
    assert_eq!(
        (
            first.key(),
            first.revision(),
            second.key(),
            second.revision()
        ),
        ("routing", r2, "jwks", j1)
    );
    let r3 = kv.put("routing", b("r3")).await.unwrap();
    let live = next_event(&mut current).await;
    assert_eq!((live.key(), live.revision()), ("routing", r3));

    let mut from = kv.watch("", WatchFrom::Revision(j1)).await.unwrap();
    let replayed = next_event(&mut from).await;
    assert_eq!((replayed.key(), replayed.revision()), ("jwks", j1));
    let next = next_event(&mut from).await;
    assert_eq!((next.key(), next.revision()), ("routing", r3));
}

async fn all_pages(kv: &dyn KvBucket, prefix: &str, limit: usize) -> (Vec<String>, usize) {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = kv.keys(prefix, after.as_deref(), limit).await.unwrap();
        pages += 1;
        assert!(page.keys.len() <= limit);
        keys.extend(page.keys);
        match page.next {
            Some(next) => after = Some(next),
            None => return (keys, pages),
        }
        assert!(pages < 10_000, "pagination does not end");
    }
}

/// Paging through keys returns every live key under the prefix exactly once, sorted.
pub async fn keys_pagination_is_complete(store: &Store) {
    let kv = store.kv(Bucket::Iam);
    let mut want = BTreeSet::new();
    for i in 0..103 {
        let key = format!("role.r{i:03}");
        kv.put(&key, b("x")).await.unwrap();
        want.insert(key);
        kv.put(&format!("right.x{i}"), b("x")).await.unwrap();
    }
    for i in (0..103).step_by(10) {
        let key = format!("role.r{i:03}");
        kv.delete(&key, None).await.unwrap();
        want.remove(&key);
    }
    for limit in [1, 7, 50, 1000] {
        let (keys, pages) = all_pages(kv.as_ref(), "role.", limit).await;
        let got: BTreeSet<String> = keys.iter().cloned().collect();
        assert_eq!(got.len(), keys.len(), "no key listed twice (limit {limit})");
        assert_eq!(got, want, "limit {limit}");
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted");
        assert_eq!(pages, want.len().div_ceil(limit).max(1), "limit {limit}");
    }
    let (everything, _) = all_pages(kv.as_ref(), "", 500).await;
    assert_eq!(everything.len(), want.len() + 103);
}

/// `revisions` lists each live key under the prefix with the revision of its current
/// value, sorted, and the bucket's last revision (deletions and other prefixes included).
pub async fn revisions_list_live_keys_and_the_last_revision(store: &Store) {
    let kv = store.kv(Bucket::Authz);
    let empty = kv.revisions("principal.").await.unwrap();
    assert!(empty.keys.is_empty());
    let mut want = std::collections::BTreeMap::new();
    for i in 0..30 {
        let key = format!("principal.p{i:02}");
        let revision = kv.put(&key, b("v1")).await.unwrap();
        want.insert(key, revision);
    }
    for i in (0..30).step_by(3) {
        let key = format!("principal.p{i:02}");
        let revision = kv.put(&key, b("v2")).await.unwrap();
        want.insert(key, revision);
    }
    for i in (1..30).step_by(7) {
        let key = format!("principal.p{i:02}");
        kv.delete(&key, None).await.unwrap();
        want.remove(&key);
    }
    let other = kv.put("session.s1", b("x")).await.unwrap();
    let deleted_last = kv.put("principal.gone", b("x")).await.unwrap();
    kv.delete("principal.gone", None).await.unwrap();
    let listed = kv.revisions("principal.").await.unwrap();
    let want: Vec<(String, u64)> = want.into_iter().collect();
    assert_eq!(listed.keys, want);
    assert!(
        listed.last > deleted_last && deleted_last > other,
        "{listed:?}"
    );
    let everything = kv.revisions("").await.unwrap();
    assert_eq!(everything.keys.len(), want.len() + 1);
    assert_eq!(everything.last, listed.last);
}

/// A value over one message (3 MiB, hardly compressible) is written as parts and a
/// manifest, read back whole, and refused when a part is missing or altered; small
/// values are stored as they are; replacing a large value and deleting the replaced
/// one's parts leaves only the new parts.
pub async fn large_values_are_stored_in_parts_and_read_back_whole(store: &Store) {
    use crate::large;
    let kv = store.kv(Bucket::Snapshots);
    let small = b("{\"v\":1}");
    let revision = large::write(kv.as_ref(), "doc", small.clone(), None)
        .await
        .unwrap();
    let stored = kv.get("doc").await.unwrap().unwrap().value;
    assert_eq!(stored, small, "small values are stored as they are");
    let mut noise = vec![0u8; 3 * 1024 * 1024];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for byte in noise.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = (state >> 24) as u8;
    }
    let big = Bytes::from(noise);
    let revision = large::write(kv.as_ref(), "doc", big.clone(), Some(revision))
        .await
        .unwrap();
    let head = kv.get("doc").await.unwrap().unwrap().value;
    assert!(large::is_manifest(&head) && head.len() < 1024, "{head:?}");
    assert_eq!(
        large::resolve(kv.as_ref(), "doc", head.clone())
            .await
            .unwrap(),
        big
    );
    let manifest_parts = |head: &[u8]| {
        let manifest: serde_json::Value = serde_json::from_slice(head).unwrap();
        manifest["large_value"]["parts"].as_u64().unwrap() as usize
    };
    let parts = kv.revisions("doc.parts.").await.unwrap().keys;
    // noise does not compress: at least as many parts as the raw length needs
    assert!(parts.len() >= big.len().div_ceil(large::PART_SIZE));
    assert_eq!(parts.len(), manifest_parts(&head));
    // a stale compare-and-set writes nothing, parts included
    assert!(matches!(
        large::write(kv.as_ref(), "doc", big.clone(), Some(revision + 100)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(kv.revisions("doc.parts.").await.unwrap().keys, parts);
    // an altered part, then a missing one, are refused
    let (first, _) = &parts[0];
    let original = kv.get(first).await.unwrap().unwrap().value;
    let mut altered = original.to_vec();
    altered[10] ^= 1;
    kv.put(first, Bytes::from(altered)).await.unwrap();
    assert!(matches!(
        large::resolve(kv.as_ref(), "doc", head.clone()).await,
        Err(StoreError::Corrupt(_))
    ));
    kv.delete(first, None).await.unwrap();
    assert!(matches!(
        large::resolve(kv.as_ref(), "doc", head.clone()).await,
        Err(StoreError::NotFound(_))
    ));
    kv.put(first, original).await.unwrap();
    // replaced by another large value: the old parts go, the new ones stay
    let bigger = Bytes::from([big.as_ref(), big.as_ref()].concat());
    large::write(kv.as_ref(), "doc", bigger.clone(), Some(revision))
        .await
        .unwrap();
    large::delete_parts(kv.as_ref(), "doc", &head).await;
    let now = kv.get("doc").await.unwrap().unwrap().value;
    assert_eq!(
        large::resolve(kv.as_ref(), "doc", now.clone())
            .await
            .unwrap(),
        bigger
    );
    let left = kv.revisions("doc.parts.").await.unwrap().keys;
    assert_eq!(left.len(), manifest_parts(&now));
    assert!(left.iter().all(|part| !parts.contains(part)));
    // a manifest promising more than the bound is refused before any read
    let forged = b(
        "{\"large_value\":{\"id\":\"x\",\"parts\":1,\"compressed\":10,\"size\":99999999999,\"sha256\":\"00\",\"encoding\":\"deflate\"}}",
    );
    assert!(matches!(
        large::resolve(kv.as_ref(), "doc", forged).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// Listing keys and reading the audit log many times in a row holds no server resources
/// (NATS: each call's ephemeral consumer is released).
pub async fn repeated_listings_release_their_resources(store: &Store) {
    let kv = store.kv(Bucket::Iam);
    kv.put("role.a", b("x")).await.unwrap();
    store.audit().append("acme", "x.y", b("{}")).await.unwrap();
    for _ in 0..1200 {
        assert_eq!(
            kv.keys("role.", None, 10).await.unwrap().keys,
            vec!["role.a".to_string()]
        );
    }
    for _ in 0..300 {
        let read = store
            .audit()
            .read(&AuditQuery {
                tenant: Some("acme".into()),
                from_seq: 1,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(read.len(), 1);
    }
}

/// The audit log appends in order and reads back by tenant, position and limit.
pub async fn audit_log_appends_and_reads(store: &Store) {
    let audit = store.audit();
    let mut seqs = Vec::new();
    for i in 0..12 {
        let tenant = if i % 3 == 0 { "_platform" } else { "acme" };
        seqs.push(
            audit
                .append(tenant, "user.create", b(&format!("{{\"i\":{i}}}")))
                .await
                .unwrap(),
        );
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let all = audit
        .read(&AuditQuery {
            tenant: None,
            from_seq: 1,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 12);
    assert_eq!(all[4].data, b("{\"i\":4}"));
    assert_eq!(all[4].action, "user.create");
    let acme = audit
        .read(&AuditQuery {
            tenant: Some("acme".into()),
            from_seq: 1,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(acme.len(), 8);
    assert!(acme.iter().all(|r| r.tenant == "acme"));
    let page = audit
        .read(&AuditQuery {
            tenant: None,
            from_seq: seqs[5],
            limit: 3,
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        seqs[5..8].to_vec()
    );
    assert!(audit.append("not a token", "x", b("")).await.is_err());
    assert!(audit.append("acme", "bad action", b("")).await.is_err());
    let empty = audit
        .read(&AuditQuery {
            tenant: Some("nobody".into()),
            from_seq: 1,
            limit: 10,
        })
        .await
        .unwrap();
    assert!(empty.is_empty());
}

/// Generates one `#[tokio::test]` per conformance case. `$open` is an async fn returning
/// `(Store, guard)`; the guard keeps the backend alive for the test.
#[macro_export]
macro_rules! store_conformance_tests {
    ($open:path) => {
        $crate::store_conformance_tests!(@case $open, basic_operations);
        $crate::store_conformance_tests!(@case $open, invalid_keys_are_refused);
        $crate::store_conformance_tests!(@case $open, concurrent_updates_have_one_winner);
        $crate::store_conformance_tests!(@case $open, concurrent_creates_are_exclusive);
        $crate::store_conformance_tests!(@case $open, watch_converges_per_key_in_revision_order);
        $crate::store_conformance_tests!(@case $open, watch_replays_current_state_and_from_revision);
        $crate::store_conformance_tests!(@case $open, keys_pagination_is_complete);
        $crate::store_conformance_tests!(@case $open, revisions_list_live_keys_and_the_last_revision);
        $crate::store_conformance_tests!(@case $open, large_values_are_stored_in_parts_and_read_back_whole);
        $crate::store_conformance_tests!(@case $open, audit_log_appends_and_reads);
        $crate::store_conformance_tests!(@case $open, repeated_listings_release_their_resources);
    };
    (@case $open:path, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let (store, _guard) = $open().await;
            $crate::conformance::$case(&store).await;
        }
    };
}
