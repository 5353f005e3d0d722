//! TOTP second factor (RFC 6238, via totp-rs): secrets sealed under the key-encryption key,
//! ±1 step, every accepted step refused afterwards (replay), ten one-time recovery codes
//! stored as SHA-256, and sign-in challenges with a bounded number of attempts.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gateway_edge::{ApiError, ErrorCode, Reason};
use gateway_store::{Bucket, Record, Revision, Store, StoreError, hash_key_token};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::keys::Kek;

/// Issuer shown by authenticator apps.
pub const ISSUER: &str = "Cloudlysis";
/// Recovery codes handed out at confirmation.
pub const RECOVERY_CODES: usize = 10;
/// Wrong codes allowed per sign-in challenge.
pub const MAX_CHALLENGE_FAILURES: u32 = 5;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TotpRecord {
    /// The 160-bit secret, sealed under the KEK for this user.
    sealed_secret: String,
    pub confirmed: bool,
    pub created_at: i64,
    /// Last time step accepted; codes of this step or older are refused.
    #[serde(default)]
    pub last_step: u64,
}

impl Record for TotpRecord {
    const KIND: &'static str = "totp";
    const VERSION: u32 = 1;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RecoveryRecord {
    /// SHA-256 (hex) of each unused code.
    hashes: Vec<String>,
    created_at: i64,
}

impl Record for RecoveryRecord {
    const KIND: &'static str = "recovery_codes";
    const VERSION: u32 = 1;
}

fn totp_key(user_id: &str) -> String {
    format!("mfa.{user_id}")
}

fn recovery_key(user_id: &str) -> String {
    format!("recovery.{user_id}")
}

fn seal_context(user_id: &str) -> String {
    format!("cloudlysis-gateway.totp.v1:{user_id}")
}

fn record_err(err: gateway_store::RecordError) -> ApiError {
    ApiError::internal("mfa record unreadable", &err)
}

fn totp(secret: Vec<u8>, account: &str) -> Result<totp_rs::Totp, ApiError> {
    totp_rs::Builder::new()
        .with_secret(secret)
        .with_account_name(account.replace(':', ""))
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|err| ApiError::internal("totp", &err))
}

/// What enrolment shows the user once.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Enrolment {
    pub secret: String,
    pub otpauth_uri: String,
    pub qr_png_base64: String,
}

/// The otpauth URI as a QR code, PNG, base64.
fn qr_png_base64(uri: &str) -> Result<String, ApiError> {
    let qr = qrcodegen::QrCode::encode_text(uri, qrcodegen::QrCodeEcc::Medium)
        .map_err(|err| ApiError::internal("qr code", &format!("{err:?}")))?;
    const SCALE: i32 = 6;
    const BORDER: i32 = 4;
    let side = (qr.size() + 2 * BORDER) * SCALE;
    let mut pixels = Vec::with_capacity((side * side) as usize);
    for y in 0..side {
        for x in 0..side {
            let dark = qr.get_module(x / SCALE - BORDER, y / SCALE - BORDER);
            pixels.push(if dark { 0u8 } else { 255u8 });
        }
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, side as u32, side as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .map_err(|err| ApiError::internal("png", &err))?;
        writer
            .write_image_data(&pixels)
            .map_err(|err| ApiError::internal("png", &err))?;
    }
    Ok(STANDARD.encode(png_bytes))
}

fn recovery_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // 16 characters of a 32-symbol alphabet: 80 bits
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

fn normalize_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn conflict(reason: Reason, message: &str) -> ApiError {
    ApiError::new(ErrorCode::Conflict, message).with_reason(reason)
}

/// TOTP and recovery-code storage of one deployment.
#[derive(Clone)]
pub struct Mfa {
    pub store: Store,
    pub kek: Arc<Kek>,
}

impl Mfa {
    async fn load(&self, user_id: &str) -> Result<Option<(TotpRecord, Revision)>, ApiError> {
        match self
            .store
            .kv(Bucket::Credentials)
            .get(&totp_key(user_id))
            .await?
        {
            Some(entry) => Ok(Some((
                TotpRecord::from_bytes(&entry.value).map_err(record_err)?,
                entry.revision,
            ))),
            None => Ok(None),
        }
    }

    fn generator(
        &self,
        user_id: &str,
        email: &str,
        record: &TotpRecord,
    ) -> Result<totp_rs::Totp, ApiError> {
        let secret = self
            .kek
            .open(&seal_context(user_id), &record.sealed_secret)
            .map_err(|err| ApiError::internal("totp secret", &err))?;
        totp(secret, email)
    }

    /// Starts (or restarts) enrolment; refused while a confirmed factor exists.
    pub async fn enroll(
        &self,
        user_id: &str,
        email: &str,
        now: i64,
    ) -> Result<Enrolment, ApiError> {
        if self.load(user_id).await?.is_some_and(|(r, _)| r.confirmed) {
            return Err(conflict(
                Reason::MfaAlreadyEnabled,
                "two-factor authentication is already on",
            ));
        }
        let mut secret = vec![0u8; 20];
        rand::rng().fill_bytes(&mut secret);
        let generator = totp(secret.clone(), email)?;
        let record = TotpRecord {
            sealed_secret: self
                .kek
                .seal(&seal_context(user_id), &secret)
                .map_err(|err| ApiError::internal("totp secret", &err))?,
            confirmed: false,
            created_at: now,
            last_step: 0,
        };
        self.store
            .kv(Bucket::Credentials)
            .put(&totp_key(user_id), record.to_bytes().map_err(record_err)?)
            .await?;
        let otpauth_uri = generator
            .to_url()
            .map_err(|err| ApiError::internal("otpauth uri", &err))?;
        Ok(Enrolment {
            secret: totp_rs::Secret::from(secret).to_base32(),
            qr_png_base64: qr_png_base64(&otpauth_uri)?,
            otpauth_uri,
        })
    }

    /// Accepts `code` once: its step must be newer than the last accepted one, recorded by
    /// compare-and-set so two replicas cannot both accept it.
    async fn accept_code(
        &self,
        user_id: &str,
        email: &str,
        code: &str,
        now: i64,
        want_confirmed: bool,
    ) -> Result<bool, ApiError> {
        for _ in 0..4 {
            let Some((record, revision)) = self.load(user_id).await? else {
                return Ok(false);
            };
            if record.confirmed != want_confirmed {
                return Ok(false);
            }
            let generator = self.generator(user_id, email, &record)?;
            let Some(step) = generator.check(code.trim(), now.max(0) as u64) else {
                return Ok(false);
            };
            if step <= record.last_step {
                return Ok(false);
            }
            let accepted = TotpRecord {
                last_step: step,
                confirmed: true,
                ..record
            };
            match self
                .store
                .kv(Bucket::Credentials)
                .update(
                    &totp_key(user_id),
                    accepted.to_bytes().map_err(record_err)?,
                    revision,
                )
                .await
            {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(false)
    }

    /// Confirms enrolment with a first code; returns the recovery codes (shown once).
    pub async fn confirm(
        &self,
        user_id: &str,
        email: &str,
        code: &str,
        now: i64,
    ) -> Result<Vec<String>, ApiError> {
        match self.load(user_id).await? {
            None => return Err(conflict(Reason::MfaNotEnrolled, "start enrolment first")),
            Some((record, _)) if record.confirmed => {
                return Err(conflict(
                    Reason::MfaAlreadyEnabled,
                    "two-factor authentication is already on",
                ));
            }
            Some(_) => {}
        }
        if !self.accept_code(user_id, email, code, now, false).await? {
            return Err(invalid_code());
        }
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        let record = RecoveryRecord {
            hashes: codes
                .iter()
                .map(|c| hash_key_token(normalize_recovery(c).as_bytes()))
                .collect(),
            created_at: now,
        };
        self.store
            .kv(Bucket::Credentials)
            .put(
                &recovery_key(user_id),
                record.to_bytes().map_err(record_err)?,
            )
            .await?;
        Ok(codes)
    }

    /// Checks a sign-in code against the confirmed factor (once per step).
    pub async fn verify_code(
        &self,
        user_id: &str,
        email: &str,
        code: &str,
        now: i64,
    ) -> Result<bool, ApiError> {
        self.accept_code(user_id, email, code, now, true).await
    }

    /// Uses up one recovery code.
    pub async fn use_recovery_code(&self, user_id: &str, code: &str) -> Result<bool, ApiError> {
        let wanted = hash_key_token(normalize_recovery(code).as_bytes());
        let kv = self.store.kv(Bucket::Credentials);
        for _ in 0..4 {
            let Some(entry) = kv.get(&recovery_key(user_id)).await? else {
                return Ok(false);
            };
            let mut record = RecoveryRecord::from_bytes(&entry.value).map_err(record_err)?;
            let Some(index) = record
                .hashes
                .iter()
                .position(|h| bool::from(h.as_bytes().ct_eq(wanted.as_bytes())))
            else {
                return Ok(false);
            };
            record.hashes.remove(index);
            match kv
                .update(
                    &recovery_key(user_id),
                    record.to_bytes().map_err(record_err)?,
                    entry.revision,
                )
                .await
            {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(false)
    }

    /// Removes the factor and the recovery codes.
    pub async fn remove(&self, user_id: &str) -> Result<(), ApiError> {
        let kv = self.store.kv(Bucket::Credentials);
        kv.delete(&totp_key(user_id), None).await?;
        kv.delete(&recovery_key(user_id), None).await?;
        Ok(())
    }

    /// Revokes every unused recovery code (the factor stays).
    pub async fn revoke_recovery_codes(&self, user_id: &str) -> Result<(), ApiError> {
        self.store
            .kv(Bucket::Credentials)
            .delete(&recovery_key(user_id), None)
            .await?;
        Ok(())
    }

    /// Unused recovery codes left.
    pub async fn recovery_codes_left(&self, user_id: &str) -> Result<usize, ApiError> {
        match self
            .store
            .kv(Bucket::Credentials)
            .get(&recovery_key(user_id))
            .await?
        {
            Some(entry) => Ok(RecoveryRecord::from_bytes(&entry.value)
                .map_err(record_err)?
                .hashes
                .len()),
            None => Ok(0),
        }
    }
}

pub fn invalid_code() -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, "the code is not valid")
        .with_reason(Reason::InvalidMfaCode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_long_and_normalise() {
        let code = recovery_code();
        assert_eq!(code.len(), 19);
        assert_eq!(normalize_recovery(&code).len(), 16);
        assert_eq!(
            normalize_recovery(&code.to_lowercase()),
            normalize_recovery(&code)
        );
        assert_eq!(normalize_recovery(" abcd efgh-ijkl "), "ABCDEFGHIJKL");
        assert_ne!(recovery_code(), recovery_code());
    }

    #[test]
    fn qr_codes_are_png() {
        let png = STANDARD
            .decode(qr_png_base64("otpauth://totp/X:y?secret=ABC").unwrap())
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}
