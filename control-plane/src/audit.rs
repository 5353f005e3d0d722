//! Audit records: one immutable entry per auth event and admin mutation in the audit log
//! (actor, action, target, tenant scope, time, correlation id, client IP, a summary without
//! secrets).

use std::net::IpAddr;

use bytes::Bytes;
use gateway_store::{PLATFORM_SCOPE, Store};
use serde::Serialize;
use serde_json::Value;

/// What happened, as stored.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    pub v: u32,
    pub at: i64,
    pub action: String,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    /// Summary without secrets (never passwords, tokens, codes or keys).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

/// Builder for one audit entry.
pub struct Audit {
    entry: AuditEntry,
}

impl Audit {
    /// `action` is dot-separated, e.g. `auth.signin`.
    pub fn new(action: &str, outcome: &'static str, now: i64) -> Audit {
        Audit {
            entry: AuditEntry {
                v: 1,
                at: now,
                action: action.to_string(),
                outcome,
                actor: None,
                target: None,
                tenant: PLATFORM_SCOPE.to_string(),
                correlation_id: gateway_edge::http::current_correlation_id(),
                client_ip: None,
                detail: Value::Null,
            },
        }
    }

    pub fn actor(mut self, actor: &str) -> Self {
        self.entry.actor = Some(actor.to_string());
        self
    }

    pub fn target(mut self, target: &str) -> Self {
        self.entry.target = Some(target.to_string());
        self
    }

    /// Files the entry under a tenant (default: platform scope).
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.entry.tenant = tenant.to_string();
        self
    }

    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.entry.client_ip = Some(ip.to_string());
        self
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.entry.detail = detail;
        self
    }

    /// Appends the entry. An audit write that fails is logged loudly; the caller's outcome
    /// stands (the store error surfaces on the caller's own writes).
    pub async fn record(self, store: &Store) {
        let entry = self.entry;
        let bytes = match serde_json::to_vec(&entry) {
            Ok(bytes) => Bytes::from(bytes),
            Err(err) => {
                tracing::error!(error = %err, action = %entry.action, "audit entry not serialisable");
                return;
            }
        };
        if let Err(err) = store
            .audit()
            .append(&entry.tenant, &entry.action, bytes)
            .await
        {
            tracing::error!(error = %err, action = %entry.action, "audit append failed");
        }
    }
}
