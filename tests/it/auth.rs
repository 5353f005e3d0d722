//! Authentication flows against the real control-plane binary and a real NATS.

mod logs;
mod mfa;
mod recovery;
mod service_accounts;
mod sessions;
mod signin;
mod signup;

use std::time::Duration;

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
}

impl Env {
    fn new() -> Env {
        Env {
            nats: NatsServer::start(),
            keys: SnapshotKeys::generate(),
            prefix: gateway_tests::unique_prefix(),
        }
    }

    fn control(&self, extra: &[&str]) -> (PlaneProcess, String) {
        let mut flags = extra.to_vec();
        if !extra.contains(&"--log") {
            flags.extend_from_slice(&["--log", "debug"]);
        }
        gateway_tests::spawn_control_plane(&self.nats.url(), &self.prefix, &self.keys, &flags)
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
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn signup(client: &reqwest::Client, base: &str, email: &str) -> String {
    let (status, body) = post(
        client,
        format!("{base}/v1/auth/signup"),
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["user_id"].as_str().unwrap().to_string()
}

async fn signin(client: &reqwest::Client, base: &str, email: &str) -> Value {
    let (status, body) = post(
        client,
        format!("{base}/v1/auth/signin"),
        json!({"email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn me(client: &reqwest::Client, base: &str, access_token: &str) -> (u16, Value) {
    let response = client
        .get(format!("{base}/v1/auth/session"))
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn all_values(store: &Store, bucket: Bucket) -> Vec<(String, String)> {
    let kv = store.kv(bucket);
    let page = kv.keys("", None, 1000).await.unwrap();
    let mut out = Vec::new();
    for key in page.keys {
        if let Some(entry) = kv.get(&key).await.unwrap() {
            out.push((key, String::from_utf8_lossy(&entry.value).into_owned()));
        }
    }
    out
}

/// Decodes an access token with the keys served at /.well-known/jwks.json.
async fn verify_with_jwks(client: &reqwest::Client, base: &str, token: &str) -> (Value, String) {
    let jwks: Value = client
        .get(format!("{base}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let kid = header.kid.clone().unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
    let key = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["cloudlysis"]);
    validation.set_issuer(&["cloudlysis-gateway"]);
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
    (data.claims, kid)
}

async fn post_status(client: &reqwest::Client, url: String, body: Value) -> (u16, Option<String>) {
    let (status, answer) = post(client, url, body).await;
    (status, answer["error"]["code"].as_str().map(str::to_string))
}

/// Codes for successive, never-reused TOTP steps within the ±1 window of now.
pub(crate) struct Authenticator {
    totp: totp_rs::Totp,
    last_step: u64,
}

impl Authenticator {
    pub(crate) fn new(base32: &str) -> Authenticator {
        let secret = totp_rs::Secret::try_from_base32(base32).unwrap();
        Authenticator {
            totp: totp_rs::Builder::new()
                .with_secret(secret.as_bytes().to_vec())
                .build()
                .unwrap(),
            last_step: 0,
        }
    }

    pub(crate) fn next_code(&mut self) -> String {
        let now = gateway_core::unix_now() as u64;
        let current = now / 30;
        let step = (self.last_step + 1).max(current - 1);
        assert!(step <= current + 1, "ran out of unused steps in the window");
        self.last_step = step;
        self.totp.generate(step * 30).to_string()
    }
}
