//! Sign-in: password, MFA second step, client credentials, and access-token verification.

use std::net::IpAddr;
use std::time::Duration;

use gateway_edge::{ApiError, ErrorCode, Reason};
use serde_json::json;

use super::onetime::{self, Purpose};
use super::users::{self, User, UserStatus};
use super::{
    AuthService, Principal, SigninOutcome, TokenResponse, hash_failed, limit, mfa, passwords,
    service_accounts, sessions,
};
use crate::audit::Audit;

/// Lifetime of a sign-in MFA challenge.
const MFA_CHALLENGE_TTL: Duration = Duration::from_secs(300);

fn invalid_credentials() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        "the email or password is not correct",
    )
    .with_reason(Reason::InvalidCredentials)
}

impl AuthService {
    /// Checks email and password; unknown accounts cost the same work and get the same
    /// answer as a wrong password.
    pub async fn signin(
        &self,
        email: &str,
        password: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<SigninOutcome, ApiError> {
        limit(&self.ip_limits.signin, "signin", ip, now)?;
        let (Ok(email), Some(password)) = (
            users::normalize_email(email),
            passwords::normalize(password),
        ) else {
            // still spend the hashing work so malformed input is not a timing oracle
            let _ = self.hasher.verify("", None).await;
            return Err(invalid_credentials());
        };
        // the login name is slowed down after repeated failures, whether or not it exists
        self.backoff
            .check("signin", &email, gateway_core::unix_now_ms())
            .await?;
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
                self.backoff
                    .failed("signin", &email, gateway_core::unix_now_ms())
                    .await?;
                let mut audit = Audit::new("auth.signin", "failed", now).ip(ip);
                if let Some((user, _)) = &found {
                    audit = audit.target(&user.id);
                }
                audit.record(&self.store).await;
                return Err(invalid_credentials());
            }
        };
        self.backoff.succeeded("signin", &email).await?;
        if user.status != UserStatus::Active {
            Audit::new("auth.signin", "refused", now)
                .ip(ip)
                .target(&user.id)
                .detail(json!({"reason": Reason::AccountDisabled.as_str()}))
                .record(&self.store)
                .await;
            return Err(
                ApiError::new(ErrorCode::Forbidden, "this account is disabled")
                    .with_reason(Reason::AccountDisabled),
            );
        }
        if self.settings.require_verified_email && !user.email_verified {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "verify your email address before signing in",
            )
            .with_reason(Reason::EmailNotVerified));
        }
        if let Some(credential) = &credential
            && self.hasher.needs_rehash(&credential.phc)
        {
            // upgrade hashes made with older parameters while the password is at hand
            let phc = self.hasher.hash(&password).await.map_err(hash_failed)?;
            users::set_password(&self.store, &user.id, phc, now).await?;
        }
        self.complete_signin(&user, ip, now).await
    }

    /// After the first factor: an MFA challenge when MFA is on, otherwise a session.
    pub(super) async fn complete_signin(
        &self,
        user: &User,
        ip: IpAddr,
        now: i64,
    ) -> Result<SigninOutcome, ApiError> {
        if user.mfa_enabled {
            let mfa_token = onetime::issue(
                &self.store,
                Purpose::MfaChallenge,
                &user.id,
                &user.email,
                MFA_CHALLENGE_TTL,
                now,
            )
            .await?;
            Audit::new("auth.signin", "mfa_required", now)
                .ip(ip)
                .target(&user.id)
                .record(&self.store)
                .await;
            return Ok(SigninOutcome::MfaRequired {
                mfa_required: true,
                mfa_token,
            });
        }
        self.open_session(user, false, ip, now)
            .await
            .map(SigninOutcome::Tokens)
    }

    async fn open_session(
        &self,
        user: &User,
        mfa: bool,
        ip: IpAddr,
        now: i64,
    ) -> Result<TokenResponse, ApiError> {
        let (session, refresh_token) = sessions::open(
            &self.store,
            &user.id,
            &self.settings.sessions,
            now,
            mfa,
            Some(ip.to_string()),
        )
        .await?;
        Audit::new("auth.signin", "ok", now)
            .ip(ip)
            .actor(&user.id)
            .target(&user.id)
            .detail(json!({"session_id": session.id, "mfa": mfa}))
            .record(&self.store)
            .await;
        self.token_response(
            &user.id,
            Some(&session.id),
            Some(refresh_token),
            now,
            user.tokens_valid_after,
        )
    }

    /// Second step of a sign-in with MFA: a TOTP code or a recovery code for the challenge.
    pub async fn mfa_verify(
        &self,
        mfa_token: &str,
        code: Option<&str>,
        recovery_code: Option<&str>,
        ip: IpAddr,
        now: i64,
    ) -> Result<TokenResponse, ApiError> {
        limit(&self.ip_limits.mfa, "mfa", ip, now)?;
        let invalid_challenge = || {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "the sign-in has expired; start again",
            )
            .with_reason(Reason::InvalidMfaToken)
        };
        let (challenge, _) = onetime::peek(&self.store, Purpose::MfaChallenge, mfa_token, now)
            .await?
            .ok_or_else(invalid_challenge)?;
        let Some((user, _)) = users::get(&self.store, &challenge.user_id)
            .await?
            .filter(|(u, _)| u.status == UserStatus::Active && u.mfa_enabled)
        else {
            return Err(invalid_challenge());
        };
        self.backoff
            .check("mfa", &user.id, gateway_core::unix_now_ms())
            .await?;
        let (accepted, method) = match (code, recovery_code) {
            (Some(code), None) => (
                self.mfa
                    .verify_code(&user.id, &user.email, code, now)
                    .await?,
                "totp",
            ),
            (None, Some(recovery)) => (
                self.mfa.use_recovery_code(&user.id, recovery).await?,
                "recovery_code",
            ),
            _ => {
                return Err(ApiError::bad_request("send either code or recovery_code")
                    .with_reason(Reason::InvalidBody));
            }
        };
        if !accepted {
            self.backoff
                .failed("mfa", &user.id, gateway_core::unix_now_ms())
                .await?;
            let usable = onetime::record_failure(
                &self.store,
                Purpose::MfaChallenge,
                mfa_token,
                mfa::MAX_CHALLENGE_FAILURES,
                now,
            )
            .await?;
            Audit::new("auth.mfa.verify", "failed", now)
                .ip(ip)
                .target(&user.id)
                .detail(json!({"method": method}))
                .record(&self.store)
                .await;
            return Err(if usable {
                mfa::invalid_code()
            } else {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "too many wrong codes; sign in again",
                )
                .with_reason(Reason::MfaAttemptsExhausted)
            });
        }
        self.backoff.succeeded("mfa", &user.id).await?;
        // the challenge is spent by exactly one success
        let Some((_, revision)) =
            onetime::peek(&self.store, Purpose::MfaChallenge, mfa_token, now).await?
        else {
            return Err(invalid_challenge());
        };
        if !onetime::consume(&self.store, Purpose::MfaChallenge, mfa_token, revision).await? {
            return Err(invalid_challenge());
        }
        Audit::new("auth.mfa.verify", "ok", now)
            .ip(ip)
            .actor(&user.id)
            .target(&user.id)
            .detail(json!({"method": method}))
            .record(&self.store)
            .await;
        self.open_session(&user, true, ip, now).await
    }

    /// OAuth 2.0 client-credentials grant: an access token for a service account.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        client_secret: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<TokenResponse, ApiError> {
        limit(&self.ip_limits.token, "token", ip, now)?;
        self.backoff
            .check("client", client_id, gateway_core::unix_now_ms())
            .await?;
        let invalid_client = || {
            ApiError::new(ErrorCode::Unauthenticated, "client authentication failed")
                .with_reason(Reason::InvalidClient)
        };
        let Some(account) =
            service_accounts::verify(&self.store, client_id, client_secret, now).await?
        else {
            self.backoff
                .failed("client", client_id, gateway_core::unix_now_ms())
                .await?;
            Audit::new("auth.token", "failed", now)
                .ip(ip)
                .target(client_id.get(..64).unwrap_or(client_id))
                .record(&self.store)
                .await;
            return Err(invalid_client());
        };
        self.backoff.succeeded("client", client_id).await?;
        Audit::new("auth.token", "ok", now)
            .ip(ip)
            .actor(&account.id)
            .target(&account.id)
            .record(&self.store)
            .await;
        self.token_response(&account.id, None, None, now, account.tokens_valid_after)
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
        if claims.sub.starts_with(gateway_core::token::SERVICE_PREFIX) {
            let refused = |reason| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "a valid bearer token is required",
                )
                .with_reason(reason)
            };
            let Some((account, _)) = service_accounts::get(&self.store, &claims.sub).await? else {
                return Err(refused(Reason::UnknownPrincipal));
            };
            if account.disabled {
                return Err(refused(Reason::PrincipalDisabled));
            }
            if account.tokens_valid_after > 0 && claims.iat <= account.tokens_valid_after {
                return Err(refused(Reason::TokenRevoked));
            }
            return Ok(Principal {
                user_id: claims.sub,
                session_id: None,
            });
        }
        let refused = |reason| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "a valid bearer token is required",
            )
            .with_reason(reason)
        };
        let Some((user, _)) = users::get(&self.store, &claims.sub).await? else {
            return Err(refused(Reason::UnknownPrincipal));
        };
        if user.status != UserStatus::Active {
            return Err(refused(Reason::PrincipalDisabled));
        }
        if user.tokens_valid_after > 0 && claims.iat <= user.tokens_valid_after {
            return Err(refused(Reason::TokenRevoked));
        }
        if let Some(session_id) = &claims.sid {
            let active = sessions::find(&self.store, &user.id, session_id)
                .await?
                .is_some_and(|s| s.revoked_at.is_none());
            if !active {
                return Err(refused(Reason::SessionRevoked));
            }
        }
        Ok(Principal {
            user_id: claims.sub,
            session_id: claims.sid,
        })
    }
}
