//! Effective rights per principal, computed from the assignments, the roles and the
//! principal's status, and published as the signed `principal.<id>` document in the
//! `authz` bucket (revision + 1, compare-and-set) for the data planes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use gateway_core::authz::{EffectiveRights, Grant};
use gateway_core::signed::{DocSigningKey, DocVerifyingKeys};
use gateway_core::token::SERVICE_PREFIX;
use gateway_edge::ApiError;
use gateway_store::{Bucket, Store, StoreError};

use super::{assignments, roles};
use crate::auth::{service_accounts, users};

/// Document kind (and key prefix) of effective rights.
pub const PRINCIPAL_DOC: &str = "principal";

/// Publications running at once during a fan-out.
const FAN_OUT: usize = 16;

pub struct Publisher {
    pub store: Store,
    pub signer: Arc<DocSigningKey>,
}

fn doc_key(principal_id: &str) -> String {
    format!("{PRINCIPAL_DOC}.{principal_id}")
}

impl Publisher {
    /// What the principal may do now, from the source of truth. Unknown principals come
    /// out disabled with no grants.
    pub async fn effective(
        &self,
        principal_id: &str,
        now: i64,
    ) -> Result<EffectiveRights, ApiError> {
        let held = assignments::for_principal(&self.store, principal_id).await?;
        let mut roles = RoleCache::default();
        self.compose(principal_id, &held, &mut roles, now).await
    }

    /// Effective rights from already-loaded assignments, resolving roles through `roles`.
    async fn compose(
        &self,
        principal_id: &str,
        held: &[assignments::Assignment],
        roles: &mut RoleCache,
        now: i64,
    ) -> Result<EffectiveRights, ApiError> {
        let (exists, disabled, tokens_valid_after, mut revoked_sessions) =
            if principal_id.starts_with(SERVICE_PREFIX) {
                match service_accounts::get(&self.store, principal_id).await? {
                    Some((account, _)) => (
                        true,
                        account.disabled,
                        account.tokens_valid_after,
                        Vec::new(),
                    ),
                    None => (false, true, now, Vec::new()),
                }
            } else {
                match users::get(&self.store, principal_id).await? {
                    Some((user, _)) => (
                        true,
                        user.status != users::UserStatus::Active,
                        user.tokens_valid_after,
                        user.ended_sessions,
                    ),
                    None => (false, true, now, Vec::new()),
                }
            };
        // sessions ended one by one, until their tokens have expired
        revoked_sessions.retain(|ended| ended.until > now);
        revoked_sessions.sort_by(|a, b| a.sid.cmp(&b.sid));
        let mut grants = Vec::new();
        if exists {
            for assignment in held {
                for role_name in &assignment.roles {
                    // a role deleted meanwhile grants nothing
                    if let Some(role) = roles.get(&self.store, role_name).await? {
                        grants.push(Grant {
                            scope: assignment.scope.clone(),
                            role: role.name.clone(),
                            rights: role.rights.clone(),
                        });
                    }
                }
            }
        }
        Ok(EffectiveRights {
            principal_id: principal_id.to_string(),
            disabled,
            tokens_valid_after,
            grants,
            revoked_sessions,
        })
    }

    /// Recomputes and publishes one principal's document; returns its revision.
    pub async fn publish(&self, principal_id: &str, now: i64) -> Result<u64, ApiError> {
        let key = doc_key(principal_id);
        for _ in 0..8 {
            // the stored revision is read before the state the document is made from: a
            // publication racing a newer one fails its compare-and-set and starts over, so
            // a document made from older state (without a session ended meanwhile, say)
            // never replaces a newer one
            let current = self.store.kv(Bucket::Authz).get(&key).await?;
            let document = self.effective(principal_id, now).await?;
            if let Some(revision) = self
                .write_over(principal_id, current, document, now)
                .await?
            {
                return Ok(revision);
            }
        }
        Err(StoreError::Conflict { key }.into())
    }

    /// Signs and stores `document` as the revision after `current` (the entry as read),
    /// or returns the current revision when nothing changed; `None` when another
    /// publication wrote first.
    async fn write_over(
        &self,
        principal_id: &str,
        current: Option<gateway_store::KvEntry>,
        document: EffectiveRights,
        now: i64,
    ) -> Result<Option<u64>, ApiError> {
        let kv = self.store.kv(Bucket::Authz);
        let own = DocVerifyingKeys::new([self.signer.verifying_key()]);
        let key = doc_key(principal_id);
        let previous = current
            .as_ref()
            .and_then(|e| own.verify::<EffectiveRights>(&e.value, PRINCIPAL_DOC).ok());
        if let Some(previous) = &previous
            && previous.payload == document
        {
            return Ok(Some(previous.revision));
        }
        let revision = previous.map_or(0, |p| p.revision) + 1;
        let bytes = self
            .signer
            .sign(PRINCIPAL_DOC, revision, now, &document)
            .map_err(|err| ApiError::internal("signing effective rights", &err))?;
        let written = match &current {
            Some(entry) => kv.update(&key, bytes, entry.revision).await.map(|_| ()),
            None => kv.create(&key, bytes).await.map(|_| ()),
        };
        match written {
            Ok(()) => {
                metrics::counter!("gateway_authz_documents_published_total").increment(1);
                Ok(Some(revision))
            }
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Republishes every holder of `role` (after the role changed): the assignments are
    /// read once and each role resolved once, then the documents are written a bounded
    /// number at a time. Returns how many were published.
    pub async fn publish_holders_of(&self, role: &str, now: i64) -> Result<usize, ApiError> {
        let mut by_principal: BTreeMap<String, Vec<assignments::Assignment>> = BTreeMap::new();
        for assignment in assignments::all(&self.store).await? {
            by_principal
                .entry(assignment.principal_id.clone())
                .or_default()
                .push(assignment);
        }
        by_principal.retain(|_, held| held.iter().any(|a| a.roles.contains(role)));
        let mut roles = RoleCache::default();
        for held in by_principal.values() {
            for assignment in held {
                for name in &assignment.roles {
                    roles.get(&self.store, name).await?;
                }
            }
        }
        let roles = &roles;
        let count = by_principal.len();
        let results: Vec<Result<u64, ApiError>> = futures::stream::iter(by_principal)
            .map(|(id, held)| async move {
                let mut roles = roles.clone();
                let current = self.store.kv(Bucket::Authz).get(&doc_key(&id)).await?;
                let document = self.compose(&id, &held, &mut roles, now).await?;
                match self.write_over(&id, current, document, now).await? {
                    Some(revision) => Ok(revision),
                    // raced by another publication: made again from the current state
                    None => self.publish(&id, now).await,
                }
            })
            .buffer_unordered(FAN_OUT)
            .collect()
            .await;
        for result in results {
            result?;
        }
        Ok(count)
    }
}

/// Roles resolved once per computation.
#[derive(Clone, Default)]
struct RoleCache {
    roles: HashMap<String, Option<roles::Role>>,
}

impl RoleCache {
    async fn get(&mut self, store: &Store, name: &str) -> Result<Option<&roles::Role>, ApiError> {
        if !self.roles.contains_key(name) {
            let role = roles::get(store, name).await?;
            self.roles.insert(name.to_string(), role);
        }
        Ok(self.roles.get(name).and_then(Option::as_ref))
    }
}
