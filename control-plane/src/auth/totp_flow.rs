//! TOTP second factor of the signed-in caller: enrolment, confirmation, and turning it off.

use std::net::IpAddr;

use gateway_edge::{ApiError, ErrorCode, Reason};

use super::{AuthService, Principal, mfa, users};
use crate::audit::Audit;

/// A wrong code from a caller who is signed in is a bad input (400), not a refused
/// credential: a 401 reads to clients as "signed out".
fn signed_in_input(err: ApiError) -> ApiError {
    if err.reason == Some(Reason::InvalidMfaCode) {
        ApiError {
            code: ErrorCode::BadRequest,
            ..err
        }
    } else {
        err
    }
}

impl AuthService {
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
        let codes = self
            .mfa
            .confirm(&user.id, &user.email, code, now)
            .await
            .map_err(signed_in_input)?;
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
                    .with_reason(Reason::MfaNotEnabled),
            );
        }
        if !self
            .mfa
            .verify_code(&user.id, &user.email, code, now)
            .await?
        {
            return Err(signed_in_input(mfa::invalid_code()));
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
}
