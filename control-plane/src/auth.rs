//! Authentication: sign-up, sign-in, rotating refresh sessions, sign-out, and verification
//! of our own access tokens for the signed-in routes.

pub mod mfa;
pub mod oidc;
pub mod onetime;
pub mod passwords;
pub mod routes;
pub mod service_accounts;
pub mod sessions;
pub mod users;

// the flows of `AuthService`, one file each
mod google;
mod recovery;
mod session_flow;
mod signin;
mod signup;
mod totp_flow;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_core::token::{ACCESS_TOKEN_TYPE, AccessClaims};
use gateway_edge::{ApiError, Reason};
use gateway_store::Store;
use serde::Serialize;

use crate::keys::KeyManager;
use crate::limits::{AccountBackoff, IpLimits, KeyedLimiter, too_many};
use crate::mail::Mailer;
use passwords::{PasswordHasherPool, PasswordPolicy};
use sessions::SessionSettings;
use users::User;

/// Settings of the authentication flows.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub sessions: SessionSettings,
    pub password_policy: PasswordPolicy,
    /// Refuse sign-in until the email address is verified.
    pub require_verified_email: bool,
    /// Reset mails per address per hour.
    pub forgot_per_account_per_hour: u32,
    /// Lifetime of reset and verification tokens.
    pub one_time_ttl: Duration,
    /// Base URL of the client application, for links in mails.
    pub public_url: String,
}

/// The first platform admin, from configuration.
#[derive(Clone)]
pub struct BootstrapAdmin {
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for BootstrapAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapAdmin")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

/// OAuth 2.0 token response (RFC 6749 §5.1).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// The answer to a sign-in: tokens, or a second-factor challenge.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SigninOutcome {
    Tokens(TokenResponse),
    MfaRequired {
        mfa_required: bool,
        mfa_token: String,
    },
}

/// What a provider callback did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CallbackOutcome {
    SignedIn(SigninOutcome),
    Linked {
        linked: bool,
        #[schema(value_type = String)]
        provider: &'static str,
    },
}

/// The caller of a signed-in route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub session_id: Option<String>,
}

pub struct AuthService {
    pub store: Store,
    /// Republishes a principal's effective rights after a change of status.
    pub publisher: Arc<crate::iam::publish::Publisher>,
    pub keys: Arc<KeyManager>,
    pub hasher: PasswordHasherPool,
    pub mfa: mfa::Mfa,
    pub mailer: Mailer,
    pub ip_limits: IpLimits,
    pub backoff: AccountBackoff,
    /// Google sign-in, when configured.
    pub google: Option<Arc<oidc::GoogleOidc>>,
    pub settings: AuthSettings,
}

/// One token of `limiter` (the `name`d per-IP limit) for `ip`, or 429.
fn limit(limiter: &KeyedLimiter, name: &'static str, ip: IpAddr, now: i64) -> Result<(), ApiError> {
    limiter.check(ip, now.saturating_mul(1000)).map_err(|wait| {
        crate::limits::count_limited(name, Reason::RateLimited);
        too_many(wait, Reason::RateLimited)
    })
}

fn invalid_token() -> ApiError {
    ApiError::bad_request("the token is not valid or has expired").with_reason(Reason::InvalidToken)
}

fn hash_failed(err: passwords::HashError) -> ApiError {
    ApiError::internal("password hashing", &err)
}

impl AuthService {
    /// The signed-in caller's user record, or 404.
    async fn user(&self, principal: &Principal) -> Result<User, ApiError> {
        users::get(&self.store, &principal.user_id)
            .await?
            .map(|(u, _)| u)
            .ok_or_else(|| ApiError::not_found("no such user"))
    }

    /// An access token for `subject`. `valid_after` is the principal's
    /// `tokens_valid_after`: tokens issued at or before it are refused everywhere, so a token
    /// issued in the same second as a sign-out carries the next second as `iat`.
    fn token_response(
        &self,
        subject: &str,
        session_id: Option<&str>,
        refresh_token: Option<String>,
        now: i64,
        valid_after: i64,
    ) -> Result<TokenResponse, ApiError> {
        let ttl = self.settings.access_ttl.as_secs();
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: subject.to_string(),
            sid: session_id.map(str::to_string),
            iat: users::token_iat(valid_after, now),
            nbf: now,
            exp: now + ttl as i64,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            typ: ACCESS_TOKEN_TYPE.to_string(),
        };
        Ok(TokenResponse {
            access_token: self.keys.sign(&claims)?,
            token_type: "Bearer",
            expires_in: ttl,
            refresh_token,
        })
    }
}
