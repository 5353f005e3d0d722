//! Rolling restarts of each plane under traffic: always a replica ready, no request lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use super::{Cluster, DRAIN, Pool, START, Traffic, both_answer, call};

/// Samples `/ready` of every replica in the pool; records a moment when none was ready.
struct ReadyWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, usize)>,
}

impl ReadyWatch {
    fn start(pool: Pool) -> ReadyWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut samples, mut none_ready) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let mut any = false;
                    for base in pool.get() {
                        if let Ok(response) = client
                            .get(format!("{base}/ready"))
                            .timeout(Duration::from_secs(2))
                            .send()
                            .await
                            && response.status() == 200
                        {
                            any = true;
                        }
                    }
                    samples += 1;
                    if !any {
                        none_ready += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (samples, none_ready)
            })
        };
        ReadyWatch { stop, task }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// T9.2 / T9.3: each plane restarted replica by replica under continuous traffic (start
/// the new one, wait for /ready, SIGTERM the old one, which drains): at least one replica
/// ready at every moment, and no request fails for a client that retries once on the
/// other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_of_each_plane_lose_no_request() {
    let mut cluster = Cluster::start().await;
    let (_, token, _) = cluster.member("roll@example.com", 0).await;
    both_answer(&cluster, &token, "acme", 200).await;

    // the data plane, under query traffic
    let pool = Pool::default();
    pool.set(cluster.data_urls());
    let client = cluster.client.clone();
    let traffic = Traffic::start(pool.clone(), move |base| {
        let (client, token) = (client.clone(), token.clone());
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
    let watch = ReadyWatch::start(pool.clone());
    traffic.until(20).await;
    for _ in 0..2 {
        let (process, urls) = cluster.data_plane();
        gateway_tests::process::wait_for_status(
            &cluster.client,
            &format!("{}/ready", urls.http),
            200,
            START,
        )
        .await;
        let (mut old, old_urls) = cluster.datas.remove(0);
        cluster.datas.push((process, urls));
        // the load balancer learns of the new replica, then the old one drains
        pool.set(vec![
            old_urls.http.clone(),
            cluster.datas.last().unwrap().1.http.clone(),
        ]);
        traffic.until(10).await;
        old.sigterm();
        assert!(
            old.wait_exit(START).success(),
            "the old replica drains and exits 0"
        );
        pool.set(cluster.data_urls());
        traffic.until(20).await;
    }
    let (sent, failures) = traffic.finish().await;
    let (samples, none_ready) = watch.finish().await;
    assert!(sent > 50, "{sent}");
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert!(samples > 10);
    assert_eq!(
        none_ready, 0,
        "no replica ready in {none_ready} of {samples} samples"
    );

    // the control plane, under idempotent reads (keys and an admin listing)
    let pool = Pool::default();
    pool.set(cluster.control_urls());
    let (client, admin) = (cluster.client.clone(), cluster.admin.clone());
    let traffic = Traffic::start(pool.clone(), move |base| {
        let (client, admin) = (client.clone(), admin.clone());
        async move {
            let keys = call(
                &client,
                "GET",
                format!("{base}/.well-known/jwks.json"),
                None,
                None,
                None,
            )
            .await?;
            if keys.0 != 200 {
                return Ok(keys);
            }
            call(
                &client,
                "GET",
                format!("{base}/admin/users?limit=1"),
                Some(&admin),
                None,
                None,
            )
            .await
        }
    });
    let watch = ReadyWatch::start(pool.clone());
    traffic.until(20).await;
    for _ in 0..2 {
        let (process, base) = gateway_tests::spawn_control_plane(
            &cluster.nats.url(),
            &cluster.prefix,
            &cluster.keys,
            &DRAIN,
        );
        gateway_tests::process::wait_for_status(
            &cluster.client,
            &format!("{base}/ready"),
            200,
            START,
        )
        .await;
        let (mut old, old_base) = cluster.controls.remove(0);
        cluster.controls.push((process, base.clone()));
        pool.set(vec![old_base, base]);
        traffic.until(10).await;
        old.sigterm();
        assert!(old.wait_exit(START).success());
        pool.set(cluster.control_urls());
        traffic.until(20).await;
    }
    let (sent, failures) = traffic.finish().await;
    let (_, none_ready) = watch.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(none_ready, 0);
}
