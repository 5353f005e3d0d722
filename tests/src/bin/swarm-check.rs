//! The checks of the Swarm deployment test (`swarm/test/run.sh`), run in a container on
//! the stack's overlay network. Replicas are addressed one by one through Swarm's
//! `tasks.<service>` DNS names (each task's own address), so a check can say which
//! replica answered and can ask each one for `/ready`.
//!
//! Each subcommand prints one JSON line of figures and exits 0 when its check holds, 1
//! otherwise (with the reason in the line).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(name = "swarm-check")]
struct Args {
    /// The data plane's service name on the overlay.
    #[arg(long, default_value = "gateway-data")]
    data: String,
    /// The control plane's service name on the overlay.
    #[arg(long, default_value = "gateway-control")]
    control: String,
    /// The bootstrap admin's email.
    #[arg(long, env = "CHECK_ADMIN_EMAIL")]
    admin_email: String,
    /// File with the bootstrap admin's password.
    #[arg(long, env = "CHECK_ADMIN_PASSWORD_FILE")]
    admin_password_file: std::path::PathBuf,
    #[command(subcommand)]
    command: Check,
}

#[derive(Subcommand, Debug)]
enum Check {
    /// T9.2: both replicas of each plane ready; routing placed on the reference upstream;
    /// sign-up → sign-in → command → query through each data-plane replica.
    Walk {
        /// The reference upstream's service name.
        #[arg(long, default_value = "upstream")]
        upstream: String,
        /// The CA of the upstream's certificate: the node speaks mutual TLS, the routing
        /// names it `https://tasks.<upstream>`, and the check first makes sure the node
        /// refuses a caller without a client certificate (so the walk's success shows the
        /// data planes' mutual TLS).
        #[arg(long)]
        upstream_ca_file: Option<std::path::PathBuf>,
    },
    /// Query traffic until SIGTERM (or `--seconds`), one retry on the other replica for a
    /// failed call, with every replica's `/ready` sampled each 250 ms. Holds when no call
    /// failed twice and at least one replica was ready at every sample.
    Traffic {
        #[arg(long, default_value_t = 0)]
        seconds: u64,
        /// Also require the data plane to be ready at each sample (off during a NATS
        /// outage, when readiness turns 503 on purpose while calls are still served).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        require_ready: bool,
        /// Every other call is `GET /v1/auth/session` through the data plane, which it
        /// forwards to a control plane (so a control-plane update is under traffic too).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        auth_calls: bool,
    },
    /// During a NATS outage (shorter than --max-staleness): queries are served from the
    /// mirrors on every replica, which stays ready, and a write answers 503.
    Outage,
    /// The ops listener of each data-plane replica: `/admin/routing` is 401 without the
    /// ops token and with a wrong one, 200 with it; `/live` and `/ready` need none.
    Ops {
        #[arg(long)]
        token_file: std::path::PathBuf,
        /// Every replica of both planes reports this git sha in `GET /version` (the build
        /// metadata compiled into the image).
        #[arg(long)]
        expect_git_sha: Option<String>,
    },
    /// T9.4: a session refreshed across both control-plane replicas; a role taken away on
    /// one replica is enforced by both data-plane replicas.
    Replicas,
}

const PASSWORD: &str = "granite lantern orchard 42";
const TENANT: &str = "swarm-acme";

struct Ctx {
    client: reqwest::Client,
    args: Args,
    admin_password: String,
}

fn fail(check: &str, reason: impl std::fmt::Display, figures: Value) -> ! {
    println!(
        "{}",
        json!({"check": check, "ok": false, "reason": reason.to_string(), "figures": figures})
    );
    std::process::exit(1)
}

/// What makes this run's names (accounts, aggregates) unique: inside a container every
/// run is pid 1, and the checks run several times against one store.
fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{nanos:x}")
    })
}

/// `fail` with no figures: a step of the check could not be taken at all.
fn fail_on(check: &str, reason: impl std::fmt::Display) -> ! {
    fail(check, reason, json!({}))
}

fn pass(check: &str, figures: Value) {
    println!(
        "{}",
        json!({"check": check, "ok": true, "figures": figures})
    );
}

/// The addresses of a service's running tasks (Swarm's `tasks.<service>` DNS name).
async fn tasks(service: &str, port: u16) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((format!("tasks.{service}"), port))
        .await
        .map(|a| a.collect())
        .unwrap_or_default();
    addrs.sort();
    addrs.dedup();
    addrs
}

async fn call(
    client: &reqwest::Client,
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
    tenant: Option<&str>,
) -> Result<(u16, Value), String> {
    let mut request = client
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET),
            url,
        )
        .timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(tenant) = tenant {
        request = request.header("x-tenant-id", tenant);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.map_err(|err| err.to_string())?;
    let status = answer.status().as_u16();
    let text = answer.text().await.map_err(|err| err.to_string())?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

impl Ctx {
    async fn control(&self) -> String {
        let replicas = tasks(&self.args.control, 8090).await;
        match replicas.first() {
            Some(addr) => format!("http://{addr}"),
            None => fail("setup", "no control-plane task resolves", json!({})),
        }
    }

    async fn admin_token(&self) -> String {
        let base = self.control().await;
        let (status, answer) = call(
            &self.client,
            "POST",
            format!("{base}/v1/auth/signin"),
            None,
            Some(json!({"email": self.args.admin_email, "password": self.admin_password})),
            None,
        )
        .await
        .unwrap_or_else(|err| fail_on("setup", err));
        if status != 200 {
            fail(
                "setup",
                format!("admin sign-in: {status} {answer}"),
                json!({}),
            );
        }
        answer["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A member of the test tenant, signed in: (user id, access token, refresh token).
    async fn member(&self, admin: &str, email: &str) -> (String, String, String) {
        let base = self.control().await;
        let (status, user) = call(
            &self.client,
            "POST",
            format!("{base}/v1/auth/signup"),
            None,
            Some(json!({"email": email, "password": PASSWORD})),
            None,
        )
        .await
        .unwrap_or_else(|err| fail_on("member", err));
        if status != 201 {
            fail("member", format!("sign-up: {status} {user}"), json!({}));
        }
        let id = user["user_id"].as_str().unwrap_or_default().to_string();
        let (status, answer) = call(
            &self.client,
            "POST",
            format!("{base}/admin/assignments"),
            Some(admin),
            Some(json!({"principal_id": id, "tenant_id": TENANT, "role": "tenant_member"})),
            None,
        )
        .await
        .unwrap_or_else(|err| fail_on("member", err));
        if !(200..300).contains(&status) {
            fail(
                "member",
                format!("assignment: {status} {answer}"),
                json!({}),
            );
        }
        let (status, tokens) = call(
            &self.client,
            "POST",
            format!("{base}/v1/auth/signin"),
            None,
            Some(json!({"email": email, "password": PASSWORD})),
            None,
        )
        .await
        .unwrap_or_else(|err| fail_on("member", err));
        if status != 200 {
            fail("member", format!("sign-in: {status} {tokens}"), json!({}));
        }
        (
            id,
            tokens["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            tokens["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }
}

/// Polls `check` every 100 ms until it holds or `within` passes.
async fn until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready_count(client: &reqwest::Client, replicas: &[SocketAddr]) -> usize {
    let mut ready = 0;
    for addr in replicas {
        let answer = client
            .get(format!("http://{addr}/ready"))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        if answer.is_ok_and(|a| a.status() == 200) {
            ready += 1;
        }
    }
    ready
}

/// With the node's CA: a call without a client certificate and a call in the clear both
/// get no answer. Returns the (projection, aggregate) base URLs by name.
async fn upstream_refuses_callers_without_a_certificate(
    upstream: &str,
    ca_file: &std::path::Path,
) -> (String, String) {
    let ca = std::fs::read(ca_file).unwrap_or_else(|err| fail_on("walk", err));
    let ca = reqwest::Certificate::from_pem(&ca).unwrap_or_else(|err| fail_on("walk", err));
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|err| fail_on("walk", err));
    let (http, grpc) = (
        format!("https://tasks.{upstream}:9101"),
        format!("https://tasks.{upstream}:9102"),
    );
    for url in [
        format!("{http}/_reference/requests"),
        format!("{grpc}/ready"),
        format!("http://tasks.{upstream}:9101/_reference/requests"),
    ] {
        if let Ok(answer) = client.get(&url).send().await {
            fail(
                "walk",
                format!("the upstream answered a caller without a client certificate: {url}"),
                json!({"status": answer.status().as_u16()}),
            );
        }
    }
    (http, grpc)
}

async fn walk(ctx: &Ctx, upstream: &str, upstream_ca: Option<&std::path::Path>) {
    let started = Instant::now();
    for (service, port) in [(&ctx.args.control, 8090), (&ctx.args.data, 8080)] {
        let both = until(Duration::from_secs(60), || async {
            let replicas = tasks(service, port).await;
            replicas.len() == 2 && ready_count(&ctx.client, &replicas).await == 2
        })
        .await;
        if !both {
            let replicas = tasks(service, port).await;
            fail(
                "walk",
                format!("{service}: not two ready replicas"),
                json!({"replicas": replicas.len()}),
            );
        }
    }
    let admin = ctx.admin_token().await;
    let node = tasks(upstream, 9101)
        .await
        .first()
        .copied()
        .unwrap_or_else(|| fail("walk", "the reference upstream does not resolve", json!({})));
    let (node, grpc) = match upstream_ca {
        Some(ca) => upstream_refuses_callers_without_a_certificate(upstream, ca).await,
        None => (
            format!("http://{node}"),
            format!("http://{}", SocketAddr::new(node.ip(), 9102)),
        ),
    };
    let base = ctx.control().await;
    // the placement of the test tenant, at whatever revision the store holds
    let (_, current) = call(
        &ctx.client,
        "GET",
        format!("{base}/admin/routing"),
        Some(&admin),
        None,
        None,
    )
    .await
    .unwrap_or_else(|err| fail_on("walk", err));
    let revision = current["revision"].as_u64().unwrap_or(0);
    let routing = json!({"expected_revision": revision, "routing": {
        "projection": {"shards": {"p1": [node]}, "placement": {TENANT: "p1"}},
        "aggregate": {"shards": {"a1": [grpc]}, "placement": {TENANT: "a1"}},
    }});
    let (status, answer) = call(
        &ctx.client,
        "PUT",
        format!("{base}/admin/routing"),
        Some(&admin),
        Some(routing),
        None,
    )
    .await
    .unwrap_or_else(|err| fail_on("walk", err));
    if !(200..300).contains(&status) {
        fail("walk", format!("routing: {status} {answer}"), json!({}));
    }
    let email = format!("walk-{}@swarm.test", run_id());
    let (_, token, _) = ctx.member(&admin, &email).await;
    let mut figures = serde_json::Map::new();
    for (i, data) in tasks(&ctx.args.data, 8080).await.iter().enumerate() {
        let t = Instant::now();
        // the role and the routing reach this replica's mirrors
        let served = until(Duration::from_secs(30), || async {
            call(
                &ctx.client,
                "POST",
                format!("http://{data}/v1/query/orders"),
                Some(&token),
                Some(json!({})),
                Some(TENANT),
            )
            .await
            .is_ok_and(|(status, _)| status == 200)
        })
        .await;
        if !served {
            let last = call(
                &ctx.client,
                "POST",
                format!("http://{data}/v1/query/orders"),
                Some(&token),
                Some(json!({})),
                Some(TENANT),
            )
            .await;
            fail("walk", format!("query on replica {i}: {last:?}"), json!({}));
        }
        let query_ms = t.elapsed().as_millis();
        let t = Instant::now();
        let (status, answer) = call(
            &ctx.client,
            "POST",
            format!("http://{data}/v1/commands/order/o-{i}-{}", run_id()),
            Some(&token),
            Some(json!({"command_type": "AddLine", "payload": {"sku": "x"}})),
            Some(TENANT),
        )
        .await
        .unwrap_or_else(|err| fail_on("walk", err));
        if status != 200 || answer["aggregate_version"] != 1 {
            fail(
                "walk",
                format!("command on replica {i}: {status} {answer}"),
                json!({}),
            );
        }
        figures.insert(
            format!("replica_{i}"),
            json!({"first_query_ms": query_ms, "command_ms": t.elapsed().as_millis()}),
        );
    }
    figures.insert("total_ms".into(), json!(started.elapsed().as_millis()));
    figures.insert("upstream_mutual_tls".into(), json!(upstream_ca.is_some()));
    pass("walk", Value::Object(figures));
}

/// A member's token for traffic, made once and kept in `$CHECK_STATE_DIR` (a directory the
/// runs share) for the checks that run while the store is down.
async fn traffic_token(ctx: &Ctx) -> String {
    let dir = std::env::var("CHECK_STATE_DIR").unwrap_or_else(|_| "/state".into());
    let path = std::path::Path::new(&dir).join("traffic-token");
    let path = path.as_path();
    if let Ok(token) = std::fs::read_to_string(path) {
        return token;
    }
    let admin = ctx.admin_token().await;
    let email = format!("traffic-{}@swarm.test", run_id());
    let (_, token, _) = ctx.member(&admin, &email).await;
    let _ = std::fs::write(path, &token);
    token
}

async fn traffic(ctx: &Ctx, seconds: u64, require_ready: bool, auth_calls: bool) {
    let token = traffic_token(ctx).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, retried, failed, auth_sent) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sampler = {
        let (stop, client, data) = (Arc::clone(&stop), ctx.client.clone(), ctx.args.data.clone());
        tokio::spawn(async move {
            let (mut samples, mut none_ready, mut min_ready) = (0u64, 0u64, usize::MAX);
            while !stop.load(Ordering::Relaxed) {
                let replicas = tasks(&data, 8080).await;
                let ready = ready_count(&client, &replicas).await;
                samples += 1;
                min_ready = min_ready.min(ready);
                if ready == 0 {
                    none_ready += 1;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (samples, none_ready, min_ready)
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let (stop, client, data, token) = (
                Arc::clone(&stop),
                ctx.client.clone(),
                ctx.args.data.clone(),
                token.clone(),
            );
            let (sent, retried, failed, failures, auth_sent) = (
                Arc::clone(&sent),
                Arc::clone(&retried),
                Arc::clone(&failed),
                Arc::clone(&failures),
                Arc::clone(&auth_sent),
            );
            tokio::spawn(async move {
                let mut turn = worker;
                while !stop.load(Ordering::Relaxed) {
                    let replicas = tasks(&data, 8080).await;
                    if replicas.is_empty() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push("no data-plane task resolves".into());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    let auth = auth_calls && turn % 2 == 1;
                    if auth {
                        auth_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut last = String::new();
                    let mut ok = false;
                    // one try, and one retry on the next replica
                    for attempt in 0..2 {
                        let addr = replicas[(turn + attempt) % replicas.len()];
                        let answer = if auth {
                            call(
                                &client,
                                "GET",
                                format!("http://{addr}/v1/auth/session"),
                                Some(&token),
                                None,
                                None,
                            )
                            .await
                        } else {
                            call(
                                &client,
                                "POST",
                                format!("http://{addr}/v1/query/orders"),
                                Some(&token),
                                Some(json!({})),
                                Some(TENANT),
                            )
                            .await
                        };
                        match answer {
                            Ok((200, _)) => {
                                ok = true;
                                break;
                            }
                            Ok((status, body)) => last = format!("{addr}: {status} {body}"),
                            Err(err) => last = format!("{addr}: {err}"),
                        }
                        if attempt == 0 {
                            retried.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut failures = failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if failures.len() < 10 {
                            failures.push(last);
                        }
                    }
                    turn += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|err| fail_on("traffic", err));
    if seconds > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
            _ = term.recv() => {}
        }
    } else {
        term.recv().await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    let (samples, none_ready, min_ready) = sampler.await.unwrap_or((0, 0, 0));
    let figures = json!({
        "seconds": started.elapsed().as_secs_f64(),
        "requests": sent.load(Ordering::Relaxed),
        "of_which_auth_through_the_control_plane": auth_sent.load(Ordering::Relaxed),
        "retried": retried.load(Ordering::Relaxed),
        "failed": failed.load(Ordering::Relaxed),
        "ready_samples": samples,
        "samples_with_no_ready_replica": none_ready,
        "min_ready_replicas": min_ready,
        "failures": *failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
    });
    if failed.load(Ordering::Relaxed) > 0 {
        fail("traffic", "calls failed after a retry", figures);
    }
    if sent.load(Ordering::Relaxed) < 10 {
        fail("traffic", "too few calls to judge", figures);
    }
    if require_ready && none_ready > 0 {
        fail("traffic", "a sample found no ready replica", figures);
    }
    pass("traffic", figures);
}

async fn outage(ctx: &Ctx) {
    let token = traffic_token(ctx).await;
    let mut figures = serde_json::Map::new();
    for (i, data) in tasks(&ctx.args.data, 8080).await.iter().enumerate() {
        let answer = call(
            &ctx.client,
            "POST",
            format!("http://{data}/v1/query/orders"),
            Some(&token),
            Some(json!({})),
            Some(TENANT),
        )
        .await;
        let ready = ready_count(&ctx.client, &[*data]).await;
        if !matches!(answer, Ok((200, _))) {
            fail(
                "outage",
                format!("replica {i} did not serve from its mirrors: {answer:?}"),
                json!({}),
            );
        }
        figures.insert(format!("replica_{i}_ready"), json!(ready == 1));
        // serving from its mirrors within --max-staleness, it says it is ready
        if ready != 1 {
            fail(
                "outage",
                format!("replica {i} serves but is not ready"),
                Value::Object(figures),
            );
        }
    }
    // a write needs the store: the control plane answers 503, in our envelope
    let base = ctx.control().await;
    let (status, answer) = call(
        &ctx.client,
        "POST",
        format!("{base}/v1/auth/signup"),
        None,
        Some(json!({"email": format!("outage-{}@swarm.test", run_id()), "password": PASSWORD})),
        None,
    )
    .await
    .unwrap_or_else(|err| fail_on("outage", err));
    figures.insert("write_status".into(), json!(status));
    figures.insert("write_code".into(), answer["error"]["code"].clone());
    if status != 503 {
        fail(
            "outage",
            format!("a write during the outage: {status} {answer}"),
            Value::Object(figures),
        );
    }
    pass("outage", Value::Object(figures));
}

async fn ops(ctx: &Ctx, token_file: &std::path::Path, expect_git_sha: Option<&str>) {
    let token = std::fs::read_to_string(token_file)
        .unwrap_or_else(|err| fail_on("ops", err))
        .trim()
        .to_string();
    let replicas = tasks(&ctx.args.data, 9080).await;
    if replicas.len() != 2 {
        fail(
            "ops",
            "not two data-plane replicas",
            json!({"replicas": replicas.len()}),
        );
    }
    for addr in &replicas {
        for (presented, want) in [
            (None, 401),
            (Some("wrong-token"), 401),
            (Some(token.as_str()), 200),
        ] {
            let (status, answer) = call(
                &ctx.client,
                "GET",
                format!("http://{addr}/admin/routing"),
                presented,
                None,
                None,
            )
            .await
            .unwrap_or_else(|err| fail_on("ops", err));
            if status != want {
                fail(
                    "ops",
                    format!("{addr}/admin/routing with {presented:?}: {status} {answer}"),
                    json!({}),
                );
            }
        }
        let (status, _) = call(
            &ctx.client,
            "GET",
            format!("http://{addr}/live"),
            None,
            None,
            None,
        )
        .await
        .unwrap_or_else(|err| fail_on("ops", err));
        if status != 200 {
            fail("ops", format!("{addr}/live: {status}"), json!({}));
        }
    }
    // build metadata: every replica of both planes, from the control plane's API
    // listener and the data plane's ops listener
    let mut versions = Vec::new();
    let controls = tasks(&ctx.args.control, 8090).await;
    for addr in controls.iter().chain(replicas.iter()) {
        let (status, version) = call(
            &ctx.client,
            "GET",
            format!("http://{addr}/version"),
            None,
            None,
            None,
        )
        .await
        .unwrap_or_else(|err| fail_on("ops", err));
        let sha = version["git_sha"].as_str().unwrap_or_default();
        if status != 200 || expect_git_sha.is_some_and(|want| want != sha) {
            fail(
                "ops",
                format!("{addr}/version: {status} {version}, expected git sha {expect_git_sha:?}"),
                json!({}),
            );
        }
        versions.push(version);
    }
    pass(
        "ops",
        json!({"replicas": replicas.len(), "admin_views_without_token": 401, "versions": versions}),
    );
}

async fn replicas(ctx: &Ctx) {
    let admin = ctx.admin_token().await;
    let email = format!("replicas-{}@swarm.test", run_id());
    let (id, token, mut refresh) = ctx.member(&admin, &email).await;
    let controls = tasks(&ctx.args.control, 8090).await;
    let datas = tasks(&ctx.args.data, 8080).await;
    if controls.len() != 2 || datas.len() != 2 {
        fail(
            "replicas",
            "not two replicas per plane",
            json!({"control": controls.len(), "data": datas.len()}),
        );
    }
    // the refresh token rotates across both control-plane replicas, with no stickiness
    for control in [1, 0, 1] {
        let (status, tokens) = call(
            &ctx.client,
            "POST",
            format!("http://{}/v1/auth/refresh", controls[control]),
            None,
            Some(json!({"refresh_token": refresh})),
            None,
        )
        .await
        .unwrap_or_else(|err| fail_on("replicas", err));
        if status != 200 {
            fail(
                "replicas",
                format!("refresh on control replica {control}: {status} {tokens}"),
                json!({}),
            );
        }
        refresh = tokens["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    let answers = |want: u16| {
        let (client, token, datas) = (ctx.client.clone(), token.clone(), datas.clone());
        async move {
            for data in &datas {
                let status = call(
                    &client,
                    "POST",
                    format!("http://{data}/v1/query/orders"),
                    Some(&token),
                    Some(json!({})),
                    Some(TENANT),
                )
                .await
                .map(|a| a.0)
                .unwrap_or(0);
                if status != want {
                    return false;
                }
            }
            true
        }
    };
    if !until(Duration::from_secs(30), || answers(200)).await {
        fail(
            "replicas",
            "the member is not served by both data replicas",
            json!({}),
        );
    }
    // the role taken away on control replica 1 is enforced by both data replicas
    let t = Instant::now();
    let (status, answer) = call(
        &ctx.client,
        "DELETE",
        format!("http://{}/admin/assignments", controls[1]),
        Some(&admin),
        Some(json!({"principal_id": id, "tenant_id": TENANT, "role": "tenant_member"})),
        None,
    )
    .await
    .unwrap_or_else(|err| fail_on("replicas", err));
    if !(200..300).contains(&status) {
        fail(
            "replicas",
            format!("unassign: {status} {answer}"),
            json!({}),
        );
    }
    if !until(Duration::from_secs(30), || answers(403)).await {
        fail(
            "replicas",
            "a data replica still serves the removed member",
            json!({}),
        );
    }
    pass(
        "replicas",
        json!({"role_removal_enforced_by_both_ms": t.elapsed().as_millis(), "refreshes_across_replicas": 3}),
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let admin_password = std::fs::read_to_string(&args.admin_password_file)
        .unwrap_or_else(|err| fail("setup", format!("admin password file: {err}"), json!({})))
        .trim()
        .to_string();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_else(|err| fail_on("setup", err));
    let ctx = Ctx {
        client,
        args,
        admin_password,
    };
    match &ctx.args.command {
        Check::Walk {
            upstream,
            upstream_ca_file,
        } => walk(&ctx, upstream, upstream_ca_file.as_deref()).await,
        Check::Traffic {
            seconds,
            require_ready,
            auth_calls,
        } => traffic(&ctx, *seconds, *require_ready, *auth_calls).await,
        Check::Outage => outage(&ctx).await,
        Check::Ops {
            token_file,
            expect_git_sha,
        } => ops(&ctx, token_file, expect_git_sha.as_deref()).await,
        Check::Replicas => replicas(&ctx).await,
    }
}
