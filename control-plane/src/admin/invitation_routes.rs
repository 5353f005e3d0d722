//! Invitations to a tenant: admins offer a role to an email address
//! (`/admin/invitations`), and the user who proved that address accepts or declines it
//! (`/v1/invitations`). This is how a tenant admin brings in someone who is not yet a
//! member: the assignment exists only once the user said yes.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use gateway_core::authz;
use gateway_core::rights;
use gateway_edge::{ApiError, ErrorCode, Reason, unix_now};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Admin;
use crate::AppState;
use crate::api::{ApiJson, ClientIp};
use crate::audit::Audit;
use crate::auth::routes::Authenticated;
use crate::auth::users::{self, UserStatus};
use crate::iam::invitations::{self, Invitation};
use crate::iam::{assignments, roles, tenant};
use crate::mail::Mail;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How long an invitation can be accepted (7 days).
pub const INVITATION_TTL_SECONDS: i64 = 7 * 86_400;
/// Invitations one admin may send per hour.
pub const INVITATIONS_PER_ADMIN_PER_HOUR: u32 = 50;
/// Invitations of one tenant pending at once.
pub const MAX_PENDING_PER_TENANT: usize = 200;

/// The module's routes, each declared once: the router and its OpenAPI paths come from
/// the handlers' `#[utoipa::path]` annotations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
        .routes(routes!(mine))
        .routes(routes!(accept))
        .routes(routes!(decline))
}

/// Pending invitations.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct InvitationList {
    invitations: Vec<Invitation>,
}

/// An accepted invitation: the role granted in the tenant.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    tenant_id: authz::TenantId,
    role: String,
    /// The revision of the caller's published rights document.
    document_revision: u64,
}

fn no_such_invitation() -> ApiError {
    ApiError::not_found("no such invitation")
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct InvitationBody {
    tenant_id: String,
    email: String,
    role: String,
}

#[utoipa::path(post, operation_id = "invitations_create", path = "/admin/invitations", tag = "admin.iam", summary = "Invite an email address to a role in a tenant", request_body = InvitationBody, security(("bearer" = [])), responses((status = 201, description = "Created", body = Invitation), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<InvitationBody>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = tenant(&body.tenant_id)?;
    let decision = admin.require(Some(&tenant), rights::IAM_ASSIGNMENTS_WRITE)?;
    let email = users::normalize_email(&body.email)?;
    let role = roles::get(&state.store, &body.role)
        .await?
        .ok_or_else(|| ApiError::bad_request("no such role").with_reason(Reason::UnknownRole))?;
    if decision.reason != authz::Reason::PlatformRight {
        admin.may_grant(&tenant, &role)?;
    }
    let now = unix_now();
    // each invitation mails an address of the admin's choosing: bounded per admin, and
    // per tenant while pending
    if !state
        .auth
        .backoff
        .spend(
            "invitation",
            admin.id(),
            INVITATIONS_PER_ADMIN_PER_HOUR,
            std::time::Duration::from_secs(3600),
            now,
        )
        .await?
    {
        return Err(crate::limits::too_many(
            std::time::Duration::from_secs(3600),
            Reason::RateLimited,
        ));
    }
    let pending_here = invitations::pending(&state.store, now)
        .await?
        .iter()
        .filter(|i| i.tenant_id == tenant)
        .count();
    if pending_here >= MAX_PENDING_PER_TENANT {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{MAX_PENDING_PER_TENANT} invitations of this tenant are pending; withdraw some first"),
        )
        .with_reason(Reason::TooManyInvitations));
    }
    let invitation = invitations::create(
        &state.store,
        tenant.clone(),
        email.clone(),
        role.name.clone(),
        admin.id().to_string(),
        INVITATION_TTL_SECONDS,
        now,
    )
    .await?;
    Audit::new("admin.invitation.create", "ok", now)
        .actor(admin.id())
        .ip(ip)
        .tenant(tenant.as_str())
        .target(&invitation.id)
        .detail(json!({"role": role.name, "email": email}))
        .record(&state.store)
        .await;
    // the same answer whether the address has an account or not
    state.auth.mailer.send_later(
        Mail {
            to: email,
            subject: format!("You are invited to {}", tenant.as_str()),
            body: format!(
                "You are invited to join {} as {}.\n\nSign in (or sign up with this address and verify it), then accept invitation {} at {}/invitations.\n\nIt expires in {} days.",
                tenant.as_str(),
                role.name,
                invitation.id,
                state.auth.settings.public_url.trim_end_matches('/'),
                INVITATION_TTL_SECONDS / 86_400
            ),
        },
        "invitation",
    );
    Ok((StatusCode::CREATED, Json(invitation)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InvitationFilter {
    /// Only the invitations to this tenant (required for tenant admins).
    #[serde(default)]
    tenant_id: Option<String>,
}

#[utoipa::path(get, operation_id = "invitations_list", path = "/admin/invitations", tag = "admin.iam", summary = "Pending invitations", params(InvitationFilter), security(("bearer" = [])), responses((status = 200, description = "The pending invitations", body = InvitationList), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    admin: Admin,
    Query(filter): Query<InvitationFilter>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = filter.tenant_id.as_deref().map(tenant).transpose()?;
    admin.require_listing(tenant.as_ref(), rights::IAM_ASSIGNMENTS_READ)?;
    let mut invitations = invitations::pending(&state.store, unix_now()).await?;
    invitations.retain(|i| tenant.as_ref().is_none_or(|t| &i.tenant_id == t));
    Ok(Json(InvitationList { invitations }))
}

#[utoipa::path(delete, operation_id = "invitations_revoke", path = "/admin/invitations/{id}", tag = "admin.iam", summary = "Withdraw an invitation", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope), (status = 404, description = "Not found", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let now = unix_now();
    let (invitation, revision) = invitations::get(&state.store, &id, now)
        .await?
        .ok_or_else(no_such_invitation)?;
    // another tenant's invitation is as absent as an unknown one
    if !admin
        .decide(Some(&invitation.tenant_id), rights::IAM_ASSIGNMENTS_WRITE)
        .allowed
    {
        return Err(no_such_invitation());
    }
    if !invitations::take(&state.store, &id, revision).await? {
        return Err(no_such_invitation());
    }
    Audit::new("admin.invitation.revoke", "ok", now)
        .actor(admin.id())
        .ip(ip)
        .tenant(invitation.tenant_id.as_str())
        .target(&invitation.id)
        .detail(json!({"role": invitation.role, "email": invitation.email}))
        .record(&state.store)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses an invitation whose role is gone or whose inviter can no longer grant it in its
/// tenant (409 `invitation_stale`).
async fn still_grantable(
    state: &AppState,
    invitation: &Invitation,
    now: i64,
) -> Result<(), ApiError> {
    let stale = |why: &str| {
        ApiError::new(
            ErrorCode::Conflict,
            format!("this invitation no longer holds ({why}); ask for a new one"),
        )
        .with_reason(Reason::InvitationStale)
    };
    let Some(role) = roles::get(&state.store, &invitation.role).await? else {
        return Err(stale("its role was deleted"));
    };
    let inviter = state
        .publisher
        .effective(&invitation.invited_by, now)
        .await?;
    if inviter.disabled {
        return Err(stale("its inviter is no longer active"));
    }
    let allowed = |tenant: Option<&gateway_core::authz::TenantId>| {
        authz::decide(
            &inviter,
            &authz::Request {
                tenant,
                action: rights::IAM_ASSIGNMENTS_WRITE,
                resource: None,
            },
        )
    };
    let decision = allowed(Some(&invitation.tenant_id));
    if !decision.allowed {
        return Err(stale("its inviter may no longer grant roles there"));
    }
    if decision.reason != authz::Reason::PlatformRight
        && super::may_grant(&inviter, &invitation.tenant_id, &role).is_err()
    {
        return Err(stale(
            "its inviter no longer holds that role's rights there",
        ));
    }
    Ok(())
}

/// The signed-in user's verified address: invitations are offered to an address, so
/// only someone who proved it may see or answer them.
async fn verified_email(state: &AppState, principal_id: &str) -> Result<String, ApiError> {
    let (user, _) = users::get(&state.store, principal_id)
        .await?
        .ok_or_else(no_such_invitation)?;
    if user.status != UserStatus::Active {
        return Err(
            ApiError::new(ErrorCode::Forbidden, "the account is disabled")
                .with_reason(Reason::AccountDisabled),
        );
    }
    if !user.email_verified {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "verify your email address to see and answer invitations",
        )
        .with_reason(Reason::EmailNotVerified));
    }
    Ok(user.email)
}

/// An invitation addressed to the caller, or 404 (the same for other people's).
async fn addressed_to_caller(
    state: &AppState,
    principal_id: &str,
    id: &str,
    now: i64,
) -> Result<(Invitation, gateway_store::Revision), ApiError> {
    let email = verified_email(state, principal_id).await?;
    invitations::get(&state.store, id, now)
        .await?
        .filter(|(invitation, _)| invitation.email == email)
        .ok_or_else(no_such_invitation)
}

#[utoipa::path(get, operation_id = "invitations_mine", path = "/v1/invitations", tag = "auth", summary = "Invitations addressed to the signed-in user's verified email", security(("bearer" = [])), responses((status = 200, description = "The pending invitations addressed to the caller", body = InvitationList), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Email not verified", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn mine(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<impl IntoResponse, ApiError> {
    let email = verified_email(&state, &principal.user_id).await?;
    let mut invitations = invitations::pending(&state.store, unix_now()).await?;
    invitations.retain(|i| i.email == email);
    Ok(Json(InvitationList { invitations }))
}

#[utoipa::path(post, operation_id = "invitations_accept", path = "/v1/invitations/{id}/accept", tag = "auth", summary = "Accept an invitation: the role in the tenant is granted", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "The role granted", body = Accepted), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Email not verified", body = crate::openapi::ErrorEnvelope), (status = 404, description = "Not found", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn accept(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let now = unix_now();
    let user_id = principal.user_id;
    let (invitation, revision) = addressed_to_caller(&state, &user_id, &id, now).await?;
    // taking the invitation first makes accept, decline and revoke exclusive
    if !invitations::take(&state.store, &id, revision).await? {
        return Err(no_such_invitation());
    }
    // what the invitation offers must still be grantable: the role exists, and its inviter
    // still holds the right to grant it there (an admin demoted since cannot bring anyone in)
    if let Err(err) = still_grantable(&state, &invitation, now).await {
        Audit::new("invitation.accept", "refused", now)
            .actor(&user_id)
            .ip(ip)
            .tenant(invitation.tenant_id.as_str())
            .target(&user_id)
            .detail(json!({"invitation_id": invitation.id, "role": invitation.role, "reason": err.envelope_code()}))
            .record(&state.store)
            .await;
        return Err(err);
    }
    let scope = authz::Scope::Tenant {
        tenant: invitation.tenant_id.clone(),
    };
    let changed = match assignments::change(
        &state.store,
        &user_id,
        &scope,
        &invitation.role,
        true,
        now,
    )
    .await
    {
        Ok(changed) => changed,
        Err(err) => {
            // nothing was granted: the user can try again
            if let Err(restore) = invitations::restore(&state.store, &invitation).await {
                tracing::warn!(error = %restore, "cannot restore an invitation after a failed accept");
            }
            return Err(err);
        }
    };
    Audit::new("invitation.accept", "ok", now)
        .actor(&user_id)
        .ip(ip)
        .tenant(invitation.tenant_id.as_str())
        .target(&user_id)
        .detail(json!({"invitation_id": invitation.id, "role": invitation.role, "invited_by": invitation.invited_by, "changed": changed}))
        .record(&state.store)
        .await;
    let document_revision = state.publisher.publish(&user_id, now).await?;
    Ok(Json(Accepted {
        tenant_id: invitation.tenant_id,
        role: invitation.role,
        document_revision,
    }))
}

#[utoipa::path(post, operation_id = "invitations_decline", path = "/v1/invitations/{id}/decline", tag = "auth", summary = "Decline an invitation", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Email not verified", body = crate::openapi::ErrorEnvelope), (status = 404, description = "Not found", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn decline(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let now = unix_now();
    let (invitation, revision) = addressed_to_caller(&state, &principal.user_id, &id, now).await?;
    if !invitations::take(&state.store, &id, revision).await? {
        return Err(no_such_invitation());
    }
    Audit::new("invitation.decline", "ok", now)
        .actor(&principal.user_id)
        .ip(ip)
        .tenant(invitation.tenant_id.as_str())
        .target(&principal.user_id)
        .detail(json!({"invitation_id": invitation.id, "role": invitation.role}))
        .record(&state.store)
        .await;
    Ok(StatusCode::NO_CONTENT)
}
