//! Error codes of the gateway's API: one [`ErrorCode`] that knows its HTTP status and its
//! gRPC code, so both transports answer alike, and the [`Reason`]s that refine it in the
//! envelope. The envelope itself is written at the edge (`gateway_edge::ApiError`).

use http::StatusCode;

/// Every error code the gateway answers with. The string form is part of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    InvalidTenant,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    Internal,
    BadGateway,
    StoreUnavailable,
    NotReady,
    UpstreamUnavailable,
    UpstreamTimeout,
    /// The gateway sheds load: too many requests in flight.
    Overloaded,
    /// The request's header section is over the gateway's limit.
    HeadersTooLarge,
    /// The request did not arrive within the connection's limit.
    RequestTimeout,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidTenant => "invalid_tenant",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
        }
    }

    pub const fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidTenant => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorCode::StoreUnavailable
            | ErrorCode::NotReady
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub const fn grpc_code(self) -> GrpcCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidTenant => GrpcCode::InvalidArgument,
            ErrorCode::Unauthenticated => GrpcCode::Unauthenticated,
            ErrorCode::Forbidden => GrpcCode::PermissionDenied,
            ErrorCode::NotFound => GrpcCode::NotFound,
            ErrorCode::MethodNotAllowed => GrpcCode::Unimplemented,
            ErrorCode::Conflict => GrpcCode::Aborted,
            ErrorCode::PayloadTooLarge => GrpcCode::OutOfRange,
            ErrorCode::UnsupportedMediaType => GrpcCode::InvalidArgument,
            ErrorCode::RateLimited => GrpcCode::ResourceExhausted,
            ErrorCode::Internal => GrpcCode::Internal,
            ErrorCode::BadGateway
            | ErrorCode::StoreUnavailable
            | ErrorCode::NotReady
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::Overloaded => GrpcCode::Unavailable,
            ErrorCode::UpstreamTimeout => GrpcCode::DeadlineExceeded,
            ErrorCode::HeadersTooLarge => GrpcCode::ResourceExhausted,
            ErrorCode::RequestTimeout => GrpcCode::DeadlineExceeded,
        }
    }
}

/// Defines [`Reason`]: each variant with its doc and its wire string, and [`Reason::ALL`],
/// so the list the tests walk cannot miss a variant.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $code:literal,)+) => {
        /// A more precise code than the [`ErrorCode`] for the envelope (e.g.
        /// `refresh_token_reused` for an `Unauthenticated` error); the status still comes
        /// from the `ErrorCode`. The string form is part of the API.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)+
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)+];

            /// The code written in the envelope.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)+
                }
            }
        }
    };
}

reasons! {
    // the request itself (both planes)
    /// The request head is not valid HTTP/1.1.
    MalformedRequest => "malformed_request",
    /// The request's length is ambiguous (`content-length` against `transfer-encoding`).
    AmbiguousFraming => "ambiguous_framing",
    /// The path, a path segment or a runner path is not in normal form.
    InvalidPath => "invalid_path",
    /// A Google link completed in a browser other than the one that started it.
    LinkNotBound => "link_not_bound",
    /// A Google sign-in completed in another browser than the one that started it.
    SigninNotBound => "signin_not_bound",
    /// The identity provider refused the authorization code (reused or expired).
    InvalidGrant => "invalid_grant",
    /// The change would leave no platform admin who can sign in.
    LastPlatformAdmin => "last_platform_admin",
    /// An admin may not lock themselves out (disable or force-reset themselves).
    SelfLockout => "self_lockout",
    /// A whole-routing replacement needs `expected_revision` (and an empty one `confirm_empty`).
    RoutingReplaceUnsafe => "routing_replace_unsafe",
    /// The call's deadline (the client's `grpc-timeout` or the gateway's timeout) passed.
    DeadlineExceeded => "deadline_exceeded",
    /// A body on a method that carries none (GET, HEAD, DELETE, OPTIONS).
    UnexpectedBody => "unexpected_body",
    /// The `host` header is not a host and optional port.
    InvalidHost => "invalid_host",
    /// The body is not valid JSON.
    MalformedJson => "malformed_json",
    /// The JSON body nests deeper than allowed.
    JsonTooDeep => "json_too_deep",
    /// The body does not match the expected fields.
    InvalidBody => "invalid_body",
    /// Required parameters are missing or malformed (token endpoint, OIDC callback).
    InvalidRequest => "invalid_request",

    // the tenant header
    /// No `x-tenant-id` (or no `tenant_id` where one is required).
    MissingTenant => "missing_tenant",
    /// More than one `x-tenant-id` header.
    AmbiguousTenant => "ambiguous_tenant",
    /// The tenant id is not well formed.
    InvalidTenant => "invalid_tenant",

    // the caller's credential
    /// No bearer token and no session cookie.
    MissingToken => "missing_token",
    /// More than one `Authorization` header.
    AmbiguousToken => "ambiguous_token",
    /// The credential is not a well-formed bearer token or JWT.
    MalformedToken => "malformed_token",
    /// A cookie-authenticated change failed the double-submit CSRF check.
    CsrfFailed => "csrf_failed",
    /// The JWT is not an access token (`typ`).
    WrongTokenType => "wrong_token_type",
    /// The token's `kid` is no published (or no longer valid) key.
    UnknownKey => "unknown_key",
    /// The token's algorithm is not its key's.
    AlgorithmMismatch => "algorithm_mismatch",
    /// The token's signature does not verify.
    BadSignature => "bad_signature",
    /// The token's issuer is not ours.
    WrongIssuer => "wrong_issuer",
    /// The token is not meant for this audience.
    WrongAudience => "wrong_audience",
    /// The token is past its expiry (with leeway).
    TokenExpired => "token_expired",
    /// The token's `nbf` is still ahead (with leeway).
    TokenNotYetValid => "token_not_yet_valid",
    /// The token's subject is no known principal.
    UnknownPrincipal => "unknown_principal",
    /// The principal is disabled.
    PrincipalDisabled => "principal_disabled",
    /// The token was issued before the principal's global sign-out.
    TokenRevoked => "token_revoked",
    /// The token's session has ended.
    SessionRevoked => "session_revoked",

    // authorization
    /// The principal holds nothing in the request's tenant.
    NotTenantMember => "not_tenant_member",
    /// Tenant member, but no right matches the action.
    NoMatchingRight => "no_matching_right",
    /// A platform action and no platform right matches.
    NotPlatformAuthorized => "not_platform_authorized",
    /// The caller may not act on that principal.
    NotAuthorizedForPrincipal => "not_authorized_for_principal",
    /// The assignment would grant rights the caller does not hold.
    PrivilegeEscalation => "privilege_escalation",
    /// A tenant admin may add only members of their tenant (or its own service
    /// accounts); anyone else joins by accepting an invitation.
    InvitationRequired => "invitation_required",
    /// The invitation's role is gone or its inviter can no longer grant it.
    InvitationStale => "invitation_stale",
    /// Too many invitations of one tenant are pending.
    TooManyInvitations => "too_many_invitations",

    // sign-in and sessions
    /// Wrong email or password.
    InvalidCredentials => "invalid_credentials",
    /// The account is disabled.
    AccountDisabled => "account_disabled",
    /// The email address is not verified yet.
    EmailNotVerified => "email_not_verified",
    /// A service account's client authentication failed.
    InvalidClient => "invalid_client",
    /// The token endpoint supports `client_credentials` only.
    UnsupportedGrantType => "unsupported_grant_type",
    /// A one-time (verification, reset) token is not valid or has expired.
    InvalidToken => "invalid_token",
    /// The refresh token is missing or not valid.
    InvalidRefreshToken => "invalid_refresh_token",
    /// The session of the refresh token has expired.
    RefreshTokenExpired => "refresh_token_expired",
    /// A concurrent request just rotated this refresh token.
    RefreshTokenAlreadyRotated => "refresh_token_already_rotated",
    /// The refresh token was used before; its session is ended.
    RefreshTokenReused => "refresh_token_reused",

    // two-factor authentication
    /// The pending two-factor sign-in is unknown or has expired.
    InvalidMfaToken => "invalid_mfa_token",
    /// The two-factor code is not valid.
    InvalidMfaCode => "invalid_mfa_code",
    /// Too many wrong two-factor codes for one sign-in.
    MfaAttemptsExhausted => "mfa_attempts_exhausted",
    /// Two-factor authentication is off.
    MfaNotEnabled => "mfa_not_enabled",
    /// No two-factor enrolment was started.
    MfaNotEnrolled => "mfa_not_enrolled",
    /// Two-factor authentication is on already.
    MfaAlreadyEnabled => "mfa_already_enabled",

    // accounts and passwords
    /// Not plausibly an email address.
    InvalidEmail => "invalid_email",
    /// An account with this email exists.
    EmailTaken => "email_taken",
    /// The password is under the minimum length.
    PasswordTooShort => "password_too_short",
    /// The password is over the maximum length.
    PasswordTooLong => "password_too_long",
    /// The password is on the list of common passwords.
    PasswordTooCommon => "password_too_common",
    /// The password contains the email address or the service name.
    PasswordContextual => "password_contextual",
    /// The password is one repeated character.
    PasswordRepetitive => "password_repetitive",

    // sign-in with an identity provider
    /// The provider is not configured.
    ProviderNotConfigured => "provider_not_configured",
    /// The identity provider refused the sign-in.
    AccessDenied => "access_denied",
    /// The provider sign-in is unknown or has expired.
    InvalidState => "invalid_state",
    /// The provider's ID token is not valid.
    InvalidIdToken => "invalid_id_token",
    /// The provider did not answer as expected.
    IdentityProviderError => "identity_provider_error",
    /// The provider did not share an email address.
    EmailRequired => "email_required",
    /// An account with the provider's email exists (link it from there).
    AccountExists => "account_exists",
    /// The provider identity is linked to another user.
    IdentityInUse => "identity_in_use",

    // abuse limits
    /// A rate limit refused the request.
    RateLimited => "rate_limited",
    /// Too many failures locked the account for a while.
    AccountLocked => "account_locked",
    /// The mailbox's budget of mails is spent (counted only, never answered).
    MailboxBudget => "mailbox_budget",

    // identity and access administration
    /// A principal id is neither a `usr_` nor a `svc_` id.
    InvalidPrincipal => "invalid_principal",
    /// No such role.
    UnknownRole => "unknown_role",
    /// A role name is not 1 to 64 characters of `[a-z0-9_]`.
    InvalidRoleName => "invalid_role_name",
    /// A role has too many rights.
    InvalidRights => "invalid_rights",
    /// A right name is not valid.
    InvalidRight => "invalid_right",
    /// A role with this name exists.
    RoleExists => "role_exists",
    /// The right is registered already.
    RightExists => "right_exists",
    /// Built-in roles cannot be changed.
    BuiltinRole => "builtin_role",
    /// The action to explain is missing or too long.
    InvalidAction => "invalid_action",
    /// No such identity provider.
    UnknownProvider => "unknown_provider",
    /// The provider subject is missing or too long.
    InvalidSubject => "invalid_subject",
    /// A service account's name is not 1 to 128 printable characters.
    InvalidName => "invalid_name",
    /// A secret's overlap is over the maximum.
    InvalidOverlap => "invalid_overlap",
    /// Admins cannot delete themselves.
    SelfDelete => "self_delete",

    // routing and rebalancing
    /// The service kind is not aggregate, projection or runner.
    InvalidKind => "invalid_kind",
    /// The shard id is not valid.
    InvalidShard => "invalid_shard",
    /// The routing document or its endpoints are not valid.
    InvalidRouting => "invalid_routing",
    /// The routing changed concurrently.
    RoutingRevisionConflict => "routing_revision_conflict",
    /// The tenant is not routed for that service kind.
    TenantNotRouted => "tenant_not_routed",
    /// The shard is not in the directory.
    UnknownShard => "unknown_shard",
    /// The tenant is on the target shard already.
    AlreadyOnTarget => "already_on_target",
    /// No such rebalance plan.
    PlanNotFound => "plan_not_found",
    /// Another plan is active for that placement.
    PlanAlreadyActive => "plan_already_active",
    /// The plan is being carried out or changed meanwhile.
    PlanInProgress => "plan_in_progress",
    /// The plan's state does not allow the step.
    PlanNotApplicable => "plan_not_applicable",
    /// The placement moved since the plan was made.
    PlacementMoved => "placement_moved",
    /// The target shard is gone.
    TargetMissing => "target_missing",
    /// The readiness gates do not all pass.
    GatesNotReady => "gates_not_ready",

    // the data plane
    /// The state mirrors are too old to trust.
    StateStale => "state_stale",
    /// At the concurrency limit: load is shed.
    LoadShed => "load_shed",
    /// Every endpoint of the shard is failing.
    CircuitOpen => "circuit_open",
    /// The aggregate id is missing or too long.
    InvalidAggregateId => "invalid_aggregate_id",

    // an aggregate's own answer, by its gRPC code
    /// `INVALID_ARGUMENT` from the aggregate.
    InvalidArgument => "invalid_argument",
    /// `FAILED_PRECONDITION` from the aggregate.
    FailedPrecondition => "failed_precondition",
    /// `ALREADY_EXISTS` from the aggregate.
    AlreadyExists => "already_exists",
    /// `ABORTED` from the aggregate.
    Aborted => "aborted",
    /// `NOT_FOUND` from the aggregate.
    NotFound => "not_found",
    /// `PERMISSION_DENIED` from the aggregate.
    PermissionDenied => "permission_denied",
    /// `RESOURCE_EXHAUSTED` from the aggregate.
    ResourceExhausted => "resource_exhausted",
    /// Any other failure answered by the aggregate.
    UpstreamError => "upstream_error",
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The canonical gRPC status codes (grpc/doc/statuscodes.md) the gateway answers with; the
/// number is the one on the wire (`grpc-status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The code's number on the wire.
    pub const fn number(self) -> i32 {
        self as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_alike_on_both_transports() {
        assert_eq!(ErrorCode::Unauthenticated.http_status(), 401);
        assert_eq!(ErrorCode::Unauthenticated.grpc_code().number(), 16);
        assert_eq!(ErrorCode::Forbidden.http_status(), 403);
        assert_eq!(ErrorCode::Forbidden.grpc_code(), GrpcCode::PermissionDenied);
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
        assert_eq!(ErrorCode::UpstreamTimeout.http_status(), 504);
        assert_eq!(ErrorCode::UpstreamTimeout.grpc_code().number(), 4);
    }

    #[test]
    fn reasons_are_unique_lowercase_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let code = reason.as_str();
            assert!(seen.insert(code), "{code} twice");
            assert!(
                !code.is_empty()
                    && !code.starts_with('_')
                    && !code.ends_with('_')
                    && !code.contains("__")
                    && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code} is not snake_case"
            );
            assert_eq!(reason.to_string(), code);
        }
    }
}
