//! Both plane binaries against a real NATS: ops routes, correlation, readiness across a
//! NATS outage, signed snapshots, configuration errors, graceful shutdown.

use std::time::Duration;

use gateway_store::nats::NatsConfig;
use gateway_store::{Bucket, Store, StoreConfig};
use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use gateway_tests::process::{PlaneProcess, wait_for_status};
use serde_json::{Value, json};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const START: Duration = Duration::from_secs(30);

struct Env {
    nats: NatsServer,
    keys: SnapshotKeys,
    prefix: String,
}

impl Env {
    fn new() -> Env {
        Env {
            nats: NatsServer::start(),
            keys: SnapshotKeys::generate(),
            prefix: gateway_tests::unique_prefix(),
        }
    }

    fn control(&self, extra: &[&str]) -> (PlaneProcess, String) {
        let mut flags = vec!["--store-timeout", "1s"];
        flags.extend_from_slice(extra);
        gateway_tests::spawn_control_plane(&self.nats.url(), &self.prefix, &self.keys, &flags)
    }

    /// Returns the process, the public base URL and the ops base URL.
    fn data(&self, snapshots_optional: bool, extra: &[&str]) -> (PlaneProcess, String, String) {
        let (process, http, ops, _) = self.data_with_grpc(snapshots_optional, extra);
        (process, http, ops)
    }

    /// Also returns the gRPC URL.
    fn data_with_grpc(
        &self,
        snapshots_optional: bool,
        extra: &[&str],
    ) -> (PlaneProcess, String, String, String) {
        let url = self.nats.url();
        let verify = self.keys.verify_path();
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--nats-url",
            &url,
            "--store-prefix",
            &self.prefix,
            "--snapshot-verify-key-file",
            &verify,
            "--store-timeout",
            "1s",
        ];
        if snapshots_optional {
            args.push("--snapshots-optional");
        }
        args.extend_from_slice(extra);
        let mut process = PlaneProcess::spawn("data-plane", &args, &[]);
        let fields = process.wait_for_log("data plane listening", START);
        let http = format!("http://{}", fields["http_addr"]);
        let ops = format!("http://{}", fields["ops_addr"]);
        let grpc = format!("http://{}", fields["grpc_addr"]);
        (process, http, ops, grpc)
    }

    async fn store(&self) -> Store {
        Store::open(&StoreConfig::Nats(NatsConfig {
            url: self.nats.url(),
            prefix: self.prefix.clone(),
            ..NatsConfig::default()
        }))
        .await
        .unwrap()
    }
}

/// Polls the standard gRPC health service until it reports `want` for the server (`""`).
async fn wait_for_grpc_health(url: &str, want: ServingStatus) {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_lazy();
    let mut client = HealthClient::new(channel);
    let deadline = std::time::Instant::now() + START;
    loop {
        let status = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.as_ref().ok() == Some(&(want as i32)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "grpc health of {url} is {status:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Checks the Prometheus text exposition format line by line.
fn assert_prometheus_text(text: &str) {
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line:?}"
        );
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in {line:?}");
        }
        samples += 1;
    }
    assert!(samples > 0, "no samples in {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_planes_serve_health_ready_metrics_and_version() {
    let env = Env::new();
    let (_control, control) = env.control(&[]);
    let (_data, data, ops) = env.data(true, &[]);
    let client = client();
    for base in [&control, &data, &ops] {
        let health = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{base}/health");
        wait_for_status(&client, &format!("{base}/ready"), 200, START).await;
    }
    for base in [&control, &ops] {
        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), 200);
        assert!(
            metrics.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = metrics.text().await.unwrap();
        assert_prometheus_text(&text);
        assert!(text.contains("gateway_http_requests_total"), "{text}");
        assert!(text.contains("gateway_build_info"), "{text}");
        let version: Value = client
            .get(format!("{base}/version"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(version["version"].is_string());
    }
    // the control plane documents its API
    let doc: Value = client
        .get(format!("{control}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/admin/assignments"]["post"].is_object());
    // metrics and version stay off the public data-plane listener
    let public_metrics = client.get(format!("{data}/metrics")).send().await.unwrap();
    assert_eq!(public_metrics.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_ids_are_generated_echoed_and_logged() {
    let env = Env::new();
    let (control_process, control) = env.control(&[]);
    let (_data, data, _ops) = env.data(true, &[]);
    let client = client();
    for base in [&control, &data] {
        let minted = client.get(format!("{base}/health")).send().await.unwrap();
        let id = minted.headers()["x-correlation-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(id.len(), 36, "a uuid is minted: {id}");
        let again = client.get(format!("{base}/health")).send().await.unwrap();
        assert_ne!(again.headers()["x-correlation-id"].to_str().unwrap(), id);

        let echoed = client
            .get(format!("{base}/health"))
            .header("x-correlation-id", "order-42:retry.1")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(echoed.headers()["x-correlation-id"], "order-42:retry.1");
        let traceparent = echoed.headers()["traceparent"].to_str().unwrap();
        assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!traceparent.contains("00f067aa0ba902b7"), "a new span id");

        let injected = client
            .get(format!("{base}/health"))
            .header("x-correlation-id", "bad id <script>")
            .send()
            .await
            .unwrap();
        let replaced = injected.headers()["x-correlation-id"].to_str().unwrap();
        assert_ne!(replaced, "bad id <script>");
        assert_eq!(replaced.len(), 36);

        // the error envelope carries the same id
        let missing = client
            .get(format!("{base}/no/such/route"))
            .header("x-correlation-id", "lookup-7")
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        assert_eq!(missing.headers()["x-correlation-id"], "lookup-7");
        let body: Value = missing.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": {"code": "not_found", "message": "no such route", "correlation_id": "lookup-7"}})
        );
    }
    // JSON logs name the request and the correlation id
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logged = control_process
            .logs()
            .into_iter()
            .find(|line| line.contains("request finished") && line.contains("order-42:retry.1"));
        if let Some(line) = logged {
            let value: Value = serde_json::from_str(&line).expect("json log line");
            let span = &value["span"];
            assert_eq!(span["correlation_id"], "order-42:retry.1");
            assert_eq!(span["request_id"].as_str().unwrap().len(), 36);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no request log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_while_nats_is_down_and_recovers_without_restart() {
    let mut env = Env::new();
    let (control_process, control) = env.control(&[]);
    let (data_process, _data, ops, grpc) = env.data_with_grpc(true, &[]);
    let pids = (control_process.pid(), data_process.pid());
    let client = client();
    for base in [&control, &ops] {
        wait_for_status(&client, &format!("{base}/ready"), 200, START).await;
    }
    wait_for_grpc_health(&grpc, ServingStatus::Serving).await;
    env.nats.stop();
    for base in [&control, &ops] {
        wait_for_status(&client, &format!("{base}/ready"), 503, START).await;
        let body: Value = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(body["checks"]["store"].is_string(), "{body}");
        // alive all the same
        let health = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }
    wait_for_grpc_health(&grpc, ServingStatus::NotServing).await;
    env.nats.restart();
    for base in [&control, &ops] {
        wait_for_status(&client, &format!("{base}/ready"), 200, START).await;
    }
    wait_for_grpc_health(&grpc, ServingStatus::Serving).await;
    assert_eq!((control_process.pid(), data_process.pid()), pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_is_ready_only_with_verified_snapshots_and_keeps_the_last_good_one() {
    let env = Env::new();
    let (_data, data, ops) = env.data(false, &[]);
    let client = client();
    wait_for_status(&client, &format!("{data}/health"), 200, START).await;
    let not_ready: Value = client
        .get(format!("{ops}/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        not_ready["checks"]["snapshots"]
            .as_str()
            .unwrap()
            .contains("routing"),
        "{not_ready}"
    );

    let store = env.store().await;
    let kv = store.kv(Bucket::Snapshots);
    let signer = &env.keys.signer;
    let forger = gateway_core::signed::DocSigningKey::generate();
    kv.put(
        "jwks",
        signer.sign("jwks", 1, 100, &json!({"keys": [{"status": "current", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc", "kid": "k1", "alg": "EdDSA", "use": "sig"}}]})).unwrap(),
    )
    .await
    .unwrap();
    kv.put(
        "routing",
        forger
            .sign("routing", 1, 100, &json!({"forged": true}))
            .unwrap(),
    )
    .await
    .unwrap();
    // the forged routing document is rejected and counted; still not ready
    let deadline = std::time::Instant::now() + START;
    loop {
        let metrics = gateway_tests::metrics_text(&client, &ops).await;
        if metrics
            .contains("gateway_snapshot_rejects_total{kind=\"routing\",reason=\"unknown_key\"}")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reject not counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = client
        .get(format!("{ops}/ready"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503);

    kv.put(
        "routing",
        signer.sign("routing", 5, 100, &json!({"rev": 5})).unwrap(),
    )
    .await
    .unwrap();
    wait_for_status(&client, &format!("{ops}/ready"), 200, START).await;
    wait_for_status(&client, &format!("{data}/ready"), 200, START).await;

    // an older revision and a tampered document change nothing. Each is awaited before
    // the next write: with one value kept per key, a write the watcher has not delivered
    // yet is replaced by the next one.
    let rejected = |reason: &'static str| {
        let client = client.clone();
        let ops = ops.clone();
        async move {
            let deadline = std::time::Instant::now() + START;
            loop {
                let metrics = gateway_tests::metrics_text(&client, &ops).await;
                if metrics.contains(&format!("reason=\"{reason}\"")) {
                    return metrics;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{reason} not counted: {metrics}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    kv.put(
        "routing",
        signer.sign("routing", 4, 100, &json!({"rev": 4})).unwrap(),
    )
    .await
    .unwrap();
    rejected("stale_revision").await;
    let tampered = String::from_utf8(
        signer
            .sign("routing", 9, 100, &json!({"rev": 9}))
            .unwrap()
            .to_vec(),
    )
    .unwrap()
    .replace("\"rev\":9", "\"rev\":10");
    kv.put("routing", tampered.into()).await.unwrap();
    let metrics = rejected("bad_signature").await;
    assert!(
        metrics.contains("gateway_snapshot_revision{kind=\"routing\"} 5"),
        "last good revision stays: {metrics}"
    );
    let status = client
        .get(format!("{ops}/ready"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_non_zero_naming_the_setting() {
    let keys = SnapshotKeys::generate();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "control-plane",
            vec![
                "--snapshot-signing-key-file".into(),
                "/nonexistent/signing.pem".into(),
            ],
            "--snapshot-signing-key-file",
        ),
        ("control-plane", vec![], "GATEWAY_SNAPSHOT_SIGNING_KEY_FILE"),
        (
            "control-plane",
            vec!["--snapshot-signing-key-file".into(), keys.signing_path()],
            "--key-encryption-key-file",
        ),
        (
            "control-plane",
            vec![
                "--snapshot-signing-key-file".into(),
                keys.signing_path(),
                "--key-encryption-key-file".into(),
                keys.verify_path(),
            ],
            "--key-encryption-key-file",
        ),
        (
            "control-plane",
            vec![
                "--snapshot-signing-key-file".into(),
                keys.signing_path(),
                "--listen".into(),
                "localhost-ish:99999".into(),
            ],
            "--listen",
        ),
        (
            "control-plane",
            vec!["--snapshot-signing-key-file".into(), keys.verify_path()],
            "--snapshot-signing-key-file",
        ),
        (
            "control-plane",
            vec![
                "--snapshot-signing-key-file".into(),
                keys.signing_path(),
                "--key-encryption-key-file".into(),
                keys.kek_path(),
                "--mail-outbox".into(),
                keys.outbox_path(),
                "--store-prefix".into(),
                "has.dots".into(),
            ],
            "--store-prefix",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                "/nonexistent/verify.pem".into(),
            ],
            "--snapshot-verify-key-file",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                keys.verify_path(),
                "--ops-listen".into(),
                "nope".into(),
            ],
            "--ops-listen",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                keys.verify_path(),
                "--drain-timeout".into(),
                "ten seconds".into(),
            ],
            "--drain-timeout",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                keys.verify_path(),
                "--routing-file".into(),
                "/nonexistent/routing.json".into(),
            ],
            "--routing-file",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                keys.verify_path(),
                "--routing-file".into(),
                // a file that is not a routing document
                keys.verify_path(),
            ],
            "not a routing document",
        ),
        (
            "data-plane",
            vec![
                "--snapshot-verify-key-file".into(),
                keys.verify_path(),
                "--max-in-flight".into(),
                "0".into(),
            ],
            "--max-in-flight",
        ),
    ];
    let secret_lines: Vec<String> = std::fs::read_to_string(keys.signing_path())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_string)
        .collect();
    assert!(!secret_lines.is_empty());
    for (bin, args, setting) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = PlaneProcess::spawn(bin, &args, &[]);
        let status = process.wait_exit(START);
        assert!(!status.success(), "{bin} {args:?} must fail");
        let stderr = process.stderr().join("\n");
        assert!(stderr.contains(setting), "{bin} {args:?}: {stderr}");
        // the private key never appears in an error
        for line in secret_lines.iter() {
            assert!(!stderr.contains(line.as_str()), "{stderr}");
        }
    }
    // a setting from the environment is named too
    let mut process = PlaneProcess::spawn(
        "control-plane",
        &[],
        &[(
            "GATEWAY_SNAPSHOT_SIGNING_KEY_FILE",
            "/nonexistent/from-env.pem",
        )],
    );
    assert!(!process.wait_exit(START).success());
    assert!(
        process
            .stderr()
            .join("\n")
            .contains("/nonexistent/from-env.pem")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_ready_503_drains_and_exits_zero() {
    let env = Env::new();
    let (mut control_process, control) = env.control(&["--drain-delay", "3s"]);
    let (mut data_process, _data, ops) = env.data(true, &["--drain-delay", "3s"]);
    let client = client();
    for (process, base) in [(&control_process, &control), (&data_process, &ops)] {
        wait_for_status(&client, &format!("{base}/ready"), 200, START).await;
        process.sigterm();
        // still serving during the drain delay, but no longer ready
        wait_for_status(&client, &format!("{base}/ready"), 503, START).await;
        let body: Value = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["checks"]["lifecycle"], "draining for shutdown");
    }
    for process in [&mut control_process, &mut data_process] {
        let status = process.wait_exit(START);
        assert_eq!(status.code(), Some(0));
    }
    assert!(
        client
            .get(format!("{control}/health"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_listener_offers_reflection_for_tools() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let env = Env::new();
    let (_data, _http, _ops, grpc) = env.data_with_grpc(true, &[]);
    let channel = tonic::transport::Endpoint::from_shared(grpc)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in [
        "aggregate.gateway.v1.CommandService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} not in {names:?}"
        );
    }
}
