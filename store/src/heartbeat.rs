//! Replica heartbeats: each data-plane replica writes what it is using (routing and key
//! revisions) under `replica.data.<replica_id>` in the rebalance bucket, every few seconds
//! and at once when its routing changes, and deletes it when it stops. The control plane
//! reads them to show when every replica has converged on a routing revision; a record
//! not refreshed within [`STALE_AFTER_SECS`] is stale (the replica is gone), and one older
//! than [`FORGET_AFTER_SECS`] is removed.

use serde::{Deserialize, Serialize};

use crate::record::Record;

/// Key prefix of data-plane heartbeats in the rebalance bucket.
pub const DATA_PREFIX: &str = "replica.data.";
/// Seconds between heartbeats.
pub const INTERVAL_SECS: u64 = 5;
/// A heartbeat older than this is stale.
pub const STALE_AFTER_SECS: i64 = 3 * INTERVAL_SECS as i64;
/// A heartbeat older than this is deleted when heartbeats are listed.
pub const FORGET_AFTER_SECS: i64 = 3600;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Heartbeat {
    pub replica_id: String,
    pub plane: String,
    /// Routing revision in use (0: none yet).
    pub routing_revision: u64,
    /// `jwks` revision in use (0: none yet).
    pub jwks_revision: u64,
    /// Principals in the authz mirror.
    #[serde(default)]
    pub principals: u64,
    pub started_at: i64,
    pub seen_at: i64,
    #[serde(default)]
    pub version: String,
}

impl Record for Heartbeat {
    const KIND: &'static str = "heartbeat";
    const VERSION: u32 = 1;
}

/// A replica id usable as a key token: `[A-Za-z0-9_-]`, at most 64 characters; other
/// characters become `-`.
pub fn replica_token(id: &str) -> String {
    let token: String = id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if token.is_empty() {
        "replica".into()
    } else {
        token
    }
}

/// A default replica id: the host name (the container id under Swarm) and a random
/// suffix, so a restarted process is a new replica.
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    replica_token(&format!("{host}-{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_become_key_tokens() {
        assert_eq!(replica_token("dp-1"), "dp-1");
        assert_eq!(replica_token("a.b c/d"), "a-b-c-d");
        assert_eq!(replica_token(""), "replica");
        assert_eq!(replica_token(&"x".repeat(100)).len(), 64);
        let id = default_replica_id();
        crate::keys::validate_key(&format!("{DATA_PREFIX}{id}")).unwrap();
    }
}
