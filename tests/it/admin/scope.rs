//! Tenant admins' reach over principals, cell by cell of the matrix in docs/security.md:
//! reading a member is enough to be an admin of one of its tenants, account-wide powers
//! need every one of them, platform principals are out of reach, unknown and foreign
//! principals get the same answer, and joining a tenant takes an accepted invitation.

use serde_json::{Value, json};

use super::{Env, PASSWORD, env, published};

const UNKNOWN: &str = "usr_00000000000000000000000000000000";

async fn grant(env: &Env, admin: &str, who: &str, tenant: Option<&str>, role: &str) {
    let (status, answer) = env
        .call(
            "POST",
            "/admin/assignments",
            Some(admin),
            Some(json!({"principal_id": who, "tenant_id": tenant, "role": role})),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
}

/// Status and error code and message: what a caller can tell two refusals apart by.
fn refusal(status: u16, answer: &Value) -> (u16, String, String) {
    (
        status,
        answer["error"]["code"].to_string(),
        answer["error"]["message"].to_string(),
    )
}

fn in_demo(grant: &gateway_core::authz::Grant) -> bool {
    matches!(&grant.scope, gateway_core::authz::Scope::Tenant { tenant } if tenant.as_str() == "demo")
}

async fn verify_email(env: &Env, admin: &str, id: &str) {
    let (status, _) = env
        .call(
            "PATCH",
            &format!("/admin/users/{id}"),
            Some(admin),
            Some(json!({"email_verified": true})),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_admins_reach_a_principal_only_as_far_as_every_tenant_of_it_allows() {
    let env = env().await;
    let (admin, admin_id) = env
        .signin(
            gateway_tests::SnapshotKeys::ADMIN_EMAIL,
            gateway_tests::SnapshotKeys::ADMIN_PASSWORD,
        )
        .await;
    let (_, demo_boss_id) = env.user("boss@demo.example").await;
    let (_, dual_boss_id) = env.user("boss@both.example").await;
    let (both_token, both) = env.user("both@example.com").await;
    let (_, only_demo) = env.user("only-demo@example.com").await;
    let (_, outsider) = env.user("outsider@acme.example").await;
    let (_, padmin) = env.user("second-admin@example.com").await;
    grant(&env, &admin, &demo_boss_id, Some("demo"), "tenant_admin").await;
    grant(&env, &admin, &dual_boss_id, Some("demo"), "tenant_admin").await;
    grant(&env, &admin, &dual_boss_id, Some("acme"), "tenant_admin").await;
    grant(&env, &admin, &both, Some("acme"), "tenant_member").await;
    grant(&env, &admin, &both, Some("demo"), "tenant_member").await;
    grant(&env, &admin, &only_demo, Some("demo"), "tenant_member").await;
    grant(&env, &admin, &outsider, Some("acme"), "tenant_member").await;
    grant(&env, &admin, &padmin, None, "platform_admin").await;
    grant(&env, &admin, &padmin, Some("demo"), "tenant_member").await;
    let (demo_boss, _) = env.signin("boss@demo.example", PASSWORD).await;
    let (dual_boss, _) = env.signin("boss@both.example", PASSWORD).await;
    let (_, sessions) = env
        .call(
            "GET",
            &format!("/admin/users/{both}/sessions"),
            Some(&admin),
            None,
        )
        .await;
    let both_session = sessions["sessions"][0]["id"].as_str().unwrap().to_string();

    // reading a member: any one tenant is enough, and only that tenant shows
    let (status, view) = env
        .call(
            "GET",
            &format!("/admin/users/{both}"),
            Some(&demo_boss),
            None,
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["tenants"],
        json!(["demo"]),
        "acme is not demo's business"
    );
    let (status, view) = env
        .call(
            "GET",
            &format!("/admin/users/{both}"),
            Some(&dual_boss),
            None,
        )
        .await;
    assert_eq!((status, &view["tenants"]), (200, &json!(["acme", "demo"])));

    // unknown, foreign and platform principals: one answer, whatever the route
    let mut answers = Vec::new();
    for who in [UNKNOWN, outsider.as_str(), padmin.as_str()] {
        for (method, path) in [
            ("GET", format!("/admin/users/{who}")),
            ("GET", format!("/admin/users/{who}/sessions")),
            ("DELETE", format!("/admin/users/{who}/sessions")),
            ("GET", format!("/admin/users/{who}/identities")),
        ] {
            let (status, answer) = env.call(method, &path, Some(&demo_boss), None).await;
            assert_eq!(
                answer["error"]["code"], "not_authorized_for_principal",
                "{method} {path}: {status} {answer}"
            );
            answers.push((method, path.replace(who, "{id}"), refusal(status, &answer)));
        }
    }
    let per_route: std::collections::BTreeMap<_, std::collections::BTreeSet<_>> = answers
        .into_iter()
        .fold(Default::default(), |mut acc, (m, p, r)| {
            acc.entry((m, p)).or_default().insert(r);
            acc
        });
    for (route, seen) in per_route {
        assert_eq!(seen.len(), 1, "{route:?} tells principals apart: {seen:?}");
    }

    // lists hide platform principals from tenant admins too
    let (status, members) = env
        .call("GET", "/admin/users?tenant_id=demo", Some(&demo_boss), None)
        .await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = members["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&only_demo.as_str()) && !listed.contains(&padmin.as_str()),
        "{listed:?}"
    );

    // account-wide powers over a member of demo and acme: not for demo's admin alone
    for (method, path) in [
        ("GET", format!("/admin/users/{both}/sessions")),
        ("DELETE", format!("/admin/users/{both}/sessions")),
        (
            "DELETE",
            format!("/admin/users/{both}/sessions/{both_session}"),
        ),
        ("GET", format!("/admin/users/{both}/identities")),
        ("POST", format!("/admin/users/{both}/disable")),
    ] {
        let (status, answer) = env.call(method, &path, Some(&demo_boss), None).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    let (status, _) = env
        .call("GET", "/v1/auth/session", Some(&both_token), None)
        .await;
    assert_eq!(status, 200, "the refused sign-outs changed nothing");
    // ... but for a member of demo only, and for an admin of every tenant of the member
    let (status, _) = env
        .call(
            "GET",
            &format!("/admin/users/{only_demo}/sessions"),
            Some(&demo_boss),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, answer) = env
        .call(
            "DELETE",
            &format!("/admin/users/{both}/sessions"),
            Some(&dual_boss),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["sessions_ended"], 1, "{answer}");

    // assignments: foreign, unknown and platform principals outside the tenant alike need
    // an invitation (the bootstrap admin holds a platform role and is in no tenant)
    let mut refusals = std::collections::BTreeSet::new();
    for who in [UNKNOWN, outsider.as_str(), admin_id.as_str()] {
        let (status, answer) = env
            .call(
                "POST",
                "/admin/assignments",
                Some(&demo_boss),
                Some(json!({"principal_id": who, "tenant_id": "demo", "role": "tenant_member"})),
            )
            .await;
        assert_eq!(answer["error"]["code"], "invitation_required", "{answer}");
        refusals.insert(refusal(status, &answer));
        let (status, answer) = env
            .call(
                "DELETE",
                "/admin/assignments",
                Some(&demo_boss),
                Some(json!({"principal_id": who, "tenant_id": "demo", "role": "tenant_member"})),
            )
            .await;
        refusals.insert(refusal(status, &answer));
    }
    assert_eq!(refusals.len(), 2, "one answer per route: {refusals:?}");
    // a platform admin's membership is out of a tenant admin's reach
    let (status, answer) = env
        .call(
            "DELETE",
            "/admin/assignments",
            Some(&demo_boss),
            Some(json!({"principal_id": padmin, "tenant_id": "demo", "role": "tenant_member"})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("not_authorized_for_principal"))
    );
    let (_, view) = env
        .call("GET", &format!("/admin/users/{padmin}"), Some(&admin), None)
        .await;
    assert_eq!(view["tenants"], json!(["demo"]), "still a member");
    // members of the tenant: roles change as before
    let (status, _) = env
        .call(
            "POST",
            "/admin/assignments",
            Some(&demo_boss),
            Some(json!({"principal_id": only_demo, "tenant_id": "demo", "role": "tenant_admin"})),
        )
        .await;
    assert_eq!(status, 201);

    // a service account of demo: its secret carries every role it holds, so demo's admin
    // rotates or deletes it only while those roles are all in tenants they administer
    let (status, account) = env
        .call(
            "POST",
            "/admin/service-accounts",
            Some(&demo_boss),
            Some(json!({"name": "ingest", "tenant_id": "demo"})),
        )
        .await;
    assert_eq!(status, 201, "{account}");
    let account = account["id"].as_str().unwrap().to_string();
    grant(&env, &demo_boss, &account, Some("demo"), "tenant_member").await;
    let rotate = format!("/admin/service-accounts/{account}/rotate");
    let (status, _) = env.call("POST", &rotate, Some(&demo_boss), None).await;
    assert_eq!(status, 200, "demo's own account, roles in demo only");
    grant(&env, &admin, &account, Some("acme"), "tenant_member").await;
    for (method, path) in [
        ("POST", rotate.clone()),
        ("DELETE", format!("/admin/service-accounts/{account}")),
    ] {
        let (status, answer) = env.call(method, &path, Some(&demo_boss), None).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (403, Some("not_authorized_for_principal")),
            "{method} {path}"
        );
    }
    let (status, _) = env.call("POST", &rotate, Some(&dual_boss), None).await;
    assert_eq!(status, 200, "an admin of demo and acme");
    grant(&env, &admin, &account, None, "platform_admin").await;
    let (status, _) = env.call("POST", &rotate, Some(&dual_boss), None).await;
    assert_eq!(
        status, 403,
        "a platform principal is out of every tenant admin's reach"
    );
    // unknown ids, other tenants' accounts and accounts beyond reach: one answer
    let (_, acme_account) = env
        .call(
            "POST",
            "/admin/service-accounts",
            Some(&admin),
            Some(json!({"name": "acme-ingest", "tenant_id": "acme"})),
        )
        .await;
    let acme_account = acme_account["id"].as_str().unwrap().to_string();
    let mut seen = std::collections::BTreeSet::new();
    for id in [
        "svc_00000000000000000000000000000000",
        acme_account.as_str(),
        account.as_str(),
    ] {
        for (method, path) in [
            ("GET", format!("/admin/service-accounts/{id}")),
            ("POST", format!("/admin/service-accounts/{id}/rotate")),
            ("DELETE", format!("/admin/service-accounts/{id}")),
        ] {
            let (status, answer) = env.call(method, &path, Some(&demo_boss), None).await;
            assert_eq!(status, 403, "{method} {path}: {answer}");
            seen.insert((method, refusal(status, &answer).1));
        }
    }
    assert_eq!(seen.len(), 3, "one answer per route: {seen:?}");

    // the explainer answers about members of the caller's tenant only
    for (who, expected) in [
        (only_demo.as_str(), 200),
        (padmin.as_str(), 403),
        (outsider.as_str(), 403),
        (UNKNOWN, 403),
    ] {
        let (status, answer) = env
            .call(
                "POST",
                "/admin/authz/explain",
                Some(&demo_boss),
                Some(json!({"principal_id": who, "tenant_id": "demo", "action": "query.read"})),
            )
            .await;
        assert_eq!(status, expected, "{who}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_tenant_takes_an_invitation_the_invited_user_accepts() {
    let env = env().await;
    let admin = env.admin().await;
    let store = env.store().await;
    let (_, boss_id) = env.user("boss@demo.example").await;
    let (_, acme_boss) = env.user("boss@acme.example").await;
    let (ada_token, ada) = env.user("ada@example.com").await;
    let (eve_token, eve) = env.user("eve@example.com").await;
    grant(&env, &admin, &boss_id, Some("demo"), "tenant_admin").await;
    grant(&env, &admin, &acme_boss, Some("acme"), "tenant_admin").await;
    grant(&env, &admin, &ada, Some("acme"), "tenant_member").await;
    let (boss, _) = env.signin("boss@demo.example", PASSWORD).await;
    let (acme_boss, _) = env.signin("boss@acme.example", PASSWORD).await;

    let invite = |role: &'static str, tenant: &'static str| {
        let boss = boss.clone();
        let env = &env;
        async move {
            env.call(
                "POST",
                "/admin/invitations",
                Some(&boss),
                Some(json!({"tenant_id": tenant, "email": "ADA@example.com", "role": role})),
            )
            .await
        }
    };
    // never more than the admin holds, never in another tenant, never bad input
    let (status, answer) = invite("platform_admin", "demo").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("privilege_escalation"))
    );
    let (status, _) = invite("tenant_member", "acme").await;
    assert_eq!(status, 403);
    let (status, answer) = invite("no_such_role", "demo").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("unknown_role"))
    );
    let (status, created) = invite("tenant_member", "demo").await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["email"], "ada@example.com", "normalised");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(
        published(&env, &store, &ada)
            .await
            .unwrap()
            .payload
            .grants
            .iter()
            .all(|g| !in_demo(g)),
        "an invitation grants nothing by itself"
    );

    // only the verified owner of the address sees and answers it
    let (status, answer) = env
        .call("GET", "/v1/invitations", Some(&ada_token), None)
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("email_not_verified"))
    );
    let (status, _) = env
        .call(
            "POST",
            &format!("/v1/invitations/{id}/accept"),
            Some(&ada_token),
            None,
        )
        .await;
    assert_eq!(status, 403);
    verify_email(&env, &admin, &ada).await;
    verify_email(&env, &admin, &eve).await;
    let (status, _) = env
        .call(
            "POST",
            &format!("/v1/invitations/{id}/accept"),
            Some(&eve_token),
            None,
        )
        .await;
    assert_eq!(status, 404, "eve was not invited");
    let (_, mine) = env
        .call("GET", "/v1/invitations", Some(&eve_token), None)
        .await;
    assert_eq!(mine["invitations"], json!([]));
    let (_, mine) = env
        .call("GET", "/v1/invitations", Some(&ada_token), None)
        .await;
    assert_eq!(mine["invitations"][0]["id"], id.as_str());

    // the admins of the tenant see it pending; the admins of another tenant do not
    let (status, pending) = env
        .call(
            "GET",
            "/admin/invitations?tenant_id=demo",
            Some(&boss),
            None,
        )
        .await;
    assert_eq!(
        (status, pending["invitations"].as_array().unwrap().len()),
        (200, 1)
    );
    let (status, _) = env
        .call("GET", "/admin/invitations", Some(&boss), None)
        .await;
    assert_eq!(status, 400, "a tenant admin names the tenant");
    let (status, _) = env
        .call(
            "GET",
            "/admin/invitations?tenant_id=demo",
            Some(&acme_boss),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = env
        .call(
            "DELETE",
            &format!("/admin/invitations/{id}"),
            Some(&acme_boss),
            None,
        )
        .await;
    assert_eq!(
        status, 404,
        "another tenant's invitation is as absent as an unknown one"
    );

    // accepted once: the role is granted and published
    let (status, accepted) = env
        .call(
            "POST",
            &format!("/v1/invitations/{id}/accept"),
            Some(&ada_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["tenant_id"], "demo");
    let (status, _) = env
        .call(
            "POST",
            &format!("/v1/invitations/{id}/accept"),
            Some(&ada_token),
            None,
        )
        .await;
    assert_eq!(status, 404, "an invitation is used once");
    let doc = published(&env, &store, &ada).await.unwrap();
    assert!(
        doc.payload
            .grants
            .iter()
            .any(|g| in_demo(g) && g.role == "tenant_member")
    );
    let (status, view) = env
        .call("GET", &format!("/admin/users/{ada}"), Some(&boss), None)
        .await;
    assert_eq!((status, &view["tenants"]), (200, &json!(["demo"])));

    // an inviter demoted since: the invitation no longer holds, and is used up
    let (_, stale) = invite("tenant_member", "demo").await;
    let stale = stale["id"].as_str().unwrap().to_string();
    let (status, _) = env
        .call(
            "DELETE",
            "/admin/assignments",
            Some(&admin),
            Some(json!({"principal_id": boss_id, "tenant_id": "demo", "role": "tenant_admin"})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, answer) = env
        .call(
            "POST",
            &format!("/v1/invitations/{stale}/accept"),
            Some(&ada_token),
            None,
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("invitation_stale")),
        "{answer}"
    );
    grant(&env, &admin, &boss_id, Some("demo"), "tenant_admin").await;

    // declined and withdrawn invitations grant nothing and are gone
    let (_, second) = invite("tenant_admin", "demo").await;
    let second = second["id"].as_str().unwrap().to_string();
    let (status, _) = env
        .call(
            "POST",
            &format!("/v1/invitations/{second}/decline"),
            Some(&ada_token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, third) = invite("tenant_admin", "demo").await;
    let third = third["id"].as_str().unwrap().to_string();
    let (status, _) = env
        .call(
            "DELETE",
            &format!("/admin/invitations/{third}"),
            Some(&boss),
            None,
        )
        .await;
    assert_eq!(status, 204);
    for gone in [&second, &third] {
        let (status, _) = env
            .call(
                "POST",
                &format!("/v1/invitations/{gone}/accept"),
                Some(&ada_token),
                None,
            )
            .await;
        assert_eq!(status, 404);
    }
    let (_, pending) = env
        .call(
            "GET",
            "/admin/invitations?tenant_id=demo",
            Some(&boss),
            None,
        )
        .await;
    assert_eq!(pending["invitations"], json!([]));
    assert!(
        !published(&env, &store, &ada)
            .await
            .unwrap()
            .payload
            .grants
            .iter()
            .any(|g| g.role == "tenant_admin")
    );
    // bad ids are plain 404s, never a store error
    for bad in ["inv_x", "..", "inv_0000000000000000000000000000000g"] {
        let (status, _) = env
            .call(
                "POST",
                &format!("/v1/invitations/{bad}/accept"),
                Some(&ada_token),
                None,
            )
            .await;
        assert_eq!(status, 404, "{bad}");
    }

    // each change is audited once, by whom and in which tenant
    let records = store
        .audit()
        .read(&gateway_store::AuditQuery {
            tenant: Some("demo".into()),
            from_seq: 1,
            limit: 1000,
        })
        .await
        .unwrap();
    let seen: Vec<(String, String)> = records
        .iter()
        .filter(|r| r.action.contains("invitation"))
        .map(|r| {
            let data: Value = serde_json::from_slice(&r.data).unwrap();
            (
                r.action.clone(),
                data["actor"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let count = |action: &str| seen.iter().filter(|(a, _)| a == action).count();
    assert_eq!(count("admin.invitation.create"), 4, "{seen:?}");
    assert_eq!(count("admin.invitation.revoke"), 1, "{seen:?}");
    assert!(
        seen.contains(&("invitation.accept".into(), ada.clone())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("invitation.decline".into(), ada.clone())),
        "{seen:?}"
    );
}
