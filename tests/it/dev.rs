//! The README's local run: one process, embedded store, every part answering, data kept
//! across a restart.

use std::time::Duration;

use gateway_tests::process::{PlaneProcess, wait_for_status};

fn banner_url(process: &PlaneProcess, label: &str) -> Option<String> {
    process.logs().iter().find_map(|line| {
        let rest = line.trim_start().strip_prefix(label)?;
        let url = rest.split_whitespace().next()?;
        url.starts_with("http://").then(|| url.to_string())
    })
}

fn start(dir: &std::path::Path, extra: &[&str]) -> (PlaneProcess, String, String, String) {
    let dir = dir.to_str().unwrap();
    let process = PlaneProcess::spawn(
        "gateway-dev",
        &[
            extra,
            &[
                "--dir",
                dir,
                "--data-listen",
                "127.0.0.1:0",
                "--data-grpc-listen",
                "127.0.0.1:0",
                "--data-ops-listen",
                "127.0.0.1:0",
                "--control-listen",
                "127.0.0.1:0",
                "--upstream-http-listen",
                "127.0.0.1:0",
                "--upstream-grpc-listen",
                "127.0.0.1:0",
            ],
        ]
        .concat(),
        &[],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let (Some(data), Some(control), Some(upstream)) = (
            banner_url(&process, "data plane"),
            banner_url(&process, "control plane"),
            banner_url(&process, "reference upstream"),
        ) {
            return (process, data, control, upstream);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no banner: {:?} {:?}",
            process.logs(),
            process.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_run_serves_every_part_and_keeps_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (mut process, data, control, upstream) = start(dir.path(), &[]);
    for url in [
        format!("{data}/ready"),
        format!("{control}/ready"),
        format!("{upstream}/health"),
    ] {
        wait_for_status(&client, &url, 200, Duration::from_secs(30)).await;
    }
    assert!(dir.path().join("state.redb").exists());
    let key = std::fs::read(dir.path().join("snapshot-signing.pem")).unwrap();
    process.sigterm();
    assert!(process.wait_exit(Duration::from_secs(30)).success());

    // a restart reuses the store and the generated key (and writes JSON log lines when
    // asked, as the planes do in production)
    let (mut again, data, _, _) = start(dir.path(), &["--log-format", "json"]);
    wait_for_status(
        &client,
        &format!("{data}/ready"),
        200,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        std::fs::read(dir.path().join("snapshot-signing.pem")).unwrap(),
        key
    );
    again.sigterm();
    assert!(again.wait_exit(Duration::from_secs(30)).success());
    let json_lines = again
        .logs()
        .iter()
        .chain(again.stderr().iter())
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"].is_string() && line["level"].is_string())
        .count();
    assert!(json_lines > 0, "no JSON log line: {:?}", again.logs());
}
