//! Admin routes of tenant rebalancing (`rebalance.operate`, platform) and of replica
//! convergence (`routing.read`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gateway_core::rights;
use gateway_core::routing::ServiceKind;
use gateway_edge::{ApiError, Reason, unix_now};
use serde::Deserialize;
use serde_json::json;

use super::Admin;
use crate::AppState;
use crate::api::{ApiJson, ClientIp};
use crate::audit::Audit;
use crate::iam::tenant;
use crate::rebalance::{Plan, PlanError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The module's routes, each declared once: the router and its OpenAPI paths come from
/// the handlers' `#[utoipa::path]` annotations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read))
        .routes(routes!(gates))
        .routes(routes!(apply))
        .routes(routes!(rollback))
        .routes(routes!(cancel))
        .routes(routes!(replicas))
}

async fn audit(
    state: &AppState,
    admin: &Admin,
    action: &str,
    outcome: &'static str,
    plan: &Plan,
    ip: std::net::IpAddr,
    detail: serde_json::Value,
) {
    Audit::new(action, outcome, unix_now())
        .actor(admin.id())
        .target(&plan.id)
        .ip(ip)
        .detail(json!({
            "tenant_id": plan.tenant_id, "kind": plan.kind, "source_shard": plan.source_shard,
            "target_shard": plan.target_shard, "state": plan.state, "detail": detail,
        }))
        .record(&state.store)
        .await;
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CreateBody {
    tenant_id: String,
    /// `aggregate`, `projection` or `runner`.
    kind: String,
    target_shard: String,
}

/// Plans a move of one tenant of one kind to `target_shard`.
#[utoipa::path(post, operation_id = "rebalance_create", path = "/admin/rebalance/plans", tag = "admin.rebalance", summary = "Plan a tenant move", request_body = CreateBody, security(("bearer" = [])), responses((status = 201, description = "Planned", body = Plan), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 409, description = "A plan is already active for the tenant and kind", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::REBALANCE_OPERATE)?;
    let tenant = tenant(&body.tenant_id)?;
    let kind = ServiceKind::parse(&body.kind).ok_or_else(|| {
        ApiError::bad_request("kind is aggregate, projection or runner")
            .with_reason(Reason::InvalidKind)
    })?;
    gateway_core::routing::validate_shard_id(&body.target_shard)
        .map_err(|err| ApiError::bad_request(err.to_string()).with_reason(Reason::InvalidShard))?;
    let plan = state
        .rebalancer
        .create(tenant, kind, body.target_shard, admin.id(), unix_now())
        .await?;
    audit(
        &state,
        &admin,
        "admin.rebalance.plan",
        "ok",
        &plan,
        ip,
        json!({}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(plan)))
}

/// The plans, newest first.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct PlanList {
    plans: Vec<Plan>,
}

/// Every plan, newest first.
#[utoipa::path(get, operation_id = "rebalance_list", path = "/admin/rebalance/plans", tag = "admin.rebalance", summary = "List plans", security(("bearer" = [])), responses((status = 200, description = "Every plan, newest first", body = PlanList)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    admin: Admin,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::REBALANCE_OPERATE)?;
    Ok(Json(PlanList {
        plans: state.rebalancer.list().await?,
    }))
}

#[utoipa::path(get, operation_id = "rebalance_read", path = "/admin/rebalance/plans/{id}", tag = "admin.rebalance", summary = "One plan", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "The plan", body = Plan), (status = 404, description = "No such plan", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn read(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::REBALANCE_OPERATE)?;
    let (plan, _) = state.rebalancer.load(&id).await?;
    Ok(Json(plan))
}

/// Asks the gates now, without applying (what apply would see).
#[utoipa::path(get, operation_id = "rebalance_gates", path = "/admin/rebalance/plans/{id}/gates", tag = "admin.rebalance", summary = "Check the readiness gates of a plan now", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "Gate report", body = crate::rebalance::GateReport)))]
pub(crate) async fn gates(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::REBALANCE_OPERATE)?;
    let (plan, _) = state.rebalancer.load(&id).await?;
    let (current, _) = state.routing.current().await?;
    let doc = current.map(|d| d.payload).unwrap_or_default();
    Ok(Json(state.rebalancer.gates(&plan, &doc).await))
}

/// Checks the gates and, only if all pass, publishes the new placement. 409 with the gate
/// report otherwise; idempotent (an applied plan answers 200 again).
#[utoipa::path(post, operation_id = "rebalance_apply", path = "/admin/rebalance/plans/{id}/apply", tag = "admin.rebalance", summary = "Apply a plan behind its readiness gates", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "Applied", body = Plan), (status = 409, description = "Gates not ready (with the report), plan in progress or not applicable", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn apply(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin.require(None, rights::REBALANCE_OPERATE)?;
    match state.rebalancer.apply(&id, admin.id()).await {
        Ok(plan) => {
            audit(
                &state,
                &admin,
                "admin.rebalance.apply",
                "ok",
                &plan,
                ip,
                json!({"routing_revision": plan.applied_revision}),
            )
            .await;
            Ok(Json(plan).into_response())
        }
        Err(PlanError::Gates { plan, report }) => {
            audit(
                &state,
                &admin,
                "admin.rebalance.apply",
                "refused",
                &plan,
                ip,
                json!({"gates": report}),
            )
            .await;
            let error = ApiError::new(
                gateway_edge::ErrorCode::Conflict,
                "the readiness gates do not all pass; nothing was changed",
            )
            .with_reason(Reason::GatesNotReady);
            let body = json!({
                "error": {
                    "code": error.envelope_code(),
                    "message": error.message,
                    "correlation_id": gateway_edge::http::current_correlation_id(),
                },
                "plan": plan,
                "gates": report,
            });
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        Err(PlanError::Api(err)) => {
            if let Ok((plan, _)) = state.rebalancer.load(&id).await {
                audit(
                    &state,
                    &admin,
                    "admin.rebalance.apply",
                    "refused",
                    &plan,
                    ip,
                    json!({"code": err.envelope_code(), "message": err.message}),
                )
                .await;
            }
            Err(err)
        }
    }
}

/// Restores the placement the plan replaced (refused if it moved since).
#[utoipa::path(post, operation_id = "rebalance_rollback", path = "/admin/rebalance/plans/{id}/rollback", tag = "admin.rebalance", summary = "Roll a plan back", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "Rolled back", body = Plan), (status = 409, description = "Placement moved, or the plan cannot be rolled back", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn rollback(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::REBALANCE_OPERATE)?;
    let result = state.rebalancer.rollback(&id, admin.id()).await;
    finish(&state, &admin, ip, &id, "admin.rebalance.rollback", result).await
}

#[utoipa::path(post, operation_id = "rebalance_cancel", path = "/admin/rebalance/plans/{id}/cancel", tag = "admin.rebalance", summary = "Cancel a plan that has not cut over", params(("id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "Cancelled", body = Plan), (status = 409, description = "The plan cannot be cancelled", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::REBALANCE_OPERATE)?;
    let result = state.rebalancer.cancel(&id, admin.id()).await;
    finish(&state, &admin, ip, &id, "admin.rebalance.cancel", result).await
}

async fn finish(
    state: &AppState,
    admin: &Admin,
    ip: std::net::IpAddr,
    id: &str,
    action: &str,
    result: Result<Plan, ApiError>,
) -> Result<Json<Plan>, ApiError> {
    match result {
        Ok(plan) => {
            audit(state, admin, action, "ok", &plan, ip, json!({})).await;
            Ok(Json(plan))
        }
        Err(err) => {
            if let Ok((plan, _)) = state.rebalancer.load(id).await {
                let detail = json!({"code": err.envelope_code(), "message": err.message});
                audit(state, admin, action, "refused", &plan, ip, detail).await;
            }
            Err(err)
        }
    }
}

/// Data-plane replicas, the routing revision each uses, and whether all live ones use
/// the published one.
#[utoipa::path(get, operation_id = "rebalance_replicas", path = "/admin/routing/replicas", tag = "admin.routing", summary = "Data-plane replicas and their routing revision", security(("bearer" = [])), responses((status = 200, description = "The replicas", body = crate::rebalance::Replicas)))]
pub(crate) async fn replicas(
    State(state): State<AppState>,
    admin: Admin,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::ROUTING_READ)?;
    Ok(Json(state.rebalancer.replicas(unix_now()).await?))
}
