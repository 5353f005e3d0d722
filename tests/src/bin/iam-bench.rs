//! Propagation figures of IAM changes (see docs/benchmarks.md): the time from an admin API
//! response to the updated signed document being seen by a watcher of the `authz`
//! bucket, the time until a running data plane's decision changes after a role change and
//! after a global sign-out, and the cost of a role change fanning out to many holders.
//! Loopback only, bounded in count and time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use gateway_core::authz::{Scope, TenantId};
use gateway_store::nats::NatsConfig;
use gateway_store::{Bucket, Store, StoreConfig, WatchEvent, WatchFrom};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(name = "iam-bench")]
struct Args {
    #[arg(long)]
    base: String,
    #[arg(long)]
    nats_url: String,
    #[arg(long)]
    store_prefix: String,
    #[arg(long)]
    admin_email: String,
    #[arg(long)]
    admin_password_file: std::path::PathBuf,
    /// Assignment changes timed one by one.
    #[arg(long, default_value_t = 300)]
    changes: usize,
    /// Holders of the role changed in the fan-out figure.
    #[arg(long, default_value_t = 10_000)]
    holders: usize,
    /// A data plane following the same store (`http://127.0.0.1:port`): times its decisions.
    #[arg(long)]
    data_plane: Option<String>,
    /// Sign-outs timed one by one, global and of one session each (each after a fresh sign-in).
    #[arg(long, default_value_t = 200)]
    signouts: usize,
}

/// Asks the data plane, as fast as it answers, until `wanted` holds for its status (at most
/// 5 s): the time from `since` to the first answer showing the new decision.
async fn until_decision(
    client: &reqwest::Client,
    data_plane: &str,
    token: &str,
    since: Instant,
    wanted: impl Fn(u16) -> bool,
) -> anyhow::Result<Duration> {
    let deadline = since + Duration::from_secs(5);
    loop {
        let response = client
            .post(format!("{data_plane}/v1/query/propagation"))
            .bearer_auth(token)
            .header("x-tenant-id", "bench")
            .json(&json!({}))
            .send()
            .await?;
        let at = Instant::now();
        let status = response.status().as_u16();
        if wanted(status) {
            return Ok(at - since);
        }
        if at >= deadline {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("the data plane still answers {status} after 5 s: {body}");
        }
    }
}

/// The data plane's decisions after admin changes: a role granted and revoked (403 while
/// not a member, anything else once allowed: the tenant has no routing here), and a global
/// sign-out (the old token refused with 401).
async fn decision_figures(
    client: &reqwest::Client,
    args: &Args,
    admin_token: &str,
    data_plane: &str,
) -> anyhow::Result<()> {
    let email = format!("decide-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "quartz meadow bicycle decision";
    let user = call(
        client,
        "POST",
        format!("{}/admin/users", args.base),
        admin_token,
        json!({"email": email, "password": password, "email_verified": true}),
    )
    .await?;
    let user_id = user["id"].as_str().unwrap_or_default().to_string();
    let signin = || async {
        let body: Value = client
            .post(format!("{}/v1/auth/signin", args.base))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?
            .json()
            .await?;
        body["access_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("sign-in answered {body}"))
    };
    let token = signin().await?;
    // the data plane knows the user (its document is mirrored) before timing starts
    until_decision(client, data_plane, &token, Instant::now(), |s| s == 403).await?;
    let mut role_change = Vec::new();
    for i in 0..args.changes {
        let grant = i % 2 == 0;
        call(
            client,
            if grant { "POST" } else { "DELETE" },
            format!("{}/admin/assignments", args.base),
            admin_token,
            json!({"principal_id": user_id, "tenant_id": "bench", "role": "tenant_member"}),
        )
        .await?;
        let answered = Instant::now();
        role_change.push(
            until_decision(client, data_plane, &token, answered, |s| {
                (s == 403) != grant
            })
            .await?,
        );
    }
    // global sign-outs, then sign-outs of one session each, timed alike
    let mut signout = Vec::new();
    let mut one_session = Vec::new();
    for all in [true, false] {
        for _ in 0..args.signouts {
            let token = signin().await?;
            until_decision(client, data_plane, &token, Instant::now(), |s| s != 401).await?;
            let response = client
                .post(format!("{}/v1/auth/signout", args.base))
                .bearer_auth(&token)
                .json(&json!({"all": all}))
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "sign-out answered {}",
                response.status()
            );
            let answered = Instant::now();
            let took = until_decision(client, data_plane, &token, answered, |s| s == 401).await?;
            if all {
                signout.push(took);
            } else {
                one_session.push(took);
            }
        }
    }
    role_change.sort();
    signout.sort();
    one_session.sort();
    println!(
        "  data plane decision after a role change ({} changes): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms (from the admin response)",
        role_change.len(),
        ms(percentile(&role_change, 0.5)),
        ms(percentile(&role_change, 0.99)),
        ms(percentile(&role_change, 1.0))
    );
    println!(
        "  data plane decision after a global sign-out ({} sign-outs): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms (from the sign-out response)",
        signout.len(),
        ms(percentile(&signout, 0.5)),
        ms(percentile(&signout, 0.99)),
        ms(percentile(&signout, 1.0))
    );
    println!(
        "  data plane decision after signing out one session ({} sign-outs): p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms (from the sign-out response)",
        one_session.len(),
        ms(percentile(&one_session, 0.5)),
        ms(percentile(&one_session, 0.99)),
        ms(percentile(&one_session, 1.0))
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn call(
    client: &reqwest::Client,
    method: &str,
    url: String,
    token: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let response = client
        .request(method.parse()?, url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{status}: {body}");
    Ok(body)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.base.starts_with("http://127."),
        "the benchmark only targets loopback"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let password = std::fs::read_to_string(&args.admin_password_file)?;
    let signin: Value = client
        .post(format!("{}/v1/auth/signin", args.base))
        .json(&json!({"email": args.admin_email, "password": password.trim_end()}))
        .send()
        .await?
        .json()
        .await?;
    let token = signin["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let store = Store::open(&StoreConfig::Nats(NatsConfig {
        url: args.nats_url.clone(),
        prefix: args.store_prefix.clone(),
        ..NatsConfig::default()
    }))
    .await?;

    // a watcher reporting (principal id, time seen) for every document write
    let (tx, mut seen) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut watch = store
        .kv(Bucket::Authz)
        .watch("principal.", WatchFrom::New)
        .await?;
    tokio::spawn(async move {
        while let Some(event) = watch.next().await {
            if let Ok(WatchEvent::Put(entry)) = event {
                let id = entry.key.trim_start_matches("principal.").to_string();
                let _ = tx.send((id, Instant::now()));
            }
        }
    });

    // 1. assignment changes, one at a time
    let user = call(
        &client,
        "POST",
        format!("{}/admin/users", args.base),
        &token,
        json!({"email": format!("bench-{}@example.com", uuid::Uuid::new_v4().simple())}),
    )
    .await?;
    let user_id = user["id"].as_str().unwrap_or_default().to_string();
    while seen.try_recv().is_ok() {}
    let mut request_times = Vec::new();
    let mut after_response = Vec::new();
    let mut after_request = Vec::new();
    for i in 0..args.changes {
        let method = if i % 2 == 0 { "POST" } else { "DELETE" };
        let sent = Instant::now();
        call(
            &client,
            method,
            format!("{}/admin/assignments", args.base),
            &token,
            json!({"principal_id": user_id, "tenant_id": "bench", "role": "tenant_member"}),
        )
        .await?;
        let answered = Instant::now();
        request_times.push(answered - sent);
        loop {
            let (id, at) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
            if id == user_id {
                after_response.push(at.saturating_duration_since(answered));
                after_request.push(at.saturating_duration_since(sent));
                break;
            }
        }
    }
    request_times.sort();
    after_response.sort();
    after_request.sort();

    // 2. a role held by many principals changes: setup straight into the store
    let role = format!(
        "bench_role_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    call(
        &client,
        "POST",
        format!("{}/admin/roles", args.base),
        &token,
        json!({"name": role, "rights": ["query.read:*"]}),
    )
    .await?;
    let tenant = TenantId::parse("fanout")?;
    let now = gateway_core::unix_now();
    let setup = Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..args.holders)
        .map(|i| {
            let store = store.clone();
            let (tenant, role) = (tenant.clone(), role.clone());
            async move {
                let user = control_plane::auth::users::create(
                    &store,
                    &format!("holder{i}-{}@example.com", &role[10..]),
                    None,
                    true,
                    now,
                )
                .await?;
                control_plane::iam::assignments::change(
                    &store,
                    &user.id,
                    &Scope::Tenant { tenant },
                    &role,
                    true,
                    now,
                )
                .await?;
                Ok::<_, gateway_edge::ApiError>(user.id)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let setup_time = setup.elapsed();
    while seen.try_recv().is_ok() {}
    let mut pending: HashMap<String, ()> = ids.iter().map(|id| (id.clone(), ())).collect();
    let sent = Instant::now();
    call(
        &client,
        "PUT",
        format!("{}/admin/roles/{role}", args.base),
        &token,
        json!({"rights": ["query.read:*", "command.submit:*"]}),
    )
    .await?;
    let answered = sent.elapsed();
    while !pending.is_empty() {
        let (id, _) = tokio::time::timeout(Duration::from_secs(60), seen.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
        pending.remove(&id);
    }
    let all_seen = sent.elapsed();

    println!(
        "iam propagation against {} ({} changes, {} holders)",
        args.base, args.changes, args.holders
    );
    println!(
        "  admin assignment request          p50 {:.2} ms  p99 {:.2} ms",
        ms(percentile(&request_times, 0.5)),
        ms(percentile(&request_times, 0.99))
    );
    println!(
        "  request sent -> watcher sees doc   p50 {:.2} ms  p99 {:.2} ms",
        ms(percentile(&after_request, 0.5)),
        ms(percentile(&after_request, 0.99))
    );
    println!(
        "  response -> watcher sees document p50 {:.3} ms  p99 {:.3} ms  (0: published before the response)",
        ms(percentile(&after_response, 0.5)),
        ms(percentile(&after_response, 0.99))
    );
    println!(
        "  role change fan-out to {} holders: response after {:.0} ms, all documents seen after {:.0} ms ({:.0} documents/s)",
        args.holders,
        ms(answered),
        ms(all_seen),
        args.holders as f64 / all_seen.as_secs_f64()
    );
    println!(
        "  (setup of the holders, not part of the figure: {:.1} s)",
        setup_time.as_secs_f64()
    );
    if let Some(data_plane) = &args.data_plane {
        anyhow::ensure!(
            data_plane.starts_with("http://127."),
            "the benchmark only targets loopback"
        );
        decision_figures(&client, &args, &token, data_plane).await?;
    }
    Ok(())
}
