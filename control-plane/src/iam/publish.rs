//! Effective rights per principal, computed from the assignments, the roles and the
//! principal's status, and published as the signed `principal.<id>` document in the
//! `authz` bucket (revision + 1, compare-and-set) for the data planes.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use gateway_shared::ApiError;
use gateway_shared::authz::{EffectiveRights, Grant};
use gateway_shared::signed::{DocSigningKey, DocVerifyingKeys};
use gateway_shared::store::{Bucket, Store, StoreError};
use gateway_shared::token::SERVICE_PREFIX;

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
        let (exists, disabled, tokens_valid_after) = if principal_id.starts_with(SERVICE_PREFIX) {
            match service_accounts::get(&self.store, principal_id).await? {
                Some((account, _)) => (true, account.disabled, account.tokens_valid_after),
                None => (false, true, now),
            }
        } else {
            match users::get(&self.store, principal_id).await? {
                Some((user, _)) => (
                    true,
                    user.status != users::UserStatus::Active,
                    user.tokens_valid_after,
                ),
                None => (false, true, now),
            }
        };
        let mut grants = Vec::new();
        if exists {
            for assignment in assignments::for_principal(&self.store, principal_id).await? {
                for role_name in &assignment.roles {
                    // a role deleted meanwhile grants nothing
                    if let Some(role) = roles::get(&self.store, role_name).await? {
                        grants.push(Grant {
                            scope: assignment.scope.clone(),
                            role: role.name,
                            rights: role.rights,
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
        })
    }

    /// Recomputes and publishes one principal's document; returns its revision.
    pub async fn publish(&self, principal_id: &str, now: i64) -> Result<u64, ApiError> {
        let document = self.effective(principal_id, now).await?;
        let kv = self.store.kv(Bucket::Authz);
        let own = DocVerifyingKeys::new([self.signer.verifying_key()]);
        let key = doc_key(principal_id);
        for _ in 0..8 {
            let current = kv.get(&key).await?;
            let previous = current
                .as_ref()
                .and_then(|e| own.verify::<EffectiveRights>(&e.value, PRINCIPAL_DOC).ok());
            if let Some(previous) = &previous
                && previous.payload == document
            {
                return Ok(previous.revision);
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
                    return Ok(revision);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(StoreError::Conflict { key }.into())
    }

    /// Publishes many principals, a bounded number at once; the first error wins.
    pub async fn publish_many(
        &self,
        principal_ids: BTreeSet<String>,
        now: i64,
    ) -> Result<usize, ApiError> {
        let count = principal_ids.len();
        let results: Vec<Result<u64, ApiError>> = futures::stream::iter(principal_ids)
            .map(|id| async move { self.publish(&id, now).await })
            .buffer_unordered(FAN_OUT)
            .collect()
            .await;
        for result in results {
            result?;
        }
        Ok(count)
    }

    /// Every principal holding `role` anywhere.
    pub async fn holders_of(&self, role: &str) -> Result<BTreeSet<String>, ApiError> {
        Ok(assignments::all(&self.store)
            .await?
            .into_iter()
            .filter(|a| a.roles.contains(role))
            .map(|a| a.principal_id)
            .collect())
    }
}
