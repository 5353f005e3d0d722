//! Logs (JSON via tracing), optional OTLP trace export (when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set) and the process-wide Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogArgs, LogFormat};

/// Bucket bounds (seconds) of every latency histogram: sub-millisecond proxying up to
/// the longest deadlines.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid setting --log (GATEWAY_LOG): {0}")]
    Filter(String),
    #[error("otlp exporter: {0}")]
    Otlp(String),
    #[error("logging already initialised: {0}")]
    Init(String),
}

/// Flushes and stops trace export when dropped (end of `main`).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("otlp shutdown: {err}");
        }
    }
}

/// Installs the global subscriber: JSON (or text) logs filtered by `args.log`, plus OTLP
/// spans when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init(service: &'static str, args: &LogArgs) -> Result<TelemetryGuard, TelemetryError> {
    let filter =
        EnvFilter::try_new(&args.log).map_err(|err| TelemetryError::Filter(err.to_string()))?;
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|err| TelemetryError::Otlp(err.to_string()))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service)
                            .build(),
                    )
                    .build(),
            )
        }
        _ => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let (json, text) = match args.log_format {
        LogFormat::Json => (
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            ),
            None,
        ),
        LogFormat::Text => (None, Some(tracing_subscriber::fmt::layer())),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(otel)
        .try_init()
        .map_err(|err| TelemetryError::Init(err.to_string()))?;
    Ok(TelemetryGuard { provider })
}

static METRICS: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first use; both planes share it when
/// they run in one process, as in the local run and in-process tests).
pub fn metrics_handle() -> Result<PrometheusHandle, String> {
    METRICS
        .get_or_init(|| {
            // histograms, not summaries: replicas' buckets add up, quantiles do not
            let handle = PrometheusBuilder::new()
                .set_buckets(&LATENCY_BUCKETS)
                .map_err(|err| err.to_string())?
                .install_recorder()
                .map_err(|err| err.to_string())?;
            // histogram samples wait in per-metric buffers until upkeep folds them into the
            // buckets; `install_recorder` leaves upkeep to the caller. Without it the buffers
            // grow by every request between scrapes (unbounded when nobody scrapes), and the
            // scrape that drains them stalls the serving thread. A thread of its own, off the
            // request runtime, does it every UPKEEP_EVERY.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|err| err.to_string())?;
            Ok(handle)
        })
        .clone()
}

/// How often pending histogram samples are folded into their buckets.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
