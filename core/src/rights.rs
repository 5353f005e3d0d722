//! The names of the rights the gateway checks or grants (the strings are part of the API).

/// Every action on every resource (the platform admin's right).
pub const ALL: &str = "*";

/// Read users (list, look up, linked identities).
pub const IAM_USERS_READ: &str = "iam.users.read";
/// Create, change, enable, disable and delete users; link and unlink identities.
pub const IAM_USERS_WRITE: &str = "iam.users.write";
/// Set a user's password or force its reset.
pub const IAM_CREDENTIALS_WRITE: &str = "iam.credentials.write";
/// Reset a user's two-factor authentication or revoke its recovery codes.
pub const IAM_MFA_WRITE: &str = "iam.mfa.write";
/// List and revoke a principal's sessions.
pub const IAM_SESSIONS_WRITE: &str = "iam.sessions.write";
/// Read service accounts.
pub const IAM_SERVICE_ACCOUNTS_READ: &str = "iam.service_accounts.read";
/// Create, rotate and delete service accounts.
pub const IAM_SERVICE_ACCOUNTS_WRITE: &str = "iam.service_accounts.write";
/// Read roles and the registered rights.
pub const IAM_ROLES_READ: &str = "iam.roles.read";
/// Create, change and delete roles.
pub const IAM_ROLES_WRITE: &str = "iam.roles.write";
/// Register and delete rights.
pub const IAM_RIGHTS_WRITE: &str = "iam.rights.write";
/// Read role assignments and effective rights, and explain decisions.
pub const IAM_ASSIGNMENTS_READ: &str = "iam.assignments.read";
/// Assign and unassign roles.
pub const IAM_ASSIGNMENTS_WRITE: &str = "iam.assignments.write";

/// Read the routing document and the shard replicas.
pub const ROUTING_READ: &str = "routing.read";
/// Change the routing: placements, shards, reloads.
pub const ROUTING_WRITE: &str = "routing.write";
/// Every rebalancing route: read, plan, apply, roll back and cancel.
pub const REBALANCE_OPERATE: &str = "rebalance.operate";
/// Rotate the token signing keys.
pub const KEYS_ROTATE: &str = "keys.rotate";
/// Read the audit log.
pub const AUDIT_READ: &str = "audit.read";

/// Submit a command to an aggregate (the resource is the aggregate type).
pub const COMMAND_SUBMIT: &str = "command.submit";
/// [`COMMAND_SUBMIT`] for every aggregate type.
pub const COMMAND_SUBMIT_ANY: &str = "command.submit:*";
/// Read a projection's view (the resource is the view type).
pub const QUERY_READ: &str = "query.read";
/// [`QUERY_READ`] for every view type.
pub const QUERY_READ_ANY: &str = "query.read:*";
/// Call a runner's admin routes.
pub const RUNNER_ADMIN: &str = "runner.admin";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Right;

    #[test]
    fn every_name_is_a_valid_right() {
        for name in [
            ALL,
            IAM_USERS_READ,
            IAM_USERS_WRITE,
            IAM_CREDENTIALS_WRITE,
            IAM_MFA_WRITE,
            IAM_SESSIONS_WRITE,
            IAM_SERVICE_ACCOUNTS_READ,
            IAM_SERVICE_ACCOUNTS_WRITE,
            IAM_ROLES_READ,
            IAM_ROLES_WRITE,
            IAM_RIGHTS_WRITE,
            IAM_ASSIGNMENTS_READ,
            IAM_ASSIGNMENTS_WRITE,
            ROUTING_READ,
            ROUTING_WRITE,
            REBALANCE_OPERATE,
            KEYS_ROTATE,
            AUDIT_READ,
            COMMAND_SUBMIT,
            COMMAND_SUBMIT_ANY,
            QUERY_READ,
            QUERY_READ_ANY,
            RUNNER_ADMIN,
        ] {
            assert!(Right::parse(name).is_ok(), "{name}");
        }
        for (any, action) in [
            (COMMAND_SUBMIT_ANY, COMMAND_SUBMIT),
            (QUERY_READ_ANY, QUERY_READ),
        ] {
            assert_eq!(any.strip_suffix(":*"), Some(action));
        }
    }
}
