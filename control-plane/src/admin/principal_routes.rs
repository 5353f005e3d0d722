//! Admin routes for users, their credentials, sessions, MFA and identities, and for
//! service accounts. Platform admins manage everyone; tenant admins manage the members of
//! their tenants (never a principal holding a platform role). The rules live in
//! [`super::principals`]; the handlers here extract, call one of them, and shape the answer.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use gateway_edge::{ApiError, Reason, unix_now};
use serde::{Deserialize, Serialize};

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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UserFilter {
    /// Only the user with this address.
    #[serde(default)]
    email: Option<String>,
    /// Only members of this tenant (required for tenant admins).
    #[serde(default)]
    tenant_id: Option<String>,
    /// Only users in this status.
    #[serde(default)]
    #[param(inline)]
    status: Option<UserStatus>,
    /// Where the page starts: the `next_after` of the page before.
    #[serde(default)]
    after: Option<String>,
    /// Most users in the page: 50 by default, 1 to 500 (values outside are brought in).
    #[serde(default)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/admin/users", tag = "admin.users", summary = "List users", params(UserFilter), security(("bearer" = [])), responses((status = 200, description = "A page of users", body = UserList), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
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
    Ok(Json(UserList {
        users: page.users.iter().map(user_view).collect(),
        next_after: page.next_after,
    }))
}

#[utoipa::path(get, path = "/admin/users/{id}", tag = "admin.users", summary = "One user", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "The user with its memberships", body = UserDetailsView), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn get_user(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let details = principals::user_details(&state, &admin, &id).await?;
    Ok(Json(UserDetailsView {
        user: user_view(&details.user),
        tenants: details.tenants,
        platform_roles: details.platform_roles,
        recovery_codes_left: details.recovery_codes_left,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateUser {
    email: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    email_verified: bool,
}

#[utoipa::path(post, path = "/admin/users", tag = "admin.users", summary = "Create a user", request_body = CreateUser, security(("bearer" = [])), responses((status = 201, description = "Created", body = principals::UserView), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
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

#[utoipa::path(patch, path = "/admin/users/{id}", tag = "admin.users", summary = "Change email or verification", params(("id" = String, Path)), request_body = UpdateUser, security(("bearer" = [])), responses((status = 200, description = "The user as changed", body = principals::UserView), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
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

#[utoipa::path(post, path = "/admin/users/{id}/disable", tag = "admin.users", summary = "Disable a user", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "The user, disabled", body = principals::UserView), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn disable_user(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let user = principals::set_status(&state, &caller(&admin, ip), &id, true).await?;
    Ok(Json(user_view(&user)))
}

#[utoipa::path(post, path = "/admin/users/{id}/enable", tag = "admin.users", summary = "Enable a user", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "The user, enabled", body = principals::UserView), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
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

#[utoipa::path(get, path = "/admin/users/{id}/sessions", tag = "admin.sessions", summary = "List sessions", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "The user's sessions", body = SessionList), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_sessions(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let sessions = principals::list_sessions(&state, &admin, &id).await?;
    let now = unix_now();
    let sessions = sessions
        .into_iter()
        .map(|s| SessionView {
            active: s.is_active(now),
            id: s.id,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            revoked_at: s.revoked_at,
            revoked_reason: s.revoked_reason,
            client_ip: s.client_ip,
            mfa: s.mfa,
        })
        .collect();
    Ok(Json(SessionList { sessions }))
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
#[utoipa::path(delete, path = "/admin/users/{id}/sessions", tag = "admin.sessions", summary = "Global sign-out", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "How many sessions ended", body = SessionsEnded), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn revoke_sessions(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let ended = principals::revoke_sessions(&state, &caller(&admin, ip), &id).await?;
    Ok(Json(SessionsEnded {
        sessions_ended: ended,
    }))
}

#[utoipa::path(get, path = "/admin/users/{id}/identities", tag = "admin.users", summary = "Linked identities", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "The linked provider identities", body = IdentityList), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_identities(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let identities = principals::list_identities(&state, &admin, &id).await?;
    Ok(Json(IdentityList { identities }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct IdentityBody {
    provider: String,
    subject: String,
    #[serde(default)]
    email: Option<String>,
}

#[utoipa::path(post, path = "/admin/users/{id}/identities", tag = "admin.users", summary = "Link an identity", params(("id" = String, Path)), request_body = IdentityBody, security(("bearer" = [])), responses((status = 201, description = "Linked (or already linked to this user)", body = crate::auth::oidc::IdentityLink), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn link_identity(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<IdentityBody>,
) -> Result<impl IntoResponse, ApiError> {
    let caller = caller(&admin, ip);
    let link = principals::link_identity(
        &state,
        &caller,
        &id,
        &body.provider,
        &body.subject,
        body.email,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(link)))
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

/// A service account as the API shows it: its live secrets by id, never their values.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AccountView {
    id: String,
    name: String,
    disabled: bool,
    /// The tenant whose admins manage it (null: platform-owned).
    #[schema(required = true)]
    owner_tenant: Option<String>,
    created_at: i64,
    secrets: Vec<SecretView>,
}

/// One live client secret (its value is shown once, when made).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SecretView {
    id: String,
    created_at: i64,
    /// Set once a newer secret replaced it: it works until then.
    #[schema(required = true)]
    expires_at: Option<i64>,
}

fn account_view(account: &ServiceAccount, now: i64) -> AccountView {
    AccountView {
        id: account.id.clone(),
        name: account.name.clone(),
        disabled: account.disabled,
        owner_tenant: account.owner_tenant.clone(),
        created_at: account.created_at,
        secrets: account
            .live_secrets(now)
            .map(|s| SecretView {
                id: s.id.clone(),
                created_at: s.created_at,
                expires_at: s.expires_at,
            })
            .collect(),
    }
}

/// The service accounts (`GET /admin/service-accounts`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AccountList {
    service_accounts: Vec<AccountView>,
}

/// A new service account with its first client secret, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedAccount {
    #[serde(flatten)]
    account: AccountView,
    client_secret: String,
}

/// A new client secret, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RotatedSecret {
    id: String,
    client_secret: String,
    /// Seconds the older secrets keep working.
    overlap_seconds: u64,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AccountFilter {
    /// Only the accounts of this tenant (required for tenant admins).
    #[serde(default)]
    tenant_id: Option<String>,
}

#[utoipa::path(get, path = "/admin/service-accounts", tag = "admin.service_accounts", summary = "List service accounts", params(AccountFilter), security(("bearer" = [])), responses((status = 200, description = "The service accounts", body = AccountList), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_service_accounts(
    State(state): State<AppState>,
    admin: Admin,
    Query(filter): Query<AccountFilter>,
) -> Result<impl IntoResponse, ApiError> {
    let found = accounts::list(&state, &admin, filter.tenant_id.as_deref()).await?;
    let now = unix_now();
    Ok(Json(AccountList {
        service_accounts: found.iter().map(|a| account_view(a, now)).collect(),
    }))
}

#[utoipa::path(get, path = "/admin/service-accounts/{id}", tag = "admin.service_accounts", summary = "One service account", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "The service account", body = AccountView), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
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

#[utoipa::path(post, path = "/admin/service-accounts", tag = "admin.service_accounts", summary = "Create a service account (secret shown once)", request_body = CreateAccount, security(("bearer" = [])), responses((status = 201, description = "Created, with its client secret (shown once)", body = CreatedAccount), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn create_service_account(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<CreateAccount>,
) -> Result<impl IntoResponse, ApiError> {
    let caller = caller(&admin, ip);
    let created = accounts::create(&state, &caller, &body.name, body.tenant_id.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        Json(CreatedAccount {
            account: account_view(&created.account, created.now),
            client_secret: created.client_secret,
        }),
    ))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(crate) struct RotateBody {
    /// How long older secrets keep working (default 24 h, at most 30 days).
    #[serde(default, deserialize_with = "crate::api::whole_number")]
    overlap_seconds: Option<u64>,
}

#[utoipa::path(post, path = "/admin/service-accounts/{id}/rotate", tag = "admin.service_accounts", summary = "Rotate the client secret", params(("id" = String, Path)), request_body = RotateBody, security(("bearer" = [])), responses((status = 200, description = "The new client secret (shown once)", body = RotatedSecret), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
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
        Json(RotatedSecret {
            id,
            client_secret: secret,
            overlap_seconds: overlap,
        }),
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

/// A page of users (`GET /admin/users`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UserList {
    users: Vec<principals::UserView>,
    /// Pass as `after` for the next page (null: no more).
    #[schema(required = true)]
    next_after: Option<String>,
}

/// One user with its memberships.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct UserDetailsView {
    #[serde(flatten)]
    user: principals::UserView,
    /// The tenants it is a member of (for a tenant admin: those of the admin's tenants).
    tenants: std::collections::BTreeSet<gateway_core::authz::TenantId>,
    /// Whether it holds a platform role.
    platform_roles: bool,
    recovery_codes_left: usize,
}

/// One session of a user.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SessionView {
    id: String,
    created_at: i64,
    last_used_at: i64,
    expires_at: i64,
    /// Neither ended nor expired.
    active: bool,
    #[schema(required = true)]
    revoked_at: Option<i64>,
    #[schema(required = true)]
    revoked_reason: Option<String>,
    #[schema(required = true)]
    client_ip: Option<String>,
    /// Signed in with a second factor.
    mfa: bool,
}

/// A user's sessions.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SessionList {
    sessions: Vec<SessionView>,
}

/// A global sign-out.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SessionsEnded {
    sessions_ended: usize,
}

/// A user's linked provider identities.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct IdentityList {
    identities: Vec<crate::auth::oidc::IdentityLink>,
}

/// The admin behind a change and where from, for the audit record.
fn caller(admin: &Admin, ip: std::net::IpAddr) -> Caller<'_> {
    Caller { admin, ip }
}
