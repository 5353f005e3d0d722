//! The upstream side of the request path: which endpoint of a shard gets a call
//! (power of two choices over the endpoints whose circuit admits it), passive health (a
//! circuit breaker per endpoint: closed → open after consecutive failures → half-open with
//! one probe → closed or open again), a global concurrency limit that sheds load instead of
//! queueing, and request deadlines shared by every attempt of one call.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use std::time::{Duration, Instant};

use gateway_edge::{ApiError, ErrorCode, Reason};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::pool::{Conns, PoolPolicy};

/// Tunables of the upstream side (flags of the data plane).
#[derive(Clone, Debug)]
pub struct UpstreamPolicy {
    /// Consecutive failures (unreachable, timed out, 502/503/504) that open a circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before one probe is let through.
    pub open_for: Duration,
    /// Proxied requests in flight at once on this replica; beyond it, 503 `overloaded`.
    pub max_in_flight: usize,
    /// Extra attempts on another endpoint of the shard, only where a retry is safe.
    pub retries: u32,
    /// Idle keep-alive connections kept per endpoint.
    pub pool: PoolPolicy,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        UpstreamPolicy {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
            max_in_flight: 1024,
            retries: 1,
            pool: PoolPolicy::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Circuit {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; its outcome closes or re-opens the circuit.
    HalfOpen,
}

impl Circuit {
    fn name(self) -> &'static str {
        match self {
            Circuit::Closed { .. } => "closed",
            Circuit::Open { .. } => "open",
            Circuit::HalfOpen => "half_open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            Circuit::Closed { .. } => 0.0,
            Circuit::Open { .. } => 1.0,
            Circuit::HalfOpen => 2.0,
        }
    }
}

/// Passive health of one endpoint.
pub struct Endpoint {
    url: Arc<str>,
    /// Its keep-alive connections; `None` when the URL names no host to call.
    conns: Option<Arc<Conns>>,
    in_flight: AtomicUsize,
    circuit: Mutex<Circuit>,
}

impl Endpoint {
    fn new(url: &str) -> Endpoint {
        // every endpoint in use shows its circuit, closed ones included
        metrics::gauge!("gateway_upstream_circuit_state", "endpoint" => url.to_string()).set(0.0);
        Endpoint {
            url: url.into(),
            conns: Conns::new(url).map(Arc::new),
            in_flight: AtomicUsize::new(0),
            circuit: Mutex::new(Circuit::Closed { failures: 0 }),
        }
    }

    fn circuit(&self) -> Circuit {
        *self.circuit.lock()
    }

    fn set(&self, circuit: &mut Circuit, next: Circuit) {
        if circuit.name() != next.name() {
            tracing::warn!(endpoint = %self.url, from = circuit.name(), to = next.name(), "circuit changed");
            metrics::gauge!("gateway_upstream_circuit_state", "endpoint" => self.url.to_string())
                .set(next.gauge());
            metrics::counter!("gateway_upstream_circuit_transitions_total", "endpoint" => self.url.to_string(), "to" => next.name())
                .increment(1);
        }
        *circuit = next;
    }
}

/// How one attempt ended, for the circuit of its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered (whatever the answer, except 502/503/504).
    Answered,
    /// Unreachable, timed out, cut short, or answered 502/503/504.
    Failed,
}

/// One attempt on one endpoint: counts as in flight until dropped. An attempt dropped
/// without a report (the client went away) frees the probe slot of a half-open circuit.
pub struct Attempt {
    endpoint: Arc<Endpoint>,
    policy: Arc<UpstreamPolicy>,
    probe: bool,
    reported: bool,
}

impl Attempt {
    pub fn url(&self) -> &str {
        &self.endpoint.url
    }

    /// The endpoint's URL, shared.
    pub fn url_arc(&self) -> Arc<str> {
        Arc::clone(&self.endpoint.url)
    }

    /// The keep-alive connections of the endpoint.
    pub fn conns(&self) -> Result<&Arc<Conns>, ApiError> {
        self.endpoint
            .conns
            .as_ref()
            .ok_or_else(|| ApiError::internal("upstream endpoint", &"not a URL of a host"))
    }

    /// How the endpoint keeps idle connections.
    pub fn pool_policy(&self) -> PoolPolicy {
        self.policy.pool
    }

    pub fn report(mut self, outcome: Outcome) {
        self.reported = true;
        let mut circuit = self.endpoint.circuit.lock();
        let next = match (outcome, *circuit) {
            (Outcome::Answered, _) => Circuit::Closed { failures: 0 },
            (Outcome::Failed, Circuit::Closed { failures }) => {
                let failures = failures + 1;
                if failures >= self.policy.failure_threshold {
                    Circuit::Open {
                        until: Instant::now() + self.policy.open_for,
                    }
                } else {
                    Circuit::Closed { failures }
                }
            }
            (Outcome::Failed, Circuit::HalfOpen) => Circuit::Open {
                until: Instant::now() + self.policy.open_for,
            },
            // a call sent before the circuit opened: it stays open as it is
            (Outcome::Failed, open @ Circuit::Open { .. }) => open,
        };
        self.endpoint.set(&mut circuit, next);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe
            && !self.reported
            && let mut circuit = self.endpoint.circuit.lock()
            && *circuit == Circuit::HalfOpen
        {
            // nobody learnt anything: the next call may probe again at once
            let now = Instant::now();
            self.endpoint
                .set(&mut circuit, Circuit::Open { until: now });
        }
    }
}

/// What the ops listener shows about one endpoint.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct EndpointReport {
    pub endpoint: String,
    pub circuit: &'static str,
    pub consecutive_failures: u32,
    pub in_flight: usize,
    /// Keep-alive connections waiting for the next call.
    pub idle_connections: usize,
    /// Milliseconds until an open circuit lets a probe through.
    pub retry_in_ms: Option<u64>,
}

/// The endpoints this replica has called, with their passive health, and the concurrency
/// limit of proxied requests.
pub struct Upstreams {
    policy: Arc<UpstreamPolicy>,
    endpoints: RwLock<foldhash::HashMap<Arc<str>, Arc<Endpoint>>>,
    cursor: AtomicUsize,
    permits: Arc<Semaphore>,
}

/// Endpoints remembered at most; beyond it, healthy idle ones are forgotten.
const MAX_ENDPOINTS: usize = 4096;

impl Upstreams {
    pub fn new(policy: UpstreamPolicy) -> Upstreams {
        Upstreams {
            permits: Arc::new(Semaphore::new(policy.max_in_flight.max(1))),
            policy: Arc::new(policy),
            endpoints: RwLock::default(),
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn policy(&self) -> &UpstreamPolicy {
        &self.policy
    }

    /// A slot for one proxied request, or 503 `overloaded` with `retry-after` at once:
    /// requests are shed, never queued without bound.
    pub fn admit(&self, route_class: &'static str) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            metrics::counter!("gateway_load_shed_total", "route" => route_class).increment(1);
            ApiError::new(
                ErrorCode::Overloaded,
                "the gateway is at its concurrency limit; retry shortly",
            )
            .with_reason(Reason::LoadShed)
            .with_retry_after(1)
        })
    }

    fn endpoint(&self, url: &str) -> Arc<Endpoint> {
        if let Some(found) = self.endpoints.read().get(url).cloned() {
            return found;
        }
        let mut endpoints = self.endpoints.write();
        if endpoints.len() >= MAX_ENDPOINTS {
            endpoints.retain(|_, e| {
                e.in_flight.load(Ordering::Relaxed) > 0
                    || !matches!(e.circuit(), Circuit::Closed { failures: 0 })
            });
        }
        Arc::clone(
            endpoints
                .entry(Arc::from(url))
                .or_insert_with(|| Arc::new(Endpoint::new(url))),
        )
    }

    /// Picks the endpoint for the next attempt among `candidates` not yet `tried`: an
    /// endpoint whose open circuit is due for a probe takes it; otherwise the less busy of
    /// two closed endpoints taken in rotation. All circuits open → 503 `circuit_open`.
    pub fn pick(&self, candidates: &[String], tried: &[Arc<str>]) -> Result<Attempt, ApiError> {
        let count = candidates.len();
        if count == 0 {
            return Err(ApiError::internal("shard without endpoint", &"empty"));
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        // read only when a circuit is open (the clock is not free)
        let mut clock = None;
        let mut now = || *clock.get_or_insert_with(Instant::now);
        let mut closed: [Option<Arc<Endpoint>>; 2] = [None, None];
        let mut soonest: Option<Instant> = None;
        for i in 0..count {
            let url = &candidates[(start + i) % count];
            if tried.iter().any(|t| **t == **url) {
                continue;
            }
            let endpoint = self.endpoint(url);
            let mut circuit = endpoint.circuit.lock();
            match *circuit {
                Circuit::Closed { .. } => {
                    drop(circuit);
                    if closed[0].is_none() {
                        closed[0] = Some(endpoint);
                    } else {
                        closed[1] = Some(endpoint);
                        break;
                    }
                }
                Circuit::Open { until } if until <= now() => {
                    endpoint.set(&mut circuit, Circuit::HalfOpen);
                    drop(circuit);
                    return Ok(self.attempt(endpoint, true));
                }
                Circuit::Open { until } => {
                    soonest = Some(soonest.map_or(until, |s| s.min(until)));
                }
                Circuit::HalfOpen => {
                    let now = now();
                    soonest = Some(soonest.map_or(now, |s| s.min(now)));
                }
            }
        }
        let chosen = match closed {
            [Some(a), Some(b)] => {
                if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                    b
                } else {
                    a
                }
            }
            [Some(a), None] => a,
            _ => {
                let wait = soonest.map_or(Duration::from_secs(1), |s| {
                    s.saturating_duration_since(now())
                });
                return Err(ApiError::new(
                    ErrorCode::UpstreamUnavailable,
                    "every endpoint of the shard is failing; retry shortly",
                )
                .with_reason(Reason::CircuitOpen)
                .with_retry_after(wait.as_secs().max(1)));
            }
        };
        Ok(self.attempt(chosen, false))
    }

    fn attempt(&self, endpoint: Arc<Endpoint>, probe: bool) -> Attempt {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Attempt {
            endpoint,
            policy: Arc::clone(&self.policy),
            probe,
            reported: false,
        }
    }

    /// Closes the keep-alive connections idle past the policy's timeout (run every few
    /// seconds: an endpoint nobody calls any more must not hold sockets open).
    pub fn sweep_idle(&self) {
        let now = Instant::now();
        let endpoints: Vec<Arc<Endpoint>> = self.endpoints.read().values().cloned().collect();
        for endpoint in endpoints {
            if let Some(conns) = &endpoint.conns {
                conns.sweep(self.policy.pool, now);
            }
        }
    }

    /// Every endpoint called so far and its circuit, sorted by URL.
    pub fn report(&self) -> Vec<EndpointReport> {
        let now = Instant::now();
        let mut list: Vec<EndpointReport> = self
            .endpoints
            .read()
            .values()
            .map(|e| {
                let circuit = e.circuit();
                EndpointReport {
                    endpoint: e.url.to_string(),
                    circuit: circuit.name(),
                    consecutive_failures: match circuit {
                        Circuit::Closed { failures } => failures,
                        _ => self.policy.failure_threshold,
                    },
                    in_flight: e.in_flight.load(Ordering::Relaxed),
                    idle_connections: e.conns.as_ref().map_or(0, |conns| conns.idle_count()),
                    retry_in_ms: match circuit {
                        Circuit::Open { until } => {
                            Some(until.saturating_duration_since(now).as_millis() as u64)
                        }
                        _ => None,
                    },
                }
            })
            .collect();
        list.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        list
    }
}

/// The time left to one call, shared by its attempts.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(budget: Duration) -> Deadline {
        Deadline(Instant::now() + budget)
    }

    /// Time left, or 504 `upstream_timeout` when none is.
    pub fn remaining(&self) -> Result<Duration, ApiError> {
        let left = self.0.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(timed_out())
        } else {
            Ok(left)
        }
    }
}

pub fn timed_out() -> ApiError {
    ApiError::new(
        ErrorCode::UpstreamTimeout,
        "the upstream did not answer in time",
    )
}

/// `grpc-timeout` (`<1–8 digits><H|M|S|m|u|n>`, gRPC over HTTP/2 spec) as a duration.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstreams(threshold: u32, open_for: Duration) -> Upstreams {
        Upstreams::new(UpstreamPolicy {
            failure_threshold: threshold,
            open_for,
            max_in_flight: 2,
            retries: 1,
            pool: PoolPolicy::default(),
        })
    }

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn calls_are_spread_over_healthy_endpoints() {
        let up = upstreams(3, Duration::from_secs(60));
        let eps = urls(&["http://a:1", "http://b:1", "http://c:1"]);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..300 {
            let attempt = up.pick(&eps, &[]).unwrap();
            *seen.entry(attempt.url().to_string()).or_insert(0) += 1;
            attempt.report(Outcome::Answered);
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.values().all(|n| *n >= 50), "{seen:?}");
        // a busy endpoint is passed over for an idle one
        let busy: Vec<Attempt> = (0..3).map(|_| up.pick(&eps[..1], &[]).unwrap()).collect();
        let next: Vec<Attempt> = (0..3).map(|_| up.pick(&eps[..2], &[]).unwrap()).collect();
        assert!(next.iter().all(|a| a.url() == "http://b:1"));
        drop((busy, next));
    }

    #[test]
    fn a_failing_endpoint_is_ejected_probed_and_restored() {
        let up = upstreams(3, Duration::from_millis(50));
        let eps = urls(&["http://a:1", "http://b:1"]);
        for _ in 0..3 {
            up.pick(&eps[..1], &[]).unwrap().report(Outcome::Failed);
        }
        assert_eq!(up.report()[0].circuit, "open");
        // while open, every call goes to b
        for _ in 0..20 {
            let attempt = up.pick(&eps, &[]).unwrap();
            assert_eq!(attempt.url(), "http://b:1");
            attempt.report(Outcome::Answered);
        }
        // only a, open: refused with the typed error and a retry-after
        let err = up.pick(&eps[..1], &[]).err().unwrap();
        assert_eq!(err.envelope_code(), "circuit_open");
        assert_eq!(err.retry_after, Some(1));
        std::thread::sleep(Duration::from_millis(60));
        // due: one probe, and no second one while it is in flight
        let probe = up.pick(&eps[..1], &[]).unwrap();
        assert_eq!(up.report()[0].circuit, "half_open");
        assert!(up.pick(&eps[..1], &[]).is_err());
        probe.report(Outcome::Failed);
        assert_eq!(up.report()[0].circuit, "open");
        std::thread::sleep(Duration::from_millis(60));
        up.pick(&eps[..1], &[]).unwrap().report(Outcome::Answered);
        assert_eq!(up.report()[0].circuit, "closed");
        // a probe abandoned by its caller frees the slot for the next call
        for _ in 0..3 {
            up.pick(&eps[..1], &[]).unwrap().report(Outcome::Failed);
        }
        std::thread::sleep(Duration::from_millis(60));
        drop(up.pick(&eps[..1], &[]).unwrap());
        assert!(up.pick(&eps[..1], &[]).is_ok());
    }

    #[test]
    fn tried_endpoints_are_skipped_and_answers_reset_the_count() {
        let up = upstreams(2, Duration::from_secs(60));
        let eps = urls(&["http://a:1", "http://b:1"]);
        let first = up.pick(&eps, &[]).unwrap();
        let tried: Vec<Arc<str>> = vec![first.url().into()];
        let second = up.pick(&eps, &tried).unwrap();
        assert_ne!(first.url(), second.url());
        let both: Vec<Arc<str>> = vec!["http://a:1".into(), "http://b:1".into()];
        assert!(up.pick(&eps, &both).is_err());
        drop((first, second));
        up.pick(&eps[..1], &[]).unwrap().report(Outcome::Failed);
        up.pick(&eps[..1], &[]).unwrap().report(Outcome::Answered);
        up.pick(&eps[..1], &[]).unwrap().report(Outcome::Failed);
        assert_eq!(up.report()[0].circuit, "closed");
    }

    #[test]
    fn the_concurrency_limit_sheds_instead_of_queueing() {
        let up = upstreams(3, Duration::from_secs(1));
        let a = up.admit("query").unwrap();
        let _b = up.admit("query").unwrap();
        let err = up.admit("query").err().unwrap();
        assert_eq!(err.code, ErrorCode::Overloaded);
        assert_eq!(err.envelope_code(), "load_shed");
        assert_eq!(err.retry_after, Some(1));
        drop(a);
        assert!(up.admit("query").is_ok());
    }

    #[test]
    fn grpc_timeouts_parse_per_spec() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "100", "123456789m", "-1S", "1x", "1.5S", " 1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
