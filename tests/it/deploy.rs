//! T9.1: the Swarm stack file and the Dockerfiles keep the settings the HA design relies
//! on, so they cannot drift silently; the images' HEALTHCHECK command works.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_norway::Value;

fn repo_file(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

fn stack() -> Value {
    let mut stack: Value = serde_norway::from_str(&repo_file("swarm/stacks/platform.yml"))
        .expect("the stack file is valid YAML");
    // `<<: *anchor` merge keys, as docker stack deploy applies them
    stack.apply_merge().unwrap();
    stack
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    // long syntax: {source: …}
                    other => other["source"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn env<'a>(service: &'a Value, name: &str) -> Option<&'a str> {
    service["environment"][name].as_str()
}

#[test]
fn the_stack_keeps_two_spread_replicas_start_first_updates_and_checked_health() {
    let stack = stack();
    let services = &stack["services"];
    let declared_secrets: BTreeSet<String> = stack["secrets"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let declared_configs: BTreeSet<String> = stack["configs"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    for (name, binary, port) in [
        ("gateway-control", "control-plane", "8090"),
        ("gateway-data", "data-plane", "8080"),
    ] {
        let service = &services[name];
        assert!(service.is_mapping(), "{name} missing");
        let deploy = &service["deploy"];
        assert_eq!(deploy["replicas"].as_u64(), Some(2), "{name}");
        assert_eq!(
            deploy["placement"]["max_replicas_per_node"].as_u64(),
            Some(1),
            "{name}"
        );
        assert_eq!(deploy["update_config"]["order"], "start-first", "{name}");
        assert_eq!(
            deploy["update_config"]["failure_action"], "rollback",
            "{name}"
        );
        assert!(deploy["rollback_config"].is_mapping(), "{name}");
        assert_eq!(deploy["restart_policy"]["condition"], "any", "{name}");
        // the healthcheck probes this plane's own /live (not /ready: Swarm replaces a task
        // failing it, and readiness drops in a NATS outage) on the port it listens on
        let test = strings(&service["healthcheck"]["test"]);
        assert_eq!(test[0], "CMD");
        assert!(test[1].ends_with(binary), "{name}: {test:?}");
        assert_eq!(test[2], "healthcheck");
        let url = test.last().unwrap();
        assert!(url.ends_with(&format!(":{port}/live")), "{name}: {url}");
        let listen = env(
            service,
            if binary == "data-plane" {
                "GATEWAY_DATA_LISTEN"
            } else {
                "GATEWAY_CONTROL_LISTEN"
            },
        )
        .unwrap();
        assert!(listen.ends_with(&format!(":{port}")), "{name}: {listen}");
        assert!(
            strings(&service["networks"]).contains(&"gateway".to_string()),
            "{name}"
        );
        // a drain shorter than the grace period
        assert!(service["stop_grace_period"].as_str().is_some(), "{name}");
        // NATS with replicated buckets, credentials from a secret
        assert_eq!(env(service, "GATEWAY_STORE"), Some("nats"));
        assert_eq!(env(service, "GATEWAY_STORE_REPLICAS"), Some("3"));
        assert_eq!(
            env(service, "GATEWAY_NATS_URL")
                .unwrap()
                .matches("nats://")
                .count(),
            3
        );
        // every *_FILE under /run/secrets names a secret the service mounts, and every
        // secret and config it mounts is declared (external: created by the operator)
        let secrets = strings(&service["secrets"]);
        let configs = strings(&service["configs"]);
        for (key, value) in service["environment"].as_mapping().unwrap() {
            let (key, value) = (key.as_str().unwrap(), value.as_str().unwrap_or_default());
            if let Some(secret) = value.strip_prefix("/run/secrets/") {
                assert!(key.ends_with("_FILE"), "{name}: {key}");
                assert!(
                    secrets.contains(&secret.to_string()),
                    "{name}: {key} → {secret}"
                );
            }
        }
        for secret in &secrets {
            assert!(declared_secrets.contains(secret), "{name}: {secret}");
            assert_eq!(stack["secrets"][secret.as_str()]["external"], true);
        }
        for config in &configs {
            assert!(declared_configs.contains(config), "{name}: {config}");
        }
        assert!(
            secrets.contains(&"gateway_nats_creds".to_string()),
            "{name}"
        );
        assert_eq!(
            env(service, "GATEWAY_NATS_CREDS_FILE"),
            Some("/run/secrets/gateway_nats_creds")
        );
    }
    // the control plane's secrets: signing key, KEK, OIDC client secret
    let control = strings(&services["gateway-control"]["secrets"]);
    for secret in [
        "gateway_snapshot_signing_key",
        "gateway_key_encryption_key",
        "gateway_google_client_secret",
    ] {
        assert!(control.contains(&secret.to_string()), "{secret}");
    }
    // the data plane: verification key as a config, HTTP and gRPC published, its mirror
    // cache on a volume
    let data = &services["gateway-data"];
    assert_eq!(
        strings(&data["configs"]),
        vec!["gateway_snapshot_verify_key".to_string()]
    );
    assert!(
        env(data, "GATEWAY_SNAPSHOT_VERIFY_KEY_FILE")
            .is_some_and(|p| data["configs"][0]["target"].as_str() == Some(p))
    );
    let published: BTreeSet<u64> = data["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["published"].as_u64())
        .collect();
    assert_eq!(published, BTreeSet::from([8080, 8081]));
    assert!(
        env(data, "GATEWAY_DATA_GRPC_LISTEN")
            .unwrap()
            .ends_with(":8081")
    );
    assert!(env(data, "GATEWAY_MIRROR_CACHE_FILE").is_some());
    assert!(env(data, "GATEWAY_CONTROL_PLANE_URL").is_some());
    // never published: the control plane and the ops listeners
    assert!(services["gateway-control"]["ports"].is_null());
    // a three-node NATS cluster on the overlay, one node each
    for n in 1..=3 {
        let nats = &services[format!("nats-{n}").as_str()];
        assert!(
            nats["image"].as_str().unwrap().starts_with("nats:2."),
            "nats-{n}"
        );
        assert_eq!(nats["deploy"]["replicas"].as_u64(), Some(1));
        assert!(strings(&nats["networks"]).contains(&"gateway".to_string()));
    }
    assert_eq!(stack["networks"]["gateway"]["driver"], "overlay");
}

#[test]
fn the_images_run_as_non_root_with_build_metadata_and_a_healthcheck() {
    let dockerfile = repo_file("Dockerfile");
    // base images are arguments (a machine with no registry passes its own), public by default
    assert!(dockerfile.contains("ARG RUST_IMAGE=rust:"));
    assert!(dockerfile.contains("ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot"));
    assert!(dockerfile.contains("FROM ${RUST_IMAGE} AS build"));
    // one build of the workspace for both images; offline with a vendor/ directory
    assert!(dockerfile.contains("cargo build --release --locked -p control-plane -p data-plane"));
    assert!(dockerfile.contains("directory = \"vendor\""));
    assert!(dockerfile.contains("GATEWAY_GIT_SHA=${GIT_SHA}"));
    for (target, binary, port) in [
        ("control", "control-plane", "8090"),
        ("data", "data-plane", "8080"),
    ] {
        let stage: String = dockerfile
            .split("\nFROM ")
            .find(|s| s.starts_with(&format!("${{RUNTIME_IMAGE}} AS {target}\n")))
            .unwrap_or_else(|| panic!("no {target} stage"))
            .to_string();
        assert!(stage.contains("USER 65532:65532"), "{target}");
        assert!(stage.contains("ARG GIT_SHA"), "{target}");
        let healthcheck = stage
            .lines()
            .skip_while(|l| !l.starts_with("HEALTHCHECK"))
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            healthcheck.contains(&format!("\"/usr/local/bin/{binary}\", \"healthcheck\"")),
            "{target}: {healthcheck}"
        );
        assert!(
            healthcheck.contains(&format!(":{port}/live")),
            "{target}: {healthcheck}"
        );
        assert!(
            stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")),
            "{target}"
        );
    }
}

/// `<plane> healthcheck` exits 0 when its URL answers 200 and 1 otherwise; `/live` stays
/// 200 through a NATS outage that turns `/ready` to 503 (Swarm must not replace replicas:
/// new ones could not do better without the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthcheck_command_reflects_liveness_not_readiness() {
    let mut nats = gateway_tests::nats::NatsServer::start();
    let keys = gateway_tests::SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    let (_control, base) = gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, &[]);
    // a short staleness bound, so its /ready turns 503 within the test (it stays ready
    // while its mirrors serve: planes::readiness)
    let (_data, data) =
        gateway_tests::spawn_data_plane(&nats.url(), &prefix, &keys, &["--max-staleness", "1s"]);
    let client = reqwest::Client::new();
    for url in [format!("{base}/ready"), format!("{}/ready", data.http)] {
        gateway_tests::process::wait_for_status(
            &client,
            &url,
            200,
            std::time::Duration::from_secs(30),
        )
        .await;
    }
    let healthcheck = |binary: &str, url: &str| {
        std::process::Command::new(gateway_tests::process::bin_path(binary))
            .args(["healthcheck", "--url", url])
            .output()
            .unwrap()
    };
    assert!(
        healthcheck("control-plane", &format!("{base}/ready"))
            .status
            .success()
    );
    assert!(
        healthcheck("data-plane", &format!("{}/ready", data.http))
            .status
            .success()
    );
    // not ready (a 404 stands in for any non-200), nothing listening, not a URL
    let missing = healthcheck("data-plane", &format!("{}/nope", data.http));
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let dead = healthcheck("control-plane", "http://127.0.0.1:9/ready");
    assert_eq!(dead.status.code(), Some(1));
    assert_eq!(
        healthcheck("data-plane", "ftp://x/ready").status.code(),
        Some(1)
    );
    // NATS goes away: the control plane turns not ready, the data plane once past its
    // --max-staleness; both stay live
    nats.stop();
    for url in [format!("{base}/ready"), format!("{}/ready", data.http)] {
        gateway_tests::process::wait_for_status(
            &client,
            &url,
            503,
            std::time::Duration::from_secs(30),
        )
        .await;
    }
    for (binary, url) in [("control-plane", &base), ("data-plane", &data.http)] {
        assert!(
            !healthcheck(binary, &format!("{url}/ready"))
                .status
                .success(),
            "{binary}"
        );
        let live = healthcheck(binary, &format!("{url}/live"));
        assert!(live.status.success(), "{binary}: {live:?}");
        let answer = client.get(format!("{url}/live")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(
            answer.json::<serde_json::Value>().await.unwrap()["status"],
            "live"
        );
    }
}

/// The data plane's ops views (`/admin/routing`, `/admin/upstreams`) take the ops token
/// when one is set; off loopback, the data plane does not start without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_views_need_the_ops_token_off_loopback() {
    let nats = gateway_tests::nats::NatsServer::start();
    let keys = gateway_tests::SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    let dir = tempfile::tempdir().unwrap();
    let token = "ops-token-0123456789-abcdefghijklmnop";
    let token_file = dir.path().join("ops-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let token_path = token_file.to_str().unwrap();
    let (_data, data) = gateway_tests::spawn_data_plane(
        &nats.url(),
        &prefix,
        &keys,
        &["--ops-token-file", token_path],
    );
    let client = reqwest::Client::new();
    for view in ["/admin/routing", "/admin/upstreams"] {
        let url = format!("{}{view}", data.ops);
        let none = client.get(&url).send().await.unwrap();
        assert_eq!(none.status(), 401, "{view}");
        assert!(none.headers().contains_key("www-authenticate"), "{view}");
        let body: serde_json::Value = none.json().await.unwrap();
        assert_eq!(body["error"]["code"], "missing_token", "{view}");
        let wrong = client
            .get(&url)
            .bearer_auth("ops-token-0123456789-abcdefghijklmnoX")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{view}");
        let body: serde_json::Value = wrong.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token", "{view}");
        assert!(!body.to_string().contains(token));
        // past the token: the view itself (no routing published yet: 503 not_ready)
        let good = client.get(&url).bearer_auth(token).send().await.unwrap();
        let want = if view == "/admin/routing" { 503 } else { 200 };
        assert_eq!(good.status(), want, "{view}");
    }
    // probes and metrics need no token
    for (probe, want) in [
        ("/health", 200),
        ("/metrics", 200),
        ("/version", 200),
        // not ready yet (nothing published): the probes say so, not 401
        ("/live", 503),
        ("/ready", 503),
    ] {
        let answer = client
            .get(format!("{}{probe}", data.ops))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), want, "{probe}");
    }
    // refused at start: an ops listener off loopback without a token, a short token
    let short = dir.path().join("short");
    std::fs::write(&short, "too-short").unwrap();
    let verify = keys.verify_path();
    for (extra, wanted) in [
        (vec![], "--ops-token-file"),
        (
            vec!["--ops-token-file", short.to_str().unwrap()],
            "at least 32",
        ),
    ] {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--ops-listen",
            "0.0.0.0:0",
            "--nats-url",
            "nats://127.0.0.1:9",
            "--snapshot-verify-key-file",
            &verify,
        ];
        args.extend(extra);
        let out = std::process::Command::new(gateway_tests::process::bin_path("data-plane"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(wanted), "{stderr}");
        assert!(!stderr.contains("too-short"), "{stderr}");
    }
}
