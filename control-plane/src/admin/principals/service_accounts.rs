//! Rules of service-account administration: platform-wide, or by admins of the owner tenant.

use std::time::Duration;

use gateway_core::authz::TenantId;
use gateway_core::rights;
use gateway_edge::{ApiError, ErrorCode, Reason, unix_now};
use serde_json::json;

use super::{Caller, entry};
use crate::AppState;
use crate::admin::Admin;
use crate::auth::service_accounts::{self, ServiceAccount};
use crate::iam::{assignments, tenant};

/// Default time older secrets keep working after a rotation (24 h).
const DEFAULT_OVERLAP_SECONDS: u64 = 86_400;

/// Longest time older secrets keep working after a rotation (30 days).
const MAX_OVERLAP_SECONDS: u64 = 30 * 86_400;

/// Service accounts are managed platform-wide, or by admins of their owner tenant.
pub fn authorize_account(
    admin: &Admin,
    owner: Option<&str>,
    action: &str,
) -> Result<Option<TenantId>, ApiError> {
    if admin.is_platform(action) {
        return Ok(None);
    }
    let owner = owner.and_then(|t| TenantId::parse(t).ok()).ok_or_else(|| {
        ApiError::new(ErrorCode::Forbidden, format!("not allowed to {action}"))
            .with_reason(Reason::NotPlatformAuthorized)
    })?;
    admin.require(Some(&owner), action)?;
    Ok(Some(owner))
}

/// A tenant admin rotating or deleting an account of their tenant must also be an admin of
/// every other tenant the account holds roles in, and the account must hold no platform
/// role: its secret carries all of that.
async fn within_reach(
    state: &AppState,
    admin: &Admin,
    id: &str,
    owner: &Option<TenantId>,
    action: &str,
) -> Result<(), ApiError> {
    if owner.is_none() {
        return Ok(()); // platform-wide right
    }
    let (tenants, platform) = super::memberships(state, id).await?;
    if platform
        || !tenants
            .iter()
            .all(|t| admin.decide(Some(t), action).allowed)
    {
        return Err(super::out_of_reach(action));
    }
    Ok(())
}

/// The account `id` with the tenant the caller's right comes from (`None`: platform-wide).
/// Platform admins get 404 for an unknown id; anyone else gets one refusal for unknown
/// ids, accounts of other tenants or of the platform, and accounts beyond their reach
/// (see [`within_reach`]), so a tenant admin learns nothing about ids they cannot manage.
async fn account_for(
    state: &AppState,
    admin: &Admin,
    id: &str,
    action: &str,
) -> Result<(ServiceAccount, Option<TenantId>), ApiError> {
    let found = service_accounts::get(&state.store, id)
        .await?
        .map(|(account, _)| account);
    if admin.is_platform(action) {
        let account = found.ok_or_else(|| ApiError::not_found("no such service account"))?;
        return Ok((account, None));
    }
    let owner = found
        .as_ref()
        .and_then(|a| a.owner_tenant.as_deref())
        .and_then(|t| TenantId::parse(t).ok())
        .filter(|t| admin.decide(Some(t), action).allowed);
    match (found, owner) {
        (Some(account), Some(owner)) => {
            let owner = Some(owner);
            within_reach(state, admin, id, &owner, action).await?;
            Ok((account, owner))
        }
        _ => {
            metrics::counter!("gateway_admin_denials_total", "reason" => "not_authorized_for_principal")
                .increment(1);
            Err(super::out_of_reach(action))
        }
    }
}

/// Service accounts, all or those owned by `tenant_id`.
pub async fn list(
    state: &AppState,
    admin: &Admin,
    tenant_id: Option<&str>,
) -> Result<Vec<ServiceAccount>, ApiError> {
    let owner = tenant_id.map(tenant).transpose()?;
    authorize_account(
        admin,
        owner.as_ref().map(TenantId::as_str),
        rights::IAM_SERVICE_ACCOUNTS_READ,
    )?;
    Ok(service_accounts::list(&state.store)
        .await?
        .into_iter()
        .filter(|a| {
            owner
                .as_ref()
                .is_none_or(|o| a.owner_tenant.as_deref() == Some(o.as_str()))
        })
        .collect())
}

pub async fn get(state: &AppState, admin: &Admin, id: &str) -> Result<ServiceAccount, ApiError> {
    let (account, _) = account_for(state, admin, id, rights::IAM_SERVICE_ACCOUNTS_READ).await?;
    Ok(account)
}

/// A new service account with its first client secret (shown once), as of `now`.
pub struct NewAccount {
    pub account: ServiceAccount,
    pub client_secret: String,
    pub now: i64,
}

/// Creates an account, owned by `tenant_id` when given.
pub async fn create(
    state: &AppState,
    caller: &Caller<'_>,
    name: &str,
    tenant_id: Option<&str>,
) -> Result<NewAccount, ApiError> {
    let owner = tenant_id.map(tenant).transpose()?;
    let audit_tenant = authorize_account(
        caller.admin,
        owner.as_ref().map(TenantId::as_str),
        rights::IAM_SERVICE_ACCOUNTS_WRITE,
    )?;
    let now = unix_now();
    let (account, secret) = service_accounts::create(&state.store, name, now).await?;
    let account = match &owner {
        Some(o) => {
            service_accounts::set_owner(&state.store, &account.id, Some(o.to_string())).await?
        }
        None => account,
    };
    state.publisher.publish(&account.id, now).await?;
    entry(
        caller,
        "admin.service_account.create",
        &account.id,
        &audit_tenant.or(owner),
        now,
    )
    .detail(json!({"name": account.name}))
    .record(&state.store)
    .await;
    Ok(NewAccount {
        account,
        client_secret: secret,
        now,
    })
}

/// Issues a new client secret; older ones keep working for `overlap_seconds` (default 24 h,
/// at most 30 days). Returns the secret and the overlap applied.
pub async fn rotate(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
    overlap_seconds: Option<u64>,
) -> Result<(String, u64), ApiError> {
    let (_, tenant) =
        account_for(state, caller.admin, id, rights::IAM_SERVICE_ACCOUNTS_WRITE).await?;
    let overlap = overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECONDS);
    if overlap > MAX_OVERLAP_SECONDS {
        return Err(ApiError::bad_request("overlap_seconds is at most 30 days")
            .with_reason(Reason::InvalidOverlap));
    }
    let now = unix_now();
    let secret =
        service_accounts::rotate_secret(&state.store, id, Duration::from_secs(overlap), now)
            .await?;
    entry(caller, "admin.service_account.rotate", id, &tenant, now)
        .detail(json!({"overlap_seconds": overlap}))
        .record(&state.store)
        .await;
    Ok((secret, overlap))
}

/// Deletes an account and its assignments, and republishes its document.
pub async fn delete(state: &AppState, caller: &Caller<'_>, id: &str) -> Result<(), ApiError> {
    let (account, tenant) =
        account_for(state, caller.admin, id, rights::IAM_SERVICE_ACCOUNTS_WRITE).await?;
    let now = unix_now();
    crate::iam::keeping_a_platform_admin(
        &state.store,
        id,
        assignments::remove_all(&state.store, id),
    )
    .await?;
    service_accounts::delete(&state.store, id).await?;
    state.publisher.publish(id, now).await?;
    entry(caller, "admin.service_account.delete", id, &tenant, now)
        .detail(json!({"name": account.name}))
        .record(&state.store)
        .await;
    Ok(())
}
