//! User records (`user.<id>`), the email uniqueness index (`email.<sha256(email)>`) and
//! password credentials (`password.<user id>`), written without partial state.

use gateway_core::token::USER_PREFIX;
use gateway_edge::{ApiError, ErrorCode, Reason};
use gateway_store::{Bucket, Record, RecordError, Revision, Store, StoreError, hash_key_token};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Longest email accepted (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub email: String,
    #[serde(default)]
    pub email_verified: bool,
    pub status: UserStatus,
    pub created_at: i64,
    pub updated_at: i64,
    /// Access tokens issued at or before this Unix time are refused (global sign-out, reset,
    /// disable).
    #[serde(default)]
    pub tokens_valid_after: i64,
    #[serde(default)]
    pub mfa_enabled: bool,
    /// Sessions ended one by one whose access tokens may still be unexpired, published in
    /// the user's document so the data planes refuse them (kept here, not read from the
    /// sessions, so a publication costs no read of the user's session history).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended_sessions: Vec<gateway_core::authz::RevokedSession>,
}

impl Record for User {
    const KIND: &'static str = "user";
    const VERSION: u32 = 1;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct EmailIndex {
    user_id: String,
}

impl Record for EmailIndex {
    const KIND: &'static str = "email_index";
    const VERSION: u32 = 1;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordCredential {
    /// Argon2id PHC string; the password itself is never stored.
    pub phc: String,
    pub updated_at: i64,
}

impl Record for PasswordCredential {
    const KIND: &'static str = "password_credential";
    const VERSION: u32 = 1;
}

pub fn user_key(id: &str) -> String {
    format!("user.{id}")
}

fn email_key(email: &str) -> String {
    format!("email.{}", hash_key_token(email.as_bytes()))
}

pub fn password_key(user_id: &str) -> String {
    format!("password.{user_id}")
}

/// Trimmed, NFKC, lowercased; refuses what is not plausibly an address.
pub fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::bad_request("a valid email address is required").with_reason(Reason::InvalidEmail)
    };
    if raw.len() > 4 * MAX_EMAIL_LEN {
        return Err(invalid());
    }
    let email: String = raw.trim().nfkc().collect::<String>().to_lowercase();
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    let ok = email.len() <= MAX_EMAIL_LEN
        && valid_local_part(local)
        && (domain.contains('.') || domain == "localhost")
        && domain.split('.').all(valid_domain_label);
    if ok { Ok(email) } else { Err(invalid()) }
}

/// RFC 5322 dot-atom (letters of any script allowed, RFC 6531): no quoted strings, no
/// `<>()[]\,;:"`, spaces or control characters, so an address can never carry markup or
/// a mail header.
fn valid_local_part(local: &str) -> bool {
    (1..=64).contains(&local.len())
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~-.".contains(c))
}

/// A DNS label (or its internationalised form): letters, digits and inner hyphens.
fn valid_domain_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(|c| c.is_alphanumeric() || c == '-')
}

pub fn new_user_id() -> String {
    format!("{USER_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

fn record_error(err: RecordError) -> ApiError {
    ApiError::internal("stored record unreadable", &err)
}

/// Creates a user with a password: user record and credential first, the email index
/// last (create-if-absent); when the email is taken everything written is removed.
pub async fn create(
    store: &Store,
    email: &str,
    phc: Option<String>,
    email_verified: bool,
    now: i64,
) -> Result<User, ApiError> {
    let user = User {
        id: new_user_id(),
        email: email.to_string(),
        email_verified,
        status: UserStatus::Active,
        created_at: now,
        updated_at: now,
        tokens_valid_after: 0,
        mfa_enabled: false,
        ended_sessions: Vec::new(),
    };
    let users = store.kv(Bucket::Users);
    let credentials = store.kv(Bucket::Credentials);
    // every value is serialised before the first write, so nothing fails half-way
    let user_bytes = user.to_bytes().map_err(record_error)?;
    let credential_bytes = match phc {
        Some(phc) => Some(
            PasswordCredential {
                phc,
                updated_at: now,
            }
            .to_bytes()
            .map_err(record_error)?,
        ),
        None => None,
    };
    let index_bytes = EmailIndex {
        user_id: user.id.clone(),
    }
    .to_bytes()
    .map_err(record_error)?;
    users.create(&user_key(&user.id), user_bytes).await?;
    let user_id = user.id.clone();
    let undo = async {
        let _ = credentials.delete(&password_key(&user_id), None).await;
        let _ = users.delete(&user_key(&user_id), None).await;
    };
    if let Some(bytes) = credential_bytes
        && let Err(err) = credentials.put(&password_key(&user.id), bytes).await
    {
        undo.await;
        return Err(err.into());
    }
    match users.create(&email_key(email), index_bytes).await {
        Ok(_) => {
            drop(undo);
            Ok(user)
        }
        Err(StoreError::Conflict { .. }) => {
            undo.await;
            Err(ApiError::new(
                ErrorCode::Conflict,
                "an account with this email already exists",
            )
            .with_reason(Reason::EmailTaken))
        }
        Err(err) => {
            undo.await;
            Err(err.into())
        }
    }
}

/// The user with this id and its revision.
pub async fn get(store: &Store, id: &str) -> Result<Option<(User, Revision)>, ApiError> {
    if !id.starts_with(USER_PREFIX) || gateway_store::validate_key(&user_key(id)).is_err() {
        return Ok(None);
    }
    match store.kv(Bucket::Users).get(&user_key(id)).await? {
        Some(entry) => Ok(Some((
            User::from_bytes(&entry.value).map_err(record_error)?,
            entry.revision,
        ))),
        None => Ok(None),
    }
}

/// The user registered with this (normalised) email.
pub async fn find_by_email(
    store: &Store,
    email: &str,
) -> Result<Option<(User, Revision)>, ApiError> {
    let Some(entry) = store.kv(Bucket::Users).get(&email_key(email)).await? else {
        return Ok(None);
    };
    let index = EmailIndex::from_bytes(&entry.value).map_err(record_error)?;
    get(store, &index.user_id).await
}

/// The password hash of a user, if any.
pub async fn password(
    store: &Store,
    user_id: &str,
) -> Result<Option<PasswordCredential>, ApiError> {
    match store
        .kv(Bucket::Credentials)
        .get(&password_key(user_id))
        .await?
    {
        Some(entry) => Ok(Some(
            PasswordCredential::from_bytes(&entry.value).map_err(record_error)?,
        )),
        None => Ok(None),
    }
}

pub async fn set_password(
    store: &Store,
    user_id: &str,
    phc: String,
    now: i64,
) -> Result<(), ApiError> {
    let credential = PasswordCredential {
        phc,
        updated_at: now,
    };
    store
        .kv(Bucket::Credentials)
        .put(
            &password_key(user_id),
            credential.to_bytes().map_err(record_error)?,
        )
        .await?;
    Ok(())
}

/// Applies `change` to the user with compare-and-set, retrying on concurrent writes.
pub async fn update(
    store: &Store,
    id: &str,
    now: i64,
    change: impl Fn(&mut User),
) -> Result<User, ApiError> {
    let users = store.kv(Bucket::Users);
    for _ in 0..8 {
        let Some((mut user, revision)) = get(store, id).await? else {
            return Err(ApiError::not_found("no such user"));
        };
        change(&mut user);
        user.updated_at = now;
        match users
            .update(
                &user_key(id),
                user.to_bytes().map_err(record_error)?,
                revision,
            )
            .await
        {
            Ok(_) => return Ok(user),
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(StoreError::Conflict { key: user_key(id) }.into())
}

/// Notes that session `sid` of the user ended on its own, listed until `until`; entries
/// past their time go at the same write.
pub async fn note_ended_session(
    store: &Store,
    id: &str,
    sid: &str,
    until: i64,
    now: i64,
) -> Result<User, ApiError> {
    update(store, id, now, |user| {
        user.ended_sessions.retain(|ended| ended.until > now);
        if !user.ended_sessions.iter().any(|ended| ended.sid == sid) {
            user.ended_sessions
                .push(gateway_core::authz::RevokedSession {
                    sid: sid.to_string(),
                    until,
                });
        }
    })
    .await
}

/// One page of users in key order, starting after `after` (a user id).
pub async fn list_page(
    store: &Store,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<User>, Option<String>), ApiError> {
    let kv = store.kv(Bucket::Users);
    let after_key = after.map(user_key);
    let page = kv.keys("user.", after_key.as_deref(), limit).await?;
    let mut out = Vec::with_capacity(page.keys.len());
    for key in &page.keys {
        if let Some(entry) = kv.get(key).await? {
            out.push(User::from_bytes(&entry.value).map_err(record_error)?);
        }
    }
    let next = page
        .next
        .and_then(|k| k.strip_prefix("user.").map(str::to_string));
    Ok((out, next))
}

/// Moves a user to a new (normalised) email: the new index entry is created first
/// (exclusive), then the record, then the old entry goes.
pub async fn change_email(
    store: &Store,
    id: &str,
    email: &str,
    now: i64,
) -> Result<User, ApiError> {
    let Some((user, _)) = get(store, id).await? else {
        return Err(ApiError::not_found("no such user"));
    };
    if user.email == email {
        return Ok(user);
    }
    let users = store.kv(Bucket::Users);
    let index = EmailIndex {
        user_id: id.to_string(),
    }
    .to_bytes()
    .map_err(record_error)?;
    match users.create(&email_key(email), index).await {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "an account with this email already exists",
            )
            .with_reason(Reason::EmailTaken));
        }
        Err(err) => return Err(err.into()),
    }
    let new_email = email.to_string();
    let updated = match update(store, id, now, |u| {
        u.email = new_email.clone();
        u.email_verified = false;
    })
    .await
    {
        Ok(updated) => updated,
        Err(err) => {
            let _ = users.delete(&email_key(email), None).await;
            return Err(err);
        }
    };
    users.delete(&email_key(&user.email), None).await?;
    Ok(updated)
}

/// Removes the user record, its email index entry and its password.
pub async fn remove(store: &Store, user: &User) -> Result<(), ApiError> {
    store
        .kv(Bucket::Credentials)
        .delete(&password_key(&user.id), None)
        .await?;
    let users = store.kv(Bucket::Users);
    users.delete(&email_key(&user.email), None).await?;
    users.delete(&user_key(&user.id), None).await?;
    Ok(())
}

pub async fn remove_password(store: &Store, user_id: &str) -> Result<(), ApiError> {
    store
        .kv(Bucket::Credentials)
        .delete(&password_key(user_id), None)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        // NFKC: fullwidth letters fold to ASCII
        assert_eq!(
            normalize_email("ａｄａ@example.com").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@.example.com",
            "<script>@example.com",
            "ada\r\nbcc: x@example.com",
            "\"ada\"@example.com",
            ".ada@example.com",
            "a..da@example.com",
            "ada@exa_mple.com",
            "ada@-example.com",
            "ada@example..com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_email(&format!("{}@example.com", "a".repeat(300))).is_err());
        for good in [
            "ada+tag@example.com",
            "o'brien@example.co.uk",
            "zoë@bücher.de",
            "ops@localhost",
        ] {
            assert!(normalize_email(good).is_ok(), "{good:?}");
        }
    }
}

/// The `iat` of an access token issued at `now` to a principal whose
/// `tokens_valid_after` is `valid_after`: tokens issued at or before `valid_after` are
/// refused, so a token issued in the same second as a sign-out carries the next second.
/// It is also the latest `iat` any token issued so far can carry, so a revocation at `now`
/// must set `tokens_valid_after` to it ([`revoke_tokens`]).
pub fn token_iat(valid_after: i64, now: i64) -> i64 {
    if valid_after > 0 {
        now.max(valid_after + 1)
    } else {
        now
    }
}

/// The `tokens_valid_after` that refuses every token issued up to `now`. Not simply `now`:
/// a token signed in the same second as an earlier sign-out carries `valid_after + 1`,
/// and a second sign-out in that second must refuse it too.
pub fn revoke_tokens(valid_after: i64, now: i64) -> i64 {
    token_iat(valid_after, now)
}

#[cfg(test)]
mod revocation_tests {
    use super::*;

    #[test]
    fn a_revocation_refuses_every_token_issued_before_it_even_within_one_second() {
        // sign-out, sign-in and sign-out again, all in second 1000
        let mut valid_after = 0;
        let first = token_iat(valid_after, 1000);
        valid_after = revoke_tokens(valid_after, 1000);
        assert!(first <= valid_after, "the first token is refused");
        let second = token_iat(valid_after, 1000);
        assert!(
            second > valid_after,
            "a token after the sign-out is accepted"
        );
        valid_after = revoke_tokens(valid_after, 1000);
        assert!(second <= valid_after, "the second sign-out refuses it too");
        let third = token_iat(valid_after, 1000);
        assert!(third > valid_after);
        // the next second needs no bump beyond what is already refused
        assert_eq!(revoke_tokens(valid_after, 1005), 1005);
        assert_eq!(revoke_tokens(0, 1005), 1005);
    }
}
