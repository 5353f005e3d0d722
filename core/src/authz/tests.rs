//! Rights, tenant ids and the decision function: the grammar of rights, wildcards, tenant scoping and disabled principals.

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
        revoked_sessions: Vec::new(),
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

#[test]
fn denials_carry_their_code_into_the_envelope() {
    use Reason::*;
    for reason in [TenantRight, PlatformRight] {
        assert_eq!(reason.denial(), None);
    }
    for reason in [
        PrincipalDisabled,
        NotTenantMember,
        NoMatchingRight,
        NotPlatformAuthorized,
    ] {
        assert_eq!(reason.denial().map(|r| r.as_str()), Some(reason.code()));
    }
}

#[test]
fn sessions_ended_on_their_own_are_named_and_old_documents_still_read() {
    let mut rights = principal(Vec::new());
    assert!(!rights.session_revoked("a"));
    rights.revoked_sessions.push(RevokedSession {
        sid: "a".into(),
        until: 10,
    });
    assert!(rights.session_revoked("a") && !rights.session_revoked("b"));
    // a document without the field (an older control plane) reads as no revoked session,
    // and an empty list is not written at all
    let old: EffectiveRights =
        serde_json::from_str(r#"{"principal_id":"usr_1","grants":[]}"#).unwrap();
    assert!(old.revoked_sessions.is_empty());
    let written = serde_json::to_string(&principal(Vec::new())).unwrap();
    assert!(!written.contains("revoked_sessions"), "{written}");
}
