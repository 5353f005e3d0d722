//! Authorization: rights, tenant ids, the effective-rights document the control plane
//! publishes per principal, and the one decision function both planes use.
//!
//! A right is `<action>` or `<action>:<resource>`: the action is dot-separated lowercase
//! segments and may end with `.*` (every action below) or be `*` (every action); the
//! resource is a name or `*`; a right without a resource covers every resource.
//! Rights held in a tenant apply only in that tenant; platform rights apply everywhere.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rights;

/// Longest tenant id.
pub const MAX_TENANT_LEN: usize = 63;

/// A tenant id: `^[a-z0-9][a-z0-9-]{0,62}$`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthzError {
    #[error(
        "invalid tenant id {0:?}: 1 to 63 characters of [a-z0-9-], starting with a letter or digit"
    )]
    Tenant(String),
    #[error("invalid right {0:?}: <action>[:<resource>] with a dot-separated lowercase action")]
    Right(String),
}

impl TenantId {
    pub fn parse(value: &str) -> Result<TenantId, AuthzError> {
        let bytes = value.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_TENANT_LEN
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok {
            Ok(TenantId(value.to_string()))
        } else {
            Err(AuthzError::Tenant(value.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = AuthzError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        TenantId::parse(&value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The shape of a tenant id, for API documents.
pub const TENANT_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,62}$";
/// The shape of a right, for API documents: `*`, or dotted segments of `[a-z0-9_]` (the
/// last one may be `*`), with an optional `:resource`.
pub const RIGHT_PATTERN: &str =
    "^(\\*|[a-z0-9_]{1,64}(\\.[a-z0-9_]{1,64})*(\\.\\*)?(:(\\*|[A-Za-z0-9_.-]{1,128}))?)$";

/// A text schema of `pattern` (tenant ids and rights are strings on the wire).
#[cfg(feature = "openapi")]
fn text_schema(
    pattern: &str,
    max: usize,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(Some(max))
        .into()
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for TenantId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        text_schema(TENANT_PATTERN, 63)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for TenantId {}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Right {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        text_schema(RIGHT_PATTERN, 200)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Right {}

/// A validated right.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Right {
    text: String,
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_resource(s: &str) -> bool {
    s == "*"
        || (!s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
}

impl Right {
    pub fn parse(text: &str) -> Result<Right, AuthzError> {
        let (action, resource) = match text.split_once(':') {
            Some((a, r)) => (a, Some(r)),
            None => (text, None),
        };
        let action_ok = action == "*" || {
            let segments: Vec<&str> = action.split('.').collect();
            let (last, head) = segments
                .split_last()
                .map_or((None, &[][..]), |(l, h)| (Some(*l), h));
            head.iter().all(|s| valid_segment(s))
                && last.is_some_and(|l| valid_segment(l) || (l == "*" && !head.is_empty()))
        };
        let resource_ok = resource.is_none_or(valid_resource);
        if action_ok && resource_ok && text.len() <= 200 && !(action == "*" && resource.is_some()) {
            Ok(Right {
                text: text.to_string(),
            })
        } else {
            Err(AuthzError::Right(text.chars().take(200).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn parts(&self) -> (&str, Option<&str>) {
        match self.text.split_once(':') {
            Some((a, r)) => (a, Some(r)),
            None => (&self.text, None),
        }
    }

    /// Whether this right allows `action` on `resource`.
    pub fn allows(&self, action: &str, resource: Option<&str>) -> bool {
        let (pattern, scope) = self.parts();
        let action_ok = pattern == "*"
            || pattern == action
            || pattern.strip_suffix(".*").is_some_and(|prefix| {
                action.len() > prefix.len()
                    && action.starts_with(prefix)
                    && action.as_bytes()[prefix.len()] == b'.'
            });
        let resource_ok = match (scope, resource) {
            (None, _) | (Some("*"), _) => true,
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
        };
        action_ok && resource_ok
    }

    /// Whether every request this right allows is also allowed by `other` (used to stop
    /// a tenant admin from granting more than they hold).
    pub fn covered_by(&self, other: &Right) -> bool {
        let (action, resource) = self.parts();
        let (o_action, o_resource) = other.parts();
        let action_covered = o_action == "*"
            || o_action == action
            || o_action.strip_suffix(".*").is_some_and(|prefix| {
                let own = action.strip_suffix(".*").unwrap_or(action);
                own.starts_with(prefix) && own.as_bytes().get(prefix.len()) == Some(&b'.')
            });
        let resource_covered = match (o_resource, resource) {
            (None, _) | (Some("*"), _) => true,
            (Some(o), Some(r)) => o == r && r != "*",
            (Some(_), None) => false,
        };
        action != "*" && action_covered && resource_covered
            || (o_action == "*" && o_resource.is_none())
    }
}

impl TryFrom<String> for Right {
    type Error = AuthzError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Right::parse(&value)
    }
}

impl From<Right> for String {
    fn from(value: Right) -> Self {
        value.text
    }
}

/// Where a grant applies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum Scope {
    Platform,
    Tenant { tenant: TenantId },
}

/// One role held by the principal in one scope, with the role's rights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Grant {
    #[serde(flatten)]
    pub scope: Scope,
    pub role: String,
    pub rights: Vec<Right>,
}

/// Payload of the signed `principal.<id>` document in the `authz` bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EffectiveRights {
    pub principal_id: String,
    #[serde(default)]
    pub disabled: bool,
    /// Access tokens issued at or before this Unix time are refused (0: none).
    #[serde(default)]
    pub tokens_valid_after: i64,
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Sessions ended one by one (sign-out of one device, an admin ending one session,
    /// a reused refresh token) whose access tokens may still be unexpired: a token whose
    /// `sid` is listed is refused. An entry stays until `until`, the revocation plus the
    /// access-token lifetime; sessions ended by a global sign-out are covered by
    /// `tokens_valid_after` instead, so the list stays short.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_sessions: Vec<RevokedSession>,
}

/// One ended session in [`EffectiveRights::revoked_sessions`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevokedSession {
    pub sid: String,
    /// Unix time after which no access token of the session is unexpired.
    pub until: i64,
}

impl EffectiveRights {
    /// Whether the session `sid` was ended on its own (see `revoked_sessions`).
    pub fn session_revoked(&self, sid: &str) -> bool {
        self.revoked_sessions.iter().any(|r| r.sid == sid)
    }

    pub fn is_member(&self, tenant: &TenantId) -> bool {
        self.grants
            .iter()
            .any(|g| matches!(&g.scope, Scope::Tenant { tenant: t } if t == tenant))
    }

    pub fn is_platform(&self) -> bool {
        self.grants.iter().any(|g| g.scope == Scope::Platform)
    }
}

/// What is being asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The tenant of the call; `None` for platform-level actions.
    pub tenant: Option<&'a TenantId>,
    pub action: &'a str,
    pub resource: Option<&'a str>,
}

/// Why a request was allowed or denied (the codes are part of the API).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A right held in the request's tenant matched.
    TenantRight,
    /// A platform right matched.
    PlatformRight,
    PrincipalDisabled,
    /// The principal holds nothing in that tenant (tenant spoofing).
    NotTenantMember,
    /// Member, but no right matches.
    NoMatchingRight,
    /// A platform action and no platform right matches.
    NotPlatformAuthorized,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::TenantRight => "tenant_right",
            Reason::PlatformRight => "platform_right",
            Reason::PrincipalDisabled => "principal_disabled",
            Reason::NotTenantMember => "not_tenant_member",
            Reason::NoMatchingRight => "no_matching_right",
            Reason::NotPlatformAuthorized => "not_platform_authorized",
        }
    }

    /// The envelope reason of a denial (the same code); `None` for the reasons that allow.
    pub const fn denial(self) -> Option<crate::error::Reason> {
        match self {
            Reason::TenantRight | Reason::PlatformRight => None,
            Reason::PrincipalDisabled => Some(crate::error::Reason::PrincipalDisabled),
            Reason::NotTenantMember => Some(crate::error::Reason::NotTenantMember),
            Reason::NoMatchingRight => Some(crate::error::Reason::NoMatchingRight),
            Reason::NotPlatformAuthorized => Some(crate::error::Reason::NotPlatformAuthorized),
        }
    }
}

/// The answer, with the grant that matched (for `explain`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub right: Option<String>,
}

impl Decision {
    fn deny(reason: Reason) -> Decision {
        Decision {
            allowed: false,
            reason,
            role: None,
            right: None,
        }
    }
}

/// Decides `request` for the principal described by `rights`.
pub fn decide(rights: &EffectiveRights, request: &Request<'_>) -> Decision {
    match judge(rights, request) {
        Ok((reason, grant, right)) => Decision {
            allowed: true,
            reason,
            role: Some(grant.role.clone()),
            right: Some(right.as_str().to_string()),
        },
        Err(reason) => Decision::deny(reason),
    }
}

/// [`decide`] without naming the matching grant: the same answer, and nothing allocated
/// (the request path of the data plane asks this once per request).
pub fn permits(rights: &EffectiveRights, request: &Request<'_>) -> Result<Reason, Reason> {
    judge(rights, request).map(|(reason, _, _)| reason)
}

/// The one place the rules live: the grant and right that allow `request`, or why none does.
fn judge<'r>(
    rights: &'r EffectiveRights,
    request: &Request<'_>,
) -> Result<(Reason, &'r Grant, &'r Right), Reason> {
    if rights.disabled {
        return Err(Reason::PrincipalDisabled);
    }
    let matched = |grant: &'r Grant| {
        grant
            .rights
            .iter()
            .find(|r| r.allows(request.action, request.resource))
            .map(|right| (grant, right))
    };
    let platform = || {
        rights
            .grants
            .iter()
            .filter(|g| g.scope == Scope::Platform)
            .find_map(matched)
    };
    let Some(tenant) = request.tenant else {
        return platform()
            .map(|(grant, right)| (Reason::PlatformRight, grant, right))
            .ok_or(Reason::NotPlatformAuthorized);
    };
    let mut member = false;
    for grant in &rights.grants {
        if let Scope::Tenant { tenant: t } = &grant.scope
            && t == tenant
        {
            member = true;
            if let Some((grant, right)) = matched(grant) {
                return Ok((Reason::TenantRight, grant, right));
            }
        }
    }
    if let Some((grant, right)) = platform() {
        return Ok((Reason::PlatformRight, grant, right));
    }
    Err(if member {
        Reason::NoMatchingRight
    } else {
        Reason::NotTenantMember
    })
}

/// Built-in role names.
pub const PLATFORM_ADMIN: &str = "platform_admin";
pub const TENANT_ADMIN: &str = "tenant_admin";
pub const TENANT_MEMBER: &str = "tenant_member";

/// Rights of the built-in roles (they cannot be edited).
pub fn builtin_role(name: &str) -> Option<Vec<Right>> {
    let rights: &[&str] = match name {
        PLATFORM_ADMIN => &[rights::ALL],
        TENANT_ADMIN => &[
            rights::IAM_USERS_READ,
            rights::IAM_ASSIGNMENTS_READ,
            rights::IAM_ASSIGNMENTS_WRITE,
            rights::IAM_SERVICE_ACCOUNTS_READ,
            rights::IAM_SERVICE_ACCOUNTS_WRITE,
            rights::IAM_SESSIONS_WRITE,
            rights::AUDIT_READ,
            rights::COMMAND_SUBMIT_ANY,
            rights::QUERY_READ_ANY,
            rights::RUNNER_ADMIN,
        ],
        TENANT_MEMBER => &[rights::COMMAND_SUBMIT_ANY, rights::QUERY_READ_ANY],
        _ => return None,
    };
    Some(rights.iter().filter_map(|r| Right::parse(r).ok()).collect())
}

#[cfg(test)]
mod tests;
