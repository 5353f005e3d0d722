//! Refresh sessions (`session.<user id>.<session id>`): opaque 256-bit refresh tokens stored
//! only as SHA-256, rotated on every use by compare-and-set, with a short grace window for
//! concurrent tabs and family revocation when an old token comes back (RFC 9700 §4.14).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway_edge::{ApiError, ErrorCode, Reason};
use gateway_store::{Bucket, Record, Revision, Store, StoreError, hash_key_token, read_all};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Rotated-away token hashes remembered per session, for reuse detection.
const REMEMBERED: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSettings {
    /// A session unused this long ends.
    pub idle_ttl: Duration,
    /// A session ends this long after sign-in, used or not.
    pub absolute_ttl: Duration,
    /// A just-rotated token presented again within this window is refused without ending
    /// the session (several tabs refreshing at once).
    pub reuse_grace: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    /// SHA-256 (hex) of the refresh token that is valid now.
    current_hash: String,
    /// Hashes of tokens rotated away, newest first.
    #[serde(default)]
    previous_hashes: Vec<String>,
    pub rotated_at: i64,
    pub generation: u64,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    pub idle_expires_at: i64,
    #[serde(default)]
    pub revoked_at: Option<i64>,
    #[serde(default)]
    pub revoked_reason: Option<String>,
    #[serde(default)]
    pub client_ip: Option<String>,
    /// Whether the sign-in passed a second factor.
    #[serde(default)]
    pub mfa: bool,
}

impl Record for Session {
    const KIND: &'static str = "session";
    const VERSION: u32 = 1;
}

impl Session {
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at && now < self.idle_expires_at
    }
}

fn session_key(user_id: &str, session_id: &str) -> String {
    format!("session.{user_id}.{session_id}")
}

fn token_hash(token: &str) -> String {
    hash_key_token(token.as_bytes())
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `<user id>.<session id>.<secret>`: the ids locate the session, the 256-bit secret
/// proves possession.
fn compose(user_id: &str, session_id: &str, secret: &str) -> String {
    format!("{user_id}.{session_id}.{secret}")
}

fn parse(token: &str) -> Option<(&str, &str)> {
    if token.len() > 200 {
        return None;
    }
    let mut parts = token.split('.');
    let (user_id, session_id, secret) = (parts.next()?, parts.next()?, parts.next()?);
    let token_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let ok = parts.next().is_none()
        && user_id.starts_with(gateway_core::token::USER_PREFIX)
        && user_id.chars().all(token_char)
        && session_id.len() == 32
        && session_id.chars().all(|c| c.is_ascii_hexdigit())
        && secret.len() == 43
        && secret.chars().all(token_char);
    ok.then_some((user_id, session_id))
}

/// Why a refresh is refused.
#[derive(Debug)]
pub enum RefreshError {
    /// Unknown, malformed or foreign token.
    Invalid,
    Expired,
    Revoked,
    /// The token was rotated a moment ago by a concurrent refresh (grace window): the
    /// session lives on; use the token the other request received.
    AlreadyRotated,
    /// An old token came back after the grace window: the session was revoked.
    Reused {
        user_id: String,
        session_id: String,
    },
    Store(ApiError),
}

impl From<StoreError> for RefreshError {
    fn from(err: StoreError) -> Self {
        RefreshError::Store(err.into())
    }
}

impl From<RefreshError> for ApiError {
    fn from(err: RefreshError) -> Self {
        let unauthenticated = |reason, message| {
            ApiError::new(ErrorCode::Unauthenticated, message).with_reason(reason)
        };
        match err {
            RefreshError::Invalid => unauthenticated(
                Reason::InvalidRefreshToken,
                "the refresh token is not valid",
            ),
            RefreshError::Expired => unauthenticated(
                Reason::RefreshTokenExpired,
                "the session has expired; sign in again",
            ),
            RefreshError::Revoked => unauthenticated(
                Reason::SessionRevoked,
                "the session has ended; sign in again",
            ),
            RefreshError::AlreadyRotated => ApiError::new(
                ErrorCode::Conflict,
                "this refresh token was just rotated by another request; use the newer token",
            )
            .with_reason(Reason::RefreshTokenAlreadyRotated),
            RefreshError::Reused { .. } => unauthenticated(
                Reason::RefreshTokenReused,
                "this refresh token was already used; the session has been ended",
            ),
            RefreshError::Store(err) => err,
        }
    }
}

fn record_err(err: gateway_store::RecordError) -> ApiError {
    ApiError::internal("session record unreadable", &err)
}

async fn load(
    store: &Store,
    user_id: &str,
    session_id: &str,
) -> Result<Option<(Session, Revision)>, ApiError> {
    match store
        .kv(Bucket::Sessions)
        .get(&session_key(user_id, session_id))
        .await?
    {
        Some(entry) => Ok(Some((
            Session::from_bytes(&entry.value).map_err(record_err)?,
            entry.revision,
        ))),
        None => Ok(None),
    }
}

/// One session of a user.
pub async fn find(
    store: &Store,
    user_id: &str,
    session_id: &str,
) -> Result<Option<Session>, ApiError> {
    if gateway_store::validate_key(&session_key(user_id, session_id)).is_err() {
        return Ok(None);
    }
    Ok(load(store, user_id, session_id)
        .await?
        .map(|(session, _)| session))
}

/// Starts a session; returns it with its first refresh token.
pub async fn open(
    store: &Store,
    user_id: &str,
    settings: &SessionSettings,
    now: i64,
    mfa: bool,
    client_ip: Option<String>,
) -> Result<(Session, String), ApiError> {
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let token = compose(user_id, &session_id, &new_secret());
    let session = Session {
        id: session_id.clone(),
        user_id: user_id.to_string(),
        current_hash: token_hash(&token),
        previous_hashes: Vec::new(),
        rotated_at: now,
        generation: 0,
        created_at: now,
        last_used_at: now,
        expires_at: now + settings.absolute_ttl.as_secs() as i64,
        idle_expires_at: now + settings.idle_ttl.as_secs() as i64,
        revoked_at: None,
        revoked_reason: None,
        client_ip,
        mfa,
    };
    store
        .kv(Bucket::Sessions)
        .create(
            &session_key(user_id, &session_id),
            session.to_bytes().map_err(record_err)?,
        )
        .await?;
    Ok((session, token))
}

/// Exchanges a refresh token for the next one. Of concurrent refreshes with one token,
/// exactly one wins (compare-and-set); the others get `AlreadyRotated`.
pub async fn rotate(
    store: &Store,
    token: &str,
    settings: &SessionSettings,
    now: i64,
) -> Result<(Session, String), RefreshError> {
    let (user_id, session_id) = parse(token).ok_or(RefreshError::Invalid)?;
    let presented = token_hash(token);
    let kv = store.kv(Bucket::Sessions);
    let key = session_key(user_id, session_id);
    loop {
        let (session, revision) = load(store, user_id, session_id)
            .await
            .map_err(RefreshError::Store)?
            .ok_or(RefreshError::Invalid)?;
        if !same(&session.current_hash, &presented) {
            let recent = session
                .previous_hashes
                .first()
                .is_some_and(|h| same(h, &presented));
            let older = session.previous_hashes.iter().any(|h| same(h, &presented));
            if !older {
                return Err(RefreshError::Invalid);
            }
            if session.revoked_at.is_some() {
                return Err(RefreshError::Revoked);
            }
            if recent && now - session.rotated_at <= settings.reuse_grace.as_secs() as i64 {
                return Err(RefreshError::AlreadyRotated);
            }
            revoke_at(store, &session, revision, now, ended_alone::REFRESH_REUSED).await?;
            return Err(RefreshError::Reused {
                user_id: user_id.to_string(),
                session_id: session_id.to_string(),
            });
        }
        if session.revoked_at.is_some() {
            return Err(RefreshError::Revoked);
        }
        if now >= session.expires_at || now >= session.idle_expires_at {
            return Err(RefreshError::Expired);
        }
        let next_token = compose(user_id, session_id, &new_secret());
        let mut next = session.clone();
        next.previous_hashes.insert(0, session.current_hash.clone());
        next.previous_hashes.truncate(REMEMBERED);
        next.current_hash = token_hash(&next_token);
        next.rotated_at = now;
        next.generation += 1;
        next.last_used_at = now;
        next.idle_expires_at = (now + settings.idle_ttl.as_secs() as i64).min(session.expires_at);
        let bytes = next
            .to_bytes()
            .map_err(|e| RefreshError::Store(record_err(e)))?;
        match kv.update(&key, bytes, revision).await {
            Ok(_) => return Ok((next, next_token)),
            // lost the race: the loop re-reads and finds our token rotated away
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::Unavailable(detail)) => {
                // unknown outcome: the write may have landed
                if let Ok(Some((stored, _))) = load(store, user_id, session_id).await
                    && same(&stored.current_hash, &next.current_hash)
                {
                    return Ok((stored, next_token));
                }
                return Err(StoreError::Unavailable(detail).into());
            }
            Err(err) => return Err(err.into()),
        }
    }
}

async fn revoke_at(
    store: &Store,
    session: &Session,
    revision: Revision,
    now: i64,
    reason: &str,
) -> Result<(), RefreshError> {
    let mut revoked = session.clone();
    revoked.revoked_at = Some(now);
    revoked.revoked_reason = Some(reason.to_string());
    let bytes = revoked
        .to_bytes()
        .map_err(|e| RefreshError::Store(record_err(e)))?;
    match store
        .kv(Bucket::Sessions)
        .update(&session_key(&session.user_id, &session.id), bytes, revision)
        .await
    {
        Ok(_) => Ok(()),
        // changed meanwhile: revoke whatever it is now
        Err(StoreError::Conflict { .. }) => {
            revoke(store, &session.user_id, &session.id, now, reason)
                .await
                .map(|_| ())
                .map_err(RefreshError::Store)
        }
        Err(err) => Err(err.into()),
    }
}

/// Why a session ended on its own, while the user's other sessions go on. Such sessions
/// are noted in the user's record and published until their access tokens expire
/// (`AuthService::ended_alone`); sessions ended by a global sign-out are not (its
/// `tokens_valid_after` refuses their tokens).
pub mod ended_alone {
    /// The user signed this session out.
    pub const SIGNOUT: &str = "signout";
    /// An admin ended this session.
    pub const BY_ADMIN: &str = "revoked_by_admin";
    /// Its refresh token was used twice.
    pub const REFRESH_REUSED: &str = "refresh_token_reused";
    /// Refreshed while the user was not active.
    pub const USER_INACTIVE: &str = "user_inactive";
}

/// Ends one session; `false` when it did not exist or had already ended.
pub async fn revoke(
    store: &Store,
    user_id: &str,
    session_id: &str,
    now: i64,
    reason: &str,
) -> Result<bool, ApiError> {
    let kv = store.kv(Bucket::Sessions);
    for _ in 0..8 {
        let Some((mut session, revision)) = load(store, user_id, session_id).await? else {
            return Ok(false);
        };
        if session.revoked_at.is_some() {
            return Ok(false);
        }
        session.revoked_at = Some(now);
        session.revoked_reason = Some(reason.to_string());
        match kv
            .update(
                &session_key(user_id, session_id),
                session.to_bytes().map_err(record_err)?,
                revision,
            )
            .await
        {
            Ok(_) => return Ok(true),
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(StoreError::Conflict {
        key: session_key(user_id, session_id),
    }
    .into())
}

/// Every session of a user (active or not), oldest key first.
pub async fn list(store: &Store, user_id: &str) -> Result<Vec<Session>, ApiError> {
    read_all(
        store.kv(Bucket::Sessions).as_ref(),
        &format!("session.{user_id}."),
    )
    .await?
    .iter()
    .map(|entry| Session::from_bytes(&entry.value).map_err(record_err))
    .collect()
}

/// Ends every session of a user; returns how many were active.
pub async fn revoke_all(
    store: &Store,
    user_id: &str,
    now: i64,
    reason: &str,
) -> Result<usize, ApiError> {
    let mut ended = 0;
    for session in list(store, user_id).await? {
        if session.revoked_at.is_none() && revoke(store, user_id, &session.id, now, reason).await? {
            ended += 1;
        }
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_have_one_strict_shape() {
        let token = compose("usr_abc", &"a".repeat(32), &new_secret());
        assert_eq!(parse(&token), Some(("usr_abc", "a".repeat(32).as_str())));
        for bad in [
            "",
            "usr_abc",
            "usr_abc.aaaa.bbbb",
            &format!("svc_abc.{}.{}", "a".repeat(32), "b".repeat(43)),
            &format!("usr_abc.{}.{}.x", "a".repeat(32), "b".repeat(43)),
            &format!("usr_a*c.{}.{}", "a".repeat(32), "b".repeat(43)),
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
