//! The admin API: who may call it, roles and assignments, privilege escalation, the audit
//! trail and the effective-rights documents published for the data planes.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_shared::authz::EffectiveRights;
use gateway_shared::signed::{DocVerifyingKeys, Verified};
use gateway_shared::store::nats::NatsConfig;
use gateway_shared::store::{Bucket, Store, StoreConfig};
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
    let (url, signing, kek, outbox) = (
        nats.url(),
        keys.signing_path(),
        keys.kek_path(),
        keys.outbox_path(),
    );
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--nats-url",
        &url,
        "--store-prefix",
        &prefix,
        "--snapshot-signing-key-file",
        &signing,
        "--key-encryption-key-file",
        &kek,
        "--mail-outbox",
        &outbox,
    ];
    let bootstrap = keys.bootstrap_args();
    args.extend(bootstrap.iter().map(String::as_str));
    let mut control = PlaneProcess::spawn("control-plane", &args, &[]);
    let base = format!(
        "http://{}",
        control.wait_for_log("control plane listening", START)["addr"]
    );
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
            .read(&gateway_shared::store::AuditQuery {
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
    let acme = gateway_shared::authz::TenantId::parse("acme").unwrap();
    let globex = gateway_shared::authz::TenantId::parse("globex").unwrap();
    type Case<'a> = (
        Option<&'a gateway_shared::authz::TenantId>,
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
        let decision = gateway_shared::authz::decide(
            &after.payload,
            &gateway_shared::authz::Request {
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
        gateway_shared::authz::decide(
            &changed.payload,
            &gateway_shared::authz::Request {
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
        .read(&gateway_shared::store::AuditQuery {
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
