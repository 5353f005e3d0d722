//! Who may call the admin API, what assignments enable, and escalation refused and audited.

use std::time::Duration;

use serde_json::{Value, json};

use super::{PASSWORD, START, env, published};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_reach_the_admin_api() {
    let env = env().await;
    let admin = env.admin().await;
    let (user, _) = env.user("plain@example.com").await;
    let routes = [
        ("GET", "/admin/roles", None),
        (
            "POST",
            "/admin/roles",
            Some(json!({"name": "x", "rights": ["query.read:*"]})),
        ),
        ("GET", "/admin/assignments", None),
        ("POST", "/admin/keys/rotate", None),
        ("GET", "/admin/audit", None),
        (
            "POST",
            "/admin/authz/explain",
            Some(json!({"principal_id": "usr_00", "action": "query.read"})),
        ),
    ];
    for (method, path, body) in routes.iter().cloned() {
        let (status, answer) = env.call(method, path, None, body.clone()).await;
        assert_eq!(status, 401, "{method} {path} without a token: {answer}");
        let (status, answer) = env.call(method, path, Some(&user), body.clone()).await;
        assert!(
            status == 403 || status == 400,
            "{method} {path} as a plain user: {status} {answer}"
        );
        assert!(answer["error"]["code"].is_string());
    }
    let (status, roles) = env.call("GET", "/admin/roles", Some(&admin), None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = roles["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        &names[..3],
        &["platform_admin", "tenant_admin", "tenant_member"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_enable_exactly_the_expected_actions_and_reach_the_published_documents() {
    let env = env().await;
    let admin = env.admin().await;
    let store = env.store().await;
    let (_, ada) = env.user("ada@example.com").await;
    let (status, role) = env
        .call("POST", "/admin/roles", Some(&admin), Some(json!({"name": "order_clerk", "description": "orders only", "rights": ["command.submit:order", "query.read:orders_by_customer"]})))
        .await;
    assert_eq!(status, 201, "{role}");
    let before = published(&env, &store, &ada)
        .await
        .expect("published at sign-up time or first change");
    assert!(before.payload.grants.is_empty());
    let (status, body) = env
        .call(
            "POST",
            "/admin/assignments",
            Some(&admin),
            Some(json!({"principal_id": ada, "tenant_id": "acme", "role": "order_clerk"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // T7.3: the published document changes (poll with a deadline)
    let deadline = std::time::Instant::now() + START;
    let after = loop {
        let doc = published(&env, &store, &ada).await.unwrap();
        if doc.revision > before.revision {
            break doc;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "document not republished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(after.payload.grants.len(), 1);

    // T5.2: exactly the expected actions (decided from the published document, as the data
    // plane will, and through the explainer)
    let acme = gateway_core::authz::TenantId::parse("acme").unwrap();
    let globex = gateway_core::authz::TenantId::parse("globex").unwrap();
    type Case<'a> = (
        Option<&'a gateway_core::authz::TenantId>,
        &'a str,
        Option<&'a str>,
        bool,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            Some(&acme),
            "command.submit",
            Some("order"),
            true,
            "tenant_right",
        ),
        (
            Some(&acme),
            "command.submit",
            Some("invoice"),
            false,
            "no_matching_right",
        ),
        (
            Some(&acme),
            "query.read",
            Some("orders_by_customer"),
            true,
            "tenant_right",
        ),
        (
            Some(&acme),
            "query.read",
            Some("other_view"),
            false,
            "no_matching_right",
        ),
        (
            Some(&acme),
            "runner.admin",
            None,
            false,
            "no_matching_right",
        ),
        (
            Some(&globex),
            "command.submit",
            Some("order"),
            false,
            "not_tenant_member",
        ),
        (
            None,
            "iam.users.write",
            None,
            false,
            "not_platform_authorized",
        ),
    ];
    for (tenant, action, resource, allowed, reason) in cases {
        let decision = gateway_core::authz::decide(
            &after.payload,
            &gateway_core::authz::Request {
                tenant,
                action,
                resource,
            },
        );
        assert_eq!(
            (decision.allowed, decision.reason.code()),
            (allowed, reason),
            "{action} {resource:?} in {tenant:?}"
        );
        let (status, explained) = env
            .call("POST", "/admin/authz/explain", Some(&admin), Some(json!({"principal_id": ada, "tenant_id": tenant.map(|t| t.as_str()), "action": action, "resource": resource})))
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            (explained["allowed"].as_bool(), explained["reason"].as_str()),
            (Some(allowed), Some(reason))
        );
        if allowed {
            assert_eq!(explained["role"], "order_clerk");
        }
    }

    // a role change fans out to its holders
    let (status, _) = env
        .call(
            "PUT",
            "/admin/roles/order_clerk",
            Some(&admin),
            Some(json!({"rights": ["command.submit:*"]})),
        )
        .await;
    assert_eq!(status, 200);
    let changed = published(&env, &store, &ada).await.unwrap();
    assert!(changed.revision > after.revision);
    assert!(
        gateway_core::authz::decide(
            &changed.payload,
            &gateway_core::authz::Request {
                tenant: Some(&acme),
                action: "command.submit",
                resource: Some("invoice")
            }
        )
        .allowed
    );

    // removing the assignment removes the rights; global sign-out moves tokens_valid_after
    let (status, _) = env
        .call(
            "DELETE",
            "/admin/assignments",
            Some(&admin),
            Some(json!({"principal_id": ada, "tenant_id": "acme", "role": "order_clerk"})),
        )
        .await;
    assert_eq!(status, 204);
    let removed = published(&env, &store, &ada).await.unwrap();
    assert!(removed.payload.grants.is_empty());
    let (ada_token, _) = env.signin("ada@example.com", PASSWORD).await;
    let (status, _) = env
        .call(
            "POST",
            "/v1/auth/signout",
            Some(&ada_token),
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(status, 204);
    let signed_out = published(&env, &store, &ada).await.unwrap();
    assert!(signed_out.payload.tokens_valid_after > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_admins_cannot_escalate_and_attempts_are_audited() {
    let env = env().await;
    let admin = env.admin().await;
    let store = env.store().await;
    let (_, boss_id) = env.user("boss@acme.example").await;
    let (_, worker_id) = env.user("worker@acme.example").await;
    env.call(
        "POST",
        "/admin/roles",
        Some(&admin),
        Some(json!({"name": "role_editor", "rights": ["iam.roles.write"]})),
    )
    .await;
    let (status, _) = env
        .call(
            "POST",
            "/admin/assignments",
            Some(&admin),
            Some(json!({"principal_id": boss_id, "tenant_id": "acme", "role": "tenant_admin"})),
        )
        .await;
    assert_eq!(status, 201);
    let (boss, _) = env.signin("boss@acme.example", PASSWORD).await;

    let attempts = [
        (
            json!({"principal_id": worker_id, "role": "platform_admin"}),
            "not_platform_authorized",
        ),
        (
            json!({"principal_id": boss_id, "tenant_id": null, "role": "platform_admin"}),
            "not_platform_authorized",
        ),
        (
            json!({"principal_id": worker_id, "tenant_id": "globex", "role": "tenant_member"}),
            "not_tenant_member",
        ),
        (
            json!({"principal_id": worker_id, "tenant_id": "acme", "role": "role_editor"}),
            "privilege_escalation",
        ),
    ];
    for (body, reason) in attempts {
        let (status, answer) = env
            .call(
                "POST",
                "/admin/assignments",
                Some(&boss),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (403, Some(reason)),
            "{body}"
        );
    }
    // editing a built-in role is refused for everyone
    let (status, answer) = env
        .call(
            "PUT",
            "/admin/roles/tenant_member",
            Some(&boss),
            Some(json!({"rights": ["*"]})),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = env
        .call(
            "PUT",
            "/admin/roles/tenant_member",
            Some(&admin),
            Some(json!({"rights": ["*"]})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("builtin_role"))
    );
    // a tenant admin adds nobody to their tenant: that takes an invitation
    let (status, answer) = env
        .call(
            "POST",
            "/admin/assignments",
            Some(&boss),
            Some(json!({"principal_id": worker_id, "tenant_id": "acme", "role": "tenant_member"})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("invitation_required"))
    );
    // once a member, what a tenant admin holds they may grant in their tenant
    env.call(
        "POST",
        "/admin/roles",
        Some(&admin),
        Some(json!({"name": "acme_auditor", "rights": ["audit.read"]})),
    )
    .await;
    let (status, _) = env
        .call(
            "POST",
            "/admin/assignments",
            Some(&admin),
            Some(json!({"principal_id": worker_id, "tenant_id": "acme", "role": "tenant_member"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = env
        .call(
            "POST",
            "/admin/assignments",
            Some(&boss),
            Some(json!({"principal_id": worker_id, "tenant_id": "acme", "role": "acme_auditor"})),
        )
        .await;
    assert_eq!(status, 201);
    // nothing of the refused attempts was written
    let doc = published(&env, &store, &worker_id).await.unwrap();
    let mut roles: Vec<&str> = doc.payload.grants.iter().map(|g| g.role.as_str()).collect();
    roles.sort();
    assert_eq!(roles, ["acme_auditor", "tenant_member"]);
    let refused = store
        .audit()
        .read(&gateway_store::AuditQuery {
            tenant: None,
            from_seq: 1,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "admin.assignment.create")
        .filter(|r| serde_json::from_slice::<Value>(&r.data).unwrap()["outcome"] == "refused")
        .count();
    assert_eq!(refused, 1, "the escalation attempt is audited");

    // the tenant admin reads the audit trail of their tenant only
    let (status, records) = env
        .call("GET", "/admin/audit?tenant_id=acme", Some(&boss), None)
        .await;
    assert_eq!(status, 200);
    assert!(
        records["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] == "acme")
    );
    let (status, _) = env.call("GET", "/admin/audit", Some(&boss), None).await;
    assert_eq!(status, 403);
    let (status, _) = env
        .call("GET", "/admin/audit?tenant_id=globex", Some(&boss), None)
        .await;
    assert_eq!(status, 403);
}
