//! Audit records: one immutable entry per auth event and admin mutation in the audit log
//! (actor, action, target, tenant scope, time, correlation id, client IP, a summary without
//! secrets).
//!
//! Admin mutations are recorded intent first: before the handler runs, an
//! `admin.request` / `intent` record (actor, method, path, correlation id) must be written,
//! or the request is refused with 503 and nothing changes; the handler then records the
//! outcome with its details. A change can therefore never exist without a record of the
//! request that made it; an intent without an outcome record (the store failed between the
//! two) says the change may or may not have been made, and the correlation id ties both to
//! the logs.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use gateway_edge::{ApiError, ErrorCode};
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
    /// stands (the store error surfaces on the caller's own writes). For an outcome whose
    /// intent was recorded first ([`Audit::record_required`]).
    pub async fn record(self, store: &Store) {
        let action = self.entry.action.clone();
        if let Err(err) = self.append(store).await {
            metrics::counter!("gateway_audit_append_failures_total").increment(1);
            tracing::error!(error = %err, action = %action, "audit append failed");
        }
    }

    /// Appends the entry, or answers 503 when it cannot be written: for a record that
    /// must exist before the change it announces is made (the change is then not made).
    pub async fn record_required(self, store: &Store) -> Result<(), ApiError> {
        let action = self.entry.action.clone();
        self.append(store).await.map_err(|err| {
            metrics::counter!("gateway_audit_append_failures_total").increment(1);
            tracing::error!(error = %err, action = %action, "audit append failed: the change is refused");
            ApiError::new(
                ErrorCode::StoreUnavailable,
                "the audit trail cannot be written: nothing was changed",
            )
            .with_retry_after(1)
        })?;
        Ok(())
    }

    async fn append(self, store: &Store) -> Result<u64, String> {
        let entry = self.entry;
        let bytes = serde_json::to_vec(&entry).map_err(|err| err.to_string())?;
        store
            .audit()
            .append(&entry.tenant, &entry.action, Bytes::from(bytes))
            .await
            .map_err(|err| err.to_string())
    }
}

/// The intent the admin extractor recorded for this request, for [`close_intents`].
#[derive(Clone, Debug)]
pub struct Intent {
    pub actor: String,
    pub target: String,
    pub method: String,
    pub ip: Option<IpAddr>,
}

/// Where the admin extractor leaves its recorded intent (a request extension).
#[derive(Clone, Default)]
pub struct IntentSlot(pub Arc<parking_lot::Mutex<Option<Intent>>>);

/// Closes a recorded intent whose request ended in an error: an `admin.request` record
/// with outcome `refused` (4xx: nothing was changed) or `failed` (5xx) and the status, so
/// that an intent without any outcome record means the outcome itself could not be written.
/// Successful requests are closed by their handler's own record.
pub async fn close_intents(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let slot = IntentSlot::default();
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let intent = slot.0.lock().take();
    if let Some(intent) = intent {
        let outcome = if status.is_client_error() {
            "refused"
        } else {
            "failed"
        };
        let mut audit = Audit::new("admin.request", outcome, gateway_core::unix_now())
            .actor(&intent.actor)
            .target(&intent.target)
            .detail(serde_json::json!({"method": intent.method, "status": status.as_u16()}));
        if let Some(ip) = intent.ip {
            audit = audit.ip(ip);
        }
        audit.record(&state.store).await;
    }
    response
}
