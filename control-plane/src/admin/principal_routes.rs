//! Admin routes for users, their credentials, sessions, MFA and identities, and for
//! service accounts. Platform admins manage everyone; tenant admins manage the members of
//! their tenants (never a principal holding a platform role).

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use gateway_core::authz::{Scope, TenantId};
use gateway_edge::{ApiError, ErrorCode, unix_now};
use serde::Deserialize;
use serde_json::json;

use super::Admin;
use crate::AppState;
use crate::api::{ApiJson, ClientIp};
use crate::audit::Audit;
use crate::auth::onetime::{self, Purpose};
use crate::auth::users::{self, User, UserStatus};
use crate::auth::{oidc, service_accounts, sessions};
use crate::iam::{assignments, tenant};
use crate::mail::Mail;

/// Mutating routes of this module (the audit test enumerates them).
pub const MUTATING_ROUTES: &[(&str, &str)] = &[
    ("POST", "/admin/users"),
    ("PATCH", "/admin/users/{id}"),
    ("POST", "/admin/users/{id}/disable"),
    ("POST", "/admin/users/{id}/enable"),
    ("DELETE", "/admin/users/{id}"),
    ("PUT", "/admin/users/{id}/password"),
    ("POST", "/admin/users/{id}/password/force-reset"),
    ("POST", "/admin/users/{id}/mfa/reset"),
    ("POST", "/admin/users/{id}/mfa/recovery-codes/revoke"),
    ("DELETE", "/admin/users/{id}/sessions/{session_id}"),
    ("DELETE", "/admin/users/{id}/sessions"),
    ("POST", "/admin/users/{id}/identities"),
    (
        "DELETE",
        "/admin/users/{id}/identities/{provider}/{subject}",
    ),
    ("POST", "/admin/service-accounts"),
    ("POST", "/admin/service-accounts/{id}/rotate"),
    ("DELETE", "/admin/service-accounts/{id}"),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/users", get(list_users).post(create_user))
        .route(
            "/admin/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/admin/users/{id}/disable", post(disable_user))
        .route("/admin/users/{id}/enable", post(enable_user))
        .route(
            "/admin/users/{id}/password",
            axum::routing::put(set_password),
        )
        .route("/admin/users/{id}/password/force-reset", post(force_reset))
        .route("/admin/users/{id}/mfa/reset", post(reset_mfa))
        .route(
            "/admin/users/{id}/mfa/recovery-codes/revoke",
            post(revoke_recovery),
        )
        .route(
            "/admin/users/{id}/sessions",
            get(list_sessions).delete(revoke_sessions),
        )
        .route(
            "/admin/users/{id}/sessions/{session_id}",
            delete(revoke_session),
        )
        .route(
            "/admin/users/{id}/identities",
            get(list_identities).post(link_identity),
        )
        .route(
            "/admin/users/{id}/identities/{provider}/{subject}",
            delete(unlink_identity),
        )
        .route(
            "/admin/service-accounts",
            get(list_service_accounts).post(create_service_account),
        )
        .route(
            "/admin/service-accounts/{id}",
            get(get_service_account).delete(delete_service_account),
        )
        .route(
            "/admin/service-accounts/{id}/rotate",
            post(rotate_service_account),
        )
}

fn user_view(user: &User) -> serde_json::Value {
    json!({
        "id": user.id,
        "email": user.email,
        "email_verified": user.email_verified,
        "status": user.status,
        "mfa_enabled": user.mfa_enabled,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
        "tokens_valid_after": user.tokens_valid_after,
    })
}

/// Tenants of a principal and whether it holds a platform role.
async fn memberships(
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

/// Allows `action` on a principal: platform-wide, or as an admin of one of its tenants
/// (never over a principal holding a platform role). Returns the tenant used, if any.
async fn authorize_on(
    state: &AppState,
    admin: &Admin,
    principal: &str,
    action: &str,
) -> Result<Option<TenantId>, ApiError> {
    if admin.is_platform(action) {
        return Ok(None);
    }
    let (tenants, platform) = memberships(state, principal).await?;
    if !platform
        && let Some(t) = tenants
            .into_iter()
            .find(|t| admin.require(Some(t), action).is_ok())
    {
        return Ok(Some(t));
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!("not allowed to {action} on this principal"),
    )
    .with_reason("not_authorized_for_principal"))
}

async fn load_user(state: &AppState, id: &str) -> Result<User, ApiError> {
    users::get(&state.store, id)
        .await?
        .map(|(u, _)| u)
        .ok_or_else(|| ApiError::not_found("no such user"))
}

fn entry(
    admin: &Admin,
    action: &str,
    target: &str,
    tenant: &Option<TenantId>,
    ip: std::net::IpAddr,
    now: i64,
) -> Audit {
    let audit = Audit::new(action, "ok", now)
        .actor(admin.id())
        .target(target)
        .ip(ip);
    match tenant {
        Some(t) => audit.tenant(t.as_str()),
        None => audit,
    }
}

#[derive(Deserialize)]
pub(crate) struct UserFilter {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    status: Option<UserStatus>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/admin/users", tag = "admin.users", summary = "List users (email, tenant_id, status, after, limit)", security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_users(
    State(state): State<AppState>,
    admin: Admin,
    Query(filter): Query<UserFilter>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant_filter = filter.tenant_id.as_deref().map(tenant).transpose()?;
    if !admin.is_platform("iam.users.read") {
        let Some(t) = &tenant_filter else {
            return Err(
                ApiError::bad_request("tenant_id is required").with_reason("missing_tenant")
            );
        };
        admin.require(Some(t), "iam.users.read")?;
    }
    let email = filter
        .email
        .as_deref()
        .map(users::normalize_email)
        .transpose()?;
    let limit = filter.limit.unwrap_or(50).clamp(1, 500);
    let members: Option<BTreeSet<String>> = match &tenant_filter {
        Some(t) => Some(
            assignments::all(&state.store)
                .await?
                .into_iter()
                .filter(|a| matches!(&a.scope, Scope::Tenant { tenant } if tenant == t))
                .map(|a| a.principal_id)
                .collect(),
        ),
        None => None,
    };
    let mut found = Vec::new();
    let mut after = filter.after.clone();
    let mut next = None;
    // scan pages until `limit` users pass the filters (bounded per request)
    for _ in 0..50 {
        let (page, page_next) = users::list_page(&state.store, after.as_deref(), 500).await?;
        for user in page {
            let keep = email.as_ref().is_none_or(|e| &user.email == e)
                && filter.status.is_none_or(|s| user.status == s)
                && members.as_ref().is_none_or(|m| m.contains(&user.id));
            after = Some(user.id.clone());
            if keep {
                found.push(user_view(&user));
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
    Ok(Json(json!({"users": found, "next_after": next})))
}

#[utoipa::path(get, path = "/admin/users/{id}", tag = "admin.users", summary = "One user", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn get_user(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize_on(&state, &admin, &id, "iam.users.read").await?;
    let user = load_user(&state, &id).await?;
    let (tenants, platform) = memberships(&state, &id).await?;
    let mut view = user_view(&user);
    view["tenants"] = json!(tenants);
    view["platform_roles"] = json!(platform);
    view["recovery_codes_left"] = json!(state.auth.mfa.recovery_codes_left(&id).await?);
    Ok(Json(view))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateUser {
    email: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    email_verified: bool,
}

#[utoipa::path(post, path = "/admin/users", tag = "admin.users", summary = "Create a user", request_body = CreateUser, security(("bearer" = [])), responses((status = 201, description = "Created"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, "iam.users.write")?;
    let email = users::normalize_email(&body.email)?;
    let phc = match &body.password {
        Some(password) => {
            let password = state
                .auth
                .settings
                .password_policy
                .check(password, &email)
                .map_err(|err| ApiError::bad_request(err.to_string()).with_reason(err.code()))?;
            Some(
                state
                    .auth
                    .hasher
                    .hash(&password)
                    .await
                    .map_err(|err| ApiError::internal("hashing", &err))?,
            )
        }
        None => None,
    };
    let now = unix_now();
    let user = users::create(&state.store, &email, phc, body.email_verified, now).await?;
    state.publisher.publish(&user.id, now).await?;
    entry(&admin, "admin.user.create", &user.id, &None, ip, now)
        .detail(json!({"after": user_view(&user)}))
        .record(&state.store)
        .await;
    Ok((StatusCode::CREATED, Json(user_view(&user))))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct UpdateUser {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
}

#[utoipa::path(patch, path = "/admin/users/{id}", tag = "admin.users", summary = "Change email or verification", params(("id" = String, Path)), request_body = UpdateUser, security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn update_user(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, "iam.users.write")?;
    let before = load_user(&state, &id).await?;
    let email = body
        .email
        .as_deref()
        .map(users::normalize_email)
        .transpose()?;
    let now = unix_now();
    let mut after = before.clone();
    if let Some(email) = &email {
        after = users::change_email(&state.store, &id, email, now).await?;
    }
    if let Some(verified) = body.email_verified {
        after = users::update(&state.store, &id, now, |u| u.email_verified = verified).await?;
    }
    entry(&admin, "admin.user.update", &id, &None, ip, now)
        .detail(json!({"before": user_view(&before), "after": user_view(&after)}))
        .record(&state.store)
        .await;
    Ok(Json(user_view(&after)))
}

async fn set_status(
    state: &AppState,
    admin: &Admin,
    id: &str,
    ip: std::net::IpAddr,
    disable: bool,
) -> Result<User, ApiError> {
    let tenant = authorize_on(state, admin, id, "iam.users.write").await?;
    load_user(state, id).await?;
    let now = unix_now();
    let user = users::update(&state.store, id, now, |u| {
        if disable {
            u.status = UserStatus::Disabled;
            u.tokens_valid_after = users::revoke_tokens(u.tokens_valid_after, now);
        } else {
            u.status = UserStatus::Active;
        }
    })
    .await?;
    if disable {
        sessions::revoke_all(&state.store, id, now, "disabled").await?;
    }
    state.publisher.publish(id, now).await?;
    entry(
        admin,
        if disable {
            "admin.user.disable"
        } else {
            "admin.user.enable"
        },
        id,
        &tenant,
        ip,
        now,
    )
    .record(&state.store)
    .await;
    Ok(user)
}

#[utoipa::path(post, path = "/admin/users/{id}/disable", tag = "admin.users", summary = "Disable a user", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn disable_user(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(user_view(
        &set_status(&state, &admin, &id, ip, true).await?,
    )))
}

#[utoipa::path(post, path = "/admin/users/{id}/enable", tag = "admin.users", summary = "Enable a user", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn enable_user(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(user_view(
        &set_status(&state, &admin, &id, ip, false).await?,
    )))
}

/// Deletion removes credentials, MFA, sessions, identities, assignments and the record;
/// the published document turns disabled so every data plane refuses the principal.
#[utoipa::path(delete, path = "/admin/users/{id}", tag = "admin.users", summary = "Delete a user and everything about it", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn delete_user(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin.require(None, "iam.users.write")?;
    if id == admin.id() {
        return Err(
            ApiError::new(ErrorCode::Conflict, "admins cannot delete themselves")
                .with_reason("self_delete"),
        );
    }
    let user = load_user(&state, &id).await?;
    let now = unix_now();
    sessions::revoke_all(&state.store, &id, now, "deleted").await?;
    state.auth.mfa.remove(&id).await?;
    for identity in oidc::identities_of(&state.store, &id).await? {
        oidc::unlink(&state.store, &identity.provider, &identity.subject).await?;
    }
    assignments::remove_all(&state.store, &id).await?;
    users::remove(&state.store, &user).await?;
    state.publisher.publish(&id, now).await?;
    entry(&admin, "admin.user.delete", &id, &None, ip, now)
        .detail(json!({"before": user_view(&user)}))
        .record(&state.store)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct PasswordBody {
    password: String,
}

#[utoipa::path(put, path = "/admin/users/{id}/password", tag = "admin.users", summary = "Set a password", params(("id" = String, Path)), request_body = PasswordBody, security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn set_password(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    admin.require(None, "iam.credentials.write")?;
    let user = load_user(&state, &id).await?;
    let password = state
        .auth
        .settings
        .password_policy
        .check(&body.password, &user.email)
        .map_err(|err| ApiError::bad_request(err.to_string()).with_reason(err.code()))?;
    let phc = state
        .auth
        .hasher
        .hash(&password)
        .await
        .map_err(|err| ApiError::internal("hashing", &err))?;
    let now = unix_now();
    users::set_password(&state.store, &id, phc, now).await?;
    state
        .auth
        .sign_out_everywhere(&id, "password_set_by_admin", now)
        .await?;
    entry(&admin, "admin.user.password.set", &id, &None, ip, now)
        .record(&state.store)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The password stops working, every session ends, and a reset link goes to the user.
#[utoipa::path(post, path = "/admin/users/{id}/password/force-reset", tag = "admin.users", summary = "Force a password reset by mail", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn force_reset(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin.require(None, "iam.credentials.write")?;
    let user = load_user(&state, &id).await?;
    let now = unix_now();
    users::remove_password(&state.store, &id).await?;
    state
        .auth
        .sign_out_everywhere(&id, "forced_reset", now)
        .await?;
    let token = onetime::issue(
        &state.store,
        Purpose::Reset,
        &id,
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
    entry(
        &admin,
        "admin.user.password.force_reset",
        &id,
        &None,
        ip,
        now,
    )
    .record(&state.store)
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/admin/users/{id}/mfa/reset", tag = "admin.users", summary = "Remove the second factor", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn reset_mfa(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin.require(None, "iam.mfa.write")?;
    load_user(&state, &id).await?;
    let now = unix_now();
    state.auth.mfa.remove(&id).await?;
    users::update(&state.store, &id, now, |u| u.mfa_enabled = false).await?;
    entry(&admin, "admin.user.mfa.reset", &id, &None, ip, now)
        .record(&state.store)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/admin/users/{id}/mfa/recovery-codes/revoke", tag = "admin.users", summary = "Revoke recovery codes", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn revoke_recovery(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin.require(None, "iam.mfa.write")?;
    load_user(&state, &id).await?;
    let now = unix_now();
    state.auth.mfa.revoke_recovery_codes(&id).await?;
    entry(
        &admin,
        "admin.user.mfa.recovery_codes.revoke",
        &id,
        &None,
        ip,
        now,
    )
    .record(&state.store)
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/admin/users/{id}/sessions", tag = "admin.sessions", summary = "List sessions", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_sessions(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize_on(&state, &admin, &id, "iam.sessions.write").await?;
    load_user(&state, &id).await?;
    let now = unix_now();
    let list: Vec<_> = sessions::list(&state.store, &id)
        .await?
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id, "created_at": s.created_at, "last_used_at": s.last_used_at,
                "expires_at": s.expires_at, "active": s.is_active(now), "revoked_at": s.revoked_at,
                "revoked_reason": s.revoked_reason, "client_ip": s.client_ip, "mfa": s.mfa,
            })
        })
        .collect();
    Ok(Json(json!({"sessions": list})))
}

#[utoipa::path(delete, path = "/admin/users/{id}/sessions/{session_id}", tag = "admin.sessions", summary = "Revoke one session", params(("id" = String, Path), ("session_id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn revoke_session(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path((id, session_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = authorize_on(&state, &admin, &id, "iam.sessions.write").await?;
    let now = unix_now();
    if !sessions::revoke(&state.store, &id, &session_id, now, "revoked_by_admin").await? {
        return Err(ApiError::not_found("no such active session"));
    }
    entry(&admin, "admin.user.session.revoke", &id, &tenant, ip, now)
        .detail(json!({"session_id": session_id}))
        .record(&state.store)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Global sign-out: every session ends and every access token issued so far is refused.
#[utoipa::path(delete, path = "/admin/users/{id}/sessions", tag = "admin.sessions", summary = "Global sign-out", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn revoke_sessions(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = authorize_on(&state, &admin, &id, "iam.sessions.write").await?;
    load_user(&state, &id).await?;
    let now = unix_now();
    let ended = state
        .auth
        .sign_out_everywhere(&id, "global_signout_by_admin", now)
        .await?;
    entry(
        &admin,
        "admin.user.sessions.revoke_all",
        &id,
        &tenant,
        ip,
        now,
    )
    .detail(json!({"sessions_ended": ended}))
    .record(&state.store)
    .await;
    Ok(Json(json!({"sessions_ended": ended})))
}

#[utoipa::path(get, path = "/admin/users/{id}/identities", tag = "admin.users", summary = "Linked identities", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_identities(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    authorize_on(&state, &admin, &id, "iam.users.read").await?;
    load_user(&state, &id).await?;
    Ok(Json(
        json!({"identities": oidc::identities_of(&state.store, &id).await?}),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct IdentityBody {
    provider: String,
    subject: String,
    #[serde(default)]
    email: Option<String>,
}

#[utoipa::path(post, path = "/admin/users/{id}/identities", tag = "admin.users", summary = "Link an identity", params(("id" = String, Path)), request_body = IdentityBody, security(("bearer" = [])), responses((status = 201, description = "Created"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn link_identity(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<IdentityBody>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, "iam.users.write")?;
    load_user(&state, &id).await?;
    if body.provider != oidc::GOOGLE {
        return Err(ApiError::bad_request("unknown provider").with_reason("unknown_provider"));
    }
    if body.subject.is_empty() || body.subject.len() > 255 {
        return Err(ApiError::bad_request("subject is required").with_reason("invalid_subject"));
    }
    let now = unix_now();
    let identity = oidc::ProviderIdentity {
        subject: body.subject.clone(),
        email: body.email.clone(),
        email_verified: false,
    };
    oidc::link(&state.store, oidc::GOOGLE, &identity, &id, now).await?;
    entry(&admin, "admin.user.identity.link", &id, &None, ip, now)
        .detail(json!({"provider": body.provider}))
        .record(&state.store)
        .await;
    Ok(StatusCode::CREATED)
}

#[utoipa::path(delete, path = "/admin/users/{id}/identities/{provider}/{subject}", tag = "admin.users", summary = "Unlink an identity", params(("id" = String, Path), ("provider" = String, Path), ("subject" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn unlink_identity(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path((id, provider, subject)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    admin.require(None, "iam.users.write")?;
    let linked = oidc::linked_user(&state.store, &provider, &subject).await?;
    if linked.is_none_or(|l| l.user_id != id) {
        return Err(ApiError::not_found("no such identity on this user"));
    }
    let now = unix_now();
    oidc::unlink(&state.store, &provider, &subject).await?;
    entry(&admin, "admin.user.identity.unlink", &id, &None, ip, now)
        .detail(json!({"provider": provider}))
        .record(&state.store)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

fn account_view(account: &service_accounts::ServiceAccount, now: i64) -> serde_json::Value {
    json!({
        "id": account.id,
        "name": account.name,
        "disabled": account.disabled,
        "owner_tenant": account.owner_tenant,
        "created_at": account.created_at,
        "secrets": account.live_secrets(now).map(|s| json!({"id": s.id, "created_at": s.created_at, "expires_at": s.expires_at})).collect::<Vec<_>>(),
    })
}

/// Service accounts are managed platform-wide, or by admins of their owner tenant.
fn authorize_account(
    admin: &Admin,
    owner: Option<&str>,
    action: &str,
) -> Result<Option<TenantId>, ApiError> {
    if admin.is_platform(action) {
        return Ok(None);
    }
    let owner = owner.and_then(|t| TenantId::parse(t).ok()).ok_or_else(|| {
        ApiError::new(ErrorCode::Forbidden, format!("not allowed to {action}"))
            .with_reason("not_platform_authorized")
    })?;
    admin.require(Some(&owner), action)?;
    Ok(Some(owner))
}

#[derive(Deserialize)]
pub(crate) struct AccountFilter {
    #[serde(default)]
    tenant_id: Option<String>,
}

#[utoipa::path(get, path = "/admin/service-accounts", tag = "admin.service_accounts", summary = "List service accounts", security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_service_accounts(
    State(state): State<AppState>,
    admin: Admin,
    Query(filter): Query<AccountFilter>,
) -> Result<impl IntoResponse, ApiError> {
    let owner = filter.tenant_id.as_deref().map(tenant).transpose()?;
    authorize_account(
        &admin,
        owner.as_ref().map(TenantId::as_str),
        "iam.service_accounts.read",
    )?;
    let now = unix_now();
    let accounts: Vec<_> = service_accounts::list(&state.store)
        .await?
        .iter()
        .filter(|a| {
            owner
                .as_ref()
                .is_none_or(|o| a.owner_tenant.as_deref() == Some(o.as_str()))
        })
        .map(|a| account_view(a, now))
        .collect();
    Ok(Json(json!({"service_accounts": accounts})))
}

#[utoipa::path(get, path = "/admin/service-accounts/{id}", tag = "admin.service_accounts", summary = "One service account", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn get_service_account(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (account, _) = service_accounts::get(&state.store, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such service account"))?;
    authorize_account(
        &admin,
        account.owner_tenant.as_deref(),
        "iam.service_accounts.read",
    )?;
    Ok(Json(account_view(&account, unix_now())))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateAccount {
    name: String,
    /// Owner tenant: its admins manage the account.
    #[serde(default)]
    tenant_id: Option<String>,
}

#[utoipa::path(post, path = "/admin/service-accounts", tag = "admin.service_accounts", summary = "Create a service account (secret shown once)", request_body = CreateAccount, security(("bearer" = [])), responses((status = 201, description = "Created"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn create_service_account(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<CreateAccount>,
) -> Result<impl IntoResponse, ApiError> {
    let owner = body.tenant_id.as_deref().map(tenant).transpose()?;
    let audit_tenant = authorize_account(
        &admin,
        owner.as_ref().map(TenantId::as_str),
        "iam.service_accounts.write",
    )?;
    let now = unix_now();
    let (account, secret) = service_accounts::create(&state.store, &body.name, now).await?;
    let account = match &owner {
        Some(o) => {
            service_accounts::set_owner(&state.store, &account.id, Some(o.to_string())).await?
        }
        None => account,
    };
    state.publisher.publish(&account.id, now).await?;
    entry(
        &admin,
        "admin.service_account.create",
        &account.id,
        &audit_tenant.or(owner),
        ip,
        now,
    )
    .detail(json!({"name": account.name}))
    .record(&state.store)
    .await;
    let mut view = account_view(&account, now);
    view["client_secret"] = json!(secret);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(view),
    ))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(crate) struct RotateBody {
    /// How long older secrets keep working (default 24 h, at most 30 days).
    #[serde(default)]
    overlap_seconds: Option<u64>,
}

#[utoipa::path(post, path = "/admin/service-accounts/{id}/rotate", tag = "admin.service_accounts", summary = "Rotate the client secret", params(("id" = String, Path)), request_body = RotateBody, security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn rotate_service_account(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    // the body is optional
    let body: RotateBody = if raw.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        serde_json::from_slice(&raw).map_err(|_| {
            ApiError::bad_request("the body does not match the expected fields")
                .with_reason("invalid_body")
        })?
    };
    let (account, _) = service_accounts::get(&state.store, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such service account"))?;
    let tenant = authorize_account(
        &admin,
        account.owner_tenant.as_deref(),
        "iam.service_accounts.write",
    )?;
    let overlap = body.overlap_seconds.unwrap_or(86_400);
    if overlap > 30 * 86_400 {
        return Err(ApiError::bad_request("overlap_seconds is at most 30 days")
            .with_reason("invalid_overlap"));
    }
    let now = unix_now();
    let secret =
        service_accounts::rotate_secret(&state.store, &id, Duration::from_secs(overlap), now)
            .await?;
    entry(
        &admin,
        "admin.service_account.rotate",
        &id,
        &tenant,
        ip,
        now,
    )
    .detail(json!({"overlap_seconds": overlap}))
    .record(&state.store)
    .await;
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(json!({"id": id, "client_secret": secret, "overlap_seconds": overlap})),
    ))
}

#[utoipa::path(delete, path = "/admin/service-accounts/{id}", tag = "admin.service_accounts", summary = "Delete a service account", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn delete_service_account(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (account, _) = service_accounts::get(&state.store, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such service account"))?;
    let tenant = authorize_account(
        &admin,
        account.owner_tenant.as_deref(),
        "iam.service_accounts.write",
    )?;
    let now = unix_now();
    assignments::remove_all(&state.store, &id).await?;
    service_accounts::delete(&state.store, &id).await?;
    state.publisher.publish(&id, now).await?;
    entry(
        &admin,
        "admin.service_account.delete",
        &id,
        &tenant,
        ip,
        now,
    )
    .detail(json!({"name": account.name}))
    .record(&state.store)
    .await;
    Ok(StatusCode::NO_CONTENT)
}
