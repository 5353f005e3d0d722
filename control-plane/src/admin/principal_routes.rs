//! Admin routes for users, their credentials, sessions, MFA and identities, and for
//! service accounts. Platform admins manage everyone; tenant admins manage the members of
//! their tenants (never a principal holding a platform role). The rules live in
//! [`super::principals`]; the handlers here extract, call one of them, and shape the answer.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use gateway_edge::{ApiError, Reason, unix_now};
use serde::Deserialize;
use serde_json::json;

use super::Admin;
use super::principals::{self, Caller, service_accounts as accounts, user_view};
use crate::AppState;
use crate::api::{ApiJson, ClientIp};
use crate::auth::service_accounts::ServiceAccount;
use crate::auth::users::UserStatus;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The module's routes, each declared once: the router and its OpenAPI paths come from
/// the handlers' `#[utoipa::path]` annotations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(disable_user))
        .routes(routes!(enable_user))
        .routes(routes!(set_password))
        .routes(routes!(force_reset))
        .routes(routes!(reset_mfa))
        .routes(routes!(revoke_recovery))
        .routes(routes!(list_sessions, revoke_sessions))
        .routes(routes!(revoke_session))
        .routes(routes!(list_identities, link_identity))
        .routes(routes!(unlink_identity))
        .routes(routes!(list_service_accounts, create_service_account))
        .routes(routes!(get_service_account, delete_service_account))
        .routes(routes!(rotate_service_account))
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
    let query = principals::UserQuery {
        email: filter.email.as_deref(),
        tenant_id: filter.tenant_id.as_deref(),
        status: filter.status,
        after: filter.after.clone(),
        limit: filter.limit,
    };
    let page = principals::list_users(&state, &admin, query).await?;
    let found: Vec<_> = page.users.iter().map(user_view).collect();
    Ok(Json(json!({"users": found, "next_after": page.next_after})))
}

#[utoipa::path(get, path = "/admin/users/{id}", tag = "admin.users", summary = "One user", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn get_user(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let details = principals::user_details(&state, &admin, &id).await?;
    let mut view = user_view(&details.user);
    view["tenants"] = json!(details.tenants);
    view["platform_roles"] = json!(details.platform_roles);
    view["recovery_codes_left"] = json!(details.recovery_codes_left);
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
    let caller = caller(&admin, ip);
    let user = principals::create_user(
        &state,
        &caller,
        &body.email,
        body.password.as_deref(),
        body.email_verified,
    )
    .await?;
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
    let caller = caller(&admin, ip);
    let user = principals::update_user(
        &state,
        &caller,
        &id,
        body.email.as_deref(),
        body.email_verified,
    )
    .await?;
    Ok(Json(user_view(&user)))
}

#[utoipa::path(post, path = "/admin/users/{id}/disable", tag = "admin.users", summary = "Disable a user", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn disable_user(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let user = principals::set_status(&state, &caller(&admin, ip), &id, true).await?;
    Ok(Json(user_view(&user)))
}

#[utoipa::path(post, path = "/admin/users/{id}/enable", tag = "admin.users", summary = "Enable a user", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn enable_user(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let user = principals::set_status(&state, &caller(&admin, ip), &id, false).await?;
    Ok(Json(user_view(&user)))
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
    principals::delete_user(&state, &caller(&admin, ip), &id).await?;
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
    principals::set_password(&state, &caller(&admin, ip), &id, &body.password).await?;
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
    principals::force_reset(&state, &caller(&admin, ip), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/admin/users/{id}/mfa/reset", tag = "admin.users", summary = "Remove the second factor", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn reset_mfa(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principals::reset_mfa(&state, &caller(&admin, ip), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/admin/users/{id}/mfa/recovery-codes/revoke", tag = "admin.users", summary = "Revoke recovery codes", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn revoke_recovery(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principals::revoke_recovery_codes(&state, &caller(&admin, ip), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/admin/users/{id}/sessions", tag = "admin.sessions", summary = "List sessions", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_sessions(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let sessions = principals::list_sessions(&state, &admin, &id).await?;
    let now = unix_now();
    let list: Vec<_> = sessions
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
    principals::revoke_session(&state, &caller(&admin, ip), &id, &session_id).await?;
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
    let ended = principals::revoke_sessions(&state, &caller(&admin, ip), &id).await?;
    Ok(Json(json!({"sessions_ended": ended})))
}

#[utoipa::path(get, path = "/admin/users/{id}/identities", tag = "admin.users", summary = "Linked identities", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_identities(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let identities = principals::list_identities(&state, &admin, &id).await?;
    Ok(Json(json!({"identities": identities})))
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
    let caller = caller(&admin, ip);
    principals::link_identity(
        &state,
        &caller,
        &id,
        &body.provider,
        &body.subject,
        body.email,
    )
    .await?;
    Ok(StatusCode::CREATED)
}

#[utoipa::path(delete, path = "/admin/users/{id}/identities/{provider}/{subject}", tag = "admin.users", summary = "Unlink an identity", params(("id" = String, Path), ("provider" = String, Path), ("subject" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn unlink_identity(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path((id, provider, subject)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    principals::unlink_identity(&state, &caller(&admin, ip), &id, &provider, &subject).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn account_view(account: &ServiceAccount, now: i64) -> serde_json::Value {
    json!({
        "id": account.id,
        "name": account.name,
        "disabled": account.disabled,
        "owner_tenant": account.owner_tenant,
        "created_at": account.created_at,
        "secrets": account.live_secrets(now).map(|s| json!({"id": s.id, "created_at": s.created_at, "expires_at": s.expires_at})).collect::<Vec<_>>(),
    })
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
    let found = accounts::list(&state, &admin, filter.tenant_id.as_deref()).await?;
    let now = unix_now();
    let accounts: Vec<_> = found.iter().map(|a| account_view(a, now)).collect();
    Ok(Json(json!({"service_accounts": accounts})))
}

#[utoipa::path(get, path = "/admin/service-accounts/{id}", tag = "admin.service_accounts", summary = "One service account", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "OK"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn get_service_account(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let account = accounts::get(&state, &admin, &id).await?;
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
    let caller = caller(&admin, ip);
    let created = accounts::create(&state, &caller, &body.name, body.tenant_id.as_deref()).await?;
    let mut view = account_view(&created.account, created.now);
    view["client_secret"] = json!(created.client_secret);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(view),
    ))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(crate) struct RotateBody {
    /// How long older secrets keep working (default 24 h, at most 30 days).
    #[serde(default, deserialize_with = "crate::api::whole_number")]
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
                .with_reason(Reason::InvalidBody)
        })?
    };
    let (secret, overlap) =
        accounts::rotate(&state, &caller(&admin, ip), &id, body.overlap_seconds).await?;
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
    accounts::delete(&state, &caller(&admin, ip), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The admin behind a change and where from, for the audit record.
fn caller(admin: &Admin, ip: std::net::IpAddr) -> Caller<'_> {
    Caller { admin, ip }
}
