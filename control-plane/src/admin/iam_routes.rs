//! Admin routes for roles, rights, assignments, the authorization explainer, signing-key
//! rotation and the audit trail.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use gateway_core::authz::{self, Request, Right, Scope, decide};
use gateway_core::rights;
use gateway_edge::{ApiError, ErrorCode, Reason, unix_now};
use gateway_store::{AuditQuery, PLATFORM_SCOPE};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Admin;
use crate::AppState;
use crate::api::{ApiJson, ClientIp};
use crate::audit::Audit;
use crate::iam::{assignments, principal_id, roles, tenant};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The module's routes, each declared once: the router and its OpenAPI paths come from
/// the handlers' `#[utoipa::path]` annotations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_roles, create_role))
        .routes(routes!(update_role, delete_role, get_role))
        .routes(routes!(list_rights, create_right))
        .routes(routes!(delete_right))
        .routes(routes!(
            list_assignments,
            create_assignment,
            delete_assignment
        ))
        .routes(routes!(explain))
        .routes(routes!(effective))
        .routes(routes!(rotate_keys))
        .routes(routes!(read_audit))
}

/// The roles (`GET /admin/roles`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RoleList {
    roles: Vec<roles::Role>,
}

/// The registered rights (`GET /admin/rights`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RightList {
    rights: Vec<roles::RightInfo>,
}

/// The assignments (`GET /admin/assignments`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AssignmentList {
    assignments: Vec<assignments::Assignment>,
}

/// A role granted (or already held).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Granted {
    principal_id: String,
    role: String,
    scope: Scope,
    /// False when the principal held the role already.
    changed: bool,
    /// The revision of the principal's published rights document.
    document_revision: u64,
}

/// An authorization decision, explained.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Explanation {
    allowed: bool,
    reason: authz::Reason,
    /// The role whose right matched.
    #[schema(required = true)]
    role: Option<String>,
    /// The right that matched.
    #[schema(required = true)]
    right: Option<String>,
    principal_id: String,
    #[schema(required = true)]
    tenant_id: Option<authz::TenantId>,
}

/// The signing key now in use after a rotation.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Rotated {
    current_kid: String,
}

/// A page of the audit trail.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AuditPage {
    /// Records in sequence order, each with its `seq`.
    #[schema(value_type = Vec<Object>)]
    records: Vec<Value>,
    /// Pass as `after` for the next page (null: no more).
    #[schema(required = true)]
    next_after: Option<u64>,
    /// The tenant read, or the platform scope.
    scope: String,
}

fn audit(admin: &Admin, action: &str, ip: std::net::IpAddr, now: i64) -> Audit {
    Audit::new(action, "ok", now).actor(admin.id()).ip(ip)
}

#[utoipa::path(get, path = "/admin/roles", tag = "admin.iam", summary = "List roles", security(("bearer" = [])), responses((status = 200, description = "The roles", body = RoleList), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_roles(
    State(state): State<AppState>,
    admin: Admin,
) -> Result<impl IntoResponse, ApiError> {
    if !admin.is_platform(rights::IAM_ROLES_READ)
        && admin.tenants_with(rights::IAM_ASSIGNMENTS_READ).is_empty()
    {
        admin.require(None, rights::IAM_ROLES_READ)?;
    }
    Ok(Json(RoleList {
        roles: roles::list(&state.store).await?,
    }))
}

#[utoipa::path(get, path = "/admin/roles/{name}", tag = "admin.iam", summary = "One role", params(("name" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "The role", body = roles::Role), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn get_role(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if !admin.is_platform(rights::IAM_ROLES_READ)
        && admin.tenants_with(rights::IAM_ASSIGNMENTS_READ).is_empty()
    {
        admin.require(None, rights::IAM_ROLES_READ)?;
    }
    let role = roles::get(&state.store, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("no such role"))?;
    Ok(Json(role))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct RoleBody {
    name: String,
    #[serde(default)]
    description: String,
    rights: Vec<String>,
}

#[utoipa::path(post, path = "/admin/roles", tag = "admin.iam", summary = "Create a custom role", request_body = RoleBody, security(("bearer" = [])), responses((status = 201, description = "Created", body = roles::Role), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn create_role(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<RoleBody>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::IAM_ROLES_WRITE)?;
    let rights = roles::parse_rights(&body.rights)?;
    let now = unix_now();
    let role = roles::create(&state.store, &body.name, &body.description, rights, now).await?;
    audit(&admin, "admin.role.create", ip, now)
        .target(&role.name)
        .detail(json!({"after": role}))
        .record(&state.store)
        .await;
    Ok((StatusCode::CREATED, Json(role)))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct RoleUpdate {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    rights: Option<Vec<String>>,
}

#[utoipa::path(put, path = "/admin/roles/{name}", tag = "admin.iam", summary = "Change a custom role (fans out)", params(("name" = String, Path)), request_body = RoleUpdate, security(("bearer" = [])), responses((status = 200, description = "The role as changed", body = roles::Role), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn update_role(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RoleUpdate>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::IAM_ROLES_WRITE)?;
    let rights = body
        .rights
        .as_deref()
        .map(roles::parse_rights)
        .transpose()?;
    let now = unix_now();
    let (before, after) = roles::update(
        &state.store,
        &name,
        body.description.as_deref(),
        rights,
        now,
    )
    .await?;
    let published = state.publisher.publish_holders_of(&name, now).await?;
    audit(&admin, "admin.role.update", ip, now)
        .target(&name)
        .detail(json!({"before": before, "after": after, "principals_republished": published}))
        .record(&state.store)
        .await;
    Ok(Json(after))
}

#[utoipa::path(delete, path = "/admin/roles/{name}", tag = "admin.iam", summary = "Delete a custom role", params(("name" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn delete_role(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin.require(None, rights::IAM_ROLES_WRITE)?;
    let now = unix_now();
    let before = roles::delete(&state.store, &name).await?;
    // the holders keep the assignment until it is removed; their documents drop the
    // role's rights at once
    let published = state.publisher.publish_holders_of(&name, now).await?;
    audit(&admin, "admin.role.delete", ip, now)
        .target(&name)
        .detail(json!({"before": before, "principals_republished": published}))
        .record(&state.store)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/admin/rights", tag = "admin.iam", summary = "List registered rights", security(("bearer" = [])), responses((status = 200, description = "The registered rights", body = RightList), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_rights(
    State(state): State<AppState>,
    admin: Admin,
) -> Result<impl IntoResponse, ApiError> {
    if !admin.is_platform(rights::IAM_ROLES_READ)
        && admin.tenants_with(rights::IAM_ASSIGNMENTS_READ).is_empty()
    {
        admin.require(None, rights::IAM_ROLES_READ)?;
    }
    Ok(Json(RightList {
        rights: roles::list_rights(&state.store).await?,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct RightBody {
    name: String,
    #[serde(default)]
    description: String,
}

#[utoipa::path(post, path = "/admin/rights", tag = "admin.iam", summary = "Register a right", request_body = RightBody, security(("bearer" = [])), responses((status = 201, description = "Created", body = roles::RightInfo), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn create_right(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<RightBody>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::IAM_RIGHTS_WRITE)?;
    let right = Right::parse(&body.name)
        .map_err(|err| ApiError::bad_request(err.to_string()).with_reason(Reason::InvalidRight))?;
    let now = unix_now();
    let info = roles::register_right(&state.store, right, &body.description, now).await?;
    audit(&admin, "admin.right.create", ip, now)
        .target(info.name.as_str())
        .record(&state.store)
        .await;
    Ok((StatusCode::CREATED, Json(info)))
}

#[utoipa::path(delete, path = "/admin/rights/{name}", tag = "admin.iam", summary = "Remove a registered right", params(("name" = String, Path)), security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn delete_right(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin.require(None, rights::IAM_RIGHTS_WRITE)?;
    let right = Right::parse(&name)
        .map_err(|err| ApiError::bad_request(err.to_string()).with_reason(Reason::InvalidRight))?;
    if !roles::delete_right(&state.store, &right).await? {
        return Err(ApiError::not_found("no such right"));
    }
    let now = unix_now();
    audit(&admin, "admin.right.delete", ip, now)
        .target(right.as_str())
        .record(&state.store)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AssignmentFilter {
    /// Only the assignments of this principal.
    #[serde(default)]
    principal_id: Option<String>,
    /// Only the assignments in this tenant (required for tenant admins).
    #[serde(default)]
    tenant_id: Option<String>,
}

#[utoipa::path(get, path = "/admin/assignments", tag = "admin.iam", summary = "List assignments", params(AssignmentFilter), security(("bearer" = [])), responses((status = 200, description = "The assignments", body = AssignmentList), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn list_assignments(
    State(state): State<AppState>,
    admin: Admin,
    Query(filter): Query<AssignmentFilter>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = filter.tenant_id.as_deref().map(tenant).transpose()?;
    admin.require_listing(tenant.as_ref(), rights::IAM_ASSIGNMENTS_READ)?;
    let mut found = match &filter.principal_id {
        Some(id) => assignments::for_principal(&state.store, &principal_id(id)?).await?,
        None => assignments::all(&state.store).await?,
    };
    if let Some(t) = &tenant {
        found.retain(|a| matches!(&a.scope, Scope::Tenant { tenant } if tenant == t));
    }
    Ok(Json(AssignmentList { assignments: found }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct AssignmentBody {
    principal_id: String,
    /// Absent or null: platform-wide.
    #[serde(default)]
    tenant_id: Option<String>,
    role: String,
}

/// Whether a grant or a revocation is being checked: they differ only in what a tenant
/// admin hears about a principal outside their tenant.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Change {
    Grant,
    Revoke,
}

/// Checks that the caller may grant or revoke `role` in `scope`, and that the role and
/// the principal exist. A tenant admin may change only members of their tenant (and the
/// tenant's own service accounts), never a principal holding a platform role; anyone else
/// joins by accepting an invitation. Unknown and foreign principals get the same answer,
/// so a tenant admin cannot tell which principal ids exist.
async fn check_assignment(
    state: &AppState,
    admin: &Admin,
    body: &AssignmentBody,
    change: Change,
) -> Result<(String, Scope, roles::Role), ApiError> {
    let principal = principal_id(&body.principal_id)?;
    let tenant = body.tenant_id.as_deref().map(tenant).transpose()?;
    let decision = admin.require(tenant.as_ref(), rights::IAM_ASSIGNMENTS_WRITE)?;
    let role = roles::get(&state.store, &body.role)
        .await?
        .ok_or_else(|| ApiError::bad_request("no such role").with_reason(Reason::UnknownRole))?;
    let tenant = match tenant {
        Some(tenant) if decision.reason != authz::Reason::PlatformRight => tenant,
        platform_admins_scope => {
            // a platform admin: any principal that exists
            if !super::principals::exists(state, &principal).await? {
                return Err(ApiError::bad_request("no such principal")
                    .with_reason(Reason::UnknownPrincipal));
            }
            return Ok((
                principal,
                assignments::scope_of(platform_admins_scope),
                role,
            ));
        }
    };
    admin.may_grant(&tenant, &role)?;
    let (tenants, platform) = super::principals::memberships(state, &principal).await?;
    let owned_account = principal.starts_with(gateway_core::token::SERVICE_PREFIX)
        && crate::auth::service_accounts::get(&state.store, &principal)
            .await?
            .is_some_and(|(account, _)| account.owner_tenant.as_deref() == Some(tenant.as_str()));
    // outside the tenant, every principal looks alike (platform ones included); only a
    // member's platform role shows, to an admin who sees the membership anyway
    if !tenants.contains(&tenant) && !owned_account {
        return Err(match change {
            Change::Grant => ApiError::new(
                ErrorCode::Forbidden,
                "only members of the tenant can be given roles here; invite anyone else",
            )
            .with_reason(Reason::InvitationRequired),
            Change::Revoke => ApiError::not_found("no such assignment"),
        });
    }
    if platform {
        return Err(super::principals::out_of_reach(
            rights::IAM_ASSIGNMENTS_WRITE,
        ));
    }
    Ok((principal, Scope::Tenant { tenant }, role))
}

#[utoipa::path(post, path = "/admin/assignments", tag = "admin.iam", summary = "Grant a role", request_body = AssignmentBody, security(("bearer" = [])), responses((status = 201, description = "Granted", body = Granted), (status = 200, description = "Already granted: nothing changed", body = Granted), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn create_assignment(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<AssignmentBody>,
) -> Result<impl IntoResponse, ApiError> {
    let checked = check_assignment(&state, &admin, &body, Change::Grant).await;
    let now = unix_now();
    let (principal, scope, role) = match checked {
        Ok(checked) => checked,
        Err(err) => {
            if err.reason == Some(Reason::PrivilegeEscalation) {
                Audit::new("admin.assignment.create", "refused", now)
                    .actor(admin.id())
                    .ip(ip)
                    .target(&body.principal_id)
                    .detail(json!({"role": body.role, "tenant_id": body.tenant_id, "reason": Reason::PrivilegeEscalation.as_str()}))
                    .record(&state.store)
                    .await;
            }
            return Err(err);
        }
    };
    let changed =
        assignments::change(&state.store, &principal, &scope, &role.name, true, now).await?;
    let revision = state.publisher.publish(&principal, now).await?;
    let mut entry = audit(&admin, "admin.assignment.create", ip, now)
        .target(&principal)
        .detail(json!({"role": role.name, "scope": scope, "changed": changed}));
    if let Scope::Tenant { tenant } = &scope {
        entry = entry.tenant(tenant.as_str());
    }
    entry.record(&state.store).await;
    Ok((
        if changed {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(Granted {
            principal_id: principal,
            role: role.name,
            scope,
            changed,
            document_revision: revision,
        }),
    ))
}

#[utoipa::path(delete, path = "/admin/assignments", tag = "admin.iam", summary = "Revoke a role", request_body = AssignmentBody, security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn delete_assignment(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<AssignmentBody>,
) -> Result<impl IntoResponse, ApiError> {
    let (principal, scope, role) = check_assignment(&state, &admin, &body, Change::Revoke).await?;
    let now = unix_now();
    let change = assignments::change(&state.store, &principal, &scope, &role.name, false, now);
    let changed = if scope == Scope::Platform && role.name == gateway_core::authz::PLATFORM_ADMIN {
        crate::iam::keeping_a_platform_admin(&state.store, &principal, change).await?
    } else {
        change.await?
    };
    if !changed {
        return Err(ApiError::not_found("no such assignment"));
    }
    state.publisher.publish(&principal, now).await?;
    let mut entry = audit(&admin, "admin.assignment.delete", ip, now)
        .target(&principal)
        .detail(json!({"role": role.name, "scope": scope}));
    if let Scope::Tenant { tenant } = &scope {
        entry = entry.tenant(tenant.as_str());
    }
    entry.record(&state.store).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ExplainBody {
    principal_id: String,
    #[serde(default)]
    tenant_id: Option<String>,
    action: String,
    #[serde(default)]
    resource: Option<String>,
}

#[utoipa::path(post, path = "/admin/authz/explain", tag = "admin.iam", summary = "Explain an authorization decision", request_body = ExplainBody, security(("bearer" = [])), responses((status = 200, description = "The decision and what decided it", body = Explanation), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn explain(
    State(state): State<AppState>,
    admin: Admin,
    ApiJson(body): ApiJson<ExplainBody>,
) -> Result<impl IntoResponse, ApiError> {
    let principal = principal_id(&body.principal_id)?;
    let tenant = body.tenant_id.as_deref().map(tenant).transpose()?;
    let decision = admin.require(tenant.as_ref(), rights::IAM_ASSIGNMENTS_READ)?;
    if decision.reason != authz::Reason::PlatformRight {
        // a tenant admin asks about members of their tenant only, never about platform
        // principals: the answer would say what the principal holds elsewhere
        let (tenants, platform) = super::principals::memberships(&state, &principal).await?;
        if platform || !tenant.as_ref().is_some_and(|t| tenants.contains(t)) {
            return Err(super::principals::out_of_reach(
                rights::IAM_ASSIGNMENTS_READ,
            ));
        }
    }
    // a question about one concrete action (and resource): dotted segments of
    // [a-z0-9_], no wildcard
    let concrete = |text: &str| !text.contains('*') && !text.contains(':');
    let question = match body.resource.as_deref() {
        Some(resource) => format!("{}:{resource}", body.action),
        None => body.action.clone(),
    };
    if !concrete(&body.action)
        || body.resource.as_deref().is_some_and(|r| !concrete(r))
        || body.action.len() > 128
        || Right::parse(&question).is_err()
    {
        return Err(ApiError::bad_request(
            "action is a dotted action of [a-z0-9_] segments, resource a name of [A-Za-z0-9_.-]",
        )
        .with_reason(Reason::InvalidAction));
    }
    let rights = state.publisher.effective(&principal, unix_now()).await?;
    let decision = decide(
        &rights,
        &Request {
            tenant: tenant.as_ref(),
            action: &body.action,
            resource: body.resource.as_deref(),
        },
    );
    Ok(Json(Explanation {
        allowed: decision.allowed,
        reason: decision.reason,
        role: decision.role,
        right: decision.right,
        principal_id: principal,
        tenant_id: tenant,
    }))
}

#[utoipa::path(get, path = "/admin/authz/principals/{id}", tag = "admin.iam", summary = "Effective rights of a principal", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "What the principal may do now", body = gateway_core::authz::EffectiveRights), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn effective(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::IAM_ASSIGNMENTS_READ)?;
    let principal = principal_id(&id)?;
    Ok(Json(
        state.publisher.effective(&principal, unix_now()).await?,
    ))
}

#[utoipa::path(post, path = "/admin/keys/rotate", tag = "admin.keys", summary = "Rotate the token signing keys", security(("bearer" = [])), responses((status = 200, description = "The new current key", body = Rotated), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn rotate_keys(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::KEYS_ROTATE)?;
    let now = unix_now();
    let kid = state.keys.rotate(now).await?;
    audit(&admin, "admin.keys.rotate", ip, now)
        .target(&kid)
        .record(&state.store)
        .await;
    Ok(Json(Rotated { current_kid: kid }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditFilter {
    /// Only the records of this tenant (without it, the platform's trail: platform
    /// auditors only).
    #[serde(default)]
    tenant_id: Option<String>,
    /// Only the records of this actor (a principal id).
    #[serde(default)]
    actor: Option<String>,
    /// Only the actions that start with this text, e.g. `admin.` or `auth.signin`.
    #[serde(default)]
    action: Option<String>,
    /// Only records at or after this time (Unix seconds).
    #[serde(default)]
    since: Option<i64>,
    /// Only records before this time (Unix seconds).
    #[serde(default)]
    until: Option<i64>,
    /// Where the page starts: the `next_after` of the page before (a sequence number).
    #[serde(default)]
    after: Option<u64>,
    /// Most records in the page: 100 by default, 1 to 500 (values outside are brought in).
    #[serde(default)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/admin/audit", tag = "admin.audit", summary = "Read the audit trail", params(AuditFilter), security(("bearer" = [])), responses((status = 200, description = "A page of records", body = AuditPage), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn read_audit(
    State(state): State<AppState>,
    admin: Admin,
    Query(filter): Query<AuditFilter>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = filter.tenant_id.as_deref().map(tenant).transpose()?;
    match &tenant {
        Some(t) => {
            admin.require(Some(t), rights::AUDIT_READ)?;
        }
        None => {
            admin.require(None, rights::AUDIT_READ)?;
        }
    }
    let limit = filter.limit.unwrap_or(100).clamp(1, 500);
    let mut records = Vec::new();
    let mut from = filter.after.map_or(1, |a| a.saturating_add(1));
    let mut next = None;
    // read pages until `limit` records pass the filters (bounded work per request)
    for _ in 0..20 {
        let page = state
            .store
            .audit()
            .read(&AuditQuery {
                tenant: tenant.as_ref().map(|t| t.as_str().to_string()),
                from_seq: from,
                limit: 500,
            })
            .await?;
        let exhausted = page.len() < 500;
        for record in page {
            from = record.seq + 1;
            let Ok(mut value) = serde_json::from_slice::<Value>(&record.data) else {
                continue;
            };
            let keep = filter
                .actor
                .as_ref()
                .is_none_or(|a| value["actor"] == a.as_str())
                && filter
                    .action
                    .as_ref()
                    .is_none_or(|a| record.action.starts_with(a.as_str()))
                && filter
                    .since
                    .is_none_or(|s| value["at"].as_i64().is_some_and(|at| at >= s))
                && filter
                    .until
                    .is_none_or(|u| value["at"].as_i64().is_some_and(|at| at < u));
            if keep {
                value["seq"] = json!(record.seq);
                records.push(value);
                if records.len() == limit {
                    next = Some(record.seq);
                    break;
                }
            }
        }
        if next.is_some() || exhausted {
            break;
        }
    }
    Ok(Json(AuditPage {
        records,
        next_after: next,
        scope: tenant.map_or(PLATFORM_SCOPE.to_string(), |t| t.to_string()),
    }))
}
