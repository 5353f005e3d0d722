//! Authentication: sign-up, sign-in, rotating refresh sessions, sign-out, and verification
//! of our own access tokens for the signed-in routes.

pub mod passwords;
pub mod routes;
pub mod sessions;
pub mod users;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_shared::store::Store;
use gateway_shared::token::{ACCESS_TOKEN_TYPE, AccessClaims};
use gateway_shared::{ApiError, ErrorCode};
use serde::Serialize;
use serde_json::json;

use crate::audit::Audit;
use crate::keys::KeyManager;
use passwords::{PasswordHasherPool, PasswordPolicy};
use sessions::{RefreshError, SessionSettings};
use users::{User, UserStatus};

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
}

/// OAuth 2.0 token response (RFC 6749 §5.1).
#[derive(Clone, Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// The caller of a signed-in route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub session_id: Option<String>,
}

pub struct AuthService {
    pub store: Store,
    pub keys: Arc<KeyManager>,
    pub hasher: PasswordHasherPool,
    pub settings: AuthSettings,
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        "the email or password is not correct",
    )
    .with_reason("invalid_credentials")
}

fn hash_failed(err: passwords::HashError) -> ApiError {
    ApiError::internal("password hashing", &err)
}

impl AuthService {
    /// Registers an account with a password.
    pub async fn signup(
        &self,
        email: &str,
        password: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<User, ApiError> {
        let email = users::normalize_email(email)?;
        let password = self
            .settings
            .password_policy
            .check(password, &email)
            .map_err(|err| ApiError::bad_request(err.to_string()).with_reason(err.code()))?;
        let phc = self.hasher.hash(&password).await.map_err(hash_failed)?;
        let result = users::create(&self.store, &email, phc, false, now).await;
        let audit = Audit::new(
            "auth.signup",
            if result.is_ok() { "ok" } else { "refused" },
            now,
        )
        .ip(ip);
        match &result {
            Ok(user) => {
                audit
                    .actor(&user.id)
                    .target(&user.id)
                    .record(&self.store)
                    .await
            }
            Err(err) => {
                audit
                    .detail(json!({"reason": err.envelope_code()}))
                    .record(&self.store)
                    .await
            }
        }
        result
    }

    /// Checks email and password; unknown accounts cost the same work and get the same
    /// answer as a wrong password.
    pub async fn signin(
        &self,
        email: &str,
        password: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<TokenResponse, ApiError> {
        let (Ok(email), Some(password)) = (
            users::normalize_email(email),
            passwords::normalize(password),
        ) else {
            // still spend the hashing work so malformed input is not a timing oracle
            let _ = self.hasher.verify("", None).await;
            return Err(invalid_credentials());
        };
        let found = users::find_by_email(&self.store, &email).await?;
        let credential = match &found {
            Some((user, _)) => users::password(&self.store, &user.id).await?,
            None => None,
        };
        let matched = self
            .hasher
            .verify(&password, credential.as_ref().map(|c| c.phc.as_str()))
            .await
            .map_err(hash_failed)?;
        let user = match (found, matched) {
            (Some((user, _)), true) => user,
            (found, _) => {
                let mut audit = Audit::new("auth.signin", "failed", now).ip(ip);
                if let Some((user, _)) = &found {
                    audit = audit.target(&user.id);
                }
                audit.record(&self.store).await;
                return Err(invalid_credentials());
            }
        };
        if user.status != UserStatus::Active {
            Audit::new("auth.signin", "refused", now)
                .ip(ip)
                .target(&user.id)
                .detail(json!({"reason": "account_disabled"}))
                .record(&self.store)
                .await;
            return Err(
                ApiError::new(ErrorCode::Forbidden, "this account is disabled")
                    .with_reason("account_disabled"),
            );
        }
        if self.settings.require_verified_email && !user.email_verified {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "verify your email address before signing in",
            )
            .with_reason("email_not_verified"));
        }
        if let Some(credential) = &credential
            && self.hasher.needs_rehash(&credential.phc)
        {
            // upgrade hashes made with older parameters while the password is at hand
            let phc = self.hasher.hash(&password).await.map_err(hash_failed)?;
            users::set_password(&self.store, &user.id, phc, now).await?;
        }
        let (session, refresh_token) = sessions::open(
            &self.store,
            &user.id,
            &self.settings.sessions,
            now,
            false,
            Some(ip.to_string()),
        )
        .await?;
        Audit::new("auth.signin", "ok", now)
            .ip(ip)
            .actor(&user.id)
            .target(&user.id)
            .detail(json!({"session_id": session.id}))
            .record(&self.store)
            .await;
        self.token_response(&user.id, Some(&session.id), Some(refresh_token), now)
    }

    /// Rotates a refresh token into a new token pair.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<TokenResponse, ApiError> {
        match sessions::rotate(&self.store, refresh_token, &self.settings.sessions, now).await {
            Ok((session, next)) => {
                match users::get(&self.store, &session.user_id).await? {
                    Some((user, _)) if user.status == UserStatus::Active => {}
                    _ => {
                        sessions::revoke(
                            &self.store,
                            &session.user_id,
                            &session.id,
                            now,
                            "user_inactive",
                        )
                        .await?;
                        return Err(RefreshError::Revoked.into());
                    }
                }
                self.token_response(&session.user_id, Some(&session.id), Some(next), now)
            }
            Err(RefreshError::Reused {
                user_id,
                session_id,
            }) => {
                Audit::new("auth.refresh.reuse", "revoked", now)
                    .ip(ip)
                    .target(&user_id)
                    .detail(json!({"session_id": session_id}))
                    .record(&self.store)
                    .await;
                tracing::warn!(user_id, session_id, "refresh token reuse, session revoked");
                Err(RefreshError::Reused {
                    user_id,
                    session_id,
                }
                .into())
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Ends the caller's session, or every session of the caller (`all`), which also makes
    /// every access token issued so far invalid.
    pub async fn signout(
        &self,
        principal: &Principal,
        all: bool,
        ip: IpAddr,
        now: i64,
    ) -> Result<(), ApiError> {
        if all {
            sessions::revoke_all(&self.store, &principal.user_id, now, "signout_all").await?;
            users::update(&self.store, &principal.user_id, now, |user| {
                user.tokens_valid_after = user.tokens_valid_after.max(now);
            })
            .await?;
        } else if let Some(session_id) = &principal.session_id {
            sessions::revoke(&self.store, &principal.user_id, session_id, now, "signout").await?;
        }
        Audit::new(
            if all {
                "auth.signout.all"
            } else {
                "auth.signout"
            },
            "ok",
            now,
        )
        .ip(ip)
        .actor(&principal.user_id)
        .target(&principal.user_id)
        .record(&self.store)
        .await;
        Ok(())
    }

    fn token_response(
        &self,
        subject: &str,
        session_id: Option<&str>,
        refresh_token: Option<String>,
        now: i64,
    ) -> Result<TokenResponse, ApiError> {
        let ttl = self.settings.access_ttl.as_secs();
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: subject.to_string(),
            sid: session_id.map(str::to_string),
            iat: now,
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

    /// Verifies one of our access tokens and that its user and session are still valid.
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<Principal, ApiError> {
        let claims = self
            .keys
            .verify_access(token, &self.settings.issuer, &self.settings.audience, now)
            .map_err(|reason| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "a valid bearer token is required",
                )
                .with_reason(reason)
            })?;
        let refused = |reason| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "a valid bearer token is required",
            )
            .with_reason(reason)
        };
        let Some((user, _)) = users::get(&self.store, &claims.sub).await? else {
            return Err(refused("unknown_principal"));
        };
        if user.status != UserStatus::Active {
            return Err(refused("principal_disabled"));
        }
        if claims.iat < user.tokens_valid_after {
            return Err(refused("token_revoked"));
        }
        if let Some(session_id) = &claims.sid {
            let active = sessions::find(&self.store, &user.id, session_id)
                .await?
                .is_some_and(|s| s.revoked_at.is_none());
            if !active {
                return Err(refused("session_revoked"));
            }
        }
        Ok(Principal {
            user_id: claims.sub,
            session_id: claims.sid,
        })
    }
}
