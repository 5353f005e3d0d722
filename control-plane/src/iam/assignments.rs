//! Assignments (`assignment.<principal>.<tenant or _platform>`): the roles a principal
//! holds in one tenant, or platform-wide.

use std::collections::BTreeSet;

use gateway_core::authz::{Scope, TenantId};
use gateway_edge::ApiError;
use gateway_store::{Bucket, Record, Store, StoreError, read_all};
use serde::{Deserialize, Serialize};

use super::{PLATFORM_SCOPE_KEY, record_err};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    pub principal_id: String,
    #[serde(flatten)]
    pub scope: Scope,
    pub roles: BTreeSet<String>,
    pub updated_at: i64,
}

impl Record for Assignment {
    const KIND: &'static str = "assignment";
    const VERSION: u32 = 1;
}

fn scope_token(scope: &Scope) -> &str {
    match scope {
        Scope::Platform => PLATFORM_SCOPE_KEY,
        Scope::Tenant { tenant } => tenant.as_str(),
    }
}

fn key(principal_id: &str, scope: &Scope) -> String {
    format!("assignment.{principal_id}.{}", scope_token(scope))
}

pub fn scope_of(tenant: Option<TenantId>) -> Scope {
    match tenant {
        Some(tenant) => Scope::Tenant { tenant },
        None => Scope::Platform,
    }
}

async fn read_prefix(store: &Store, prefix: &str) -> Result<Vec<Assignment>, ApiError> {
    read_all(store.kv(Bucket::Iam).as_ref(), prefix)
        .await?
        .iter()
        .map(|entry| Assignment::from_bytes(&entry.value).map_err(record_err))
        .collect()
}

/// Every assignment of one principal.
pub async fn for_principal(store: &Store, principal_id: &str) -> Result<Vec<Assignment>, ApiError> {
    read_prefix(store, &format!("assignment.{principal_id}.")).await
}

/// Every assignment (admin listings and role fan-out).
pub async fn all(store: &Store) -> Result<Vec<Assignment>, ApiError> {
    read_prefix(store, "assignment.").await
}

/// Adds or removes `role` in one scope; `Ok(false)` when nothing changed.
pub async fn change(
    store: &Store,
    principal_id: &str,
    scope: &Scope,
    role: &str,
    grant: bool,
    now: i64,
) -> Result<bool, ApiError> {
    let kv = store.kv(Bucket::Iam);
    let key = key(principal_id, scope);
    for _ in 0..8 {
        let current = kv.get(&key).await?;
        let mut assignment = match &current {
            Some(entry) => Assignment::from_bytes(&entry.value).map_err(record_err)?,
            None => Assignment {
                principal_id: principal_id.to_string(),
                scope: scope.clone(),
                roles: BTreeSet::new(),
                updated_at: now,
            },
        };
        let changed = if grant {
            assignment.roles.insert(role.to_string())
        } else {
            assignment.roles.remove(role)
        };
        if !changed {
            return Ok(false);
        }
        assignment.updated_at = now;
        let result = match (&current, assignment.roles.is_empty()) {
            (Some(entry), true) => kv.delete(&key, Some(entry.revision)).await,
            (Some(entry), false) => kv
                .update(
                    &key,
                    assignment.to_bytes().map_err(record_err)?,
                    entry.revision,
                )
                .await
                .map(|_| ()),
            (None, _) => kv
                .create(&key, assignment.to_bytes().map_err(record_err)?)
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => return Ok(true),
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(StoreError::Conflict { key }.into())
}

/// Removes every assignment of a principal (deletion).
pub async fn remove_all(store: &Store, principal_id: &str) -> Result<usize, ApiError> {
    let assignments = for_principal(store, principal_id).await?;
    for assignment in &assignments {
        store
            .kv(Bucket::Iam)
            .delete(&key(principal_id, &assignment.scope), None)
            .await?;
    }
    Ok(assignments.len())
}
