//! The gateway's state store: KV buckets with compare-and-set and watches, plus the audit
//! log, behind one trait, and the replica heartbeats kept in it ([`heartbeat`]).
//!
//! Two backends implement it: NATS JetStream ([`nats`]) for production and the embedded
//! single-process file store ([`embedded`]) for the local run. Both pass the same
//! conformance suite (`conformance`, behind the `testsuite` feature).

#![forbid(unsafe_code)]

pub mod embedded;
pub mod heartbeat;
pub mod keys;
pub mod large;
pub mod nats;
pub mod record;

#[cfg(feature = "testsuite")]
pub mod conformance;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use keys::{KeyError, encode_key_token, hash_key_token, validate_key, validate_prefix};
pub use record::{Record, RecordError};

/// Store revision of a KV entry: strictly increasing per bucket (the JetStream stream
/// sequence on NATS, a per-bucket counter on the embedded backend).
pub type Revision = u64;

/// Typed store failures. Callers map them to the error envelope; nothing here panics.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The key does not exist (or was deleted).
    #[error("key not found: {0}")]
    NotFound(String),
    /// A compare-and-set lost: the key exists (create) or has moved on (update/delete).
    #[error("conflict on key {key}")]
    Conflict { key: String },
    /// The store cannot be reached or did not answer in time. For writes this is an unknown
    /// outcome: re-read before reporting a failure (see docs/storage.md).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The key or prefix is not acceptable to the store.
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    /// The stored bytes are not what the backend wrote (embedded file damaged).
    #[error("corrupt store data: {0}")]
    Corrupt(String),
}

/// One live value of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Bytes,
    pub revision: Revision,
}

/// A change seen by a watcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KvEntry),
    Delete { key: String, revision: Revision },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(entry) => &entry.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(entry) => entry.revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchFrom {
    /// The latest value (or deletion) of every matching key, in revision order, then every
    /// later change.
    Current,
    /// Every retained change with a revision at or above this one, then every later change.
    Revision(Revision),
    /// Only changes made after the watch starts.
    New,
}

/// A watch: events in strictly increasing revision order, never ending on its own.
/// `Err` items report a transient outage (the watch resumes by itself); consumers log
/// them and keep polling.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

/// One page of keys in lexicographic order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeysPage {
    pub keys: Vec<String>,
    /// Cursor for the next page (pass it as `after`), `None` on the last page.
    pub next: Option<String>,
}

/// Every live key under a prefix with its current revision, read in one pass: what a
/// watcher compares with what it applied (see [`KvBucket::revisions`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revisions {
    /// The highest revision the bucket had assigned when the listing started (any key,
    /// deletions included). It only grows; a lower value than seen before means the
    /// bucket was recreated or restored, and watches made before may stay silent.
    pub last: Revision,
    /// Live keys under the prefix and the revision of their current value, sorted by key.
    pub keys: Vec<(String, Revision)>,
}

/// Upper bound on a keys page, whatever the caller asks.
pub const MAX_PAGE: usize = 1000;

/// A KV bucket. Keys are validated with [`validate_key`]; prefixes with [`validate_prefix`]
/// (empty, or whole dot-separated tokens ending with `.`).
#[async_trait]
pub trait KvBucket: Send + Sync + 'static {
    /// Logical bucket name (without the deployment prefix).
    fn name(&self) -> &str;
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, StoreError>;
    /// Insert if absent (also after a deletion); `Conflict` when the key is live.
    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, StoreError>;
    /// Compare-and-set: writes only if the key's current revision is `revision`.
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: Revision,
    ) -> Result<Revision, StoreError>;
    /// Unconditional write.
    async fn put(&self, key: &str, value: Bytes) -> Result<Revision, StoreError>;
    /// Deletes the key; with `expected`, only if its current revision is that one.
    /// Deleting an absent key without `expected` succeeds.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(), StoreError>;
    /// Live keys under `prefix`, sorted, strictly after `after`, at most `limit` (capped at
    /// [`MAX_PAGE`]).
    async fn keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeysPage, StoreError>;
    /// Every live key under `prefix` with its current revision, and the bucket's last
    /// revision, read in one pass (no values). Unpaged: for reconciling a mirror, which
    /// needs the whole set anyway.
    async fn revisions(&self, prefix: &str) -> Result<Revisions, StoreError>;
    /// Changes of keys under `prefix`, from `from` on. The contract, per key: the events
    /// come in increasing revision order and converge to the key's latest retained state
    /// (its last value, or its deletion); intermediate revisions may be merged away (a
    /// key written twice quickly may be seen once, with the later value), never invented
    /// or reordered. Keys outside `prefix` are never seen.
    async fn watch(&self, prefix: &str, from: WatchFrom) -> Result<WatchStream, StoreError>;
}

/// One appended audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the log, strictly increasing from 1.
    pub seq: u64,
    /// Tenant id, or `_platform` for platform-scope actions.
    pub tenant: String,
    /// Dot-separated action name, e.g. `user.create`.
    pub action: String,
    pub data: Bytes,
}

/// Which audit records to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this tenant's records (`_platform` for platform scope).
    pub tenant: Option<String>,
    /// First sequence to consider (1 for the beginning).
    pub from_seq: u64,
    /// Maximum number of records (capped at [`MAX_PAGE`]).
    pub limit: usize,
}

/// Tenant token used for platform-scope audit records.
pub const PLATFORM_SCOPE: &str = "_platform";

/// Append-only audit log.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends one record; `tenant` is a key token, `action` one or more dot-separated tokens.
    async fn append(&self, tenant: &str, action: &str, data: Bytes) -> Result<u64, StoreError>;
    async fn read(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
}

/// The buckets of the gateway (see docs/storage.md for their keys and values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    Users,
    Identities,
    Credentials,
    Sessions,
    Tokens,
    Iam,
    Authz,
    Snapshots,
    Keys,
    Rebalance,
}

impl Bucket {
    pub const ALL: [Bucket; 10] = [
        Bucket::Users,
        Bucket::Identities,
        Bucket::Credentials,
        Bucket::Sessions,
        Bucket::Tokens,
        Bucket::Iam,
        Bucket::Authz,
        Bucket::Snapshots,
        Bucket::Keys,
        Bucket::Rebalance,
    ];

    /// Logical name; the NATS bucket is `<prefix><name>`.
    pub const fn name(self) -> &'static str {
        match self {
            Bucket::Users => "users",
            Bucket::Identities => "identities",
            Bucket::Credentials => "credentials",
            Bucket::Sessions => "sessions",
            Bucket::Tokens => "tokens",
            Bucket::Iam => "iam",
            Bucket::Authz => "authz",
            Bucket::Snapshots => "snapshots",
            Bucket::Keys => "keys",
            Bucket::Rebalance => "rebalance",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Probes whether the backend is reachable (for `/ready`).
#[async_trait]
pub trait StoreProbe: Send + Sync + 'static {
    async fn check(&self) -> Result<(), StoreError>;
}

/// Handle to every bucket and the audit log of one backend. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: &'static str,
    buckets: Arc<[Arc<dyn KvBucket>]>,
    audit: Arc<dyn AuditLog>,
    probe: Arc<dyn StoreProbe>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// Assembles a store; `buckets` must hold one bucket per [`Bucket::ALL`] entry, in order.
    pub(crate) fn from_parts(
        backend: &'static str,
        buckets: Vec<Arc<dyn KvBucket>>,
        audit: Arc<dyn AuditLog>,
        probe: Arc<dyn StoreProbe>,
    ) -> Self {
        debug_assert_eq!(buckets.len(), Bucket::ALL.len());
        Store {
            backend,
            buckets: buckets.into(),
            audit,
            probe,
        }
    }

    /// Opens the backend described by `config`, creating buckets and streams as needed.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        match config {
            StoreConfig::Nats(nats_config) => nats::open(nats_config).await,
            StoreConfig::Embedded { path } => embedded::open(path).await,
        }
    }

    /// `nats` or `embedded`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn kv(&self, bucket: Bucket) -> Arc<dyn KvBucket> {
        Arc::clone(&self.buckets[bucket.index()])
    }

    pub fn audit(&self) -> Arc<dyn AuditLog> {
        Arc::clone(&self.audit)
    }

    /// The same backend with each bucket replaced by `wrap(bucket, its handle)`: to
    /// instrument a backend, or to inject faults (a dropped watch event, a stalled
    /// listing) in tests of what follows the store.
    pub fn map_buckets(
        &self,
        wrap: impl Fn(Bucket, Arc<dyn KvBucket>) -> Arc<dyn KvBucket>,
    ) -> Store {
        let buckets: Vec<Arc<dyn KvBucket>> = Bucket::ALL
            .iter()
            .map(|&bucket| wrap(bucket, self.kv(bucket)))
            .collect();
        Store {
            backend: self.backend,
            buckets: buckets.into(),
            audit: Arc::clone(&self.audit),
            probe: Arc::clone(&self.probe),
        }
    }

    /// Ok when the backend answers now.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.probe.check().await
    }
}

/// Which backend to open, with its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    Nats(nats::NatsConfig),
    Embedded { path: std::path::PathBuf },
}

/// Every live entry under `prefix`, read page by page (admin listings: O(entries)).
pub async fn read_all(kv: &dyn KvBucket, prefix: &str) -> Result<Vec<KvEntry>, StoreError> {
    let mut entries = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = kv.keys(prefix, after.as_deref(), MAX_PAGE).await?;
        for key in &page.keys {
            // a key deleted between the listing and the read is simply gone
            if let Some(entry) = kv.get(key).await? {
                entries.push(entry);
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(entries),
        }
    }
}

pub(crate) fn capped(limit: usize) -> usize {
    limit.clamp(1, MAX_PAGE)
}
