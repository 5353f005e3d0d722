//! The admin API: every route authorizes the caller with the shared engine against the
//! live source of truth, scopes tenant admins to their tenants, refuses privilege
//! escalation, and audits every mutation intent first (an `admin.request` record before the
//! change, refused with 503 when it cannot be written; the outcome record after).

pub mod iam_routes;
pub mod invitation_routes;
pub mod principal_routes;
pub mod principals;
pub mod rebalance_routes;
pub mod routing_routes;

use axum::extract::FromRequestParts;
use axum::http::Method;
use axum::http::request::Parts;
use gateway_core::authz::{Decision, EffectiveRights, Request, TenantId, decide};
use gateway_edge::{ApiError, ErrorCode, unix_now};

use crate::AppState;
use crate::api::ClientIp;
use crate::audit::{Audit, Intent, IntentSlot};
use crate::auth::Principal;
use crate::auth::routes::Authenticated;

/// A signed-in caller of the admin API with their live effective rights.
pub struct Admin {
    pub principal: Principal,
    pub rights: EffectiveRights,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Authenticated(principal) = Authenticated::from_request_parts(parts, state).await?;
        let rights = state
            .publisher
            .effective(&principal.user_id, unix_now())
            .await?;
        // a change is announced in the audit trail before it is made (crate::audit)
        if !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
            let ip = ClientIp::from_request_parts(parts, state)
                .await
                .ok()
                .map(|ClientIp(ip)| ip);
            let mut record = Audit::new("admin.request", "intent", unix_now())
                .actor(&principal.user_id)
                .target(parts.uri.path())
                .detail(serde_json::json!({"method": parts.method.as_str()}));
            if let Some(ip) = ip {
                record = record.ip(ip);
            }
            record.record_required(&state.store).await?;
            if let Some(slot) = parts.extensions.get::<IntentSlot>() {
                *slot.0.lock() = Some(Intent {
                    actor: principal.user_id.clone(),
                    target: parts.uri.path().to_string(),
                    method: parts.method.to_string(),
                    ip,
                });
            }
        }
        Ok(Admin { principal, rights })
    }
}

impl Admin {
    pub fn id(&self) -> &str {
        &self.principal.user_id
    }

    /// Allows `action` in `tenant` (or platform-wide) or answers 403 with the reason.
    pub fn require(&self, tenant: Option<&TenantId>, action: &str) -> Result<Decision, ApiError> {
        let decision = self.decide(tenant, action);
        if decision.allowed {
            Ok(decision)
        } else {
            metrics::counter!("gateway_admin_denials_total", "reason" => decision.reason.code())
                .increment(1);
            Err(ApiError {
                reason: decision.reason.denial(),
                ..ApiError::new(ErrorCode::Forbidden, format!("not allowed to {action}"))
            })
        }
    }

    /// The decision alone: for questions (what may the caller see?), not refusals, so
    /// it is not counted as a denial.
    pub(crate) fn decide(&self, tenant: Option<&TenantId>, action: &str) -> Decision {
        decide(
            &self.rights,
            &Request {
                tenant,
                action,
                resource: None,
            },
        )
    }

    /// Allows a listing with `action`: platform-wide for everything, or for one tenant the
    /// caller administers, which a tenant admin must name (400 `missing_tenant`).
    pub fn require_listing(&self, tenant: Option<&TenantId>, action: &str) -> Result<(), ApiError> {
        if self.is_platform(action) {
            return Ok(());
        }
        let Some(tenant) = tenant else {
            return Err(ApiError::bad_request("tenant_id is required")
                .with_reason(gateway_edge::Reason::MissingTenant));
        };
        self.require(Some(tenant), action).map(|_| ())
    }

    /// Whether the caller holds `action` platform-wide.
    pub fn is_platform(&self, action: &str) -> bool {
        self.decide(None, action).allowed
    }

    /// Refuses a grant of `role` in `tenant` by a tenant admin who does not hold every
    /// right of it there (403 `privilege_escalation`): nobody hands out more than they hold.
    pub fn may_grant(
        &self,
        tenant: &TenantId,
        role: &crate::iam::roles::Role,
    ) -> Result<(), ApiError> {
        may_grant(&self.rights, tenant, role)
    }

    /// Tenants in which the caller holds `action`.
    pub fn tenants_with(&self, action: &str) -> Vec<TenantId> {
        let mut tenants: Vec<TenantId> = self
            .rights
            .grants
            .iter()
            .filter_map(|g| match &g.scope {
                gateway_core::authz::Scope::Tenant { tenant } => Some(tenant.clone()),
                gateway_core::authz::Scope::Platform => None,
            })
            .filter(|t| self.decide(Some(t), action).allowed)
            .collect();
        tenants.sort();
        tenants.dedup();
        tenants
    }
}

/// Whether `rights` (a tenant admin's) cover every right of `role` in `tenant`; 403
/// `privilege_escalation` naming the first right missing.
pub fn may_grant(
    rights: &EffectiveRights,
    tenant: &TenantId,
    role: &crate::iam::roles::Role,
) -> Result<(), ApiError> {
    let held: Vec<&gateway_core::authz::Right> = rights
        .grants
        .iter()
        .filter(
            |g| matches!(&g.scope, gateway_core::authz::Scope::Tenant { tenant: t } if t == tenant),
        )
        .flat_map(|g| g.rights.iter())
        .collect();
    match role
        .rights
        .iter()
        .find(|r| !held.iter().any(|h| r.covered_by(h)))
    {
        None => Ok(()),
        Some(missing) => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "cannot grant {}: it is not held by the caller in this tenant",
                missing.as_str()
            ),
        )
        .with_reason(gateway_edge::Reason::PrivilegeEscalation)),
    }
}
