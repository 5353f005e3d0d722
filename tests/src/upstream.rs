//! The reference upstream node: a real server implementing the contracts the gateway
//! forwards to (Aggregate `CommandService` over gRPC, Projection `POST /v1/query/{view}`,
//! Runner `/admin/runner/*`), recording what it received so tests can assert on it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use axum::{Json, Router};
use gateway_proto::aggregate::v1::command_service_server::{CommandService, CommandServiceServer};
use gateway_proto::aggregate::v1::{Event, SubmitCommandRequest, SubmitCommandResponse};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One request as the node saw it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Recorded {
    /// `grpc` or `http`.
    pub protocol: String,
    pub method: String,
    pub path: String,
    /// Lowercased header (or metadata) names; binary metadata is skipped.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

type AggregateKey = (String, String, String);

#[derive(Default)]
struct Aggregates {
    versions: HashMap<AggregateKey, u64>,
    /// (tenant, command_id) -> (request fingerprint, outcome)
    outcomes: HashMap<(String, String), (Vec<u8>, SubmitCommandResponse)>,
}

/// What a node reports about one tenant to the gateway's readiness gates (see
/// docs/readiness-gates.md). Tests set it through [`Node::set_readiness`] or
/// `PUT /_reference/readiness/{kind}/{tenant_id}`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TenantReadiness {
    /// Calls of the tenant still being processed here.
    pub in_flight: u64,
    /// Events behind the log (projections).
    pub lag: u64,
    /// Position the tenant's work resumes from (runners).
    pub checkpoint: String,
    /// The tenant's state can be served here (aggregates, as a target).
    pub state_available: bool,
    /// Test hook: answer the gate after this delay.
    #[serde(default)]
    pub delay_ms: u64,
    /// Test hook: the checkpoint advances at every read (a runner still working).
    #[serde(default)]
    pub checkpoint_moving: bool,
    /// The node takes the tenant's work (runners, as a target).
    #[serde(default = "yes")]
    pub accepts_work: bool,
    /// Test hook: the verdict (`ready`) the node gives whatever its numbers say, as a
    /// faulty node would; the gateway must check the numbers too.
    #[serde(default)]
    pub verdict: Option<bool>,
}

fn yes() -> bool {
    true
}

impl Default for TenantReadiness {
    fn default() -> Self {
        TenantReadiness {
            in_flight: 0,
            lag: 0,
            checkpoint: "0".into(),
            state_available: true,
            delay_ms: 0,
            checkpoint_moving: false,
            accepts_work: true,
            verdict: None,
        }
    }
}

/// Shared state of one node.
#[derive(Clone)]
pub struct Node {
    name: String,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    aggregates: Arc<Mutex<Aggregates>>,
    readiness: Arc<Mutex<HashMap<(String, String), TenantReadiness>>>,
    reads: Arc<std::sync::atomic::AtomicU64>,
    /// When set, every call must carry a valid gateway assertion (else 401).
    assertion: Option<Arc<AssertionCheck>>,
}

/// The gRPC path of `SubmitCommand`.
const SUBMIT_COMMAND: &str = "/aggregate.gateway.v1.CommandService/SubmitCommand";

/// What an upstream that does not trust the network checks on every call: the gateway's
/// `x-gateway-assertion` (an ES256 JWT), verified with `jsonwebtoken` (not the gateway's
/// own code) against the JWK set the data plane publishes, fetched again on an unknown
/// `kid`. Issuer, audience (the shard this node serves), expiry, and that it describes
/// this very call: method, path, tenant, principal and correlation id as received; its
/// `jti` never seen before (replay).
pub struct AssertionCheck {
    jwks_url: String,
    issuer: String,
    audiences: Vec<String>,
    client: reqwest::Client,
    keys: tokio::sync::Mutex<Vec<jsonwebtoken::jwk::Jwk>>,
    /// jti → exp of the assertions accepted and not yet expired.
    seen: Mutex<HashMap<String, i64>>,
}

impl AssertionCheck {
    /// Checks against the keys at `jwks_url`, for calls meant for one of `audiences`.
    pub fn new(jwks_url: &str, issuer: &str, audiences: &[&str]) -> AssertionCheck {
        AssertionCheck {
            jwks_url: jwks_url.to_string(),
            issuer: issuer.to_string(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            client: reqwest::Client::new(),
            keys: tokio::sync::Mutex::default(),
            seen: Mutex::default(),
        }
    }

    async fn key(&self, kid: &str) -> Result<jsonwebtoken::DecodingKey, String> {
        let mut keys = self.keys.lock().await;
        if !keys.iter().any(|k| k.common.key_id.as_deref() == Some(kid)) {
            let set: jsonwebtoken::jwk::JwkSet = self
                .client
                .get(&self.jwks_url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|err| format!("keys unavailable: {err}"))?
                .json()
                .await
                .map_err(|err| format!("keys unreadable: {err}"))?;
            *keys = set.keys;
        }
        let jwk = keys
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid))
            .ok_or("unknown kid")?;
        jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|err| format!("bad key: {err}"))
    }

    /// The assertion's claims when it is valid for this call; the reason otherwise.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        method: &str,
        path: &str,
    ) -> Result<Value, String> {
        let token = headers
            .get("x-gateway-assertion")
            .and_then(|v| v.to_str().ok())
            .ok_or("no assertion")?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|err| format!("malformed: {err}"))?;
        if header.typ.as_deref() != Some("gateway-assertion+jwt")
            || header.alg != jsonwebtoken::Algorithm::ES256
        {
            return Err("not a gateway assertion".into());
        }
        let key = self.key(header.kid.as_deref().ok_or("no kid")?).await?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|err| format!("refused: {err}"))?
            .claims;
        let field = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let expect = [
            ("htm", Some(method)),
            ("htu", Some(path)),
            ("tid", field("x-tenant-id")),
            ("sub", field("x-principal-id")),
            ("cid", field("x-correlation-id")),
        ];
        for (claim, want) in expect {
            if want.is_none() || claims[claim].as_str() != want {
                return Err(format!("{claim} does not match the call"));
            }
        }
        let (iat, exp) = (
            claims["iat"].as_i64().unwrap_or(0),
            claims["exp"].as_i64().unwrap_or(0),
        );
        if exp - iat > 300 {
            return Err("lives too long".into());
        }
        let jti = claims["jti"].as_str().ok_or("no jti")?.to_string();
        let now = gateway_core::unix_now();
        let mut seen = self.seen.lock().map_err(|_| "poisoned")?;
        seen.retain(|_, until| *until + 5 >= now);
        if seen.insert(jti, exp).is_some() {
            return Err("replayed".into());
        }
        Ok(claims)
    }
}

/// The answer to a call whose assertion was refused.
fn assertion_refused(reason: &str) -> (StatusCode, Json<Value>) {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"code": "assertion_refused", "message": reason}})),
    )
}

fn headers_of(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

impl Node {
    pub fn new(name: &str) -> Node {
        Node {
            name: name.to_string(),
            recorded: Arc::default(),
            aggregates: Arc::default(),
            readiness: Arc::default(),
            reads: Arc::default(),
            assertion: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything received so far, oldest first.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Sets what the node reports for `tenant` of `kind` (`aggregate`, `projection`,
    /// `runner`).
    pub fn set_readiness(&self, kind: &str, tenant: &str, readiness: TenantReadiness) {
        if let Ok(mut map) = self.readiness.lock() {
            map.insert((kind.to_string(), tenant.to_string()), readiness);
        }
    }

    pub fn readiness(&self, kind: &str, tenant: &str) -> TenantReadiness {
        self.readiness
            .lock()
            .ok()
            .and_then(|m| m.get(&(kind.to_string(), tenant.to_string())).cloned())
            .unwrap_or_default()
    }

    /// The readiness contract (docs/readiness-gates.md), served on the HTTP and the gRPC
    /// listener alike (an aggregate shard's routed endpoint is its gRPC address).
    pub fn readiness_router(&self) -> Router {
        Router::new()
            .route(
                "/gateway/v1/readiness/{kind}/{tenant_id}",
                get(readiness_gate),
            )
            .route(
                "/_reference/readiness/{kind}/{tenant_id}",
                axum::routing::put(set_readiness),
            )
            .with_state(self.clone())
    }

    /// Forgets what was received so far.
    pub fn clear(&self) {
        if let Ok(mut recorded) = self.recorded.lock() {
            recorded.clear();
        }
    }

    fn record(&self, entry: Recorded) {
        if let Ok(mut recorded) = self.recorded.lock() {
            recorded.push(entry);
        }
    }

    /// The HTTP side: Projection queries, Runner admin, and the recording endpoints.
    pub fn http_router(&self) -> Router {
        Router::new()
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/v1/query/{view_type}", post(query))
            .route("/admin/runner/{*rest}", any(runner))
            .route(
                "/_reference/requests",
                get(list_recorded).delete(clear_recorded),
            )
            .with_state(self.clone())
            .merge(self.readiness_router())
    }

    /// The gRPC side: `aggregate.gateway.v1.CommandService`.
    pub fn grpc_service(&self) -> CommandServiceServer<Node> {
        CommandServiceServer::new(self.clone())
    }
}

async fn query(
    State(node): State<Node>,
    Path(view_type): Path<String>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    node.record(Recorded {
        protocol: "http".into(),
        method: "POST".into(),
        path: format!("/v1/query/{view_type}"),
        headers: headers_of(&headers),
        body: body.clone(),
    });
    let assertion = match &node.assertion {
        Some(check) => match check
            .check(&headers, "POST", &format!("/v1/query/{view_type}"))
            .await
        {
            Ok(claims) => claims,
            Err(reason) => return assertion_refused(&reason),
        },
        None => Value::Null,
    };
    let query: Value = match serde_json::from_str(&body) {
        Ok(value) => value,
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({"error": {"code": "bad_request", "message": format!("query is not json: {err}")}}),
                ),
            );
        }
    };
    // test hooks: {"_reference": {"delay_ms": N, "status": S}} delays or fails the answer
    let hooks = &query["_reference"];
    if let Some(delay) = hooks["delay_ms"].as_u64() {
        tokio::time::sleep(std::time::Duration::from_millis(delay.min(30_000))).await;
    }
    if let Some(status) = hooks["status"]
        .as_u64()
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
    {
        return (
            status,
            Json(json!({"error": {"code": "injected", "message": "failure injected by the test"}})),
        );
    }
    let tenant = headers
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    (
        StatusCode::OK,
        Json(json!({
            "node": node.name,
            "view_type": view_type,
            "tenant_id": tenant,
            "query": query,
            "assertion": assertion,
            "rows": [],
        })),
    )
}

async fn runner(
    State(node): State<Node>,
    Path(rest): Path<String>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    node.record(Recorded {
        protocol: "http".into(),
        method: method.to_string(),
        path: format!("/admin/runner/{rest}"),
        headers: headers_of(&headers),
        body,
    });
    let assertion = match &node.assertion {
        Some(check) => {
            let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
            match check.check(&headers, method.as_str(), path).await {
                Ok(claims) => claims,
                Err(reason) => return assertion_refused(&reason),
            }
        }
        None => Value::Null,
    };
    (
        StatusCode::OK,
        Json(
            json!({"node": node.name, "method": method.as_str(), "runner_path": rest, "assertion": assertion}),
        ),
    )
}

#[derive(serde::Deserialize)]
struct GateQuery {
    role: String,
    #[serde(default)]
    max_lag: u64,
}

/// `GET /gateway/v1/readiness/{kind}/{tenant_id}?role=source|target[&max_lag=N]`.
async fn readiness_gate(
    State(node): State<Node>,
    Path((kind, tenant)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<GateQuery>,
) -> impl IntoResponse {
    let mut state = node.readiness(&kind, &tenant);
    if state.checkpoint_moving {
        let read = node
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        state.checkpoint = format!("{}-{read}", state.checkpoint);
    }
    if state.delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(state.delay_ms.min(30_000))).await;
    }
    let (ready, reason) = match (kind.as_str(), query.role.as_str()) {
        ("projection", _) if state.lag <= query.max_lag => (true, "caught_up".to_string()),
        ("projection", _) => (
            false,
            format!("lag {} is above {}", state.lag, query.max_lag),
        ),
        ("runner" | "aggregate", "source") if state.in_flight == 0 => (true, "drained".into()),
        ("runner" | "aggregate", "source") => (
            false,
            format!("{} calls of the tenant in flight", state.in_flight),
        ),
        ("aggregate", "target") if state.state_available => (true, "state_available".into()),
        ("aggregate", "target") => (false, "the tenant's state is not available yet".into()),
        ("runner", "target") if state.accepts_work => (true, "accepts_work".into()),
        ("runner", "target") => (false, "the node takes no work for the tenant".into()),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"code": "bad_request", "message": "unknown kind or role"}})),
            );
        }
    };
    let ready = state.verdict.unwrap_or(ready);
    (
        StatusCode::OK,
        Json(json!({
            "node": node.name, "tenant_id": tenant, "kind": kind, "role": query.role,
            "ready": ready, "reason": reason,
            "in_flight": state.in_flight, "lag": state.lag,
            "checkpoint": state.checkpoint, "state_available": state.state_available,
        })),
    )
}

async fn set_readiness(
    State(node): State<Node>,
    Path((kind, tenant)): Path<(String, String)>,
    Json(readiness): Json<TenantReadiness>,
) -> impl IntoResponse {
    node.set_readiness(&kind, &tenant, readiness);
    StatusCode::NO_CONTENT
}

async fn list_recorded(State(node): State<Node>) -> impl IntoResponse {
    Json(node.recorded())
}

async fn clear_recorded(State(node): State<Node>) -> impl IntoResponse {
    node.clear();
    StatusCode::NO_CONTENT
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Node {
    /// A command's answer with the node's metadata: `x-aggregate-node`, and `x-echo` as the
    /// caller sent it (so tests see metadata cross the gateway both ways).
    fn answer(
        &self,
        response: SubmitCommandResponse,
        echo: &Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ) -> tonic::Response<SubmitCommandResponse> {
        let mut answer = tonic::Response::new(response);
        if let Ok(name) = self.name.parse() {
            answer.metadata_mut().insert("x-aggregate-node", name);
        }
        if let Some(echo) = echo {
            answer.metadata_mut().insert("x-echo", echo.clone());
        }
        answer
    }
}

#[tonic::async_trait]
impl CommandService for Node {
    async fn submit_command(
        &self,
        request: tonic::Request<SubmitCommandRequest>,
    ) -> Result<tonic::Response<SubmitCommandResponse>, tonic::Status> {
        let metadata = request.metadata().clone().into_headers();
        if let Some(check) = &self.assertion
            && let Err(reason) = check.check(&metadata, "POST", SUBMIT_COMMAND).await
        {
            return Err(tonic::Status::unauthenticated(format!(
                "assertion refused: {reason}"
            )));
        }
        let headers = headers_of(&metadata);
        let tenant = headers.get("x-tenant-id").cloned().unwrap_or_default();
        // answer metadata: the node's name, and `x-echo` sent back as it came
        let echo = request.metadata().get("x-echo").cloned();
        let command = request.into_inner();
        self.record(Recorded {
            protocol: "grpc".into(),
            method: "POST".into(),
            path: SUBMIT_COMMAND.into(),
            headers,
            body: format!(
                "{} {} {} {}",
                command.aggregate_type,
                command.aggregate_id,
                command.command_type,
                command.command_id
            ),
        });
        // test hook: metadata reference_delay_ms delays the answer
        if let Some(delay) = command
            .metadata
            .get("reference_delay_ms")
            .and_then(|v| v.parse::<u64>().ok())
        {
            tokio::time::sleep(std::time::Duration::from_millis(delay.min(30_000))).await;
        }
        for (field, value) in [
            ("aggregate_type", &command.aggregate_type),
            ("aggregate_id", &command.aggregate_id),
            ("command_type", &command.command_type),
            ("command_id", &command.command_id),
        ] {
            if value.trim().is_empty() {
                return Err(tonic::Status::invalid_argument(format!(
                    "{field} is required"
                )));
            }
        }
        let fingerprint = prost::Message::encode_to_vec(&command);
        let mut aggregates = self
            .aggregates
            .lock()
            .map_err(|_| tonic::Status::internal("state poisoned"))?;
        let idempotency = (tenant.clone(), command.command_id.clone());
        if let Some((seen, outcome)) = aggregates.outcomes.get(&idempotency) {
            if *seen != fingerprint {
                return Err(tonic::Status::already_exists(
                    "command_id was used for a different command",
                ));
            }
            let mut replay = outcome.clone();
            replay.replayed = true;
            return Ok(self.answer(replay, &echo));
        }
        let key = (
            tenant.clone(),
            command.aggregate_type.clone(),
            command.aggregate_id.clone(),
        );
        let version = aggregates.versions.get(&key).copied().unwrap_or(0);
        if let Some(expected) = command.expected_version
            && expected != version
        {
            return Err(tonic::Status::failed_precondition(format!(
                "expected version {expected}, aggregate is at {version}"
            )));
        }
        let mut metadata = command.metadata.clone();
        metadata.insert("tenant_id".into(), tenant.clone());
        metadata.insert("node".into(), self.name.clone());
        let event = Event {
            event_type: command.command_type.clone(),
            sequence: version + 1,
            payload: command.payload.clone(),
            content_type: if command.content_type.is_empty() {
                "application/json".into()
            } else {
                command.content_type.clone()
            },
            metadata,
            recorded_at_unix_ms: now_ms(),
        };
        aggregates.versions.insert(key, version + 1);
        let response = SubmitCommandResponse {
            aggregate_type: command.aggregate_type,
            aggregate_id: command.aggregate_id,
            command_id: command.command_id,
            events: vec![event],
            aggregate_version: version + 1,
            replayed: false,
        };
        aggregates
            .outcomes
            .insert(idempotency, (fingerprint, response.clone()));
        Ok(self.answer(response, &echo))
    }
}

/// A node serving on loopback until dropped or `stop` is cancelled.
pub struct RunningNode {
    pub node: Node,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    stop: CancellationToken,
}

impl RunningNode {
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a node named `name` on the given addresses (port 0 picks a free port).
pub async fn start(
    name: &str,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
) -> std::io::Result<RunningNode> {
    start_with_tls(name, http_addr, grpc_addr, None).await
}

/// [`start`], with TLS on both listeners when `tls` is given (and client certificates
/// required when it names a client CA: the node then answers only mutual-TLS callers).
pub async fn start_with_tls(
    name: &str,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    tls: Option<gateway_edge::tls::TlsFiles>,
) -> std::io::Result<RunningNode> {
    start_with(name, http_addr, grpc_addr, tls, None).await
}

/// [`start_with_tls`], and with `assertion` every call must carry a valid gateway
/// assertion (401, or UNAUTHENTICATED over gRPC, otherwise).
pub async fn start_with(
    name: &str,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    tls: Option<gateway_edge::tls::TlsFiles>,
    assertion: Option<AssertionCheck>,
) -> std::io::Result<RunningNode> {
    let mut node = Node::new(name);
    node.assertion = assertion.map(Arc::new);
    let stop = CancellationToken::new();
    let http = TcpListener::bind(http_addr).await?;
    let grpc = TcpListener::bind(grpc_addr).await?;
    let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
    // gRPC and the readiness contract on one port: HTTP/2 for gRPC, HTTP/1.1 for gates
    let grpc_app = tonic::service::Routes::new(node.grpc_service())
        .prepare()
        .into_axum_router()
        .merge(node.readiness_router());
    for (listener, app) in [(http, node.http_router()), (grpc, grpc_app)] {
        let stop = stop.clone();
        match &tls {
            Some(files) => {
                let reloader = gateway_edge::tls::TlsReloader::load(
                    files.clone(),
                    &gateway_edge::http::HTTP_ALPN,
                )
                .map_err(|err| std::io::Error::other(err.to_string()))?;
                let listener = gateway_edge::tls::TlsListener::new(
                    listener,
                    reloader,
                    gateway_edge::listen::ConnectionCap::new("reference-upstream", 1024),
                )?;
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await;
                });
            }
            None => {
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await;
                });
            }
        }
    }
    Ok(RunningNode {
        node,
        http_addr,
        grpc_addr,
        stop,
    })
}
