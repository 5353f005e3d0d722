//! High availability without Docker: shared state, rolling restarts, killed replica, NATS outage.

mod failures;
mod replicas;
mod restarts;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    tenant: Option<&str>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut request = client
        .request(method.parse().unwrap(), url)
        .timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(tenant) = tenant {
        request = request.header("x-tenant-id", tenant);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// The replicas a client may use; the test swaps them as it restarts processes.
#[derive(Clone, Default)]
struct Pool(Arc<Mutex<Vec<String>>>);

impl Pool {
    fn set(&self, urls: Vec<String>) {
        *self.0.lock().unwrap() = urls;
    }

    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Sends `request` to the replicas in turn; a failed attempt (no answer or a 5xx) is
/// retried once on the next replica, as a client of an idempotent request does. Counts
/// the requests that failed on both.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start<F, Fut>(pool: Pool, request: F) -> Traffic
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(u16, Value), reqwest::Error>> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
            tokio::spawn(async move {
                let mut turn = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let replicas = pool.get();
                    turn += 1;
                    let mut last = String::new();
                    let mut ok = false;
                    for attempt in 0..2 {
                        let base = &replicas[(turn + attempt) % replicas.len()];
                        match request(base.clone()).await {
                            Ok((status, _)) if status < 500 => {
                                ok = status == 200;
                                last = format!("{base}: {status}");
                                break;
                            }
                            Ok((status, answer)) => last = format!("{base}: {status} {answer}"),
                            Err(err) => last = format!("{base}: {err}"),
                        }
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failures.lock().unwrap().push(last);
                    }
                }
            })
        };
        Traffic {
            stop,
            sent,
            failures,
            task,
        }
    }

    async fn until(&self, more: usize) {
        let target = self.sent.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + START;
        while self.sent.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "traffic stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.sent.load(Ordering::Relaxed), failures)
    }
}

struct Cluster {
    nats: NatsServer,
    keys: SnapshotKeys,
    prefix: String,
    controls: Vec<(PlaneProcess, String)>,
    datas: Vec<(PlaneProcess, gateway_tests::DataPlaneUrls)>,
    client: reqwest::Client,
    admin: String,
    node: RunningNode,
}

const DRAIN: [&str; 4] = ["--drain-delay", "300ms", "--drain-timeout", "5s"];

impl Cluster {
    async fn start() -> Cluster {
        let nats = NatsServer::start();
        let keys = SnapshotKeys::generate();
        let prefix = gateway_tests::unique_prefix();
        let controls: Vec<(PlaneProcess, String)> = (0..2)
            .map(|_| gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, &DRAIN))
            .collect();
        let client = reqwest::Client::new();
        let (status, tokens) = call(
            &client,
            "POST",
            format!("{}/v1/auth/signin", controls[0].1),
            None,
            Some(json!({"email": SnapshotKeys::ADMIN_EMAIL, "password": SnapshotKeys::ADMIN_PASSWORD})),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{tokens}");
        let node = upstream::start(
            "shard",
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let mut cluster = Cluster {
            nats,
            keys,
            prefix,
            controls,
            datas: Vec::new(),
            client,
            admin: tokens["access_token"].as_str().unwrap().to_string(),
            node,
        };
        for _ in 0..2 {
            let data = cluster.data_plane();
            cluster.datas.push(data);
        }
        let routing = json!({"expected_revision": 1, "routing": {"projection": {
            "shards": {"p1": [cluster.node.http_url()]}, "placement": {"acme": "p1"}}}});
        cluster.admin_ok(0, "PUT", "/admin/routing", routing).await;
        cluster
    }

    fn data_plane(&self) -> (PlaneProcess, gateway_tests::DataPlaneUrls) {
        let controls = self
            .controls
            .iter()
            .map(|c| c.1.clone())
            .collect::<Vec<_>>()
            .join(",");
        let mut flags = vec!["--control-plane-url", &controls];
        flags.extend(DRAIN);
        gateway_tests::spawn_data_plane(&self.nats.url(), &self.prefix, &self.keys, &flags)
    }

    async fn admin_ok(&self, control: usize, method: &str, path: &str, body: Value) -> Value {
        let (status, answer) = call(
            &self.client,
            method,
            format!("{}{path}", self.controls[control].1),
            Some(&self.admin),
            Some(body),
            None,
        )
        .await
        .unwrap();
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// A user holding `tenant_member` in acme, signed in on control plane `control`:
    /// (user id, access token, refresh token).
    async fn member(&self, email: &str, control: usize) -> (String, String, String) {
        let base = &self.controls[control].1;
        let (status, user) = call(
            &self.client,
            "POST",
            format!("{base}/v1/auth/signup"),
            None,
            Some(json!({"email": email, "password": PASSWORD})),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 201, "{user}");
        let id = user["user_id"].as_str().unwrap().to_string();
        self.admin_ok(
            control,
            "POST",
            "/admin/assignments",
            json!({"principal_id": id, "tenant_id": "acme", "role": "tenant_member"}),
        )
        .await;
        let (_, tokens) = call(
            &self.client,
            "POST",
            format!("{base}/v1/auth/signin"),
            None,
            Some(json!({"email": email, "password": PASSWORD})),
            None,
        )
        .await
        .unwrap();
        (
            id,
            tokens["access_token"].as_str().unwrap().to_string(),
            tokens["refresh_token"].as_str().unwrap().to_string(),
        )
    }

    fn data_urls(&self) -> Vec<String> {
        self.datas.iter().map(|d| d.1.http.clone()).collect()
    }

    fn control_urls(&self) -> Vec<String> {
        self.controls.iter().map(|c| c.1.clone()).collect()
    }
}

async fn query_status(client: &reqwest::Client, data: &str, token: &str, tenant: &str) -> u16 {
    call(
        client,
        "POST",
        format!("{data}/v1/query/orders"),
        Some(token),
        Some(json!({})),
        Some(tenant),
    )
    .await
    .map(|r| r.0)
    .unwrap_or(0)
}

/// Polls until both data planes answer `want` for the query.
async fn both_answer(cluster: &Cluster, token: &str, tenant: &str, want: u16) {
    let deadline = Instant::now() + START;
    for data in cluster.data_urls() {
        while query_status(&cluster.client, &data, token, tenant).await != want {
            assert!(Instant::now() < deadline, "{data} never answered {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
