//! The data plane's request path for queries: token, principal document, tenant, rights,
//! routing, forwarding with correlation and trace headers.

use std::time::Duration;

use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use gateway_tests::upstream;
use serde_json::{Value, json};

pub(crate) const START: Duration = Duration::from_secs(30);
pub(crate) const PASSWORD: &str = "plum tractor velvet lagoon";

pub(crate) async fn send(
    client: &reqwest::Client,
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Control plane, data plane and NATS, with the bootstrap admin signed in.
pub(crate) struct Stack {
    pub(crate) nats: NatsServer,
    pub(crate) keys: SnapshotKeys,
    prefix: String,
    pub(crate) control: gateway_tests::process::PlaneProcess,
    pub(crate) base: String,
    pub(crate) data_process: gateway_tests::process::PlaneProcess,
    pub(crate) data: gateway_tests::DataPlaneUrls,
    pub(crate) client: reqwest::Client,
    pub(crate) admin: String,
}

impl Stack {
    /// `data_flags` receives the control plane's base URL.
    pub(crate) async fn start(
        control_flags: &[&str],
        data_flags: impl Fn(&str) -> Vec<String>,
    ) -> Stack {
        let nats = NatsServer::start();
        let keys = SnapshotKeys::generate();
        let prefix = gateway_tests::unique_prefix();
        let (control, base) =
            gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, control_flags);
        let flags = data_flags(&base);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (data_process, data) =
            gateway_tests::spawn_data_plane(&nats.url(), &prefix, &keys, &flags);
        let client = reqwest::Client::new();
        let (status, admin) = send(&client, "POST", format!("{base}/v1/auth/signin"), None, Some(json!({"email": SnapshotKeys::ADMIN_EMAIL, "password": SnapshotKeys::ADMIN_PASSWORD})), &[]).await;
        assert_eq!(status, 200, "{admin}");
        let admin = admin["access_token"].as_str().unwrap().to_string();
        Stack {
            nats,
            keys,
            prefix,
            control,
            base,
            data_process,
            data,
            client,
            admin,
        }
    }

    /// An admin call that must succeed.
    pub(crate) async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, answer) = send(
            &self.client,
            method,
            format!("{}{path}", self.base),
            Some(&self.admin),
            Some(body),
            &[],
        )
        .await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// Routes `tenant` for `kind` to a one-endpoint shard.
    pub(crate) async fn route(&self, kind: &str, shard: &str, endpoint: &str, tenant: &str) {
        self.admin(
            "PUT",
            &format!("/admin/routing/{kind}/shards/{shard}"),
            json!({"endpoints": [endpoint]}),
        )
        .await;
        self.admin(
            "PUT",
            &format!("/admin/routing/{kind}/placements/{tenant}"),
            json!({"shard": shard}),
        )
        .await;
    }

    /// A new user holding `role` in each tenant, signed in: (access token, user id).
    pub(crate) async fn member(&self, email: &str, grants: &[(&str, &str)]) -> (String, String) {
        let (status, user) = send(
            &self.client,
            "POST",
            format!("{}/v1/auth/signup", self.base),
            None,
            Some(json!({"email": email, "password": PASSWORD})),
            &[],
        )
        .await;
        assert_eq!(status, 201, "{user}");
        let user_id = user["user_id"].as_str().unwrap().to_string();
        for (tenant, role) in grants {
            self.admin(
                "POST",
                "/admin/assignments",
                json!({"principal_id": user_id, "tenant_id": tenant, "role": role}),
            )
            .await;
        }
        let (_, tokens) = send(
            &self.client,
            "POST",
            format!("{}/v1/auth/signin", self.base),
            None,
            Some(json!({"email": email, "password": PASSWORD})),
            &[],
        )
        .await;
        (
            tokens["access_token"].as_str().unwrap().to_string(),
            user_id,
        )
    }

    /// Signs `email` in through the data plane (the edge) with the test password; the
    /// answer must be 200: tokens, or an MFA challenge.
    pub(crate) async fn signin_at_edge(&self, email: &str) -> Value {
        let (status, answer) = send(
            &self.client,
            "POST",
            format!("{}/v1/auth/signin", self.data.http),
            None,
            Some(json!({"email": email, "password": PASSWORD})),
            &[],
        )
        .await;
        assert_eq!(status, 200, "sign-in of {email}: {answer}");
        answer
    }

    /// The data plane's Prometheus text.
    pub(crate) async fn metrics(&self) -> String {
        gateway_tests::metrics_text(&self.client, &self.data.ops).await
    }

    pub(crate) async fn store(&self) -> gateway_store::Store {
        gateway_store::Store::open(&gateway_store::StoreConfig::Nats(
            gateway_store::nats::NatsConfig {
                url: self.nats.url(),
                prefix: self.prefix.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
    }
}

/// A fresh access token of the reader of the query test.
async fn reader_token(client: &reqwest::Client, base: &str) -> String {
    let (_, answer) = send(
        client,
        "POST",
        format!("{base}/v1/auth/signin"),
        None,
        Some(json!({"email": "reader@example.com", "password": PASSWORD})),
        &[],
    )
    .await;
    answer["access_token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_authenticated_authorized_routed_and_forwarded() {
    let stack = Stack::start(&[], |_| vec!["--upstream-timeout".into(), "2s".into()]).await;
    let node = upstream::start(
        "shard-q",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("projection", "proj-1", &node.http_url(), "acme")
        .await;
    let (token, user_id) = stack
        .member(
            "reader@example.com",
            &[("acme", "tenant_member"), ("globex", "tenant_member")],
        )
        .await;
    let (client, base, data, admin) = (&stack.client, &stack.base, &stack.data, &stack.admin);
    let query = format!("{}/v1/query/orders_by_customer", data.http);
    let acme = [("x-tenant-id", "acme")];

    // the mirrors converge: poll until the query goes through
    let deadline = std::time::Instant::now() + START;
    let answer = loop {
        let (status, answer) = send(
            client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({"customer": "c-1"})),
            &acme,
        )
        .await;
        if status == 200 {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "query never allowed: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(answer["node"], "shard-q");
    assert_eq!(answer["tenant_id"], "acme");
    assert_eq!(answer["query"]["customer"], "c-1");

    // correlation, trace and identity reach the upstream; a spoofed identity header does not
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _) = send(
        client,
        "POST",
        query.clone(),
        Some(&token),
        Some(json!({})),
        &[
            ("x-tenant-id", "acme"),
            ("x-correlation-id", "q-77"),
            ("traceparent", traceparent),
            ("x-principal-id", "usr_evil"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let seen = node.node.recorded().into_iter().last().unwrap();
    assert_eq!(seen.header("x-tenant-id"), Some("acme"));
    assert_eq!(seen.header("x-principal-id"), Some(user_id.as_str()));
    assert_eq!(seen.header("x-correlation-id"), Some("q-77"));
    assert!(
        seen.header("traceparent")
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    assert!(
        !seen
            .header("traceparent")
            .unwrap()
            .contains("00f067aa0ba902b7"),
        "the gateway is the parent"
    );

    // refusals, each in the envelope
    type Case<'a> = (
        Option<&'a str>,
        Vec<(&'a str, &'a str)>,
        String,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (None, acme.to_vec(), query.clone(), 401, "missing_token"),
        (
            Some("not.a.token"),
            acme.to_vec(),
            query.clone(),
            401,
            "malformed_token",
        ),
        (Some(admin), vec![], query.clone(), 400, "missing_tenant"),
        (
            Some(&token),
            vec![("x-tenant-id", "Not A Tenant")],
            query.clone(),
            400,
            "invalid_tenant",
        ),
        (
            Some(&token),
            vec![("x-tenant-id", "acme"), ("x-tenant-id", "globex")],
            query.clone(),
            400,
            "ambiguous_tenant",
        ),
        (
            Some(&token),
            vec![("x-tenant-id", "initech")],
            query.clone(),
            403,
            "not_tenant_member",
        ),
        (
            Some(&token),
            vec![("x-tenant-id", "globex")],
            query.clone(),
            404,
            "tenant_not_routed",
        ),
        (
            Some(&token),
            acme.to_vec(),
            format!("{}/v1/query/a%2Fb", data.http),
            400,
            "invalid_path",
        ),
    ];
    for (token, headers, url, status, code) in cases {
        let (got, answer) = send(
            client,
            "POST",
            url.clone(),
            token,
            Some(json!({})),
            &headers,
        )
        .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{url} {headers:?}: {answer}"
        );
        assert!(answer["error"]["correlation_id"].is_string());
    }

    // global sign-out reaches the data plane: the old token is refused (poll with a deadline)
    let sign_out_everywhere = |token: String, round: &'static str| {
        let query = query.clone();
        async move {
            let (status, _) = send(
                client,
                "POST",
                format!("{base}/v1/auth/signout"),
                Some(&token),
                Some(json!({"all": true})),
                &[],
            )
            .await;
            assert_eq!(status, 204, "{round}");
            let deadline = std::time::Instant::now() + START;
            loop {
                let (status, answer) = send(
                    client,
                    "POST",
                    query.clone(),
                    Some(&token),
                    Some(json!({})),
                    &acme,
                )
                .await;
                if status == 401 && answer["error"]["code"] == "token_revoked" {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{round}: sign-out not enforced: {status} {answer}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    sign_out_everywhere(token.clone(), "first sign-out").await;
    // sign in and sign out everywhere again, quickly: a token issued in the same second as
    // the previous sign-out carries the next second as iat, and the next sign-out must
    // refuse it as well (it once did not: the data plane knows no sessions, only
    // tokens_valid_after)
    for round in ["second sign-out", "third sign-out", "fourth sign-out"] {
        let again = reader_token(client, base).await;
        sign_out_everywhere(again, round).await;
    }

    // the upstream goes away: a typed 503, not a hang
    let fresh = reader_token(client, base).await;
    drop(node);
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, answer) = send(
            client,
            "POST",
            query.clone(),
            Some(&fresh),
            Some(json!({})),
            &acme,
        )
        .await;
        if status == 503 {
            assert_eq!(answer["error"]["code"], "upstream_unavailable");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upstream outage not reported: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_to_the_aggregate_shard_over_grpc_and_http_alike() {
    use gateway_proto::aggregate::v1::SubmitCommandRequest;
    use gateway_proto::aggregate::v1::command_service_client::CommandServiceClient;
    let stack = Stack::start(&[], |_| vec![]).await;
    let node = upstream::start(
        "shard-c",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("aggregate", "agg-1", &node.grpc_url(), "acme")
        .await;
    stack
        .admin(
            "POST",
            "/admin/roles",
            json!({"name": "order_writer", "rights": ["command.submit:order"]}),
        )
        .await;
    let (token, user_id) = stack
        .member("writer@example.com", &[("acme", "order_writer")])
        .await;
    let (client, data) = (&stack.client, &stack.data);

    let mut grpc = CommandServiceClient::connect(data.grpc.clone())
        .await
        .unwrap();
    let command = |id: &str,
                   aggregate_type: &str,
                   expected: Option<u64>,
                   tenant: &str,
                   token: Option<&str>| {
        let mut request = tonic::Request::new(SubmitCommandRequest {
            aggregate_type: aggregate_type.into(),
            aggregate_id: "o-1".into(),
            command_type: "PlaceOrder".into(),
            command_id: id.into(),
            payload: br#"{"sku":"x"}"#.to_vec(),
            content_type: "application/json".into(),
            expected_version: expected,
            metadata: Default::default(),
        });
        request
            .metadata_mut()
            .insert("x-tenant-id", tenant.parse().unwrap());
        request
            .metadata_mut()
            .insert("x-correlation-id", "cmd-1".parse().unwrap());
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    };
    // T6.1: forwarded with tenant metadata, events returned (poll until the mirrors converge)
    let deadline = std::time::Instant::now() + START;
    let first = loop {
        match grpc
            .submit_command(command("c-1", "order", Some(0), "acme", Some(&token)))
            .await
        {
            Ok(answer) => break answer.into_inner(),
            Err(status) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "command never accepted: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    assert_eq!(first.aggregate_version, 1);
    assert_eq!(first.events[0].event_type, "PlaceOrder");
    assert_eq!(first.events[0].metadata["tenant_id"], "acme");
    let seen = node.node.recorded().into_iter().last().unwrap();
    assert_eq!(seen.header("x-tenant-id"), Some("acme"));
    assert_eq!(seen.header("x-principal-id"), Some(user_id.as_str()));
    assert_eq!(seen.header("x-correlation-id"), Some("cmd-1"));
    assert!(seen.header("traceparent").is_some());

    // refusals map to gRPC codes; domain errors of the aggregate pass through
    let cases = [
        (
            command("c-2", "order", None, "acme", None),
            tonic::Code::Unauthenticated,
        ),
        (
            command("c-3", "invoice", None, "acme", Some(&token)),
            tonic::Code::PermissionDenied,
        ),
        (
            command("c-4", "order", None, "globex", Some(&token)),
            tonic::Code::PermissionDenied,
        ),
        (
            command("c-5", "order", Some(0), "acme", Some(&token)),
            tonic::Code::FailedPrecondition,
        ),
    ];
    for (request, code) in cases {
        let status = grpc.submit_command(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }

    // T6.2: the HTTP wrapper answers the same shape; the gateway supplies a command_id
    let (status, answer) = send(
        client,
        "POST",
        format!("{}/v1/commands/order/o-1", data.http),
        Some(&token),
        Some(json!({"command_type": "AddLine", "payload": {"sku": "y"}, "expected_version": 1})),
        &[("x-tenant-id", "acme")],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["aggregate_version"], 2);
    assert_eq!(answer["events"][0]["payload"]["sku"], "y");
    assert_eq!(answer["events"][0]["sequence"], 2);
    assert_eq!(answer["command_id"].as_str().unwrap().len(), 36);
    let (status, answer) = send(
        client,
        "POST",
        format!("{}/v1/commands/order/o-1", data.http),
        Some(&token),
        Some(json!({"command_type": "AddLine", "expected_version": 1})),
        &[("x-tenant-id", "acme")],
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("failed_precondition"))
    );
    let (status, _) = send(
        client,
        "POST",
        format!("{}/v1/commands/order/o-1", data.http),
        Some(&token),
        Some(json!({"no": "type"})),
        &[("x-tenant-id", "acme")],
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_admin_and_auth_forwarding_through_the_data_plane() {
    let stack = Stack::start(&["--trusted-proxies", "127.0.0.1"], |base| {
        vec!["--control-plane-url".into(), base.to_string()]
    })
    .await;
    let node = upstream::start(
        "shard-r",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let (client, data) = (&stack.client, &stack.data);
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    // the auth flows work through the data plane, and the control plane sees the real client
    let (status, _) = send(
        client,
        "POST",
        format!("{}/v1/auth/signup", data.http),
        None,
        Some(json!({"email": "ops@example.com", "password": PASSWORD})),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = send(
        &from(23),
        "POST",
        format!("{}/v1/auth/signin", data.http),
        None,
        Some(json!({"email": "ops@example.com", "password": PASSWORD})),
        &[("x-forwarded-for", "6.6.6.6")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    let jwks: Value = client
        .get(format!("{}/.well-known/jwks.json", data.http))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!jwks["keys"].as_array().unwrap().is_empty());
    let store = stack.store().await;
    let audit = store
        .audit()
        .read(&gateway_store::AuditQuery {
            tenant: None,
            from_seq: 1,
            limit: 100,
        })
        .await
        .unwrap();
    let signin = audit
        .iter()
        .rev()
        .map(|r| serde_json::from_slice::<Value>(&r.data).unwrap())
        .find(|r| r["action"] == "auth.signin" && r["outcome"] == "ok")
        .unwrap();
    assert_eq!(
        signin["client_ip"], "127.0.0.23",
        "the client's address, not the spoofed header"
    );

    // runner admin: runner.admin in the tenant, normalised paths
    stack
        .route("runner", "run-1", &node.http_url(), "acme")
        .await;
    let (_, me) = send(
        client,
        "GET",
        format!("{}/v1/auth/session", data.http),
        Some(&token),
        None,
        &[],
    )
    .await;
    let user_id = me["user_id"].as_str().unwrap().to_string();
    stack
        .admin(
            "POST",
            "/admin/assignments",
            json!({"principal_id": user_id, "tenant_id": "acme", "role": "tenant_member"}),
        )
        .await;
    let runner = format!("{}/admin/runner/workflows/wf-1?force=true", data.http);
    let acme = [("x-tenant-id", "acme")];
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, answer) =
            send(client, "DELETE", runner.clone(), Some(&token), None, &acme).await;
        if status == 403 && answer["error"]["code"] == "no_matching_right" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member not refused: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stack
        .admin(
            "POST",
            "/admin/assignments",
            json!({"principal_id": user_id, "tenant_id": "acme", "role": "tenant_admin"}),
        )
        .await;
    let deadline = std::time::Instant::now() + START;
    let answer = loop {
        let (status, answer) =
            send(client, "DELETE", runner.clone(), Some(&token), None, &acme).await;
        if status == 200 {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "admin not allowed: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        (answer["runner_path"].as_str(), answer["method"].as_str()),
        (Some("workflows/wf-1"), Some("DELETE"))
    );
    let (status, answer) = send(
        client,
        "GET",
        format!("{}/admin/runner/a%2F..%2Fsecrets", data.http),
        Some(&token),
        None,
        &acme,
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_path"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_attacks_and_oversized_bodies_are_refused_at_the_data_plane() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let stack = Stack::start(&[], |_| vec!["--max-body-bytes".into(), "1024".into()]).await;
    let node = upstream::start(
        "shard-t",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("projection", "p1", &node.http_url(), "acme")
        .await;
    let (token, user_id) = stack
        .member("target@example.com", &[("acme", "tenant_member")])
        .await;
    let (client, base, data, admin, keys) = (
        &stack.client,
        &stack.base,
        &stack.data,
        &stack.admin,
        &stack.keys,
    );
    let query = format!("{}/v1/query/v", data.http);
    let acme = [("x-tenant-id", "acme")];
    let deadline = std::time::Instant::now() + START;
    while send(
        client,
        "POST",
        query.clone(),
        Some(&token),
        Some(json!({})),
        &acme,
    )
    .await
    .0 != 200
    {
        assert!(std::time::Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // forged tokens of every shape
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_string();
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
        parts[1]
    );
    let jwks: Value = client
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let x = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap()["x"]
        .as_str()
        .unwrap()
        .to_string();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    hs_header.typ = Some("at+jwt".into());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&URL_SAFE_NO_PAD.decode(&x).unwrap()),
    )
    .unwrap();
    let unknown_kid = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "someone-elses"})),
        parts[1],
        parts[2]
    );
    let mut other_sub = claims.clone();
    other_sub["sub"] = json!("usr_00000000000000000000000000000000");
    let tampered = format!("{}.{}.{}", parts[0], b64(&other_sub), parts[2]);
    // validly signed tokens with wrong claims, signed here with the real key (sealed under the KEK)
    let store = stack.store().await;
    let kek =
        control_plane::keys::Kek::from_base64(&std::fs::read_to_string(keys.kek_path()).unwrap())
            .unwrap();
    let manager = control_plane::KeyManager::new(
        store,
        std::sync::Arc::new(kek),
        control_plane::keys::KeySettings {
            alg: control_plane::keys::SigningAlg::EdDsa,
            token_ttl: Duration::from_secs(600),
            rotation_interval: None,
        },
        std::sync::Arc::new(keys.signer_clone()),
    );
    manager.refresh().await.unwrap();
    let signed = |change: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        change(&mut c);
        manager.sign(&c).unwrap()
    };
    let now = gateway_core::unix_now();
    let cases = [
        (alg_none, "malformed_token"),
        (hs256, "algorithm_mismatch"),
        (unknown_kid, "unknown_key"),
        (tampered, "bad_signature"),
        (
            signed(&|c| {
                c["exp"] = json!(now - 3600);
                c["iat"] = json!(now - 4000);
                c["nbf"] = json!(now - 4000);
            }),
            "token_expired",
        ),
        (
            signed(&|c| c["aud"] = json!("someone-else")),
            "wrong_audience",
        ),
        (
            signed(&|c| c["iss"] = json!("https://evil.example")),
            "wrong_issuer",
        ),
        (signed(&|c| c["typ"] = json!("refresh")), "wrong_token_type"),
        (
            signed(&|c| c["nbf"] = json!(now + 3600)),
            "token_not_yet_valid",
        ),
        ("a.b".to_string(), "malformed_token"),
        ("x".repeat(9000), "malformed_token"),
    ];
    for (forged, reason) in cases {
        let (status, answer) = send(
            client,
            "POST",
            query.clone(),
            Some(&forged),
            Some(json!({})),
            &acme,
        )
        .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (401, Some(reason)),
            "{}",
            &forged[..forged.len().min(60)]
        );
    }

    // an oversized body: 413 in the envelope
    let big = json!({"blob": "z".repeat(4096)});
    let (status, answer) = send(
        client,
        "POST",
        query.clone(),
        Some(&token),
        Some(big),
        &acme,
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    // a disabled principal is refused within the propagation delay
    send(
        client,
        "POST",
        format!("{base}/admin/users/{user_id}/disable"),
        Some(admin),
        None,
        &[],
    )
    .await;
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, answer) = send(
            client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({})),
            &acme,
        )
        .await;
        if status == 401 {
            assert_eq!(answer["error"]["code"], "principal_disabled");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "disable not enforced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_serves_from_its_mirrors_while_nats_is_down_and_catches_up() {
    let mut stack = Stack::start(&[], |_| vec![]).await;
    let node = upstream::start(
        "shard-o",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("projection", "p1", &node.http_url(), "acme")
        .await;
    let (token, _) = stack
        .member(
            "steady@example.com",
            &[("acme", "tenant_member"), ("globex", "tenant_member")],
        )
        .await;
    let query = format!("{}/v1/query/v", stack.data.http);
    let deadline = std::time::Instant::now() + START;
    while send(
        &stack.client,
        "POST",
        query.clone(),
        Some(&token),
        Some(json!({})),
        &[("x-tenant-id", "acme")],
    )
    .await
    .0 != 200
    {
        assert!(std::time::Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    stack.nats.stop();
    // allowed calls keep going through, refused ones stay refused, from last-known-good state
    for _ in 0..20 {
        let (status, answer) = send(
            &stack.client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({})),
            &[("x-tenant-id", "acme")],
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let (status, _) = send(
            &stack.client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({})),
            &[("x-tenant-id", "initech")],
        )
        .await;
        assert_eq!(status, 403);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // NATS back: a change made afterwards reaches the data plane
    stack.nats.restart();
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, _) = send(
            &stack.client,
            "PUT",
            format!("{}/admin/routing/projection/placements/globex", stack.base),
            Some(&stack.admin),
            Some(json!({"shard": "p1"})),
            &[],
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "control plane did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, answer) = send(
            &stack.client,
            "POST",
            query.clone(),
            Some(&token),
            Some(json!({})),
            &[("x-tenant-id", "globex")],
        )
        .await;
        if status == 200 {
            assert_eq!(answer["tenant_id"], "globex");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "data plane did not catch up: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port with nothing listening on it (connections are refused).
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// The data plane's view of one endpoint (`GET /admin/upstreams` on the ops listener).
async fn circuit_of(stack: &Stack, endpoint: &str) -> Option<Value> {
    let (status, report) = send(
        &stack.client,
        "GET",
        format!("{}/admin/upstreams", stack.data.ops),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200, "{report}");
    report["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == endpoint)
        .cloned()
}

/// Several endpoints per shard, balancing, ejection by the circuit breaker and its
/// half-open recovery, retries only where safe, deadlines (504, `grpc-timeout` passed on)
/// and load shedding, against the real data plane and reference nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_are_balanced_failing_endpoints_ejected_and_load_shed() {
    use gateway_proto::aggregate::v1::SubmitCommandRequest;
    use gateway_proto::aggregate::v1::command_service_client::CommandServiceClient;
    let stack = Stack::start(&[], |_| {
        [
            "--query-timeout",
            "1s",
            "--circuit-failures",
            "3",
            "--circuit-open-for",
            "500ms",
            "--max-in-flight",
            "4",
        ]
        .map(String::from)
        .to_vec()
    })
    .await;
    let loopback = || "127.0.0.1:0".parse().unwrap();
    let a = upstream::start("node-a", loopback(), loopback())
        .await
        .unwrap();
    let b = upstream::start("node-b", loopback(), loopback())
        .await
        .unwrap();
    let (dead_1, dead_2, dead_3) = (dead_endpoint(), dead_endpoint(), dead_endpoint());
    let shard = |kind: &str, name: &str, endpoints: Vec<String>| {
        let (kind, name) = (kind.to_string(), name.to_string());
        let stack = &stack;
        async move {
            stack
                .admin(
                    "PUT",
                    &format!("/admin/routing/{kind}/shards/{name}"),
                    json!({ "endpoints": endpoints }),
                )
                .await;
        }
    };
    shard("projection", "pair", vec![a.http_url(), b.http_url()]).await;
    shard("projection", "flaky", vec![dead_1.clone(), a.http_url()]).await;
    shard("projection", "gone", vec![dead_2.clone()]).await;
    shard("aggregate", "agg", vec![dead_3.clone(), a.grpc_url()]).await;
    for (kind, tenant, name) in [
        ("projection", "pair", "pair"),
        ("projection", "flaky", "flaky"),
        ("projection", "gone", "gone"),
        ("aggregate", "flaky", "agg"),
    ] {
        stack
            .admin(
                "PUT",
                &format!("/admin/routing/{kind}/placements/{tenant}"),
                json!({ "shard": name }),
            )
            .await;
    }
    stack
        .admin(
            "POST",
            "/admin/roles",
            json!({"name": "all_reader", "rights": ["query.read", "command.submit:order"]}),
        )
        .await;
    let grants = [
        ("pair", "all_reader"),
        ("flaky", "all_reader"),
        ("gone", "all_reader"),
    ];
    let (token, user_id) = stack.member("lb@example.com", &grants).await;
    let client = &stack.client;
    let query_url = format!("{}/v1/query/orders", stack.data.http);
    let token_ref = token.as_str();
    let query = |tenant: &'static str, body: Value| {
        let url = query_url.clone();
        async move {
            send(
                client,
                "POST",
                url,
                Some(token_ref),
                Some(body),
                &[("x-tenant-id", tenant)],
            )
            .await
        }
    };
    let deadline = std::time::Instant::now() + START;
    while query("pair", json!({})).await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never routed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // balancing: both endpoints of the shard take their share
    for _ in 0..20 {
        assert_eq!(query("pair", json!({})).await.0, 200);
    }
    let (on_a, on_b) = (a.node.recorded().len(), b.node.recorded().len());
    assert!(on_a >= 5 && on_b >= 5, "a: {on_a}, b: {on_b}");

    // a refused endpoint costs no request (never reached: tried again on the other one),
    // and is ejected after 3 consecutive failures
    let before = a.node.recorded().len();
    for i in 0..10 {
        let (status, answer) = query("flaky", json!({"i": i})).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["node"], "node-a");
    }
    assert_eq!(a.node.recorded().len(), before + 10, "each query sent once");
    assert_eq!(
        circuit_of(&stack, &dead_1).await.unwrap()["circuit"],
        "open"
    );

    // one endpoint, unreachable: 503 with the cause, then the circuit opens and calls fail
    // fast with a retry-after until a probe finds the endpoint back
    for _ in 0..3 {
        let (status, answer) = query("gone", json!({})).await;
        assert_eq!(status, 503, "{answer}");
        assert_eq!(answer["error"]["code"], "upstream_unavailable");
    }
    let response = client
        .post(format!("{}/v1/query/orders", stack.data.http))
        .bearer_auth(&token)
        .header("x-tenant-id", "gone")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "circuit_open");
    let revived_addr: std::net::SocketAddr = dead_2.trim_start_matches("http://").parse().unwrap();
    let revived = upstream::start("node-revived", revived_addr, loopback())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + START;
    loop {
        let (status, answer) = query("gone", json!({})).await;
        if status == 200 {
            assert_eq!(answer["node"], "node-revived");
            break;
        }
        assert_eq!(answer["error"]["code"], "circuit_open", "{answer}");
        assert!(std::time::Instant::now() < deadline, "never probed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        circuit_of(&stack, &dead_2).await.unwrap()["circuit"],
        "closed"
    );
    drop(revived);

    // a slow upstream: 504 at the query deadline (1 s), not when the upstream answers
    let started = std::time::Instant::now();
    let (status, answer) = query("pair", json!({"_reference": {"delay_ms": 3000}})).await;
    assert_eq!(status, 504, "{answer}");
    assert_eq!(answer["error"]["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_millis(2500));
    // an upstream answer, even an error, is relayed and not retried
    let before = a.node.recorded().len() + b.node.recorded().len();
    let (status, answer) = query("pair", json!({"_reference": {"status": 500}})).await;
    assert_eq!(status, 500);
    assert_eq!(answer["error"]["code"], "injected");
    assert_eq!(
        a.node.recorded().len() + b.node.recorded().len(),
        before + 1
    );

    // load shedding: 4 slots; 6 concurrent slow queries → 4 answered, 2 shed at once
    let slow = json!({"_reference": {"delay_ms": 600}});
    let results = futures::future::join_all((0..6).map(|_| {
        client
            .post(format!("{}/v1/query/orders", stack.data.http))
            .bearer_auth(&token)
            .header("x-tenant-id", "pair")
            .json(&slow)
            .send()
    }))
    .await;
    let mut shed = 0;
    for response in results {
        let response = response.unwrap();
        match response.status().as_u16() {
            200 => {}
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                let answer: Value = response.json().await.unwrap();
                assert_eq!(answer["error"]["code"], "load_shed");
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(shed, 2);

    // commands: a refused aggregate endpoint is skipped (the gateway's command_id makes the
    // command safe to send again); the client's grpc-timeout bounds the call and is passed on
    let mut grpc = CommandServiceClient::connect(stack.data.grpc.clone())
        .await
        .unwrap();
    let command = |id: &str, timeout: Duration, delay: Option<&str>| {
        let mut metadata = std::collections::HashMap::new();
        if let Some(delay) = delay {
            metadata.insert("reference_delay_ms".to_string(), delay.to_string());
        }
        let mut request = tonic::Request::new(SubmitCommandRequest {
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            command_type: "Touch".into(),
            command_id: id.into(),
            payload: b"{}".to_vec(),
            content_type: "application/json".into(),
            expected_version: None,
            metadata,
        });
        request.set_timeout(timeout);
        let metadata = request.metadata_mut();
        metadata.insert("x-tenant-id", "flaky".parse().unwrap());
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    a.node.clear();
    for i in 0..4 {
        let answer = grpc
            .submit_command(command(&format!("c-{i}"), Duration::from_secs(5), None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.command_id, format!("c-{i}"));
    }
    let commands: Vec<_> = a
        .node
        .recorded()
        .into_iter()
        .filter(|r| r.protocol == "grpc")
        .collect();
    assert_eq!(commands.len(), 4);
    for recorded in &commands {
        let timeout = recorded
            .header("grpc-timeout")
            .expect("grpc-timeout passed on");
        let timeout = data_plane::upstream::parse_grpc_timeout(timeout).unwrap();
        assert!(timeout > Duration::ZERO && timeout <= Duration::from_secs(5));
    }
    let status = grpc
        .submit_command(command("c-slow", Duration::from_millis(300), Some("3000")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{status:?}"
    );

    // the log line of each request names the principal, the tenant and the upstream
    let logged = |message: &str, upstream: &str| {
        stack.data_process.logs().iter().any(|line| {
            let line: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            line["message"] == message
                && line["span"]["principal"] == user_id.as_str()
                && line["span"]["tenant"] == "flaky"
                && line["span"]["upstream"] == upstream
                && line["span"]["trace_id"]
                    .as_str()
                    .is_some_and(|t| t.len() == 32)
        })
    };
    assert!(logged("request finished", &a.http_url()));
    assert!(logged("grpc request finished", &a.grpc_url()));

    // and the metrics say what happened
    let metrics = stack.metrics().await;
    for expected in [
        "gateway_token_cache_total{result=\"hit\"}",
        "gateway_load_shed_total{route=\"query\"} 2",
        "gateway_upstream_retries_total{kind=\"projection\"}",
        "gateway_upstream_retries_total{kind=\"aggregate\"}",
        &format!("gateway_upstream_circuit_state{{endpoint=\"{dead_1}\"}} 1"),
        &format!("gateway_upstream_circuit_state{{endpoint=\"{dead_2}\"}} 0"),
        "gateway_upstream_errors_total{kind=\"projection\",endpoint=",
        "gateway_grpc_request_duration_seconds",
    ] {
        assert!(metrics.contains(expected), "{expected} missing");
    }
}

/// A replica restarted while NATS is unreachable starts from its cache file of verified
/// documents (verified again on load) and serves; a tampered file is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_restarted_while_nats_is_down_serves_from_its_cache_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("mirrors.json");
    let cache_flag = cache.to_str().unwrap().to_string();
    let flag = cache_flag.clone();
    let mut stack = Stack::start(&[], move |_| {
        vec!["--mirror-cache-file".into(), flag.clone()]
    })
    .await;
    let node = upstream::start(
        "shard-cached",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("projection", "p1", &node.http_url(), "acme")
        .await;
    let (token, user_id) = stack
        .member("cached@example.com", &[("acme", "tenant_member")])
        .await;
    let query = |data: &gateway_tests::DataPlaneUrls, tenant: &'static str| {
        let request = stack
            .client
            .post(format!("{}/v1/query/v", data.http))
            .bearer_auth(&token)
            .header("x-tenant-id", tenant)
            .json(&json!({}));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let deadline = std::time::Instant::now() + START;
    while query(&stack.data, "acme").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // the cache file catches up with what the replica uses (written within a second)
    let deadline = std::time::Instant::now() + START;
    loop {
        let file: Value = std::fs::read(&cache)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let documents = &file["documents"];
        if documents["routing"].is_string()
            && documents["jwks"].is_string()
            && documents["principals"][&user_id].is_string()
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "cache never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // NATS goes away, and the replica restarts
    stack.nats.stop();
    stack.data_process.sigterm();
    assert!(stack.data_process.wait_exit(START).success());
    let restarted = {
        let (process, urls) = gateway_tests::spawn_data_plane(
            &stack.nats.url(),
            &stack.prefix,
            &stack.keys,
            &["--mirror-cache-file", &cache_flag],
        );
        stack.data_process = process;
        urls
    };
    // it serves from the cache: allowed calls go through, others stay refused
    let (status, answer) = query(&restarted, "acme").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["node"], "shard-cached");
    assert_eq!(query(&restarted, "globex").await.0, 403);
    // and says it is not connected to the store
    let ready = stack
        .client
        .get(format!("{}/ready", restarted.http))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    // a tampered routing document in the file is refused on load
    let mut file: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    let routing = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        file["documents"]["routing"].as_str().unwrap(),
    )
    .unwrap();
    let routing = String::from_utf8(routing).unwrap();
    let tampered = routing.replace(&node.http_url(), "http://127.0.0.1:9");
    assert_ne!(routing, tampered);
    file["documents"]["routing"] = json!(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        tampered
    ));
    let tampered_path = dir.path().join("tampered.json");
    std::fs::write(&tampered_path, serde_json::to_vec(&file).unwrap()).unwrap();
    let (_tampered_process, tampered_urls) = gateway_tests::spawn_data_plane(
        &stack.nats.url(),
        &stack.prefix,
        &stack.keys,
        &["--mirror-cache-file", tampered_path.to_str().unwrap()],
    );
    let (status, answer) = query(&tampered_urls, "acme").await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "not_ready");

    // NATS back: the restarted replica connects and reports ready, without a restart
    stack.nats.restart();
    gateway_tests::process::wait_for_status(
        &stack.client,
        &format!("{}/ready", restarted.http),
        200,
        START,
    )
    .await;
    assert_eq!(query(&restarted, "acme").await.0, 200);
}

/// Local development: routing from a plain JSON file, re-read when it changes; an invalid
/// change is refused and the last good table stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_from_a_file_is_reloaded_when_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing.json");
    let one = upstream::start(
        "file-one",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let two = upstream::start(
        "file-two",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let routing = |endpoint: &str| {
        json!({"projection": {"shards": {"p": [endpoint]}, "placement": {"acme": "p"}}}).to_string()
    };
    std::fs::write(&path, routing(&one.http_url())).unwrap();
    let flag = path.to_str().unwrap().to_string();
    let stack = Stack::start(&[], move |_| {
        [
            "--routing-file",
            flag.as_str(),
            "--routing-file-poll",
            "100ms",
        ]
        .map(String::from)
        .to_vec()
    })
    .await;
    // a signed routing document in the store does not override the file
    stack
        .route("projection", "elsewhere", "http://127.0.0.1:9", "acme")
        .await;
    let (token, _) = stack
        .member("filer@example.com", &[("acme", "tenant_member")])
        .await;
    let node_answering = || async {
        let (status, answer) = send(
            &stack.client,
            "POST",
            format!("{}/v1/query/v", stack.data.http),
            Some(&token),
            Some(json!({})),
            &[("x-tenant-id", "acme")],
        )
        .await;
        (status == 200).then(|| answer["node"].as_str().unwrap_or_default().to_string())
    };
    let wait_for = |node: &'static str| async move {
        let deadline = std::time::Instant::now() + START;
        loop {
            if node_answering().await.as_deref() == Some(node) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never routed to {node}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    wait_for("file-one").await;
    std::fs::write(&path, routing(&two.http_url())).unwrap();
    wait_for("file-two").await;
    // an invalid file is refused (counted) and the last good table stays
    std::fs::write(
        &path,
        json!({"projection": {"placement": {"acme": "ghost"}}}).to_string(),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + START;
    loop {
        let metrics = stack.metrics().await;
        if metrics.contains("gateway_snapshot_rejects_total{kind=\"routing_file\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(node_answering().await.as_deref(), Some("file-two"));
    let (status, used) = send(
        &stack.client,
        "GET",
        format!("{}/admin/routing", stack.data.ops),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(used["revision"], 2);
}

/// Past --max-staleness without reaching the store, authorization fails closed with a
/// clear 503 (revocations may be missing), says so in a metric and a log line, and
/// recovers by itself when the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_cut_off_too_long_fails_closed_and_recovers() {
    let mut stack = Stack::start(&[], |_| vec!["--max-staleness".into(), "2s".into()]).await;
    let node = upstream::start(
        "shard-stale",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    stack
        .route("projection", "p1", &node.http_url(), "acme")
        .await;
    let (token, _) = stack
        .member("stale@example.com", &[("acme", "tenant_member")])
        .await;
    let query = || {
        send(
            &stack.client,
            "POST",
            format!("{}/v1/query/v", stack.data.http),
            Some(&token),
            Some(json!({})),
            &[("x-tenant-id", "acme")],
        )
    };
    let deadline = std::time::Instant::now() + START;
    while query().await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stack.nats.stop();
    // within the bound it keeps serving; past it, a typed 503
    let deadline = std::time::Instant::now() + START;
    let refused = loop {
        let (status, answer) = query().await;
        if status == 503 {
            break answer;
        }
        assert_eq!(status, 200, "{answer}");
        assert!(std::time::Instant::now() < deadline, "never failed closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused["error"]["code"], "state_stale");
    // the gauge follows within its one-second tick
    let deadline = std::time::Instant::now() + START;
    loop {
        let metrics = stack.metrics().await;
        if metrics.contains("gateway_mirror_stale 1") {
            assert!(metrics.contains("gateway_stale_refusals_total"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.data_process.wait_for_log(
        "store unreachable for too long: failing closed (503 state_stale) until it is back",
        START,
    );
    // the store back: it serves again without a restart
    stack.nats.restart();
    let deadline = std::time::Instant::now() + START;
    while query().await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack
        .data_process
        .wait_for_log("store reachable again: serving from fresh mirrors", START);
}
