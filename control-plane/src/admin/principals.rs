//! Rules of the principal admin API: who may act on a principal, and the changes behind it.

pub mod service_accounts;

use std::collections::BTreeSet;
use std::net::IpAddr;

use gateway_core::authz::{Scope, TenantId};
use gateway_core::rights;
use gateway_edge::{ApiError, ErrorCode, Reason, unix_now};
use serde_json::json;

use super::Admin;
use crate::AppState;
use crate::audit::Audit;
use crate::auth::onetime::{self, Purpose};
use crate::auth::users::{self, User, UserStatus};
use crate::auth::{oidc, sessions};
use crate::iam::{assignments, tenant};
use crate::mail::Mail;

/// The admin making a change and where from: the audit record names both.
pub struct Caller<'a> {
    pub admin: &'a Admin,
    pub ip: IpAddr,
}

/// The admin view of a user, in answers and in audit details.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub email_verified: bool,
    pub status: users::UserStatus,
    pub mfa_enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// Access tokens issued at or before this Unix time are refused (0: none).
    pub tokens_valid_after: i64,
}

pub fn user_view(user: &User) -> UserView {
    UserView {
        id: user.id.clone(),
        email: user.email.clone(),
        email_verified: user.email_verified,
        status: user.status,
        mfa_enabled: user.mfa_enabled,
        created_at: user.created_at,
        updated_at: user.updated_at,
        tokens_valid_after: user.tokens_valid_after,
    }
}

/// Tenants of a principal and whether it holds a platform role.
pub async fn memberships(
    state: &AppState,
    principal: &str,
) -> Result<(BTreeSet<TenantId>, bool), ApiError> {
    let mut tenants = BTreeSet::new();
    let mut platform = false;
    for a in assignments::for_principal(&state.store, principal).await? {
        match a.scope {
            Scope::Tenant { tenant } => {
                tenants.insert(tenant);
            }
            Scope::Platform => platform = true,
        }
    }
    Ok((tenants, platform))
}

/// How far a tenant admin's right must reach over a principal's tenants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Reading what the principal is in one of the caller's tenants: admin of any one of
    /// its tenants is enough (answers show only the caller's tenants).
    AnyTenant,
    /// Account-wide powers (sessions and their client addresses, disabling): only an
    /// admin of every tenant the principal belongs to, so an admin of one tenant never
    /// reaches what the principal does in another.
    EveryTenant,
}

/// The refusal for a principal the caller may not act on: the same for unknown ids,
/// principals of other tenants and platform principals, so it tells nothing about them.
pub fn out_of_reach(action: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!("not allowed to {action} on this principal"),
    )
    .with_reason(Reason::NotAuthorizedForPrincipal)
}

/// Whether a principal id names an existing user or service account.
pub async fn exists(state: &AppState, principal: &str) -> Result<bool, ApiError> {
    Ok(
        if principal.starts_with(gateway_core::token::SERVICE_PREFIX) {
            crate::auth::service_accounts::get(&state.store, principal)
                .await?
                .is_some()
        } else {
            users::get(&state.store, principal).await?.is_some()
        },
    )
}

/// Allows `action` on a principal: platform-wide, or as an admin of its tenants as far
/// as `reach` asks (never over a principal holding a platform role). Returns the tenant
/// the right came from, if any (the audit record names it).
pub async fn authorize_on(
    state: &AppState,
    admin: &Admin,
    principal: &str,
    action: &str,
    reach: Reach,
) -> Result<Option<TenantId>, ApiError> {
    if admin.is_platform(action) {
        return Ok(None);
    }
    let (tenants, platform) = memberships(state, principal).await?;
    let allowed = |t: &TenantId| admin.decide(Some(t), action).allowed;
    let granted = match reach {
        Reach::AnyTenant => tenants.iter().find(|t| allowed(t)),
        Reach::EveryTenant if tenants.iter().all(allowed) => tenants.first(),
        Reach::EveryTenant => None,
    };
    match granted {
        Some(t) if !platform => Ok(Some(t.clone())),
        _ => {
            metrics::counter!("gateway_admin_denials_total", "reason" => "not_authorized_for_principal")
                .increment(1);
            Err(out_of_reach(action))
        }
    }
}

async fn load_user(state: &AppState, id: &str) -> Result<User, ApiError> {
    users::get(&state.store, id)
        .await?
        .map(|(u, _)| u)
        .ok_or_else(|| ApiError::not_found("no such user"))
}

/// The audit record of a change by `caller` (`tenant`: the tenant the right came from).
fn entry(
    caller: &Caller<'_>,
    action: &str,
    target: &str,
    tenant: &Option<TenantId>,
    now: i64,
) -> Audit {
    let audit = Audit::new(action, "ok", now)
        .actor(caller.admin.id())
        .target(target)
        .ip(caller.ip);
    match tenant {
        Some(t) => audit.tenant(t.as_str()),
        None => audit,
    }
}

/// Checks a new password against the policy and hashes it.
async fn hash_new_password(
    state: &AppState,
    password: &str,
    email: &str,
) -> Result<String, ApiError> {
    let password = state
        .auth
        .settings
        .password_policy
        .check(password, email)
        .map_err(|err| ApiError::bad_request(err.to_string()).with_reason(err.code()))?;
    state
        .auth
        .hasher
        .hash(&password)
        .await
        .map_err(|err| ApiError::internal("hashing", &err))
}

/// Filters of the user list.
pub struct UserQuery<'a> {
    pub email: Option<&'a str>,
    pub tenant_id: Option<&'a str>,
    pub status: Option<UserStatus>,
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// One page of the user list, and where the next one starts.
pub struct UserPage {
    pub users: Vec<User>,
    pub next_after: Option<String>,
}

/// Users passing the filters; tenant admins must name one of their tenants.
pub async fn list_users(
    state: &AppState,
    admin: &Admin,
    query: UserQuery<'_>,
) -> Result<UserPage, ApiError> {
    let tenant_filter = query.tenant_id.map(tenant).transpose()?;
    admin.require_listing(tenant_filter.as_ref(), rights::IAM_USERS_READ)?;
    let email = query.email.map(users::normalize_email).transpose()?;
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let members: Option<BTreeSet<String>> = match &tenant_filter {
        Some(t) => {
            let all = assignments::all(&state.store).await?;
            // platform principals are out of a tenant admin's reach, in lists too
            let hidden: BTreeSet<&str> = if admin.is_platform(rights::IAM_USERS_READ) {
                BTreeSet::new()
            } else {
                all.iter()
                    .filter(|a| a.scope == Scope::Platform)
                    .map(|a| a.principal_id.as_str())
                    .collect()
            };
            Some(
                all.iter()
                    .filter(|a| matches!(&a.scope, Scope::Tenant { tenant } if tenant == t))
                    .filter(|a| !hidden.contains(a.principal_id.as_str()))
                    .map(|a| a.principal_id.clone())
                    .collect(),
            )
        }
        None => None,
    };
    let mut found = Vec::new();
    let mut after = query.after;
    let mut next = None;
    // scan pages until `limit` users pass the filters (bounded per request)
    for _ in 0..50 {
        let (page, page_next) = users::list_page(&state.store, after.as_deref(), 500).await?;
        for user in page {
            let keep = email.as_ref().is_none_or(|e| &user.email == e)
                && query.status.is_none_or(|s| user.status == s)
                && members.as_ref().is_none_or(|m| m.contains(&user.id));
            after = Some(user.id.clone());
            if keep {
                found.push(user);
                if found.len() == limit {
                    next = after.clone();
                    break;
                }
            }
        }
        if next.is_some() || page_next.is_none() {
            break;
        }
    }
    Ok(UserPage {
        users: found,
        next_after: next,
    })
}

/// A user with its tenants, whether it holds a platform role, and its recovery codes left.
pub struct UserDetails {
    pub user: User,
    pub tenants: BTreeSet<TenantId>,
    pub platform_roles: bool,
    pub recovery_codes_left: usize,
}

/// One user with its memberships, for a caller allowed to read it.
pub async fn user_details(
    state: &AppState,
    admin: &Admin,
    id: &str,
) -> Result<UserDetails, ApiError> {
    authorize_on(state, admin, id, rights::IAM_USERS_READ, Reach::AnyTenant).await?;
    let user = load_user(state, id).await?;
    let (mut tenants, platform_roles) = memberships(state, id).await?;
    if !admin.is_platform(rights::IAM_USERS_READ) {
        // a tenant admin sees the principal in their own tenants only
        tenants.retain(|t| admin.decide(Some(t), rights::IAM_USERS_READ).allowed);
    }
    let recovery_codes_left = state.auth.mfa.recovery_codes_left(id).await?;
    Ok(UserDetails {
        user,
        tenants,
        platform_roles,
        recovery_codes_left,
    })
}

/// Creates a user (platform admins only), with a password when one is given.
pub async fn create_user(
    state: &AppState,
    caller: &Caller<'_>,
    email: &str,
    password: Option<&str>,
    email_verified: bool,
) -> Result<User, ApiError> {
    caller.admin.require(None, rights::IAM_USERS_WRITE)?;
    let email = users::normalize_email(email)?;
    let phc = match password {
        Some(password) => Some(hash_new_password(state, password, &email).await?),
        None => None,
    };
    let now = unix_now();
    let user = users::create(&state.store, &email, phc, email_verified, now).await?;
    state.publisher.publish(&user.id, now).await?;
    entry(caller, "admin.user.create", &user.id, &None, now)
        .detail(json!({"after": user_view(&user)}))
        .record(&state.store)
        .await;
    Ok(user)
}

/// Changes a user's email address or its verification (platform admins only).
pub async fn update_user(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
    email: Option<&str>,
    email_verified: Option<bool>,
) -> Result<User, ApiError> {
    caller.admin.require(None, rights::IAM_USERS_WRITE)?;
    let before = load_user(state, id).await?;
    let email = email.map(users::normalize_email).transpose()?;
    let now = unix_now();
    let mut after = before.clone();
    if let Some(email) = &email {
        after = users::change_email(&state.store, id, email, now).await?;
    }
    if let Some(verified) = email_verified {
        after = users::update(&state.store, id, now, |u| u.email_verified = verified).await?;
    }
    entry(caller, "admin.user.update", id, &None, now)
        .detail(json!({"before": user_view(&before), "after": user_view(&after)}))
        .record(&state.store)
        .await;
    Ok(after)
}

/// Disables a user (every session ends, every access token issued so far is refused), or
/// enables it again.
pub async fn set_status(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
    disable: bool,
) -> Result<User, ApiError> {
    let tenant = authorize_on(
        state,
        caller.admin,
        id,
        rights::IAM_USERS_WRITE,
        Reach::EveryTenant,
    )
    .await?;
    load_user(state, id).await?;
    if disable && id == caller.admin.id() {
        return Err(
            ApiError::new(ErrorCode::Conflict, "admins cannot disable themselves")
                .with_reason(Reason::SelfLockout),
        );
    }
    let now = unix_now();
    let update = users::update(&state.store, id, now, |u| {
        if disable {
            u.status = UserStatus::Disabled;
            u.tokens_valid_after = users::revoke_tokens(u.tokens_valid_after, now);
        } else {
            u.status = UserStatus::Active;
        }
    });
    let user = if disable {
        crate::iam::keeping_a_platform_admin(&state.store, id, update).await?
    } else {
        update.await?
    };
    if disable {
        sessions::revoke_all(&state.store, id, now, "disabled").await?;
    }
    state.publisher.publish(id, now).await?;
    entry(
        caller,
        if disable {
            "admin.user.disable"
        } else {
            "admin.user.enable"
        },
        id,
        &tenant,
        now,
    )
    .record(&state.store)
    .await;
    Ok(user)
}

/// Removes credentials, MFA, sessions, identities, assignments and the record; the
/// published document turns disabled so every data plane refuses the principal.
pub async fn delete_user(state: &AppState, caller: &Caller<'_>, id: &str) -> Result<(), ApiError> {
    caller.admin.require(None, rights::IAM_USERS_WRITE)?;
    if id == caller.admin.id() {
        return Err(
            ApiError::new(ErrorCode::Conflict, "admins cannot delete themselves")
                .with_reason(Reason::SelfDelete),
        );
    }
    let user = load_user(state, id).await?;
    // the assignments go first, under the platform-admin lock
    crate::iam::keeping_a_platform_admin(
        &state.store,
        id,
        assignments::remove_all(&state.store, id),
    )
    .await?;
    let now = unix_now();
    // the data planes drop the grants now, even if a later step fails
    state.publisher.publish(id, now).await?;
    sessions::revoke_all(&state.store, id, now, "deleted").await?;
    state.auth.mfa.remove(id).await?;
    for identity in oidc::identities_of(&state.store, id).await? {
        oidc::unlink(&state.store, &identity.provider, &identity.subject).await?;
    }
    users::remove(&state.store, &user).await?;
    state.publisher.publish(id, now).await?;
    entry(caller, "admin.user.delete", id, &None, now)
        .detail(json!({"before": user_view(&user)}))
        .record(&state.store)
        .await;
    Ok(())
}

/// Sets a user's password; every session of the user ends.
pub async fn set_password(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
    password: &str,
) -> Result<(), ApiError> {
    caller.admin.require(None, rights::IAM_CREDENTIALS_WRITE)?;
    let user = load_user(state, id).await?;
    let phc = hash_new_password(state, password, &user.email).await?;
    let now = unix_now();
    users::set_password(&state.store, id, phc, now).await?;
    state
        .auth
        .sign_out_everywhere(id, "password_set_by_admin", now)
        .await?;
    entry(caller, "admin.user.password.set", id, &None, now)
        .record(&state.store)
        .await;
    Ok(())
}

/// The password stops working, every session ends, and a reset link goes to the user.
pub async fn force_reset(state: &AppState, caller: &Caller<'_>, id: &str) -> Result<(), ApiError> {
    caller.admin.require(None, rights::IAM_CREDENTIALS_WRITE)?;
    let user = load_user(state, id).await?;
    if id == caller.admin.id() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "admins cannot force a reset of their own password; change it instead",
        )
        .with_reason(Reason::SelfLockout));
    }
    // the reset link could be lost (mail down, a typo in the address): the last admin
    // keeps a password
    crate::iam::keeping_a_platform_admin(
        &state.store,
        id,
        users::remove_password(&state.store, id),
    )
    .await?;
    let now = unix_now();
    state
        .auth
        .sign_out_everywhere(id, "forced_reset", now)
        .await?;
    let token = onetime::issue(
        &state.store,
        Purpose::Reset,
        id,
        &user.email,
        state.auth.settings.one_time_ttl,
        now,
    )
    .await?;
    state.auth.mailer.send_later(
        Mail {
            to: user.email.clone(),
            subject: "Choose a new password".into(),
            body: format!(
                "An administrator asked you to choose a new password.\n\n{}/reset-password?token={token}\n\nor submit this code: {token}\n\nIt expires in {} minutes.",
                state.auth.settings.public_url.trim_end_matches('/'),
                state.auth.settings.one_time_ttl.as_secs() / 60
            ),
        },
        "forced_reset",
    );
    entry(caller, "admin.user.password.force_reset", id, &None, now)
        .record(&state.store)
        .await;
    Ok(())
}

/// Removes a user's second factor.
pub async fn reset_mfa(state: &AppState, caller: &Caller<'_>, id: &str) -> Result<(), ApiError> {
    caller.admin.require(None, rights::IAM_MFA_WRITE)?;
    load_user(state, id).await?;
    let now = unix_now();
    state.auth.mfa.remove(id).await?;
    users::update(&state.store, id, now, |u| u.mfa_enabled = false).await?;
    entry(caller, "admin.user.mfa.reset", id, &None, now)
        .record(&state.store)
        .await;
    Ok(())
}

/// Revokes a user's MFA recovery codes.
pub async fn revoke_recovery_codes(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
) -> Result<(), ApiError> {
    caller.admin.require(None, rights::IAM_MFA_WRITE)?;
    load_user(state, id).await?;
    let now = unix_now();
    state.auth.mfa.revoke_recovery_codes(id).await?;
    entry(
        caller,
        "admin.user.mfa.recovery_codes.revoke",
        id,
        &None,
        now,
    )
    .record(&state.store)
    .await;
    Ok(())
}

/// The sessions of a user, ended ones included.
pub async fn list_sessions(
    state: &AppState,
    admin: &Admin,
    id: &str,
) -> Result<Vec<sessions::Session>, ApiError> {
    authorize_on(
        state,
        admin,
        id,
        rights::IAM_SESSIONS_WRITE,
        Reach::EveryTenant,
    )
    .await?;
    load_user(state, id).await?;
    sessions::list(&state.store, id).await
}

/// Ends one active session of a user.
pub async fn revoke_session(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
    session_id: &str,
) -> Result<(), ApiError> {
    // session ids are 32 hex digits: anything else names no session (and never reaches a
    // store key)
    if session_id.len() != 32 || !session_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::not_found("no such active session"));
    }
    let tenant = authorize_on(
        state,
        caller.admin,
        id,
        rights::IAM_SESSIONS_WRITE,
        Reach::EveryTenant,
    )
    .await?;
    let now = unix_now();
    let ended = sessions::revoke(
        &state.store,
        id,
        session_id,
        now,
        sessions::ended_alone::BY_ADMIN,
    )
    .await?;
    if !ended {
        // published anyway: a publication that failed after an earlier revocation is made
        // good here (an unchanged document is not rewritten)
        state.publisher.publish(id, now).await?;
        return Err(ApiError::not_found("no such active session"));
    }
    state.auth.ended_alone(id, session_id, now).await?;
    entry(caller, "admin.user.session.revoke", id, &tenant, now)
        .detail(json!({"session_id": session_id}))
        .record(&state.store)
        .await;
    Ok(())
}

/// Global sign-out: every session ends and every access token issued so far is refused.
/// Returns how many sessions were active.
pub async fn revoke_sessions(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
) -> Result<usize, ApiError> {
    let tenant = authorize_on(
        state,
        caller.admin,
        id,
        rights::IAM_SESSIONS_WRITE,
        Reach::EveryTenant,
    )
    .await?;
    load_user(state, id).await?;
    let now = unix_now();
    let ended = state
        .auth
        .sign_out_everywhere(id, "global_signout_by_admin", now)
        .await?;
    entry(caller, "admin.user.sessions.revoke_all", id, &tenant, now)
        .detail(json!({"sessions_ended": ended}))
        .record(&state.store)
        .await;
    Ok(ended)
}

/// The provider identities linked to a user.
pub async fn list_identities(
    state: &AppState,
    admin: &Admin,
    id: &str,
) -> Result<Vec<oidc::IdentityLink>, ApiError> {
    authorize_on(state, admin, id, rights::IAM_USERS_READ, Reach::EveryTenant).await?;
    load_user(state, id).await?;
    oidc::identities_of(&state.store, id).await
}

/// Links a provider identity to a user (platform admins only; Google only).
pub async fn link_identity(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
    provider: &str,
    subject: &str,
    email: Option<String>,
) -> Result<oidc::IdentityLink, ApiError> {
    caller.admin.require(None, rights::IAM_USERS_WRITE)?;
    load_user(state, id).await?;
    if provider != oidc::GOOGLE {
        return Err(ApiError::bad_request("unknown provider").with_reason(Reason::UnknownProvider));
    }
    // a provider's subject: an opaque ASCII identifier (Google's is digits)
    if subject.is_empty()
        || subject.len() > 255
        || !subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(
            ApiError::bad_request("subject is required").with_reason(Reason::InvalidSubject)
        );
    }
    // the provider's address, when given, is an address like any other
    let email = email
        .as_deref()
        .map(crate::auth::users::normalize_email)
        .transpose()?;
    let now = unix_now();
    let identity = oidc::ProviderIdentity {
        subject: subject.to_string(),
        email,
        email_verified: false,
    };
    let link = oidc::link(&state.store, oidc::GOOGLE, &identity, id, now).await?;
    entry(caller, "admin.user.identity.link", id, &None, now)
        .detail(json!({"provider": provider}))
        .record(&state.store)
        .await;
    Ok(link)
}

/// Unlinks a provider identity from the user it is linked to (platform admins only).
pub async fn unlink_identity(
    state: &AppState,
    caller: &Caller<'_>,
    id: &str,
    provider: &str,
    subject: &str,
) -> Result<(), ApiError> {
    caller.admin.require(None, rights::IAM_USERS_WRITE)?;
    let linked = oidc::linked_user(&state.store, provider, subject).await?;
    if linked.is_none_or(|l| l.user_id != id) {
        return Err(ApiError::not_found("no such identity on this user"));
    }
    let now = unix_now();
    // a platform admin without a password signs in only through a linked identity
    crate::iam::keeping_a_platform_admin(
        &state.store,
        id,
        oidc::unlink(&state.store, provider, subject),
    )
    .await?;
    entry(caller, "admin.user.identity.unlink", id, &None, now)
        .detail(json!({"provider": provider}))
        .record(&state.store)
        .await;
    Ok(())
}
