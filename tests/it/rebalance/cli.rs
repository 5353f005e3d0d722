//! The operator CLI: plan, gate report, status, apply, rollback, exit codes.

use gateway_tests::upstream::TenantReadiness;
use serde_json::Value;

use super::Env;

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

    // the global flags go before or after the action; a kind that does not exist, a
    // missing token file and --help say what is wrong, with the documented codes
    let run = |args: &[&str]| {
        let output = std::process::Command::new(gateway_tests::process::bin_path("control-plane"))
            .arg("rebalance")
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let token = token_file.to_str().unwrap();
    let (code, out, err) = run(&[
        "status",
        "--json",
        "--url",
        env.base(),
        "--token-file",
        token,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(serde_json::from_str::<Value>(&out).is_ok(), "{out}");
    let (code, _, err) = run(&[
        "--token-file",
        token,
        "--url",
        env.base(),
        "plan",
        "--tenant",
        "acme",
        "--kind",
        "foo",
        "--target",
        "x",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("aggregate") && err.contains("runner"), "{err}");
    let (code, _, err) = run(&["--url", env.base(), "status"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--token-file"), "{err}");
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("Exit codes") && out.contains("3 the control plane cannot be reached"),
        "{out}"
    );
    let described = |out: &str, flag: &str| -> String {
        let line = out.lines().find(|l| l.trim_start().starts_with(flag));
        line.unwrap_or_default().to_string()
    };
    assert!(
        described(&out, "--token-file").contains("(required"),
        "{out}"
    );
    // every flag of a step is described, the kinds listed
    let (code, out, _) = run(&["plan", "--help"]);
    assert_eq!(code, Some(0));
    for (flag, text) in [
        ("--tenant <TENANT>", "The tenant to move"),
        ("--kind <KIND>", "aggregate, projection, runner"),
        ("--target <TARGET>", "The shard that takes the tenant over"),
    ] {
        assert!(described(&out, flag).contains(text), "{flag}: {out}");
    }
}
