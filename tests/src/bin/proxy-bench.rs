//! Setup of the side-by-side benchmark of the data plane against HAProxy + `jwt_verify`
//! (scripts/bench-proxy.sh, docs/bench-protocol.md): writes into a fresh store the
//! signed documents a data plane follows (`routing` to the upstream, `jwks` with an ES256
//! key, one `principal.<id>` per benchmark user) and the files both proxies and the load
//! generator read (verify key, ES256 public key as SPKI PEM, HAProxy map, tokens).
//! Bounded in count; touches only the given NATS server. `latency` is the open-loop load
//! generator of the fixed-rate latency runs (loopback only, bounded in time).
//!
//! (Over 600 lines: the setup and the three loads it drives, closed-loop HTTP, open-loop
//! latency and gRPC, are subcommands of one binary the bench script calls.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use gateway_core::authz::{EffectiveRights, Grant, Scope, TENANT_MEMBER, TenantId, builtin_role};
use gateway_core::jwks::{JwksDocument, KeyStatus};
use gateway_core::routing::{KindRouting, RoutingDocument};
use gateway_core::signed::DocVerifyingKeys;
use gateway_core::token::{ACCESS_TOKEN_TYPE, AccessClaims};
use gateway_core::unix_now;
use gateway_store::nats::NatsConfig;
use gateway_store::{Bucket, Store, StoreConfig};

#[derive(Parser, Debug)]
#[command(name = "proxy-bench")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes the documents into the store and the key, map and token files into `--out-dir`.
    Setup(Setup),
    /// Sends requests at a fixed rate and prints latency percentiles as one JSON line.
    Latency(Latency),
    /// Closed-loop gRPC `SubmitCommand` load; prints throughput and latency as one JSON line.
    Grpc(Grpc),
    /// An upstream of large bodies for the streamed-body figure (loopback, until killed):
    /// `POST /v1/query/download` answers `--bytes` bytes with a length,
    /// `/v1/query/download-chunked` the same chunked; any other request has its body read
    /// (a length or chunked) and answered with `{"received": n}`.
    StreamUpstream(StreamUpstream),
}

#[derive(clap::Args, Debug)]
struct StreamUpstream {
    #[arg(long)]
    listen: std::net::SocketAddr,
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    bytes: u64,
}

#[derive(clap::Args, Debug)]
struct Setup {
    #[arg(long)]
    nats_url: String,
    /// Store prefix the data plane is started with (`--store-prefix`).
    #[arg(long, default_value = "bench_")]
    store_prefix: String,
    #[arg(long)]
    out_dir: PathBuf,
    /// Base URL of the upstream (loopback).
    #[arg(long)]
    upstream: String,
    /// gRPC URL of the aggregate upstream (loopback), routed for the tenant's commands.
    #[arg(long)]
    aggregate_upstream: Option<String>,
    /// Tenant the benchmark users may query.
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Distinct users, one valid token each.
    #[arg(long, default_value_t = 1000)]
    principals: usize,
    /// `iss` of the tokens (the data plane's `--token-issuer`).
    #[arg(long, default_value = "cloudlysis-gateway")]
    issuer: String,
    /// `aud` of the tokens (the data plane's `--token-audience`).
    #[arg(long, default_value = "cloudlysis")]
    audience: String,
    /// URL of the large-body upstream (`proxy-bench stream-upstream`), routed for
    /// `--stream-tenant`, of which the first user is made a member too.
    #[arg(long)]
    stream_upstream: Option<String>,
    #[arg(long, default_value = "bench-stream")]
    stream_tenant: String,
    /// Passes over the tokens for the in-process verification baseline.
    #[arg(long, default_value_t = 2)]
    verify_rounds: usize,
}

/// DER prefix of a P-256 `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1) before the
/// uncompressed point `04 || x || y`.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The SPKI PEM of a P-256 public JWK (what HAProxy's `jwt_verify` reads).
fn p256_spki_pem(x: &str, y: &str) -> anyhow::Result<String> {
    let x = URL_SAFE_NO_PAD.decode(x).context("jwk x")?;
    let y = URL_SAFE_NO_PAD.decode(y).context("jwk y")?;
    anyhow::ensure!(x.len() == 32 && y.len() == 32, "not a P-256 point");
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.push(0x04);
    der.extend_from_slice(&x);
    der.extend_from_slice(&y);
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line)?);
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    Ok(pem)
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))
}

fn principal_id(i: usize) -> String {
    format!("usr_bench{i:06}")
}

const OUTSIDER: &str = "usr_bench_outsider";

async fn setup(args: Setup) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.upstream.starts_with("http://127."),
        "the benchmark only targets loopback"
    );
    let tenant = TenantId::parse(&args.tenant)?;
    std::fs::create_dir_all(&args.out_dir)?;
    let dir = args.out_dir.as_path();
    let now = unix_now();
    let store = Store::open(&StoreConfig::Nats(NatsConfig {
        url: args.nats_url.clone(),
        prefix: args.store_prefix.clone(),
        timeout: Duration::from_secs(10),
        ..NatsConfig::default()
    }))
    .await?;

    // snapshot-signing key (the data plane trusts its public half) and the ES256
    // access-token key of the control plane's own key manager
    let (signer, manager) = gateway_tests::bench_keys(&store, dir, now).await?;
    let kid = manager
        .current_kid()
        .context("no current access-token key")?;
    let jwks_entry = store
        .kv(Bucket::Snapshots)
        .get("jwks")
        .await?
        .context("jwks document not published")?;
    let jwks = DocVerifyingKeys::new([signer.verifying_key()])
        .verify::<JwksDocument>(&jwks_entry.value, "jwks")?
        .payload;
    let current = jwks
        .keys
        .iter()
        .find(|k| k.status == KeyStatus::Current && k.jwk.kid == kid)
        .context("current key not in the jwks document")?;
    anyhow::ensure!(current.jwk.alg == "ES256", "the current key is not ES256");
    let public_pem = p256_spki_pem(
        &current.jwk.x,
        current.jwk.y.as_deref().context("EC key without y")?,
    )?;
    write(dir, "es256-public.pem", &public_pem)?;

    // routing: the tenant's projection shard is the upstream
    let mut routing = RoutingDocument {
        projection: KindRouting {
            placement: BTreeMap::from([(tenant.clone(), "bench".to_string())]),
            shards: BTreeMap::from([("bench".to_string(), vec![args.upstream.clone()])]),
            default_shard: None,
        },
        ..RoutingDocument::default()
    };
    let stream_tenant = match &args.stream_upstream {
        Some(url) => {
            anyhow::ensure!(
                url.starts_with("http://127."),
                "the benchmark only targets loopback"
            );
            let stream_tenant = TenantId::parse(&args.stream_tenant)?;
            routing
                .projection
                .placement
                .insert(stream_tenant.clone(), "bench-stream".to_string());
            routing
                .projection
                .shards
                .insert("bench-stream".to_string(), vec![url.clone()]);
            Some(stream_tenant)
        }
        None => None,
    };
    if let Some(aggregate) = &args.aggregate_upstream {
        routing.aggregate = KindRouting {
            placement: BTreeMap::from([(tenant.clone(), "bench-agg".to_string())]),
            shards: BTreeMap::from([("bench-agg".to_string(), vec![aggregate.clone()])]),
            default_shard: None,
        };
    }
    routing.validate()?;
    store
        .kv(Bucket::Snapshots)
        .put("routing", signer.sign("routing", 1, now, &routing)?)
        .await?;

    // principals: members of the tenant (query.read:*), and one outsider of another tenant
    let member_rights = builtin_role(TENANT_MEMBER).context("built-in role")?;
    let document = |id: &str, tenants: &[&TenantId]| {
        signer.sign(
            "principal",
            1,
            now,
            &EffectiveRights {
                principal_id: id.to_string(),
                disabled: false,
                tokens_valid_after: 0,
                revoked_sessions: Vec::new(),
                grants: tenants
                    .iter()
                    .map(|tenant| Grant {
                        scope: Scope::Tenant {
                            tenant: (*tenant).clone(),
                        },
                        role: TENANT_MEMBER.to_string(),
                        rights: member_rights.clone(),
                    })
                    .collect(),
            },
        )
    };
    let elsewhere = TenantId::parse(&format!("{}-elsewhere", tenant.as_str()))?;
    let mut documents = Vec::with_capacity(args.principals + 1);
    for i in 0..args.principals {
        let id = principal_id(i);
        let tenants: Vec<&TenantId> = match (&stream_tenant, i) {
            (Some(stream_tenant), 0) => vec![&tenant, stream_tenant],
            _ => vec![&tenant],
        };
        documents.push((format!("principal.{id}"), document(&id, &tenants)?));
    }
    documents.push((
        format!("principal.{OUTSIDER}"),
        document(OUTSIDER, &[&elsewhere])?,
    ));
    let authz = store.kv(Bucket::Authz);
    let written: Vec<_> = futures::stream::iter(documents)
        .map(|(key, bytes)| {
            let authz = Arc::clone(&authz);
            async move { authz.put(&key, bytes).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for result in written {
        result?;
    }

    // tokens: one per member, an hour long
    let claims = |sub: &str, iat: i64, exp: i64| AccessClaims {
        iss: args.issuer.clone(),
        aud: args.audience.clone(),
        sub: sub.to_string(),
        sid: Some(format!("ses_{}", uuid::Uuid::new_v4().simple())),
        iat,
        nbf: iat,
        exp,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        typ: ACCESS_TOKEN_TYPE.to_string(),
    };
    let mut tokens = Vec::with_capacity(args.principals);
    let mut map = String::new();
    for i in 0..args.principals {
        let id = principal_id(i);
        tokens.push(manager.sign(&claims(&id, now, now + 3600))?);
        map.push_str(&format!("{id}:{} 1\n", tenant.as_str()));
    }
    let first = tokens.first().context("--principals must be at least 2")?;
    let second = tokens.get(1).context("--principals must be at least 2")?;
    write(dir, "tokens.txt", &(tokens.join("\n") + "\n"))?;
    write(dir, "rbac.map", &map)?;

    // the refused cases
    let (signed_part, _) = first.rsplit_once('.').context("token shape")?;
    let (_, other_signature) = second.rsplit_once('.').context("token shape")?;
    let bad_signature = format!("{signed_part}.{other_signature}");
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    hs_header.typ = Some("at+jwt".into());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims(&principal_id(0), now, now + 3600),
        &jsonwebtoken::EncodingKey::from_secret(public_pem.as_bytes()),
    )?;
    let expired = manager.sign(&claims(&principal_id(0), now - 7200, now - 3600))?;
    let wrong_tenant = manager.sign(&claims(OUTSIDER, now, now + 3600))?;
    let refused = [
        ("neg-bad-signature.jwt", &bad_signature, "bad_signature"),
        ("neg-hs256.jwt", &hs256, "algorithm_mismatch"),
        ("neg-expired.jwt", &expired, "token_expired"),
    ];
    for (name, token, reason) in refused {
        let found = manager.verify_access(token, &args.issuer, &args.audience, now);
        anyhow::ensure!(
            found.as_ref().err().map(|r| r.as_str()) == Some(reason),
            "{name}: expected {reason}, got {found:?}"
        );
        write(dir, name, token)?;
    }
    for token in [first, &wrong_tenant] {
        manager
            .verify_access(token, &args.issuer, &args.audience, now)
            .map_err(|reason| anyhow::anyhow!("a valid token is refused: {reason}"))?;
    }
    write(dir, "neg-wrong-tenant.jwt", &wrong_tenant)?;

    // baseline: the token check alone, as the data plane makes it (same verifier, same build)
    let started = Instant::now();
    let mut checked = 0u32;
    for _ in 0..args.verify_rounds.max(1) {
        for token in &tokens {
            manager
                .verify_access(token, &args.issuer, &args.audience, now)
                .map_err(|reason| anyhow::anyhow!("a valid token is refused: {reason}"))?;
            checked += 1;
        }
    }
    let verify_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(checked);
    write(dir, "verify-us.txt", &format!("{verify_us:.1}\n"))?;
    write(dir, "issuer.txt", &args.issuer)?;
    write(dir, "audience.txt", &args.audience)?;
    println!(
        "proxy-bench setup: {} principals (+1 outsider), ES256 kid {kid}, \
         {verify_us:.1} µs per token check in process, files in {}",
        args.principals,
        dir.display()
    );
    Ok(())
}

/// Open-loop load at a fixed rate (`latency` subcommand): each connection has its own
/// schedule, and a request's latency runs from the moment it was due when the connection
/// was still busy with the previous answer (the server's backlog counts: no coordinated
/// omission), or from the moment it was sent when the connection was free (the
/// generator's own timer lateness, up to a millisecond with tokio's timer, does not).
#[derive(clap::Args, Debug)]
struct Latency {
    /// `host:port` on loopback.
    #[arg(long)]
    addr: std::net::SocketAddr,
    #[arg(long, default_value = "/v1/query/bench-view")]
    path: String,
    /// One bearer token per line, used in turn (none: no Authorization header).
    #[arg(long)]
    tokens: Option<PathBuf>,
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Requests per second across all connections.
    #[arg(long)]
    rate: u64,
    #[arg(long, default_value_t = 50)]
    connections: u64,
    /// Seconds measured, after `--warmup` seconds at the same rate.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
}

/// Reads one HTTP/1.1 answer with a `content-length` off `stream`; its status.
async fn read_answer(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    use tokio::io::AsyncReadExt;
    buf.clear();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        anyhow::ensure!(buf.len() < 64 * 1024, "answer head over 64 KiB");
        if stream.read_buf(buf).await? == 0 {
            anyhow::bail!("connection closed by the server");
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("answer head is not UTF-8")?;
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("answer without content-length (chunked answers are not read)")?;
    while buf.len() < head_end + length {
        if stream.read_buf(buf).await? == 0 {
            anyhow::bail!("connection closed inside the body");
        }
    }
    anyhow::ensure!(buf.len() == head_end + length, "more bytes than one answer");
    Ok(status)
}

#[derive(Default)]
struct Tally {
    /// Microseconds, measured requests only.
    latencies: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

async fn latency(args: Latency) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    anyhow::ensure!(
        args.rate > 0 && args.connections > 0,
        "--rate and --connections must be > 0"
    );
    anyhow::ensure!(
        args.addr.ip().is_loopback(),
        "load only ever targets loopback"
    );
    let tokens: Vec<String> = match &args.tokens {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        if tokens.is_empty() {
            vec![None]
        } else {
            tokens.iter().map(Some).collect()
        }
        .into_iter()
        .map(|token| {
            let auth = token
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 X-Tenant-Id: {}\r\n{auth}Content-Length: 2\r\n\r\n{{}}",
                args.path, args.addr, args.tenant
            )
            .into_bytes()
        })
        .collect(),
    );
    // Each request's due time, paced by a thread of its own that sleeps to the microsecond
    // (tokio's timers tick once a millisecond: with them, every request of a tick left
    // together, a burst of rate/1000 requests that queued behind one another in the target
    // and made its tail the load tool's). The k-th request goes on connection k mod
    // `connections`; a connection still busy with its last request takes the next one as
    // soon as it is free, its wait counted (open loop).
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    let mut turns = Vec::new();
    for conn in 0..args.connections {
        let (requests, tally) = (Arc::clone(&requests), Arc::clone(&tally));
        let (addr, connections) = (args.addr, args.connections);
        let (turn, mut dues) = tokio::sync::mpsc::unbounded_channel::<tokio::time::Instant>();
        turns.push(turn);
        tasks.push(tokio::spawn(async move {
            let mut local = Tally::default();
            let mut stream: Option<tokio::net::TcpStream> = None;
            let mut buf = Vec::with_capacity(4096);
            let mut free_at = tokio::time::Instant::now();
            let mut index = conn as usize;
            while let Some(due) = dues.recv().await {
                let sent = tokio::time::Instant::now();
                // busy past the due time: the wait was the server's, and counts
                let from = if free_at > due { due } else { sent };
                let request = &requests[index % requests.len()];
                // connections take interleaved turns through the tokens
                index += connections as usize;
                let outcome = async {
                    if stream.is_none() {
                        let s = tokio::net::TcpStream::connect(addr).await?;
                        s.set_nodelay(true)?;
                        stream = Some(s);
                    }
                    let s = stream.as_mut().context("no connection")?;
                    s.write_all(request).await?;
                    read_answer(s, &mut buf).await
                }
                .await;
                let done = tokio::time::Instant::now();
                free_at = done;
                let failed = outcome.is_err();
                if due >= measure_from {
                    match outcome {
                        Ok(status) => {
                            *local.statuses.entry(status).or_default() += 1;
                            let micros = done.duration_since(from).as_micros();
                            local.latencies.push(micros.min(u32::MAX as u128) as u32);
                        }
                        Err(err) => *local.errors.entry(err.to_string()).or_default() += 1,
                    }
                }
                if failed {
                    stream = None;
                }
            }
            if let Ok(mut all) = tally.lock() {
                all.latencies.extend(local.latencies);
                for (status, n) in local.statuses {
                    *all.statuses.entry(status).or_default() += n;
                }
                for (error, n) in local.errors {
                    *all.errors.entry(error).or_default() += n;
                }
            }
        }));
    }
    let pacer = std::thread::spawn(move || {
        let (start, end) = (start.into_std(), end.into_std());
        let mut k: u64 = 0;
        loop {
            let due = start + interval.mul_f64(k as f64);
            if due >= end {
                break;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let turn = &turns[(k % turns.len() as u64) as usize];
            if turn.send(tokio::time::Instant::from_std(due)).is_err() {
                break;
            }
            k += 1;
        }
        // the senders drop here: each connection ends after its last request
    });
    for task in tasks {
        task.await?;
    }
    pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))?;
    let mut tally = std::mem::take(&mut *tally.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    tally.latencies.sort_unstable();
    let pick = |q: f64| -> f64 {
        let l = &tally.latencies;
        if l.is_empty() {
            return 0.0;
        }
        let at = ((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1;
        l[at] as f64 / 1000.0
    };
    let measured = tally.latencies.len() as u64 + tally.errors.values().sum::<u64>();
    println!(
        "{}",
        serde_json::json!({
            "rate": args.rate,
            "connections": args.connections,
            "duration_s": args.duration,
            "requests": measured,
            "achieved_rps": measured as f64 / args.duration as f64,
            "p50_ms": pick(0.50),
            "p90_ms": pick(0.90),
            "p99_ms": pick(0.99),
            "p999_ms": pick(0.999),
            "max_ms": pick(1.0),
            "statuses": tally.statuses,
            "errors": tally.errors,
        })
    );
    Ok(())
}

/// Closed-loop `SubmitCommand` calls (`grpc` subcommand): `--streams` callers, each
/// sending its next command as soon as the last one is answered, over `--connections`
/// HTTP/2 connections, tokens in rotation, a fresh `command_id` each time.
#[derive(clap::Args, Debug)]
struct Grpc {
    /// `http://host:port` on loopback.
    #[arg(long)]
    target: String,
    /// One bearer token per line, used in turn.
    #[arg(long)]
    tokens: PathBuf,
    #[arg(long, default_value = "bench")]
    tenant: String,
    #[arg(long, default_value_t = 50)]
    streams: usize,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds measured, after `--warmup` seconds of the same load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
}

async fn grpc(args: Grpc) -> anyhow::Result<()> {
    use gateway_proto::aggregate::v1::SubmitCommandRequest;
    use gateway_proto::aggregate::v1::command_service_client::CommandServiceClient;
    use tonic::metadata::MetadataValue;
    let url: axum::http::Uri = args.target.parse().context("--target")?;
    anyhow::ensure!(
        matches!(url.host(), Some("127.0.0.1" | "localhost" | "[::1]")),
        "load only ever targets loopback"
    );
    anyhow::ensure!(
        args.streams > 0 && args.connections > 0,
        "--streams and --connections must be > 0"
    );
    let tokens: Vec<MetadataValue<tonic::metadata::Ascii>> = std::fs::read_to_string(&args.tokens)
        .with_context(|| format!("reading {}", args.tokens.display()))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!tokens.is_empty(), "no tokens");
    let tokens = Arc::new(tokens);
    let tenant: MetadataValue<tonic::metadata::Ascii> = args.tenant.parse()?;
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(
            tonic::transport::Endpoint::from_shared(args.target.clone())?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", args.target))?,
        );
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let stop = measure_from + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for stream in 0..args.streams {
        let mut client = CommandServiceClient::new(channels[stream % channels.len()].clone());
        let (tokens, tenant) = (Arc::clone(&tokens), tenant.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut n = stream;
            loop {
                let sent = Instant::now();
                if sent >= stop {
                    return tally;
                }
                let mut request = tonic::Request::new(SubmitCommandRequest {
                    aggregate_type: "order".into(),
                    aggregate_id: format!("bench-{stream}"),
                    command_type: "Touch".into(),
                    command_id: uuid::Uuid::new_v4().to_string(),
                    payload: b"{}".to_vec(),
                    content_type: "application/json".into(),
                    ..Default::default()
                });
                request
                    .metadata_mut()
                    .insert("authorization", tokens[n % tokens.len()].clone());
                request.metadata_mut().insert("x-tenant-id", tenant.clone());
                n += 1;
                let outcome = client.submit_command(request).await;
                if sent < measure_from {
                    continue;
                }
                match outcome {
                    Ok(_) => {
                        tally
                            .latencies
                            .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        *tally.statuses.entry(0).or_default() += 1;
                    }
                    Err(status) => {
                        *tally
                            .errors
                            .entry(format!("{:?}", status.code()))
                            .or_default() += 1;
                    }
                }
            }
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let tally = task.await?;
        all.latencies.extend(tally.latencies);
        for (code, count) in tally.errors {
            *all.errors.entry(code).or_default() += count;
        }
    }
    all.latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.latencies.is_empty() {
            return 0.0;
        }
        let at =
            ((all.latencies.len() as f64 * p).ceil() as usize).clamp(1, all.latencies.len()) - 1;
        all.latencies[at] as f64 / 1000.0
    };
    println!(
        "{}",
        serde_json::json!({
            "ok": all.latencies.len(),
            "rps": all.latencies.len() as f64 / args.duration as f64,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "errors": all.errors,
        })
    );
    Ok(())
}

async fn stream_upstream(args: StreamUpstream) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "the benchmark only targets loopback"
    );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(async move {
            if let Err(err) = serve_streams(socket, args.bytes).await {
                eprintln!("stream upstream: {err}");
            }
        });
    }
}

/// One kept-alive connection of `proxy-bench stream-upstream`.
async fn serve_streams(mut socket: tokio::net::TcpStream, bytes: u64) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::with_capacity(1 << 20);
    async fn fill(socket: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<usize> {
        buf.reserve(1 << 20);
        Ok(socket.read_buf(buf).await?)
    }
    /// Reads and drops the next `left` bytes.
    async fn skip(
        socket: &mut tokio::net::TcpStream,
        buf: &mut Vec<u8>,
        mut left: u64,
    ) -> anyhow::Result<()> {
        while left > 0 {
            if buf.is_empty() {
                anyhow::ensure!(fill(socket, buf).await? > 0, "cut");
            }
            let take = (buf.len() as u64).min(left) as usize;
            buf.drain(..take);
            left -= take as u64;
        }
        Ok(())
    }
    let piece = vec![b'x'; 1 << 20];
    loop {
        // the head
        let (path, length, chunked, head) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut request = httparse::Request::new(&mut fields);
            if let httparse::Status::Complete(head) = request.parse(&buf)? {
                let field = |name: &str| {
                    request
                        .headers
                        .iter()
                        .find(|f| f.name.eq_ignore_ascii_case(name))
                        .map(|f| String::from_utf8_lossy(f.value).to_string())
                };
                let length: u64 = field("content-length").map_or(Ok(0), |v| v.parse())?;
                let chunked = field("transfer-encoding").is_some();
                break (
                    request.path.unwrap_or("").to_string(),
                    length,
                    chunked,
                    head,
                );
            }
            if fill(&mut socket, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        buf.drain(..head);
        // the body, read and dropped
        let mut received = 0u64;
        if chunked {
            loop {
                let line = loop {
                    if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                        break end;
                    }
                    anyhow::ensure!(fill(&mut socket, &mut buf).await? > 0, "cut");
                };
                let size = u64::from_str_radix(
                    std::str::from_utf8(&buf[..line])?
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )?;
                buf.drain(..line + 2);
                // the chunk and its CRLF
                skip(&mut socket, &mut buf, size + 2).await?;
                received += size;
                if size == 0 {
                    break;
                }
            }
        } else {
            skip(&mut socket, &mut buf, length).await?;
            received = length;
        }
        // the answer
        match path.as_str() {
            "/v1/query/download" => {
                socket
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {bytes}\r\n\r\n")
                            .as_bytes(),
                    )
                    .await?;
                let mut left = bytes;
                while left > 0 {
                    let take = left.min(piece.len() as u64) as usize;
                    socket.write_all(&piece[..take]).await?;
                    left -= take as u64;
                }
            }
            "/v1/query/download-chunked" => {
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await?;
                let mut left = bytes;
                while left > 0 {
                    let take = left.min(piece.len() as u64) as usize;
                    socket.write_all(format!("{take:x}\r\n").as_bytes()).await?;
                    socket.write_all(&piece[..take]).await?;
                    socket.write_all(b"\r\n").await?;
                    left -= take as u64;
                }
                socket.write_all(b"0\r\n\r\n").await?;
            }
            _ => {
                let body = format!("{{\"received\":{received}}}");
                socket
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                            .as_bytes(),
                    )
                    .await?;
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Setup(setup_args) => setup(setup_args).await,
        Command::Latency(latency_args) => latency(latency_args).await,
        Command::Grpc(grpc_args) => grpc(grpc_args).await,
        Command::StreamUpstream(stream_args) => stream_upstream(stream_args).await,
    }
}
