//! Google sign-in: the start of the flow and the provider's callback (sign-in, sign-up, or link).

use std::net::IpAddr;

use gateway_edge::{ApiError, ErrorCode, Reason};
use serde_json::json;

use super::users::{self, UserStatus};
use super::{AuthService, CallbackOutcome, Principal, limit, oidc};
use crate::audit::Audit;

impl AuthService {
    /// The configured Google sign-in, or 404.
    fn google(&self) -> Result<&oidc::GoogleOidc, ApiError> {
        self.google.as_deref().ok_or_else(|| {
            ApiError::not_found("Google sign-in is not configured")
                .with_reason(Reason::ProviderNotConfigured)
        })
    }

    /// Starts a Google sign-in, or (with `linking`) the link of a Google identity to the
    /// signed-in user: the provider URL, and the secret of the cookie that binds the flow
    /// to this browser. A callback from another browser is refused (RFC 9700 §4.7): for a
    /// link, that would join the victim's Google identity to the attacker's account (link
    /// CSRF); for a sign-in, it would sign the victim into the attacker's account (login
    /// CSRF, OpenID Connect Core §3.1.2.1 on binding `state` to the user agent).
    pub async fn google_start(
        &self,
        linking: Option<&Principal>,
        ip: IpAddr,
        now: i64,
    ) -> Result<(String, String), ApiError> {
        let google = self.google()?;
        // each start stores a pending record: bounded per client
        limit(&self.ip_limits.oidc, "oidc", ip, now)?;
        let link_user = match linking {
            Some(principal) => Some(self.user(principal).await?.id),
            None => None,
        };
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        let secret =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret);
        let hash = gateway_store::hash_key_token(secret.as_bytes());
        let url = google.start(link_user, Some(hash), now).await?;
        Ok((url, secret))
    }

    /// The provider's redirect back: links the identity, or signs in (creating the account
    /// on first use), never taking over an existing account silently.
    pub async fn google_callback(
        &self,
        code: &str,
        state: &str,
        flow_cookie: Option<&str>,
        ip: IpAddr,
        now: i64,
    ) -> Result<CallbackOutcome, ApiError> {
        let google = self.google()?;
        limit(&self.ip_limits.oidc, "oidc", ip, now)?;
        // the browser that completes a flow is the one that started it; checked before the
        // flow is used up or the provider asked, so a leaked callback URL burns nothing
        let pending = google.pending(state, now).await?;
        let bound = match (pending.binding.as_deref(), flow_cookie) {
            (Some(hash), Some(secret)) => {
                let presented = gateway_store::hash_key_token(secret.as_bytes());
                gateway_edge::http::constant_time_eq(presented.as_bytes(), hash.as_bytes())
            }
            _ => false,
        };
        if !bound {
            let (action, target, reason, message) = match &pending.link_user_id {
                Some(user_id) => (
                    "auth.identity.link",
                    Some(user_id.as_str()),
                    Reason::LinkNotBound,
                    "this link was started in another browser; start it again from here",
                ),
                None => (
                    "auth.signin.google",
                    None,
                    Reason::SigninNotBound,
                    "this sign-in was started in another browser; start it again from here",
                ),
            };
            let mut audit = Audit::new(action, "refused", now)
                .ip(ip)
                .detail(json!({"provider": oidc::GOOGLE, "reason": reason.as_str()}));
            if let Some(target) = target {
                audit = audit.target(target);
            }
            audit.record(&self.store).await;
            return Err(ApiError::new(ErrorCode::Forbidden, message).with_reason(reason));
        }
        let (identity, pending) = google.finish(code, state, now).await?;
        if let Some(user_id) = pending.link_user_id {
            oidc::link(&self.store, oidc::GOOGLE, &identity, &user_id, now).await?;
            // the provider vouches for the address the account uses: it is verified now
            if identity.email_verified
                && let Some(email) = identity.email.as_deref()
                && let Ok(email) = users::normalize_email(email)
            {
                users::update(&self.store, &user_id, now, |u| {
                    if u.email == email {
                        u.email_verified = true;
                    }
                })
                .await?;
            }
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
                        .with_reason(Reason::EmailRequired)
                    })?;
                match users::find_by_email(&self.store, &email).await? {
                    Some((existing, _)) => {
                        // auto-link needs both sides to have proven the address: the
                        // provider's verified email alone would hand an account that someone
                        // else registered (and never verified) to whoever signs in with Google,
                        // with the squatter's password still working (account pre-hijacking,
                        // OpenID Connect Core §16.16, RFC 9700 §4.4)
                        if !(google.settings().auto_link_verified_email
                            && identity.email_verified
                            && existing.email_verified)
                        {
                            Audit::new("auth.oidc.signin", "refused", now)
                                .ip(ip)
                                .target(&existing.id)
                                .detail(json!({"reason": Reason::AccountExists.as_str()}))
                                .record(&self.store)
                                .await;
                            return Err(ApiError::new(
                                ErrorCode::Conflict,
                                "an account with this email exists; sign in to it and link Google from there",
                            )
                            .with_reason(Reason::AccountExists));
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
                    .with_reason(Reason::AccountDisabled),
            );
        }
        self.complete_signin(&user, ip, now)
            .await
            .map(CallbackOutcome::SignedIn)
    }
}
