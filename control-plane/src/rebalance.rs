//! Tenant rebalancing: a plan moves one tenant of one service kind from its shard to a
//! target shard, behind readiness gates the node services answer (docs/readiness-gates.md).
//!
//! States: `planned → applying → applied`, `applied → rolled_back`, `planned → cancelled`,
//! `applying → failed` (the placement moved away under the plan). Plans live in the
//! rebalance bucket (`plan.<id>`) and change by compare-and-set only; `active.<kind>.<tenant>`
//! (created with create-if-absent) holds the one active plan of a tenant and kind.
//!
//! Apply is idempotent and resumable: the applying replica holds a lease on the plan; a
//! plan whose lease ran out (its replica died) is taken over by the next apply, which
//! looks at the published placement first: already on the target means the cutover
//! happened and only the plan's state is finished. The cutover itself is a routing change
//! conditional on the tenant still being on the source shard, published by compare-and-set,
//! so two replicas can never both cut over.
//!
//! (Over 600 lines: the plan's state machine, its gates and its apply and rollback are
//! one compare-and-set protocol, read best in one place; the tests are in
//! `rebalance/tests.rs`.)

use std::sync::Arc;
use std::time::Duration;

use gateway_core::authz::TenantId;
use gateway_core::routing::{RoutingDocument, ServiceKind};
use gateway_edge::{ApiError, ErrorCode, Reason};
use gateway_store::heartbeat::{DATA_PREFIX, FORGET_AFTER_SECS, Heartbeat, STALE_AFTER_SECS};
use gateway_store::{Bucket, Record, Store, StoreError, read_all};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::routing::RoutingAdmin;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanState {
    Planned,
    Applying,
    Applied,
    RolledBack,
    Failed,
    Cancelled,
}

/// One step of a plan's history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Step {
    pub at: i64,
    pub state: PlanState,
    pub by: String,
    #[serde(default)]
    pub note: String,
}

/// What one gate found.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct GateResult {
    /// `projection.caught_up`, `runner.drained`, `runner.target_ready`,
    /// `aggregate.drained`, `aggregate.state_available`.
    pub gate: String,
    pub shard: String,
    pub endpoint: String,
    pub ready: bool,
    pub reason: String,
    /// What the node reported (lag, in-flight calls, checkpoints, …).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub numbers: Value,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct GateReport {
    pub ready: bool,
    pub checked_at: i64,
    pub gates: Vec<GateResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Plan {
    pub id: String,
    pub tenant_id: TenantId,
    pub kind: ServiceKind,
    /// The shard the tenant was on when the plan was made.
    pub source_shard: String,
    /// The tenant's explicit placement then (`None`: it used the default shard); rollback
    /// restores exactly this.
    #[serde(default)]
    pub source_placement: Option<String>,
    pub target_shard: String,
    pub state: PlanState,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    /// Token of the apply call holding the plan, and until when.
    #[serde(default)]
    pub lease_holder: Option<String>,
    #[serde(default)]
    pub lease_until: Option<i64>,
    /// Routing revision of the cutover, and of the rollback.
    #[serde(default)]
    pub applied_revision: Option<u64>,
    #[serde(default)]
    pub rolled_back_revision: Option<u64>,
    #[serde(default)]
    pub last_gate_report: Option<GateReport>,
    #[serde(default)]
    pub failure: Option<String>,
    #[serde(default)]
    pub history: Vec<Step>,
}

impl Record for Plan {
    const KIND: &'static str = "rebalance_plan";
    const VERSION: u32 = 1;
}

/// Why a plan operation was refused; `Gates` carries the report for the 409 answer.
#[derive(Debug)]
pub enum PlanError {
    Api(ApiError),
    Gates { plan: Box<Plan>, report: GateReport },
}

impl From<ApiError> for PlanError {
    fn from(err: ApiError) -> Self {
        PlanError::Api(err)
    }
}

impl From<StoreError> for PlanError {
    fn from(err: StoreError) -> Self {
        PlanError::Api(err.into())
    }
}

/// Settings of the rebalancer (control-plane flags).
#[derive(Clone, Debug)]
pub struct RebalanceSettings {
    /// Largest projection lag (events) a target may have at cutover.
    pub max_projection_lag: u64,
    /// Pause between the two reads of a runner's checkpoint.
    pub checkpoint_recheck: Duration,
    /// Deadline of one gate call.
    pub gate_timeout: Duration,
    /// How long an apply call holds a plan before another replica may take it over.
    pub lease: Duration,
}

impl Default for RebalanceSettings {
    fn default() -> Self {
        RebalanceSettings {
            max_projection_lag: 0,
            checkpoint_recheck: Duration::from_millis(500),
            gate_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(60),
        }
    }
}

pub struct Rebalancer {
    pub store: Store,
    pub routing: Arc<RoutingAdmin>,
    pub settings: RebalanceSettings,
    client: reqwest::Client,
}

fn conflict(reason: Reason, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Conflict, message).with_reason(reason)
}

fn plan_key(id: &str) -> String {
    format!("plan.{id}")
}

fn active_key(kind: ServiceKind, tenant: &TenantId) -> String {
    format!("active.{}.{}", kind.as_str(), tenant.as_str())
}

/// Plan ids: `rbp_` and 32 hex digits.
pub fn valid_plan_id(id: &str) -> bool {
    id.len() == 36 && id.starts_with("rbp_") && id[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The shard `tenant` is on for `kind` in `doc` (placement, or the default).
fn effective(doc: &RoutingDocument, kind: ServiceKind, tenant: &TenantId) -> Option<String> {
    let routing = doc.kind(kind);
    routing
        .placement
        .get(tenant)
        .or(routing.default_shard.as_ref())
        .cloned()
}

impl Rebalancer {
    pub fn new(
        store: Store,
        routing: Arc<RoutingAdmin>,
        settings: RebalanceSettings,
    ) -> Result<Rebalancer, String> {
        let client = reqwest::Client::builder()
            .timeout(settings.gate_timeout)
            .connect_timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| err.to_string())?;
        Ok(Rebalancer {
            store,
            routing,
            settings,
            client,
        })
    }

    async fn routing_doc(&self) -> Result<(RoutingDocument, u64), ApiError> {
        let (current, _) = self.routing.current().await?;
        Ok(current.map(|d| (d.payload, d.revision)).unwrap_or_default())
    }

    pub async fn load(&self, id: &str) -> Result<(Plan, u64), ApiError> {
        if !valid_plan_id(id) {
            return Err(ApiError::not_found("no such plan").with_reason(Reason::PlanNotFound));
        }
        let entry = self
            .store
            .kv(Bucket::Rebalance)
            .get(&plan_key(id))
            .await?
            .ok_or_else(|| ApiError::not_found("no such plan").with_reason(Reason::PlanNotFound))?;
        let plan = Plan::from_bytes(&entry.value)
            .map_err(|err| ApiError::internal("stored plan unreadable", &err))?;
        Ok((plan, entry.revision))
    }

    /// Writes `plan` over `revision`; `Conflict` when another replica changed it first.
    async fn save(&self, plan: &Plan, revision: u64) -> Result<u64, StoreError> {
        let bytes = plan
            .to_bytes()
            .map_err(|err| StoreError::Corrupt(err.to_string()))?;
        self.store
            .kv(Bucket::Rebalance)
            .update(&plan_key(&plan.id), bytes, revision)
            .await
    }

    async fn release(&self, plan: &Plan) {
        let kv = self.store.kv(Bucket::Rebalance);
        let key = active_key(plan.kind, &plan.tenant_id);
        if let Ok(Some(entry)) = kv.get(&key).await
            && entry.value.as_ref() == plan.id.as_bytes()
        {
            let _ = kv.delete(&key, Some(entry.revision)).await;
        }
    }

    /// Validates and stores a new plan for (`tenant`, `kind`) → `target`.
    pub async fn create(
        &self,
        tenant: TenantId,
        kind: ServiceKind,
        target: String,
        actor: &str,
        now: i64,
    ) -> Result<Plan, ApiError> {
        let (doc, _) = self.routing_doc().await?;
        if !doc.kind(kind).shards.contains_key(&target) {
            return Err(ApiError::bad_request(format!(
                "{kind}: shard {target:?} is not in the directory"
            ))
            .with_reason(Reason::UnknownShard));
        }
        let source = effective(&doc, kind, &tenant).ok_or_else(|| {
            ApiError::bad_request(format!("tenant {tenant} is not routed for {kind}"))
                .with_reason(Reason::TenantNotRouted)
        })?;
        if source == target {
            return Err(
                ApiError::bad_request(format!("tenant {tenant} is already on {target}"))
                    .with_reason(Reason::AlreadyOnTarget),
            );
        }
        let id = format!("rbp_{}", uuid::Uuid::new_v4().simple());
        let kv = self.store.kv(Bucket::Rebalance);
        let active = active_key(kind, &tenant);
        match kv.create(&active, id.clone().into_bytes().into()).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                let holder = kv
                    .get(&active)
                    .await?
                    .map(|e| String::from_utf8_lossy(&e.value).to_string())
                    .unwrap_or_default();
                return Err(conflict(
                    Reason::PlanAlreadyActive,
                    format!("plan {holder} is already active for {tenant} ({kind})"),
                ));
            }
            Err(err) => return Err(err.into()),
        }
        let plan = Plan {
            id: id.clone(),
            source_placement: doc.kind(kind).placement.get(&tenant).cloned(),
            tenant_id: tenant,
            kind,
            source_shard: source,
            target_shard: target,
            state: PlanState::Planned,
            created_at: now,
            created_by: actor.to_string(),
            updated_at: now,
            lease_holder: None,
            lease_until: None,
            applied_revision: None,
            rolled_back_revision: None,
            last_gate_report: None,
            failure: None,
            history: vec![Step {
                at: now,
                state: PlanState::Planned,
                by: actor.to_string(),
                note: String::new(),
            }],
        };
        let bytes = plan
            .to_bytes()
            .map_err(|err| ApiError::internal("plan", &err))?;
        if let Err(err) = kv.create(&plan_key(&id), bytes).await {
            let _ = kv.delete(&active, None).await;
            return Err(err.into());
        }
        Ok(plan)
    }

    /// Every plan, newest first.
    pub async fn list(&self) -> Result<Vec<Plan>, ApiError> {
        let kv = self.store.kv(Bucket::Rebalance);
        let mut plans: Vec<Plan> = read_all(kv.as_ref(), "plan.")
            .await?
            .into_iter()
            .filter_map(|e| Plan::from_bytes(&e.value).ok())
            .collect();
        plans.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(plans)
    }

    /// Moves the plan to `state` (by CAS), recording the step.
    fn step(plan: &mut Plan, state: PlanState, by: &str, note: &str, now: i64) {
        plan.state = state;
        plan.updated_at = now;
        plan.history.push(Step {
            at: now,
            state,
            by: by.to_string(),
            note: note.to_string(),
        });
    }

    /// Applies the plan: gates, then one conditional routing revision. See the module doc.
    pub async fn apply(&self, id: &str, actor: &str) -> Result<Plan, PlanError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        // take the plan (or take it over from a replica whose lease ran out)
        let (mut plan, mut revision) = loop {
            let now = gateway_core::unix_now();
            let (mut plan, revision) = self.load(id).await?;
            match plan.state {
                PlanState::Applied => return Ok(plan),
                PlanState::Planned => {}
                PlanState::Applying if plan.lease_until.is_some_and(|t| t > now) => {
                    return Err(conflict(
                        Reason::PlanInProgress,
                        "another apply of this plan is running",
                    )
                    .with_retry_after(plan.lease_until.map_or(1, |t| (t - now).max(1) as u64))
                    .into());
                }
                PlanState::Applying => {}
                other => {
                    return Err(conflict(
                        Reason::PlanNotApplicable,
                        format!("the plan is {}", state_name(other)),
                    )
                    .into());
                }
            }
            let note = if plan.state == PlanState::Applying {
                "taken over after the lease ran out"
            } else {
                ""
            };
            Self::step(&mut plan, PlanState::Applying, actor, note, now);
            plan.lease_holder = Some(token.clone());
            plan.lease_until = Some(now + self.settings.lease.as_secs().max(1) as i64);
            match self.save(&plan, revision).await {
                Ok(revision) => break (plan, revision),
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        };

        let (doc, routing_revision) = self.routing_doc().await?;
        let now = gateway_core::unix_now();
        match effective(&doc, plan.kind, &plan.tenant_id) {
            // the cutover happened (a replica died after publishing): finish the plan
            Some(shard) if shard == plan.target_shard => {
                plan.applied_revision.get_or_insert(routing_revision);
                return self
                    .finish(plan, revision, actor, "cutover found published")
                    .await;
            }
            Some(shard) if shard == plan.source_shard => {}
            moved => {
                let note = format!(
                    "the tenant moved to {} outside the plan",
                    moved.as_deref().unwrap_or("no shard")
                );
                plan.failure = Some(note.clone());
                Self::step(&mut plan, PlanState::Failed, actor, &note, now);
                plan.lease_holder = None;
                plan.lease_until = None;
                self.save(&plan, revision).await?;
                self.release(&plan).await;
                return Err(conflict(Reason::PlacementMoved, note).into());
            }
        }

        let report = self.gates(&plan, &doc).await;
        plan.last_gate_report = Some(report.clone());
        if !report.ready {
            let now = gateway_core::unix_now();
            Self::step(&mut plan, PlanState::Planned, actor, "gates not ready", now);
            plan.lease_holder = None;
            plan.lease_until = None;
            self.save(&plan, revision).await?;
            return Err(PlanError::Gates {
                plan: Box::new(plan),
                report,
            });
        }

        // still ours? (a lease that ran out during slow gates may have been taken over)
        let (current, current_revision) = self.load(id).await?;
        if current.lease_holder.as_deref() != Some(token.as_str()) {
            return Err(
                conflict(Reason::PlanInProgress, "the plan was taken over meanwhile").into(),
            );
        }
        revision = current_revision;
        let (kind, tenant) = (plan.kind, plan.tenant_id.clone());
        let (source, target) = (plan.source_shard.clone(), plan.target_shard.clone());
        let published = self
            .routing
            .modify(gateway_core::unix_now(), |doc| {
                match effective(doc, kind, &tenant) {
                    Some(shard) if shard == source => {}
                    _ => {
                        return Err(conflict(
                            Reason::PlacementMoved,
                            "the tenant is no longer on the source shard",
                        ));
                    }
                }
                if !doc.kind(kind).shards.contains_key(&target) {
                    return Err(conflict(
                        Reason::TargetMissing,
                        "the target shard left the directory",
                    ));
                }
                doc.kind_mut(kind)
                    .placement
                    .insert(tenant.clone(), target.clone());
                Ok(())
            })
            .await;
        match published {
            Ok((_, _, routing_revision)) => {
                plan.applied_revision = Some(routing_revision);
                self.finish(plan, revision, actor, "cut over").await
            }
            Err(err) => {
                // not cut over: the plan goes back to planned, unless the tenant moved
                let (doc, _) = self.routing_doc().await?;
                let now = gateway_core::unix_now();
                if effective(&doc, kind, &plan.tenant_id).as_deref() == Some(&plan.target_shard) {
                    return self
                        .finish(plan, revision, actor, "cutover found published")
                        .await;
                }
                Self::step(&mut plan, PlanState::Planned, actor, &err.message, now);
                plan.lease_holder = None;
                plan.lease_until = None;
                self.save(&plan, revision).await?;
                Err(err.into())
            }
        }
    }

    async fn finish(
        &self,
        mut plan: Plan,
        revision: u64,
        actor: &str,
        note: &str,
    ) -> Result<Plan, PlanError> {
        let now = gateway_core::unix_now();
        Self::step(&mut plan, PlanState::Applied, actor, note, now);
        plan.lease_holder = None;
        plan.lease_until = None;
        match self.save(&plan, revision).await {
            Ok(_) => {}
            // another replica finished it first
            Err(StoreError::Conflict { .. }) => {
                let (current, _) = self.load(&plan.id).await?;
                if current.state == PlanState::Applied {
                    return Ok(current);
                }
                return Err(conflict(Reason::PlanInProgress, "the plan changed meanwhile").into());
            }
            Err(err) => return Err(err.into()),
        }
        self.release(&plan).await;
        metrics::counter!("gateway_rebalance_cutovers_total", "kind" => plan.kind.as_str())
            .increment(1);
        tracing::info!(plan = %plan.id, tenant = %plan.tenant_id, kind = %plan.kind, target = %plan.target_shard, revision = ?plan.applied_revision, "rebalance applied");
        Ok(plan)
    }

    /// Restores the placement the plan replaced; refused when the tenant's placement
    /// moved since the cutover.
    pub async fn rollback(&self, id: &str, actor: &str) -> Result<Plan, ApiError> {
        loop {
            let now = gateway_core::unix_now();
            let (mut plan, revision) = self.load(id).await?;
            match plan.state {
                PlanState::Applied => {}
                PlanState::Applying if plan.lease_until.is_none_or(|t| t <= now) => {}
                PlanState::Applying => {
                    return Err(conflict(
                        Reason::PlanInProgress,
                        "the plan is being applied; retry when it ends",
                    )
                    .with_retry_after(1));
                }
                other => {
                    return Err(conflict(
                        Reason::PlanNotApplicable,
                        format!("a {} plan cannot be rolled back", state_name(other)),
                    ));
                }
            }
            let (kind, tenant) = (plan.kind, plan.tenant_id.clone());
            let (doc, _) = self.routing_doc().await?;
            let on = effective(&doc, kind, &tenant);
            if on.as_deref() == Some(plan.source_shard.as_str())
                && plan.state == PlanState::Applying
            {
                // an abandoned apply that never cut over: nothing to restore
                Self::step(
                    &mut plan,
                    PlanState::RolledBack,
                    actor,
                    "never cut over",
                    now,
                );
            } else if on.as_deref() == Some(plan.target_shard.as_str()) {
                let (target, previous) = (plan.target_shard.clone(), plan.source_placement.clone());
                let (_, _, routing_revision) = self
                    .routing
                    .modify(now, |doc| {
                        if effective(doc, kind, &tenant).as_deref() != Some(target.as_str()) {
                            return Err(conflict(
                                Reason::PlacementMoved,
                                "the tenant's placement moved since the cutover",
                            ));
                        }
                        let placement = &mut doc.kind_mut(kind).placement;
                        match &previous {
                            Some(shard) => placement.insert(tenant.clone(), shard.clone()),
                            None => placement.remove(&tenant),
                        };
                        Ok(())
                    })
                    .await?;
                plan.rolled_back_revision = Some(routing_revision);
                Self::step(
                    &mut plan,
                    PlanState::RolledBack,
                    actor,
                    "placement restored",
                    now,
                );
            } else {
                return Err(conflict(
                    Reason::PlacementMoved,
                    format!(
                        "the tenant is on {} now, not on the plan's target {}; nothing rolled back",
                        on.as_deref().unwrap_or("no shard"),
                        plan.target_shard
                    ),
                ));
            }
            plan.lease_holder = None;
            plan.lease_until = None;
            match self.save(&plan, revision).await {
                Ok(_) => {
                    self.release(&plan).await;
                    return Ok(plan);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Cancels a plan that has not cut over.
    pub async fn cancel(&self, id: &str, actor: &str) -> Result<Plan, ApiError> {
        loop {
            let now = gateway_core::unix_now();
            let (mut plan, revision) = self.load(id).await?;
            let abandoned =
                plan.state == PlanState::Applying && plan.lease_until.is_none_or(|t| t <= now);
            if plan.state != PlanState::Planned && !abandoned {
                return Err(conflict(
                    Reason::PlanNotApplicable,
                    format!("a {} plan cannot be cancelled", state_name(plan.state)),
                ));
            }
            if abandoned {
                let (doc, _) = self.routing_doc().await?;
                if effective(&doc, plan.kind, &plan.tenant_id).as_deref()
                    == Some(plan.target_shard.as_str())
                {
                    return Err(conflict(
                        Reason::PlanNotApplicable,
                        "the plan already cut over; roll it back instead",
                    ));
                }
            }
            Self::step(&mut plan, PlanState::Cancelled, actor, "", now);
            plan.lease_holder = None;
            plan.lease_until = None;
            match self.save(&plan, revision).await {
                Ok(_) => {
                    self.release(&plan).await;
                    return Ok(plan);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Asks every endpoint concerned, per kind: Projection: the target caught up (lag
    /// within the bound); Runner: the source drained with a checkpoint unchanged across
    /// two reads, and the target ready to take the work; Aggregate: the source drained
    /// and the target's state available. The numbers are checked, not only the verdict.
    pub async fn gates(&self, plan: &Plan, doc: &RoutingDocument) -> GateReport {
        let routing = doc.kind(plan.kind);
        let endpoints = |shard: &str| routing.shards.get(shard).cloned().unwrap_or_default();
        let mut checks: Vec<(&'static str, &str, &'static str)> = Vec::new();
        match plan.kind {
            ServiceKind::Projection => {
                checks.push(("projection.caught_up", &plan.target_shard, "target"));
            }
            ServiceKind::Runner => {
                checks.push(("runner.drained", &plan.source_shard, "source"));
                checks.push(("runner.target_ready", &plan.target_shard, "target"));
            }
            ServiceKind::Aggregate => {
                checks.push(("aggregate.drained", &plan.source_shard, "source"));
                checks.push(("aggregate.state_available", &plan.target_shard, "target"));
            }
        }
        let mut gates = Vec::new();
        for (gate, shard, role) in checks {
            let list = endpoints(shard);
            if list.is_empty() {
                gates.push(GateResult {
                    gate: gate.into(),
                    shard: shard.into(),
                    endpoint: String::new(),
                    ready: false,
                    reason: "the shard has no endpoint".into(),
                    numbers: Value::Null,
                });
            }
            for endpoint in list {
                gates.push(self.gate(plan, gate, shard, role, &endpoint).await);
            }
        }
        GateReport {
            ready: !gates.is_empty() && gates.iter().all(|g| g.ready),
            checked_at: gateway_core::unix_now(),
            gates,
        }
    }

    async fn ask(&self, url: &str) -> Result<Value, String> {
        let response = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|err| format!("unreachable: {err}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        response
            .json::<Value>()
            .await
            .map_err(|err| format!("unreadable answer: {err}"))
    }

    async fn gate(
        &self,
        plan: &Plan,
        gate: &str,
        shard: &str,
        role: &str,
        endpoint: &str,
    ) -> GateResult {
        let url = format!(
            "{}/gateway/v1/readiness/{}/{}?role={role}&max_lag={}",
            endpoint.trim_end_matches('/'),
            plan.kind.as_str(),
            plan.tenant_id.as_str(),
            self.settings.max_projection_lag
        );
        let result = |ready: bool, reason: String, numbers: Value| GateResult {
            gate: gate.into(),
            shard: shard.into(),
            endpoint: endpoint.into(),
            ready,
            reason,
            numbers,
        };
        let first = match self.ask(&url).await {
            Ok(answer) => answer,
            Err(reason) => return result(false, reason, Value::Null),
        };
        let node_ready = first["ready"].as_bool() == Some(true);
        let reason = first["reason"].as_str().unwrap_or_default().to_string();
        let numbers = json!({
            "in_flight": first["in_flight"], "lag": first["lag"],
            "checkpoint": first["checkpoint"], "state_available": first["state_available"],
        });
        if !node_ready {
            return result(false, reason, numbers);
        }
        match gate {
            "projection.caught_up" => {
                let lag = first["lag"].as_u64().unwrap_or(u64::MAX);
                if lag > self.settings.max_projection_lag {
                    return result(
                        false,
                        format!("lag {lag} is above {}", self.settings.max_projection_lag),
                        numbers,
                    );
                }
            }
            "runner.drained" | "aggregate.drained" if first["in_flight"].as_u64() != Some(0) => {
                return result(false, "calls still in flight".into(), numbers);
            }
            "aggregate.state_available" if first["state_available"].as_bool() != Some(true) => {
                return result(
                    false,
                    "the node says ready, but not state_available".into(),
                    numbers,
                );
            }
            _ => {}
        }
        if gate == "runner.drained" {
            // the checkpoint must hold still: read it again after a pause
            tokio::time::sleep(self.settings.checkpoint_recheck).await;
            let second = match self.ask(&url).await {
                Ok(answer) => answer,
                Err(reason) => return result(false, reason, numbers),
            };
            let numbers = json!({
                "in_flight": second["in_flight"],
                "checkpoint_first": first["checkpoint"],
                "checkpoint_second": second["checkpoint"],
            });
            if second["ready"].as_bool() != Some(true) || second["in_flight"].as_u64() != Some(0) {
                return result(false, "calls in flight at the second read".into(), numbers);
            }
            if first["checkpoint"] != second["checkpoint"] {
                return result(false, "the checkpoint is still moving".into(), numbers);
            }
            return result(true, "drained, checkpoint stable".into(), numbers);
        }
        result(true, reason, numbers)
    }

    /// Data-plane replicas and the routing revision each one uses; forgets long-gone ones.
    pub async fn replicas(&self, now: i64) -> Result<Replicas, ApiError> {
        let kv = self.store.kv(Bucket::Rebalance);
        let (_, published) = self.routing_doc().await?;
        let mut replicas = Vec::new();
        for entry in read_all(kv.as_ref(), DATA_PREFIX).await? {
            let Ok(beat) = Heartbeat::from_bytes(&entry.value) else {
                continue;
            };
            let age = now - beat.seen_at;
            if age > FORGET_AFTER_SECS {
                let _ = kv.delete(&entry.key, Some(entry.revision)).await;
                continue;
            }
            replicas.push(Replica {
                replica_id: beat.replica_id,
                plane: beat.plane,
                routing_revision: beat.routing_revision,
                jwks_revision: beat.jwks_revision,
                principals: beat.principals,
                version: beat.version,
                started_at: beat.started_at,
                seen_at: beat.seen_at,
                stale: age > STALE_AFTER_SECS,
            });
        }
        let mut live = replicas.iter().filter(|r| !r.stale).peekable();
        let converged = live.peek().is_some() && live.all(|r| r.routing_revision == published);
        Ok(Replicas {
            published_revision: published,
            converged,
            replicas,
        })
    }
}

/// The data-plane replicas and whether the live ones use the published routing.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Replicas {
    pub published_revision: u64,
    /// Every live (not stale) replica uses the published revision, and there is one.
    pub converged: bool,
    pub replicas: Vec<Replica>,
}

/// One data-plane replica, as its last heartbeat says.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Replica {
    pub replica_id: String,
    pub plane: String,
    /// Routing revision in use (0: none yet).
    pub routing_revision: u64,
    /// Key-document revision in use (0: none yet).
    pub jwks_revision: u64,
    /// Principals in its authorization mirror.
    pub principals: u64,
    pub version: String,
    pub started_at: i64,
    pub seen_at: i64,
    /// No heartbeat for a while: not counted in `converged`.
    pub stale: bool,
}

pub fn state_name(state: PlanState) -> &'static str {
    match state {
        PlanState::Planned => "planned",
        PlanState::Applying => "applying",
        PlanState::Applied => "applied",
        PlanState::RolledBack => "rolled_back",
        PlanState::Failed => "failed",
        PlanState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests;
