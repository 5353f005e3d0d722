//! The ops routes: health, readiness, metrics, version, correlation ids, gRPC reflection.

use std::time::Duration;

use gateway_tests::process::wait_for_status;
use serde_json::{Value, json};

use super::{Env, START, client};

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
    let mut client = ServerReflectionClient::new(channel.clone());
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

    // v1alpha too, for the clients that speak only it
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel.clone());
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
            panic!("unexpected v1alpha reflection answer {answer:?}");
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == "aggregate.gateway.v1.CommandService"),
            "{list:?}"
        );
    }

    // health per service, not only for the server as a whole
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "aggregate.gateway.v1.CommandService"] {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await;
        assert!(answer.is_ok(), "{service:?}: {answer:?}");
    }

    // an error answer names its correlation id and trace, and carries the envelope's code
    // as google.rpc.ErrorInfo details
    let mut commands =
        gateway_proto::aggregate::v1::command_service_client::CommandServiceClient::new(channel);
    let mut request = tonic::Request::new(gateway_proto::aggregate::v1::SubmitCommandRequest {
        aggregate_type: "order".into(),
        aggregate_id: "o-1".into(),
        command_type: "PlaceOrder".into(),
        command_id: "c-1".into(),
        payload: b"{}".to_vec(),
        content_type: "application/json".into(),
        expected_version: None,
        metadata: Default::default(),
    });
    request
        .metadata_mut()
        .insert("x-correlation-id", "grpc-err-1".parse().unwrap());
    let status = commands.submit_command(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.metadata().get("x-correlation-id").unwrap(),
        "grpc-err-1"
    );
    assert!(status.metadata().get("traceparent").is_some());
    assert_eq!(
        status.metadata().get("x-error-code").unwrap(),
        "missing_token"
    );
    let details = tonic_types::StatusExt::get_error_details(&status);
    let info = details.error_info().expect("ErrorInfo details");
    assert_eq!(info.reason, "missing_token");
    assert_eq!(info.domain, "gateway.cloudlysis");
}

/// Python's grpcio and grpcio-reflection (pinned, installed by scripts/ensure-python-clients.sh)
/// as a stranger's tools: they speak reflection v1alpha only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_lists_describes_and_calls_the_grpc_listener() {
    let env = Env::new();
    let (_data, _http, _ops, grpc) = env.data_with_grpc(true, &[]);
    let target = grpc.trim_start_matches("http://").to_string();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/grpc_tools_client.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&target)
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run {python}: {err}"));
    assert!(
        output.status.success(),
        "the Python client failed (scripts/ensure-python-clients.sh installs grpcio): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    let services: Vec<&str> = seen["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for wanted in [
        "aggregate.gateway.v1.CommandService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.contains(&wanted), "{wanted} not in {services:?}");
    }
    let fields = &seen["submit_fields"];
    for field in ["aggregate_type", "aggregate_id", "command_type", "payload"] {
        assert!(
            fields.as_array().unwrap().iter().any(|f| f == field),
            "{field} not in {fields}"
        );
    }
    assert_eq!(
        seen["health"]["aggregate.gateway.v1.CommandService"], seen["health"][""],
        "per-service health follows the server's: {seen}"
    );
    assert_eq!(
        seen["unauthenticated_call"],
        json!({"code": "UNAUTHENTICATED", "error_code": "missing_token", "correlation_id": "python-1"}),
        "{seen}"
    );
}
