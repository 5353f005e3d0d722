//! The audit trail: for every mutating admin and principal route, the intent first and then
//! exactly one record of the change; no change without its intent on record.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{PASSWORD, env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_admin_route_emits_exactly_one_audit_record() {
    let env = env().await;
    let admin = env.admin().await;
    let store = env.store().await;
    let (_, someone) = env.user("someone@example.com").await;
    // one valid request per mutating route, and the audit action it must produce
    let plan: BTreeMap<(&str, &str), (String, Option<Value>, &str)> = [
        (
            ("POST", "/admin/roles"),
            (
                "/admin/roles".to_string(),
                Some(json!({"name": "auditor", "rights": ["audit.read"]})),
                "admin.role.create",
            ),
        ),
        (
            ("PUT", "/admin/roles/{name}"),
            (
                "/admin/roles/auditor".to_string(),
                Some(json!({"description": "reads audit"})),
                "admin.role.update",
            ),
        ),
        (
            ("POST", "/admin/rights"),
            (
                "/admin/rights".to_string(),
                Some(json!({"name": "audit.read", "description": "read the trail"})),
                "admin.right.create",
            ),
        ),
        (
            ("POST", "/admin/assignments"),
            (
                "/admin/assignments".to_string(),
                Some(json!({"principal_id": someone, "tenant_id": "acme", "role": "auditor"})),
                "admin.assignment.create",
            ),
        ),
        (
            ("DELETE", "/admin/assignments"),
            (
                "/admin/assignments".to_string(),
                Some(json!({"principal_id": someone, "tenant_id": "acme", "role": "auditor"})),
                "admin.assignment.delete",
            ),
        ),
        (
            ("DELETE", "/admin/rights/{name}"),
            (
                "/admin/rights/audit.read".to_string(),
                None,
                "admin.right.delete",
            ),
        ),
        (
            ("DELETE", "/admin/roles/{name}"),
            (
                "/admin/roles/auditor".to_string(),
                None,
                "admin.role.delete",
            ),
        ),
        (
            ("POST", "/admin/keys/rotate"),
            ("/admin/keys/rotate".to_string(), None, "admin.keys.rotate"),
        ),
    ]
    .into_iter()
    .collect();
    let routes =
        control_plane::openapi::mutating_routes(control_plane::admin::iam_routes::router());
    let declared: std::collections::BTreeSet<(&str, &str)> = routes
        .iter()
        .map(|(method, path)| (method.as_str(), path.as_str()))
        .collect();
    let planned: std::collections::BTreeSet<(&str, &str)> = plan.keys().copied().collect();
    assert_eq!(declared, planned, "every mutating route has a case here");
    // run them in a dependency order
    let order = [
        ("POST", "/admin/roles"),
        ("PUT", "/admin/roles/{name}"),
        ("POST", "/admin/rights"),
        ("POST", "/admin/assignments"),
        ("DELETE", "/admin/assignments"),
        ("DELETE", "/admin/rights/{name}"),
        ("DELETE", "/admin/roles/{name}"),
        ("POST", "/admin/keys/rotate"),
    ];
    for route in order {
        let (path, body, action) = &plan[&route];
        let before = env.audit_actions(&store).await;
        let (status, answer) = env.call(route.0, path, Some(&admin), body.clone()).await;
        assert!((200..300).contains(&status), "{route:?}: {status} {answer}");
        let after = env.audit_actions(&store).await;
        let new: Vec<&str> = after[before.len()..].iter().map(String::as_str).collect();
        assert_eq!(
            new,
            vec!["admin.request", action],
            "{route:?}: the intent, then exactly one record of the change"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_principal_route_emits_exactly_one_audit_record() {
    let env = env().await;
    let admin = env.admin().await;
    let store = env.store().await;
    let (_, target) = env.user("target@example.com").await;
    let (_, session_user) = env.user("sessions@example.com").await;
    let (_, _) = env.signin("sessions@example.com", PASSWORD).await;
    let (status, sessions) = env
        .call(
            "GET",
            &format!("/admin/users/{session_user}/sessions"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let session_id = sessions["sessions"][0]["id"].as_str().unwrap().to_string();
    let routes =
        control_plane::openapi::mutating_routes(control_plane::admin::principal_routes::router());
    let declared: std::collections::BTreeSet<(&str, &str)> = routes
        .iter()
        .map(|(method, path)| (method.as_str(), path.as_str()))
        .collect();

    // (route, concrete path, body, audit action), in a workable order
    type Step<'a> = ((&'a str, &'a str), String, Option<Value>, &'a str);
    let mut plan: Vec<Step> = vec![
        (
            ("POST", "/admin/users"),
            "/admin/users".into(),
            Some(json!({"email": "made@example.com", "password": "marble falcon drifting north"})),
            "admin.user.create",
        ),
        (
            ("PATCH", "/admin/users/{id}"),
            format!("/admin/users/{target}"),
            Some(json!({"email_verified": true})),
            "admin.user.update",
        ),
        (
            ("POST", "/admin/users/{id}/disable"),
            format!("/admin/users/{target}/disable"),
            None,
            "admin.user.disable",
        ),
        (
            ("POST", "/admin/users/{id}/enable"),
            format!("/admin/users/{target}/enable"),
            None,
            "admin.user.enable",
        ),
        (
            ("PUT", "/admin/users/{id}/password"),
            format!("/admin/users/{target}/password"),
            Some(json!({"password": "copper kettle singing loudly"})),
            "admin.user.password.set",
        ),
        (
            ("POST", "/admin/users/{id}/password/force-reset"),
            format!("/admin/users/{target}/password/force-reset"),
            None,
            "admin.user.password.force_reset",
        ),
        (
            ("POST", "/admin/users/{id}/mfa/reset"),
            format!("/admin/users/{target}/mfa/reset"),
            None,
            "admin.user.mfa.reset",
        ),
        (
            ("POST", "/admin/users/{id}/mfa/recovery-codes/revoke"),
            format!("/admin/users/{target}/mfa/recovery-codes/revoke"),
            None,
            "admin.user.mfa.recovery_codes.revoke",
        ),
        (
            ("POST", "/admin/users/{id}/identities"),
            format!("/admin/users/{target}/identities"),
            Some(json!({"provider": "google", "subject": "42"})),
            "admin.user.identity.link",
        ),
        (
            (
                "DELETE",
                "/admin/users/{id}/identities/{provider}/{subject}",
            ),
            format!("/admin/users/{target}/identities/google/42"),
            None,
            "admin.user.identity.unlink",
        ),
        (
            ("DELETE", "/admin/users/{id}/sessions/{session_id}"),
            format!("/admin/users/{session_user}/sessions/{session_id}"),
            None,
            "admin.user.session.revoke",
        ),
        (
            ("DELETE", "/admin/users/{id}/sessions"),
            format!("/admin/users/{session_user}/sessions"),
            None,
            "admin.user.sessions.revoke_all",
        ),
        (
            ("POST", "/admin/service-accounts"),
            "/admin/service-accounts".into(),
            Some(json!({"name": "exporter"})),
            "admin.service_account.create",
        ),
    ];
    let planned_so_far: Vec<(&str, &str)> = plan.iter().map(|p| p.0).collect();
    for (route, path, body, action) in plan.drain(..) {
        let before = env.audit_actions(&store).await.len();
        let (status, answer) = env.call(route.0, &path, Some(&admin), body).await;
        assert!((200..300).contains(&status), "{route:?}: {status} {answer}");
        let after = env.audit_actions(&store).await;
        assert_eq!(
            after[before..].to_vec(),
            vec!["admin.request".to_string(), action.to_string()],
            "{route:?}: the intent, then exactly one record of the change"
        );
    }
    // the service account routes need the id just created
    let (_, accounts) = env
        .call("GET", "/admin/service-accounts", Some(&admin), None)
        .await;
    let account = accounts["service_accounts"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let tail: Vec<((&str, &str), String, &str)> = vec![
        (
            ("POST", "/admin/service-accounts/{id}/rotate"),
            format!("/admin/service-accounts/{account}/rotate"),
            "admin.service_account.rotate",
        ),
        (
            ("DELETE", "/admin/service-accounts/{id}"),
            format!("/admin/service-accounts/{account}"),
            "admin.service_account.delete",
        ),
        (
            ("DELETE", "/admin/users/{id}"),
            format!("/admin/users/{target}"),
            "admin.user.delete",
        ),
    ];
    let mut covered: std::collections::BTreeSet<(&str, &str)> =
        planned_so_far.into_iter().collect();
    for (route, path, action) in tail {
        covered.insert(route);
        let before = env.audit_actions(&store).await.len();
        let (status, answer) = env.call(route.0, &path, Some(&admin), None).await;
        assert!((200..300).contains(&status), "{route:?}: {status} {answer}");
        let after = env.audit_actions(&store).await;
        assert_eq!(
            after[before..].to_vec(),
            vec!["admin.request".to_string(), action.to_string()],
            "{route:?}: the intent, then exactly one record of the change"
        );
    }
    assert_eq!(covered, declared, "every mutating route has a case here");
}

/// Admin changes are recorded intent first. Every record names its actor, tenant, action,
/// target, time and correlation id. When the audit trail cannot be written (its stream
/// gone), an admin change is refused with 503 in our envelope and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_recorded_intent_first_and_refused_without_a_trail() {
    let env = env().await;
    let (admin, admin_id) = env
        .signin(
            gateway_tests::SnapshotKeys::ADMIN_EMAIL,
            gateway_tests::SnapshotKeys::ADMIN_PASSWORD,
        )
        .await;
    let store = env.store().await;
    let (_, someone) = env.user("someone@example.com").await;
    let records = || async {
        store
            .audit()
            .read(&gateway_store::AuditQuery {
                tenant: None,
                from_seq: 1,
                limit: 1000,
            })
            .await
            .unwrap()
    };
    let change = |method: &str, path: &str, body: Value, correlation: &str| {
        env.client
            .request(method.parse().unwrap(), format!("{}{path}", env.base))
            .bearer_auth(&admin)
            .header("x-correlation-id", correlation)
            .json(&body)
            .send()
    };
    let (status, _) = env
        .call(
            "POST",
            "/admin/roles",
            Some(&admin),
            Some(json!({"name": "auditor", "rights": ["audit.read"]})),
        )
        .await;
    assert_eq!(status, 201);

    // a change in tenant acme: its intent, then its record, both complete
    let before = records().await.len();
    let t0 = gateway_core::unix_now();
    let answer = change(
        "POST",
        "/admin/assignments",
        json!({"principal_id": someone, "tenant_id": "acme", "role": "auditor"}),
        "audit-intent-first-1",
    )
    .await
    .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    let t1 = gateway_core::unix_now();
    let new: Vec<Value> = records().await[before..]
        .iter()
        .map(|r| serde_json::from_slice(&r.data).unwrap())
        .collect();
    assert_eq!(new.len(), 2, "{new:?}");
    let (intent, outcome) = (&new[0], &new[1]);
    assert_eq!(intent["action"], "admin.request");
    assert_eq!(intent["outcome"], "intent");
    assert_eq!(intent["target"], "/admin/assignments");
    assert_eq!(intent["detail"]["method"], "POST");
    assert_eq!(outcome["action"], "admin.assignment.create");
    assert_eq!(outcome["tenant"], "acme");
    assert_eq!(outcome["target"], someone);
    for record in [intent, outcome] {
        assert_eq!(record["actor"], admin_id, "{record}");
        assert_eq!(record["correlation_id"], "audit-intent-first-1", "{record}");
        let at = record["at"].as_i64().unwrap();
        assert!((t0..=t1).contains(&at), "{record}");
        assert!(record["client_ip"].is_string(), "{record}");
    }

    // the audit stream goes away: the next change is refused and nothing changes
    let nats = async_nats::connect(env.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    js.delete_stream(format!("{}AUDIT", env.prefix.to_uppercase()))
        .await
        .unwrap();
    let answer = change(
        "POST",
        "/admin/roles",
        json!({"name": "ghost", "rights": ["audit.read"]}),
        "audit-intent-first-2",
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 503);
    assert!(answer.headers().contains_key("retry-after"));
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    assert_eq!(body["error"]["correlation_id"], "audit-intent-first-2");
    let (status, role) = env
        .call("GET", "/admin/roles/ghost", Some(&admin), None)
        .await;
    assert_eq!(status, 404, "{role}");
    // the same for a removal: the assignment stays
    let answer = change(
        "DELETE",
        "/admin/assignments",
        json!({"principal_id": someone, "tenant_id": "acme", "role": "auditor"}),
        "audit-intent-first-3",
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), 503);
    let (status, assignments) = env
        .call(
            "GET",
            &format!("/admin/assignments?principal_id={someone}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{assignments}");
    assert!(assignments.to_string().contains("auditor"), "{assignments}");
    // reads still work
    let (status, _) = env.call("GET", "/admin/roles", Some(&admin), None).await;
    assert_eq!(status, 200);
}
