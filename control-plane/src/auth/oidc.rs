//! Google sign-in (OpenID Connect, authorization code + PKCE) with explicit account
//! linking. State, nonce and PKCE verifier are kept server-side (tokens bucket, 10 min, one
//! use); a Google login never takes over an existing password account unless auto-linking
//! by verified email is configured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_edge::{ApiError, ErrorCode, Reason};
use gateway_store::{
    Bucket, Record, Revision, Store, StoreError, encode_key_token, hash_key_token, read_all,
};
use openidconnect::core::{CoreClient, CoreProviderMetadata, CoreResponseType};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use crate::keys::Kek;

/// Provider name in identity keys.
pub const GOOGLE: &str = "google";
/// Lifetime of a started sign-in.
const STATE_TTL: i64 = 600;
/// How long discovered provider metadata is reused.
const METADATA_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct OidcSettings {
    pub issuer_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Our callback URL registered at the provider.
    pub redirect_url: String,
    /// Link a Google login to an existing account with the same, provider-verified email.
    pub auto_link_verified_email: bool,
}

/// What the provider said about the person, after verification of the ID token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderIdentity {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
}

/// A started sign-in (`oidc_state.<sha256(state)>` in the tokens bucket).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingLogin {
    nonce: String,
    /// PKCE verifier, sealed under the KEK.
    sealed_verifier: String,
    /// Set when a signed-in user is linking this identity to their account.
    pub link_user_id: Option<String>,
    /// For a link: the hash of the secret in the initiating browser's link cookie; the
    /// callback must come with it.
    #[serde(default)]
    pub binding: Option<String>,
    pub expires_at: i64,
}

impl Record for PendingLogin {
    const KIND: &'static str = "oidc_state";
    const VERSION: u32 = 1;
}

/// `oidc.<provider>.<b64url(subject)>` in the identities bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdentityLink {
    pub provider: String,
    pub subject: String,
    pub user_id: String,
    #[serde(default)]
    pub email: Option<String>,
    pub linked_at: i64,
}

impl Record for IdentityLink {
    const KIND: &'static str = "identity_link";
    const VERSION: u32 = 1;
}

pub fn identity_key(provider: &str, subject: &str) -> String {
    format!("oidc.{provider}.{}", encode_key_token(subject))
}

fn state_key(state: &str) -> String {
    format!("oidc_state.{}", hash_key_token(state.as_bytes()))
}

fn seal_context(state: &str) -> String {
    format!(
        "cloudlysis-gateway.oidc-pkce.v1:{}",
        hash_key_token(state.as_bytes())
    )
}

fn record_err(err: gateway_store::RecordError) -> ApiError {
    ApiError::internal("oidc record", &err)
}

fn provider_down(context: &str, err: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "{context}");
    ApiError::new(
        ErrorCode::BadGateway,
        "the identity provider did not answer as expected",
    )
    .with_reason(Reason::IdentityProviderError)
}

pub struct GoogleOidc {
    settings: OidcSettings,
    store: Store,
    kek: Arc<Kek>,
    http: openidconnect::reqwest::Client,
    metadata: RwLock<Option<(CoreProviderMetadata, Instant)>>,
}

impl GoogleOidc {
    pub fn new(settings: OidcSettings, store: Store, kek: Arc<Kek>) -> Result<GoogleOidc, String> {
        IssuerUrl::new(settings.issuer_url.clone()).map_err(|e| e.to_string())?;
        RedirectUrl::new(settings.redirect_url.clone()).map_err(|e| e.to_string())?;
        let http = openidconnect::reqwest::Client::builder()
            // never follow redirects from the provider (SSRF)
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(GoogleOidc {
            settings,
            store,
            kek,
            http,
            metadata: RwLock::new(None),
        })
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    async fn metadata(&self) -> Result<CoreProviderMetadata, ApiError> {
        if let Some((metadata, at)) = self.metadata.read().await.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let issuer = IssuerUrl::new(self.settings.issuer_url.clone())
            .map_err(|err| ApiError::internal("issuer url", &err))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|err| provider_down("oidc discovery failed", &err))?;
        *self.metadata.write().await = Some((metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    /// Starts a login (or a link for `link_user_id`): returns the provider URL to send the
    /// browser to.
    pub async fn start(
        &self,
        link_user_id: Option<String>,
        binding: Option<String>,
        now: i64,
    ) -> Result<String, ApiError> {
        let metadata = self.metadata().await?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.clone())),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.settings.redirect_url.clone())
                .map_err(|err| ApiError::internal("redirect url", &err))?,
        );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        let pending = PendingLogin {
            nonce: nonce.secret().clone(),
            sealed_verifier: self
                .kek
                .seal(&seal_context(state.secret()), verifier.secret().as_bytes())
                .map_err(|err| ApiError::internal("pkce verifier", &err))?,
            link_user_id,
            binding,
            expires_at: now + STATE_TTL,
        };
        self.store
            .kv(Bucket::Tokens)
            .create(
                &state_key(state.secret()),
                pending.to_bytes().map_err(record_err)?,
            )
            .await?;
        Ok(url.to_string())
    }

    /// Finishes a login: the state is used up (once), the code exchanged with the PKCE
    /// verifier, and the ID token verified (signature, issuer, audience, expiry, nonce).
    /// The pending flow of `state`, read without using it up: the callback checks the
    /// browser binding first, so a leaked callback URL cannot burn someone's sign-in.
    pub async fn pending(&self, state: &str, now: i64) -> Result<PendingLogin, ApiError> {
        let invalid_state = || {
            ApiError::bad_request("the sign-in is unknown or has expired; start again")
                .with_reason(Reason::InvalidState)
        };
        if state.is_empty() || state.len() > 256 {
            return Err(invalid_state());
        }
        let Some(entry) = self.store.kv(Bucket::Tokens).get(&state_key(state)).await? else {
            return Err(invalid_state());
        };
        let pending = PendingLogin::from_bytes(&entry.value).map_err(record_err)?;
        if now >= pending.expires_at {
            return Err(invalid_state());
        }
        Ok(pending)
    }

    pub async fn finish(
        &self,
        code: &str,
        state: &str,
        now: i64,
    ) -> Result<(ProviderIdentity, PendingLogin), ApiError> {
        let invalid_state = || {
            ApiError::bad_request("the sign-in is unknown or has expired; start again")
                .with_reason(Reason::InvalidState)
        };
        if state.is_empty() || state.len() > 256 || code.is_empty() || code.len() > 2048 {
            return Err(invalid_state());
        }
        let kv = self.store.kv(Bucket::Tokens);
        let Some(entry) = kv.get(&state_key(state)).await? else {
            return Err(invalid_state());
        };
        let pending = PendingLogin::from_bytes(&entry.value).map_err(record_err)?;
        if !consume(&self.store, &state_key(state), entry.revision).await?
            || now >= pending.expires_at
        {
            return Err(invalid_state());
        }
        let verifier = String::from_utf8(
            self.kek
                .open(&seal_context(state), &pending.sealed_verifier)
                .map_err(|err| ApiError::internal("pkce verifier", &err))?,
        )
        .map_err(|err| ApiError::internal("pkce verifier", &err))?;
        let metadata = self.metadata().await?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.clone())),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.settings.redirect_url.clone())
                .map_err(|err| ApiError::internal("redirect url", &err))?,
        );
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|err| ApiError::internal("oidc client", &err))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&self.http)
            .await
            .map_err(|err| match &err {
                // the provider refused the code itself (reused, expired, or for another
                // client): the client's doing, not the provider being down
                openidconnect::RequestTokenError::ServerResponse(refusal)
                    if *refusal.error()
                        == openidconnect::core::CoreErrorResponseType::InvalidGrant =>
                {
                    tracing::info!(error = %err, "oidc code refused by the provider");
                    ApiError::bad_request(
                        "the sign-in code was already used or has expired; start the sign-in again",
                    )
                    .with_reason(Reason::InvalidGrant)
                }
                _ => provider_down("oidc code exchange failed", &err),
            })?;
        let id_token = response
            .id_token()
            .ok_or_else(|| provider_down("oidc token response without id_token", &"missing"))?;
        let claims = id_token
            .claims(
                &client.id_token_verifier(),
                &Nonce::new(pending.nonce.clone()),
            )
            .map_err(|err| {
                tracing::warn!(error = %err, "id token refused");
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "the identity provider's answer is not valid",
                )
                .with_reason(Reason::InvalidIdToken)
            })?;
        Ok((
            ProviderIdentity {
                subject: claims.subject().as_str().to_string(),
                email: claims.email().map(|e| e.as_str().to_string()),
                email_verified: claims.email_verified().unwrap_or(false),
            },
            pending,
        ))
    }
}

/// One purge pass over the started sign-ins that expired unfinished (run every minute
/// by [`crate::purge_periodically`]): the embedded store keeps records until deleted, and
/// on NATS the tokens bucket's age limit is a day, where a pending sign-in lives minutes.
/// Replicas may purge the same record: the delete is conditional, the loser finds it gone.
/// Returns how many expired pending sign-ins were deleted.
pub async fn purge_once(store: &Store, now: i64) -> Result<usize, ApiError> {
    let kv = store.kv(Bucket::Tokens);
    let mut purged = 0;
    for entry in gateway_store::read_all(kv.as_ref(), "oidc_state.").await? {
        let expired = PendingLogin::from_bytes(&entry.value)
            .map(|pending| pending.expires_at <= now)
            // a record that cannot be read is of no use to anyone
            .unwrap_or(true);
        if expired && consume(store, &entry.key, entry.revision).await? {
            purged += 1;
        }
    }
    Ok(purged)
}

async fn consume(store: &Store, key: &str, revision: Revision) -> Result<bool, ApiError> {
    match store.kv(Bucket::Tokens).delete(key, Some(revision)).await {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// The user linked to a provider identity.
pub async fn linked_user(
    store: &Store,
    provider: &str,
    subject: &str,
) -> Result<Option<IdentityLink>, ApiError> {
    match store
        .kv(Bucket::Identities)
        .get(&identity_key(provider, subject))
        .await?
    {
        Some(entry) => Ok(Some(
            IdentityLink::from_bytes(&entry.value).map_err(record_err)?,
        )),
        None => Ok(None),
    }
}

/// Links an identity to a user; `Conflict` when it belongs to another user.
pub async fn link(
    store: &Store,
    provider: &str,
    identity: &ProviderIdentity,
    user_id: &str,
    now: i64,
) -> Result<IdentityLink, ApiError> {
    let record = IdentityLink {
        provider: provider.to_string(),
        subject: identity.subject.clone(),
        user_id: user_id.to_string(),
        email: identity.email.clone(),
        linked_at: now,
    };
    match store
        .kv(Bucket::Identities)
        .create(
            &identity_key(provider, &identity.subject),
            record.to_bytes().map_err(record_err)?,
        )
        .await
    {
        Ok(_) => Ok(record),
        Err(StoreError::Conflict { .. }) => {
            match linked_user(store, provider, &identity.subject).await? {
                Some(existing) if existing.user_id == user_id => Ok(existing),
                _ => Err(ApiError::new(
                    ErrorCode::Conflict,
                    "this Google account is linked to another user",
                )
                .with_reason(Reason::IdentityInUse)),
            }
        }
        Err(err) => Err(err.into()),
    }
}

/// Every identity linked to a user (scans the identities bucket).
pub async fn identities_of(store: &Store, user_id: &str) -> Result<Vec<IdentityLink>, ApiError> {
    let mut out = Vec::new();
    for entry in read_all(store.kv(Bucket::Identities).as_ref(), "oidc.").await? {
        let link = IdentityLink::from_bytes(&entry.value).map_err(record_err)?;
        if link.user_id == user_id {
            out.push(link);
        }
    }
    Ok(out)
}

/// Removes one identity link.
pub async fn unlink(store: &Store, provider: &str, subject: &str) -> Result<(), ApiError> {
    store
        .kv(Bucket::Identities)
        .delete(&identity_key(provider, subject), None)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_expired_pending_sign_ins_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&gateway_store::StoreConfig::Embedded {
            path: dir.path().join("state.redb"),
        })
        .await
        .unwrap();
        let kv = store.kv(Bucket::Tokens);
        for (state, expires_at) in [("old-1", 100), ("old-2", 999), ("live", 1_001)] {
            let pending = PendingLogin {
                nonce: "n".into(),
                sealed_verifier: "v".into(),
                link_user_id: None,
                binding: None,
                expires_at,
            };
            kv.create(&state_key(state), pending.to_bytes().unwrap())
                .await
                .unwrap();
        }
        // another kind of record in the same bucket is left alone
        kv.create("reset.abc", bytes::Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(purge_once(&store, 1_000).await.unwrap(), 2);
        assert!(kv.get(&state_key("live")).await.unwrap().is_some());
        assert!(kv.get(&state_key("old-1")).await.unwrap().is_none());
        assert!(kv.get("reset.abc").await.unwrap().is_some());
        assert_eq!(purge_once(&store, 1_000).await.unwrap(), 0);
    }
}
