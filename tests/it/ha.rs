//! High availability without Docker: two control-plane and two data-plane processes on one
//! NATS, a client that alternates between replicas, rolling restarts, a killed replica and
//! a NATS outage.

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

/// Samples `/ready` of every replica in the pool; records a moment when none was ready.
struct ReadyWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, usize)>,
}

impl ReadyWatch {
    fn start(pool: Pool) -> ReadyWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut samples, mut none_ready) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let mut any = false;
                    for base in pool.get() {
                        if let Ok(response) = client
                            .get(format!("{base}/ready"))
                            .timeout(Duration::from_secs(2))
                            .send()
                            .await
                            && response.status() == 200
                        {
                            any = true;
                        }
                    }
                    samples += 1;
                    if !any {
                        none_ready += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (samples, none_ready)
            })
        };
        ReadyWatch { stop, task }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
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
        let routing = json!({"routing": {"projection": {
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

/// T9.4 and an admin change made on one control plane enforced by both data planes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_sessions_and_admin_changes_without_stickiness() {
    let cluster = Cluster::start().await;
    let (id, token, refresh) = cluster.member("ha@example.com", 0).await;
    // signin on the first, refresh on the second, refresh again on the first
    let mut refresh = refresh;
    for control in [1, 0, 1] {
        let (status, tokens) = call(
            &cluster.client,
            "POST",
            format!("{}/v1/auth/refresh", cluster.controls[control].1),
            None,
            Some(json!({"refresh_token": refresh})),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "refresh on replica {control}: {tokens}");
        let next = tokens["refresh_token"].as_str().unwrap().to_string();
        assert_ne!(next, refresh);
        refresh = next;
    }
    both_answer(&cluster, &token, "acme", 200).await;
    // a role change on control plane 1 reaches both data planes
    cluster
        .admin_ok(
            1,
            "DELETE",
            "/admin/assignments",
            json!({"principal_id": id, "tenant_id": "acme", "role": "tenant_member"}),
        )
        .await;
    both_answer(&cluster, &token, "acme", 403).await;
    cluster
        .admin_ok(
            1,
            "POST",
            "/admin/assignments",
            json!({"principal_id": id, "tenant_id": "acme", "role": "tenant_member"}),
        )
        .await;
    both_answer(&cluster, &token, "acme", 200).await;
}

/// T9.2 / T9.3: each plane restarted replica by replica under continuous traffic (start
/// the new one, wait for /ready, SIGTERM the old one, which drains): at least one replica
/// ready at every moment, and no request fails for a client that retries once on the
/// other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_of_each_plane_lose_no_request() {
    let mut cluster = Cluster::start().await;
    let (_, token, _) = cluster.member("roll@example.com", 0).await;
    both_answer(&cluster, &token, "acme", 200).await;

    // the data plane, under query traffic
    let pool = Pool::default();
    pool.set(cluster.data_urls());
    let client = cluster.client.clone();
    let traffic = Traffic::start(pool.clone(), move |base| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            call(
                &client,
                "POST",
                format!("{base}/v1/query/orders"),
                Some(&token),
                Some(json!({})),
                Some("acme"),
            )
            .await
        }
    });
    let watch = ReadyWatch::start(pool.clone());
    traffic.until(20).await;
    for _ in 0..2 {
        let (process, urls) = cluster.data_plane();
        gateway_tests::process::wait_for_status(
            &cluster.client,
            &format!("{}/ready", urls.http),
            200,
            START,
        )
        .await;
        let (mut old, old_urls) = cluster.datas.remove(0);
        cluster.datas.push((process, urls));
        // the load balancer learns of the new replica, then the old one drains
        pool.set(vec![
            old_urls.http.clone(),
            cluster.datas.last().unwrap().1.http.clone(),
        ]);
        traffic.until(10).await;
        old.sigterm();
        assert!(
            old.wait_exit(START).success(),
            "the old replica drains and exits 0"
        );
        pool.set(cluster.data_urls());
        traffic.until(20).await;
    }
    let (sent, failures) = traffic.finish().await;
    let (samples, none_ready) = watch.finish().await;
    assert!(sent > 50, "{sent}");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert!(samples > 10);
    assert_eq!(
        none_ready, 0,
        "no replica ready in {none_ready} of {samples} samples"
    );

    // the control plane, under idempotent reads (keys and an admin listing)
    let pool = Pool::default();
    pool.set(cluster.control_urls());
    let (client, admin) = (cluster.client.clone(), cluster.admin.clone());
    let traffic = Traffic::start(pool.clone(), move |base| {
        let (client, admin) = (client.clone(), admin.clone());
        async move {
            let keys = call(
                &client,
                "GET",
                format!("{base}/.well-known/jwks.json"),
                None,
                None,
                None,
            )
            .await?;
            if keys.0 != 200 {
                return Ok(keys);
            }
            call(
                &client,
                "GET",
                format!("{base}/admin/users?limit=1"),
                Some(&admin),
                None,
                None,
            )
            .await
        }
    });
    let watch = ReadyWatch::start(pool.clone());
    traffic.until(20).await;
    for _ in 0..2 {
        let (process, base) = gateway_tests::spawn_control_plane(
            &cluster.nats.url(),
            &cluster.prefix,
            &cluster.keys,
            &DRAIN,
        );
        gateway_tests::process::wait_for_status(
            &cluster.client,
            &format!("{base}/ready"),
            200,
            START,
        )
        .await;
        let (mut old, old_base) = cluster.controls.remove(0);
        cluster.controls.push((process, base.clone()));
        pool.set(vec![old_base, base]);
        traffic.until(10).await;
        old.sigterm();
        assert!(old.wait_exit(START).success());
        pool.set(cluster.control_urls());
        traffic.until(20).await;
    }
    let (sent, failures) = traffic.finish().await;
    let (_, none_ready) = watch.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(none_ready, 0);
}

/// A data plane killed with SIGKILL under load: the other keeps serving, and requests in
/// flight on it are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_data_plane_leaves_the_other_serving() {
    let mut cluster = Cluster::start().await;
    let (_, token, _) = cluster.member("kill@example.com", 0).await;
    both_answer(&cluster, &token, "acme", 200).await;
    let survivor = cluster.datas[1].1.http.clone();
    // slow requests in flight on the survivor while the other one dies
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let (client, token, survivor) =
                (cluster.client.clone(), token.clone(), survivor.clone());
            tokio::spawn(async move {
                call(
                    &client,
                    "POST",
                    format!("{survivor}/v1/query/orders"),
                    Some(&token),
                    Some(json!({"_reference": {"delay_ms": 700}})),
                    Some("acme"),
                )
                .await
                .map(|r| r.0)
            })
        })
        .collect();
    let pool = Pool::default();
    pool.set(vec![survivor.clone()]);
    let client = cluster.client.clone();
    let token_for_traffic = token.clone();
    let traffic = Traffic::start(pool, move |base| {
        let (client, token) = (client.clone(), token_for_traffic.clone());
        async move {
            call(
                &client,
                "POST",
                format!("{base}/v1/query/orders"),
                Some(&token),
                Some(json!({})),
                Some("acme"),
            )
            .await
        }
    });
    traffic.until(10).await;
    let (victim, victim_urls) = cluster.datas.remove(0);
    drop(victim); // SIGKILL
    assert!(
        cluster
            .client
            .get(format!("{}/health", victim_urls.http))
            .send()
            .await
            .is_err(),
        "the killed replica is gone"
    );
    traffic.until(30).await;
    let (sent, failures) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    for request in in_flight {
        assert_eq!(request.await.unwrap().unwrap(), 200);
    }
}

/// NATS stopped for 10 s and restarted: the data planes serve throughout from
/// last-known-good state, the control planes answer 503 on writes while it is down and
/// recover without a restart, and nothing written before the outage is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_is_served_through_and_recovered_from() {
    let mut cluster = Cluster::start().await;
    let (id, token, _) = cluster.member("outage@example.com", 0).await;
    both_answer(&cluster, &token, "acme", 200).await;
    let pids: Vec<u32> = cluster
        .controls
        .iter()
        .map(|c| c.0.pid())
        .chain(cluster.datas.iter().map(|d| d.0.pid()))
        .collect();

    cluster.nats.stop();
    let outage = Instant::now();
    let mut served = 0;
    let mut write_refused = false;
    while outage.elapsed() < Duration::from_secs(10) {
        for data in cluster.data_urls() {
            assert_eq!(
                query_status(&cluster.client, &data, &token, "acme").await,
                200,
                "a data plane stopped serving {:?} into the outage",
                outage.elapsed()
            );
            served += 1;
        }
        if !write_refused {
            let (status, answer) = call(
                &cluster.client,
                "POST",
                format!("{}/v1/auth/signup", cluster.controls[served % 2].1),
                None,
                Some(json!({"email": "during@example.com", "password": PASSWORD})),
                None,
            )
            .await
            .unwrap();
            assert!(
                status == 503 || status == 201,
                "a write during the outage: {status} {answer}"
            );
            if status == 503 {
                assert!(answer["error"]["code"].is_string(), "{answer}");
                write_refused = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(write_refused, "no write was refused while NATS was down");
    assert!(served > 20);

    cluster.nats.restart();
    // both control planes recover by themselves and still know what was written before
    for base in cluster.control_urls() {
        gateway_tests::process::wait_for_status(
            &cluster.client,
            &format!("{base}/ready"),
            200,
            START,
        )
        .await;
        let user = cluster
            .admin_ok(
                cluster
                    .control_urls()
                    .iter()
                    .position(|b| *b == base)
                    .unwrap(),
                "GET",
                &format!("/admin/users/{id}"),
                json!(null),
            )
            .await;
        assert_eq!(user["email"], "outage@example.com");
    }
    let after = cluster.member("after@example.com", 1).await;
    both_answer(&cluster, &after.1, "acme", 200).await;
    for data in cluster.data_urls() {
        gateway_tests::process::wait_for_status(
            &cluster.client,
            &format!("{data}/ready"),
            200,
            START,
        )
        .await;
    }
    let now: Vec<u32> = cluster
        .controls
        .iter()
        .map(|c| c.0.pid())
        .chain(cluster.datas.iter().map(|d| d.0.pid()))
        .collect();
    assert_eq!(pids, now, "no process restarted");
}
