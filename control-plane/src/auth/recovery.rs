//! Password recovery: the forgot-password mail and the reset with its one-time token.

use std::net::IpAddr;
use std::time::Duration;

use gateway_edge::{ApiError, Reason};

use super::onetime::{self, Purpose};
use super::users::{self, UserStatus};
use super::{AuthService, hash_failed, invalid_token, limit};
use crate::audit::Audit;
use crate::mail::Mail;

impl AuthService {
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
            crate::limits::count_limited("forgot", Reason::MailboxBudget);
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
}
