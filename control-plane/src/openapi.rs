//! The OpenAPI 3 document of the control-plane API, generated from the route annotations
//! and served at `/openapi.json`.

use utoipa::openapi::path::{HttpMethod, Operation, PathItem};
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

/// The answer of a sign-in, refresh or MFA step.
#[derive(serde::Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum TokenAnswer {
    /// The tokens in the body (bearer delivery, the default).
    Tokens(crate::auth::TokenResponse),
    /// The tokens set as `__Host-` cookies (`x-token-delivery: cookie`): the body carries the
    /// CSRF token the page sends back with every change.
    Cookies(CookieTokens),
    /// A second factor is needed (sign-in only): answer it at `/v1/auth/mfa/verify`.
    Mfa(MfaChallenge),
}

/// Tokens delivered as cookies: what the body carries (the cookies carry the tokens).
#[derive(serde::Serialize, ToSchema)]
pub struct CookieTokens {
    /// `cookie`.
    #[schema(value_type = String)]
    pub token_type: &'static str,
    /// Seconds the access token lives.
    pub expires_in: u64,
    /// Sent back in `x-csrf-token` with every change.
    pub csrf_token: String,
}

/// A second-factor challenge.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)]
pub struct MfaChallenge {
    mfa_required: bool,
    mfa_token: String,
}

/// The credentials the API takes: a bearer access token, a browser session's access
/// cookie (with the CSRF header on changes, [`session_credentials`]), and a service
/// account's client id and secret in HTTP Basic at the token endpoint.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue};
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
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                gateway_edge::http::ACCESS_COOKIE,
                "A browser session: the access cookie set by a token route called with \
                 `x-token-delivery: cookie`. Every change (any method but GET) also needs \
                 `x-csrf-token` equal to the `__Host-gw_csrf` cookie.",
            ))),
        );
        components.add_security_scheme(
            "csrf",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                gateway_edge::http::CSRF_HEADER,
                "With the session cookie, on every change: the value of the `__Host-gw_csrf` \
                 cookie (double submit).",
            ))),
        );
        components.add_security_scheme(
            "csrf_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                gateway_edge::http::CSRF_COOKIE,
                "The CSRF cookie set with the session's cookies; `x-csrf-token` repeats it.",
            ))),
        );
        components.add_security_scheme(
            "refresh_session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                gateway_edge::http::REFRESH_COOKIE,
                "A browser session's refresh cookie: `/v1/auth/refresh` without a \
                 `refresh_token` in the body takes it, with `x-csrf-token`.",
            ))),
        );
        components.add_security_scheme(
            "client_basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "A service account's client_id and client_secret (RFC 6749 §2.3.1), \
                         instead of the body's fields",
                    ))
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
    components(schemas(ErrorEnvelope, ErrorBody, TokenAnswer, CookieTokens, MfaChallenge, crate::auth::TokenResponse)),
    modifiers(&SecuritySchemes)
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
    ops_paths(api.get_openapi_mut());
    error_answers(api.get_openapi_mut());
    session_credentials(api.get_openapi_mut());
    path_constraints(api.get_openapi_mut());
    body_constraints(api.get_openapi_mut());
    optional_bodies(api.get_openapi_mut());
    api
}

pub use gateway_core::authz::{RIGHT_PATTERN, TENANT_PATTERN};
/// A principal id: `usr_` or `svc_` and hex digits.
pub const PRINCIPAL_PATTERN: &str = "^(usr|svc)_[0-9a-fA-F]{1,60}$";

/// An email address as the API takes it: a dot-atom local part and a domain of labels
/// (a subset of what it accepts, which also takes letters of any script).
pub const EMAIL_PATTERN: &str = "^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,30}(\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,16}){0,2}@[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?){1,3}$";
/// A role name.
pub const ROLE_PATTERN: &str = "^[a-z][a-z0-9_]{0,63}$";
/// A shard id.
pub const SHARD_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";
/// An upstream endpoint: an http(s) URL of a host and port.
pub const ENDPOINT_PATTERN: &str = "^https?://[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,3}:[1-9][0-9]{1,3}$";

/// The shape of a request-body field, as its handler checks it: by the body's schema and
/// the field's name.
fn body_field(schema: &str, field: &str) -> Option<utoipa::openapi::schema::ObjectBuilder> {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let text = |pattern: Option<&str>, min: usize, max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(pattern)
            .min_length(Some(min))
            .max_length(Some(max))
    };
    if schema.starts_with("Error") {
        return None;
    }
    Some(match (schema, field) {
        (_, "tenant_id") => text(Some(TENANT_PATTERN), 1, 63),
        (_, "principal_id") => text(Some(PRINCIPAL_PATTERN), 5, 64),
        // any text: the answer is the same 202 whatever it is (docs/decisions.md,
        // "Enumeration")
        ("ForgotBody", "email") => ObjectBuilder::new().schema_type(Type::String),
        (_, "email") => text(Some(EMAIL_PATTERN), 3, 254)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email))),
        (_, "password" | "new_password") => text(None, DEFAULT_PASSWORD_MIN, 256),
        (_, "role") | ("RoleBody", "name") => text(Some(ROLE_PATTERN), 1, 64),
        ("RightBody", "name") => text(Some(RIGHT_PATTERN), 1, 200),
        ("ExplainBody", "action") => text(Some("^[a-z0-9_]{1,64}(\\.[a-z0-9_]{1,64})*$"), 1, 128),
        ("ExplainBody", "resource") => text(Some("^[A-Za-z0-9_.-]{1,128}$"), 1, 128),
        ("CreateAccount", "name") => text(Some("^[^\\x00-\\x1f\\x7f-\\x9f]+$"), 1, 128),
        ("IdentityBody", "subject") => text(Some("^[A-Za-z0-9_.-]{1,255}$"), 1, 255),
        ("TokenRequest", "client_id") => text(Some("^svc_[A-Za-z0-9_]{1,60}$"), 5, 64),
        ("TokenRequest", "client_secret") => text(None, 1, 512),
        ("ReplaceBody", "expected_revision") => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0)),
        (_, "shard" | "target_shard") => text(Some(SHARD_PATTERN), 1, 63),
        (_, "kind") => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["aggregate", "projection", "runner"])),
        (_, "provider") => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["google"])),
        (_, "grant_type") => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["client_credentials"])),
        ("CodeBody" | "MfaVerifyBody", "code") => text(Some("^[0-9]{6}$"), 6, 6),
        (_, "overlap_seconds") => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(30 * 24 * 3600)),
        _ => return None,
    })
}

/// The shape of the items of a request-body list field.
fn body_items(field: &str) -> Option<(&'static str, usize, usize)> {
    match field {
        "rights" => Some((RIGHT_PATTERN, 0, 200)),
        "endpoints" => Some((ENDPOINT_PATTERN, 1, 64)),
        _ => None,
    }
}

/// The default shortest password (`--password-min-length`).
const DEFAULT_PASSWORD_MIN: usize = 15;

/// Gives request-body fields the shape their handlers accept ([`body_field`]), keeping
/// whether they may be null.
fn body_constraints(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
    let requests = request_schemas(doc);
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for (name, schema) in components.schemas.iter_mut() {
        // answers are what the types say; the handlers' checks are on what comes in
        if !requests.contains(name) {
            continue;
        }
        let RefOr::T(Schema::Object(object)) = schema else {
            continue;
        };
        let mut required = Vec::new();
        for (field, property) in object.properties.iter_mut() {
            let with_null = |schema_type: &SchemaType| matches!(schema_type, SchemaType::Array(types) if types.contains(&Type::Null));
            let nullable = match property {
                RefOr::T(Schema::Object(inner)) => with_null(&inner.schema_type),
                RefOr::T(Schema::Array(inner)) => with_null(&inner.schema_type),
                _ => false,
            };
            if let Some(shape) = body_field(name, field) {
                let mut shape = shape.build();
                if REQUIRED.contains(&(name.as_str(), field.as_str())) {
                    required.push(field.clone());
                } else if nullable && let SchemaType::Type(only) = shape.schema_type.clone() {
                    shape.schema_type = SchemaType::from_iter([only, Type::Null]);
                }
                *property = RefOr::T(Schema::Object(shape));
            } else if let Some((pattern, min, max)) = body_items(field) {
                let items = ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(pattern))
                    .min_length(Some(1))
                    .max_length(Some(200))
                    .build();
                let mut list = ArrayBuilder::new()
                    .items(items)
                    .min_items(Some(min))
                    .max_items(Some(max));
                if nullable {
                    list = list.schema_type(SchemaType::from_iter([Type::Array, Type::Null]));
                }
                *property = RefOr::T(Schema::Array(list.build()));
            }
        }
        for field in required {
            if !object.required.contains(&field) {
                object.required.push(field);
            }
        }
    }
}

/// The names of the schemas request bodies refer to.
fn request_schemas(doc: &mut utoipa::openapi::OpenApi) -> std::collections::BTreeSet<String> {
    use utoipa::openapi::RefOr;
    let mut names = std::collections::BTreeSet::new();
    for item in doc.paths.paths.values_mut() {
        for (_, operation) in operations(item) {
            let bodies = operation.iter().filter_map(|o| o.request_body.as_ref());
            for content in bodies.flat_map(|body| body.content.values()) {
                if let Some(RefOr::Ref(reference)) = &content.schema
                    && let Some(name) = reference.ref_location.rsplit('/').next()
                {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

/// Request bodies a route takes or goes without (`POST .../rotate`: the overlap is
/// optional, and so is the body that would carry it).
const OPTIONAL_BODIES: &[&str] = &["/admin/service-accounts/{id}/rotate"];

/// Marks the bodies of [`OPTIONAL_BODIES`] as not required.
fn optional_bodies(doc: &mut utoipa::openapi::OpenApi) {
    for path in OPTIONAL_BODIES {
        if let Some(item) = doc.paths.paths.get_mut(*path) {
            for (_, operation) in operations(item) {
                if let Some(body) = operation.as_mut().and_then(|o| o.request_body.as_mut()) {
                    body.required = Some(utoipa::openapi::Required::False);
                }
            }
        }
    }
}

/// Fields optional in the body's type that the handler requires (a clear error of its
/// own when absent).
const REQUIRED: &[(&str, &str)] = &[("ReplaceBody", "expected_revision")];

/// The shape of a path parameter, as the handler checks it (a value outside it is 400).
fn path_parameter(path: &str, name: &str) -> Option<utoipa::openapi::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let pattern = |pattern: &str, max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .min_length(Some(1))
            .max_length(Some(max))
            .build()
            .into()
    };
    Some(match name {
        "tenant_id" => pattern(TENANT_PATTERN, 63),
        "shard" => pattern("^[a-z0-9][a-z0-9_-]{0,62}$", 63),
        "kind" => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["aggregate", "projection", "runner"]))
            .build()
            .into(),
        "name" if path.starts_with("/admin/roles/") => pattern("^[a-z][a-z0-9_]{0,63}$", 64),
        "name" if path.starts_with("/admin/rights/") => pattern(RIGHT_PATTERN, 200),
        "id" if path.starts_with("/admin/service-accounts/") => {
            pattern("^svc_[A-Za-z0-9_]{1,60}$", 64)
        }
        "id" if path.contains("/invitations/") => pattern("^inv_[0-9a-fA-F]{32}$", 36),
        "id" if path.starts_with("/admin/rebalance/plans/") => pattern("^rbp_[0-9a-fA-F]{32}$", 36),
        "id" => pattern(PRINCIPAL_PATTERN, 64),
        "provider" => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["google"]))
            .build()
            .into(),
        "session_id" => pattern("^[0-9a-f]{32}$", 32),
        "subject" => pattern("^[A-Za-z0-9_.-]{1,255}$", 255),
        _ => return None,
    })
}

/// The shape of a query parameter, as its handler reads it: the filters' ids as in paths,
/// numbers within the range of the handler's integer type (values past it are refused;
/// limits inside it are brought into their bounds), other texts as they come.
fn query_parameter(path: &str, name: &str) -> Option<utoipa::openapi::Schema> {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let integer = |minimum: utoipa::Number, maximum: utoipa::Number| {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(minimum))
            .maximum(Some(maximum))
            .build()
            .into()
    };
    let unsigned = || integer(utoipa::Number::UInt(0), utoipa::Number::UInt(usize::MAX));
    let text = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .build()
            .into()
    };
    Some(match name {
        "tenant_id" => path_parameter(path, "tenant_id")?,
        // a principal id, as in the user routes' paths
        "principal_id" => path_parameter("/admin/users/{id}", "id")?,
        "email" => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(EMAIL_PATTERN))
            .min_length(Some(3))
            .max_length(Some(254))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
            .build()
            .into(),
        "status" => ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["active", "disabled"]))
            .build()
            .into(),
        "limit" => unsigned(),
        "after" if path == "/admin/audit" => unsigned(),
        "since" | "until" => integer(
            utoipa::Number::Int(i64::MIN as isize),
            utoipa::Number::Int(i64::MAX as isize),
        ),
        "after" | "actor" | "action" | "code" | "state" | "error" => text(),
        _ => return None,
    })
}

/// The operations of a path item, with their methods (the API uses these five).
fn operations(item: &mut PathItem) -> [(HttpMethod, &mut Option<Operation>); 5] {
    [
        (HttpMethod::Get, &mut item.get),
        (HttpMethod::Post, &mut item.post),
        (HttpMethod::Put, &mut item.put),
        (HttpMethod::Patch, &mut item.patch),
        (HttpMethod::Delete, &mut item.delete),
    ]
}

/// Gives every path parameter the shape its handler accepts ([`path_parameter`]).
fn path_constraints(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    for (path, item) in doc.paths.paths.iter_mut() {
        for (_, operation) in operations(item) {
            let Some(operation) = operation else {
                continue;
            };
            for parameter in operation.parameters.iter_mut().flatten() {
                let schema = match parameter.parameter_in {
                    ParameterIn::Path => path_parameter(path, &parameter.name),
                    ParameterIn::Query => query_parameter(path, &parameter.name),
                    _ => None,
                };
                if let Some(schema) = schema {
                    parameter.schema = Some(schema.into());
                }
            }
        }
    }
}

/// The operational routes every plane serves (`gateway_edge::http::ops_router`; on the API
/// listener unless `--ops-listen` moves `/metrics` and `/version` away) and this document.
fn ops_paths(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::OperationBuilder;
    use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
    use utoipa::openapi::{ContentBuilder, ResponseBuilder};
    let answer = |description: &str, media: &str, schema: Object| {
        ResponseBuilder::new()
            .description(description)
            .content(media, ContentBuilder::new().schema(Some(schema)).build())
            .build()
    };
    let text = || ObjectBuilder::new().schema_type(Type::String);
    // `{"status": "<word>"}`
    let status = |words: &[&str]| {
        ObjectBuilder::new()
            .property("status", text().enum_values(Some(words.iter().copied())))
            .required("status")
            .build()
    };
    let not_ready = ObjectBuilder::new()
        .property("status", text().enum_values(Some(["not_ready"])))
        .property("error", utoipa::openapi::Ref::from_schema_name("ErrorBody"))
        .property(
            "checks",
            ObjectBuilder::new()
                .description(Some("The failing checks, each with its reason"))
                .additional_properties(Some(text())),
        )
        .required("status")
        .required("error")
        .required("checks")
        .build();
    let json = || ObjectBuilder::new().schema_type(Type::Object).build();
    let elsewhere = || {
        answer(
            "Served on the ops listener (--ops-listen)",
            "application/json",
            json(),
        )
    };
    let build = ObjectBuilder::new()
        .property("name", text())
        .property("version", text())
        .property("git_sha", text())
        .required("name")
        .required("version")
        .required("git_sha")
        .build();
    for (path, id, summary, answers) in [
        (
            "/health",
            "ops_health",
            "The process is up",
            vec![("200", answer("Up", "application/json", status(&["ok"])))],
        ),
        (
            "/live",
            "ops_live",
            "The process is live (never restarted for a store outage)",
            vec![
                (
                    "200",
                    // before the start is done, live once ready (and saying so)
                    answer("Live", "application/json", status(&["live", "ready"])),
                ),
                (
                    "503",
                    answer(
                        "Not started yet, with the failing checks",
                        "application/json",
                        not_ready.clone(),
                    ),
                ),
            ],
        ),
        (
            "/ready",
            "ops_ready",
            "Whether to send traffic here (the store answers)",
            vec![
                (
                    "200",
                    answer("Ready", "application/json", status(&["ready"])),
                ),
                (
                    "503",
                    answer(
                        "Not ready, with the failing checks",
                        "application/json",
                        not_ready.clone(),
                    ),
                ),
            ],
        ),
        (
            "/metrics",
            "ops_metrics",
            "Prometheus metrics (text exposition format)",
            vec![
                ("200", answer("Metrics", "text/plain", text().build())),
                ("404", elsewhere()),
            ],
        ),
        (
            "/version",
            "ops_version",
            "Name, version and git commit of the build",
            vec![
                ("200", answer("Build", "application/json", build)),
                ("404", elsewhere()),
            ],
        ),
        (
            "/openapi.json",
            "openapi_document",
            "This document",
            vec![(
                "200",
                answer("The OpenAPI document", "application/json", json()),
            )],
        ),
    ] {
        let mut operation = OperationBuilder::new()
            .operation_id(Some(id))
            .summary(Some(summary))
            .tag("ops");
        for (status, response) in answers {
            operation = operation.response(status, response);
        }
        doc.paths
            .paths
            .entry(path.to_string())
            .or_insert_with(|| PathItem::new(HttpMethod::Get, operation.build()));
    }
}

/// Adds the error answers (in the envelope) that a route can give by what it is, where
/// its own declaration does not name them: 500 and 503 (the store unreachable, an audit
/// intent not written) everywhere; 401 and 403 behind a credential; 400, 413 and 415
/// with a JSON body; 400 and 404 with a path parameter; 409 on admin changes (a
/// concurrent change, an existing name); 429 on the auth flows (rate limits, lockouts).
fn error_answers(doc: &mut utoipa::openapi::OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in operations(item) {
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
                answers.push(("415", "The body is not in a media type the route takes"));
            }
            if path.contains('{') {
                answers.push(("400", "Bad input"));
                answers.push(("404", "Not found"));
            }
            let changes = !matches!(method, HttpMethod::Get);
            if changes && path.starts_with("/admin/") {
                answers.push(("404", "Not found"));
                answers.push(("409", "Conflicts with the current state"));
            }
            if changes && path.starts_with("/v1/auth/") {
                // a challenge, code or token that is not (or no longer) valid; a flow in
                // the wrong state (an MFA already on, none to confirm)
                answers.push(("401", "The credential, challenge or code is not valid"));
                answers.push(("409", "The account is not in a state for this step"));
                answers.push(("429", "Rate limited or locked; retry after `retry-after`"));
            }
            if path.starts_with("/v1/auth/oidc/") {
                answers.push(("404", "Google sign-in is not configured"));
            }
            if path.ends_with("/callback") {
                answers.push((
                    "401",
                    "The provider refused the sign-in, or the code or state is not valid",
                ));
                answers.push(("403", "The flow was started in another browser"));
                answers.push(("429", "Rate limited; retry after `retry-after`"));
                answers.push((
                    "409",
                    "The Google account or its address belongs to another account",
                ));
                answers.push((
                    "502",
                    "The provider could not be reached or answered wrongly",
                ));
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

/// A browser session is as good a credential as a bearer token wherever one is asked for:
/// each such route also takes the `session` cookie, and a change made with it needs the
/// double-submit pair (`csrf` header, `csrf_cookie`) with it. The routes that answer with tokens deliver them as cookies when asked
/// with `x-token-delivery: cookie`.
fn session_credentials(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{RefOr, Required};
    for (_, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in operations(item) {
            let Some(operation) = operation.as_mut() else {
                continue;
            };
            let bearer = operation.security.iter().flatten().any(|requirement| {
                serde_json::to_value(requirement).is_ok_and(|v| v.get("bearer").is_some())
            });
            if bearer {
                // the cookie alone reads; a change needs the CSRF pair with it
                let session = if matches!(method, HttpMethod::Get) {
                    SecurityRequirement::new("session", Vec::<String>::new())
                } else {
                    SecurityRequirement::new("session", Vec::<String>::new())
                        .add("csrf", Vec::<String>::new())
                        .add("csrf_cookie", Vec::<String>::new())
                };
                if let Some(security) = operation.security.as_mut() {
                    security.push(session);
                }
            }
            let answers_tokens = operation
                .responses
                .responses
                .get("200")
                .is_some_and(|answer| {
                    matches!(answer, RefOr::T(answer) if answer.content.values().any(|content| {
                        serde_json::to_value(&content.schema)
                            .is_ok_and(|v| v["$ref"] == "#/components/schemas/TokenAnswer")
                    }))
                });
            if answers_tokens {
                let delivery = ParameterBuilder::new()
                    .name(gateway_edge::http::DELIVERY_HEADER)
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "`cookie`: the tokens are set as `HttpOnly` `__Host-` cookies and the \
                         body carries the CSRF token; otherwise they are in the body",
                    ))
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .enum_values(Some(["cookie"])),
                    ))
                    .build();
                operation
                    .parameters
                    .get_or_insert_with(Vec::new)
                    .push(delivery);
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

/// The mutating operations (POST, PUT, PATCH, DELETE) of `routes`, as (method, path): the
/// audit tests walk those of each admin module's `router()`, so a new route without an
/// audit record fails them.
pub fn mutating_routes(routes: OpenApiRouter<crate::AppState>) -> Vec<(String, String)> {
    let doc = routes.into_openapi();
    let mut routes = Vec::new();
    for (path, mut item) in doc.paths.paths {
        if QUESTIONS.contains(&path.as_str()) {
            continue;
        }
        for (method, operation) in operations(&mut item) {
            let method = match method {
                HttpMethod::Post => "POST",
                HttpMethod::Put => "PUT",
                HttpMethod::Patch => "PATCH",
                HttpMethod::Delete => "DELETE",
                _ => continue,
            };
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
    use serde_json::{Value, json};

    #[test]
    fn every_mutating_admin_route_is_documented() {
        let doc = serde_json::to_value(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mutating: Vec<(String, String)> = [
            crate::openapi::mutating_routes(crate::admin::iam_routes::router()),
            crate::openapi::mutating_routes(crate::admin::principal_routes::router()),
            crate::openapi::mutating_routes(crate::admin::invitation_routes::router()),
            crate::openapi::mutating_routes(crate::admin::routing_routes::router()),
            crate::openapi::mutating_routes(crate::admin::rebalance_routes::router()),
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

    /// Every success answer with a body names its schema (a client generator gets a type
    /// for each), and the schemas it names exist.
    #[test]
    fn every_success_answer_has_a_schema() {
        let doc = serde_json::to_value(document()).unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut missing = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, answer) in operation["responses"].as_object().unwrap() {
                    if !status.starts_with('2') || status == "204" {
                        continue;
                    }
                    let Some(content) = answer["content"].as_object() else {
                        missing.push(format!("{method} {path} {status}"));
                        continue;
                    };
                    for (media, body) in content {
                        let schema = &body["schema"];
                        if media == "text/plain" {
                            continue;
                        }
                        if schema.is_null() || schema.as_object().is_some_and(|o| o.is_empty()) {
                            missing.push(format!("{method} {path} {status} {media}"));
                        }
                        let text = schema.to_string();
                        for name in text.split("#/components/schemas/").skip(1) {
                            let name = name.split('"').next().unwrap_or_default();
                            assert!(schemas.contains_key(name), "{method} {path}: {name}");
                        }
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "{} answers without a schema: {missing:#?}",
            missing.len()
        );
    }

    /// The request rules shape request bodies only: an answer with a field of the same
    /// name keeps its type's schema; and an optional body is not required.
    #[test]
    fn request_rules_leave_answers_alone() {
        let doc = serde_json::to_value(document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["RightList"]["properties"]["rights"]["items"]["$ref"],
            "#/components/schemas/RightInfo"
        );
        assert!(schemas["RoleBody"]["properties"]["rights"]["items"]["pattern"].is_string());
        assert!(schemas["Explanation"]["properties"]["role"]["pattern"].is_null());
        let rotate = &doc["paths"]["/admin/service-accounts/{id}/rotate"]["post"];
        assert_eq!(rotate["requestBody"]["required"], false, "{rotate}");
        let create = &doc["paths"]["/admin/service-accounts"]["post"];
        assert_eq!(create["requestBody"]["required"], true, "{create}");
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
        // the token answers have their schemas
        for path in ["/v1/auth/signin", "/v1/auth/refresh", "/v1/auth/mfa/verify"] {
            assert_eq!(
                doc["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
                    ["$ref"],
                "#/components/schemas/TokenAnswer",
                "{path}"
            );
        }
        assert!(doc["components"]["schemas"]["TokenAnswer"]["oneOf"].is_array());
        let list = has("/admin/users", "get", &["200", "401", "403", "503"]);
        assert!(!list.iter().any(|s| s == "404" || s == "415"), "{list:?}");
        // every error answer is the envelope
        let envelope = json!({"$ref": "#/components/schemas/ErrorEnvelope"});
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if operation["tags"][0] == "ops" {
                    continue; // the probes answer in their own shapes
                }
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
    fn path_patterns_accept_what_the_handlers_accept() {
        let matches =
            |pattern: &str, value: &str| regex::Regex::new(pattern).unwrap().is_match(value);
        for tenant in [
            "acme",
            "a",
            "0-x",
            "acme-2",
            "",
            "Acme",
            "-a",
            "a_b",
            "a/b",
            &"a".repeat(64),
        ] {
            assert_eq!(
                matches(TENANT_PATTERN, tenant),
                gateway_core::authz::TenantId::parse(tenant).is_ok(),
                "{tenant:?}"
            );
        }
        for right in [
            "*",
            "query.read",
            "query.read:*",
            "query.read:orders-v1.x",
            "iam.*",
            "command.submit:Order_1",
            "*:x",
            "query..read",
            ".read",
            "query.read:",
            "Query.read",
            "query.read:a/b",
            "*.read",
        ] {
            assert_eq!(
                matches(RIGHT_PATTERN, right),
                gateway_core::authz::Right::parse(right).is_ok(),
                "{right:?}"
            );
        }
        for id in [
            "usr_0a1b", "svc_ff", "usr_", "usr_xyz", "adm_00", "usr_00/1",
        ] {
            assert_eq!(
                matches(PRINCIPAL_PATTERN, id),
                crate::iam::principal_id(id).is_ok() && id.len() > 4,
                "{id:?}"
            );
        }
        for email in [
            "a@example.com",
            "first.last+tag@sub.example.org",
            "x@a.b",
            "a@b",
            "a..b@example.com",
            ".a@example.com",
            "a@-x.com",
            "a b@example.com",
            "a@example.com>",
        ] {
            assert!(
                !matches(EMAIL_PATTERN, email)
                    || crate::auth::users::normalize_email(email).is_ok(),
                "{email:?} fits the pattern but is refused"
            );
        }
        assert!(matches(EMAIL_PATTERN, "first.last+tag@sub.example.org"));
        for endpoint in [
            "http://upstream-1:8080",
            "https://a.b.c:443",
            "http://x:1",
            "ftp://x:21",
            "http://x",
            "http://-x:80",
            "http://x:80/path",
        ] {
            assert!(
                !matches(ENDPOINT_PATTERN, endpoint)
                    || gateway_core::routing::validate_endpoint(endpoint),
                "{endpoint:?} fits the pattern but is refused"
            );
        }
        assert!(matches(ENDPOINT_PATTERN, "http://upstream-1:8080"));
        for shard in ["s1", "proj-a_b", "", "-a", "A", &"a".repeat(64)] {
            assert_eq!(
                matches(SHARD_PATTERN, shard),
                gateway_core::routing::validate_shard_id(shard).is_ok(),
                "{shard:?}"
            );
        }
        for role in ["tenant_admin", "r", "1r", "R", "a-b", &"r".repeat(65)] {
            assert_eq!(
                matches(ROLE_PATTERN, role),
                crate::iam::roles::validate_name(role).is_ok(),
                "{role:?}"
            );
        }
        // every path parameter has a shape
        let doc = serde_json::to_value(document()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    if parameter["in"] == "path" {
                        let schema = &parameter["schema"];
                        assert!(
                            schema.get("pattern").is_some() || schema.get("enum").is_some(),
                            "{method} {path} {}: {schema}",
                            parameter["name"]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn query_parameters_and_credentials_are_declared() {
        let doc = serde_json::to_value(document()).unwrap();
        let parameters = |path: &str, method: &str| -> serde_json::Map<String, Value> {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| (p["name"].as_str().unwrap().to_string(), p.clone()))
                .collect()
        };
        // every filter the handlers read, in the query, optional, with its shape
        for (path, names) in [
            (
                "/admin/users",
                &["email", "tenant_id", "status", "after", "limit"][..],
            ),
            ("/admin/assignments", &["principal_id", "tenant_id"][..]),
            (
                "/admin/audit",
                &[
                    "tenant_id",
                    "actor",
                    "action",
                    "since",
                    "until",
                    "after",
                    "limit",
                ][..],
            ),
            ("/admin/invitations", &["tenant_id"][..]),
            ("/admin/service-accounts", &["tenant_id"][..]),
            (
                "/v1/auth/oidc/google/callback",
                &["code", "state", "error"][..],
            ),
        ] {
            let found = parameters(path, "get");
            for name in names {
                let p = &found[*name];
                assert_eq!(p["in"], "query", "{path} {name}");
                assert_ne!(p["required"], true, "{path} {name}");
                assert!(p["schema"]["type"].is_string(), "{path} {name}: {p}");
            }
        }
        let users = parameters("/admin/users", "get");
        assert_eq!(users["tenant_id"]["schema"]["pattern"], TENANT_PATTERN);
        assert_eq!(
            users["status"]["schema"]["enum"],
            json!(["active", "disabled"])
        );
        assert_eq!(users["limit"]["schema"]["minimum"], 0);
        let audit = parameters("/admin/audit", "get");
        assert_eq!(audit["after"]["schema"]["maximum"], json!(u64::MAX));
        assert_eq!(audit["since"]["schema"]["minimum"], json!(i64::MIN));
        assert_eq!(
            parameters("/admin/assignments", "get")["principal_id"]["schema"]["pattern"],
            PRINCIPAL_PATTERN
        );
        // a browser session is taken wherever a bearer token is, with the CSRF header on
        // changes
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["session"]["in"], "cookie");
        assert_eq!(schemes["session"]["name"], "__Host-gw_access");
        assert_eq!(schemes["csrf"]["in"], "header");
        assert_eq!(schemes["csrf"]["name"], "x-csrf-token");
        assert_eq!(schemes["client_basic"]["scheme"], "basic");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let security = operation["security"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if security.iter().any(|r| r.get("bearer").is_some()) {
                    let session = security.iter().find(|r| r.get("session").is_some());
                    let session = session.unwrap_or_else(|| panic!("{method} {path}"));
                    for part in ["csrf", "csrf_cookie"] {
                        assert_eq!(
                            session.get(part).is_some(),
                            method != "get",
                            "{method} {path}: {part}"
                        );
                    }
                }
            }
        }
        for path in ["/v1/auth/signin", "/v1/auth/refresh", "/v1/auth/mfa/verify"] {
            let delivery = &parameters(path, "post")["x-token-delivery"];
            assert_eq!(delivery["in"], "header", "{path}");
            assert_eq!(delivery["schema"]["enum"], json!(["cookie"]), "{path}");
        }
        // the client-credentials grant: a form or JSON, the client in the body or in Basic
        let token = &doc["paths"]["/v1/auth/token"]["post"];
        let content = token["requestBody"]["content"].as_object().unwrap();
        assert!(content.contains_key("application/x-www-form-urlencoded"));
        assert!(content.contains_key("application/json"));
        assert_eq!(token["security"], json!([{"client_basic": []}, {}]));
        // a browser's refresh: the refresh cookie with the CSRF pair, or the body's token
        assert_eq!(
            doc["paths"]["/v1/auth/refresh"]["post"]["security"],
            json!([{}, {"refresh_session": [], "csrf": [], "csrf_cookie": []}])
        );
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
