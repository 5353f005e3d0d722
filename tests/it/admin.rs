//! The admin API: access and escalation, the audit trail, bad input, principal administration.

mod access;
mod audit;
mod cors;
mod lockout;
mod principals;
mod scope;
mod validation;

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
    env_with(&[]).await
}

/// A control plane started with `flags` besides the usual ones.
async fn env_with(flags: &[&str]) -> Env {
    let nats = NatsServer::start();
    let keys = SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    let (control, base) = gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, flags);
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

    /// The actions of the audit trail, oldest first: each admin change is an
    /// `admin.request` intent followed by its own record.
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

    /// The records of changes made (the audit trail without the `admin.request` intents
    /// and their refusals).
    async fn audit_changes(&self, store: &Store) -> Vec<String> {
        let mut actions = self.audit_actions(store).await;
        actions.retain(|a| a != "admin.request");
        actions
    }
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
