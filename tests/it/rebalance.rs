//! Tenant rebalancing: plans, readiness gates, apply / rollback / cancel, convergence of
//! the data-plane replicas, two control planes racing, and a cutover under live traffic.

use std::time::{Duration, Instant};

use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use gateway_tests::process::PlaneProcess;
use gateway_tests::upstream::{self, RunningNode, TenantReadiness};
use serde_json::{Value, json};

const START: Duration = Duration::from_secs(30);
const PASSWORD: &str = "plum tractor velvet lagoon";

async fn call(
    client: &reqwest::Client,
    method: &str,
    url: String,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

struct Env {
    nats: NatsServer,
    keys: SnapshotKeys,
    prefix: String,
    controls: Vec<(PlaneProcess, String)>,
    client: reqwest::Client,
    admin: String,
    old: RunningNode,
    new: RunningNode,
}

impl Env {
    /// `controls` control planes sharing one NATS, each with `flags`; shards `old` and `new`
    /// for each kind (plus `other`), tenant `acme` on `old` everywhere.
    async fn start(controls: usize, flags: &[&str]) -> Env {
        let nats = NatsServer::start();
        let keys = SnapshotKeys::generate();
        let prefix = gateway_tests::unique_prefix();
        let controls: Vec<(PlaneProcess, String)> = (0..controls)
            .map(|_| gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, flags))
            .collect();
        let client = reqwest::Client::new();
        let base = controls[0].1.clone();
        let (status, tokens) = call(
            &client,
            "POST",
            format!("{base}/v1/auth/signin"),
            None,
            Some(json!({"email": SnapshotKeys::ADMIN_EMAIL, "password": SnapshotKeys::ADMIN_PASSWORD})),
        )
        .await;
        assert_eq!(status, 200, "{tokens}");
        let loopback = || "127.0.0.1:0".parse().unwrap();
        let old = upstream::start("old", loopback(), loopback())
            .await
            .unwrap();
        let new = upstream::start("new", loopback(), loopback())
            .await
            .unwrap();
        let env = Env {
            admin: tokens["access_token"].as_str().unwrap().to_string(),
            nats,
            keys,
            prefix,
            controls,
            client,
            old,
            new,
        };
        let mut routing = json!({});
        for kind in ["aggregate", "projection", "runner"] {
            let url = |node: &RunningNode| {
                if kind == "aggregate" {
                    node.grpc_url()
                } else {
                    node.http_url()
                }
            };
            routing[kind] = json!({
                "shards": {"old": [url(&env.old)], "new": [url(&env.new)], "other": [url(&env.old)]},
                "placement": {"acme": "old"},
            });
        }
        env.ok("PUT", "/admin/routing", json!({ "routing": routing }))
            .await;
        env
    }

    fn base(&self) -> &str {
        &self.controls[0].1
    }

    async fn admin_call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        call(
            &self.client,
            method,
            format!("{}{path}", self.base()),
            Some(&self.admin),
            body,
        )
        .await
    }

    async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, answer) = self.admin_call(method, path, Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    async fn revision(&self) -> u64 {
        let (_, routing) = self.admin_call("GET", "/admin/routing", None).await;
        routing["revision"].as_u64().unwrap()
    }

    async fn shard_of(&self, kind: &str) -> String {
        let (_, routes) = self
            .admin_call("GET", "/admin/routing/tenants/acme", None)
            .await;
        routes["routes"][kind]["shard"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn plan(&self, kind: &str, target: &str) -> String {
        let plan = self
            .ok(
                "POST",
                "/admin/rebalance/plans",
                json!({"tenant_id": "acme", "kind": kind, "target_shard": target}),
            )
            .await;
        assert_eq!(plan["state"], "planned");
        assert_eq!(plan["source_shard"], "old");
        plan["id"].as_str().unwrap().to_string()
    }

    async fn action(&self, id: &str, action: &str) -> (u16, Value) {
        self.admin_call(
            "POST",
            &format!("/admin/rebalance/plans/{id}/{action}"),
            None,
        )
        .await
    }

    /// A new user holding `role` in acme, signed in: the access token.
    async fn user(&self, email: &str, role: &str) -> String {
        let (status, user) = call(
            &self.client,
            "POST",
            format!("{}/v1/auth/signup", self.base()),
            None,
            Some(json!({"email": email, "password": PASSWORD})),
        )
        .await;
        assert_eq!(status, 201, "{user}");
        self.ok(
            "POST",
            "/admin/assignments",
            json!({"principal_id": user["user_id"], "tenant_id": "acme", "role": role}),
        )
        .await;
        let (status, tokens) = call(
            &self.client,
            "POST",
            format!("{}/v1/auth/signin", self.base()),
            None,
            Some(json!({"email": email, "password": PASSWORD})),
        )
        .await;
        assert_eq!(status, 200, "{tokens}");
        tokens["access_token"].as_str().unwrap().to_string()
    }

    fn data_plane(&self, replica: &str) -> (PlaneProcess, gateway_tests::DataPlaneUrls) {
        gateway_tests::spawn_data_plane(
            &self.nats.url(),
            &self.prefix,
            &self.keys,
            &["--replica-id", replica],
        )
    }
}

/// Polls `GET {ops}/admin/routing` until the replica uses `revision`.
async fn wait_for_revision(client: &reqwest::Client, ops: &str, revision: u64) {
    let deadline = Instant::now() + START;
    loop {
        let (status, used) = call(client, "GET", format!("{ops}/admin/routing"), None, None).await;
        if status == 200 && used["revision"].as_u64() == Some(revision) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica never reached {revision}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// T8.1, T8.2 for each kind, idempotent apply, rollback, cancel, refusals and audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_cut_over_only_behind_ready_gates_and_roll_back() {
    let env = Env::start(1, &["--rebalance-checkpoint-recheck", "100ms"]).await;
    let (_dp_a, a) = env.data_plane("dp-a");
    let (_dp_b, b) = env.data_plane("dp-b");
    let (old, new) = (&env.old.node, &env.new.node);
    let not_ready: [(&str, &upstream::Node, TenantReadiness, &str); 3] = [
        (
            "projection",
            new,
            TenantReadiness {
                lag: 7,
                ..Default::default()
            },
            "projection.caught_up",
        ),
        (
            "runner",
            old,
            TenantReadiness {
                checkpoint_moving: true,
                ..Default::default()
            },
            "runner.drained",
        ),
        (
            "aggregate",
            old,
            TenantReadiness {
                in_flight: 3,
                ..Default::default()
            },
            "aggregate.drained",
        ),
    ];
    for (kind, node, readiness, gate) in not_ready {
        let id = env.plan(kind, "new").await;
        // one active plan per tenant and kind
        let (status, answer) = env
            .admin_call(
                "POST",
                "/admin/rebalance/plans",
                Some(json!({"tenant_id": "acme", "kind": kind, "target_shard": "other"})),
            )
            .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (409, Some("plan_already_active"))
        );

        // T8.2: refused while the gate is not ready, with the report; nothing changes
        node.set_readiness(kind, "acme", readiness);
        let before = env.revision().await;
        let (status, answer) = env.action(&id, "apply").await;
        assert_eq!(status, 409, "{kind}: {answer}");
        assert_eq!(answer["error"]["code"], "gates_not_ready");
        let refused: Vec<&Value> = answer["gates"]["gates"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["ready"] == false)
            .collect();
        assert_eq!(refused.len(), 1, "{answer}");
        assert_eq!(refused[0]["gate"], gate);
        assert!(refused[0]["reason"].as_str().unwrap().len() > 3);
        assert_eq!(answer["plan"]["state"], "planned");
        assert_eq!(env.revision().await, before);
        assert_eq!(env.shard_of(kind).await, "old");

        // ready: it goes through, as one new routing revision
        node.set_readiness(kind, "acme", TenantReadiness::default());
        let (status, applied) = env.action(&id, "apply").await;
        assert_eq!(status, 200, "{kind}: {applied}");
        assert_eq!(applied["state"], "applied");
        let revision = applied["applied_revision"].as_u64().unwrap();
        assert_eq!(revision, before + 1);
        assert!(applied["last_gate_report"]["ready"].as_bool().unwrap());

        // T8.1: the admin API and both data-plane replicas agree on the revision
        assert_eq!(env.revision().await, revision);
        let (_, routing) = env.admin_call("GET", "/admin/routing", None).await;
        assert_eq!(routing["routing"]["kind_revisions"][kind], revision);
        for other in ["aggregate", "projection", "runner"] {
            if other != kind {
                assert!(
                    routing["routing"]["kind_revisions"][other]
                        .as_u64()
                        .unwrap()
                        < revision
                );
            }
        }
        assert_eq!(env.shard_of(kind).await, "new");
        wait_for_revision(&env.client, &a.ops, revision).await;
        wait_for_revision(&env.client, &b.ops, revision).await;
        let deadline = Instant::now() + START;
        loop {
            let (_, replicas) = env.admin_call("GET", "/admin/routing/replicas", None).await;
            let ids: Vec<&str> = replicas["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| r["replica_id"].as_str())
                .collect();
            if replicas["converged"] == true && ids.contains(&"dp-a") && ids.contains(&"dp-b") {
                assert_eq!(replicas["published_revision"], revision);
                break;
            }
            assert!(Instant::now() < deadline, "never converged: {replicas}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // apply is idempotent
        let (status, again) = env.action(&id, "apply").await;
        assert_eq!(
            (status, &again["applied_revision"]),
            (200, &json!(revision))
        );
        assert_eq!(env.revision().await, revision);
    }

    // rollback restores the old placement, once
    let plans = env.ok("GET", "/admin/rebalance/plans", json!(null)).await;
    let id_of = |kind: &str| {
        plans["plans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == kind)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (status, rolled) = env.action(&id_of("projection"), "rollback").await;
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(rolled["state"], "rolled_back");
    assert_eq!(env.shard_of("projection").await, "old");
    let (status, answer) = env.action(&id_of("projection"), "rollback").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("plan_not_applicable"))
    );
    // rollback after the placement moved is refused, and changes nothing
    env.ok(
        "PUT",
        "/admin/routing/runner/placements/acme",
        json!({"shard": "other"}),
    )
    .await;
    let before = env.revision().await;
    let (status, answer) = env.action(&id_of("runner"), "rollback").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("placement_moved"))
    );
    assert_eq!(env.revision().await, before);
    assert_eq!(env.shard_of("runner").await, "other");

    // cancel: a planned plan only
    let id = env.plan("projection", "new").await;
    let (status, cancelled) = env.action(&id, "cancel").await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancelled"))
    );
    for action in ["cancel", "apply", "rollback"] {
        let (status, answer) = env.action(&id, action).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (409, Some("plan_not_applicable")),
            "{action}"
        );
    }
    assert_eq!(env.shard_of("projection").await, "old");

    // bad input is refused and creates nothing
    let plans_before = env.ok("GET", "/admin/rebalance/plans", json!(null)).await["plans"]
        .as_array()
        .unwrap()
        .len();
    for (body, code) in [
        (
            json!({"tenant_id": "acme", "kind": "bogus", "target_shard": "new"}),
            "invalid_kind",
        ),
        (
            json!({"tenant_id": "acme", "kind": "projection", "target_shard": "ghost"}),
            "unknown_shard",
        ),
        (
            json!({"tenant_id": "acme", "kind": "projection", "target_shard": "old"}),
            "already_on_target",
        ),
        (
            json!({"tenant_id": "nobody", "kind": "projection", "target_shard": "new"}),
            "tenant_not_routed",
        ),
        (
            json!({"tenant_id": "Not A Tenant", "kind": "projection", "target_shard": "new"}),
            "invalid_tenant",
        ),
        (
            json!({"tenant_id": "acme", "kind": "projection", "target_shard": "../x"}),
            "invalid_shard",
        ),
        (json!({"tenant_id": "acme"}), "invalid_body"),
    ] {
        let (status, answer) = env
            .admin_call("POST", "/admin/rebalance/plans", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}");
    }
    for id in ["nope", "rbp_0123", "rbp_0123456789abcdef0123456789abcdef"] {
        let (status, answer) = env.action(id, "apply").await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (404, Some("plan_not_found"))
        );
    }
    let plans_after = env.ok("GET", "/admin/rebalance/plans", json!(null)).await["plans"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(plans_before, plans_after);

    // a tenant admin holds no rebalance.operate
    let tenant_admin = env.user("ta@example.com", "tenant_admin").await;
    let (status, _) = call(
        &env.client,
        "POST",
        format!("{}/admin/rebalance/plans", env.base()),
        Some(&tenant_admin),
        Some(json!({"tenant_id": "acme", "kind": "projection", "target_shard": "new"})),
    )
    .await;
    assert_eq!(status, 403);

    // every step is audited, refusals included
    let (_, audit) = env.admin_call("GET", "/admin/audit?limit=1000", None).await;
    let actions: Vec<(String, String)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or_default().to_string(),
                r["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for expected in [
        ("admin.rebalance.plan", "ok"),
        ("admin.rebalance.apply", "refused"),
        ("admin.rebalance.apply", "ok"),
        ("admin.rebalance.rollback", "ok"),
        ("admin.rebalance.rollback", "refused"),
        ("admin.rebalance.cancel", "ok"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, o)| a == expected.0 && o == expected.1),
            "{expected:?} not audited"
        );
    }
}

/// Two control-plane replicas applying the same plan at once cut over exactly once; a
/// replica killed in the middle of an apply leaves a plan the other one finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_cut_over_once_and_finish_a_dead_replicas_apply() {
    let flags = [
        "--rebalance-lease",
        "3s",
        "--rebalance-gate-timeout",
        "1s",
        "--rebalance-checkpoint-recheck",
        "100ms",
    ];
    let mut env = Env::start(2, &flags).await;
    let bases: Vec<String> = env.controls.iter().map(|c| c.1.clone()).collect();

    // the same plan applied on both replicas at the same moment
    let id = env.plan("projection", "new").await;
    let before = env.revision().await;
    let url = |base: &str| format!("{base}/admin/rebalance/plans/{id}/apply");
    let (first, second) = tokio::join!(
        call(&env.client, "POST", url(&bases[0]), Some(&env.admin), None),
        call(&env.client, "POST", url(&bases[1]), Some(&env.admin), None),
    );
    let statuses = [first.0, second.0];
    assert!(statuses.contains(&200), "{first:?} {second:?}");
    for (status, answer) in [&first, &second] {
        assert!(
            *status == 200 || answer["error"]["code"] == "plan_in_progress",
            "{status} {answer}"
        );
    }
    assert_eq!(env.revision().await, before + 1, "exactly one cutover");
    let (status, applied) = call(&env.client, "POST", url(&bases[1]), Some(&env.admin), None).await;
    assert_eq!(
        (status, &applied["applied_revision"]),
        (200, &json!(before + 1))
    );

    // a replica dies while its apply waits on slow gates; the other takes the plan over
    // once the lease ran out, and the tenant is cut over once
    env.old.node.set_readiness(
        "runner",
        "acme",
        TenantReadiness {
            delay_ms: 600,
            ..Default::default()
        },
    );
    let id = env.plan("runner", "new").await;
    let before = env.revision().await;
    let client = env.client.clone();
    let (apply_url, token) = (
        format!("{}/admin/rebalance/plans/{id}/apply", bases[0]),
        env.admin.clone(),
    );
    let doomed =
        tokio::spawn(async move { call(&client, "POST", apply_url, Some(&token), None).await });
    let deadline = Instant::now() + START;
    loop {
        let (_, plan) = call(
            &env.client,
            "GET",
            format!("{}/admin/rebalance/plans/{id}", bases[1]),
            Some(&env.admin),
            None,
        )
        .await;
        if plan["state"] == "applying" {
            break;
        }
        assert!(Instant::now() < deadline, "apply never started: {plan}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SIGKILL: no drain, no cleanup
    let (dead, _) = env.controls.remove(0);
    drop(dead);
    let _ = doomed.await;
    assert_eq!(env.revision_from(&bases[1]).await, before, "no cutover yet");
    let other = |action: &str| format!("{}/admin/rebalance/plans/{id}/{action}", bases[1]);
    let (status, answer) = call(&env.client, "POST", other("apply"), Some(&env.admin), None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("plan_in_progress")),
        "{answer}"
    );
    let deadline = Instant::now() + START;
    let finished = loop {
        let (status, answer) =
            call(&env.client, "POST", other("apply"), Some(&env.admin), None).await;
        if status == 200 {
            break answer;
        }
        assert_eq!(answer["error"]["code"], "plan_in_progress", "{answer}");
        assert!(Instant::now() < deadline, "never taken over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(finished["state"], "applied");
    assert_eq!(finished["applied_revision"], before + 1);
    assert!(
        finished["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["note"] == "taken over after the lease ran out"),
        "{finished}"
    );
    assert_eq!(env.revision_from(&bases[1]).await, before + 1);
}

impl Env {
    async fn revision_from(&self, base: &str) -> u64 {
        let (_, routing) = call(
            &self.client,
            "GET",
            format!("{base}/admin/routing"),
            Some(&self.admin),
            None,
        )
        .await;
        routing["revision"].as_u64().unwrap()
    }
}

/// Under live traffic, requests before the cutover reach the old shard, requests after
/// it the new one, and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_traffic_moves_to_the_new_shard_without_a_failure() {
    let env = Env::start(1, &[]).await;
    let (_dp, data) = env.data_plane("dp-live");
    let token = env.user("live@example.com", "tenant_member").await;
    let query = {
        let client = env.client.clone();
        let url = format!("{}/v1/query/orders", data.http);
        move || {
            let request = client
                .post(url.clone())
                .bearer_auth(&token)
                .header("x-tenant-id", "acme")
                .json(&json!({}));
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap_or(Value::Null);
                (
                    status,
                    answer["node"].as_str().unwrap_or_default().to_string(),
                )
            }
        }
    };
    let deadline = Instant::now() + START;
    while query().await.0 != 200 {
        assert!(Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, query) = (stop.clone(), query.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(query().await);
            }
            seen
        })
    };
    // let some traffic reach the old shard first
    let deadline = Instant::now() + START;
    while env.old.node.recorded().len() < 20 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let id = env.plan("projection", "new").await;
    let (status, applied) = env.action(&id, "apply").await;
    assert_eq!(status, 200, "{applied}");
    wait_for_revision(
        &env.client,
        &data.ops,
        applied["applied_revision"].as_u64().unwrap(),
    )
    .await;
    let deadline = Instant::now() + START;
    while env.new.node.recorded().len() < 20 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = traffic.await.unwrap();
    assert!(
        seen.iter().all(|(status, _)| *status == 200),
        "a request failed"
    );
    let first_new = seen.iter().position(|(_, node)| node == "new").unwrap();
    assert!(first_new > 0);
    assert!(seen[..first_new].iter().all(|(_, node)| node == "old"));
    assert!(
        seen[first_new..].iter().all(|(_, node)| node == "new"),
        "a request reached the old shard after the cutover"
    );
}

/// The operator CLI: plan, a refused apply with its gate report and exit code 1, status,
/// apply, rollback; usage errors exit 2 and an unreachable control plane 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_cli_plans_applies_and_reports_gates() {
    let env = Env::start(1, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &env.admin).unwrap();
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(gateway_tests::process::bin_path("control-plane"))
            .arg("rebalance")
            .args([
                "--url",
                env.base(),
                "--token-file",
                token_file.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(&[
        "plan",
        "--tenant",
        "acme",
        "--kind",
        "projection",
        "--target",
        "new",
    ]);
    assert_eq!(code, Some(0), "{out} {err}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("plan"))
        .map(|rest| rest.trim().to_string())
        .unwrap();
    assert!(id.starts_with("rbp_"), "{out}");
    assert!(
        out.contains("old -> new") && out.contains("planned"),
        "{out}"
    );

    env.new.node.set_readiness(
        "projection",
        "acme",
        TenantReadiness {
            lag: 12,
            ..Default::default()
        },
    );
    let (code, out, err) = cli(&["apply", &id]);
    assert_eq!(code, Some(1), "{out} {err}");
    assert!(
        out.contains("projection.caught_up") && out.contains("lag 12 is above 0"),
        "{out}"
    );
    assert!(err.contains("gates_not_ready"), "{err}");
    let (code, out, _) = cli(&["status", &id]);
    assert_eq!(code, Some(0));
    assert!(out.contains("gates now:") && out.contains("NO"), "{out}");

    env.new
        .node
        .set_readiness("projection", "acme", TenantReadiness::default());
    let (code, out, err) = cli(&["apply", &id]);
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("applied"), "{out}");
    assert_eq!(env.shard_of("projection").await, "new");
    let (code, out, _) = cli(&["status"]);
    assert_eq!(code, Some(0));
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("applied")),
        "{out}"
    );
    let (code, out, _) = cli(&["--json", "rollback", &id]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["state"],
        "rolled_back"
    );
    assert_eq!(env.shard_of("projection").await, "old");

    // refusals and usage errors
    let (code, _, err) = cli(&["cancel", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("plan_not_applicable"), "{err}");
    let output = std::process::Command::new(gateway_tests::process::bin_path("control-plane"))
        .args(["rebalance", "--token-file", "/nonexistent/token", "status"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--token-file"));
    let output = std::process::Command::new(gateway_tests::process::bin_path("control-plane"))
        .args(["rebalance", "--url", "http://127.0.0.1:9", "--token-file"])
        .arg(&token_file)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
}
