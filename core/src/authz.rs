//! Authorization: rights, tenant ids, the effective-rights document the control plane
//! publishes per principal, and the one decision function both planes use.
//!
//! A right is `<action>` or `<action>:<resource>`: the action is dot-separated lowercase
//! segments and may end with `.*` (every action below) or be `*` (every action); the
//! resource is a name or `*`; a right without a resource covers every resource.
//! Rights held in a tenant apply only in that tenant; platform rights apply everywhere.

use std::fmt;

use serde::{Deserialize, Serialize};

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
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum Scope {
    Platform,
    Tenant { tenant: TenantId },
}

/// One role held by the principal in one scope, with the role's rights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    #[serde(flatten)]
    pub scope: Scope,
    pub role: String,
    pub rights: Vec<Right>,
}

/// Payload of the signed `principal.<id>` document in the `authz` bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveRights {
    pub principal_id: String,
    #[serde(default)]
    pub disabled: bool,
    /// Access tokens issued at or before this Unix time are refused (0: none).
    #[serde(default)]
    pub tokens_valid_after: i64,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

impl EffectiveRights {
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
        PLATFORM_ADMIN => &["*"],
        TENANT_ADMIN => &[
            "iam.users.read",
            "iam.assignments.read",
            "iam.assignments.write",
            "iam.service_accounts.read",
            "iam.service_accounts.write",
            "iam.sessions.write",
            "audit.read",
            "command.submit:*",
            "query.read:*",
            "runner.admin",
        ],
        TENANT_MEMBER => &["command.submit:*", "query.read:*"],
        _ => return None,
    };
    Some(rights.iter().filter_map(|r| Right::parse(r).ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn right(text: &str) -> Right {
        Right::parse(text).unwrap()
    }

    fn tenant(text: &str) -> TenantId {
        TenantId::parse(text).unwrap()
    }

    fn member(t: &str, role: &str, rights: &[&str]) -> Grant {
        Grant {
            scope: Scope::Tenant { tenant: tenant(t) },
            role: role.into(),
            rights: rights.iter().map(|r| right(r)).collect(),
        }
    }

    fn principal(grants: Vec<Grant>) -> EffectiveRights {
        EffectiveRights {
            principal_id: "usr_1".into(),
            disabled: false,
            tokens_valid_after: 0,
            grants,
        }
    }

    #[test]
    fn tenant_ids_have_one_format() {
        for good in ["a", "acme", "acme-eu-1", "0day", &"a".repeat(63)] {
            assert!(TenantId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-acme",
            "Acme",
            "acme_1",
            "acme.eu",
            "a b",
            &"a".repeat(64),
            "ac/me",
            "é",
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rights_parse_and_match() {
        assert!(right("command.submit:order").allows("command.submit", Some("order")));
        assert!(!right("command.submit:order").allows("command.submit", Some("invoice")));
        assert!(right("command.submit:*").allows("command.submit", Some("invoice")));
        assert!(right("command.submit").allows("command.submit", Some("invoice")));
        assert!(!right("command.submit:order").allows("command.submit", None));
        assert!(right("iam.*").allows("iam.users.write", None));
        assert!(!right("iam.*").allows("iamx.users", None));
        assert!(!right("iam.*").allows("iam", None));
        assert!(right("*").allows("anything.at.all", Some("x")));
        assert!(!right("runner.admin").allows("runner.admins", None));
        for bad in [
            "",
            "Command.submit",
            "command..submit",
            "command.submit:",
            "*:order",
            "command.*x",
            "a:b:c",
            "command submit",
            ".x",
            "*.x",
        ] {
            assert!(Right::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn coverage_prevents_escalation() {
        assert!(right("command.submit:order").covered_by(&right("command.submit:*")));
        assert!(right("command.submit:order").covered_by(&right("command.*")));
        assert!(right("command.submit:*").covered_by(&right("command.submit")));
        assert!(!right("command.submit:*").covered_by(&right("command.submit:order")));
        assert!(!right("iam.*").covered_by(&right("iam.users.write")));
        assert!(!right("*").covered_by(&right("iam.*")));
        assert!(right("*").covered_by(&right("*")));
        assert!(right("iam.users.*").covered_by(&right("iam.*")));
    }

    #[test]
    fn decisions_follow_tenant_membership() {
        let p = principal(vec![member(
            "acme",
            TENANT_MEMBER,
            &["command.submit:order", "query.read:*"],
        )]);
        let acme = tenant("acme");
        let globex = tenant("globex");
        let ask = |t: &TenantId, action, resource| {
            decide(
                &p,
                &Request {
                    tenant: Some(t),
                    action,
                    resource,
                },
            )
        };
        let ok = ask(&acme, "command.submit", Some("order"));
        assert_eq!(
            (ok.allowed, ok.reason, ok.right.as_deref()),
            (true, Reason::TenantRight, Some("command.submit:order"))
        );
        assert_eq!(
            ask(&acme, "command.submit", Some("invoice")).reason,
            Reason::NoMatchingRight
        );
        assert_eq!(
            ask(&globex, "query.read", Some("x")).reason,
            Reason::NotTenantMember
        );
        assert_eq!(
            decide(
                &p,
                &Request {
                    tenant: None,
                    action: "iam.users.write",
                    resource: None
                }
            )
            .reason,
            Reason::NotPlatformAuthorized
        );
        let mut disabled = p.clone();
        disabled.disabled = true;
        assert_eq!(
            decide(
                &disabled,
                &Request {
                    tenant: Some(&acme),
                    action: "query.read",
                    resource: Some("x")
                }
            )
            .reason,
            Reason::PrincipalDisabled
        );
        let admin = principal(vec![Grant {
            scope: Scope::Platform,
            role: PLATFORM_ADMIN.into(),
            rights: builtin_role(PLATFORM_ADMIN).unwrap(),
        }]);
        let d = decide(
            &admin,
            &Request {
                tenant: Some(&globex),
                action: "iam.users.write",
                resource: None,
            },
        );
        assert_eq!(
            (d.allowed, d.reason, d.role.as_deref()),
            (true, Reason::PlatformRight, Some(PLATFORM_ADMIN))
        );
    }

    #[test]
    fn documents_round_trip_as_json() {
        let p = principal(vec![
            member("acme", TENANT_ADMIN, &["iam.*"]),
            Grant {
                scope: Scope::Platform,
                role: "auditor".into(),
                rights: vec![right("audit.read")],
            },
        ]);
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("\"scope\":\"tenant\""));
        let back: EffectiveRights = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
        assert!(
            serde_json::from_str::<EffectiveRights>(&text.replace("acme", "ACME")).is_err(),
            "tenant ids are checked on read"
        );
    }

    fn arb_tenant() -> impl Strategy<Value = TenantId> {
        "[a-z][a-z0-9-]{0,8}".prop_map(|t| TenantId::parse(&t).unwrap())
    }

    fn arb_right() -> impl Strategy<Value = Right> {
        prop_oneof![
            Just("*".to_string()),
            "(command|query|runner|iam)\\.(submit|read|admin|\\*)(:(order|invoice|\\*))?",
        ]
        .prop_filter_map("valid", |t| Right::parse(&t).ok())
    }

    proptest! {
        /// No tenant-scoped right ever grants anything outside its tenant.
        #[test]
        fn tenant_rights_never_leak_to_other_tenants(
            held in proptest::collection::vec((arb_tenant(), proptest::collection::vec(arb_right(), 1..4)), 1..4),
            asked in arb_tenant(),
            action in "(command\\.submit|query\\.read|runner\\.admin|iam\\.users\\.write)",
            resource in proptest::option::of("(order|invoice)"),
        ) {
            let grants: Vec<Grant> = held.iter().map(|(t, rights)| Grant {
                scope: Scope::Tenant { tenant: t.clone() },
                role: "custom".into(),
                rights: rights.clone(),
            }).collect();
            let p = principal(grants);
            let decision = decide(&p, &Request { tenant: Some(&asked), action: &action, resource: resource.as_deref() });
            if !held.iter().any(|(t, _)| t == &asked) {
                prop_assert!(!decision.allowed);
                prop_assert_eq!(decision.reason, Reason::NotTenantMember);
            }
            // and never for platform-level actions
            let platform = decide(&p, &Request { tenant: None, action: &action, resource: resource.as_deref() });
            prop_assert!(!platform.allowed);
            // the data plane's allocation-free question gives the same answers
            for (request, decision) in [
                (Request { tenant: Some(&asked), action: &action, resource: resource.as_deref() }, &decision),
                (Request { tenant: None, action: &action, resource: resource.as_deref() }, &platform),
            ] {
                let permitted = permits(&p, &request);
                prop_assert_eq!(permitted.is_ok(), decision.allowed);
                prop_assert_eq!(permitted.unwrap_or_else(|reason| reason), decision.reason);
            }
        }

        /// A right covered by another is never allowed more than it.
        #[test]
        fn coverage_is_sound(a in arb_right(), b in arb_right(),
            action in "(command\\.submit|query\\.read|runner\\.admin|iam\\.read)",
            resource in proptest::option::of("(order|invoice)")) {
            if a.covered_by(&b) && a.allows(&action, resource.as_deref()) {
                prop_assert!(b.allows(&action, resource.as_deref()), "{} covered by {} but not for {} {:?}", a.as_str(), b.as_str(), action, resource);
            }
        }
    }
}
