//! Bounded soak (seed 10.4, issue 8): both planes as real processes on one NATS, two
//! reference nodes, client traffic through the data plane (queries, HTTP commands, sign-in
//! and refresh forwarded to the control plane) while the control plane keeps changing the
//! routing (a tenant moves between the nodes every second), rotating the signing key and
//! granting and revoking a role. Prints, per window, requests, errors and latency
//! percentiles, and the RSS of both planes; exits non-zero on any unexpected answer or if
//! a plane's RSS grew past the bound. Loopback only, bounded in time.
//!
//!   cargo run --release -p gateway-tests --bin soak -- --seconds 180

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use gateway_tests::nats::NatsServer;
use gateway_tests::{SnapshotKeys, upstream};
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(Parser, Debug)]
#[command(name = "soak")]
struct Args {
    /// How long the traffic runs.
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    /// Length of one reporting window.
    #[arg(long, default_value_t = 15)]
    window: u64,
    /// Concurrent clients, each a signed-in user.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Largest RSS growth of a plane between the end of the first window and the end.
    #[arg(long, default_value_t = 32)]
    max_rss_growth_mib: u64,
    /// Seconds between signing-key rotations.
    #[arg(long, default_value_t = 20)]
    rotate_every: u64,
}

const TENANT: &str = "soak";
const PASSWORD: &str = "harbour lantern pepper meadow";

/// What one window saw.
#[derive(Default)]
struct Window {
    latencies_us: Vec<u64>,
    errors: u64,
    samples: Vec<String>,
}

struct Shared {
    window: Mutex<Window>,
    total: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    async fn record(&self, started: Instant, outcome: Result<(), String>) {
        let micros = started.elapsed().as_micros() as u64;
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut window = self.window.lock().await;
        window.latencies_us.push(micros);
        if let Err(sample) = outcome {
            self.errors.fetch_add(1, Ordering::Relaxed);
            window.errors += 1;
            if window.samples.len() < 5 {
                window.samples.push(sample);
            }
        }
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Value,
    headers: &[(&str, &str)],
) -> Result<(u16, Value), String> {
    let mut request = client.request(method, url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.map_err(|err| err.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// One signed-in user's loop: mostly queries, some commands, a refresh now and then.
async fn client_loop(
    shared: Arc<Shared>,
    client: reqwest::Client,
    edge: String,
    mut access: String,
    mut refresh: String,
    id: usize,
) {
    let tenant = [("x-tenant-id", TENANT)];
    let mut n: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        let outcome = match n % 100 {
            // a full sign-in now and then (a password hash on the control plane)
            50 => match call(
                &client,
                reqwest::Method::POST,
                format!("{edge}/v1/auth/signin"),
                None,
                json!({"email": format!("soak{id}@example.com"), "password": PASSWORD}),
                &[],
            )
            .await
            {
                Ok((200, tokens)) if tokens["access_token"].is_string() => Ok(()),
                Ok((status, body)) => Err(format!("signin: {status} {body}")),
                Err(err) => Err(format!("signin: {err}")),
            },
            n if n % 20 == 0 => {
                match call(
                    &client,
                    reqwest::Method::POST,
                    format!("{edge}/v1/auth/refresh"),
                    None,
                    json!({"refresh_token": refresh}),
                    &[],
                )
                .await
                {
                    Ok((200, tokens)) => {
                        access = tokens["access_token"].as_str().unwrap_or_default().into();
                        refresh = tokens["refresh_token"].as_str().unwrap_or_default().into();
                        Ok(())
                    }
                    Ok((status, body)) => Err(format!("refresh: {status} {body}")),
                    Err(err) => Err(format!("refresh: {err}")),
                }
            }
            n if n % 20 <= 4 => match call(
                &client,
                reqwest::Method::POST,
                format!("{edge}/v1/commands/order/o-{id}-{}", n % 50),
                Some(&access),
                json!({"command_type": "Touch", "payload": {"n": n}}),
                &tenant,
            )
            .await
            {
                Ok((200, _)) => Ok(()),
                Ok((status, body)) => Err(format!("command: {status} {body}")),
                Err(err) => Err(format!("command: {err}")),
            },
            _ => match call(
                &client,
                reqwest::Method::POST,
                format!("{edge}/v1/query/orders"),
                Some(&access),
                json!({"customer": id}),
                &tenant,
            )
            .await
            {
                Ok((200, _)) => Ok(()),
                Ok((status, body)) => Err(format!("query: {status} {body}")),
                Err(err) => Err(format!("query: {err}")),
            },
        };
        shared.record(started, outcome).await;
    }
}

/// A user whose role is granted and revoked all the time: 200 or 403, never anything else.
async fn churned_loop(shared: Arc<Shared>, client: reqwest::Client, edge: String, token: String) {
    while !shared.stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let outcome = match call(
            &client,
            reqwest::Method::POST,
            format!("{edge}/v1/query/orders"),
            Some(&token),
            json!({}),
            &[("x-tenant-id", TENANT)],
        )
        .await
        {
            Ok((200 | 403, _)) => Ok(()),
            Ok((status, body)) => Err(format!("churned query: {status} {body}")),
            Err(err) => Err(format!("churned query: {err}")),
        };
        shared.record(started, outcome).await;
    }
}

async fn admin(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let (status, answer) = call(
        client,
        method.clone(),
        format!("{base}{path}"),
        Some(token),
        body,
        &[],
    )
    .await
    .map_err(anyhow::Error::msg)?;
    if !(200..300).contains(&status) {
        bail!("{method} {path}: {status} {answer}");
    }
    Ok(answer)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nats = NatsServer::start();
    let keys = SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    // every request's log line would pile up in this process: requests log at warn only
    let quiet = ["--log", "info,gateway_edge::http=warn"];
    let limits = [
        "--limit-signin-per-ip",
        "100000/m",
        "--limit-signup-per-ip",
        "100000/m",
        "--limit-token-per-ip",
        "100000/m",
    ];
    let (control, base) = gateway_tests::spawn_control_plane(
        &nats.url(),
        &prefix,
        &keys,
        &[&quiet[..], &limits[..]].concat(),
    );
    let (data, urls) = gateway_tests::spawn_data_plane(
        &nats.url(),
        &prefix,
        &keys,
        &[&quiet[..], &["--control-plane-url", base.as_str()]].concat(),
    );
    let nodes = [
        upstream::start("soak-a", "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?).await?,
        upstream::start("soak-b", "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?).await?,
    ];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()?;
    let (status, signed_in) = call(
        &client,
        reqwest::Method::POST,
        format!("{base}/v1/auth/signin"),
        None,
        json!({"email": SnapshotKeys::ADMIN_EMAIL, "password": SnapshotKeys::ADMIN_PASSWORD}),
        &[],
    )
    .await
    .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(status == 200, "admin sign-in: {status} {signed_in}");
    let root = signed_in["access_token"]
        .as_str()
        .context("admin token")?
        .to_string();
    let put = reqwest::Method::PUT;
    let post = reqwest::Method::POST;
    for (i, node) in nodes.iter().enumerate() {
        admin(
            &client,
            &base,
            &root,
            put.clone(),
            &format!("/admin/routing/projection/shards/p{i}"),
            json!({"endpoints": [node.http_url()]}),
        )
        .await?;
    }
    admin(
        &client,
        &base,
        &root,
        put.clone(),
        "/admin/routing/aggregate/shards/a0",
        json!({"endpoints": [nodes[0].grpc_url()]}),
    )
    .await?;
    admin(
        &client,
        &base,
        &root,
        put.clone(),
        &format!("/admin/routing/aggregate/placements/{TENANT}"),
        json!({"shard": "a0"}),
    )
    .await?;
    admin(
        &client,
        &base,
        &root,
        put.clone(),
        &format!("/admin/routing/projection/placements/{TENANT}"),
        json!({"shard": "p0"}),
    )
    .await?;

    // users, signed up and in through the data plane
    let mut users = Vec::new();
    for i in 0..=args.clients {
        let email = format!("soak{i}@example.com");
        let (status, user) = call(
            &client,
            post.clone(),
            format!("{}/v1/auth/signup", urls.http),
            None,
            json!({"email": email, "password": PASSWORD}),
            &[],
        )
        .await
        .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(status == 201, "signup: {status} {user}");
        let user_id = user["user_id"].as_str().context("user id")?.to_string();
        admin(
            &client,
            &base,
            &root,
            post.clone(),
            "/admin/assignments",
            json!({"principal_id": user_id, "tenant_id": TENANT, "role": "tenant_member"}),
        )
        .await?;
        let (status, tokens) = call(
            &client,
            post.clone(),
            format!("{}/v1/auth/signin", urls.http),
            None,
            json!({"email": email, "password": PASSWORD}),
            &[],
        )
        .await
        .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(status == 200, "signin: {status} {tokens}");
        users.push((user_id, tokens));
    }
    // the data plane follows: wait until the first user may query
    let first = users[0].1["access_token"]
        .as_str()
        .context("token")?
        .to_string();
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = call(
            &client,
            post.clone(),
            format!("{}/v1/query/orders", urls.http),
            Some(&first),
            json!({}),
            &[("x-tenant-id", TENANT)],
        )
        .await
        .map_err(anyhow::Error::msg)?;
        if status == 200 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < ready_by,
            "the data plane never allowed the soak users"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let shared = Arc::new(Shared {
        window: Mutex::new(Window::default()),
        total: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let mut tasks = Vec::new();
    let (churned_id, churned_tokens) = users.pop().context("churned user")?;
    for (id, (_, tokens)) in users.into_iter().enumerate() {
        tasks.push(tokio::spawn(client_loop(
            Arc::clone(&shared),
            client.clone(),
            urls.http.clone(),
            tokens["access_token"].as_str().unwrap_or_default().into(),
            tokens["refresh_token"].as_str().unwrap_or_default().into(),
            id,
        )));
    }
    tasks.push(tokio::spawn(churned_loop(
        Arc::clone(&shared),
        client.clone(),
        urls.http.clone(),
        churned_tokens["access_token"]
            .as_str()
            .unwrap_or_default()
            .into(),
    )));

    // the control plane keeps changing things
    let changes = Arc::new(AtomicU64::new(0));
    let change_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let chaos = {
        let (client, base, shared) = (client.clone(), base.clone(), Arc::clone(&shared));
        let (changes, change_errors) = (Arc::clone(&changes), Arc::clone(&change_errors));
        let rotate_every = args.rotate_every;
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last_rotation = Instant::now();
            let mut tick: u64 = 0;
            let assignment =
                json!({"principal_id": churned_id, "tenant_id": TENANT, "role": "tenant_member"});
            while !shared.stop.load(Ordering::Relaxed) {
                tick += 1;
                let mut steps = vec![(
                    reqwest::Method::PUT,
                    format!("/admin/routing/projection/placements/{TENANT}"),
                    json!({"shard": format!("p{}", tick % 2)}),
                )];
                steps.push(if tick.is_multiple_of(2) {
                    (
                        reqwest::Method::POST,
                        "/admin/assignments".to_string(),
                        assignment.clone(),
                    )
                } else {
                    (
                        reqwest::Method::DELETE,
                        "/admin/assignments".to_string(),
                        assignment.clone(),
                    )
                });
                if last_rotation.elapsed() >= Duration::from_secs(rotate_every) {
                    last_rotation = Instant::now();
                    steps.push((
                        reqwest::Method::POST,
                        "/admin/keys/rotate".to_string(),
                        json!({}),
                    ));
                }
                for (method, path, body) in steps {
                    match admin(&client, &base, &root, method, &path, body).await {
                        Ok(_) => {
                            changes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => change_errors
                            .lock()
                            .await
                            .push(format!("{:.0}s {err}", started.elapsed().as_secs_f64())),
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    println!(
        "soak: {} clients + 1 churned, {} s, windows of {} s; control pid {}, data pid {}",
        args.clients,
        args.seconds,
        args.window,
        control.pid(),
        data.pid()
    );
    println!(
        "{:>6} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>12} {:>12}",
        "t_s", "requests", "errors", "rps", "p50_ms", "p99_ms", "max_ms", "control_mib", "data_mib"
    );
    let at_start = (rss_mib(control.pid()), rss_mib(data.pid()));
    println!(
        "{:>6} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>12.1} {:>12.1}",
        0, "-", "-", "-", "-", "-", "-", at_start.0, at_start.1
    );
    let started = Instant::now();
    let mut baseline: Option<(f64, f64)> = None;
    let mut last = (0.0, 0.0);
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_secs(args.window)).await;
        let window = std::mem::take(&mut *shared.window.lock().await);
        for node in &nodes {
            node.node.clear();
        }
        let mut latencies = window.latencies_us;
        latencies.sort_unstable();
        let rss = (rss_mib(control.pid()), rss_mib(data.pid()));
        baseline.get_or_insert(rss);
        last = rss;
        samples.extend(window.samples);
        println!(
            "{:>6.0} {:>9} {:>7} {:>8.0} {:>8.2} {:>8.2} {:>8.2} {:>12.1} {:>12.1}",
            started.elapsed().as_secs_f64(),
            latencies.len(),
            window.errors,
            latencies.len() as f64 / args.window as f64,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
            rss.0,
            rss.1,
        );
    }
    shared.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    chaos.await?;
    let (base_rss, total, errors) = (
        baseline.unwrap_or_default(),
        shared.total.load(Ordering::Relaxed),
        shared.errors.load(Ordering::Relaxed),
    );
    let change_errors = change_errors.lock().await;
    println!(
        "soak: {total} requests, {errors} errors; {} control-plane changes ({} failed); RSS at start control {:.1} MiB, data {:.1} MiB; after the first window -> end: control {:.1} -> {:.1} MiB, data {:.1} -> {:.1} MiB (bound +{} MiB)",
        changes.load(Ordering::Relaxed),
        change_errors.len(),
        at_start.0,
        at_start.1,
        base_rss.0,
        last.0,
        base_rss.1,
        last.1,
        args.max_rss_growth_mib
    );
    for sample in samples.iter().chain(change_errors.iter()).take(10) {
        println!("  error: {sample}");
    }
    let bound = args.max_rss_growth_mib as f64;
    if errors > 0 || !change_errors.is_empty() {
        bail!("soak failed: unexpected answers");
    }
    if last.0 - base_rss.0 > bound || last.1 - base_rss.1 > bound {
        bail!("soak failed: a plane's memory grew past the bound");
    }
    println!("soak: passed");
    drop(nats);
    Ok(())
}
