//! Invitations (`invitation.<id>` in the iam bucket): a tenant admin offers a role in
//! their tenant to an email address, and only the signed-in user who proved that address
//! can accept it, which creates the assignment. A tenant admin cannot otherwise add a
//! principal who is not yet a member: joining a tenant is the user's decision, and an
//! admin of one tenant gains no reach over users of another by adding them.

use gateway_core::authz::TenantId;
use gateway_edge::ApiError;
use gateway_store::{Bucket, Record, Revision, Store, StoreError, read_all};
use serde::{Deserialize, Serialize};

use super::record_err;

/// Prefix of invitation ids.
pub const PREFIX: &str = "inv_";

/// As stored, and as the admin and invitation routes answer it: no secret belongs here
/// (a field added is on the wire, and in the document, at once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Invitation {
    pub id: String,
    pub tenant_id: TenantId,
    /// Normalised address of the invited person.
    pub email: String,
    pub role: String,
    /// The admin who invited.
    pub invited_by: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl Record for Invitation {
    const KIND: &'static str = "invitation";
    const VERSION: u32 = 1;
}

fn key(id: &str) -> String {
    format!("invitation.{id}")
}

/// Whether `id` has the shape of an invitation id (`inv_` and 32 hex digits).
pub fn well_formed(id: &str) -> bool {
    id.strip_prefix(PREFIX)
        .is_some_and(|hex| hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Stores a new invitation valid for `ttl_seconds`.
pub async fn create(
    store: &Store,
    tenant_id: TenantId,
    email: String,
    role: String,
    invited_by: String,
    ttl_seconds: i64,
    now: i64,
) -> Result<Invitation, ApiError> {
    let invitation = Invitation {
        id: format!("{PREFIX}{}", uuid::Uuid::new_v4().simple()),
        tenant_id,
        email,
        role,
        invited_by,
        created_at: now,
        expires_at: now + ttl_seconds,
    };
    store
        .kv(Bucket::Iam)
        .create(
            &key(&invitation.id),
            invitation.to_bytes().map_err(record_err)?,
        )
        .await?;
    Ok(invitation)
}

/// A pending invitation (expired ones are as good as absent) and its revision.
pub async fn get(
    store: &Store,
    id: &str,
    now: i64,
) -> Result<Option<(Invitation, Revision)>, ApiError> {
    if !well_formed(id) {
        return Ok(None);
    }
    let Some(entry) = store.kv(Bucket::Iam).get(&key(id)).await? else {
        return Ok(None);
    };
    let invitation = Invitation::from_bytes(&entry.value).map_err(record_err)?;
    Ok((invitation.expires_at > now).then_some((invitation, entry.revision)))
}

/// Every pending invitation, oldest first.
pub async fn pending(store: &Store, now: i64) -> Result<Vec<Invitation>, ApiError> {
    let mut found = Vec::new();
    for entry in read_all(store.kv(Bucket::Iam).as_ref(), "invitation.").await? {
        // an unreadable record is nobody's invitation (the purge removes it)
        match Invitation::from_bytes(&entry.value) {
            Ok(invitation) if invitation.expires_at > now => found.push(invitation),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(key = entry.key, error = %err, "unreadable invitation skipped")
            }
        }
    }
    found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(found)
}

/// Removes an invitation as read at `revision`: `Ok(false)` when someone else took it
/// first (accepted, declined or revoked concurrently), so exactly one of them wins.
pub async fn take(store: &Store, id: &str, revision: Revision) -> Result<bool, ApiError> {
    match store.kv(Bucket::Iam).delete(&key(id), Some(revision)).await {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Puts back an invitation taken by an accept that then failed, if nothing took its place.
pub async fn restore(store: &Store, invitation: &Invitation) -> Result<(), ApiError> {
    match store
        .kv(Bucket::Iam)
        .create(
            &key(&invitation.id),
            invitation.to_bytes().map_err(record_err)?,
        )
        .await
    {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Deletes expired invitations (and unreadable ones); how many went.
pub async fn purge_once(store: &Store, now: i64) -> Result<usize, ApiError> {
    let mut purged = 0;
    for entry in read_all(store.kv(Bucket::Iam).as_ref(), "invitation.").await? {
        let expired = Invitation::from_bytes(&entry.value)
            .map(|invitation| invitation.expires_at <= now)
            .unwrap_or(true);
        let id = entry.key.trim_start_matches("invitation.");
        if expired && take(store, id, entry.revision).await? {
            purged += 1;
        }
    }
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_any_read() {
        assert!(well_formed("inv_0123456789abcdef0123456789abcdef"));
        for bad in [
            "",
            "inv_",
            "inv_0123",
            "usr_0123456789abcdef0123456789abcdef",
            "inv_0123456789abcdef0123456789abcdeg",
            "inv_0123456789abcdef0123456789abcdef0",
            "inv_../../0123456789abcdef0123456789",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn expired_invitations_are_absent_then_purged_and_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&gateway_store::StoreConfig::Embedded {
            path: dir.path().join("state.redb"),
        })
        .await
        .unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let mut made = Vec::new();
        for ttl in [100, 1_000] {
            let invitation = create(
                &store,
                acme.clone(),
                "ada@example.com".into(),
                "tenant_member".into(),
                "usr_1".into(),
                ttl,
                0,
            )
            .await
            .unwrap();
            made.push(invitation);
        }
        // an assignment in the same bucket is left alone
        store
            .kv(Bucket::Iam)
            .create("assignment.usr_1.acme", bytes::Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert!(get(&store, &made[0].id, 100).await.unwrap().is_none());
        assert_eq!(pending(&store, 100).await.unwrap(), vec![made[1].clone()]);
        assert_eq!(purge_once(&store, 100).await.unwrap(), 1);
        assert_eq!(purge_once(&store, 100).await.unwrap(), 0);
        assert!(
            store
                .kv(Bucket::Iam)
                .get("assignment.usr_1.acme")
                .await
                .unwrap()
                .is_some()
        );
        let (_, revision) = get(&store, &made[1].id, 100).await.unwrap().unwrap();
        assert!(take(&store, &made[1].id, revision).await.unwrap());
        assert!(
            !take(&store, &made[1].id, revision).await.unwrap(),
            "taken once"
        );
        restore(&store, &made[1]).await.unwrap();
        assert!(get(&store, &made[1].id, 100).await.unwrap().is_some());
    }
}
