//! Failures: a killed data plane, and a NATS outage served through and recovered from.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{Cluster, PASSWORD, Pool, START, Traffic, both_answer, call, query_status};

/// A data plane killed with SIGKILL under load: the other keeps serving, and requests in
/// flight on it are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_data_plane_leaves_the_other_serving() {
    let mut cluster = Cluster::start().await;
    let (_, token, _) = cluster.member("kill@example.com", 0).await;
    both_answer(&cluster, &token, "acme", 200).await;
    let survivor = cluster.datas[1].1.http.clone();
    // slow requests in flight on the survivor while the other one dies
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let (client, token, survivor) =
                (cluster.client.clone(), token.clone(), survivor.clone());
            tokio::spawn(async move {
                call(
                    &client,
                    "POST",
                    format!("{survivor}/v1/query/orders"),
                    Some(&token),
                    Some(json!({"_reference": {"delay_ms": 700}})),
                    Some("acme"),
                )
                .await
                .map(|r| r.0)
            })
        })
        .collect();
    let pool = Pool::default();
    pool.set(vec![survivor.clone()]);
    let client = cluster.client.clone();
    let token_for_traffic = token.clone();
    let traffic = Traffic::start(pool, move |base| {
        let (client, token) = (client.clone(), token_for_traffic.clone());
        async move {
            call(
                &client,
                "POST",
                format!("{base}/v1/query/orders"),
                Some(&token),
                Some(json!({})),
                Some("acme"),
            )
            .await
        }
    });
    traffic.until(10).await;
    let (victim, victim_urls) = cluster.datas.remove(0);
    drop(victim); // SIGKILL
    assert!(
        cluster
            .client
            .get(format!("{}/health", victim_urls.http))
            .send()
            .await
            .is_err(),
        "the killed replica is gone"
    );
    traffic.until(30).await;
    let (sent, failures) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    for request in in_flight {
        assert_eq!(request.await.unwrap().unwrap(), 200);
    }
}

/// NATS stopped for 10 s and restarted: the data planes serve throughout from
/// last-known-good state, the control planes answer 503 on writes while it is down and
/// recover without a restart, and nothing written before the outage is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_is_served_through_and_recovered_from() {
    let mut cluster = Cluster::start().await;
    let (id, token, _) = cluster.member("outage@example.com", 0).await;
    both_answer(&cluster, &token, "acme", 200).await;
    let pids: Vec<u32> = cluster
        .controls
        .iter()
        .map(|c| c.0.pid())
        .chain(cluster.datas.iter().map(|d| d.0.pid()))
        .collect();

    cluster.nats.stop();
    let outage = Instant::now();
    let mut served = 0;
    let mut write_refused = false;
    while outage.elapsed() < Duration::from_secs(10) {
        for data in cluster.data_urls() {
            assert_eq!(
                query_status(&cluster.client, &data, &token, "acme").await,
                200,
                "a data plane stopped serving {:?} into the outage",
                outage.elapsed()
            );
            served += 1;
        }
        if !write_refused {
            let (status, answer) = call(
                &cluster.client,
                "POST",
                format!("{}/v1/auth/signup", cluster.controls[served % 2].1),
                None,
                Some(json!({"email": "during@example.com", "password": PASSWORD})),
                None,
            )
            .await
            .unwrap();
            assert!(
                status == 503 || status == 201,
                "a write during the outage: {status} {answer}"
            );
            if status == 503 {
                assert!(answer["error"]["code"].is_string(), "{answer}");
                write_refused = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(write_refused, "no write was refused while NATS was down");
    assert!(served > 20);

    cluster.nats.restart();
    // both control planes recover by themselves and still know what was written before
    for base in cluster.control_urls() {
        gateway_tests::process::wait_for_status(
            &cluster.client,
            &format!("{base}/ready"),
            200,
            START,
        )
        .await;
        let user = cluster
            .admin_ok(
                cluster
                    .control_urls()
                    .iter()
                    .position(|b| *b == base)
                    .unwrap(),
                "GET",
                &format!("/admin/users/{id}"),
                json!(null),
            )
            .await;
        assert_eq!(user["email"], "outage@example.com");
    }
    let after = cluster.member("after@example.com", 1).await;
    both_answer(&cluster, &after.1, "acme", 200).await;
    for data in cluster.data_urls() {
        gateway_tests::process::wait_for_status(
            &cluster.client,
            &format!("{data}/ready"),
            200,
            START,
        )
        .await;
    }
    let now: Vec<u32> = cluster
        .controls
        .iter()
        .map(|c| c.0.pid())
        .chain(cluster.datas.iter().map(|d| d.0.pid()))
        .collect();
    assert_eq!(pids, now, "no process restarted");
}
