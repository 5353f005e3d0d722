//! Identity and access management: roles and rights (the `iam` bucket is the source of
//! truth), assignments of roles to principals per tenant or platform-wide, and the
//! publication of each principal's effective rights as a signed document for the data
//! planes.

pub mod assignments;
pub mod invitations;
pub mod publish;
pub mod roles;

use gateway_core::authz::{AuthzError, TenantId};
use gateway_edge::{ApiError, Reason};

/// The scope token used in keys for platform-wide assignments.
pub const PLATFORM_SCOPE_KEY: &str = "_platform";

pub(crate) fn record_err(err: gateway_store::RecordError) -> ApiError {
    ApiError::internal("iam record unreadable", &err)
}

/// Parses a tenant id from user input into a 400 in the envelope.
pub fn tenant(value: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(value).map_err(|err: AuthzError| {
        ApiError::new(gateway_edge::ErrorCode::InvalidTenant, err.to_string())
            .with_reason(Reason::InvalidTenant)
    })
}

/// A principal id as issued by the gateway (`usr_…` or `svc_…`, hex).
pub fn principal_id(value: &str) -> Result<String, ApiError> {
    let ok = (value.starts_with(gateway_core::token::USER_PREFIX)
        || value.starts_with(gateway_core::token::SERVICE_PREFIX))
        && (5..=64).contains(&value.len())
        && value[4..].chars().all(|c| c.is_ascii_hexdigit());
    if ok {
        Ok(value.to_string())
    } else {
        Err(
            ApiError::bad_request("principal_id must be a usr_ or svc_ id")
                .with_reason(Reason::InvalidPrincipal),
        )
    }
}

/// The platform admins that can still act: principals holding `platform_admin`
/// platform-wide that are a user who is active and can sign in (a password or a linked
/// identity), or an enabled service account.
pub async fn capable_platform_admins(
    store: &gateway_store::Store,
) -> Result<std::collections::BTreeSet<String>, ApiError> {
    let mut capable = std::collections::BTreeSet::new();
    for assignment in assignments::all(store).await? {
        if assignment.scope != gateway_core::authz::Scope::Platform
            || !assignment
                .roles
                .contains(gateway_core::authz::PLATFORM_ADMIN)
        {
            continue;
        }
        let id = assignment.principal_id;
        let able = if id.starts_with(gateway_core::token::SERVICE_PREFIX) {
            crate::auth::service_accounts::get(store, &id)
                .await?
                .is_some_and(|(account, _)| !account.disabled)
        } else {
            match crate::auth::users::get(store, &id).await? {
                Some((user, _)) if user.status == crate::auth::users::UserStatus::Active => {
                    crate::auth::users::password(store, &id).await?.is_some()
                        || !crate::auth::oidc::identities_of(store, &id)
                            .await?
                            .is_empty()
                }
                _ => false,
            }
        };
        if able {
            capable.insert(id);
        }
    }
    Ok(capable)
}

/// Refuses a change that would take `principal_id` out of the platform admins who can
/// still act when it is the last of them (409 `last_platform_admin`): without one, nobody
/// could manage the platform again short of editing the store.
pub async fn keep_a_platform_admin(
    store: &gateway_store::Store,
    principal_id: &str,
) -> Result<(), ApiError> {
    let capable = capable_platform_admins(store).await?;
    if capable.len() == 1 && capable.contains(principal_id) {
        return Err(ApiError::new(
            gateway_core::ErrorCode::Conflict,
            "this is the last platform admin who can sign in; make another one first",
        )
        .with_reason(Reason::LastPlatformAdmin));
    }
    Ok(())
}

/// Key of the lock that serialises changes which could leave no capable platform admin.
const ADMIN_LOCK_KEY: &str = "lock.platform_admins";
/// A lock left by a replica that died holding it is taken over after this long (the
/// holder renews it right before its change).
const ADMIN_LOCK_TTL_SECONDS: i64 = 30;
/// How long a change waits for the lock before answering 503.
const ADMIN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(serde::Serialize, serde::Deserialize)]
struct AdminLock {
    holder: String,
    expires_at: i64,
}

impl gateway_store::Record for AdminLock {
    const KIND: &'static str = "platform_admin_lock";
    const VERSION: u32 = 1;
}

/// Runs `change` (which may take `principal_id` out of the capable platform admins) only
/// if someone else stays capable, with the check and the change under one lock across
/// replicas: two admins removing each other at the same moment would otherwise both pass
/// the check and leave nobody (check-then-act). The lock is a record created if absent
/// (compare-and-set), released after the change, and taken over once expired.
pub async fn keeping_a_platform_admin<T>(
    store: &gateway_store::Store,
    principal_id: &str,
    change: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let (holder, mut revision) = acquire_admin_lock(store).await?;
    let result = match keep_a_platform_admin(store, principal_id).await {
        // the check may have been slow: the lock is renewed (compare-and-set) right before
        // the change, so a replica that took it over as expired meanwhile stops this one
        Ok(()) => match renew_admin_lock(store, &holder, revision).await {
            Ok(renewed) => {
                revision = renewed;
                change.await
            }
            Err(err) => Err(err),
        },
        Err(err) => Err(err),
    };
    // released even when the change failed; a failed release expires on its own
    if let Err(err) = store
        .kv(gateway_store::Bucket::Iam)
        .delete(ADMIN_LOCK_KEY, Some(revision))
        .await
    {
        tracing::warn!(error = %err, holder, "cannot release the platform-admin lock");
    }
    result
}

async fn renew_admin_lock(
    store: &gateway_store::Store,
    holder: &str,
    revision: gateway_store::Revision,
) -> Result<gateway_store::Revision, ApiError> {
    use gateway_store::{Record, StoreError};
    let lock = AdminLock {
        holder: holder.to_string(),
        expires_at: gateway_core::unix_now() + ADMIN_LOCK_TTL_SECONDS,
    }
    .to_bytes()
    .map_err(record_err)?;
    match store
        .kv(gateway_store::Bucket::Iam)
        .update(ADMIN_LOCK_KEY, lock, revision)
        .await
    {
        Ok(renewed) => Ok(renewed),
        Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => Err(ApiError::new(
            gateway_core::ErrorCode::StoreUnavailable,
            "another change to the platform admins took over; try again",
        )
        .with_retry_after(1)),
        Err(err) => Err(err.into()),
    }
}

async fn acquire_admin_lock(
    store: &gateway_store::Store,
) -> Result<(String, gateway_store::Revision), ApiError> {
    use gateway_store::{Record, StoreError};
    let kv = store.kv(gateway_store::Bucket::Iam);
    let holder = uuid::Uuid::new_v4().simple().to_string();
    let started = std::time::Instant::now();
    let mut attempt = 0u32;
    loop {
        let now = gateway_core::unix_now();
        let lock = AdminLock {
            holder: holder.clone(),
            expires_at: now + ADMIN_LOCK_TTL_SECONDS,
        }
        .to_bytes()
        .map_err(record_err)?;
        let taken = match kv.create(ADMIN_LOCK_KEY, lock.clone()).await {
            Ok(revision) => Some(revision),
            Err(StoreError::Conflict { .. }) => match kv.get(ADMIN_LOCK_KEY).await? {
                // released meanwhile: try again at once
                None => None,
                Some(entry) => {
                    let expired = AdminLock::from_bytes(&entry.value)
                        .map(|held| held.expires_at <= now)
                        .unwrap_or(true);
                    if expired {
                        match kv.update(ADMIN_LOCK_KEY, lock, entry.revision).await {
                            Ok(revision) => Some(revision),
                            Err(StoreError::Conflict { .. }) => None,
                            Err(err) => return Err(err.into()),
                        }
                    } else {
                        None
                    }
                }
            },
            Err(err) => return Err(err.into()),
        };
        if let Some(revision) = taken {
            return Ok((holder, revision));
        }
        if started.elapsed() > ADMIN_LOCK_WAIT {
            return Err(ApiError::new(
                gateway_core::ErrorCode::StoreUnavailable,
                "another change to the platform admins is in progress; try again",
            )
            .with_retry_after(1));
        }
        attempt += 1;
        tokio::time::sleep(gateway_core::backoff::jittered(
            attempt,
            std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(100),
        ))
        .await;
    }
}

/// Whether any principal holds `platform_admin` platform-wide.
pub async fn has_platform_admin(store: &gateway_store::Store) -> Result<bool, ApiError> {
    Ok(assignments::all(store).await?.iter().any(|a| {
        a.scope == gateway_core::authz::Scope::Platform
            && a.roles.contains(gateway_core::authz::PLATFORM_ADMIN)
    }))
}
