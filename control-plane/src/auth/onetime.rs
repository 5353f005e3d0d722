//! One-time tokens for password reset and email verification: 256-bit random, stored only
//! as SHA-256 in the `tokens` bucket, expiring, consumed by a conditional delete so exactly
//! one use succeeds.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_edge::ApiError;
use gateway_store::{Bucket, Record, Revision, Store, StoreError, hash_key_token};
use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Reset,
    VerifyEmail,
    /// The second step of a sign-in with MFA.
    MfaChallenge,
}

impl Purpose {
    fn prefix(self) -> &'static str {
        match self {
            Purpose::Reset => "reset",
            Purpose::VerifyEmail => "verify",
            Purpose::MfaChallenge => "mfa_challenge",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeToken {
    pub purpose: Purpose,
    pub user_id: String,
    /// The address a verification token confirms.
    pub email: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// Wrong answers so far (MFA challenges).
    #[serde(default)]
    pub failures: u32,
}

impl Record for OneTimeToken {
    const KIND: &'static str = "one_time_token";
    const VERSION: u32 = 1;
}

fn key(purpose: Purpose, token: &str) -> String {
    format!("{}.{}", purpose.prefix(), hash_key_token(token.as_bytes()))
}

fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Creates a token; returns the secret to send (never stored).
pub async fn issue(
    store: &Store,
    purpose: Purpose,
    user_id: &str,
    email: &str,
    ttl: Duration,
    now: i64,
) -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let record = OneTimeToken {
        purpose,
        user_id: user_id.to_string(),
        email: email.to_string(),
        created_at: now,
        expires_at: now + ttl.as_secs() as i64,
        failures: 0,
    };
    let bytes = record
        .to_bytes()
        .map_err(|err| ApiError::internal("one-time token record", &err))?;
    store
        .kv(Bucket::Tokens)
        .create(&key(purpose, &token), bytes)
        .await?;
    Ok(token)
}

/// The live record behind a token (unknown, malformed and expired tokens give `None`).
pub async fn peek(
    store: &Store,
    purpose: Purpose,
    token: &str,
    now: i64,
) -> Result<Option<(OneTimeToken, Revision)>, ApiError> {
    if !well_formed(token) {
        return Ok(None);
    }
    let Some(entry) = store.kv(Bucket::Tokens).get(&key(purpose, token)).await? else {
        return Ok(None);
    };
    let record = OneTimeToken::from_bytes(&entry.value)
        .map_err(|err| ApiError::internal("one-time token record", &err))?;
    if record.purpose != purpose || now >= record.expires_at {
        return Ok(None);
    }
    Ok(Some((record, entry.revision)))
}

/// Uses the token up; `false` when another request consumed it first.
pub async fn consume(
    store: &Store,
    purpose: Purpose,
    token: &str,
    revision: Revision,
) -> Result<bool, ApiError> {
    match store
        .kv(Bucket::Tokens)
        .delete(&key(purpose, token), Some(revision))
        .await
    {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Counts a wrong answer against a token; past `max` failures the token is deleted.
/// Returns whether the token is still usable.
pub async fn record_failure(
    store: &Store,
    purpose: Purpose,
    token: &str,
    max: u32,
    now: i64,
) -> Result<bool, ApiError> {
    let kv = store.kv(Bucket::Tokens);
    for _ in 0..8 {
        let Some((mut record, revision)) = peek(store, purpose, token, now).await? else {
            return Ok(false);
        };
        record.failures += 1;
        let result = if record.failures >= max {
            kv.delete(&key(purpose, token), Some(revision)).await
        } else {
            let bytes = record
                .to_bytes()
                .map_err(|err| ApiError::internal("one-time token record", &err))?;
            kv.update(&key(purpose, token), bytes, revision)
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => return Ok(record.failures < max),
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Ok(false)
}
