//! Setup of the side-by-side benchmark of the data plane against HAProxy + `jwt_verify`
//! (scripts/bench-proxy.sh, /work/shared/bench/PROTOCOL.md): writes into a fresh store the
//! signed documents a data plane follows (`routing` to the upstream, `jwks` with an ES256
//! key, one `principal.<id>` per benchmark user) and the files both proxies and the load
//! generator read (verify key, ES256 public key as SPKI PEM, HAProxy map, tokens).
//! Bounded in count; touches only the given NATS server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use clap::{Parser, Subcommand};
use control_plane::KeyManager;
use control_plane::keys::{Kek, KeySettings, SigningAlg};
use futures::StreamExt;
use gateway_shared::authz::{EffectiveRights, Grant, Scope, TENANT_MEMBER, TenantId, builtin_role};
use gateway_shared::jwks::{JwksDocument, KeyStatus};
use gateway_shared::routing::{KindRouting, RoutingDocument};
use gateway_shared::signed::{DocSigningKey, DocVerifyingKeys};
use gateway_shared::store::nats::NatsConfig;
use gateway_shared::store::{Bucket, Store, StoreConfig};
use gateway_shared::token::{ACCESS_TOKEN_TYPE, AccessClaims};
use gateway_shared::unix_now;

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

    // snapshot-signing key: the data plane trusts its public half
    let signer = Arc::new(DocSigningKey::generate());
    write(
        dir,
        "snapshot-verify.pem",
        &signer.verifying_key().to_public_key_pem()?,
    )?;

    // the ES256 access-token key, created and published (`jwks`) by the control plane's own
    // key manager, so tokens are minted exactly as in production
    let manager = KeyManager::new(
        store.clone(),
        Arc::new(Kek::generate()),
        KeySettings {
            alg: SigningAlg::Es256,
            token_ttl: Duration::from_secs(3600),
            rotation_interval: None,
        },
        Arc::clone(&signer),
    );
    manager.start(now).await?;
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
    let routing = RoutingDocument {
        projection: KindRouting {
            placement: BTreeMap::from([(tenant.clone(), "bench".to_string())]),
            shards: BTreeMap::from([("bench".to_string(), vec![args.upstream.clone()])]),
            default_shard: None,
        },
        ..RoutingDocument::default()
    };
    routing.validate()?;
    store
        .kv(Bucket::Snapshots)
        .put("routing", signer.sign("routing", 1, now, &routing)?)
        .await?;

    // principals: members of the tenant (query.read:*), and one outsider of another tenant
    let member_rights = builtin_role(TENANT_MEMBER).context("built-in role")?;
    let document = |id: &str, tenant: &TenantId| {
        signer.sign(
            "principal",
            1,
            now,
            &EffectiveRights {
                principal_id: id.to_string(),
                disabled: false,
                tokens_valid_after: 0,
                grants: vec![Grant {
                    scope: Scope::Tenant {
                        tenant: tenant.clone(),
                    },
                    role: TENANT_MEMBER.to_string(),
                    rights: member_rights.clone(),
                }],
            },
        )
    };
    let elsewhere = TenantId::parse(&format!("{}-elsewhere", tenant.as_str()))?;
    let mut documents = Vec::with_capacity(args.principals + 1);
    for i in 0..args.principals {
        let id = principal_id(i);
        documents.push((format!("principal.{id}"), document(&id, &tenant)?));
    }
    documents.push((
        format!("principal.{OUTSIDER}"),
        document(OUTSIDER, &elsewhere)?,
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
            found.as_ref().err() == Some(&reason),
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Setup(setup_args) => setup(setup_args).await,
    }
}
