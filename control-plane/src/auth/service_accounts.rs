//! Service accounts (`service_account.<id>` in the `iam` bucket): machine principals that
//! get access tokens with the OAuth 2.0 client-credentials grant. Client secrets are 256-bit
//! random values stored as SHA-256; a rotation keeps the old secret valid for an overlap.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_core::token::SERVICE_PREFIX;
use gateway_edge::{ApiError, Reason};
use gateway_store::{Bucket, Record, Revision, Store, StoreError, hash_key_token, read_all};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSecret {
    pub id: String,
    /// SHA-256 (hex) of the secret.
    hash: String,
    pub created_at: i64,
    /// Set when a newer secret replaced it: valid until then (the rotation overlap).
    #[serde(default)]
    pub expires_at: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccount {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default)]
    pub tokens_valid_after: i64,
    secrets: Vec<ClientSecret>,
    /// The tenant whose admins manage it (`None`: platform admins only).
    #[serde(default)]
    pub owner_tenant: Option<String>,
}

impl Record for ServiceAccount {
    const KIND: &'static str = "service_account";
    const VERSION: u32 = 1;
}

impl ServiceAccount {
    /// Secrets that authenticate at `now` (metadata only, never the hashes).
    pub fn live_secrets(&self, now: i64) -> impl Iterator<Item = &ClientSecret> {
        self.secrets
            .iter()
            .filter(move |s| s.expires_at.is_none_or(|t| now < t))
    }
}

fn key(id: &str) -> String {
    format!("service_account.{id}")
}

fn new_secret() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("cs_{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash_key_token(secret.as_bytes());
    (secret, hash)
}

fn record_err(err: gateway_store::RecordError) -> ApiError {
    ApiError::internal("service account record", &err)
}

fn valid_id(id: &str) -> bool {
    id.starts_with(SERVICE_PREFIX)
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Creates an account; returns it with its first client secret (shown once).
pub async fn create(
    store: &Store,
    name: &str,
    now: i64,
) -> Result<(ServiceAccount, String), ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(
            ApiError::bad_request("a name of 1 to 128 characters is required")
                .with_reason(Reason::InvalidName),
        );
    }
    let (secret, hash) = new_secret();
    let account = ServiceAccount {
        id: format!("{SERVICE_PREFIX}{}", uuid::Uuid::new_v4().simple()),
        name: name.to_string(),
        disabled: false,
        created_at: now,
        updated_at: now,
        tokens_valid_after: 0,
        owner_tenant: None,
        secrets: vec![ClientSecret {
            id: uuid::Uuid::new_v4().simple().to_string(),
            hash,
            created_at: now,
            expires_at: None,
        }],
    };
    store
        .kv(Bucket::Iam)
        .create(&key(&account.id), account.to_bytes().map_err(record_err)?)
        .await?;
    Ok((account, secret))
}

pub async fn get(store: &Store, id: &str) -> Result<Option<(ServiceAccount, Revision)>, ApiError> {
    if !valid_id(id) {
        return Ok(None);
    }
    match store.kv(Bucket::Iam).get(&key(id)).await? {
        Some(entry) => Ok(Some((
            ServiceAccount::from_bytes(&entry.value).map_err(record_err)?,
            entry.revision,
        ))),
        None => Ok(None),
    }
}

/// Issues a new secret; the previous ones stay valid for `overlap` (at most), then die.
pub async fn rotate_secret(
    store: &Store,
    id: &str,
    overlap: Duration,
    now: i64,
) -> Result<String, ApiError> {
    for _ in 0..8 {
        let Some((mut account, revision)) = get(store, id).await? else {
            return Err(ApiError::not_found("no such service account"));
        };
        let until = now + overlap.as_secs() as i64;
        for secret in &mut account.secrets {
            secret.expires_at = Some(secret.expires_at.map_or(until, |t| t.min(until)));
        }
        account
            .secrets
            .retain(|s| s.expires_at.is_none_or(|t| t > now));
        let (secret, hash) = new_secret();
        account.secrets.push(ClientSecret {
            id: uuid::Uuid::new_v4().simple().to_string(),
            hash,
            created_at: now,
            expires_at: None,
        });
        account.updated_at = now;
        match store
            .kv(Bucket::Iam)
            .update(&key(id), account.to_bytes().map_err(record_err)?, revision)
            .await
        {
            Ok(_) => return Ok(secret),
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(StoreError::Conflict { key: key(id) }.into())
}

/// The account whose id and secret match at `now` (and is not disabled).
pub async fn verify(
    store: &Store,
    id: &str,
    secret: &str,
    now: i64,
) -> Result<Option<ServiceAccount>, ApiError> {
    if secret.len() > 128 {
        return Ok(None);
    }
    let presented = hash_key_token(secret.as_bytes());
    let Some((account, _)) = get(store, id).await? else {
        return Ok(None);
    };
    let matched = account.live_secrets(now).fold(false, |found, s| {
        found | bool::from(s.hash.as_bytes().ct_eq(presented.as_bytes()))
    });
    Ok((matched && !account.disabled).then_some(account))
}

/// Every service account, in key order.
pub async fn list(store: &Store) -> Result<Vec<ServiceAccount>, ApiError> {
    read_all(store.kv(Bucket::Iam).as_ref(), "service_account.")
        .await?
        .iter()
        .map(|entry| ServiceAccount::from_bytes(&entry.value).map_err(record_err))
        .collect()
}

/// Sets the owning tenant of a new account.
pub async fn set_owner(
    store: &Store,
    id: &str,
    tenant: Option<String>,
) -> Result<ServiceAccount, ApiError> {
    for _ in 0..8 {
        let Some((mut account, revision)) = get(store, id).await? else {
            return Err(ApiError::not_found("no such service account"));
        };
        account.owner_tenant = tenant.clone();
        match store
            .kv(Bucket::Iam)
            .update(&key(id), account.to_bytes().map_err(record_err)?, revision)
            .await
        {
            Ok(_) => return Ok(account),
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(StoreError::Conflict { key: key(id) }.into())
}

pub async fn delete(store: &Store, id: &str) -> Result<(), ApiError> {
    store.kv(Bucket::Iam).delete(&key(id), None).await?;
    Ok(())
}
