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
            describe_metrics();
            Ok(handle)
        })
        .clone()
}

/// What each metric of either plane counts: the exporter prints it as `# HELP`, so an
/// operator reading `/metrics` (or a dashboard tool importing it) need not read the code.
/// A metric without a line here fails the `# HELP` check of the integration test
/// `metrics::operator_metrics_exist_and_move_with_their_events`.
pub const METRIC_HELP: &[(&str, &str)] = &[
    (
        "gateway_build_info",
        "Version and commit of this binary (always 1).",
    ),
    (
        "gateway_http_requests_total",
        "HTTP requests answered, by plane, method, route and status.",
    ),
    (
        "gateway_http_request_duration_seconds",
        "Time to answer an HTTP request, by plane, method, route and status class.",
    ),
    (
        "gateway_grpc_requests_total",
        "gRPC calls answered, by method and gRPC code.",
    ),
    (
        "gateway_grpc_request_duration_seconds",
        "Time to answer a gRPC call, by method.",
    ),
    (
        "gateway_refused_requests_total",
        "Requests refused by the edge rules before any route, by reason.",
    ),
    (
        "gateway_auth_failures_total",
        "Credentials refused, by reason.",
    ),
    (
        "gateway_authz_denials_total",
        "Requests denied by authorization at the data plane, by reason.",
    ),
    (
        "gateway_admin_denials_total",
        "Admin API calls denied, by reason.",
    ),
    (
        "gateway_audit_append_failures_total",
        "Audit records that could not be written (an admin change whose intent record fails is refused).",
    ),
    (
        "gateway_rate_limited_total",
        "Requests refused by a rate limit or an account lock, by limit and reason.",
    ),
    (
        "gateway_load_shed_total",
        "Proxied requests shed with 503 load_shed (no free slot).",
    ),
    (
        "gateway_authz_documents_published_total",
        "Signed effective-rights documents written.",
    ),
    (
        "gateway_authz_principals",
        "Principals whose signed document this data plane holds.",
    ),
    (
        "gateway_authz_principals_parsed",
        "Principal documents held parsed (bounded by --principal-cache-size).",
    ),
    (
        "gateway_authz_principals_dropped_total",
        "Parsed principal documents dropped past --principal-cache-size (parsed again on next use).",
    ),
    (
        "gateway_expired_records_purged_total",
        "Expired records deleted by the periodic purge, by kind.",
    ),
    (
        "gateway_connection_cap_reached_total",
        "Times a listener stopped accepting at --max-connections, by listener.",
    ),
    ("gateway_open_connections", "Connections open, by listener."),
    (
        "gateway_tls_handshake_failures_total",
        "TLS handshakes that failed, by reason.",
    ),
    (
        "gateway_tls_reloads_total",
        "Certificate reloads, by result.",
    ),
    (
        "gateway_mail_sent_total",
        "Mails handed to the mail server or outbox, by purpose.",
    ),
    (
        "gateway_mail_failed_total",
        "Mails that could not be sent, by purpose.",
    ),
    (
        "gateway_mirror_cache_writes_total",
        "Writes of the last-known-good mirror cache file.",
    ),
    (
        "gateway_mirror_cache_write_errors_total",
        "Failed writes of the mirror cache file.",
    ),
    (
        "gateway_mirror_stale",
        "1 while the store has been unreachable longer than --max-staleness.",
    ),
    (
        "gateway_mirror_staleness_seconds",
        "Seconds since the least current mirror was last confirmed (a watch event or a reconciliation).",
    ),
    (
        "gateway_mirror_reconciliations_total",
        "Mirror reconciliations (the store's key revisions compared with what was applied), by bucket and result.",
    ),
    (
        "gateway_mirror_documents_repaired_total",
        "Documents a reconciliation found behind and applied (a watch missed them), by bucket.",
    ),
    (
        "gateway_mirror_reconcile_age_seconds",
        "Seconds since the last successful reconciliation, by bucket.",
    ),
    (
        "gateway_mirror_watch_rebuilds_total",
        "Watches re-created, by bucket and reason.",
    ),
    (
        "gateway_mirror_heartbeat_age_seconds",
        "Seconds since this replica last wrote its heartbeat (does not count as mirror contact).",
    ),
    (
        "gateway_snapshot_rejects_total",
        "Published documents refused by verification, by kind and reason.",
    ),
    (
        "gateway_snapshot_revision",
        "Revision of the applied document, by kind.",
    ),
    (
        "gateway_snapshot_age_seconds",
        "Age of the applied document, by kind.",
    ),
    (
        "gateway_snapshot_issued_at_seconds",
        "Unix time the applied document was signed, by kind.",
    ),
    (
        "gateway_routing_published_revision",
        "Revision of the routing document the control plane last published.",
    ),
    (
        "gateway_routing_misses_total",
        "Requests for a tenant without a placement, by service kind.",
    ),
    (
        "gateway_rebalance_cutovers_total",
        "Rebalancing cut-overs applied, by service kind.",
    ),
    (
        "gateway_token_cache_total",
        "Verified-token cache lookups, by result.",
    ),
    (
        "gateway_upstream_errors_total",
        "Failed upstream calls, by kind, endpoint and reason.",
    ),
    (
        "gateway_upstream_retries_total",
        "Upstream calls sent again on another endpoint, by kind.",
    ),
    (
        "gateway_upstream_circuit_state",
        "Circuit of an upstream endpoint: 0 closed, 1 open, 2 half-open.",
    ),
    (
        "gateway_upstream_circuit_transitions_total",
        "Circuit state changes of upstream endpoints, by endpoint and new state (to).",
    ),
    (
        "gateway_upstream_cookies_refused_total",
        "Upstream set-cookie fields for a gateway cookie, dropped.",
    ),
    (
        "gateway_stale_refusals_total",
        "Requests refused with 503 state_stale (store away longer than --max-staleness).",
    ),
];

fn describe_metrics() {
    for (name, help) in METRIC_HELP {
        // the exporter keeps one description per name, whatever the metric's type
        metrics::describe_counter!(*name, *help);
    }
}

/// How often pending histogram samples are folded into their buckets.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::METRIC_HELP;

    #[test]
    fn each_metric_is_described_once_in_a_sentence() {
        let mut names = std::collections::BTreeSet::new();
        for (name, help) in METRIC_HELP {
            assert!(name.starts_with("gateway_"), "{name}");
            assert!(names.insert(*name), "{name} described twice");
            assert!(help.len() > 15 && help.ends_with('.'), "{name}: {help}");
        }
    }
}
