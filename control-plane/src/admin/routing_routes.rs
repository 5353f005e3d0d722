//! Admin routes of the routing placement (`routing.read` / `routing.write`, platform).

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use gateway_core::rights;
use gateway_core::routing::{RoutingDocument, ServiceKind, validate_endpoint, validate_shard_id};
use gateway_edge::{ApiError, ErrorCode, Reason, unix_now};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;

use super::Admin;
use crate::AppState;
use crate::api::{ApiJson, ClientIp};
use crate::audit::Audit;
use crate::iam::tenant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The module's routes, each declared once: the router and its OpenAPI paths come from
/// the handlers' `#[utoipa::path]` annotations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(read, replace))
        .routes(routes!(reload))
        .routes(routes!(tenant_routes))
        .routes(routes!(place, unplace))
        .routes(routes!(put_shard, delete_shard))
}

/// The published routing.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RoutingView {
    /// 0: nothing published yet.
    revision: u64,
    /// Unix time of the publication (null: nothing published yet).
    #[schema(required = true)]
    issued_at: Option<i64>,
    routing: RoutingDocument,
}

/// A routing change published.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Published {
    /// The new routing revision.
    revision: u64,
}

/// Where a tenant is routed, per service kind.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TenantRoutes {
    tenant_id: gateway_core::authz::TenantId,
    /// The routing revision that decided (0: nothing published yet; `routes` is empty).
    revision: u64,
    routes: BTreeMap<ServiceKind, TenantRoute>,
}

/// The route of one kind for a tenant: its shard, or why there is none.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum TenantRoute {
    Routed {
        shard: String,
        endpoints: Vec<String>,
        /// The revision at which the kind's routing last changed.
        #[schema(required = true)]
        kind_revision: Option<u64>,
    },
    NotRouted {
        /// `tenant_not_routed`.
        error: String,
        message: String,
    },
}

fn kind(value: &str) -> Result<ServiceKind, ApiError> {
    ServiceKind::parse(value).ok_or_else(|| {
        ApiError::bad_request("kind is aggregate, projection or runner")
            .with_reason(Reason::InvalidKind)
    })
}

fn record(
    admin: &Admin,
    action: &str,
    target: &str,
    ip: std::net::IpAddr,
    now: i64,
    detail: serde_json::Value,
) -> Audit {
    Audit::new(action, "ok", now)
        .actor(admin.id())
        .target(target)
        .ip(ip)
        .detail(detail)
}

/// The published routing: `{revision, issued_at, routing}`.
#[utoipa::path(get, operation_id = "routing_read", path = "/admin/routing", tag = "admin.routing", summary = "The published routing", security(("bearer" = [])), responses((status = 200, description = "The published routing and its revision", body = RoutingView), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn read(
    State(state): State<AppState>,
    admin: Admin,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::ROUTING_READ)?;
    let (current, _) = state.routing.current().await?;
    Ok(Json(match current {
        Some(doc) => RoutingView {
            revision: doc.revision,
            issued_at: Some(doc.issued_at),
            routing: doc.payload,
        },
        None => RoutingView {
            revision: 0,
            issued_at: None,
            routing: RoutingDocument::default(),
        },
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ReplaceBody {
    /// The revision read before the change (`GET /admin/routing`; 0 when nothing was
    /// published yet): required, refused with 409 if it moved.
    #[serde(default, deserialize_with = "crate::api::whole_number")]
    expected_revision: Option<u64>,
    /// A routing without any placement or shard removes every route; it is taken only
    /// with `confirm_empty: true`.
    #[serde(default)]
    confirm_empty: bool,
    #[schema(value_type = Object)]
    routing: RoutingDocument,
}

#[utoipa::path(put, operation_id = "routing_replace", path = "/admin/routing", tag = "admin.routing", summary = "Replace the whole routing (validated; one new revision)", request_body = ReplaceBody, security(("bearer" = [])), responses((status = 200, description = "Published", body = Published), (status = 400, description = "Invalid routing", body = crate::openapi::ErrorEnvelope), (status = 409, description = "Revision conflict", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn replace(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<ReplaceBody>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::ROUTING_WRITE)?;
    // a whole replacement is the one change that can wipe every route at once: it must
    // say which routing it replaces, and an empty one must be asked for in so many words
    let Some(expected) = body.expected_revision else {
        return Err(ApiError::bad_request(
            "expected_revision is required to replace the whole routing (the revision GET /admin/routing answers)",
        )
        .with_reason(Reason::RoutingReplaceUnsafe));
    };
    if body.routing.routes_nothing() && !body.confirm_empty {
        return Err(ApiError::bad_request(
            "this routing has no placement and no shard: every route would be removed; send confirm_empty: true to mean it",
        )
        .with_reason(Reason::RoutingReplaceUnsafe));
    }
    let now = unix_now();
    let revision = state
        .routing
        .publish(body.routing, Some(expected), now)
        .await?;
    record(
        &admin,
        "admin.routing.replace",
        "routing",
        ip,
        now,
        json!({"revision": revision}),
    )
    .record(&state.store)
    .await;
    Ok(Json(Published { revision }))
}

#[utoipa::path(post, operation_id = "routing_reload", path = "/admin/routing/reload", tag = "admin.routing", summary = "Re-publish the current routing as a new revision", security(("bearer" = [])), responses((status = 200, description = "Published", body = Published), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn reload(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::ROUTING_WRITE)?;
    let now = unix_now();
    let (_, _, revision) = state.routing.modify(now, |_| Ok(())).await?;
    record(
        &admin,
        "admin.routing.reload",
        "routing",
        ip,
        now,
        json!({"revision": revision}),
    )
    .record(&state.store)
    .await;
    Ok(Json(Published { revision }))
}

/// The effective decision per kind for one tenant.
#[utoipa::path(get, operation_id = "routing_tenant_routes", path = "/admin/routing/tenants/{tenant_id}", tag = "admin.routing", summary = "Where a tenant is routed, per kind", params(("tenant_id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "The route per kind", body = TenantRoutes), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn tenant_routes(
    State(state): State<AppState>,
    admin: Admin,
    Path(tenant_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::ROUTING_READ)?;
    let tenant = tenant(&tenant_id)?;
    let (current, _) = state.routing.current().await?;
    let Some(doc) = current else {
        return Ok(Json(TenantRoutes {
            tenant_id: tenant,
            revision: 0,
            routes: BTreeMap::new(),
        }));
    };
    let kind_revisions = doc.payload.kind_revisions.clone();
    let table =
        gateway_core::routing::RoutingTable::build(doc.payload, doc.revision, doc.issued_at)
            .map_err(|err| ApiError::internal("published routing invalid", &err))?;
    let routes = ServiceKind::ALL
        .iter()
        .map(|k| {
            let decision = match table.route(&tenant, *k) {
                Ok(route) => TenantRoute::Routed {
                    shard: route.shard.to_string(),
                    endpoints: route.endpoints.iter().map(|e| e.to_string()).collect(),
                    kind_revision: kind_revisions.get(k).copied(),
                },
                Err(err) => TenantRoute::NotRouted {
                    error: "tenant_not_routed".to_string(),
                    message: err.to_string(),
                },
            };
            (*k, decision)
        })
        .collect();
    Ok(Json(TenantRoutes {
        tenant_id: tenant,
        revision: table.revision,
        routes,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct PlaceBody {
    shard: String,
}

#[utoipa::path(put, operation_id = "routing_place", path = "/admin/routing/{kind}/placements/{tenant_id}", tag = "admin.routing", summary = "Place a tenant on a shard", params(("kind" = String, Path), ("tenant_id" = String, Path)), request_body = PlaceBody, security(("bearer" = [])), responses((status = 200, description = "Published", body = Published), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn place(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path((kind_name, tenant_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<PlaceBody>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::ROUTING_WRITE)?;
    let (kind, tenant) = (kind(&kind_name)?, tenant(&tenant_id)?);
    let now = unix_now();
    let shard = body.shard.clone();
    let (before, _, revision) = state
        .routing
        .modify(now, |doc| {
            doc.kind_mut(kind)
                .placement
                .insert(tenant.clone(), shard.clone());
            Ok(())
        })
        .await?;
    record(&admin, "admin.routing.place", tenant.as_str(), ip, now, json!({"kind": kind, "shard": body.shard, "before": before.kind(kind).placement.get(&tenant), "revision": revision}))
        .record(&state.store)
        .await;
    Ok(Json(Published { revision }))
}

#[utoipa::path(delete, operation_id = "routing_unplace", path = "/admin/routing/{kind}/placements/{tenant_id}", tag = "admin.routing", summary = "Remove a tenant's placement", params(("kind" = String, Path), ("tenant_id" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "Published", body = Published), (status = 404, description = "Not placed", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn unplace(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path((kind_name, tenant_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::ROUTING_WRITE)?;
    let (kind, tenant) = (kind(&kind_name)?, tenant(&tenant_id)?);
    let now = unix_now();
    let (_, _, revision) = state
        .routing
        .modify(now, |doc| {
            match doc.kind_mut(kind).placement.remove(&tenant) {
                Some(_) => Ok(()),
                None => Err(ApiError::not_found(
                    "the tenant has no placement for this kind",
                )),
            }
        })
        .await?;
    record(
        &admin,
        "admin.routing.unplace",
        tenant.as_str(),
        ip,
        now,
        json!({"kind": kind, "revision": revision}),
    )
    .record(&state.store)
    .await;
    Ok(Json(Published { revision }))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ShardBody {
    endpoints: Vec<String>,
}

#[utoipa::path(put, operation_id = "routing_put_shard", path = "/admin/routing/{kind}/shards/{shard}", tag = "admin.routing", summary = "Create or replace a shard's endpoints", params(("kind" = String, Path), ("shard" = String, Path)), request_body = ShardBody, security(("bearer" = [])), responses((status = 200, description = "Published", body = Published), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn put_shard(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path((kind_name, shard)): Path<(String, String)>,
    ApiJson(body): ApiJson<ShardBody>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::ROUTING_WRITE)?;
    let kind = kind(&kind_name)?;
    validate_shard_id(&shard).map_err(|err| {
        ApiError::bad_request(err.to_string()).with_reason(Reason::InvalidRouting)
    })?;
    if body.endpoints.is_empty()
        || body.endpoints.len() > 64
        || body.endpoints.iter().any(|e| !validate_endpoint(e))
    {
        return Err(
            ApiError::bad_request("endpoints are 1 to 64 http(s)://host:port URLs")
                .with_reason(Reason::InvalidRouting),
        );
    }
    let now = unix_now();
    let endpoints = body.endpoints.clone();
    let (_, _, revision) = state
        .routing
        .modify(now, |doc| {
            doc.kind_mut(kind)
                .shards
                .insert(shard.clone(), endpoints.clone());
            Ok(())
        })
        .await?;
    record(
        &admin,
        "admin.routing.shard.put",
        &shard,
        ip,
        now,
        json!({"kind": kind, "endpoints": body.endpoints, "revision": revision}),
    )
    .record(&state.store)
    .await;
    Ok(Json(Published { revision }))
}

#[utoipa::path(delete, operation_id = "routing_delete_shard", path = "/admin/routing/{kind}/shards/{shard}", tag = "admin.routing", summary = "Remove a shard (refused while tenants are placed on it)", params(("kind" = String, Path), ("shard" = String, Path)), security(("bearer" = [])), responses((status = 200, description = "Published", body = Published), (status = 400, description = "Still in use", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn delete_shard(
    State(state): State<AppState>,
    admin: Admin,
    ClientIp(ip): ClientIp,
    Path((kind_name, shard)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    admin.require(None, rights::ROUTING_WRITE)?;
    let kind = kind(&kind_name)?;
    let now = unix_now();
    let (_, _, revision) = state
        .routing
        .modify(now, |doc| match doc.kind_mut(kind).shards.remove(&shard) {
            Some(_) => Ok(()),
            None => Err(ApiError::new(ErrorCode::NotFound, "no such shard")),
        })
        .await?;
    record(
        &admin,
        "admin.routing.shard.delete",
        &shard,
        ip,
        now,
        json!({"kind": kind, "revision": revision}),
    )
    .record(&state.store)
    .await;
    Ok(Json(Published { revision }))
}
