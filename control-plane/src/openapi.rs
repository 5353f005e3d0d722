//! The OpenAPI 3 document of the control-plane API, generated from the route annotations
//! and served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The error envelope of every route.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorEnvelope {
    error: ErrorBody,
}

/// Body of the error envelope.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// Precise, stable code, e.g. `invalid_credentials`.
    code: String,
    /// Human text.
    message: String,
    correlation_id: Option<String>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cloudlysis Gateway control plane",
        description = "Authentication flows and the IAM admin API. Errors use the envelope `{\"error\": {code, message, correlation_id}}`."
    ),
    paths(
        crate::auth::routes::signup,
        crate::auth::routes::signin,
        crate::auth::routes::refresh,
        crate::auth::routes::signout,
        crate::auth::routes::current_session,
        crate::auth::routes::verify_email,
        crate::auth::routes::resend_verification,
        crate::auth::routes::forgot,
        crate::auth::routes::reset,
        crate::auth::routes::mfa_verify,
        crate::auth::routes::totp_enroll,
        crate::auth::routes::totp_confirm,
        crate::auth::routes::totp_disable,
        crate::auth::routes::token,
        crate::auth::routes::google_start,
        crate::auth::routes::google_link,
        crate::auth::routes::google_callback,
        crate::auth::routes::jwks,
        crate::admin::iam_routes::list_roles,
        crate::admin::iam_routes::create_role,
        crate::admin::iam_routes::get_role,
        crate::admin::iam_routes::update_role,
        crate::admin::iam_routes::delete_role,
        crate::admin::iam_routes::list_rights,
        crate::admin::iam_routes::create_right,
        crate::admin::iam_routes::delete_right,
        crate::admin::iam_routes::list_assignments,
        crate::admin::iam_routes::create_assignment,
        crate::admin::iam_routes::delete_assignment,
        crate::admin::iam_routes::explain,
        crate::admin::iam_routes::effective,
        crate::admin::iam_routes::rotate_keys,
        crate::admin::iam_routes::read_audit,
        crate::admin::invitation_routes::create,
        crate::admin::invitation_routes::list,
        crate::admin::invitation_routes::revoke,
        crate::admin::invitation_routes::mine,
        crate::admin::invitation_routes::accept,
        crate::admin::invitation_routes::decline,
        crate::admin::principal_routes::list_users,
        crate::admin::principal_routes::create_user,
        crate::admin::principal_routes::get_user,
        crate::admin::principal_routes::update_user,
        crate::admin::principal_routes::delete_user,
        crate::admin::principal_routes::disable_user,
        crate::admin::principal_routes::enable_user,
        crate::admin::principal_routes::set_password,
        crate::admin::principal_routes::force_reset,
        crate::admin::principal_routes::reset_mfa,
        crate::admin::principal_routes::revoke_recovery,
        crate::admin::principal_routes::list_sessions,
        crate::admin::principal_routes::revoke_sessions,
        crate::admin::principal_routes::revoke_session,
        crate::admin::principal_routes::list_identities,
        crate::admin::principal_routes::link_identity,
        crate::admin::principal_routes::unlink_identity,
        crate::admin::principal_routes::list_service_accounts,
        crate::admin::principal_routes::create_service_account,
        crate::admin::principal_routes::get_service_account,
        crate::admin::principal_routes::rotate_service_account,
        crate::admin::principal_routes::delete_service_account,
        crate::admin::routing_routes::read,
        crate::admin::routing_routes::replace,
        crate::admin::routing_routes::reload,
        crate::admin::routing_routes::tenant_routes,
        crate::admin::routing_routes::place,
        crate::admin::routing_routes::unplace,
        crate::admin::routing_routes::put_shard,
        crate::admin::routing_routes::delete_shard,
        crate::admin::rebalance_routes::create,
        crate::admin::rebalance_routes::list,
        crate::admin::rebalance_routes::read,
        crate::admin::rebalance_routes::gates,
        crate::admin::rebalance_routes::apply,
        crate::admin::rebalance_routes::rollback,
        crate::admin::rebalance_routes::cancel,
        crate::admin::rebalance_routes::replicas
    ),
    components(schemas(ErrorEnvelope, ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mutating_admin_route_is_documented() {
        let doc = serde_json::to_value(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (method, path) in crate::admin::iam_routes::MUTATING_ROUTES
            .iter()
            .chain(crate::admin::principal_routes::MUTATING_ROUTES)
            .chain(crate::admin::invitation_routes::MUTATING_ROUTES)
            .chain(crate::admin::routing_routes::MUTATING_ROUTES)
            .chain(crate::admin::rebalance_routes::MUTATING_ROUTES)
        {
            let item = paths.get(*path).unwrap_or_else(|| panic!("{path} missing"));
            assert!(
                item.get(method.to_lowercase()).is_some(),
                "{method} {path} missing"
            );
        }
        assert!(paths.contains_key("/v1/auth/signin"));
        assert_eq!(
            doc["openapi"].as_str().map(|v| v.starts_with("3.")),
            Some(true)
        );
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = serde_json::to_value(document()).unwrap();
        let mut seen = std::collections::BTreeMap::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if let Some(id) = operation["operationId"].as_str()
                    && let Some(other) = seen.insert(id.to_string(), format!("{method} {path}"))
                {
                    panic!(
                        "operationId {id} on {method} {path} and {other}: client generators fail on it"
                    );
                }
            }
        }
        assert!(seen.len() > 50, "{}", seen.len());
    }
}
