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

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_core::token::{ACCESS_TOKEN_TYPE, AccessClaims};
use gateway_edge::{ApiError, ErrorCode};
use gateway_store::Store;
use serde::Serialize;
use serde_json::json;

use crate::audit::Audit;
use crate::keys::KeyManager;
use crate::limits::{AccountBackoff, IpLimits, KeyedLimiter, too_many};
use crate::mail::{Mail, Mailer};
use onetime::Purpose;
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
#[derive(Clone, Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// The answer to a sign-in: tokens, or a second-factor challenge.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum SigninOutcome {
    Tokens(TokenResponse),
    MfaRequired {
        mfa_required: bool,
        mfa_token: String,
    },
}

/// What a provider callback did.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum CallbackOutcome {
    SignedIn(SigninOutcome),
    Linked {
        linked: bool,
        provider: &'static str,
    },
}

/// Lifetime of a sign-in MFA challenge.
const MFA_CHALLENGE_TTL: Duration = Duration::from_secs(300);

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
        crate::limits::count_limited(name, "rate_limited");
        too_many(wait, "rate_limited")
    })
}

fn invalid_token() -> ApiError {
    ApiError::bad_request("the token is not valid or has expired").with_reason("invalid_token")
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
        limit(&self.ip_limits.signup, "signup", ip, now)?;
        let email = users::normalize_email(email)?;
        let password = self
            .settings
            .password_policy
            .check(password, &email)
            .map_err(|err| ApiError::bad_request(err.to_string()).with_reason(err.code()))?;
        let phc = self.hasher.hash(&password).await.map_err(hash_failed)?;
        let result = users::create(&self.store, &email, Some(phc), false, now).await;
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
                    .await;
                // every principal has a document from the start
                self.publisher.publish(&user.id, now).await?;
                self.send_verification(user, now).await?;
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

    /// Mails a fresh email-verification token to the user's address.
    pub async fn send_verification(&self, user: &User, now: i64) -> Result<(), ApiError> {
        let token = onetime::issue(
            &self.store,
            Purpose::VerifyEmail,
            &user.id,
            &user.email,
            self.settings.one_time_ttl,
            now,
        )
        .await?;
        let minutes = self.settings.one_time_ttl.as_secs() / 60;
        self.mailer.send_later(
            Mail {
                to: user.email.clone(),
                subject: "Confirm your email address".into(),
                body: format!(
                    "Confirm your email address by opening this link:\n\n{}/verify-email?token={token}\n\nor by submitting this code: {token}\n\nIt expires in {minutes} minutes. If you did not sign up, ignore this message.",
                    self.settings.public_url.trim_end_matches('/')
                ),
            },
            "verify_email",
        );
        Ok(())
    }

    /// Confirms an address with a verification token (one use).
    pub async fn verify_email(&self, token: &str, ip: IpAddr, now: i64) -> Result<(), ApiError> {
        let (record, revision) = onetime::peek(&self.store, Purpose::VerifyEmail, token, now)
            .await?
            .ok_or_else(invalid_token)?;
        let Some((user, _)) = users::get(&self.store, &record.user_id).await? else {
            return Err(invalid_token());
        };
        if user.email != record.email
            || !onetime::consume(&self.store, Purpose::VerifyEmail, token, revision).await?
        {
            return Err(invalid_token());
        }
        users::update(&self.store, &user.id, now, |u| u.email_verified = true).await?;
        Audit::new("auth.email.verify", "ok", now)
            .ip(ip)
            .actor(&user.id)
            .target(&user.id)
            .record(&self.store)
            .await;
        Ok(())
    }

    /// Starts a password reset. Answers the same whether or not the address has an account;
    /// the token and the mail are made in the background so the timing does not tell either.
    pub async fn forgot(&self, email: &str, ip: IpAddr, now: i64) -> Result<(), ApiError> {
        limit(&self.ip_limits.forgot, "forgot", ip, now)?;
        let Ok(email) = users::normalize_email(email) else {
            return Ok(());
        };
        // a mailbox gets a bounded number of reset mails per hour (flooding), silently
        let within_budget = self
            .backoff
            .spend(
                "forgot",
                &email,
                self.settings.forgot_per_account_per_hour,
                Duration::from_secs(3600),
                now,
            )
            .await?;
        if !within_budget {
            // silent to the client (it would tell the address exists), counted here
            crate::limits::count_limited("forgot", "mailbox_budget");
        }
        let found = users::find_by_email(&self.store, &email).await?;
        let mut audit = Audit::new(
            "auth.forgot",
            if within_budget {
                "accepted"
            } else {
                "throttled"
            },
            now,
        )
        .ip(ip);
        if let Some((user, _)) =
            found.filter(|(u, _)| within_budget && u.status == UserStatus::Active)
        {
            audit = audit.target(&user.id);
            let store = self.store.clone();
            let mailer = self.mailer.clone();
            let ttl = self.settings.one_time_ttl;
            let link_base = self.settings.public_url.trim_end_matches('/').to_string();
            tokio::spawn(async move {
                match onetime::issue(&store, Purpose::Reset, &user.id, &user.email, ttl, now).await {
                    Ok(token) => mailer.send_later(
                        Mail {
                            to: user.email.clone(),
                            subject: "Reset your password".into(),
                            body: format!(
                                "Choose a new password by opening this link:\n\n{link_base}/reset-password?token={token}\n\nor by submitting this code: {token}\n\nIt expires in {} minutes and works once. Every session of your account will be signed out. If you did not ask for this, ignore this message.",
                                ttl.as_secs() / 60
                            ),
                        },
                        "password_reset",
                    ),
                    Err(err) => tracing::error!(error = %err, "reset token not issued"),
                }
            });
        }
        audit.record(&self.store).await;
        Ok(())
    }

    /// Sets a new password with a reset token (one use): every session ends and every
    /// access token issued so far is refused.
    pub async fn reset(
        &self,
        token: &str,
        new_password: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<(), ApiError> {
        limit(&self.ip_limits.reset, "reset", ip, now)?;
        let (record, revision) = onetime::peek(&self.store, Purpose::Reset, token, now)
            .await?
            .ok_or_else(invalid_token)?;
        let Some((user, _)) = users::get(&self.store, &record.user_id).await? else {
            return Err(invalid_token());
        };
        // a token made before the last password change is spent
        if users::password(&self.store, &user.id)
            .await?
            .is_some_and(|c| c.updated_at > record.created_at)
        {
            return Err(invalid_token());
        }
        let password = self
            .settings
            .password_policy
            .check(new_password, &user.email)
            .map_err(|err| ApiError::bad_request(err.to_string()).with_reason(err.code()))?;
        let phc = self.hasher.hash(&password).await.map_err(hash_failed)?;
        if !onetime::consume(&self.store, Purpose::Reset, token, revision).await? {
            return Err(invalid_token());
        }
        users::set_password(&self.store, &user.id, phc, now).await?;
        // the reset link proved control of the mailbox
        users::update(&self.store, &user.id, now, |u| u.email_verified = true).await?;
        self.sign_out_everywhere(&user.id, "password_reset", now)
            .await?;
        Audit::new("auth.reset", "ok", now)
            .ip(ip)
            .actor(&user.id)
            .target(&user.id)
            .record(&self.store)
            .await;
        Ok(())
    }

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
        self.backoff.check("signin", &email, now).await?;
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
                self.backoff.failed("signin", &email, now).await?;
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
        self.complete_signin(&user, ip, now).await
    }

    /// After the first factor: an MFA challenge when MFA is on, otherwise a session.
    async fn complete_signin(
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
            .with_reason("invalid_mfa_token")
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
        self.backoff.check("mfa", &user.id, now).await?;
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
                    .with_reason("invalid_body"));
            }
        };
        if !accepted {
            self.backoff.failed("mfa", &user.id, now).await?;
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
                .with_reason("mfa_attempts_exhausted")
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

    /// Starts TOTP enrolment for the caller.
    pub async fn totp_enroll(
        &self,
        principal: &Principal,
        now: i64,
    ) -> Result<mfa::Enrolment, ApiError> {
        let user = self.user(principal).await?;
        self.mfa.enroll(&user.id, &user.email, now).await
    }

    /// Confirms TOTP with a first code and turns MFA on; returns the recovery codes.
    pub async fn totp_confirm(
        &self,
        principal: &Principal,
        code: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<Vec<String>, ApiError> {
        let user = self.user(principal).await?;
        let codes = self.mfa.confirm(&user.id, &user.email, code, now).await?;
        users::update(&self.store, &user.id, now, |u| u.mfa_enabled = true).await?;
        Audit::new("auth.mfa.enable", "ok", now)
            .ip(ip)
            .actor(&user.id)
            .target(&user.id)
            .record(&self.store)
            .await;
        Ok(codes)
    }

    /// Turns MFA off after a valid code.
    pub async fn totp_disable(
        &self,
        principal: &Principal,
        code: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<(), ApiError> {
        let user = self.user(principal).await?;
        if !user.mfa_enabled {
            return Err(
                ApiError::new(ErrorCode::Conflict, "two-factor authentication is off")
                    .with_reason("mfa_not_enabled"),
            );
        }
        if !self
            .mfa
            .verify_code(&user.id, &user.email, code, now)
            .await?
        {
            return Err(mfa::invalid_code());
        }
        self.mfa.remove(&user.id).await?;
        users::update(&self.store, &user.id, now, |u| u.mfa_enabled = false).await?;
        Audit::new("auth.mfa.disable", "ok", now)
            .ip(ip)
            .actor(&user.id)
            .target(&user.id)
            .record(&self.store)
            .await;
        Ok(())
    }

    async fn user(&self, principal: &Principal) -> Result<User, ApiError> {
        users::get(&self.store, &principal.user_id)
            .await?
            .map(|(u, _)| u)
            .ok_or_else(|| ApiError::not_found("no such user"))
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
                let valid_after = match users::get(&self.store, &session.user_id).await? {
                    Some((user, _)) if user.status == UserStatus::Active => user.tokens_valid_after,
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
                };
                self.token_response(
                    &session.user_id,
                    Some(&session.id),
                    Some(next),
                    now,
                    valid_after,
                )
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
            self.sign_out_everywhere(&principal.user_id, "signout_all", now)
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

    /// An access token for `subject`. `valid_after` is the principal's
    /// `tokens_valid_after`: tokens issued at or before it are refused everywhere, so a token
    /// issued in the same second as a sign-out carries the next second as `iat`.
    /// Global sign-out of a user: every session ends, every access token issued so far is
    /// refused (`tokens_valid_after`), and the user's published document says so.
    /// Returns how many sessions were active.
    pub async fn sign_out_everywhere(
        &self,
        user_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<usize, ApiError> {
        let ended = sessions::revoke_all(&self.store, user_id, now, reason).await?;
        users::update(&self.store, user_id, now, |u| {
            u.tokens_valid_after = users::revoke_tokens(u.tokens_valid_after, now);
        })
        .await?;
        self.publisher.publish(user_id, now).await?;
        Ok(ended)
    }

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

    fn google(&self) -> Result<&oidc::GoogleOidc, ApiError> {
        self.google.as_deref().ok_or_else(|| {
            ApiError::not_found("Google sign-in is not configured")
                .with_reason("provider_not_configured")
        })
    }

    /// Starts a Google sign-in, or (with `linking`) the link of a Google identity to the
    /// signed-in user.
    pub async fn google_start(
        &self,
        linking: Option<&Principal>,
        now: i64,
    ) -> Result<String, ApiError> {
        let google = self.google()?;
        let link_user = match linking {
            Some(principal) => Some(self.user(principal).await?.id),
            None => None,
        };
        google.start(link_user, now).await
    }

    /// The provider's redirect back: links the identity, or signs in (creating the account
    /// on first use), never taking over an existing account silently.
    pub async fn google_callback(
        &self,
        code: &str,
        state: &str,
        ip: IpAddr,
        now: i64,
    ) -> Result<CallbackOutcome, ApiError> {
        let google = self.google()?;
        let (identity, pending) = google.finish(code, state, now).await?;
        if let Some(user_id) = pending.link_user_id {
            oidc::link(&self.store, oidc::GOOGLE, &identity, &user_id, now).await?;
            Audit::new("auth.identity.link", "ok", now)
                .ip(ip)
                .actor(&user_id)
                .target(&user_id)
                .detail(json!({"provider": oidc::GOOGLE}))
                .record(&self.store)
                .await;
            return Ok(CallbackOutcome::Linked {
                linked: true,
                provider: oidc::GOOGLE,
            });
        }
        let user = match oidc::linked_user(&self.store, oidc::GOOGLE, &identity.subject).await? {
            Some(link) => users::get(&self.store, &link.user_id)
                .await?
                .map(|(u, _)| u)
                .ok_or_else(|| ApiError::internal("identity without user", &link.user_id))?,
            None => {
                let email = identity
                    .email
                    .as_deref()
                    .map(users::normalize_email)
                    .transpose()?
                    .ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::Forbidden,
                            "the provider did not share an email address",
                        )
                        .with_reason("email_required")
                    })?;
                match users::find_by_email(&self.store, &email).await? {
                    Some((existing, _)) => {
                        if !(google.settings().auto_link_verified_email && identity.email_verified)
                        {
                            Audit::new("auth.oidc.signin", "refused", now)
                                .ip(ip)
                                .target(&existing.id)
                                .detail(json!({"reason": "account_exists"}))
                                .record(&self.store)
                                .await;
                            return Err(ApiError::new(
                                ErrorCode::Conflict,
                                "an account with this email exists; sign in to it and link Google from there",
                            )
                            .with_reason("account_exists"));
                        }
                        oidc::link(&self.store, oidc::GOOGLE, &identity, &existing.id, now).await?;
                        existing
                    }
                    None => {
                        let user =
                            users::create(&self.store, &email, None, identity.email_verified, now)
                                .await?;
                        oidc::link(&self.store, oidc::GOOGLE, &identity, &user.id, now).await?;
                        self.publisher.publish(&user.id, now).await?;
                        Audit::new("auth.signup", "ok", now)
                            .ip(ip)
                            .actor(&user.id)
                            .target(&user.id)
                            .detail(json!({"provider": oidc::GOOGLE}))
                            .record(&self.store)
                            .await;
                        user
                    }
                }
            }
        };
        if user.status != UserStatus::Active {
            return Err(
                ApiError::new(ErrorCode::Forbidden, "this account is disabled")
                    .with_reason("account_disabled"),
            );
        }
        self.complete_signin(&user, ip, now)
            .await
            .map(CallbackOutcome::SignedIn)
    }

    /// Makes sure the configured first admin exists, holds `platform_admin` platform-wide
    /// and has a published document (idempotent; safe on two replicas at once).
    pub async fn bootstrap_admin(&self, admin: &BootstrapAdmin, now: i64) -> Result<(), ApiError> {
        let email = users::normalize_email(&admin.email)?;
        let user = match users::find_by_email(&self.store, &email).await? {
            Some((user, _)) => user,
            None => {
                let password = self
                    .settings
                    .password_policy
                    .check(&admin.password, &email)
                    .map_err(|err| {
                        ApiError::bad_request(format!("bootstrap admin password: {err}"))
                    })?;
                let phc = self.hasher.hash(&password).await.map_err(hash_failed)?;
                match users::create(&self.store, &email, Some(phc), true, now).await {
                    Ok(user) => user,
                    // another replica created it a moment ago
                    Err(err) if err.reason == Some("email_taken") => {
                        users::find_by_email(&self.store, &email)
                            .await?
                            .map(|(u, _)| u)
                            .ok_or(err)?
                    }
                    Err(err) => return Err(err),
                }
            }
        };
        let changed = crate::iam::assignments::change(
            &self.store,
            &user.id,
            &gateway_core::authz::Scope::Platform,
            gateway_core::authz::PLATFORM_ADMIN,
            true,
            now,
        )
        .await?;
        self.publisher.publish(&user.id, now).await?;
        if changed {
            tracing::info!(user_id = %user.id, "bootstrap platform admin assigned");
            Audit::new("admin.bootstrap", "ok", now)
                .target(&user.id)
                .record(&self.store)
                .await;
        }
        Ok(())
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
        self.backoff.check("client", client_id, now).await?;
        let invalid_client = || {
            ApiError::new(ErrorCode::Unauthenticated, "client authentication failed")
                .with_reason("invalid_client")
        };
        let Some(account) =
            service_accounts::verify(&self.store, client_id, client_secret, now).await?
        else {
            self.backoff.failed("client", client_id, now).await?;
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
                return Err(refused("unknown_principal"));
            };
            if account.disabled {
                return Err(refused("principal_disabled"));
            }
            if account.tokens_valid_after > 0 && claims.iat <= account.tokens_valid_after {
                return Err(refused("token_revoked"));
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
            return Err(refused("unknown_principal"));
        };
        if user.status != UserStatus::Active {
            return Err(refused("principal_disabled"));
        }
        if user.tokens_valid_after > 0 && claims.iat <= user.tokens_valid_after {
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
