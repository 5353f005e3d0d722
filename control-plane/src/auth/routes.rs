//! HTTP routes of the authentication flows (`/v1/auth/*`, `/.well-known/jwks.json`).

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header::SET_COOKIE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_core::unix_now;
use gateway_edge::ErrorCode;
use gateway_edge::http;
use gateway_edge::{ApiError, Reason};
use serde::{Deserialize, Serialize};

use super::Principal;
use crate::AppState;
use crate::api::{ApiJson, BearerToken, ClientIp};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The signed-in caller, from a verified bearer token.
pub struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let BearerToken(token) = BearerToken::from_request_parts(parts, state).await?;
        state
            .auth
            .authenticate(&token, unix_now())
            .await
            .map(Authenticated)
    }
}

/// The module's routes, each declared once: the router and its OpenAPI paths come from
/// the handlers' `#[utoipa::path]` annotations.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(signin))
        .routes(routes!(refresh))
        .routes(routes!(signout))
        .routes(routes!(current_session))
        .routes(routes!(verify_email))
        .routes(routes!(resend_verification))
        .routes(routes!(forgot))
        .routes(routes!(reset))
        .routes(routes!(mfa_verify))
        .routes(routes!(token))
        .routes(routes!(google_start))
        .routes(routes!(google_link))
        .routes(routes!(google_callback))
        .routes(routes!(totp_enroll))
        .routes(routes!(totp_confirm))
        .routes(routes!(totp_disable))
        .routes(routes!(jwks))
}

/// A new account.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SignedUp {
    user_id: String,
}

/// An answer that says only what happens next.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Message {
    message: &'static str,
}

/// The recovery codes, each good once.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct RecoveryCodes {
    recovery_codes: Vec<String>,
}

/// The provider's authorization URL to send the browser to (the flow is bound to this
/// browser by a cookie set with it).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct AuthorizationUrl {
    authorization_url: String,
}

/// The signed-in caller: a user, or a service account (`kind` says which).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum SessionAnswer {
    User {
        principal_id: String,
        user_id: String,
        email: String,
        email_verified: bool,
        mfa_enabled: bool,
        /// The session of the token (null for tokens without one).
        #[schema(required = true)]
        session_id: Option<String>,
    },
    ServiceAccount {
        principal_id: String,
        name: String,
    },
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct Credentials {
    email: String,
    password: String,
}

#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", summary = "Register an account with a password", request_body = Credentials, responses((status = 201, description = "Created", body = SignedUp), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn signup(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    let user = state
        .auth
        .signup(&body.email, &body.password, ip, unix_now())
        .await?;
    Ok((StatusCode::CREATED, Json(SignedUp { user_id: user.id })))
}

#[utoipa::path(post, path = "/v1/auth/signin", tag = "auth", summary = "Sign in; tokens or an MFA challenge", request_body = Credentials, responses((status = 200, description = "OK", body = crate::openapi::TokenAnswer), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn signin(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    let outcome = state
        .auth
        .signin(&body.email, &body.password, ip, unix_now())
        .await?;
    Ok(match outcome {
        super::SigninOutcome::Tokens(tokens) => deliver(&state, &headers, tokens),
        challenge => no_store(Json(challenge)).into_response(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct RefreshBody {
    /// Omitted by browser sessions: the refresh cookie is used (with the CSRF header).
    #[serde(default)]
    refresh_token: Option<String>,
}

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", summary = "Rotate a refresh token", request_body = RefreshBody, security((), ("refresh_session" = [], "csrf" = [], "csrf_cookie" = [])), responses((status = 200, description = "OK", body = crate::openapi::TokenAnswer), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Response, ApiError> {
    let refresh_token = match body.refresh_token {
        Some(token) => token,
        None => {
            // a browser session: the cookie, under the CSRF check
            let token = http::cookie(&headers, http::REFRESH_COOKIE).ok_or_else(|| {
                ApiError::new(ErrorCode::Unauthenticated, "a refresh token is required")
                    .with_reason(Reason::InvalidRefreshToken)
            })?;
            http::check_csrf(&headers, &Method::POST).map_err(http::credential_refusal)?;
            token.to_string()
        }
    };
    let tokens = state.auth.refresh(&refresh_token, ip, unix_now()).await?;
    Ok(deliver(&state, &headers, tokens))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SignoutBody {
    #[serde(default)]
    all: bool,
}

#[utoipa::path(post, path = "/v1/auth/signout", tag = "auth", summary = "End this session, or every session with all = true", request_body = SignoutBody, security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn signout(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // the body is optional: empty means this session only
    let all = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        serde_json::from_slice::<SignoutBody>(&body)
            .map_err(|_| {
                ApiError::bad_request("the body does not match the expected fields")
                    .with_reason(Reason::InvalidBody)
            })?
            .all
    };
    state.auth.signout(&principal, all, ip, unix_now()).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if http::cookie(&headers, http::ACCESS_COOKIE).is_some()
        || http::cookie(&headers, http::REFRESH_COOKIE).is_some()
    {
        for name in [http::ACCESS_COOKIE, http::REFRESH_COOKIE, http::CSRF_COOKIE] {
            append_cookie(&mut response, name, "", 0, name != http::CSRF_COOKIE);
        }
    }
    Ok(response)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct TokenBody {
    token: String,
}

#[utoipa::path(post, path = "/v1/auth/verify-email", tag = "auth", summary = "Confirm an email address", request_body = TokenBody, responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn verify_email(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<StatusCode, ApiError> {
    state.auth.verify_email(&body.token, ip, unix_now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/auth/verify-email/resend", tag = "auth", summary = "Send a new verification mail", security(("bearer" = [])), responses((status = 202, description = "Accepted (nothing is sent for a verified address)", body = Message), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn resend_verification(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<impl IntoResponse, ApiError> {
    let (user, _) = super::users::get(&state.store, &principal.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    let message = if user.email_verified {
        "the address is verified already"
    } else {
        state.auth.send_verification(&user, unix_now()).await?;
        "a verification mail is on its way"
    };
    Ok((StatusCode::ACCEPTED, Json(Message { message })))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ForgotBody {
    email: String,
}

#[utoipa::path(post, path = "/v1/auth/forgot", tag = "auth", summary = "Start a password reset (always 202)", request_body = ForgotBody, responses((status = 202, description = "Accepted", body = Message), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn forgot(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<ForgotBody>,
) -> Result<impl IntoResponse, ApiError> {
    state.auth.forgot(&body.email, ip, unix_now()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Message {
            message: "if the address belongs to an account, a reset link is on its way",
        }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct ResetBody {
    token: String,
    new_password: String,
}

#[utoipa::path(post, path = "/v1/auth/reset", tag = "auth", summary = "Set a new password with a reset token", request_body = ResetBody, responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn reset(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<ResetBody>,
) -> Result<StatusCode, ApiError> {
    state
        .auth
        .reset(&body.token, &body.new_password, ip, unix_now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct MfaVerifyBody {
    mfa_token: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

#[utoipa::path(post, path = "/v1/auth/mfa/verify", tag = "auth", summary = "Answer an MFA challenge", request_body = MfaVerifyBody, responses((status = 200, description = "OK", body = crate::openapi::TokenAnswer), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn mfa_verify(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MfaVerifyBody>,
) -> Result<Response, ApiError> {
    let tokens = state
        .auth
        .mfa_verify(
            &body.mfa_token,
            body.code.as_deref(),
            body.recovery_code.as_deref(),
            ip,
            unix_now(),
        )
        .await?;
    Ok(deliver(&state, &headers, tokens))
}

#[utoipa::path(post, path = "/v1/auth/mfa/totp/enroll", tag = "mfa", summary = "Start TOTP enrolment", security(("bearer" = [])), responses((status = 200, description = "The secret to enrol, shown once", body = crate::auth::mfa::Enrolment), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn totp_enroll(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<impl IntoResponse, ApiError> {
    let enrolment = state.auth.totp_enroll(&principal, unix_now()).await?;
    Ok(no_store(Json(enrolment)))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CodeBody {
    code: String,
}

#[utoipa::path(post, path = "/v1/auth/mfa/totp/confirm", tag = "mfa", summary = "Confirm TOTP; returns recovery codes once", request_body = CodeBody, security(("bearer" = [])), responses((status = 200, description = "TOTP is on; the recovery codes, shown once", body = RecoveryCodes), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn totp_confirm(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<CodeBody>,
) -> Result<impl IntoResponse, ApiError> {
    let codes = state
        .auth
        .totp_confirm(&principal, &body.code, ip, unix_now())
        .await?;
    Ok(no_store(Json(RecoveryCodes {
        recovery_codes: codes,
    })))
}

#[utoipa::path(post, path = "/v1/auth/mfa/totp/disable", tag = "mfa", summary = "Turn TOTP off", request_body = CodeBody, security(("bearer" = [])), responses((status = 204, description = "No content"), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn totp_disable(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<CodeBody>,
) -> Result<StatusCode, ApiError> {
    state
        .auth
        .totp_disable(&principal, &body.code, ip, unix_now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct TokenRequest {
    grant_type: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

/// `POST /v1/auth/token`: the client-credentials grant, as a form (RFC 6749) or JSON, with
/// the client authenticated in the body or with HTTP Basic.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth", summary = "Client-credentials grant (form or JSON)", request_body(description = "The grant, as a form (RFC 6749 §4.4.2) or JSON; the client authenticates in the body (client_id and client_secret) or with HTTP Basic, not both", content((TokenRequest = "application/x-www-form-urlencoded"), (TokenRequest = "application/json"))), security(("client_basic" = []), ()), responses((status = 200, description = "OK", body = crate::auth::TokenResponse), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let bad_body = || {
        ApiError::bad_request("grant_type (and the client credentials) are required")
            .with_reason(Reason::InvalidRequest)
    };
    let request: TokenRequest = if content_type.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded_form(&body).ok_or_else(bad_body)?
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice(&body).map_err(|_| bad_body())?
    } else {
        return Err(ApiError::new(
            gateway_edge::ErrorCode::UnsupportedMediaType,
            "send a form (application/x-www-form-urlencoded) or json",
        ));
    };
    if request.grant_type != "client_credentials" {
        return Err(
            ApiError::bad_request("only client_credentials is supported here")
                .with_reason(Reason::UnsupportedGrantType),
        );
    }
    let basic = basic_credentials(&headers);
    let (client_id, client_secret) = match (basic, request.client_id, request.client_secret) {
        (Some(pair), None, None) => pair,
        (None, Some(id), Some(secret)) => (id, secret),
        _ => return Err(bad_body()),
    };
    let tokens = state
        .auth
        .client_credentials(&client_id, &client_secret, ip, unix_now())
        .await?;
    Ok(no_store(Json(tokens)))
}

fn serde_urlencoded_form(body: &[u8]) -> Option<TokenRequest> {
    serde_urlencoded::from_bytes(body).ok()
}

/// `Authorization: Basic base64(client_id:client_secret)` (RFC 6749 §2.3.1).
fn basic_credentials(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

#[utoipa::path(post, path = "/v1/auth/oidc/google/start", tag = "oidc", summary = "Start a Google sign-in", responses((status = 200, description = "Where to send the browser", body = AuthorizationUrl), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn google_start(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
) -> Result<impl IntoResponse, ApiError> {
    let (url, secret) = state.auth.google_start(None, ip, unix_now()).await?;
    let mut response = no_store(Json(AuthorizationUrl {
        authorization_url: url,
    }))
    .into_response();
    flow_cookie(&mut response, &secret, 600);
    Ok(response)
}

#[utoipa::path(post, path = "/v1/auth/oidc/google/link", tag = "oidc", summary = "Start linking a Google identity", security(("bearer" = [])), responses((status = 200, description = "Where to send the browser", body = AuthorizationUrl), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn google_link(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    ClientIp(ip): ClientIp,
) -> Result<impl IntoResponse, ApiError> {
    let (url, secret) = state
        .auth
        .google_start(Some(&principal), ip, unix_now())
        .await?;
    let mut response = no_store(Json(AuthorizationUrl {
        authorization_url: url,
    }))
    .into_response();
    flow_cookie(&mut response, &secret, 600);
    Ok(response)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CallbackQuery {
    /// The authorization code (with `state`).
    #[serde(default)]
    code: Option<String>,
    /// The state the flow started with (with `code`, or with `error`).
    #[serde(default)]
    state: Option<String>,
    /// The provider's refusal (RFC 6749 §4.1.2.1), instead of `code`.
    #[serde(default)]
    error: Option<String>,
}

#[utoipa::path(get, path = "/v1/auth/oidc/google/callback", tag = "oidc", summary = "Provider callback", params(CallbackQuery), responses((status = 200, description = "Signed in (tokens or an MFA challenge), or the identity linked", body = crate::auth::CallbackOutcome), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn google_callback(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    query: Result<axum::extract::Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let axum::extract::Query(query) = query.map_err(|_| {
        ApiError::bad_request("malformed callback").with_reason(Reason::InvalidRequest)
    })?;
    if query.error.is_some() {
        return Err(ApiError::new(
            gateway_edge::ErrorCode::Unauthenticated,
            "the identity provider refused the sign-in",
        )
        .with_reason(Reason::AccessDenied));
    }
    let (Some(code), Some(oidc_state)) = (query.code, query.state) else {
        return Err(ApiError::bad_request("code and state are required")
            .with_reason(Reason::InvalidRequest));
    };
    let outcome = state
        .auth
        .google_callback(
            &code,
            &oidc_state,
            http::cookie(&headers, http::OIDC_COOKIE),
            ip,
            unix_now(),
        )
        .await?;
    let mut response = no_store(Json(outcome)).into_response();
    // the flow is done: its binding goes
    flow_cookie(&mut response, "", 0);
    Ok(response)
}

#[utoipa::path(get, path = "/v1/auth/session", tag = "auth", summary = "The signed-in caller", security(("bearer" = [])), responses((status = 200, description = "The caller", body = SessionAnswer), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope), (status = 401, description = "Not signed in", body = crate::openapi::ErrorEnvelope), (status = 403, description = "Forbidden", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn current_session(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<impl IntoResponse, ApiError> {
    if let Some((account, _)) =
        super::service_accounts::get(&state.store, &principal.user_id).await?
    {
        return Ok(Json(SessionAnswer::ServiceAccount {
            principal_id: account.id,
            name: account.name,
        }));
    }
    let (user, _) = super::users::get(&state.store, &principal.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(Json(SessionAnswer::User {
        principal_id: user.id.clone(),
        user_id: user.id,
        email: user.email,
        email_verified: user.email_verified,
        mfa_enabled: user.mfa_enabled,
        session_id: principal.session_id,
    }))
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", summary = "Public keys of access tokens", responses((status = 200, description = "The JWK set", body = gateway_core::jwks::JwkSet), (status = 400, description = "Bad input", body = crate::openapi::ErrorEnvelope)))]
pub(crate) async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=60")],
        Json(state.keys.jwk_set()),
    )
}

/// Token responses must not be cached (RFC 6749 §5.1).
/// Tokens as the client asked for them: the JSON token response, or with
/// `x-token-delivery: cookie` (browsers) `HttpOnly; Secure; SameSite=Strict` cookies for
/// the access and refresh tokens, a CSRF cookie the page reads, and in the body only the
/// CSRF token and the access token's lifetime. Tokens never reach page scripts that way.
fn deliver(state: &AppState, headers: &HeaderMap, tokens: super::TokenResponse) -> Response {
    let wants_cookies = headers
        .get(http::DELIVERY_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cookie"));
    if !wants_cookies {
        return no_store(Json(tokens)).into_response();
    }
    let csrf = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let mut response = no_store(Json(crate::openapi::CookieTokens {
        token_type: "cookie",
        expires_in: tokens.expires_in,
        csrf_token: csrf.clone(),
    }))
    .into_response();
    let session = state.auth.settings.sessions.absolute_ttl.as_secs();
    append_cookie(
        &mut response,
        http::ACCESS_COOKIE,
        &tokens.access_token,
        tokens.expires_in,
        true,
    );
    if let Some(refresh) = &tokens.refresh_token {
        append_cookie(&mut response, http::REFRESH_COOKIE, refresh, session, true);
    }
    append_cookie(&mut response, http::CSRF_COOKIE, &csrf, session, false);
    response
}

/// `__Host-` cookies: `Secure`, `Path=/`, no `Domain`, so no other host can set or read
/// them; `SameSite=Strict` keeps them off cross-site requests.
fn append_cookie(response: &mut Response, name: &str, value: &str, max_age: u64, http_only: bool) {
    let http_only = if http_only { "; HttpOnly" } else { "" };
    let text =
        format!("{name}={value}; Path=/; Max-Age={max_age}; Secure{http_only}; SameSite=Strict");
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

/// The cookie binding a Google sign-in or link to its browser: `SameSite=Lax`, because the
/// provider's redirect back is a top-level cross-site navigation, which `Strict` cookies
/// do not follow.
fn flow_cookie(response: &mut Response, secret: &str, max_age: u64) {
    let text = format!(
        "{}={secret}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax",
        http::OIDC_COOKIE
    );
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

fn no_store<T: IntoResponse>(body: T) -> impl IntoResponse {
    (
        [
            (axum::http::header::CACHE_CONTROL, "no-store"),
            (axum::http::header::PRAGMA, "no-cache"),
        ],
        body,
    )
}
