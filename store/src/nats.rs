//! NATS JetStream backend: one KV bucket per [`Bucket`] and one stream for the audit log,
//! created at start with the configured prefix, replicas and history.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::keys::{validate_key, validate_prefix, validate_token};
use super::{
    AuditLog, AuditQuery, AuditRecord, Bucket, KeysPage, KvBucket, KvEntry, Revision, Revisions,
    Store, StoreError, StoreProbe, WatchEvent, WatchFrom, WatchStream, capped,
};

/// Settings of the NATS backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URLs, comma-separated (`nats://host:4222,nats://other:4222`).
    pub url: String,
    /// NATS credentials file (JWT + nkey seed), when the server requires it.
    pub creds_file: Option<PathBuf>,
    /// Prefix of every bucket and stream name, e.g. `gw_`: `[a-zA-Z0-9_-]*`.
    pub prefix: String,
    /// Stream replicas (1 for a single server, 3 in production).
    pub replicas: usize,
    /// Values kept per key (1 is enough for compare-and-set).
    pub history: i64,
    /// Age after which records of the `tokens` bucket expire.
    pub tokens_max_age: Duration,
    /// Bound on connecting and on each request.
    pub timeout: Duration,
    /// Client name shown by the server.
    pub client_name: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            creds_file: None,
            prefix: "gw_".into(),
            replicas: 1,
            history: 1,
            tokens_max_age: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(5),
            client_name: "gateway".into(),
        }
    }
}

/// Checks a bucket/stream name prefix.
pub fn validate_store_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() <= 32
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(format!(
            "{prefix:?} must be at most 32 characters of [a-zA-Z0-9_-]"
        ))
    }
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// The oldest nats-server the store accepts: releases before 2.11.5 have KV watch bugs
/// (nats-server#7005: a deliver-last-per-subject watch could skip keys after interior
/// deletes) that would leave a data plane's mirror silently behind.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 11, 5);

/// Whether `version` (as the server reports it, e.g. `2.15.1` or `2.12.0-beta.1`) is at
/// least `min`; a version that cannot be read is not.
pub fn server_version_at_least(version: &str, min: (u64, u64, u64)) -> bool {
    let core = version
        .trim()
        .trim_start_matches('v')
        .split(['-', '+'])
        .next()
        .unwrap_or_default();
    let mut parts = core.split('.').map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch))) => (major, minor, patch) >= min,
        _ => false,
    }
}

/// Connects, then creates (or updates to the configured shape) every bucket and the stream.
pub async fn open(config: &NatsConfig) -> Result<Store, StoreError> {
    validate_store_prefix(&config.prefix).map_err(StoreError::Unavailable)?;
    let options = match &config.creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|err| {
                StoreError::Unavailable(format!("nats credentials file {}: {err}", path.display()))
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    let client = options
        .name(&config.client_name)
        .connection_timeout(config.timeout)
        .request_timeout(Some(config.timeout))
        // the first retry at once, then exponential with jitter: replicas that lost the
        // server together do not come back to it in step
        .reconnect_delay_callback(|attempts| match attempts {
            0 | 1 => Duration::ZERO,
            n => gateway_core::backoff::jittered(
                (n - 2).min(16) as u32,
                Duration::from_millis(50),
                Duration::from_secs(4),
            ),
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                other => tracing::info!(event = %other, "nats event"),
            }
        })
        .connect(config.url.as_str())
        .await
        .map_err(|err| StoreError::Unavailable(format!("connecting to nats: {err}")))?;
    let server_version = client.server_info().version;
    if !server_version_at_least(&server_version, MIN_SERVER_VERSION) {
        let (major, minor, patch) = MIN_SERVER_VERSION;
        return Err(StoreError::Unavailable(format!(
            "nats-server {server_version} is too old: the gateway needs {major}.{minor}.{patch} or newer (older servers' KV watches can skip updates)"
        )));
    }
    let mut js = jetstream::new(client.clone());
    js.set_timeout(config.timeout);

    let mut buckets: Vec<Arc<dyn KvBucket>> = Vec::with_capacity(Bucket::ALL.len());
    for bucket in Bucket::ALL {
        let max_age = if bucket == Bucket::Tokens {
            config.tokens_max_age
        } else {
            Duration::ZERO
        };
        let store = js
            .create_or_update_key_value(kv::Config {
                bucket: format!("{}{}", config.prefix, bucket.name()),
                description: format!("cloudlysis gateway {}", bucket.name()),
                history: config.history,
                max_age,
                num_replicas: config.replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|err| {
                StoreError::Unavailable(format!("creating bucket {}: {err}", bucket.name()))
            })?;
        buckets.push(Arc::new(NatsBucket {
            bucket,
            kv: store,
            client: client.clone(),
        }));
    }

    let subject_root = format!("{}audit", config.prefix);
    let audit_stream = js
        .get_or_create_stream(stream::Config {
            name: format!("{}AUDIT", config.prefix.to_uppercase()),
            description: Some("cloudlysis gateway audit trail".into()),
            subjects: vec![format!("{subject_root}.>")],
            num_replicas: config.replicas,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        })
        .await
        .map_err(|err| StoreError::Unavailable(format!("creating audit stream: {err}")))?;

    Ok(Store::from_parts(
        "nats",
        buckets,
        Arc::new(NatsAudit {
            js: js.clone(),
            client: client.clone(),
            stream: audit_stream,
            subject_root,
        }),
        Arc::new(NatsProbe { client, js }),
    ))
}

struct NatsProbe {
    client: async_nats::Client,
    js: jetstream::Context,
}

#[async_trait]
impl StoreProbe for NatsProbe {
    async fn check(&self) -> Result<(), StoreError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(StoreError::Unavailable("nats is not connected".into()));
        }
        // connected is not enough: JetStream must answer too
        self.js
            .query_account()
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

struct NatsBucket {
    bucket: Bucket,
    kv: kv::Store,
    client: async_nats::Client,
}

fn is_put(operation: &kv::Operation) -> bool {
    matches!(operation, kv::Operation::Put)
}

fn event_of(entry: kv::Entry) -> WatchEvent {
    if is_put(&entry.operation) {
        WatchEvent::Put(KvEntry {
            key: entry.key,
            value: entry.value,
            revision: entry.revision,
        })
    } else {
        WatchEvent::Delete {
            key: entry.key,
            revision: entry.revision,
        }
    }
}

fn update_error(key: &str, err: kv::UpdateError) -> StoreError {
    match err.kind() {
        kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict {
            key: key.to_string(),
        },
        _ => unavailable(err),
    }
}

/// Fails fast while the client is disconnected: without it a call waits for the request
/// timeout (or for the reconnect), and a write during an outage would answer only after
/// several timeouts instead of a prompt 503.
fn ensure_connected(client: &async_nats::Client) -> Result<(), StoreError> {
    if client.connection_state() == async_nats::connection::State::Connected {
        Ok(())
    } else {
        Err(StoreError::Unavailable("nats is not connected".into()))
    }
}

/// Subject filter (relative to the bucket) for a validated prefix.
fn filter_of(prefix: &str) -> String {
    format!("{prefix}>")
}

impl NatsBucket {
    /// The live keys under `prefix` with their revisions: the latest message per matching
    /// subject, headers only, deletions skipped; one ephemeral consumer, released after.
    async fn live_keys(&self, prefix: &str) -> Result<Vec<(String, Revision)>, StoreError> {
        ensure_connected(&self.client)?;
        let consumer = self
            .kv
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{}{}", self.kv.prefix, filter_of(prefix)),
                headers_only: true,
                replay_policy: consumer::ReplayPolicy::Instant,
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut keys = Vec::new();
        let name = consumer.cached_info().name.clone();
        if consumer.cached_info().num_pending > 0 {
            let mut messages = consumer.messages().await.map_err(unavailable)?;
            while let Some(message) = messages.try_next().await.map_err(unavailable)? {
                let info = message.info().map_err(unavailable)?;
                let (pending, revision) = (info.pending, info.stream_sequence);
                let deleted = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
                if let Some(key) = message.subject.strip_prefix(self.kv.prefix.as_str())
                    && !deleted
                {
                    keys.push((key.to_string(), revision));
                }
                if pending == 0 {
                    break;
                }
            }
        }
        // ephemeral consumers count against server limits: release this one now
        let _ = self.kv.stream.delete_consumer(&name).await;
        Ok(keys)
    }
}

#[async_trait]
impl KvBucket for NatsBucket {
    fn name(&self) -> &str {
        self.bucket.name()
    }

    async fn get(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        validate_key(key)?;
        ensure_connected(&self.client)?;
        let entry = self.kv.entry(key).await.map_err(unavailable)?;
        Ok(entry
            .filter(|entry| is_put(&entry.operation))
            .map(|entry| KvEntry {
                key: entry.key,
                value: entry.value,
                revision: entry.revision,
            }))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Revision, StoreError> {
        validate_key(key)?;
        ensure_connected(&self.client)?;
        self.kv
            .create(key, value)
            .await
            .map_err(|err| match err.kind() {
                kv::CreateErrorKind::AlreadyExists => StoreError::Conflict {
                    key: key.to_string(),
                },
                _ => unavailable(err),
            })
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: Revision,
    ) -> Result<Revision, StoreError> {
        validate_key(key)?;
        ensure_connected(&self.client)?;
        self.kv
            .update(key, value, revision)
            .await
            .map_err(|err| update_error(key, err))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<Revision, StoreError> {
        validate_key(key)?;
        ensure_connected(&self.client)?;
        self.kv.put(key, value).await.map_err(unavailable)
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(), StoreError> {
        validate_key(key)?;
        ensure_connected(&self.client)?;
        if expected.is_none() && self.get(key).await?.is_none() {
            // deleting what is not there changes nothing (no tombstone, no watch event)
            return Ok(());
        }
        self.kv
            .delete_expect_revision(key, expected)
            .await
            .map_err(|err| update_error(key, err))
    }

    async fn keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeysPage, StoreError> {
        validate_prefix(prefix)?;
        let limit = capped(limit);
        let mut keys: Vec<String> = self
            .live_keys(prefix)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| after.is_none_or(|after| key.as_str() > after))
            .collect();
        keys.sort_unstable();
        let next = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().cloned()
        } else {
            None
        };
        Ok(KeysPage { keys, next })
    }

    async fn revisions(&self, prefix: &str) -> Result<Revisions, StoreError> {
        validate_prefix(prefix)?;
        // the stream's last sequence first: every revision the listing can miss is above it
        let last = self
            .kv
            .stream
            .get_info()
            .await
            .map_err(unavailable)?
            .state
            .last_sequence;
        let mut keys = self.live_keys(prefix).await?;
        keys.sort_unstable();
        Ok(Revisions { last, keys })
    }

    async fn watch(&self, prefix: &str, from: WatchFrom) -> Result<WatchStream, StoreError> {
        validate_prefix(prefix)?;
        let filter = filter_of(prefix);
        let watch = match from {
            WatchFrom::Current => self.kv.watch_with_history(&filter).await,
            WatchFrom::Revision(revision) => {
                self.kv.watch_from_revision(&filter, revision.max(1)).await
            }
            WatchFrom::New => self.kv.watch(&filter).await,
        }
        .map_err(unavailable)?;
        // after a reconnect the consumer may replay: only strictly newer revisions pass
        let mut last: Revision = 0;
        Ok(watch
            .filter_map(move |item| {
                let out = match item {
                    Ok(entry) if entry.revision <= last => None,
                    Ok(entry) => {
                        last = entry.revision;
                        Some(Ok(event_of(entry)))
                    }
                    Err(err) => Some(Err(unavailable(err))),
                };
                futures::future::ready(out)
            })
            .boxed())
    }
}

struct NatsAudit {
    js: jetstream::Context,
    client: async_nats::Client,
    stream: stream::Stream,
    subject_root: String,
}

#[async_trait]
impl AuditLog for NatsAudit {
    async fn append(&self, tenant: &str, action: &str, data: Bytes) -> Result<u64, StoreError> {
        validate_token(tenant)?;
        validate_key(action)?;
        ensure_connected(&self.client)?;
        let ack = self
            .js
            .publish(format!("{}.{tenant}.{action}", self.subject_root), data)
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok(ack.sequence)
    }

    async fn read(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let filter = match &query.tenant {
            Some(tenant) => {
                validate_token(tenant)?;
                format!("{}.{tenant}.>", self.subject_root)
            }
            None => format!("{}.>", self.subject_root),
        };
        let limit = capped(query.limit);
        let consumer = self
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: filter,
                replay_policy: consumer::ReplayPolicy::Instant,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: query.from_seq.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        let name = consumer.cached_info().name.clone();
        if consumer.cached_info().num_pending == 0 {
            let _ = self.stream.delete_consumer(&name).await;
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        while let Some(message) = messages.try_next().await.map_err(unavailable)? {
            let info = message.info().map_err(unavailable)?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let rest = message
                .subject
                .strip_prefix(self.subject_root.as_str())
                .and_then(|s| s.strip_prefix('.'))
                .unwrap_or_default();
            let (tenant, action) = rest.split_once('.').unwrap_or((rest, ""));
            out.push(AuditRecord {
                seq,
                tenant: tenant.to_string(),
                action: action.to_string(),
                data: message.payload.clone(),
            });
            if pending == 0 || out.len() == limit {
                break;
            }
        }
        // ephemeral consumers count against server limits: release this one now
        drop(messages);
        let _ = self.stream.delete_consumer(&name).await;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_the_watch_fixes_are_refused() {
        for (version, ok) in [
            ("2.15.1", true),
            ("2.11.5", true),
            ("2.12.0-beta.1", true),
            ("v2.11.6", true),
            ("3.0.0", true),
            ("2.11.4", false),
            ("2.10.29", false),
            ("2.9", false),
            ("", false),
            ("nats", false),
        ] {
            assert_eq!(
                server_version_at_least(version, MIN_SERVER_VERSION),
                ok,
                "{version}"
            );
        }
    }
}
