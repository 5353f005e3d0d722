//! The admin API: who may call it, roles and assignments, privilege escalation, the audit
//! trail and the effective-rights documents published for the data planes.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_core::authz::EffectiveRights;
use gateway_core::signed::{DocVerifyingKeys, Verified};
use gateway_store::nats::NatsConfig;
use gateway_store::{Bucket, Store, StoreConfig};
use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use gateway_tests::process::PlaneProcess;
use serde_json::{Value, json};

const START: Duration = Duration::from_secs(30);
const PASSWORD: &str = "plum tractor velvet lagoon";

struct Env {
    nats: NatsServer,
    keys: SnapshotKeys,
    prefix: String,
    _control: PlaneProcess,
    base: String,
    client: reqwest::Client,
}

async fn env() -> Env {
    let nats = NatsServer::start();
    let keys = SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    let (control, base) = gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, &[]);
    Env {
        nats,
        keys,
        prefix,
        _control: control,
        base,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    }
}

impl Env {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn signin(&self, email: &str, password: &str) -> (String, String) {
        let (status, tokens) = self
            .call(
                "POST",
                "/v1/auth/signin",
                None,
                Some(json!({"email": email, "password": password})),
            )
            .await;
        assert_eq!(status, 200, "{tokens}");
        let token = tokens["access_token"].as_str().unwrap().to_string();
        let (_, me) = self
            .call("GET", "/v1/auth/session", Some(&token), None)
            .await;
        (token, me["user_id"].as_str().unwrap().to_string())
    }

    async fn admin(&self) -> String {
        self.signin(SnapshotKeys::ADMIN_EMAIL, SnapshotKeys::ADMIN_PASSWORD)
            .await
            .0
    }

    /// A new user, signed in: (token, user id).
    async fn user(&self, email: &str) -> (String, String) {
        let (status, body) = self
            .call(
                "POST",
                "/v1/auth/signup",
                None,
                Some(json!({"email": email, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        self.signin(email, PASSWORD).await
    }

    async fn store(&self) -> Store {
        Store::open(&StoreConfig::Nats(NatsConfig {
            url: self.nats.url(),
            prefix: self.prefix.clone(),
            ..NatsConfig::default()
        }))
        .await
        .unwrap()
    }

    async fn audit_actions(&self, store: &Store) -> Vec<String> {
        store
            .audit()
            .read(&gateway_store::AuditQuery {
                tenant: None,
                from_seq: 1,
                limit: 1000,
            })
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.action)
            .collect()
    }
}

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

/// Reads the published document of a principal, verified with the snapshot key.
async fn published(env: &Env, store: &Store, principal: &str) -> Option<Verified<EffectiveRights>> {
    let entry = store
        .kv(Bucket::Authz)
        .get(&format!("principal.{principal}"))
        .await
        .unwrap()?;
    Some(
        DocVerifyingKeys::new([env.keys.signer.verifying_key()])
            .verify(&entry.value, "principal")
            .unwrap(),
    )
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
    // what a tenant admin holds, they may grant in their tenant
    let (status, _) = env
        .call(
            "POST",
            "/admin/assignments",
            Some(&boss),
            Some(json!({"principal_id": worker_id, "tenant_id": "acme", "role": "tenant_member"})),
        )
        .await;
    assert_eq!(status, 201);
    // nothing of the refused attempts was written
    let doc = published(&env, &store, &worker_id).await.unwrap();
    assert_eq!(doc.payload.grants.len(), 1);
    assert_eq!(doc.payload.grants[0].role, "tenant_member");
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
    let declared: std::collections::BTreeSet<(&str, &str)> =
        control_plane::admin::iam_routes::MUTATING_ROUTES
            .iter()
            .copied()
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
        let new: Vec<&String> = after[before.len()..].iter().collect();
        assert_eq!(new, vec![action], "{route:?} audits exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_is_refused_in_the_envelope_and_writes_nothing() {
    let env = env().await;
    let admin = env.admin().await;
    let store = env.store().await;
    let (_, someone) = env.user("input@example.com").await;
    let before = env.audit_actions(&store).await.len();
    let cases = [
        (
            "POST",
            "/admin/roles",
            json!({"name": "Bad Name", "rights": []}),
            400,
            "invalid_role_name",
        ),
        (
            "POST",
            "/admin/roles",
            json!({"name": "ok_name", "rights": ["NOT A RIGHT"]}),
            400,
            "invalid_right",
        ),
        (
            "POST",
            "/admin/roles",
            json!({"name": "tenant_admin", "rights": []}),
            403,
            "builtin_role",
        ),
        (
            "POST",
            "/admin/roles",
            json!({"rights": []}),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/admin/assignments",
            json!({"principal_id": someone, "tenant_id": "Not_A_Tenant", "role": "tenant_member"}),
            400,
            "invalid_tenant",
        ),
        (
            "POST",
            "/admin/assignments",
            json!({"principal_id": "robert'); drop", "tenant_id": "acme", "role": "tenant_member"}),
            400,
            "invalid_principal",
        ),
        (
            "POST",
            "/admin/assignments",
            json!({"principal_id": someone, "tenant_id": "acme", "role": "no_such_role"}),
            400,
            "unknown_role",
        ),
        (
            "POST",
            "/admin/assignments",
            json!({"principal_id": "usr_0000", "tenant_id": "acme", "role": "tenant_member"}),
            400,
            "unknown_principal",
        ),
        (
            "POST",
            "/admin/rights",
            json!({"name": "*:x"}),
            400,
            "invalid_right",
        ),
        (
            "POST",
            "/admin/authz/explain",
            json!({"principal_id": someone, "tenant_id": "-x", "action": "a"}),
            400,
            "invalid_tenant",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = env
            .call(method, path, Some(&admin), Some(body.clone()))
            .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body}"
        );
    }
    let (status, _) = env
        .call(
            "PUT",
            "/admin/roles/nope",
            Some(&admin),
            Some(json!({"rights": []})),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        env.audit_actions(&store).await.len(),
        before,
        "refused input audits nothing"
    );
    let (_, roles) = env.call("GET", "/admin/roles", Some(&admin), None).await;
    assert_eq!(
        roles["roles"].as_array().unwrap().len(),
        3,
        "no role was created"
    );
    let doc = published(&env, &store, &someone).await.unwrap();
    assert!(doc.payload.grants.is_empty());
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
    let declared: std::collections::BTreeSet<(&str, &str)> =
        control_plane::admin::principal_routes::MUTATING_ROUTES
            .iter()
            .copied()
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
            vec![action.to_string()],
            "{route:?}"
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
            vec![action.to_string()],
            "{route:?}"
        );
    }
    assert_eq!(covered, declared, "every mutating route has a case here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_administration_disables_deletes_and_scopes_tenant_admins() {
    let env = env().await;
    let admin = env.admin().await;
    let store = env.store().await;
    let (_, ada) = env.user("ada@example.com").await;
    let (_, bob) = env.user("bob@example.com").await;
    let (_, boss) = env.user("boss@example.com").await;
    for (who, role) in [(&ada, "tenant_member"), (&boss, "tenant_admin")] {
        let (status, _) = env
            .call(
                "POST",
                "/admin/assignments",
                Some(&admin),
                Some(json!({"principal_id": who, "tenant_id": "acme", "role": role})),
            )
            .await;
        assert_eq!(status, 201);
    }
    let (boss_token, _) = env.signin("boss@example.com", PASSWORD).await;

    // listing: filters and pagination for the platform admin, one tenant for the tenant admin
    let (_, page) = env
        .call("GET", "/admin/users?limit=2", Some(&admin), None)
        .await;
    assert_eq!(page["users"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_str().unwrap();
    let (_, rest) = env
        .call(
            "GET",
            &format!("/admin/users?limit=10&after={after}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        rest["users"].as_array().unwrap().len(),
        2,
        "4 users in all: admin, ada, bob, boss"
    );
    let (_, by_email) = env
        .call(
            "GET",
            "/admin/users?email=BOB@example.com",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(by_email["users"][0]["id"], bob.as_str());
    let (status, members) = env
        .call(
            "GET",
            "/admin/users?tenant_id=acme",
            Some(&boss_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let ids: std::collections::BTreeSet<String> = members["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, [ada.clone(), boss.clone()].into_iter().collect());
    let (status, _) = env
        .call("GET", "/admin/users", Some(&boss_token), None)
        .await;
    assert_eq!(status, 400, "a tenant admin names the tenant");
    let (status, _) = env
        .call(
            "GET",
            &format!("/admin/users/{bob}"),
            Some(&boss_token),
            None,
        )
        .await;
    assert_eq!(status, 403, "bob is not in acme");
    let (status, _) = env
        .call(
            "DELETE",
            &format!("/admin/users/{ada}/sessions"),
            Some(&boss_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "a tenant admin signs members out");
    let (status, _) = env
        .call(
            "POST",
            &format!("/admin/users/{ada}/disable"),
            Some(&boss_token),
            None,
        )
        .await;
    assert_eq!(status, 403, "disabling needs iam.users.write");

    // disable: sign-in refused, the document says so; enable restores
    let (status, _) = env
        .call(
            "POST",
            &format!("/admin/users/{ada}/disable"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let doc = published(&env, &store, &ada).await.unwrap();
    assert!(doc.payload.disabled);
    let (status, answer) = env
        .call(
            "POST",
            "/v1/auth/signin",
            None,
            Some(json!({"email": "ada@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("account_disabled"))
    );
    env.call(
        "POST",
        &format!("/admin/users/{ada}/enable"),
        Some(&admin),
        None,
    )
    .await;
    assert!(
        !published(&env, &store, &ada)
            .await
            .unwrap()
            .payload
            .disabled
    );
    env.signin("ada@example.com", PASSWORD).await;

    // delete: everything about the user goes, the document is disabled
    let (status, _) = env
        .call("DELETE", &format!("/admin/users/{ada}"), Some(&admin), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = env
        .call("GET", &format!("/admin/users/{ada}"), Some(&admin), None)
        .await;
    assert_eq!(status, 404);
    for bucket in [
        Bucket::Users,
        Bucket::Credentials,
        Bucket::Sessions,
        Bucket::Identities,
    ] {
        let kv = store.kv(bucket);
        for key in kv.keys("", None, 1000).await.unwrap().keys {
            if key.contains(&ada) {
                let entry = kv.get(&key).await.unwrap().unwrap();
                let text = String::from_utf8_lossy(&entry.value);
                assert!(
                    text.contains("\"revoked_at\":") && !text.contains("\"revoked_at\":null"),
                    "{key} left behind: {text}"
                );
            }
        }
    }
    let doc = published(&env, &store, &ada).await.unwrap();
    assert!(doc.payload.disabled && doc.payload.grants.is_empty());
    let (status, _) = env
        .call(
            "POST",
            "/v1/auth/signin",
            None,
            Some(json!({"email": "ada@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 401);
    // the address is free again
    env.user("ada@example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_are_managed_through_the_admin_api() {
    let env = env().await;
    let admin = env.admin().await;
    let (status, created) = env
        .call(
            "POST",
            "/admin/service-accounts",
            Some(&admin),
            Some(json!({"name": "ingest", "tenant_id": "acme"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["client_secret"].as_str().unwrap().to_string();
    let token_for = |secret: String| {
        let env = &env;
        let id = id.clone();
        async move {
            env.call("POST", "/v1/auth/token", None, Some(json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret}))).await.0
        }
    };
    assert_eq!(token_for(secret.clone()).await, 200);
    let (status, listed) = env
        .call(
            "GET",
            &format!("/admin/service-accounts/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        listed.get("client_secret").is_none(),
        "the secret is shown once"
    );
    let (status, rotated) = env
        .call(
            "POST",
            &format!("/admin/service-accounts/{id}/rotate"),
            Some(&admin),
            Some(json!({"overlap_seconds": 0})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(token_for(secret).await, 401);
    assert_eq!(
        token_for(rotated["client_secret"].as_str().unwrap().to_string()).await,
        200
    );
    // roles are assigned like any principal's
    let (status, _) = env
        .call(
            "POST",
            "/admin/assignments",
            Some(&admin),
            Some(json!({"principal_id": id, "tenant_id": "acme", "role": "tenant_member"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = env
        .call(
            "DELETE",
            &format!("/admin/service-accounts/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        token_for(rotated["client_secret"].as_str().unwrap().to_string()).await,
        401
    );
    let store = env.store().await;
    let doc = published(&env, &store, &id).await.unwrap();
    assert!(doc.payload.disabled && doc.payload.grants.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_on_every_admin_route_are_refused_and_write_nothing() {
    let env = env().await;
    let admin = env.admin().await;
    let store = env.store().await;
    let (_, someone) = env.user("victim@example.com").await;
    let audit_before = env.audit_actions(&store).await.len();
    let users_before = store
        .kv(Bucket::Users)
        .keys("", None, 1000)
        .await
        .unwrap()
        .keys;
    // the mutating routes that take a JSON body (the others take none)
    let with_body: [(&str, &str); 11] = [
        ("POST", "/admin/roles"),
        ("PUT", "/admin/roles/{name}"),
        ("POST", "/admin/rights"),
        ("POST", "/admin/assignments"),
        ("DELETE", "/admin/assignments"),
        ("POST", "/admin/users"),
        ("PATCH", "/admin/users/{id}"),
        ("PUT", "/admin/users/{id}/password"),
        ("POST", "/admin/users/{id}/identities"),
        ("POST", "/admin/service-accounts"),
        ("POST", "/admin/service-accounts/{id}/rotate"),
    ];
    let declared: Vec<&(&str, &str)> = control_plane::admin::iam_routes::MUTATING_ROUTES
        .iter()
        .chain(control_plane::admin::principal_routes::MUTATING_ROUTES)
        .collect();
    assert!(with_body.iter().all(|r| declared.contains(&r)));
    for (method, template) in with_body {
        let path = template
            .replace("{id}", &someone)
            .replace("{name}", "some_role");
        for body in ["{\"unterminated\": ", "[1, 2, 3]", "\"a string\""] {
            let response = env
                .client
                .request(method.parse().unwrap(), format!("{}{path}", env.base))
                .bearer_auth(&admin)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 400, "{method} {path} {body}: {answer}");
            assert!(
                answer["error"]["code"].is_string(),
                "{method} {path} {body}: {answer}"
            );
        }
    }
    // semantic refusals on the principal routes
    let cases = [
        (
            "POST",
            "/admin/users".to_string(),
            json!({"email": "not-an-email"}),
            "invalid_email",
        ),
        (
            "POST",
            "/admin/users".to_string(),
            json!({"email": "new@example.com", "password": "short"}),
            "password_too_short",
        ),
        (
            "PATCH",
            format!("/admin/users/{someone}"),
            json!({"email": "nope"}),
            "invalid_email",
        ),
        (
            "PUT",
            format!("/admin/users/{someone}/password"),
            json!({"password": "passwordpassword"}),
            "password_too_common",
        ),
        (
            "POST",
            format!("/admin/users/{someone}/identities"),
            json!({"provider": "myspace", "subject": "1"}),
            "unknown_provider",
        ),
        (
            "POST",
            "/admin/service-accounts".to_string(),
            json!({"name": "  "}),
            "invalid_name",
        ),
        (
            "POST",
            "/admin/service-accounts".to_string(),
            json!({"name": "x", "tenant_id": "Bad Tenant"}),
            "invalid_tenant",
        ),
    ];
    for (method, path, body, code) in cases {
        let (status, answer) = env
            .call(method, &path, Some(&admin), Some(body.clone()))
            .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{method} {path} {body}"
        );
    }
    let users_after = store
        .kv(Bucket::Users)
        .keys("", None, 1000)
        .await
        .unwrap()
        .keys;
    assert_eq!(users_before, users_after, "no user written");
    let new_actions: Vec<String> = env.audit_actions(&store).await[audit_before..].to_vec();
    assert!(
        new_actions.iter().all(|a| !a.starts_with("admin.")),
        "nothing audited as done: {new_actions:?}"
    );
    let (status, _) = env
        .call(
            "GET",
            &format!("/admin/users/{someone}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "the user is untouched");
}
