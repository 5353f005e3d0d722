//! Account creation: sign-up, email verification, and the configured first platform admin.

use std::net::IpAddr;

use gateway_edge::{ApiError, Reason};
use serde_json::json;

use super::onetime::{self, Purpose};
use super::users::{self, User};
use super::{AuthService, BootstrapAdmin, hash_failed, invalid_token, limit};
use crate::audit::Audit;
use crate::mail::Mail;

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
                        ApiError::bad_request(format!(
                            "the password in --bootstrap-admin-password-file (GATEWAY_BOOTSTRAP_ADMIN_PASSWORD_FILE) is refused: {err}"
                        ))
                    })?;
                let phc = self.hasher.hash(&password).await.map_err(hash_failed)?;
                match users::create(&self.store, &email, Some(phc), true, now).await {
                    Ok(user) => user,
                    // another replica created it a moment ago
                    Err(err) if err.reason == Some(Reason::EmailTaken) => {
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
}
