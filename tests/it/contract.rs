//! The control plane's API against its own OpenAPI document: schemathesis (pinned, from
//! PyPI; scripts/ensure-schemathesis.sh) generates calls to every operation from the
//! document served at `/openapi.json` and checks every answer (status declared, body as
//! declared, schema-valid requests accepted and invalid ones refused, no server error),
//! through every phase, stateful included. It signs in as the bootstrap admin; the hooks
//! in tests/contract keep it from acting on that very account. The few rules a JSON
//! Schema cannot say are listed, with their reasons, in tests/contract/schemathesis.toml.

use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use serde_json::{Value, json};

/// The JSON answer to `request`.
async fn json(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_answers_as_its_openapi_document_says() {
    let schemathesis = std::env::var("SCHEMATHESIS_BIN").expect(
        "SCHEMATHESIS_BIN names the schemathesis command (scripts/test.sh installs it with scripts/ensure-schemathesis.sh)",
    );
    let nats = NatsServer::start();
    let keys = SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    let (_control, base) = gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, &[]);
    let client = reqwest::Client::new();
    let signed_in = json(client.post(format!("{base}/v1/auth/signin")).json(
        &json!({"email": SnapshotKeys::ADMIN_EMAIL, "password": SnapshotKeys::ADMIN_PASSWORD}),
    ))
    .await;
    let token = signed_in["access_token"].as_str().unwrap().to_string();
    // the sign-in answer is what the document's TokenResponse says (schemathesis rarely
    // signs in for real: it does not know a password)
    let document = json(client.get(format!("{base}/openapi.json"))).await;
    let declared = &document["components"]["schemas"]["TokenResponse"];
    let fields = signed_in.as_object().unwrap();
    for field in fields.keys() {
        assert!(
            declared["properties"].get(field).is_some(),
            "{field} is not declared: {declared}"
        );
    }
    for required in declared["required"].as_array().unwrap() {
        assert!(
            fields.contains_key(required.as_str().unwrap()),
            "{required} missing from {signed_in}"
        );
    }
    let session = json(
        client
            .get(format!("{base}/v1/auth/session"))
            .bearer_auth(&token),
    )
    .await;
    let admin = session["user_id"].as_str().unwrap().to_string();

    let contract = concat!(env!("CARGO_MANIFEST_DIR"), "/contract");
    // schemathesis keeps a cache where it runs: not in the source tree
    let workdir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(&schemathesis)
        .args(["--no-color", "--config-file"])
        .arg(format!("{contract}/schemathesis.toml"))
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all", "--max-examples", "10", "--seed", "1"])
        // `all` includes a response-time check (10 s unless told): the suite runs many
        // tests at once on a shared machine, and how fast the API answers is for the
        // benchmarks to say; it is bounded by the request timeout (30 s) only
        .args(["--max-response-time", "30"])
        .env("SCHEMATHESIS_HOOKS", format!("{contract}/hooks.py"))
        .env("CONTRACT_ADMIN_ID", &admin)
        .current_dir(workdir.path())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run {schemathesis}: {err}"));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found answers the document does not allow:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // it ran every phase over the whole document, not an empty selection
    assert!(report.contains("Tested: "), "{report}");
    let tested = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("Tested: "))
        .and_then(|count| count.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert!(tested >= 70, "only {tested} operations tested:\n{report}");
}

/// The answers recorded by [`every_success_answer_is_what_its_schema_declares`].
struct Recorder {
    client: reqwest::Client,
    base: String,
    answers: Vec<Value>,
}

impl Recorder {
    /// Calls `method path` (an instance of the document's `template`) with `token` and
    /// `body`, expects `status`, records the answer and returns its body.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let call = (method, template, path);
        self.call_with(call, token, &[], body, status).await
    }

    /// [`Recorder::call`] with request `headers`.
    async fn call_with(
        &mut self,
        (method, template, path): (&str, &str, &str),
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let method_value = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method_value, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        let got = answer.status().as_u16();
        let text = answer.text().await.unwrap();
        assert_eq!(got, status, "{method} {path}: {text}");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("{method} {path}: not JSON ({err}): {text}"));
        self.answers.push(
            json!({"method": method, "path": template, "status": status, "body": body.clone()}),
        );
        body
    }
}

/// Every success answer with a body, through a whole admin session and a member's first
/// steps (including those schemathesis cannot reach: a real user's details, sessions and
/// identities, a service account's secrets, a tenant's routes, a plan, an accepted
/// invitation), is valid under the schema the document declares for it, and carries no
/// property the schema does not name (tests/python/check_answers.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_success_answer_is_what_its_schema_declares() {
    let nats = NatsServer::start();
    let keys = SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    let (_control, base) = gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, &[]);
    let mut r = Recorder {
        client: reqwest::Client::new(),
        base: base.clone(),
        answers: Vec::new(),
    };
    let signin =
        json!({"email": SnapshotKeys::ADMIN_EMAIL, "password": SnapshotKeys::ADMIN_PASSWORD});
    let signed_in = r
        .call(
            "POST",
            "/v1/auth/signin",
            "/v1/auth/signin",
            None,
            Some(signin.clone()),
            200,
        )
        .await;
    // a browser's sign-in: the tokens go into cookies, the body carries the CSRF token
    let browser = r
        .call_with(
            ("POST", "/v1/auth/signin", "/v1/auth/signin"),
            None,
            &[("x-token-delivery", "cookie")],
            Some(signin),
            200,
        )
        .await;
    assert_eq!(browser["token_type"], "cookie", "{browser}");
    let admin = signed_in["access_token"].as_str().unwrap().to_string();
    let admin = Some(admin.as_str());
    r.call(
        "GET",
        "/.well-known/jwks.json",
        "/.well-known/jwks.json",
        None,
        None,
        200,
    )
    .await;
    r.call(
        "GET",
        "/v1/auth/session",
        "/v1/auth/session",
        admin,
        None,
        200,
    )
    .await;

    // a member signs up, signs in, asks for a verification mail, turns TOTP on
    let email = "member@example.com";
    let password = "slate harbour copper 19";
    let credentials = json!({"email": email, "password": password});
    let signed_up = r
        .call(
            "POST",
            "/v1/auth/signup",
            "/v1/auth/signup",
            None,
            Some(credentials.clone()),
            201,
        )
        .await;
    let member_id = signed_up["user_id"].as_str().unwrap().to_string();
    let tokens = r
        .call(
            "POST",
            "/v1/auth/signin",
            "/v1/auth/signin",
            None,
            Some(credentials),
            200,
        )
        .await;
    let member = tokens["access_token"].as_str().unwrap().to_string();
    let member = Some(member.as_str());
    r.call(
        "GET",
        "/v1/auth/session",
        "/v1/auth/session",
        member,
        None,
        200,
    )
    .await;
    let resend = "/v1/auth/verify-email/resend";
    r.call("POST", resend, resend, member, None, 202).await;
    let forgot = json!({"email": email});
    r.call(
        "POST",
        "/v1/auth/forgot",
        "/v1/auth/forgot",
        None,
        Some(forgot),
        202,
    )
    .await;
    let enroll = "/v1/auth/mfa/totp/enroll";
    let enrolment = r.call("POST", enroll, enroll, member, None, 200).await;
    let mut app = crate::auth::Authenticator::new(enrolment["secret"].as_str().unwrap());
    let confirm = "/v1/auth/mfa/totp/confirm";
    let code = json!({"code": app.next_code()});
    r.call("POST", confirm, confirm, member, Some(code), 200)
        .await;

    // roles, rights, assignments, decisions
    r.call("GET", "/admin/roles", "/admin/roles", admin, None, 200)
        .await;
    let role = "/admin/roles/{name}";
    r.call("GET", role, "/admin/roles/tenant_member", admin, None, 200)
        .await;
    let custom = json!({"name": "exporter", "description": "exports", "rights": ["orders.export"]});
    r.call(
        "POST",
        "/admin/roles",
        "/admin/roles",
        admin,
        Some(custom),
        201,
    )
    .await;
    let change = json!({"description": "exports orders"});
    r.call(
        "PUT",
        role,
        "/admin/roles/exporter",
        admin,
        Some(change),
        200,
    )
    .await;
    r.call("GET", "/admin/rights", "/admin/rights", admin, None, 200)
        .await;
    let right = json!({"name": "orders.export", "description": "export orders"});
    r.call(
        "POST",
        "/admin/rights",
        "/admin/rights",
        admin,
        Some(right),
        201,
    )
    .await;
    let grant = json!({"principal_id": member_id, "tenant_id": "acme", "role": "tenant_member"});
    let assignments = "/admin/assignments";
    r.call(
        "POST",
        assignments,
        assignments,
        admin,
        Some(grant.clone()),
        201,
    )
    .await;
    r.call("POST", assignments, assignments, admin, Some(grant), 200)
        .await;
    r.call("GET", assignments, assignments, admin, None, 200)
        .await;
    let question = json!({"principal_id": member_id, "tenant_id": "acme", "action": "orders.read"});
    let explain = "/admin/authz/explain";
    r.call("POST", explain, explain, admin, Some(question), 200)
        .await;
    let effective = format!("/admin/authz/principals/{member_id}");
    r.call(
        "GET",
        "/admin/authz/principals/{id}",
        &effective,
        admin,
        None,
        200,
    )
    .await;

    // users: the member's details, sessions and identities; a user made, changed,
    // disabled and enabled
    r.call("GET", "/admin/users", "/admin/users", admin, None, 200)
        .await;
    let user = "/admin/users/{id}";
    let member_path = format!("/admin/users/{member_id}");
    r.call("GET", user, &member_path, admin, None, 200).await;
    let verified = json!({"email_verified": true});
    r.call("PATCH", user, &member_path, admin, Some(verified), 200)
        .await;
    let made = json!({"email": "made@example.com", "email_verified": true});
    let made = r
        .call(
            "POST",
            "/admin/users",
            "/admin/users",
            admin,
            Some(made),
            201,
        )
        .await;
    let made = made["id"].as_str().unwrap().to_string();
    let disable = format!("/admin/users/{made}/disable");
    r.call(
        "POST",
        "/admin/users/{id}/disable",
        &disable,
        admin,
        None,
        200,
    )
    .await;
    let enable = format!("/admin/users/{made}/enable");
    r.call(
        "POST",
        "/admin/users/{id}/enable",
        &enable,
        admin,
        None,
        200,
    )
    .await;
    let sessions = format!("/admin/users/{member_id}/sessions");
    r.call(
        "GET",
        "/admin/users/{id}/sessions",
        &sessions,
        admin,
        None,
        200,
    )
    .await;
    let identities = format!("/admin/users/{member_id}/identities");
    let identity = json!({"provider": "google", "subject": "104857600", "email": email});
    let template = "/admin/users/{id}/identities";
    r.call("POST", template, &identities, admin, Some(identity), 201)
        .await;
    r.call("GET", template, &identities, admin, None, 200).await;

    // invitations: one sent to the member, seen and accepted by them
    let invite = json!({"tenant_id": "globex", "email": email, "role": "tenant_member"});
    let invitations = "/admin/invitations";
    let invitation = r
        .call("POST", invitations, invitations, admin, Some(invite), 201)
        .await;
    r.call("GET", invitations, invitations, admin, None, 200)
        .await;
    r.call(
        "GET",
        "/v1/invitations",
        "/v1/invitations",
        member,
        None,
        200,
    )
    .await;
    let accept = format!(
        "/v1/invitations/{}/accept",
        invitation["id"].as_str().unwrap()
    );
    r.call(
        "POST",
        "/v1/invitations/{id}/accept",
        &accept,
        member,
        None,
        200,
    )
    .await;

    // a service account: made, listed, read, rotated, signed in
    let accounts = "/admin/service-accounts";
    let account = json!({"name": "exporter bot", "tenant_id": "acme"});
    let account = r
        .call("POST", accounts, accounts, admin, Some(account), 201)
        .await;
    let account_id = account["id"].as_str().unwrap().to_string();
    r.call("GET", accounts, accounts, admin, None, 200).await;
    let one = format!("/admin/service-accounts/{account_id}");
    r.call(
        "GET",
        "/admin/service-accounts/{id}",
        &one,
        admin,
        None,
        200,
    )
    .await;
    let rotate = format!("/admin/service-accounts/{account_id}/rotate");
    let rotated = r
        .call(
            "POST",
            "/admin/service-accounts/{id}/rotate",
            &rotate,
            admin,
            Some(json!({"overlap_seconds": 60})),
            200,
        )
        .await;
    let grant = json!({"grant_type": "client_credentials", "client_id": account_id, "client_secret": rotated["client_secret"]});
    let token = r
        .call(
            "POST",
            "/v1/auth/token",
            "/v1/auth/token",
            None,
            Some(grant),
            200,
        )
        .await;
    let bot = token["access_token"].as_str().unwrap().to_string();
    r.call(
        "GET",
        "/v1/auth/session",
        "/v1/auth/session",
        Some(&bot),
        None,
        200,
    )
    .await;

    // routing: shards, a placement, a tenant's routes, the whole document, replicas
    let routing = "/admin/routing";
    r.call("GET", routing, routing, admin, None, 200).await;
    let shard = "/admin/routing/{kind}/shards/{shard}";
    let endpoints = json!({"endpoints": ["http://127.0.0.1:9"]});
    r.call(
        "PUT",
        shard,
        "/admin/routing/aggregate/shards/s1",
        admin,
        Some(endpoints.clone()),
        200,
    )
    .await;
    r.call(
        "PUT",
        shard,
        "/admin/routing/aggregate/shards/s2",
        admin,
        Some(endpoints),
        200,
    )
    .await;
    let placement = "/admin/routing/{kind}/placements/{tenant_id}";
    let place = json!({"shard": "s1"});
    r.call(
        "PUT",
        placement,
        "/admin/routing/aggregate/placements/acme",
        admin,
        Some(place),
        200,
    )
    .await;
    let routes = "/admin/routing/tenants/{tenant_id}";
    let routed = r
        .call(
            "GET",
            routes,
            "/admin/routing/tenants/acme",
            admin,
            None,
            200,
        )
        .await;
    assert_eq!(routed["routes"]["aggregate"]["shard"], "s1", "{routed}");
    assert_eq!(
        routed["routes"]["runner"]["error"], "tenant_not_routed",
        "{routed}"
    );
    let reload = "/admin/routing/reload";
    r.call("POST", reload, reload, admin, None, 200).await;
    let current = r.call("GET", routing, routing, admin, None, 200).await;
    let replace = json!({"expected_revision": current["revision"], "routing": current["routing"]});
    r.call("PUT", routing, routing, admin, Some(replace), 200)
        .await;
    let replicas = "/admin/routing/replicas";
    r.call("GET", replicas, replicas, admin, None, 200).await;

    // a rebalance plan: made, listed, read, its gates asked, cancelled
    let plans = "/admin/rebalance/plans";
    let plan = json!({"tenant_id": "acme", "kind": "aggregate", "target_shard": "s2"});
    let plan = r.call("POST", plans, plans, admin, Some(plan), 201).await;
    let plan_id = plan["id"].as_str().unwrap().to_string();
    r.call("GET", plans, plans, admin, None, 200).await;
    let one = format!("{plans}/{plan_id}");
    r.call("GET", "/admin/rebalance/plans/{id}", &one, admin, None, 200)
        .await;
    let gates = format!("{plans}/{plan_id}/gates");
    r.call(
        "GET",
        "/admin/rebalance/plans/{id}/gates",
        &gates,
        admin,
        None,
        200,
    )
    .await;
    let cancel = format!("{plans}/{plan_id}/cancel");
    r.call(
        "POST",
        "/admin/rebalance/plans/{id}/cancel",
        &cancel,
        admin,
        None,
        200,
    )
    .await;
    let unplace = "/admin/routing/aggregate/placements/acme";
    r.call("DELETE", placement, unplace, admin, None, 200).await;
    r.call(
        "DELETE",
        shard,
        "/admin/routing/aggregate/shards/s2",
        admin,
        None,
        200,
    )
    .await;

    // keys, the audit trail, and a global sign-out of the member
    let keys_rotate = "/admin/keys/rotate";
    r.call("POST", keys_rotate, keys_rotate, admin, None, 200)
        .await;
    r.call("GET", "/admin/audit", "/admin/audit", admin, None, 200)
        .await;
    r.call(
        "DELETE",
        "/admin/users/{id}/sessions",
        &sessions,
        admin,
        None,
        200,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let document = dir.path().join("openapi.json");
    let served = r
        .client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(&document, &served).unwrap();
    let answers = dir.path().join("answers.json");
    std::fs::write(&answers, serde_json::to_vec(&r.answers).unwrap()).unwrap();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/check_answers.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&document)
        .arg(&answers)
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run {python}: {err}"));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "answers the document does not declare:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.contains(&format!(
            "{} answers checked, 0 mismatches",
            r.answers.len()
        )),
        "{report}"
    );
    assert!(r.answers.len() >= 60, "{}", r.answers.len());
}
