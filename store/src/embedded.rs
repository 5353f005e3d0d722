//! Embedded single-process backend on a local redb file, for the local run: same semantics
//! as the NATS backend (history 1 per key), persisted across restarts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc};

use super::keys::{validate_key, validate_prefix, validate_token};
use super::{
    AuditLog, AuditQuery, AuditRecord, Bucket, KeysPage, KvBucket, KvEntry, Revision, Revisions,
    Store, StoreError, StoreProbe, WatchEvent, WatchFrom, WatchStream, capped,
};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const AUDIT_SEQ: &str = "audit.seq";
const OP_PUT: u8 = 0;
const OP_DELETE: u8 = 1;
const WATCH_BUFFER: usize = 1024;

/// Table names of one bucket: (values by key, key by latest revision, revision counter).
fn tables(bucket: Bucket) -> (&'static str, &'static str, &'static str) {
    match bucket {
        Bucket::Users => ("kv.users", "rev.users", "seq.users"),
        Bucket::Identities => ("kv.identities", "rev.identities", "seq.identities"),
        Bucket::Credentials => ("kv.credentials", "rev.credentials", "seq.credentials"),
        Bucket::Sessions => ("kv.sessions", "rev.sessions", "seq.sessions"),
        Bucket::Tokens => ("kv.tokens", "rev.tokens", "seq.tokens"),
        Bucket::Iam => ("kv.iam", "rev.iam", "seq.iam"),
        Bucket::Authz => ("kv.authz", "rev.authz", "seq.authz"),
        Bucket::Snapshots => ("kv.snapshots", "rev.snapshots", "seq.snapshots"),
        Bucket::Keys => ("kv.keys", "rev.keys", "seq.keys"),
        Bucket::Rebalance => ("kv.rebalance", "rev.rebalance", "seq.rebalance"),
    }
}

fn kv_def(bucket: Bucket) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(tables(bucket).0)
}

fn rev_def(bucket: Bucket) -> TableDefinition<'static, u64, &'static str> {
    TableDefinition::new(tables(bucket).1)
}

fn io_err(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {err}"))
}

/// A stored slot: the latest revision of a key and whether it is live.
struct Slot {
    revision: Revision,
    live: bool,
    value: Bytes,
}

fn encode_slot(revision: Revision, op: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + value.len());
    out.extend_from_slice(&revision.to_be_bytes());
    out.push(op);
    out.extend_from_slice(value);
    out
}

fn decode_slot(raw: &[u8]) -> Result<Slot, StoreError> {
    if raw.len() < 9 {
        return Err(StoreError::Corrupt("short value slot".into()));
    }
    let (head, value) = raw.split_at(9);
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&head[..8]);
    Ok(Slot {
        revision: u64::from_be_bytes(rev),
        live: head[8] == OP_PUT,
        value: Bytes::copy_from_slice(value),
    })
}

fn event_of(key: String, slot: Slot) -> WatchEvent {
    if slot.live {
        WatchEvent::Put(KvEntry {
            key,
            value: slot.value,
            revision: slot.revision,
        })
    } else {
        WatchEvent::Delete {
            key,
            revision: slot.revision,
        }
    }
}

struct Inner {
    db: Database,
    /// Serialises commit + notification so watchers see revisions in order.
    writer: Mutex<()>,
    channels: HashMap<Bucket, broadcast::Sender<WatchEvent>>,
}

/// Opens (or creates) the store file at `path`.
pub async fn open(path: &Path) -> Result<Store, StoreError> {
    let path = path.to_path_buf();
    let db = tokio::task::spawn_blocking(move || -> Result<Database, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let db = Database::create(&path).map_err(|err| match err {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                "embedded store file {} is in use by another process",
                path.display()
            )),
            other => io_err(other),
        })?;
        // create every table once so readers never meet a missing table
        let txn = db.begin_write().map_err(io_err)?;
        {
            txn.open_table(META).map_err(io_err)?;
            txn.open_table(AUDIT).map_err(io_err)?;
            for bucket in Bucket::ALL {
                txn.open_table(kv_def(bucket)).map_err(io_err)?;
                txn.open_table(rev_def(bucket)).map_err(io_err)?;
            }
        }
        txn.commit().map_err(io_err)?;
        Ok(db)
    })
    .await
    .map_err(io_err)??;

    let channels = Bucket::ALL
        .iter()
        .map(|bucket| (*bucket, broadcast::channel(WATCH_BUFFER).0))
        .collect();
    let inner = Arc::new(Inner {
        db,
        writer: Mutex::new(()),
        channels,
    });
    let buckets: Vec<Arc<dyn KvBucket>> = Bucket::ALL
        .iter()
        .map(|bucket| {
            Arc::new(EmbeddedBucket {
                inner: Arc::clone(&inner),
                bucket: *bucket,
            }) as Arc<dyn KvBucket>
        })
        .collect();
    Ok(Store::from_parts(
        "embedded",
        buckets,
        Arc::new(EmbeddedAudit {
            inner: Arc::clone(&inner),
        }),
        Arc::new(AlwaysUp),
    ))
}

struct AlwaysUp;

#[async_trait]
impl StoreProbe for AlwaysUp {
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Write {
    Create,
    Update(Revision),
    Put,
    Delete(Option<Revision>),
}

struct EmbeddedBucket {
    inner: Arc<Inner>,
    bucket: Bucket,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(io_err)?
}

impl EmbeddedBucket {
    async fn write(
        &self,
        key: &str,
        value: Bytes,
        write: Write,
    ) -> Result<Option<Revision>, StoreError> {
        validate_key(key)?;
        let inner = Arc::clone(&self.inner);
        let bucket = self.bucket;
        let key = key.to_string();
        blocking(move || inner.write(bucket, &key, &value, write)).await
    }

    /// Every slot under `prefix` with a revision at or above `from`, in revision order.
    fn scan(
        inner: &Inner,
        bucket: Bucket,
        prefix: &str,
        from: Revision,
    ) -> Result<Vec<WatchEvent>, StoreError> {
        let txn = inner.db.begin_read().map_err(io_err)?;
        let revs = txn.open_table(rev_def(bucket)).map_err(io_err)?;
        let kv = txn.open_table(kv_def(bucket)).map_err(io_err)?;
        let mut out = Vec::new();
        for item in revs.range(from..).map_err(io_err)? {
            let (_, key) = item.map_err(io_err)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                continue;
            }
            if let Some(raw) = kv.get(key).map_err(io_err)? {
                out.push(event_of(key.to_string(), decode_slot(raw.value())?));
            }
        }
        Ok(out)
    }

    fn last_revision(inner: &Inner, bucket: Bucket) -> Result<Revision, StoreError> {
        let txn = inner.db.begin_read().map_err(io_err)?;
        let meta = txn.open_table(META).map_err(io_err)?;
        Ok(meta
            .get(tables(bucket).2)
            .map_err(io_err)?
            .map(|v| v.value())
            .unwrap_or(0))
    }
}

impl Inner {
    fn write(
        &self,
        bucket: Bucket,
        key: &str,
        value: &[u8],
        write: Write,
    ) -> Result<Option<Revision>, StoreError> {
        let _guard = self.writer.lock();
        let txn = self.db.begin_write().map_err(io_err)?;
        let (revision, event) = {
            let mut kv = txn.open_table(kv_def(bucket)).map_err(io_err)?;
            let current = match kv.get(key).map_err(io_err)? {
                Some(raw) => Some(decode_slot(raw.value())?),
                None => None,
            };
            let live_rev = current.as_ref().filter(|s| s.live).map(|s| s.revision);
            let conflict = || StoreError::Conflict {
                key: key.to_string(),
            };
            match write {
                Write::Create if live_rev.is_some() => return Err(conflict()),
                Write::Update(expected) if live_rev != Some(expected) => return Err(conflict()),
                Write::Delete(Some(expected)) if live_rev != Some(expected) => {
                    return Err(conflict());
                }
                // deleting what is not there changes nothing
                Write::Delete(None) if live_rev.is_none() => return Ok(None),
                _ => {}
            }
            let mut meta = txn.open_table(META).map_err(io_err)?;
            let seq_key = tables(bucket).2;
            let revision = meta
                .get(seq_key)
                .map_err(io_err)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            meta.insert(seq_key, revision).map_err(io_err)?;
            let op = if matches!(write, Write::Delete(_)) {
                OP_DELETE
            } else {
                OP_PUT
            };
            let stored: &[u8] = if op == OP_DELETE { &[] } else { value };
            kv.insert(key, encode_slot(revision, op, stored).as_slice())
                .map_err(io_err)?;
            let mut revs = txn.open_table(rev_def(bucket)).map_err(io_err)?;
            if let Some(old) = &current {
                revs.remove(old.revision).map_err(io_err)?;
            }
            revs.insert(revision, key).map_err(io_err)?;
            let event = event_of(
                key.to_string(),
                Slot {
                    revision,
                    live: op == OP_PUT,
                    value: Bytes::copy_from_slice(stored),
                },
            );
            (revision, event)
        };
        txn.commit().map_err(io_err)?;
        if let Some(tx) = self.channels.get(&bucket) {
            // no receivers is fine
            let _ = tx.send(event);
        }
        Ok(Some(revision))
    }
}

#[async_trait]
impl KvBucket for EmbeddedBucket {
    fn name(&self) -> &str {
        self.bucket.name()
    }

    async fn get(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        validate_key(key)?;
        let inner = Arc::clone(&self.inner);
        let bucket = self.bucket;
        let key = key.to_string();
        blocking(move || {
            let txn = inner.db.begin_read().map_err(io_err)?;
            let kv = txn.open_table(kv_def(bucket)).map_err(io_err)?;
            let Some(raw) = kv.get(key.as_str()).map_err(io_err)? else {
                return Ok(None);
            };
            let slot = decode_slot(raw.value())?;
            Ok(slot.live.then(|| KvEntry {
                key,
                value: slot.value,
                revision: slot.revision,
            }))
        })
        .await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, StoreError> {
        self.write(key, value, Write::Create)
            .await?
            .ok_or_else(|| StoreError::Corrupt("create wrote nothing".into()))
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: Revision,
    ) -> Result<Revision, StoreError> {
        self.write(key, value, Write::Update(revision))
            .await?
            .ok_or_else(|| StoreError::Corrupt("update wrote nothing".into()))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<Revision, StoreError> {
        self.write(key, value, Write::Put)
            .await?
            .ok_or_else(|| StoreError::Corrupt("put wrote nothing".into()))
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(), StoreError> {
        self.write(key, Bytes::new(), Write::Delete(expected))
            .await
            .map(|_| ())
    }

    async fn revisions(&self, prefix: &str) -> Result<Revisions, StoreError> {
        validate_prefix(prefix)?;
        let inner = Arc::clone(&self.inner);
        let bucket = self.bucket;
        let prefix = prefix.to_string();
        blocking(move || {
            // one read transaction: the counter and the slots are of the same moment
            let txn = inner.db.begin_read().map_err(io_err)?;
            let meta = txn.open_table(META).map_err(io_err)?;
            let last = meta
                .get(tables(bucket).2)
                .map_err(io_err)?
                .map(|v| v.value())
                .unwrap_or(0);
            let kv = txn.open_table(kv_def(bucket)).map_err(io_err)?;
            let mut keys = Vec::new();
            for item in kv.range(prefix.as_str()..).map_err(io_err)? {
                let (key, raw) = item.map_err(io_err)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                let slot = decode_slot(raw.value())?;
                if slot.live {
                    keys.push((key.to_string(), slot.revision));
                }
            }
            Ok(Revisions { last, keys })
        })
        .await
    }

    async fn keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeysPage, StoreError> {
        validate_prefix(prefix)?;
        let limit = capped(limit);
        let inner = Arc::clone(&self.inner);
        let bucket = self.bucket;
        let prefix = prefix.to_string();
        let after = after.map(str::to_string);
        blocking(move || {
            let txn = inner.db.begin_read().map_err(io_err)?;
            let kv = txn.open_table(kv_def(bucket)).map_err(io_err)?;
            let start = match &after {
                Some(after) if after.as_str() > prefix.as_str() => after.as_str(),
                _ => prefix.as_str(),
            };
            let mut keys = Vec::new();
            let mut more = false;
            for item in kv.range(start..).map_err(io_err)? {
                let (key, raw) = item.map_err(io_err)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                if after.as_deref() == Some(key) || !decode_slot(raw.value())?.live {
                    continue;
                }
                if keys.len() == limit {
                    more = true;
                    break;
                }
                keys.push(key.to_string());
            }
            let next = if more { keys.last().cloned() } else { None };
            Ok(KeysPage { keys, next })
        })
        .await
    }

    async fn watch(&self, prefix: &str, from: WatchFrom) -> Result<WatchStream, StoreError> {
        validate_prefix(prefix)?;
        let inner = Arc::clone(&self.inner);
        let bucket = self.bucket;
        let prefix = prefix.to_string();
        let mut live = inner
            .channels
            .get(&bucket)
            .ok_or_else(|| StoreError::Corrupt("bucket without channel".into()))?
            .subscribe();
        // subscribed before reading, so nothing falls between the replay and the live feed
        let start = match from {
            WatchFrom::Current => 0,
            WatchFrom::Revision(revision) => revision,
            WatchFrom::New => {
                let inner = Arc::clone(&inner);
                blocking(move || EmbeddedBucket::last_revision(&inner, bucket)).await? + 1
            }
        };
        let (tx, rx) = mpsc::channel::<Result<WatchEvent, StoreError>>(WATCH_BUFFER);
        tokio::spawn(async move {
            let mut next = start;
            loop {
                // replay what the store holds from `next` on (also after falling behind)
                let replay = {
                    let inner = Arc::clone(&inner);
                    let prefix = prefix.clone();
                    blocking(move || EmbeddedBucket::scan(&inner, bucket, &prefix, next)).await
                };
                match replay {
                    Ok(events) => {
                        for event in events {
                            next = event.revision() + 1;
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        if tx.send(Err(err)).await.is_err() {
                            return;
                        }
                    }
                }
                loop {
                    match live.recv().await {
                        Ok(event) => {
                            if event.revision() < next || !event.key().starts_with(&prefix) {
                                continue;
                            }
                            next = event.revision() + 1;
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                        // fell behind: go back to the store for what was missed
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }
}

struct EmbeddedAudit {
    inner: Arc<Inner>,
}

fn encode_audit(tenant: &str, action: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + tenant.len() + action.len() + data.len());
    for part in [tenant.as_bytes(), action.as_bytes()] {
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(data);
    out
}

fn decode_audit(seq: u64, raw: &[u8]) -> Result<AuditRecord, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("audit record {seq}"));
    let mut rest = raw;
    let mut parts = Vec::with_capacity(2);
    for _ in 0..2 {
        if rest.len() < 2 {
            return Err(corrupt());
        }
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let part = rest.get(2..2 + len).ok_or_else(corrupt)?;
        parts.push(String::from_utf8(part.to_vec()).map_err(|_| corrupt())?);
        rest = &rest[2 + len..];
    }
    let action = parts.pop().ok_or_else(corrupt)?;
    let tenant = parts.pop().ok_or_else(corrupt)?;
    Ok(AuditRecord {
        seq,
        tenant,
        action,
        data: Bytes::copy_from_slice(rest),
    })
}

#[async_trait]
impl AuditLog for EmbeddedAudit {
    async fn append(&self, tenant: &str, action: &str, data: Bytes) -> Result<u64, StoreError> {
        validate_token(tenant)?;
        validate_key(action)?;
        let inner = Arc::clone(&self.inner);
        let raw = encode_audit(tenant, action, &data);
        blocking(move || {
            let _guard = inner.writer.lock();
            let txn = inner.db.begin_write().map_err(io_err)?;
            let seq = {
                let mut meta = txn.open_table(META).map_err(io_err)?;
                let seq = meta
                    .get(AUDIT_SEQ)
                    .map_err(io_err)?
                    .map(|v| v.value())
                    .unwrap_or(0)
                    + 1;
                meta.insert(AUDIT_SEQ, seq).map_err(io_err)?;
                let mut audit = txn.open_table(AUDIT).map_err(io_err)?;
                audit.insert(seq, raw.as_slice()).map_err(io_err)?;
                seq
            };
            txn.commit().map_err(io_err)?;
            Ok(seq)
        })
        .await
    }

    async fn read(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        if let Some(tenant) = &query.tenant {
            validate_token(tenant)?;
        }
        let inner = Arc::clone(&self.inner);
        let query = query.clone();
        let limit = capped(query.limit);
        blocking(move || {
            let txn = inner.db.begin_read().map_err(io_err)?;
            let audit = txn.open_table(AUDIT).map_err(io_err)?;
            let mut out = Vec::new();
            for item in audit.range(query.from_seq.max(1)..).map_err(io_err)? {
                let (seq, raw) = item.map_err(io_err)?;
                let record = decode_audit(seq.value(), raw.value())?;
                if query.tenant.as_ref().is_some_and(|t| *t != record.tenant) {
                    continue;
                }
                out.push(record);
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }
}
