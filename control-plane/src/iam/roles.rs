//! Roles (`role.<name>`): named sets of rights. The built-in roles are fixed in code and
//! cannot be created, edited or deleted through the API.

use gateway_core::authz::{Right, builtin_role};
use gateway_edge::{ApiError, ErrorCode, Reason};
use gateway_store::{Bucket, Record, Store, StoreError, read_all};
use serde::{Deserialize, Serialize};

use super::record_err;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Role {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub rights: Vec<Right>,
    #[serde(default)]
    pub builtin: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Record for Role {
    const KIND: &'static str = "role";
    const VERSION: u32 = 1;
}

/// A registered right with its description (for discovery; roles may use any valid right).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RightInfo {
    pub name: Right,
    #[serde(default)]
    pub description: String,
    pub created_at: i64,
}

impl Record for RightInfo {
    const KIND: &'static str = "right";
    const VERSION: u32 = 1;
}

fn role_key(name: &str) -> String {
    format!("role.{name}")
}

fn right_key(name: &Right) -> String {
    format!("right.{}", gateway_store::encode_key_token(name.as_str()))
}

/// Role names: `^[a-z][a-z0-9_]{0,63}$`.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "a role name is 1 to 64 characters of [a-z0-9_], starting with a letter",
        )
        .with_reason(Reason::InvalidRoleName))
    }
}

pub fn parse_rights(rights: &[String]) -> Result<Vec<Right>, ApiError> {
    if rights.len() > 200 {
        return Err(ApiError::bad_request("a role has at most 200 rights")
            .with_reason(Reason::InvalidRights));
    }
    let mut parsed: Vec<Right> = rights
        .iter()
        .map(|r| {
            Right::parse(r).map_err(|err| {
                ApiError::bad_request(err.to_string()).with_reason(Reason::InvalidRight)
            })
        })
        .collect::<Result<_, _>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

fn builtin(name: &str) -> Option<Role> {
    builtin_role(name).map(|rights| Role {
        name: name.to_string(),
        description: "built-in role".into(),
        rights,
        builtin: true,
        created_at: 0,
        updated_at: 0,
    })
}

fn builtin_refused() -> ApiError {
    ApiError::new(ErrorCode::Forbidden, "built-in roles cannot be changed")
        .with_reason(Reason::BuiltinRole)
}

/// A role by name (built-in or custom).
pub async fn get(store: &Store, name: &str) -> Result<Option<Role>, ApiError> {
    if let Some(role) = builtin(name) {
        return Ok(Some(role));
    }
    if validate_name(name).is_err() {
        return Ok(None);
    }
    match store.kv(Bucket::Iam).get(&role_key(name)).await? {
        Some(entry) => Ok(Some(Role::from_bytes(&entry.value).map_err(record_err)?)),
        None => Ok(None),
    }
}

/// Every role, built-ins first.
pub async fn list(store: &Store) -> Result<Vec<Role>, ApiError> {
    let mut roles: Vec<Role> = [
        gateway_core::authz::PLATFORM_ADMIN,
        gateway_core::authz::TENANT_ADMIN,
        gateway_core::authz::TENANT_MEMBER,
    ]
    .iter()
    .filter_map(|n| builtin(n))
    .collect();
    for entry in read_all(store.kv(Bucket::Iam).as_ref(), "role.").await? {
        roles.push(Role::from_bytes(&entry.value).map_err(record_err)?);
    }
    Ok(roles)
}

pub async fn create(
    store: &Store,
    name: &str,
    description: &str,
    rights: Vec<Right>,
    now: i64,
) -> Result<Role, ApiError> {
    validate_name(name)?;
    if builtin(name).is_some() {
        return Err(builtin_refused());
    }
    let role = Role {
        name: name.to_string(),
        description: description.chars().take(500).collect(),
        rights,
        builtin: false,
        created_at: now,
        updated_at: now,
    };
    match store
        .kv(Bucket::Iam)
        .create(&role_key(name), role.to_bytes().map_err(record_err)?)
        .await
    {
        Ok(_) => Ok(role),
        Err(StoreError::Conflict { .. }) => Err(ApiError::new(
            ErrorCode::Conflict,
            "a role with this name exists",
        )
        .with_reason(Reason::RoleExists)),
        Err(err) => Err(err.into()),
    }
}

/// Replaces a custom role's rights and description; returns (before, after).
pub async fn update(
    store: &Store,
    name: &str,
    description: Option<&str>,
    rights: Option<Vec<Right>>,
    now: i64,
) -> Result<(Role, Role), ApiError> {
    if builtin(name).is_some() {
        return Err(builtin_refused());
    }
    validate_name(name)?;
    let kv = store.kv(Bucket::Iam);
    for _ in 0..8 {
        let Some(entry) = kv.get(&role_key(name)).await? else {
            return Err(ApiError::not_found("no such role"));
        };
        let before = Role::from_bytes(&entry.value).map_err(record_err)?;
        let mut after = before.clone();
        if let Some(description) = description {
            after.description = description.chars().take(500).collect();
        }
        if let Some(rights) = &rights {
            after.rights = rights.clone();
        }
        after.updated_at = now;
        match kv
            .update(
                &role_key(name),
                after.to_bytes().map_err(record_err)?,
                entry.revision,
            )
            .await
        {
            Ok(_) => return Ok((before, after)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(StoreError::Conflict {
        key: role_key(name),
    }
    .into())
}

pub async fn delete(store: &Store, name: &str) -> Result<Role, ApiError> {
    if builtin(name).is_some() {
        return Err(builtin_refused());
    }
    let role = get(store, name)
        .await?
        .ok_or_else(|| ApiError::not_found("no such role"))?;
    store.kv(Bucket::Iam).delete(&role_key(name), None).await?;
    Ok(role)
}

pub async fn register_right(
    store: &Store,
    name: Right,
    description: &str,
    now: i64,
) -> Result<RightInfo, ApiError> {
    let info = RightInfo {
        name,
        description: description.chars().take(500).collect(),
        created_at: now,
    };
    match store
        .kv(Bucket::Iam)
        .create(&right_key(&info.name), info.to_bytes().map_err(record_err)?)
        .await
    {
        Ok(_) => Ok(info),
        Err(StoreError::Conflict { .. }) => Err(ApiError::new(
            ErrorCode::Conflict,
            "this right is registered",
        )
        .with_reason(Reason::RightExists)),
        Err(err) => Err(err.into()),
    }
}

pub async fn list_rights(store: &Store) -> Result<Vec<RightInfo>, ApiError> {
    read_all(store.kv(Bucket::Iam).as_ref(), "right.")
        .await?
        .iter()
        .map(|entry| RightInfo::from_bytes(&entry.value).map_err(record_err))
        .collect()
}

pub async fn delete_right(store: &Store, name: &Right) -> Result<bool, ApiError> {
    let kv = store.kv(Bucket::Iam);
    if kv.get(&right_key(name)).await?.is_none() {
        return Ok(false);
    }
    kv.delete(&right_key(name), None).await?;
    Ok(true)
}
