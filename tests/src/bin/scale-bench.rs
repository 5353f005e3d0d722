//! The data plane's mirrors at scale (scripts/bench-scale.sh, docs/benchmarks.md "Mirrors
//! at scale"): writes into a fresh store one signed document per principal (100,000 by
//! default) and a routing document placing as many tenants, then starts the release
//! data plane and measures: time to ready from the store, its memory, a routing revision
//! of every tenant swapped in, role-change propagation while it holds every principal,
//! and time to ready from its cache file with the store unreachable. Prints a markdown
//! table against the targets. Loopback only; bounded in count and time; stops by itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use gateway_core::authz::{EffectiveRights, Grant, Scope, TENANT_MEMBER, TenantId, builtin_role};
use gateway_core::routing::{KindRouting, RoutingDocument};
use gateway_core::token::{ACCESS_TOKEN_TYPE, AccessClaims};
use gateway_core::unix_now;
use gateway_store::nats::NatsConfig;
use gateway_store::{Bucket, Store, StoreConfig};

#[derive(Parser, Debug)]
#[command(name = "scale-bench")]
struct Args {
    #[arg(long)]
    nats_url: String,
    #[arg(long, default_value = "scale_")]
    store_prefix: String,
    /// The release data-plane binary.
    #[arg(long)]
    data_plane_bin: PathBuf,
    /// Where keys, logs and the mirror cache file go.
    #[arg(long)]
    work_dir: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    principals: usize,
    #[arg(long, default_value_t = 100_000)]
    tenants: usize,
    /// Role changes timed (each waits for the data plane's decision to change).
    #[arg(long, default_value_t = 200)]
    role_changes: usize,
    /// Routing revisions of every tenant timed.
    #[arg(long, default_value_t = 5)]
    routing_revisions: usize,
}

/// Bound on every wait of the benchmark.
const WAIT: Duration = Duration::from_secs(300);

fn principal_id(i: usize) -> String {
    format!("usr_scale{i:06}")
}

fn tenant_id(i: usize) -> anyhow::Result<TenantId> {
    Ok(TenantId::parse(&format!("t{i:06}"))?)
}

/// A data plane child process and its addresses.
struct Plane {
    child: Child,
    http: String,
    ops: String,
}

impl Plane {
    /// Starts the data plane and waits for its listening line (not for readiness).
    fn start(args: &Args, nats_url: &str, log: &str) -> anyhow::Result<Plane> {
        let work = &args.work_dir;
        let log_path = work.join(log);
        let child = Command::new(&args.data_plane_bin)
            .args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"])
            .args(["--ops-listen", "127.0.0.1:0", "--nats-url", nats_url])
            .args(["--store-prefix", &args.store_prefix, "--log-format", "json"])
            .args(["--log", "warn,data_plane=info"])
            .arg("--snapshot-verify-key-file")
            .arg(work.join("snapshot-verify.pem"))
            .arg("--mirror-cache-file")
            .arg(work.join("mirror-cache.json"))
            .stdout(Stdio::from(std::fs::File::create(&log_path)?))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log_path)?,
            ))
            .spawn()
            .context("starting the data plane")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("data plane listening")) {
                // a JSON log line: `"http_addr":"127.0.0.1:port"`
                let field = |name: &str| {
                    let start = line
                        .find(&format!("\"{name}\":\""))
                        .with_context(|| format!("{name} not logged: {line}"))?
                        + name.len()
                        + 4;
                    let end = line[start..].find('"').context("unterminated address")?;
                    anyhow::Ok(format!("http://{}", &line[start..start + end]))
                };
                return Ok(Plane {
                    http: field("http_addr")?,
                    ops: field("ops_addr")?,
                    child,
                });
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the data plane did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resident and peak memory in MiB (`/proc/<pid>/status`).
    fn memory(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib = |name: &str| -> anyhow::Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("{name} not in /proc status"))?;
            let value: f64 = line
                .split_whitespace()
                .nth(1)
                .context("no value")?
                .parse()?;
            Ok(value / 1024.0)
        };
        Ok((kib("VmRSS:")?, kib("VmHWM:")?))
    }

    async fn wait_ready(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(answer) = client.get(format!("{}/ready", self.ops)).send().await
                && answer.status() == 200
            {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "not ready within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn metric(&self, client: &reqwest::Client, line_prefix: &str) -> Option<f64> {
        let text = client
            .get(format!("{}/metrics", self.ops))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .and_then(|v| v.trim().parse().ok())
    }

    fn stop(mut self) -> anyhow::Result<()> {
        // SIGTERM, then wait for the drain
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()?;
        self.child.wait()?;
        Ok(())
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.nats_url.contains("127.0.0.1"),
        "the benchmark only targets loopback"
    );
    anyhow::ensure!(args.tenants > 0 && args.principals > 0);
    std::fs::create_dir_all(&args.work_dir)?;
    let now = unix_now();
    let store = Store::open(&StoreConfig::Nats(NatsConfig {
        url: args.nats_url.clone(),
        prefix: args.store_prefix.clone(),
        timeout: Duration::from_secs(30),
        ..NatsConfig::default()
    }))
    .await?;
    // the snapshot-signing key and the access-token key, as the control plane has them
    let (signer, manager) = gateway_tests::bench_keys(&store, &args.work_dir, now).await?;
    let upstream =
        gateway_tests::upstream::start("scale", "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?)
            .await?;

    // routing: every tenant placed, on one of two shards (the same node behind both)
    let routing_of = |shard_of: &dyn Fn(usize) -> &'static str| -> anyhow::Result<RoutingDocument> {
        let placement = (0..args.tenants)
            .map(|i| Ok((tenant_id(i)?, shard_of(i).to_string())))
            .collect::<anyhow::Result<BTreeMap<TenantId, String>>>()?;
        let routing = RoutingDocument {
            projection: KindRouting {
                placement,
                shards: BTreeMap::from([
                    ("s1".to_string(), vec![upstream.http_url()]),
                    ("s2".to_string(), vec![upstream.http_url()]),
                ]),
                default_shard: None,
            },
            ..RoutingDocument::default()
        };
        routing.validate()?;
        Ok(routing)
    };
    let snapshots = store.kv(Bucket::Snapshots);
    let routing = routing_of(&|_| "s1")?;
    let routing_bytes = signer.sign("routing", 1, now, &routing)?;
    let routing_size = routing_bytes.len();
    // over one message: parts and a manifest, as the control plane publishes it
    let stored = snapshots.get("routing").await?;
    gateway_store::large::write(
        snapshots.as_ref(),
        "routing",
        routing_bytes,
        stored.map(|entry| entry.revision),
    )
    .await?;

    // principals: each a member of one tenant
    let member_rights = builtin_role(TENANT_MEMBER).context("built-in role")?;
    let document = |i: usize, revision: u64, member: bool| -> anyhow::Result<bytes::Bytes> {
        let grants = if member {
            vec![Grant {
                scope: Scope::Tenant {
                    tenant: tenant_id(i % args.tenants)?,
                },
                role: TENANT_MEMBER.to_string(),
                rights: member_rights.clone(),
            }]
        } else {
            Vec::new()
        };
        Ok(signer.sign(
            "principal",
            revision,
            now,
            &EffectiveRights {
                principal_id: principal_id(i),
                disabled: false,
                tokens_valid_after: 0,
                revoked_sessions: Vec::new(),
                grants,
            },
        )?)
    };
    let authz = store.kv(Bucket::Authz);
    let started = Instant::now();
    let mut document_bytes = 0usize;
    let written: Vec<_> = futures::stream::iter(0..args.principals)
        .map(|i| {
            let authz = Arc::clone(&authz);
            let bytes = document(i, 1, true);
            async move {
                let bytes = bytes?;
                let size = bytes.len();
                authz
                    .put(&format!("principal.{}", principal_id(i)), bytes)
                    .await?;
                anyhow::Ok(size)
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    for size in written {
        document_bytes += size?;
    }
    let write_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "scale-bench: {} principal documents ({:.0} bytes each) written in {write_secs:.1} s; routing of {} tenants is {} KiB",
        args.principals,
        document_bytes as f64 / args.principals as f64,
        args.tenants,
        routing_size / 1024
    );

    // 1. a fresh replica: ready from the store
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let started = Instant::now();
    let plane = Plane::start(&args, &args.nats_url, "data-plane-1.log")?;
    plane.wait_ready(&client).await?;
    let ready_fresh = started.elapsed().as_secs_f64();
    let (rss_fresh, _) = plane.memory()?;
    eprintln!("scale-bench: ready from the store in {ready_fresh:.2} s, RSS {rss_fresh:.0} MiB");

    // 2. role changes, one principal at a time, timed until the decision changes
    let subject = args.principals / 2;
    // an hour-long access token of principal `i`, signed as the control plane signs
    let token_of = |i: usize| {
        manager.sign(&AccessClaims {
            iss: "cloudlysis-gateway".into(),
            aud: "cloudlysis".into(),
            sub: principal_id(i),
            sid: Some(format!("ses_{i}")),
            iat: now,
            nbf: now,
            exp: now + 3600,
            jti: format!("scale-{i}"),
            typ: ACCESS_TOKEN_TYPE.into(),
        })
    };
    let token = token_of(subject)?;
    let tenant = tenant_id(subject % args.tenants)?;
    let decision = || async {
        client
            .post(format!("{}/v1/query/scale", plane.http))
            .bearer_auth(&token)
            .header("x-tenant-id", tenant.as_str())
            .json(&serde_json::json!({}))
            .send()
            .await
            .map(|answer| answer.status().as_u16())
            .unwrap_or(0)
    };
    anyhow::ensure!(
        decision().await == 200,
        "the member is not allowed at start"
    );
    let mut propagation = Vec::with_capacity(args.role_changes);
    for change in 0..args.role_changes {
        let member = change % 2 == 1;
        let want = if member { 200 } else { 403 };
        let bytes = document(subject, 2 + change as u64, member)?;
        let started = Instant::now();
        authz
            .put(&format!("principal.{}", principal_id(subject)), bytes)
            .await?;
        loop {
            if decision().await == want {
                break;
            }
            anyhow::ensure!(started.elapsed() < WAIT, "role change {change} never seen");
        }
        propagation.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    propagation.sort_by(f64::total_cmp);

    // 2b. every principal makes one call (each document then parsed and kept): the
    // memory of a replica whose every principal is active
    let (rss_before_all, _) = plane.memory()?;
    let started = Instant::now();
    let answers: Vec<anyhow::Result<u16>> = futures::stream::iter(0..args.principals)
        .map(|i| {
            let (client, token_of, http) = (&client, &token_of, &plane.http);
            async move {
                let token = token_of(i)?;
                let tenant = tenant_id(i % args.tenants)?;
                let answer = client
                    .post(format!("{http}/v1/query/scale"))
                    .bearer_auth(token)
                    .header("x-tenant-id", tenant.as_str())
                    .json(&serde_json::json!({}))
                    .send()
                    .await?;
                Ok(answer.status().as_u16())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for answer in answers {
        *statuses.entry(answer?).or_default() += 1;
    }
    let all_secs = started.elapsed().as_secs_f64();
    let (rss_all, peak_all) = plane.memory()?;
    eprintln!("scale-bench: every principal called once in {all_secs:.1} s: {statuses:?}");

    // 3. routing revisions moving every tenant, timed until the revision is in use
    let mut swaps = Vec::with_capacity(args.routing_revisions);
    for round in 0..args.routing_revisions {
        let revision = 2 + round as u64;
        let shard: &'static str = if round % 2 == 0 { "s2" } else { "s1" };
        let bytes = signer.sign("routing", revision, unix_now(), &routing_of(&|_| shard)?)?;
        let started = Instant::now();
        let stored = snapshots.get("routing").await?.context("routing gone")?;
        gateway_store::large::write(snapshots.as_ref(), "routing", bytes, Some(stored.revision))
            .await?;
        gateway_store::large::delete_parts(snapshots.as_ref(), "routing", &stored.value).await;
        loop {
            let applied = plane
                .metric(&client, "gateway_snapshot_revision{kind=\"routing\"} ")
                .await;
            if applied == Some(revision as f64) {
                break;
            }
            anyhow::ensure!(started.elapsed() < WAIT, "routing {revision} never applied");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        swaps.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    swaps.sort_by(f64::total_cmp);
    let (rss_loaded, peak_loaded) = plane.memory()?;

    // the cache file holds everything once written (every second when changed)
    let deadline = Instant::now() + WAIT;
    let cache = args.work_dir.join("mirror-cache.json");
    loop {
        let writes = plane
            .metric(&client, "gateway_mirror_cache_writes_total ")
            .await
            .unwrap_or(0.0);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let again = plane
            .metric(&client, "gateway_mirror_cache_writes_total ")
            .await
            .unwrap_or(0.0);
        if writes > 0.0 && again == writes {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "cache file never settled");
    }
    let cache_mib = std::fs::metadata(&cache)?.len() as f64 / (1024.0 * 1024.0);
    plane.stop()?;

    // 4. a replica restarted while the store is unreachable: ready from its cache file
    let started = Instant::now();
    let plane = Plane::start(&args, "nats://127.0.0.1:1", "data-plane-2.log")?;
    plane.wait_ready(&client).await?;
    let ready_cache = started.elapsed().as_secs_f64();
    let (rss_cache, _) = plane.memory()?;
    // the principal documents of the file are verified in the background after ready
    let log = args.work_dir.join("data-plane-2.log");
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("principal documents of the cache file verified")
    {
        anyhow::ensure!(Instant::now() < deadline, "cache file never verified");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let verified_cache = started.elapsed().as_secs_f64();
    let (rss_cache_verified, peak_cache) = plane.memory()?;
    let _ = client.get(format!("{}/health", plane.http)).send().await;
    plane.stop()?;

    let pass = |ok: bool| if ok { "met" } else { "**not met**" };
    println!(
        "| figure ({} principals, {} tenants) | value | target |",
        args.principals, args.tenants
    );
    println!("| --- | --- | --- |");
    println!(
        "| documents written (NATS, 256 in flight) | {write_secs:.1} s ({:.0} B each; routing {:.1} MiB) | — |",
        document_bytes as f64 / args.principals as f64,
        routing_size as f64 / (1024.0 * 1024.0)
    );
    println!("| fresh replica ready from the store | {ready_fresh:.2} s | — |");
    println!(
        "| RSS when ready / after the runs (peak) | {rss_fresh:.0} / {rss_loaded:.0} ({peak_loaded:.0}) MiB | ≤ 200 MiB: {} |",
        pass(peak_loaded <= 200.0)
    );
    println!(
        "| RSS after every principal made one call ({all_secs:.0} s; {statuses:?}) | {rss_before_all:.0} → {rss_all:.0} MiB (peak {peak_all:.0}) | ≤ 200 MiB: {} |",
        pass(peak_all <= 200.0)
    );
    println!(
        "| routing revision moving every tenant, put → in use (p50 / max of {}) | {:.0} / {:.0} ms | ≤ 200 ms: {} |",
        swaps.len(),
        percentile(&swaps, 0.5),
        swaps[swaps.len() - 1],
        pass(swaps[swaps.len() - 1] <= 200.0)
    );
    println!(
        "| role change → decision changed (p50 / p99 of {}) | {:.1} / {:.1} ms | p99 ≤ 100 ms: {} |",
        propagation.len(),
        percentile(&propagation, 0.5),
        percentile(&propagation, 0.99),
        pass(percentile(&propagation, 0.99) <= 100.0)
    );
    println!(
        "| restart with the store unreachable: ready from the cache file ({cache_mib:.0} MiB) | {ready_cache:.2} s, RSS {rss_cache:.0} MiB | ≤ 2 s: {} |",
        pass(ready_cache <= 2.0)
    );
    println!(
        "| … every document of the file verified in the background | at {verified_cache:.2} s, RSS {rss_cache_verified:.0} MiB (peak {peak_cache:.0}) | ≤ 200 MiB: {} |",
        pass(peak_cache <= 200.0)
    );
    drop(upstream);
    Ok(())
}
