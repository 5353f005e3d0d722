//! Plans: cutover only behind ready gates, idempotent apply, rollback, cancel, refusals, audit.

use std::time::{Duration, Instant};

use gateway_tests::upstream::{self, TenantReadiness};
use serde_json::{Value, json};

use super::{Env, START, call, wait_for_revision};

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

/// Every gate refuses the cut-over on its own, naming itself, and the numbers count as
/// much as the verdict: a node that says `ready` with a lag above the bound, calls in
/// flight or no state available is refused all the same. Nothing is published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_gate_refuses_the_cutover_naming_itself_and_numbers_beat_verdicts() {
    let env = Env::start(1, &["--rebalance-checkpoint-recheck", "50ms"]).await;
    let (old, new) = (&env.old.node, &env.new.node);
    let says_ready = Some(true);
    let cases: [(&str, &upstream::Node, TenantReadiness, &str, &str); 7] = [
        (
            "projection",
            new,
            TenantReadiness {
                lag: 7,
                verdict: says_ready,
                ..Default::default()
            },
            "projection.caught_up",
            "lag 7",
        ),
        (
            "runner",
            old,
            TenantReadiness {
                in_flight: 2,
                verdict: says_ready,
                ..Default::default()
            },
            "runner.drained",
            "in flight",
        ),
        (
            "runner",
            new,
            TenantReadiness {
                accepts_work: false,
                ..Default::default()
            },
            "runner.target_ready",
            "no work",
        ),
        (
            "aggregate",
            old,
            TenantReadiness {
                in_flight: 1,
                verdict: says_ready,
                ..Default::default()
            },
            "aggregate.drained",
            "in flight",
        ),
        (
            "aggregate",
            new,
            TenantReadiness {
                state_available: false,
                ..Default::default()
            },
            "aggregate.state_available",
            "not available",
        ),
        (
            "aggregate",
            new,
            TenantReadiness {
                state_available: false,
                verdict: says_ready,
                ..Default::default()
            },
            "aggregate.state_available",
            "not state_available",
        ),
        (
            "aggregate",
            new,
            TenantReadiness {
                verdict: Some(false),
                ..Default::default()
            },
            "aggregate.state_available",
            "",
        ),
    ];
    let before = env.revision().await;
    for (kind, node, readiness, gate, reason) in cases {
        let id = env.plan(kind, "new").await;
        node.set_readiness(kind, "acme", readiness.clone());
        let (status, answer) = env.action(&id, "apply").await;
        assert_eq!(status, 409, "{gate} {readiness:?}: {answer}");
        assert_eq!(answer["error"]["code"], "gates_not_ready");
        let refused: Vec<&Value> = answer["gates"]["gates"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["ready"] == false)
            .collect();
        assert_eq!(refused.len(), 1, "{gate} {readiness:?}: {answer}");
        assert_eq!(refused[0]["gate"], gate, "{answer}");
        let said = refused[0]["reason"].as_str().unwrap();
        assert!(said.contains(reason), "{gate}: {said}");
        assert_eq!(answer["plan"]["state"], "planned");
        assert_eq!(env.revision().await, before, "{gate}: published");
        assert_eq!(env.shard_of(kind).await, "old");
        // the gate alone was in the way: it passes once the node is ready
        node.set_readiness(kind, "acme", TenantReadiness::default());
        let (status, report) = env
            .admin_call("GET", &format!("/admin/rebalance/plans/{id}/gates"), None)
            .await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["ready"], true, "{gate}: {report}");
        let (status, cancelled) = env.action(&id, "cancel").await;
        assert_eq!(status, 200, "{cancelled}");
    }
}
