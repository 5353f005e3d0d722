//! Mirrors of the signed documents the data plane trusts (`routing`, `jwks` in the
//! snapshots bucket): followed with a watch, verified, swapped in atomically, and kept at
//! their last-known-good value when a document is rejected or the store is away.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use futures::StreamExt;
use gateway_core::routing::{RoutingDocument, RoutingTable};
use gateway_core::signed::{DocError, DocVerifyingKeys, Verified, accept_revision};
use gateway_edge::http::ReadyCheck;
use gateway_store::{Bucket, Store, WatchEvent, WatchFrom};

use gateway_core::authz::EffectiveRights;
use gateway_core::jwks::JwksDocument;
use gateway_core::token::TokenVerifier;
use tokio_util::sync::CancellationToken;

/// Key (and document kind) of the routing snapshot.
pub const ROUTING: &str = "routing";
/// Key (and document kind) of the public verification keys.
pub const JWKS: &str = "jwks";

/// The current verified documents. Readers `load()` once per request.
#[derive(Default)]
pub struct Mirrors {
    /// The routing table, built aside from each new verified and valid document.
    pub routing: ArcSwapOption<RoutingTable>,
    /// Access-token verification keys, built from each new `jwks` document.
    pub jwks: ArcSwapOption<KeysInUse>,
    /// Effective rights per principal (`principal.<id>` documents of the authz bucket).
    pub principals: parking_lot::RwLock<foldhash::HashMap<String, Arc<PrincipalSlot>>>,
    /// Routing comes from a local file (`--routing-file`): routing documents of the store
    /// are ignored.
    pub static_routing: bool,
    /// The signed bytes of every applied document, for the local cache file; `None` when
    /// no cache file is kept.
    pub journal: Option<parking_lot::Mutex<Journal>>,
    /// Signalled when a new routing table is swapped in (the heartbeat reports it).
    pub routing_changed: tokio::sync::Notify,
    /// Per feed (snapshots, authz), unix seconds of the last sign that its mirror is
    /// current: a watch event received or a reconciliation passed (0: none yet; set at
    /// start, see `touch`). A heartbeat written proves only that the store takes writes,
    /// not that a watch still delivers, so it does not count.
    contact: [std::sync::atomic::AtomicI64; 2],
    /// Per feed, unix seconds of the last successful reconciliation (0: none yet).
    reconciled_at: [std::sync::atomic::AtomicI64; 2],
    /// Unix seconds of the last heartbeat written (0: none yet).
    heartbeat_at: std::sync::atomic::AtomicI64,
    /// Principal documents held parsed (approximate between sweeps; see `sweep_parsed`).
    parsed: std::sync::atomic::AtomicUsize,
    /// Every principal document the store held when the authz watch started has been
    /// applied (or the cache file, a whole copy, was loaded): until then a signed-in
    /// member could be refused for want of their document, so the replica is not ready.
    pub principals_replayed: std::sync::atomic::AtomicBool,
}

/// The last verified routing and key documents, as signed bytes (base64), for the cache
/// file (the principal documents are taken from their slots when it is written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Journal {
    pub routing: Option<String>,
    pub jwks: Option<String>,
    /// Changed since the cache file was last written.
    pub dirty: bool,
}

/// One principal's document: its signed bytes as stored (what the cache file keeps),
/// its revision once verified, and the parsed document while used. A document from the
/// store is verified as it arrives (to order it) but parsed only when a request needs it,
/// unless the one it replaces was parsed; one loaded from the cache file is verified on
/// first use (or by the pass after the load). Parsed documents are bounded
/// (`--principal-cache-size`): past the bound, those not used since the last sweep are
/// dropped, to be verified and parsed again on their next use. So 100,000 principals cost
/// their signed bytes plus the parsed documents of the active ones, and a replica is ready
/// from its file without first checking 100,000 signatures. A document that fails
/// verification is refused, like a missing one.
pub struct PrincipalSlot {
    raw: bytes::Bytes,
    /// The revision verified when the document was applied (`None`: loaded unverified).
    revision: Option<u64>,
    keys: Arc<DocVerifyingKeys>,
    doc: parking_lot::Mutex<Parsed>,
    /// Used since the last sweep (a second chance before its parsed form is dropped).
    used: std::sync::atomic::AtomicBool,
}

/// What a slot holds besides its signed bytes.
enum Parsed {
    /// Not parsed (never used, or dropped by a sweep).
    No,
    Yes(Arc<Verified<EffectiveRights>>),
    /// Failed verification: never served.
    Failed,
}

impl PrincipalSlot {
    fn new(
        raw: bytes::Bytes,
        revision: Option<u64>,
        keys: Arc<DocVerifyingKeys>,
        doc: Parsed,
    ) -> PrincipalSlot {
        PrincipalSlot {
            raw,
            revision,
            keys,
            doc: parking_lot::Mutex::new(doc),
            used: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The verified document of `principal_id` (`None`: it failed verification), and
    /// whether it was parsed by this call.
    fn get(&self, principal_id: &str) -> (Option<Arc<Verified<EffectiveRights>>>, bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.used.load(Relaxed) {
            self.used.store(true, Relaxed);
        }
        let mut doc = self.doc.lock();
        match &*doc {
            Parsed::Yes(parsed) => (Some(Arc::clone(parsed)), false),
            Parsed::Failed => (None, false),
            Parsed::No => match verify_principal(&self.keys, principal_id, &self.raw) {
                Ok(parsed) => {
                    let parsed = Arc::new(parsed);
                    *doc = Parsed::Yes(Arc::clone(&parsed));
                    (Some(parsed), true)
                }
                Err(err) => {
                    reject(PRINCIPAL, &err);
                    *doc = Parsed::Failed;
                    (None, false)
                }
            },
        }
    }

    /// The document's revision, verifying it first if it was loaded unverified (`None`:
    /// it failed verification).
    fn verified_revision(&self, principal_id: &str) -> Option<u64> {
        if let Some(revision) = self.revision {
            return Some(revision);
        }
        match &*self.doc.lock() {
            Parsed::Yes(doc) => Some(doc.revision),
            Parsed::Failed => None,
            // checked without keeping the parsed document: not in use for that
            Parsed::No => verify_principal(&self.keys, principal_id, &self.raw)
                .ok()
                .map(|doc| doc.revision),
        }
    }

    /// Whether the document is parsed (a request used it, and it verified).
    fn in_use(&self) -> bool {
        matches!(*self.doc.lock(), Parsed::Yes(_))
    }

    /// Whether the document failed verification.
    fn failed(&self) -> bool {
        matches!(*self.doc.lock(), Parsed::Failed)
    }

    /// Drops the parsed document; whether there was one.
    fn evict(&self) -> bool {
        let mut doc = self.doc.lock();
        if matches!(*doc, Parsed::Yes(_)) {
            *doc = Parsed::No;
            true
        } else {
            false
        }
    }
}

/// Verifies a `principal.<id>` document and that it is filed under its principal.
fn verify_principal(
    keys: &DocVerifyingKeys,
    principal_id: &str,
    bytes: &[u8],
) -> Result<Verified<EffectiveRights>, DocError> {
    let doc: Verified<EffectiveRights> = keys.verify(bytes, PRINCIPAL)?;
    if doc.payload.principal_id != principal_id {
        return Err(DocError::Payload(
            "document filed under another principal".into(),
        ));
    }
    Ok(doc)
}

/// The verification keys of one `jwks` revision.
pub struct KeysInUse {
    pub revision: u64,
    pub issued_at: i64,
    pub verifier: TokenVerifier,
}

impl Mirrors {
    /// Mirrors that take routing from a file (`static_routing`) and journal the applied
    /// documents for a cache file (`journal`).
    pub fn new(static_routing: bool, journal: bool) -> Mirrors {
        Mirrors {
            static_routing,
            journal: journal.then(|| parking_lot::Mutex::new(Journal::default())),
            ..Mirrors::default()
        }
    }

    /// Records that every mirror is current at `now` (unix seconds): the state loaded at
    /// start.
    pub fn touch(&self, now: i64) {
        for contact in &self.contact {
            contact.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Records that the mirror of `bucket` was confirmed current at `now`.
    pub fn touch_feed(&self, bucket: Bucket, now: i64) {
        self.contact[feed(bucket)].fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Seconds since the least current mirror was last confirmed (`None` before the first
    /// contact).
    pub fn staleness(&self, now: i64) -> Option<i64> {
        let at = self
            .contact
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        (at != 0).then(|| (now - at).max(0))
    }

    fn remember(&self, bytes: &[u8], record: impl FnOnce(&mut Journal, String)) {
        use base64::Engine;
        if let Some(mut journal) = self.journal.as_ref().map(|j| j.lock()) {
            record(
                &mut journal,
                base64::engine::general_purpose::STANDARD.encode(bytes),
            );
            journal.dirty = true;
        }
    }

    /// Verifies `bytes` as a document of `kind` and swaps it in when newer. Returns whether
    /// the mirror changed; on error the current copy stays in force.
    pub fn apply(
        &self,
        keys: &DocVerifyingKeys,
        kind: &str,
        bytes: &[u8],
    ) -> Result<bool, DocError> {
        match kind {
            ROUTING if self.static_routing => Ok(false),
            ROUTING => {
                let doc: Verified<RoutingDocument> = keys.verify(bytes, kind)?;
                let current = self.routing.load().as_ref().map(|t| t.revision);
                if !accept_revision(current, doc.revision)? {
                    return Ok(false);
                }
                // the whole table is built before it is swapped in, once
                let table = RoutingTable::build(doc.payload, doc.revision, doc.issued_at)
                    .map_err(|err| DocError::Payload(err.to_string()))?;
                applied(kind, table.revision, table.issued_at, &doc.key_id);
                self.routing.store(Some(Arc::new(table)));
                self.routing_changed.notify_one();
                self.remember(bytes, |j, b| j.routing = Some(b));
                Ok(true)
            }
            JWKS => {
                let doc: Verified<JwksDocument> = keys.verify(bytes, kind)?;
                let current = self.jwks.load().as_ref().map(|d| d.revision);
                if !accept_revision(current, doc.revision)? {
                    return Ok(false);
                }
                let verifier = TokenVerifier::from_document(&doc.payload);
                if verifier.is_empty() {
                    return Err(DocError::Payload("no usable key".into()));
                }
                applied(kind, doc.revision, doc.issued_at, &doc.key_id);
                self.jwks.store(Some(Arc::new(KeysInUse {
                    revision: doc.revision,
                    issued_at: doc.issued_at,
                    verifier,
                })));
                self.remember(bytes, |j, b| j.jwks = Some(b));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Verifies and applies a `principal.<id>` document (newer revisions only).
    pub fn apply_principal(
        &self,
        keys: &Arc<DocVerifyingKeys>,
        principal_id: &str,
        bytes: &[u8],
    ) -> Result<bool, DocError> {
        let doc = verify_principal(keys, principal_id, bytes)?;
        let mut principals = self.principals.write();
        let current = principals.get(principal_id);
        // a slot loaded from the cache file is verified now; one that fails gives way
        let revision = current.and_then(|slot| slot.verified_revision(principal_id));
        if !accept_revision(revision, doc.revision)? {
            return Ok(false);
        }
        // the parsed document is kept only for a principal in use
        let in_use = current.is_some_and(|slot| slot.in_use());
        let revision = doc.revision;
        let slot = Arc::new(PrincipalSlot::new(
            bytes::Bytes::copy_from_slice(bytes),
            Some(revision),
            Arc::clone(keys),
            if in_use {
                Parsed::Yes(Arc::new(doc))
            } else {
                Parsed::No
            },
        ));
        principals.insert(principal_id.to_string(), slot);
        metrics::gauge!("gateway_authz_principals").set(principals.len() as f64);
        drop(principals);
        self.mark_dirty();
        Ok(true)
    }

    /// Files the cache file's copy of a principal's document, unverified until first use;
    /// never over a document already held.
    pub fn load_principal(
        &self,
        keys: &Arc<DocVerifyingKeys>,
        principal_id: &str,
        bytes: bytes::Bytes,
    ) -> bool {
        let mut principals = self.principals.write();
        if principals.contains_key(principal_id) {
            return false;
        }
        principals.insert(
            principal_id.to_string(),
            Arc::new(PrincipalSlot::new(
                bytes,
                None,
                Arc::clone(keys),
                Parsed::No,
            )),
        );
        metrics::gauge!("gateway_authz_principals").set(principals.len() as f64);
        true
    }

    /// Verifies every slot still unverified (after a cache-file load; the replica serves
    /// meanwhile, verifying on first use what a request needs first), without keeping the
    /// parsed documents. Returns how many failed.
    pub fn verify_loaded(&self) -> usize {
        let pending: Vec<(String, Arc<PrincipalSlot>)> = self
            .principals
            .read()
            .iter()
            .filter(|(_, slot)| slot.revision.is_none())
            .map(|(id, slot)| (id.clone(), Arc::clone(slot)))
            .collect();
        let mut failed = 0;
        for (id, slot) in pending {
            // a request checked it first
            if slot.in_use() {
                continue;
            }
            if slot.failed() {
                failed += 1;
                continue;
            }
            match verify_principal(&slot.keys, &id, &slot.raw) {
                Ok(doc) => {
                    // verified, and still unparsed for use: the same slot, revision known
                    let verified = Arc::new(PrincipalSlot::new(
                        slot.raw.clone(),
                        Some(doc.revision),
                        Arc::clone(&slot.keys),
                        Parsed::No,
                    ));
                    let mut principals = self.principals.write();
                    if principals
                        .get(&id)
                        .is_some_and(|current| Arc::ptr_eq(current, &slot))
                    {
                        principals.insert(id, verified);
                    }
                }
                Err(err) => {
                    reject(PRINCIPAL, &err);
                    *slot.doc.lock() = Parsed::Failed;
                    failed += 1;
                }
            }
        }
        failed
    }

    /// The signed bytes of every principal document, for the cache file (not those that
    /// failed verification).
    pub fn principal_documents(&self) -> Vec<(String, bytes::Bytes)> {
        self.principals
            .read()
            .iter()
            .filter(|(_, slot)| !slot.failed())
            .map(|(id, slot)| (id.clone(), slot.raw.clone()))
            .collect()
    }

    fn mark_dirty(&self) {
        if let Some(mut journal) = self.journal.as_ref().map(|j| j.lock()) {
            journal.dirty = true;
        }
    }

    /// The current effective rights of a principal.
    pub fn principal(&self, principal_id: &str) -> Option<Arc<Verified<EffectiveRights>>> {
        let slot = self.principals.read().get(principal_id).cloned()?;
        let (doc, parsed_now) = slot.get(principal_id);
        if parsed_now {
            self.parsed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        doc
    }

    /// Keeps at most `bound` parsed principal documents (0: no bound): past it, drops the
    /// parsed form of those not used since the last sweep, then of others, down to 90 %
    /// of the bound (a second chance, as a clock does). Returns how many were dropped.
    pub fn sweep_parsed(&self, bound: usize) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        if bound == 0 || self.parsed.load(Relaxed) <= bound {
            return 0;
        }
        let slots: Vec<Arc<PrincipalSlot>> = self.principals.read().values().cloned().collect();
        // counted again: the counter only approximates between sweeps
        let mut parsed = slots.iter().filter(|slot| slot.in_use()).count();
        let target = bound - bound / 10;
        let mut dropped = 0;
        for second_pass in [false, true] {
            for slot in &slots {
                if parsed <= target {
                    break;
                }
                if !second_pass && slot.used.swap(false, Relaxed) {
                    continue;
                }
                if slot.evict() {
                    parsed -= 1;
                    dropped += 1;
                }
            }
        }
        self.parsed.store(parsed, Relaxed);
        metrics::gauge!("gateway_authz_principals_parsed").set(parsed as f64);
        metrics::counter!("gateway_authz_principals_dropped_total").increment(dropped as u64);
        dropped
    }
}

/// Kind of the effective-rights documents.
pub const PRINCIPAL: &str = "principal";

/// Index of a followed bucket in the per-feed arrays of [`Mirrors`].
fn feed(bucket: Bucket) -> usize {
    usize::from(bucket == Bucket::Authz)
}

pub(crate) fn applied(kind: &str, revision: u64, issued_at: i64, key_id: &str) {
    metrics::gauge!("gateway_snapshot_revision", "kind" => kind.to_string()).set(revision as f64);
    metrics::gauge!("gateway_snapshot_issued_at_seconds", "kind" => kind.to_string())
        .set(issued_at as f64);
    tracing::info!(kind, revision, key_id, "snapshot applied");
}

pub(crate) fn reject(kind: &str, err: &DocError) {
    let reason = match err {
        DocError::Malformed(_) => "malformed",
        DocError::WrongKind { .. } => "wrong_kind",
        DocError::UnknownKey(_) => "unknown_key",
        DocError::BadSignature => "bad_signature",
        DocError::StaleRevision { .. } => "stale_revision",
        DocError::Payload(_) => "payload",
        DocError::Key(_) => "key",
    };
    metrics::counter!("gateway_snapshot_rejects_total", "kind" => kind.to_string(), "reason" => reason)
        .increment(1);
    tracing::warn!(kind, reason, error = %err, "snapshot rejected, keeping last-known-good");
}

/// Follows one bucket (snapshots or authz) until `shutdown`: a watch from the current
/// state, re-created whenever the store goes away; and every `reconcile_every`, a
/// reconciliation that compares the store's key revisions with what was applied, applies
/// whatever the watch missed, and re-creates the watch when the store's revisions went
/// backwards (a bucket recreated or restored, under which an old watch can stay silent).
/// Never ends on a transient error.
pub async fn follow(
    store: Store,
    bucket: Bucket,
    keys: Arc<DocVerifyingKeys>,
    mirrors: Arc<Mirrors>,
    reconcile_every: Duration,
    shutdown: CancellationToken,
) {
    let kv = store.kv(bucket);
    let prefix = if bucket == Bucket::Authz {
        "principal."
    } else {
        ""
    };
    let mut backoff =
        gateway_core::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // the principal documents the watch must deliver before the replica is ready
    let mut replay = Replay::default();
    if bucket == Bucket::Authz
        && !mirrors
            .principals_replayed
            .load(std::sync::atomic::Ordering::Acquire)
    {
        loop {
            let listed = tokio::select! {
                _ = shutdown.cancelled() => return,
                listed = list_keys(kv.as_ref(), prefix) => listed,
            };
            match listed {
                Ok(keys) => {
                    tracing::info!(principals = keys.len(), "replaying principal documents");
                    replay.pending = Some(keys);
                    replay.signals = true;
                    break;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_ms = delay.as_millis() as u64, "cannot list principal documents");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        backoff.reset();
    }
    replay.seen(None, &mirrors);
    let feed = Feed {
        bucket,
        keys,
        mirrors: Arc::clone(&mirrors),
    };
    let mut applied = Applied::default();
    let mut reconcile = tokio::time::interval(reconcile_every);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reconcile.tick().await;
    loop {
        let watch = tokio::select! {
            _ = shutdown.cancelled() => return,
            watch = kv.watch(prefix, WatchFrom::Current) => watch,
        };
        let mut watch = match watch {
            Ok(watch) => {
                backoff.reset();
                watch
            }
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, retry_ms = delay.as_millis() as u64, "cannot watch snapshots");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        };
        // a new watch first replays the current state: no reconciliation until it has
        // (reading 100,000 keys one by one would race the watch and hold its events)
        let mut catching_up = Replay {
            pending: list_keys(kv.as_ref(), prefix).await.ok(),
            signals: false,
        };
        catching_up.seen(None, &mirrors);
        // while replaying, a key listed at the start but deleted since may never come (a
        // backend need not deliver deletions of the past): the pending set is checked
        // against a fresh listing now and then
        let mut recheck = tokio::time::interval(REPLAY_RECHECK);
        recheck.tick().await;
        loop {
            let replaying = replay.pending.is_some() || catching_up.pending.is_some();
            let item = tokio::select! {
                _ = shutdown.cancelled() => return,
                item = watch.next() => item,
                _ = recheck.tick(), if replaying => {
                    if let Ok(live) = list_keys(kv.as_ref(), prefix).await {
                        replay.keep_only(&live, &mirrors);
                        catching_up.keep_only(&live, &mirrors);
                    }
                    continue;
                }
                _ = reconcile.tick(), if !replaying => {
                    let reconciled = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        reconciled = feed.reconcile(kv.as_ref(), prefix, &mut applied) => reconciled,
                    };
                    if reconciled == Reconciled::WentBack {
                        metrics::counter!("gateway_mirror_watch_rebuilds_total", "bucket" => bucket.name(), "reason" => "revisions_went_back").increment(1);
                        tracing::warn!(bucket = bucket.name(), "the store's revisions went backwards (bucket recreated or restored?): re-creating the watch");
                        break;
                    }
                    continue;
                }
            };
            match item {
                Some(Ok(WatchEvent::Put(entry))) => {
                    let revision = entry.revision;
                    // queued behind a reconciliation that applied it already
                    if applied
                        .revisions
                        .get(&entry.key)
                        .is_some_and(|seen| *seen >= revision)
                    {
                        mirrors.touch_feed(bucket, gateway_core::unix_now());
                    } else {
                        // a large document arrives as a manifest: its parts are read now
                        match gateway_store::large::resolve(kv.as_ref(), &entry.key, entry.value)
                            .await
                        {
                            Ok(value) => {
                                mirrors.touch_feed(bucket, gateway_core::unix_now());
                                applied.saw(&entry.key, Some(revision));
                                feed.apply(&entry.key, &value);
                            }
                            // not recorded as applied: the next reconciliation reads the key
                            // again (a part not yet visible on this server, a store away, or
                            // a value replaced meanwhile, whose successor is then read)
                            Err(err) => {
                                tracing::warn!(key = %entry.key, error = %err, "large document not readable now; read again at the next reconciliation");
                            }
                        }
                    }
                    // counted as delivered only once applied: the replica says it is
                    // ready only when a request would find the document (a large one
                    // whose parts cannot be read now counts too: waiting for it could
                    // hold readiness until the key is written again, and the
                    // reconciliation that follows the replay reads it)
                    replay.seen(Some(&entry.key), &mirrors);
                    catching_up.seen(Some(&entry.key), &mirrors);
                }
                Some(Ok(WatchEvent::Delete { key, revision })) => {
                    mirrors.touch_feed(bucket, gateway_core::unix_now());
                    replay.seen(Some(&key), &mirrors);
                    catching_up.seen(Some(&key), &mirrors);
                    applied.saw(&key, None);
                    applied.high = applied.high.max(revision);
                    // a deleted document is not a new truth: keep serving the last good one
                    // (the parts of a replaced large document go as a matter of course)
                    if !key.contains(".parts.") {
                        tracing::warn!(kind = %key, "snapshot deleted in the store, keeping last-known-good");
                    }
                }
                Some(Err(err)) => tracing::warn!(error = %err, "snapshot watch interrupted"),
                None => {
                    metrics::counter!("gateway_mirror_watch_rebuilds_total", "bucket" => bucket.name(), "reason" => "ended").increment(1);
                    tracing::warn!("snapshot watch ended, re-creating");
                    break;
                }
            }
        }
    }
}

/// One followed bucket: where its documents go.
struct Feed {
    bucket: Bucket,
    keys: Arc<DocVerifyingKeys>,
    mirrors: Arc<Mirrors>,
}

/// What a follower applied, by store revision.
#[derive(Default)]
struct Applied {
    /// The store revision of the value last applied (or refused) per live key.
    revisions: foldhash::HashMap<String, gateway_store::Revision>,
    /// The highest store revision the bucket was seen at.
    high: gateway_store::Revision,
}

impl Applied {
    /// `key` is at `revision` (`None`: deleted).
    fn saw(&mut self, key: &str, revision: Option<gateway_store::Revision>) {
        match revision {
            Some(revision) => {
                self.high = self.high.max(revision);
                match self.revisions.get_mut(key) {
                    Some(seen) => *seen = revision,
                    None => {
                        self.revisions.insert(key.to_string(), revision);
                    }
                }
            }
            None => {
                self.revisions.remove(key);
            }
        }
    }
}

/// How a reconciliation ended.
#[derive(Debug, PartialEq, Eq)]
enum Reconciled {
    /// The mirror matches the store's listing (after repairs, if any).
    Current,
    /// The store's revisions are below what was seen: the watch must be re-created.
    WentBack,
    /// The store could not be listed; nothing was concluded.
    Failed,
}

impl Feed {
    /// Verifies and applies one document of the bucket; a refusal is counted and logged
    /// and the mirror keeps its current copy. Returns whether the mirror changed.
    fn apply(&self, key: &str, value: &[u8]) -> bool {
        let result = match key.strip_prefix("principal.") {
            Some(principal) if self.bucket == Bucket::Authz => {
                self.mirrors.apply_principal(&self.keys, principal, value)
            }
            _ => self.mirrors.apply(&self.keys, key, value),
        };
        match result {
            Ok(changed) => changed,
            Err(err) => {
                let kind = if self.bucket == Bucket::Authz {
                    PRINCIPAL
                } else {
                    key
                };
                reject(kind, &err);
                false
            }
        }
    }

    /// Lists the store's key revisions and applies every document whose revision differs
    /// from the one applied. Watch events are not taken meanwhile (same task), so what was
    /// applied before the listing is a lower bound of the store at listing time: a lower
    /// revision in the listing can only mean the bucket went backwards.
    async fn reconcile(
        &self,
        kv: &dyn gateway_store::KvBucket,
        prefix: &str,
        applied: &mut Applied,
    ) -> Reconciled {
        let bucket = self.bucket.name();
        // the mirror is confirmed as of the listing, not of the end of the pass
        let listed_at = gateway_core::unix_now();
        let result = async {
            let listing = kv.revisions(prefix).await?;
            let went_back = listing.last < applied.high
                || listing.keys.iter().any(|(key, revision)| {
                    applied.revisions.get(key).is_some_and(|seen| revision < seen)
                });
            if went_back {
                tracing::warn!(
                    bucket,
                    store_last = listing.last,
                    seen = applied.high,
                    "store revisions below those already seen"
                );
                // a new watch replays the current state; start the books again from it
                *applied = Applied {
                    high: listing.last,
                    ..Applied::default()
                };
                return Ok::<_, gateway_store::StoreError>(Reconciled::WentBack);
            }
            let mut repaired = 0u64;
            for (key, revision) in &listing.keys {
                if applied.revisions.get(key) == Some(revision) {
                    continue;
                }
                // behind, or never delivered: read it now (gone meanwhile: nothing to do)
                let Some(entry) = kv.get(key).await? else {
                    continue;
                };
                let value = match gateway_store::large::resolve(kv, key, entry.value).await {
                    Ok(value) => value,
                    Err(err @ gateway_store::StoreError::Unavailable(_)) => return Err(err),
                    // not recorded: tried again at the next pass
                    Err(err) => {
                        tracing::warn!(key = %entry.key, error = %err, "large document unreadable");
                        continue;
                    }
                };
                if self.apply(&entry.key, &value) {
                    repaired += 1;
                    tracing::warn!(bucket, key = %entry.key, revision = entry.revision, "reconciliation applied a document the watch had not delivered");
                }
                applied.saw(&entry.key, Some(entry.revision));
            }
            // keys no longer in the store: their last good documents stay in force
            let live: std::collections::HashSet<&str> =
                listing.keys.iter().map(|(key, _)| key.as_str()).collect();
            applied.revisions.retain(|key, _| live.contains(key.as_str()));
            applied.high = applied.high.max(listing.last);
            if repaired > 0 {
                metrics::counter!("gateway_mirror_documents_repaired_total", "bucket" => bucket)
                    .increment(repaired);
            }
            Ok(Reconciled::Current)
        }
        .await;
        match result {
            Ok(outcome) => {
                self.mirrors.touch_feed(self.bucket, listed_at);
                self.mirrors.reconciled_at[feed(self.bucket)]
                    .store(listed_at, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("gateway_mirror_reconciliations_total", "bucket" => bucket, "result" => "ok").increment(1);
                outcome
            }
            Err(err) => {
                metrics::counter!("gateway_mirror_reconciliations_total", "bucket" => bucket, "result" => "error").increment(1);
                tracing::warn!(bucket, error = %err, "mirror reconciliation failed");
                Reconciled::Failed
            }
        }
    }
}

/// The keys a watch must still deliver (`None`: none, or done): the principal documents a
/// starting replica waits for (`signals`: it becomes ready when they are in), or what a
/// new watch replays of the current state (reconciliation waits for it).
#[derive(Default)]
struct Replay {
    pending: Option<std::collections::HashSet<String>>,
    /// Done means the replica has every principal document (`principals_replayed`).
    signals: bool,
}

impl Replay {
    /// `key` was delivered; when nothing is pending any more, the replica has every
    /// principal document.
    fn seen(&mut self, key: Option<&str>, mirrors: &Mirrors) {
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        if let Some(key) = key {
            pending.remove(key);
        }
        if pending.is_empty() {
            self.pending = None;
            if self.signals {
                mirrors
                    .principals_replayed
                    .store(true, std::sync::atomic::Ordering::Release);
                tracing::info!("principal documents replayed");
            }
        }
    }

    /// Forgets pending keys that are no longer in the store.
    fn keep_only(&mut self, live: &std::collections::HashSet<String>, mirrors: &Mirrors) {
        if let Some(pending) = self.pending.as_mut() {
            pending.retain(|key| live.contains(key));
        }
        self.seen(None, mirrors);
    }
}

/// How often a replay still waiting for principal documents compares its pending set
/// with the store's listing.
const REPLAY_RECHECK: Duration = Duration::from_secs(5);

/// Every live key under `prefix`, in one pass (a paged listing re-reads the bucket per
/// page on NATS: quadratic with 100,000 principals).
async fn list_keys(
    kv: &dyn gateway_store::KvBucket,
    prefix: &str,
) -> Result<std::collections::HashSet<String>, gateway_store::StoreError> {
    Ok(kv
        .revisions(prefix)
        .await?
        .keys
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// Writes this replica's heartbeat (see `gateway_store::heartbeat`) every interval and
/// at once when the routing changes, until `shutdown`; then deletes it.
pub async fn heartbeat(
    store: Store,
    mirrors: Arc<Mirrors>,
    replica_id: String,
    shutdown: CancellationToken,
) {
    use gateway_store::Record;
    use gateway_store::heartbeat::{DATA_PREFIX, Heartbeat, INTERVAL_SECS};
    let kv = store.kv(Bucket::Rebalance);
    let key = format!("{DATA_PREFIX}{replica_id}");
    let started_at = gateway_core::unix_now();
    let mut tick = tokio::time::interval(Duration::from_secs(INTERVAL_SECS));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = mirrors.routing_changed.notified() => {}
        }
        let beat = Heartbeat {
            replica_id: replica_id.clone(),
            plane: "data".into(),
            routing_revision: mirrors.routing.load().as_ref().map_or(0, |t| t.revision),
            jwks_revision: mirrors.jwks.load().as_ref().map_or(0, |k| k.revision),
            principals: mirrors.principals.read().len() as u64,
            started_at,
            seen_at: gateway_core::unix_now(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let Ok(bytes) = beat.to_bytes() else { continue };
        match kv.put(&key, bytes).await {
            Ok(_) => mirrors.heartbeat_at.store(
                gateway_core::unix_now(),
                std::sync::atomic::Ordering::Relaxed,
            ),
            Err(err) => tracing::debug!(error = %err, "heartbeat not written"),
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), kv.delete(&key, None)).await;
}

/// Publishes how old the routing and key documents in use are
/// (`gateway_snapshot_age_seconds`) and how long ago the store was reached
/// (`gateway_mirror_staleness_seconds`, `gateway_mirror_stale`), every second until
/// `shutdown`; logs when the data plane starts and stops failing closed.
pub async fn report_age(mirrors: Arc<Mirrors>, max_staleness: i64, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut was_stale = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = gateway_core::unix_now();
        if let Some(staleness) = mirrors.staleness(now) {
            metrics::gauge!("gateway_mirror_staleness_seconds").set(staleness as f64);
            let stale = max_staleness > 0 && staleness > max_staleness;
            if stale && !was_stale {
                tracing::error!(
                    staleness,
                    max_staleness,
                    "store unreachable for too long: failing closed (503 state_stale) until it is back"
                );
            } else if !stale && was_stale {
                tracing::info!(
                    staleness,
                    "store reachable again: serving from fresh mirrors"
                );
            }
            metrics::gauge!("gateway_mirror_stale").set(if stale { 1.0 } else { 0.0 });
            was_stale = stale;
        }
        for bucket in [Bucket::Snapshots, Bucket::Authz] {
            let at = mirrors.reconciled_at[feed(bucket)].load(std::sync::atomic::Ordering::Relaxed);
            if at != 0 {
                metrics::gauge!("gateway_mirror_reconcile_age_seconds", "bucket" => bucket.name())
                    .set((now - at) as f64);
            }
        }
        let beat = mirrors
            .heartbeat_at
            .load(std::sync::atomic::Ordering::Relaxed);
        if beat != 0 {
            metrics::gauge!("gateway_mirror_heartbeat_age_seconds").set((now - beat) as f64);
        }
        if let Some(table) = mirrors.routing.load().as_ref() {
            metrics::gauge!("gateway_snapshot_age_seconds", "kind" => ROUTING)
                .set((now - table.issued_at) as f64);
        }
        if let Some(keys) = mirrors.jwks.load().as_ref() {
            metrics::gauge!("gateway_snapshot_age_seconds", "kind" => JWKS)
                .set((now - keys.issued_at) as f64);
        }
    }
}

/// Ready once the routing and key documents are loaded (unless configured optional).
pub struct SnapshotsReady {
    pub mirrors: Arc<Mirrors>,
    pub optional: bool,
}

#[async_trait]
impl ReadyCheck for SnapshotsReady {
    fn name(&self) -> &'static str {
        "snapshots"
    }

    async fn check(&self) -> Result<(), String> {
        if self.optional {
            return Ok(());
        }
        let mut missing = Vec::new();
        if self.mirrors.routing.load().is_none() {
            missing.push(ROUTING);
        }
        if self.mirrors.jwks.load().is_none() {
            missing.push(JWKS);
        }
        if !self
            .mirrors
            .principals_replayed
            .load(std::sync::atomic::Ordering::Acquire)
        {
            missing.push("principals (replaying)");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not loaded yet: {}", missing.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_ends_when_every_listed_key_came_or_left_the_store() {
        let mirrors = Mirrors::new(false, false);
        let done = || {
            mirrors
                .principals_replayed
                .load(std::sync::atomic::Ordering::Acquire)
        };
        let keys = |list: &[&str]| list.iter().map(|k| k.to_string()).collect();
        let mut replay = Replay {
            pending: Some(keys(&["principal.a", "principal.b", "principal.c"])),
            signals: true,
        };
        replay.seen(Some("principal.a"), &mirrors);
        replay.seen(Some("principal.zzz"), &mirrors);
        assert!(!done());
        // c was deleted meanwhile: a fresh listing without it settles it
        replay.keep_only(&keys(&["principal.b", "principal.d"]), &mirrors);
        assert!(!done());
        replay.seen(Some("principal.b"), &mirrors);
        assert!(done());
        assert!(replay.pending.is_none());
        // nothing listed at all: replayed at once
        let empty = Mirrors::new(false, false);
        let mut replay = Replay {
            pending: Some(keys(&[])),
            signals: true,
        };
        replay.seen(None, &empty);
        assert!(
            empty
                .principals_replayed
                .load(std::sync::atomic::Ordering::Acquire)
        );
    }
    use gateway_core::signed::DocSigningKey;
    use serde_json::json;

    /// Past the bound, the parsed forms not used since the last sweep go first; a dropped
    /// one is verified and parsed again on its next use, with the same answer.
    #[test]
    fn parsed_principal_documents_are_bounded_and_parsed_again_on_use() {
        let signer = DocSigningKey::generate();
        let keys = Arc::new(DocVerifyingKeys::new([signer.verifying_key()]));
        let mirrors = Mirrors::new(false, false);
        let ids: Vec<String> = (0..100).map(|i| format!("usr_{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let doc = signer
                .sign(
                    PRINCIPAL,
                    1,
                    0,
                    &json!({"principal_id": id, "tokens_valid_after": i}),
                )
                .unwrap();
            assert_eq!(mirrors.apply_principal(&keys, id, &doc), Ok(true));
        }
        let parsed = |m: &Mirrors| m.principals.read().values().filter(|s| s.in_use()).count();
        assert_eq!(parsed(&mirrors), 0, "nothing parsed before use");
        for id in &ids {
            assert!(mirrors.principal(id).is_some());
        }
        assert_eq!(parsed(&mirrors), 100);
        assert_eq!(mirrors.sweep_parsed(0), 0, "0: no bound");
        assert_eq!(mirrors.sweep_parsed(200), 0, "under the bound");
        // the first ten are used again: they get their second chance
        for id in &ids[..10] {
            mirrors.principal(id);
        }
        for slot in mirrors.principals.read().values() {
            slot.used.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        for id in &ids[..10] {
            mirrors.principal(id);
        }
        let dropped = mirrors.sweep_parsed(50);
        assert_eq!(dropped, 100 - 45);
        assert_eq!(parsed(&mirrors), 45);
        for id in &ids[..10] {
            assert!(mirrors.principals.read()[id].in_use(), "{id} was used");
        }
        // dropped ones come back, verified again, with their own document
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                mirrors.principal(id).unwrap().payload.tokens_valid_after,
                i as i64
            );
        }
        assert_eq!(parsed(&mirrors), 100);
    }

    /// T3.2: readers never see a partial table while new revisions are swapped in.
    #[test]
    fn reloads_under_concurrent_reads_never_expose_a_partial_table() {
        use gateway_core::authz::TenantId;
        use gateway_core::routing::ServiceKind;
        let signer = DocSigningKey::generate();
        let keys = DocVerifyingKeys::new([signer.verifying_key()]);
        let mirrors = Arc::new(Mirrors::default());
        let tenants: Vec<TenantId> = (0..50)
            .map(|i| TenantId::parse(&format!("t{i}")).unwrap())
            .collect();
        let table_for = |shard: &str| {
            let placement: serde_json::Map<String, serde_json::Value> = tenants
                .iter()
                .map(|t| (t.to_string(), json!(shard)))
                .collect();
            json!({"aggregate": {"shards": {"a": ["http://127.0.0.1:1"], "b": ["http://127.0.0.1:2"]}, "placement": placement}})
        };
        let (a, b) = (table_for("a"), table_for("b"));
        mirrors
            .apply(&keys, ROUTING, &signer.sign(ROUTING, 1, 0, &a).unwrap())
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (mirrors, stop, tenants) =
                    (Arc::clone(&mirrors), Arc::clone(&stop), tenants.clone());
                std::thread::spawn(move || {
                    let mut checks = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // one load per request, then every lookup on that table
                        let table = mirrors.routing.load_full().unwrap();
                        let first = table
                            .route(&tenants[0], ServiceKind::Aggregate)
                            .unwrap()
                            .shard;
                        for tenant in &tenants {
                            let shard = table.route(tenant, ServiceKind::Aggregate).unwrap().shard;
                            assert_eq!(
                                shard, first,
                                "a mixed table at revision {}",
                                table.revision
                            );
                        }
                        checks += 1;
                    }
                    checks
                })
            })
            .collect();
        for revision in 2..2002u64 {
            let doc = if revision % 2 == 0 { &b } else { &a };
            let bytes = signer.sign(ROUTING, revision, 0, doc).unwrap();
            assert_eq!(mirrors.apply(&keys, ROUTING, &bytes), Ok(true));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let checks: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(checks > 0);
        assert_eq!(mirrors.routing.load().as_ref().unwrap().revision, 2001);
    }

    #[test]
    fn only_newer_verified_documents_replace_the_mirror() {
        let signer = DocSigningKey::generate();
        let keys = DocVerifyingKeys::new([signer.verifying_key()]);
        let mirrors = Mirrors::default();
        let routing = |shard: &str| json!({"aggregate": {"shards": {shard: ["http://127.0.0.1:9102"]}, "placement": {"acme": shard}}});
        let v2 = signer.sign(ROUTING, 2, 10, &routing("agg-2")).unwrap();
        assert_eq!(mirrors.apply(&keys, ROUTING, &v2), Ok(true));
        assert_eq!(
            mirrors.apply(&keys, ROUTING, &v2),
            Ok(false),
            "replay is a no-op"
        );
        let v1 = signer.sign(ROUTING, 1, 9, &routing("agg-1")).unwrap();
        assert!(matches!(
            mirrors.apply(&keys, ROUTING, &v1),
            Err(DocError::StaleRevision { .. })
        ));
        let forged = DocSigningKey::generate()
            .sign(ROUTING, 3, 11, &routing("agg-3"))
            .unwrap();
        assert!(mirrors.apply(&keys, ROUTING, &forged).is_err());
        // a jwks document stored under the routing key is refused
        let jwks = signer.sign(JWKS, 5, 11, &json!({})).unwrap();
        assert!(matches!(
            mirrors.apply(&keys, ROUTING, &jwks),
            Err(DocError::WrongKind { .. })
        ));
        // a signed but invalid table (placement on a missing shard) is refused too
        let invalid = signer
            .sign(
                ROUTING,
                4,
                12,
                &json!({"aggregate": {"placement": {"acme": "ghost"}}}),
            )
            .unwrap();
        assert!(matches!(
            mirrors.apply(&keys, ROUTING, &invalid),
            Err(DocError::Payload(_))
        ));
        let current = mirrors.routing.load_full().unwrap();
        assert_eq!(current.revision, 2);
        let acme = gateway_core::authz::TenantId::parse("acme").unwrap();
        assert_eq!(
            current
                .route(&acme, gateway_core::routing::ServiceKind::Aggregate)
                .unwrap()
                .shard,
            "agg-2".into()
        );
        // unknown keys of the bucket are ignored
        assert_eq!(mirrors.apply(&keys, "other", b"x"), Ok(false));
    }
}
