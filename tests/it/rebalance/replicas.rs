//! Two control planes applying one plan at once, and one killed in the middle of an apply.

use std::time::{Duration, Instant};

use gateway_tests::upstream::TenantReadiness;
use serde_json::json;

use super::{Env, START, call};

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
