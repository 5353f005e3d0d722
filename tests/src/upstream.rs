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

/// Shared state of one node.
#[derive(Clone)]
pub struct Node {
    name: String,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    aggregates: Arc<Mutex<Aggregates>>,
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
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything received so far, oldest first.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().map(|r| r.clone()).unwrap_or_default()
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
            "rows": [],
        })),
    )
}

async fn runner(
    State(node): State<Node>,
    Path(rest): Path<String>,
    method: Method,
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
    Json(json!({"node": node.name, "method": method.as_str(), "runner_path": rest}))
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

#[tonic::async_trait]
impl CommandService for Node {
    async fn submit_command(
        &self,
        request: tonic::Request<SubmitCommandRequest>,
    ) -> Result<tonic::Response<SubmitCommandResponse>, tonic::Status> {
        let headers = headers_of(&request.metadata().clone().into_headers());
        let tenant = headers.get("x-tenant-id").cloned().unwrap_or_default();
        let command = request.into_inner();
        self.record(Recorded {
            protocol: "grpc".into(),
            method: "POST".into(),
            path: "/aggregate.gateway.v1.CommandService/SubmitCommand".into(),
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
            return Ok(tonic::Response::new(replay));
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
        Ok(tonic::Response::new(response))
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
    let node = Node::new(name);
    let stop = CancellationToken::new();
    let http = TcpListener::bind(http_addr).await?;
    let grpc = TcpListener::bind(grpc_addr).await?;
    let (http_addr, grpc_addr) = (http.local_addr()?, grpc.local_addr()?);
    let app = node.http_router();
    let http_stop = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(http, app)
            .with_graceful_shutdown(http_stop.cancelled_owned())
            .await;
    });
    let service = node.grpc_service();
    let grpc_stop = stop.clone();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                grpc_stop.cancelled_owned(),
            )
            .await;
    });
    Ok(RunningNode {
        node,
        http_addr,
        grpc_addr,
        stop,
    })
}
