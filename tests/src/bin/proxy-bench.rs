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
/// generator's own lateness, its timer slack of up to 50 µs included, does not).
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

/// The status of the one HTTP/1.1 answer (with a `content-length`) in `buf`, and whether
/// it closes the connection (`connection: close`), once `buf` holds all of it; `None`
/// while bytes are missing.
fn parse_answer(buf: &[u8]) -> anyhow::Result<Option<(u16, bool)>> {
    let Some(head_end) = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
    else {
        anyhow::ensure!(buf.len() < 64 * 1024, "answer head over 64 KiB");
        return Ok(None);
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
    anyhow::ensure!(buf.len() <= head_end + length, "more bytes than one answer");
    let close = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("connection")
                && value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("close"))
        })
    });
    Ok((buf.len() == head_end + length).then_some((status, close)))
}

#[derive(Default)]
struct Tally {
    /// Microseconds, measured requests only.
    latencies: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

/// One connection of the `latency` load: its requests due and not yet sent, and the one
/// on the wire.
struct LoadConn {
    stream: Option<std::net::TcpStream>,
    waiting: std::collections::VecDeque<Instant>,
    /// The request on the wire: when it was due, when its latency counts from, which
    /// request it is and how much of it is written.
    on_wire: Option<(Instant, Instant, usize, usize)>,
    /// When the last answer ended (a request due before that waited for it).
    free_at: Instant,
    /// The next request's index (connections take interleaved turns through the tokens).
    next: usize,
    buf: Vec<u8>,
}

/// The `latency` load: one thread and one epoll set, whose wait ends when the next
/// request is due (within 50 µs). The k-th request is due at start + k / rate and goes on
/// connection k mod `connections`; a connection still busy with its last answer sends it
/// as soon as it is free, its wait counted (open loop). With tokio's timers, which tick
/// once a millisecond, every request of a tick left together, a burst that queued behind
/// itself in the target; with a pacing thread of its own, each request cost 2 more
/// context switches on the core the load tool shares with the upstream.
struct Load<'a> {
    epoll: rustix::fd::OwnedFd,
    addr: std::net::SocketAddr,
    requests: &'a [Vec<u8>],
    measure_from: Instant,
    conns: Vec<LoadConn>,
    tally: Tally,
}

impl Load<'_> {
    fn watch(&self, conn: usize, writable: bool) -> anyhow::Result<()> {
        use rustix::event::epoll;
        let stream = self.conns[conn].stream.as_ref().context("no connection")?;
        let flags = if writable {
            epoll::EventFlags::IN | epoll::EventFlags::OUT
        } else {
            epoll::EventFlags::IN
        };
        epoll::modify(
            &self.epoll,
            stream,
            epoll::EventData::new_u64(conn as u64),
            flags,
        )?;
        Ok(())
    }

    /// Sends the connection's next waiting requests while it is free (a request that
    /// fails at once makes way for the next).
    fn start(&mut self, conn: usize) {
        use rustix::event::epoll;
        while self.conns[conn].on_wire.is_none() {
            let Some(due) = self.conns[conn].waiting.pop_front() else {
                return;
            };
            let now = Instant::now();
            let stride = self.conns.len();
            let c = &mut self.conns[conn];
            // busy past the due time: the wait was the server's, and counts
            let from = if c.free_at > due { due } else { now };
            let index = c.next % self.requests.len();
            c.next += stride;
            c.on_wire = Some((due, from, index, 0));
            if c.stream.is_none() {
                let opened = std::net::TcpStream::connect(self.addr).and_then(|s| {
                    s.set_nodelay(true)?;
                    s.set_nonblocking(true)?;
                    epoll::add(
                        &self.epoll,
                        &s,
                        epoll::EventData::new_u64(conn as u64),
                        epoll::EventFlags::IN,
                    )?;
                    Ok(s)
                });
                match opened {
                    Ok(s) => c.stream = Some(s),
                    Err(err) => {
                        self.finish(conn, Err(err.into()));
                        continue;
                    }
                }
            }
            self.write(conn);
        }
    }

    /// Writes what is left of the request on the wire, and waits for the socket to take
    /// more when it is full.
    fn write(&mut self, conn: usize) {
        use std::io::Write;
        let requests = self.requests;
        let c = &mut self.conns[conn];
        let (Some((_, _, index, written)), Some(stream)) = (c.on_wire.as_mut(), c.stream.as_mut())
        else {
            return;
        };
        let request = &requests[*index];
        let failed: Option<anyhow::Error> = loop {
            if *written == request.len() {
                break None;
            }
            match stream.write(&request[*written..]) {
                Ok(0) => break Some(anyhow::anyhow!("write returned 0")),
                Ok(n) => *written += n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    break self.watch(conn, true).err();
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => break Some(err.into()),
            }
        };
        if let Some(err) = failed {
            self.finish(conn, Err(err));
        }
    }

    /// Reads what the connection has; ends the request on the wire once its answer is
    /// whole.
    fn read(&mut self, conn: usize) {
        use std::io::Read;
        let c = &mut self.conns[conn];
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 16 * 1024];
        // one read a readiness event: what it leaves, the level-triggered epoll reports
        // again (a second read to see it empty would cost a system call every answer)
        let outcome = loop {
            match stream.read(&mut chunk) {
                Ok(0) if c.on_wire.is_some() => {
                    break Some(Err(anyhow::anyhow!("connection closed by the server")));
                }
                Ok(0) => {
                    // an idle connection closed: the next request opens another
                    c.stream = None;
                    c.buf.clear();
                    return;
                }
                Ok(n) => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    break None;
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break None,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => break Some(Err(err.into())),
            }
        };
        let outcome = outcome.or_else(|| match c.on_wire {
            None if !c.buf.is_empty() => Some(Err(anyhow::anyhow!("bytes with no request"))),
            None => None,
            Some(_) => parse_answer(&c.buf).transpose().map(|answer| {
                answer.map(|(status, close)| {
                    if close {
                        // the server closes it: the next request opens another
                        c.stream = None;
                    }
                    status
                })
            }),
        });
        if let Some(outcome) = outcome {
            self.finish(conn, outcome);
        }
    }

    /// Ends the request on the wire (or drops a connection that sent bytes unasked); the
    /// caller starts the next.
    fn finish(&mut self, conn: usize, outcome: anyhow::Result<u16>) {
        let done = Instant::now();
        let c = &mut self.conns[conn];
        c.buf.clear();
        c.free_at = done;
        let measured = match c.on_wire.take() {
            Some((due, from, _, _)) => (due >= self.measure_from).then_some(from),
            None => None,
        };
        if outcome.is_err() {
            // closing the socket takes it out of the epoll set
            c.stream = None;
        }
        if let Some(from) = measured {
            match outcome {
                Ok(status) => {
                    *self.tally.statuses.entry(status).or_default() += 1;
                    let micros = done.duration_since(from).as_micros();
                    self.tally
                        .latencies
                        .push(micros.min(u32::MAX as u128) as u32);
                }
                Err(err) => *self.tally.errors.entry(err.to_string()).or_default() += 1,
            }
        }
    }

    fn busy(&self) -> bool {
        self.conns
            .iter()
            .any(|c| c.on_wire.is_some() || !c.waiting.is_empty())
    }
}

fn latency(args: Latency) -> anyhow::Result<()> {
    println!("{}", measure_latency(&args)?);
    Ok(())
}

/// Runs the `latency` load; its figures as JSON.
fn measure_latency(args: &Latency) -> anyhow::Result<serde_json::Value> {
    use rustix::event::Timespec;
    use rustix::event::epoll;
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
    let requests: Vec<Vec<u8>> = if tokens.is_empty() {
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
    .collect();
    // the k-th request's offset from the start, in whole nanoseconds: exact, so the
    // requests due in the measured part are exactly rate x duration
    let due_after = |k: u64| {
        Duration::from_nanos((u128::from(k) * 1_000_000_000 / u128::from(args.rate)) as u64)
    };
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let connections = usize::try_from(args.connections).context("--connections")?;
    let mut load = Load {
        epoll: epoll::create(epoll::CreateFlags::CLOEXEC).context("epoll_create")?,
        addr: args.addr,
        requests: &requests,
        measure_from,
        conns: (0..connections)
            .map(|conn| LoadConn {
                stream: None,
                waiting: Default::default(),
                on_wire: None,
                free_at: start,
                next: conn,
                buf: Vec::with_capacity(4096),
            })
            .collect(),
        tally: Tally::default(),
    };
    // what is still on the wire this long after the end counts as unanswered
    let give_up = end + Duration::from_secs(10);
    let mut k: u64 = 0;
    let mut events = Vec::with_capacity(connections);
    loop {
        // every request due by now
        let now = Instant::now();
        let mut due = start + due_after(k);
        while due <= now && due < end {
            let conn = (k % connections as u64) as usize;
            load.conns[conn].waiting.push_back(due);
            load.start(conn);
            k += 1;
            due = start + due_after(k);
        }
        let pacing = due < end;
        if !pacing && !load.busy() {
            break;
        }
        if now >= give_up {
            for conn in 0..connections {
                load.conns[conn].waiting.clear();
                if load.conns[conn].on_wire.is_some() {
                    load.finish(conn, Err(anyhow::anyhow!("no answer by the end")));
                }
            }
            break;
        }
        // epoll's own timeout ends the wait when the next request is due: to the
        // nanosecond (epoll_pwait2), within the kernel's timer slack (50 µs), which merges
        // wake-ups that close (exact wake-ups cost a timer interrupt each: 8 µs a request
        // more on the core the load tool shares with the upstream)
        let left = if pacing { due - now } else { give_up - now };
        let timeout = Timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as _,
        };
        events.clear();
        match epoll::wait(
            &load.epoll,
            rustix::buffer::spare_capacity(&mut events),
            Some(&timeout),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(anyhow::Error::from(err).context("epoll_wait")),
        }
        for event in &events {
            // copied out: the kernel's record is packed
            let (conn, flags) = (event.data.u64() as usize, { event.flags });
            if flags.contains(epoll::EventFlags::OUT) {
                if let Err(err) = load.watch(conn, false) {
                    load.finish(conn, Err(err));
                    load.start(conn);
                    continue;
                }
                load.write(conn);
            }
            if flags
                .intersects(epoll::EventFlags::IN | epoll::EventFlags::ERR | epoll::EventFlags::HUP)
            {
                load.read(conn);
            }
            load.start(conn);
        }
    }
    let mut tally = load.tally;
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
    Ok(serde_json::json!({
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
    }))
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
        Command::Latency(latency_args) => latency(latency_args),
        Command::Grpc(grpc_args) => grpc(grpc_args).await,
        Command::StreamUpstream(stream_args) => stream_upstream(stream_args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn an_answer_is_read_when_whole_and_refused_when_it_overflows() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(),
            None
        );
        let whole = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_answer(&whole[..whole.len() - 1]).unwrap(), None);
        assert_eq!(parse_answer(whole).unwrap(), Some((403, false)));
        let closing =
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_answer(closing).unwrap(), Some((200, true)));
        let more = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP";
        assert!(parse_answer(more).is_err());
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_answer(chunked).is_err());
        assert!(parse_answer(b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n").is_err());
    }

    /// A loopback server answering each request (a head and a 2-byte body) with 200 after
    /// `delay`, closing the connection after each answer when `close`; counts requests.
    fn server(delay: Duration, close: bool) -> (std::net::SocketAddr, Arc<AtomicU64>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&served);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // one request: its head, then the 2-byte body it announces
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n")
                            || buf.len()
                                < buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 6
                        {
                            match stream.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 6;
                        buf.drain(..end);
                        std::thread::sleep(delay);
                        counter.fetch_add(1, Ordering::SeqCst);
                        let connection = if close { "close" } else { "keep-alive" };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nConnection: {connection}\r\n\
                             Content-Length: 2\r\n\r\n{{}}"
                        );
                        if stream.write_all(answer.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (addr, served)
    }

    fn load(addr: std::net::SocketAddr, rate: u64, connections: u64) -> Latency {
        Latency {
            addr,
            path: "/v1/query/bench-view".into(),
            tokens: None,
            tenant: "bench".into(),
            rate,
            connections,
            duration: 1,
            warmup: 1,
        }
    }

    #[test]
    fn every_request_due_is_sent_once_and_answered() {
        let (addr, served) = server(Duration::ZERO, false);
        let figures = measure_latency(&load(addr, 2_000, 8)).unwrap();
        // due in the measured second: exactly rate x duration; all of them answered 200
        assert_eq!(figures["requests"], 2_000);
        assert_eq!(figures["statuses"]["200"], 2_000);
        assert_eq!(figures["errors"], serde_json::json!({}));
        // the warm-up's requests were sent too, and nothing more
        assert_eq!(served.load(Ordering::SeqCst), 4_000);
    }

    #[test]
    fn a_slow_server_is_charged_the_wait_of_requests_queued_behind_it() {
        // one connection, a request due every 10 ms, each answer taking 20 ms: each
        // request waits for the ones before it, so the wait grows through the run and
        // counts (open loop). A tool that timed from the send only would see 20 ms.
        let (addr, _) = server(Duration::from_millis(20), false);
        let figures = measure_latency(&load(addr, 100, 1)).unwrap();
        assert_eq!(figures["errors"], serde_json::json!({}));
        let p50 = figures["p50_ms"].as_f64().unwrap();
        assert!(
            p50 > 200.0,
            "the queue's wait was not counted: p50 {p50} ms"
        );
    }

    #[test]
    fn a_connection_the_server_closes_is_opened_again() {
        let (addr, served) = server(Duration::ZERO, true);
        let figures = measure_latency(&load(addr, 200, 2)).unwrap();
        assert_eq!(figures["statuses"]["200"], 200);
        assert_eq!(figures["errors"], serde_json::json!({}));
        assert_eq!(served.load(Ordering::SeqCst), 400);
    }
}
