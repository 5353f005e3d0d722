//! The OpenAPI 3 document of the control-plane API, generated from the route annotations
//! and served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;

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
    components(schemas(ErrorEnvelope, ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Every API route of the control plane with its OpenAPI paths, each route declared once
/// (its handler's `#[utoipa::path]`): the router and the document come from the same
/// declarations.
pub fn api() -> OpenApiRouter<crate::AppState> {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut api = OpenApiRouter::with_openapi(doc)
        .merge(crate::auth::routes::router())
        .merge(crate::admin::iam_routes::router())
        .merge(crate::admin::principal_routes::router())
        .merge(crate::admin::invitation_routes::router())
        .merge(crate::admin::routing_routes::router())
        .merge(crate::admin::rebalance_routes::router());
    error_answers(api.get_openapi_mut());
    api
}

/// Adds the error answers (in the envelope) that a route can give by what it is, where
/// its own declaration does not name them: 500 and 503 (the store unreachable, an audit
/// intent not written) everywhere; 401 and 403 behind a credential; 400, 413 and 415
/// with a JSON body; 400 and 404 with a path parameter; 409 on admin changes (a
/// concurrent change, an existing name); 429 on the auth flows (rate limits, lockouts).
fn error_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::HttpMethod;
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in [
            (HttpMethod::Get, &mut item.get),
            (HttpMethod::Post, &mut item.post),
            (HttpMethod::Put, &mut item.put),
            (HttpMethod::Patch, &mut item.patch),
            (HttpMethod::Delete, &mut item.delete),
        ] {
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            let mut answers = vec![
                ("500", "Internal error"),
                ("503", "Unavailable (the store cannot be reached); retry"),
            ];
            if operation.security.is_some() {
                answers.push(("401", "Not signed in, or the credential is not valid"));
                answers.push(("403", "Not allowed"));
            }
            if operation.request_body.is_some() {
                answers.push(("400", "Bad input"));
                answers.push(("413", "The body is too large"));
                answers.push(("415", "The body is not JSON"));
            }
            if path.contains('{') {
                answers.push(("400", "Bad input"));
                answers.push(("404", "Not found"));
            }
            let changes = !matches!(method, HttpMethod::Get);
            if changes && path.starts_with("/admin/") {
                answers.push(("409", "Conflicts with the current state"));
            }
            if changes && path.starts_with("/v1/auth/") {
                answers.push(("429", "Rate limited or locked; retry after `retry-after`"));
            }
            for (status, description) in answers {
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_answer(description));
            }
        }
    }
}

fn error_answer(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                .build(),
        )
        .build()
        .into()
}

/// The document served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// Routes that take a POST but change nothing (a question in a body).
const QUESTIONS: &[&str] = &["/admin/authz/explain"];

/// The mutating operations (POST, PUT, PATCH, DELETE) of `routes`, as (method, path).
pub fn mutating_routes(routes: OpenApiRouter<crate::AppState>) -> Vec<(String, String)> {
    let doc = routes.into_openapi();
    let mut routes = Vec::new();
    for (path, item) in doc.paths.paths {
        if QUESTIONS.contains(&path.as_str()) {
            continue;
        }
        for (method, operation) in [
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            if operation.is_some() {
                routes.push((method.to_string(), path.clone()));
            }
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_mutating_admin_route_is_documented() {
        let doc = serde_json::to_value(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mutating: Vec<(String, String)> = [
            crate::admin::iam_routes::mutating_routes(),
            crate::admin::principal_routes::mutating_routes(),
            crate::admin::invitation_routes::mutating_routes(),
            crate::admin::routing_routes::mutating_routes(),
            crate::admin::rebalance_routes::mutating_routes(),
        ]
        .concat();
        assert!(mutating.len() > 30, "{mutating:?}");
        assert!(mutating.contains(&("DELETE".into(), "/admin/users/{id}".into())));
        for (method, path) in &mutating {
            let item = paths.get(path).unwrap_or_else(|| panic!("{path} missing"));
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
    fn routes_declare_the_error_answers_they_can_give() {
        let doc = serde_json::to_value(document()).unwrap();
        let statuses = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}"))
                .keys()
                .cloned()
                .collect()
        };
        let has = |path: &str, method: &str, wanted: &[&str]| {
            let got = statuses(path, method);
            for status in wanted {
                assert!(
                    got.iter().any(|s| s == status),
                    "{method} {path}: {status} not in {got:?}"
                );
            }
            got
        };
        has(
            "/admin/users/{id}",
            "delete",
            &["401", "403", "404", "409", "503"],
        );
        has(
            "/admin/roles",
            "post",
            &["400", "401", "403", "409", "413", "415"],
        );
        has(
            "/v1/auth/signin",
            "post",
            &["200", "400", "415", "429", "503"],
        );
        let list = has("/admin/users", "get", &["200", "401", "403", "503"]);
        assert!(!list.iter().any(|s| s == "404" || s == "415"), "{list:?}");
        // every error answer is the envelope
        let envelope = json!({"$ref": "#/components/schemas/ErrorEnvelope"});
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, answer) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            answer["content"]["application/json"]["schema"], envelope,
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
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
