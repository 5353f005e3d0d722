//! The data plane's request path: forwarding, refusals, balancing, NATS outages, a routing file.

mod assertion;
mod balancing;
mod forwarding;
mod headers;
mod isolation;
mod large_routing;
mod outage;
mod refusals;
mod routing_file;
mod sessions;
mod streaming;

use std::time::Duration;

use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
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
