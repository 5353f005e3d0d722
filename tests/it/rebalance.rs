//! Tenant rebalancing: plans and gates, two control planes racing, live cutover, the operator CLI.

mod cli;
mod plans;
mod replicas;
mod traffic;

use std::time::{Duration, Instant};

use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use gateway_tests::process::PlaneProcess;
use gateway_tests::upstream::{self, RunningNode};
use serde_json::{Value, json};

const START: Duration = Duration::from_secs(30);
const PASSWORD: &str = "plum tractor velvet lagoon";

async fn call(
    client: &reqwest::Client,
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method.parse().unwrap(), url);
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

struct Env {
    nats: NatsServer,
    keys: SnapshotKeys,
    prefix: String,
    controls: Vec<(PlaneProcess, String)>,
    client: reqwest::Client,
    admin: String,
    old: RunningNode,
    new: RunningNode,
}

impl Env {
    /// `controls` control planes sharing one NATS, each with `flags`; shards `old` and `new`
    /// for each kind (plus `other`), tenant `acme` on `old` everywhere.
    async fn start(controls: usize, flags: &[&str]) -> Env {
        let nats = NatsServer::start();
        let keys = SnapshotKeys::generate();
        let prefix = gateway_tests::unique_prefix();
        let controls: Vec<(PlaneProcess, String)> = (0..controls)
            .map(|_| gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, flags))
            .collect();
        let client = reqwest::Client::new();
        let base = controls[0].1.clone();
        let (status, tokens) = call(
            &client,
            "POST",
            format!("{base}/v1/auth/signin"),
            None,
            Some(json!({"email": SnapshotKeys::ADMIN_EMAIL, "password": SnapshotKeys::ADMIN_PASSWORD})),
        )
        .await;
        assert_eq!(status, 200, "{tokens}");
        let loopback = || "127.0.0.1:0".parse().unwrap();
        let old = upstream::start("old", loopback(), loopback())
            .await
            .unwrap();
        let new = upstream::start("new", loopback(), loopback())
            .await
            .unwrap();
        let env = Env {
            admin: tokens["access_token"].as_str().unwrap().to_string(),
            nats,
            keys,
            prefix,
            controls,
            client,
            old,
            new,
        };
        let mut routing = json!({});
        for kind in ["aggregate", "projection", "runner"] {
            let url = |node: &RunningNode| {
                if kind == "aggregate" {
                    node.grpc_url()
                } else {
                    node.http_url()
                }
            };
            routing[kind] = json!({
                "shards": {"old": [url(&env.old)], "new": [url(&env.new)], "other": [url(&env.old)]},
                "placement": {"acme": "old"},
            });
        }
        env.ok(
            "PUT",
            "/admin/routing",
            json!({ "expected_revision": 1, "routing": routing }),
        )
        .await;
        env
    }

    fn base(&self) -> &str {
        &self.controls[0].1
    }

    async fn admin_call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(
            &self.client,
            method,
            format!("{}{path}", self.base()),
            Some(&self.admin),
            body,
        )
        .await
    }

    async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, answer) = self.admin_call(method, path, Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    async fn revision(&self) -> u64 {
        let (_, routing) = self.admin_call("GET", "/admin/routing", None).await;
        routing["revision"].as_u64().unwrap()
    }

    async fn shard_of(&self, kind: &str) -> String {
        let (_, routes) = self
            .admin_call("GET", "/admin/routing/tenants/acme", None)
            .await;
        routes["routes"][kind]["shard"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn plan(&self, kind: &str, target: &str) -> String {
        let plan = self
            .ok(
                "POST",
                "/admin/rebalance/plans",
                json!({"tenant_id": "acme", "kind": kind, "target_shard": target}),
            )
            .await;
        assert_eq!(plan["state"], "planned");
        assert_eq!(plan["source_shard"], "old");
        plan["id"].as_str().unwrap().to_string()
    }

    async fn action(&self, id: &str, action: &str) -> (u16, Value) {
        self.admin_call(
            "POST",
            &format!("/admin/rebalance/plans/{id}/{action}"),
            None,
        )
        .await
    }

    /// A new user holding `role` in acme, signed in: the access token.
    async fn user(&self, email: &str, role: &str) -> String {
        let (status, user) = call(
            &self.client,
            "POST",
            format!("{}/v1/auth/signup", self.base()),
            None,
            Some(json!({"email": email, "password": PASSWORD})),
        )
        .await;
        assert_eq!(status, 201, "{user}");
        self.ok(
            "POST",
            "/admin/assignments",
            json!({"principal_id": user["user_id"], "tenant_id": "acme", "role": role}),
        )
        .await;
        let (status, tokens) = call(
            &self.client,
            "POST",
            format!("{}/v1/auth/signin", self.base()),
            None,
            Some(json!({"email": email, "password": PASSWORD})),
        )
        .await;
        assert_eq!(status, 200, "{tokens}");
        tokens["access_token"].as_str().unwrap().to_string()
    }

    fn data_plane(&self, replica: &str) -> (PlaneProcess, gateway_tests::DataPlaneUrls) {
        gateway_tests::spawn_data_plane(
            &self.nats.url(),
            &self.prefix,
            &self.keys,
            &["--replica-id", replica],
        )
    }
}

/// Polls `GET {ops}/admin/routing` until the replica uses `revision`.
async fn wait_for_revision(client: &reqwest::Client, ops: &str, revision: u64) {
    let deadline = Instant::now() + START;
    loop {
        let (status, used) = call(client, "GET", format!("{ops}/admin/routing"), None, None).await;
        if status == 200 && used["revision"].as_u64() == Some(revision) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica never reached {revision}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
