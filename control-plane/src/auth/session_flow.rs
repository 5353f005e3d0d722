//! Session lifecycle after sign-in: refresh-token rotation, sign-out, and global sign-out.

use std::net::IpAddr;

use gateway_edge::ApiError;
use serde_json::json;

use super::sessions::{self, RefreshError};
use super::users::{self, UserStatus};
use super::{AuthService, Principal, TokenResponse};
use crate::audit::Audit;

impl AuthService {
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
                            sessions::ended_alone::USER_INACTIVE,
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
                // the session's access tokens may be in a thief's hands too
                self.ended_alone(&user_id, &session_id, now).await?;
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

    /// Lists session `sid` of a user in the user's published document, so the data planes
    /// refuse its access tokens, until those have expired (the access-token lifetime, the
    /// verification leeway, and the second a token's `iat` can be ahead).
    pub async fn ended_alone(&self, user_id: &str, sid: &str, now: i64) -> Result<(), ApiError> {
        let until =
            now + self.settings.access_ttl.as_secs() as i64 + gateway_core::token::LEEWAY_SECS + 1;
        users::note_ended_session(&self.store, user_id, sid, until, now).await?;
        self.publisher.publish(user_id, now).await?;
        Ok(())
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
            sessions::revoke(
                &self.store,
                &principal.user_id,
                session_id,
                now,
                sessions::ended_alone::SIGNOUT,
            )
            .await?;
            // the data planes refuse the session's access tokens from now on (noted even
            // when a concurrent sign-out ended it first: nothing changes twice)
            self.ended_alone(&principal.user_id, session_id, now)
                .await?;
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
}
