//! T10.1: the metrics an operator alerts on exist with their labels, and each counter moves
//! when its event happens (and only then).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gateway_tests::upstream;
use serde_json::json;

use crate::proxy::{START, Stack, send};

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
                    (key.to_string(), value.trim_end_matches('"').to_string())
                })
                .collect();
            Sample {
                name: name.to_string(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// Sum of the samples named `name` whose labels include `labels`.
fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(client: &reqwest::Client, ops: &str) -> Vec<Sample> {
    parse(&gateway_tests::metrics_text(client, ops).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_metrics_exist_and_move_with_their_events() {
    let stack = Stack::start(
        &[
            "--limit-signin-per-ip",
            "3/m",
            "--lockout-free-failures",
            "50",
        ],
        |_| {
            ["--max-in-flight", "1", "--upstream-retries", "0"]
                .map(String::from)
                .to_vec()
        },
    )
    .await;
    let node = upstream::start(
        "shard-m",
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    stack
        .route("projection", "live", &node.http_url(), "acme")
        .await;
    stack.route("projection", "gone", &dead, "initech").await;
    let (token, _) = stack
        .member(
            "watched@example.com",
            &[
                ("acme", "tenant_member"),
                ("initech", "tenant_member"),
                ("unrouted", "tenant_member"),
            ],
        )
        .await;
    let (client, data) = (&stack.client, &stack.data);
    let query = |tenant: &'static str, token: &str, body: serde_json::Value| {
        let token = token.to_string();
        async move {
            send(
                client,
                "POST",
                format!("{}/v1/query/v", data.http),
                Some(&token),
                Some(body),
                &[("x-tenant-id", tenant)],
            )
            .await
        }
    };
    let deadline = Instant::now() + START;
    while query("acme", &token, json!({})).await.0 != 200 {
        assert!(Instant::now() < deadline, "never allowed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // the control plane allows 3 sign-ins a minute from this address (the set-up's
    // sign-ins spent some): the count of 429s seen must be the count recorded
    let signin = format!("{}/v1/auth/signin", stack.base);

    // each event: (what happens, the counter and labels that must move, the action)
    type Check<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let data_checks: Vec<Check> = vec![
        (
            "auth failure",
            "gateway_auth_failures_total",
            vec![("reason", "malformed_token")],
        ),
        (
            "authz denial",
            "gateway_authz_denials_total",
            vec![("reason", "not_tenant_member")],
        ),
        (
            "routing miss",
            "gateway_routing_misses_total",
            vec![("kind", "projection")],
        ),
        (
            "upstream error",
            "gateway_upstream_errors_total",
            vec![
                ("kind", "projection"),
                ("endpoint", dead.as_str()),
                ("reason", "unreachable"),
            ],
        ),
        (
            "load shed",
            "gateway_load_shed_total",
            vec![("route", "query")],
        ),
        (
            "ambiguous request refused",
            "gateway_refused_requests_total",
            vec![("reason", "invalid_path")],
        ),
    ];
    for (event, name, labels) in &data_checks {
        let before = scrape(client, &data.ops).await;
        match *event {
            "auth failure" => {
                assert_eq!(query("acme", "not-a-jwt", json!({})).await.0, 401);
            }
            "authz denial" => {
                assert_eq!(query("globex", &token, json!({})).await.0, 403);
            }
            "routing miss" => {
                assert_eq!(query("unrouted", &token, json!({})).await.0, 404);
            }
            "upstream error" => {
                assert_eq!(query("initech", &token, json!({})).await.0, 503);
            }
            "load shed" => {
                // one slot: a slow query holds it while another arrives. The other is
                // sent once the slow one has reached the upstream (had it been sent at
                // once, either could take the slot first)
                let slow = query("acme", &token, json!({"_reference": {"delay_ms": 3000}}));
                let probe = async {
                    let deadline = Instant::now() + START;
                    while !node
                        .node
                        .recorded()
                        .iter()
                        .any(|call| call.body.contains("delay_ms"))
                    {
                        assert!(Instant::now() < deadline, "the slow query never arrived");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    query("acme", &token, json!({})).await
                };
                let (slow, (status, shed)) = tokio::join!(slow, probe);
                assert_eq!(status, 503, "{shed}");
                assert_eq!(shed["error"]["code"], "load_shed");
                assert_eq!(slow.0, 200, "{}", slow.1);
            }
            "ambiguous request refused" => {
                let status = client
                    .get(format!("{}/v1/query/a%2Fb", data.http))
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 400);
            }
            other => unreachable!("{other}"),
        }
        let after = scrape(client, &data.ops).await;
        let (was, is) = (total(&before, name, labels), total(&after, name, labels));
        assert_eq!(
            is - was,
            1.0,
            "{event}: {name}{labels:?} went {was} -> {is}"
        );
        // the other events' counters stayed put
        for (other, other_name, other_labels) in &data_checks {
            if other != event {
                assert_eq!(
                    total(&before, other_name, other_labels),
                    total(&after, other_name, other_labels),
                    "{other_name} moved on {event}"
                );
            }
        }
    }

    // the control plane: an abuse limit blocks with 429 and counts it, and an admin
    // route refused to a non-admin is counted
    let limited = [("limit", "signin"), ("reason", "rate_limited")];
    let before = scrape(client, &stack.base).await;
    let mut blocked = 0;
    for _ in 0..5 {
        let (status, _) = send(
            client,
            "POST",
            signin.clone(),
            None,
            Some(json!({"email": "nobody@example.com", "password": "a wrong password here"})),
            &[],
        )
        .await;
        blocked += usize::from(status == 429);
    }
    assert!(blocked >= 2, "3/m lets at most 3 of 5 through");
    let (status, answer) = send(
        client,
        "GET",
        format!("{}/admin/users?tenant_id=acme", stack.base),
        Some(&token),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let after = scrape(client, &stack.base).await;
    let blocked_counted = total(&after, "gateway_rate_limited_total", &limited)
        - total(&before, "gateway_rate_limited_total", &limited);
    assert_eq!(blocked_counted, blocked as f64);
    assert_eq!(
        total(&after, "gateway_admin_denials_total", &[])
            - total(&before, "gateway_admin_denials_total", &[]),
        1.0
    );

    // the series dashboards and alerts are built on, with their labels
    let data_samples = scrape(client, &data.ops).await;
    let control_samples = after;
    let expected: [(&[Sample], &str, &[&str]); 12] = [
        (
            &data_samples,
            "gateway_http_requests_total",
            &["plane", "route", "status"],
        ),
        (
            &data_samples,
            "gateway_http_request_duration_seconds_bucket",
            &["plane", "route", "status", "le"],
        ),
        (&data_samples, "gateway_snapshot_revision", &["kind"]),
        (&data_samples, "gateway_snapshot_age_seconds", &["kind"]),
        (&data_samples, "gateway_mirror_stale", &[]),
        (&data_samples, "gateway_token_cache_total", &["result"]),
        (
            &data_samples,
            "gateway_upstream_circuit_state",
            &["endpoint"],
        ),
        (&data_samples, "gateway_build_info", &["version", "git_sha"]),
        (
            &control_samples,
            "gateway_http_requests_total",
            &["plane", "route", "status"],
        ),
        (
            &control_samples,
            "gateway_rate_limited_total",
            &["limit", "reason"],
        ),
        (&control_samples, "gateway_admin_denials_total", &["reason"]),
        (
            &control_samples,
            "gateway_build_info",
            &["version", "git_sha"],
        ),
    ];
    for (samples, name, labels) in expected {
        let found: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
        assert!(!found.is_empty(), "{name} is exported");
        for label in labels {
            assert!(
                found.iter().all(|s| s.labels.contains_key(*label)),
                "{name} has the label {label}"
            );
        }
    }
    // the query route, answered ahead of the router, is labelled as the router would
    assert!(
        data_samples
            .iter()
            .any(|s| s.name == "gateway_http_requests_total"
                && s.labels["route"] == "/v1/query/{view_type}"
                && s.labels["status"] == "200"),
        "the query route is counted under its template"
    );
    // the method is a label too
    assert!(
        data_samples
            .iter()
            .any(|s| s.name == "gateway_http_requests_total"
                && s.labels.get("method").map(String::as_str) == Some("POST")
                && s.labels["route"] == "/v1/query/{view_type}"),
        "requests are counted by method"
    );
    // label values stay bounded: the data plane labels routes by their template
    assert!(
        data_samples
            .iter()
            .filter(|s| s.name == "gateway_http_requests_total")
            .all(|s| !s.labels["route"].contains("/v1/query/v")
                || s.labels["route"] == "/v1/query/{view_type}"),
        "no raw paths as label values"
    );

    // every metric family either plane exposes says what it counts (`# HELP`)
    for ops in [&data.ops, &stack.base] {
        let text = gateway_tests::metrics_text(client, ops).await;
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(families.len() > 2, "{text}");
        for family in families {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("# HELP {family} "))
                        && l.len() > family.len() + 12),
                "{ops}: no # HELP for {family}"
            );
        }
    }
}
