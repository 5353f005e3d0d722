//! Trace export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, request spans reach a real OTLP
//! collector on loopback, named after the plane.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use gateway_tests::process::{PlaneProcess, wait_for_status};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Clone, Default)]
struct Collector {
    /// (service.name, span name, trace id hex)
    spans: Arc<Mutex<Vec<(String, String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span.name, hex_of(&span.trace_id)));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_over_otlp_when_configured() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let nats = NatsServer::start();
    let keys = SnapshotKeys::generate();
    let args =
        gateway_tests::control_plane_args(&nats.url(), &gateway_tests::unique_prefix(), &keys, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut control = PlaneProcess::spawn(
        "control-plane",
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let addr =
        control.wait_for_log("control plane listening", Duration::from_secs(30))["addr"].clone();
    let client = reqwest::Client::new();
    wait_for_status(
        &client,
        &format!("http://{addr}/health"),
        200,
        Duration::from_secs(30),
    )
    .await;
    let response = client
        .get(format!("http://{addr}/health"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .unwrap();
    let echoed = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        echoed.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{echoed}"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // the exported span continues the caller's trace
        let found = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .any(|(service, name, trace)| {
                service.contains("control-plane")
                    && name == "request"
                    && trace == "0af7651916cd43dd8448eb211c80319c"
            });
        if found {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no request span exported: {:?}",
            collector.spans.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    control.sigterm();
    assert!(control.wait_exit(Duration::from_secs(30)).success());
}
