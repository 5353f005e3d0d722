//! Load figures for the authentication flows of a running control plane: sign-in latency
//! and throughput with its Argon2 parameters, refresh rotations per second, and baselines
//! measured in the same run (`GET /health` on the same server, one local Argon2id verify).
//! Bounded in count; targets loopback only. See docs/benchmarks.md.

use std::time::{Duration, Instant};

use clap::Parser;
use futures::future::join_all;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(name = "auth-bench")]
struct Args {
    /// Control-plane base URL (loopback).
    #[arg(long)]
    base: String,
    /// Accounts created for the run.
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Sequential sign-ins for the latency figures.
    #[arg(long, default_value_t = 60)]
    signins: usize,
    /// Concurrent clients for the throughput figures.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Refresh rotations per client.
    #[arg(long, default_value_t = 250)]
    refreshes: usize,
    /// Argon2id memory (KiB) of the server, for the local baseline.
    #[arg(long, default_value_t = 19_456)]
    argon2_memory_kib: u32,
}

const PASSWORD: &str = "benchmark passphrase of decent length";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
    let response = client.post(url).json(body).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.base.starts_with("http://127.") || args.base.starts_with("http://localhost"),
        "the benchmark only targets loopback"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let emails: Vec<String> = (0..args.users)
        .map(|i| format!("bench{i}-{}@example.com", &run[..8]))
        .collect();
    for email in &emails {
        let (status, body) = post(
            &client,
            &format!("{}/v1/auth/signup", args.base),
            &json!({"email": email, "password": PASSWORD}),
        )
        .await?;
        anyhow::ensure!(status == 201, "signup failed: {status} {body}");
    }

    // baseline 1: one Argon2id verify here with the server's parameters
    let params =
        argon2::Params::new(args.argon2_memory_kib, 2, 1, None).map_err(anyhow::Error::msg)?;
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    let mut argon_times = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        hasher
            .hash_password_into(PASSWORD.as_bytes(), b"benchmark-salt-16", &mut out)
            .map_err(anyhow::Error::msg)?;
        argon_times.push(start.elapsed());
    }
    argon_times.sort();

    // baseline 2: GET /health latency on the same server
    let mut health = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        client
            .get(format!("{}/health", args.base))
            .send()
            .await?
            .error_for_status()?;
        health.push(start.elapsed());
    }
    health.sort();

    // sign-in latency, sequential
    let signin_url = format!("{}/v1/auth/signin", args.base);
    let mut signins = Vec::new();
    for i in 0..args.signins {
        let start = Instant::now();
        let (status, body) = post(
            &client,
            &signin_url,
            &json!({"email": emails[i % emails.len()], "password": PASSWORD}),
        )
        .await?;
        signins.push(start.elapsed());
        anyhow::ensure!(status == 200, "signin failed: {status} {body}");
    }
    signins.sort();

    // sign-in throughput, concurrent
    let per_client = args.signins.div_ceil(args.concurrency);
    let started = Instant::now();
    let results = join_all((0..args.concurrency).map(|c| {
        let (client, url, emails) = (client.clone(), signin_url.clone(), emails.clone());
        async move {
            for i in 0..per_client {
                let email = &emails[(c * per_client + i) % emails.len()];
                let (status, _) = post(
                    &client,
                    &url,
                    &json!({"email": email, "password": PASSWORD}),
                )
                .await?;
                anyhow::ensure!(status == 200, "signin failed under load: {status}");
            }
            Ok::<_, anyhow::Error>(())
        }
    }))
    .await;
    for result in results {
        result?;
    }
    let signin_rate = (per_client * args.concurrency) as f64 / started.elapsed().as_secs_f64();

    // refresh rotations: each client follows its own token chain
    let refresh_url = format!("{}/v1/auth/refresh", args.base);
    let mut chains = Vec::new();
    for c in 0..args.concurrency {
        let (_, body) = post(
            &client,
            &signin_url,
            &json!({"email": emails[c % emails.len()], "password": PASSWORD}),
        )
        .await?;
        chains.push(
            body["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let started = Instant::now();
    let results = join_all(chains.into_iter().map(|mut token| {
        let (client, url, n) = (client.clone(), refresh_url.clone(), args.refreshes);
        async move {
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let start = Instant::now();
                let (status, body) = post(&client, &url, &json!({"refresh_token": token})).await?;
                times.push(start.elapsed());
                anyhow::ensure!(status == 200, "refresh failed: {status} {body}");
                token = body["refresh_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            }
            Ok::<_, anyhow::Error>(times)
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let mut refreshes = Vec::new();
    for result in results {
        refreshes.extend(result?);
    }
    refreshes.sort();
    let refresh_rate = refreshes.len() as f64 / elapsed.as_secs_f64();

    println!(
        "auth benchmark against {} ({} users, {} clients)",
        args.base, args.users, args.concurrency
    );
    println!(
        "  baseline: local argon2id verify (m={} KiB, t=2, p=1)  p50 {:.1} ms",
        args.argon2_memory_kib,
        ms(percentile(&argon_times, 0.5))
    );
    println!(
        "  baseline: GET /health                             p50 {:.2} ms  p99 {:.2} ms",
        ms(percentile(&health, 0.5)),
        ms(percentile(&health, 0.99))
    );
    println!(
        "  signin (sequential, n={})                         p50 {:.1} ms  p99 {:.1} ms",
        signins.len(),
        ms(percentile(&signins, 0.5)),
        ms(percentile(&signins, 0.99))
    );
    println!(
        "  signin throughput ({} clients)                    {:.1} /s",
        args.concurrency, signin_rate
    );
    println!(
        "  refresh rotation ({} clients, n={})             {:.0} /s  p50 {:.2} ms  p99 {:.2} ms",
        args.concurrency,
        refreshes.len(),
        refresh_rate,
        ms(percentile(&refreshes, 0.5)),
        ms(percentile(&refreshes, 0.99))
    );
    println!(
        "  ratios: signin p50 / argon2 p50 = {:.2}; refresh p50 / health p50 = {:.1}",
        ms(percentile(&signins, 0.5)) / ms(percentile(&argon_times, 0.5)).max(0.001),
        ms(percentile(&refreshes, 0.5)) / ms(percentile(&health, 0.5)).max(0.001)
    );
    Ok(())
}
