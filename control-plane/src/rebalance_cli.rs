//! `control-plane rebalance …`: the operator's command line over the rebalancing admin
//! API. Prints readable tables (or the raw JSON with `--json`); exits 0 when the step
//! went through, 1 when the gateway refused it (gates not ready, plan in progress, …),
//! 2 for bad usage and 3 when the control plane cannot be reached.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

/// Exit codes, shown in `--help`.
pub const EXIT_CODES: &str = "Exit codes: 0 the step went through; 1 the gateway refused it \
(gates not ready, plan in progress, …); 2 bad usage; 3 the control plane cannot be reached.";

#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct RebalanceCli {
    /// Base URL of a control plane.
    #[arg(
        long,
        global = true,
        env = "GATEWAY_ADMIN_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    pub url: String,
    /// File holding an access token with `rebalance.operate` (required; checked when the
    /// action runs, since it may come before or after the action).
    #[arg(long, global = true, env = "GATEWAY_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of tables (before or after the action).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub action: RebalanceAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum RebalanceAction {
    /// Plan a move of one tenant of one service kind to a target shard.
    Plan {
        /// The tenant to move.
        #[arg(long)]
        tenant: String,
        /// The service kind whose placement moves.
        #[arg(long, value_parser = ["aggregate", "projection", "runner"])]
        kind: String,
        /// The shard that takes the tenant over.
        #[arg(long)]
        target: String,
    },
    /// Check the gates and, when all pass, cut over.
    Apply { plan_id: String },
    /// Restore the placement the plan replaced.
    Rollback { plan_id: String },
    /// Cancel a plan that has not cut over.
    Cancel { plan_id: String },
    /// One plan with its gates checked now, or every plan and the replicas' convergence.
    Status { plan_id: Option<String> },
}

/// Runs the command; the exit code says how it went.
pub async fn run(cli: RebalanceCli) -> ExitCode {
    // required, but global (it may follow the action), which clap cannot require itself
    let Some(token_file) = &cli.token_file else {
        return usage(
            "--token-file (GATEWAY_ADMIN_TOKEN_FILE) is required: a file holding an access token with rebalance.operate",
        );
    };
    let token = match std::fs::read_to_string(token_file) {
        Ok(token) if !token.trim().is_empty() => token.trim().to_string(),
        Ok(_) => return usage(&format!("{} is empty", token_file.display())),
        Err(err) => {
            return usage(&format!(
                "--token-file (GATEWAY_ADMIN_TOKEN_FILE): cannot read {}: {err}",
                token_file.display()
            ));
        }
    };
    let base = cli.url.trim_end_matches('/').to_string();
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
    {
        Ok(client) => client,
        Err(err) => return usage(&err.to_string()),
    };
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut request = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(&token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await?;
            let status = response.status();
            let value: Value = response.json().await.unwrap_or(Value::Null);
            Ok::<_, reqwest::Error>((status, value))
        }
    };
    use reqwest::Method;
    let plans = "/admin/rebalance/plans";
    let result = match &cli.action {
        RebalanceAction::Plan {
            tenant,
            kind,
            target,
        } => {
            let body =
                serde_json::json!({"tenant_id": tenant, "kind": kind, "target_shard": target});
            call(Method::POST, plans.to_string(), Some(body)).await
        }
        RebalanceAction::Apply { plan_id } => {
            call(Method::POST, format!("{plans}/{plan_id}/apply"), None).await
        }
        RebalanceAction::Rollback { plan_id } => {
            call(Method::POST, format!("{plans}/{plan_id}/rollback"), None).await
        }
        RebalanceAction::Cancel { plan_id } => {
            call(Method::POST, format!("{plans}/{plan_id}/cancel"), None).await
        }
        RebalanceAction::Status {
            plan_id: Some(plan_id),
        } => match call(Method::GET, format!("{plans}/{plan_id}"), None).await {
            Ok((status, mut plan)) if status.is_success() => {
                // the gates as they are now, for a plan that has not cut over
                if plan["state"] == "planned"
                    && let Ok((s, gates)) =
                        call(Method::GET, format!("{plans}/{plan_id}/gates"), None).await
                    && s.is_success()
                {
                    plan["gates_now"] = gates;
                }
                Ok((status, plan))
            }
            other => other,
        },
        RebalanceAction::Status { plan_id: None } => {
            match call(Method::GET, plans.to_string(), None).await {
                Ok((status, mut list)) if status.is_success() => {
                    if let Ok((s, replicas)) =
                        call(Method::GET, "/admin/routing/replicas".into(), None).await
                        && s.is_success()
                    {
                        list["replicas"] = replicas;
                    }
                    Ok((status, list))
                }
                other => other,
            }
        }
    };
    let (status, answer) = match result {
        Ok(answer) => answer,
        Err(err) => {
            eprintln!("rebalance: cannot reach {base}: {err}");
            return ExitCode::from(3);
        }
    };
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    } else {
        print!("{}", render(&answer));
    }
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        if !cli.json {
            eprintln!(
                "refused ({}): {} {}",
                status.as_u16(),
                answer["error"]["code"].as_str().unwrap_or("error"),
                answer["error"]["message"].as_str().unwrap_or_default()
            );
        }
        ExitCode::from(1)
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("rebalance: {message}");
    ExitCode::from(2)
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows aligned under their headers.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn gates_table(report: &Value) -> String {
    let rows: Vec<Vec<String>> = report["gates"]
        .as_array()
        .map(|gates| {
            gates
                .iter()
                .map(|g| {
                    vec![
                        text(&g["gate"]),
                        text(&g["shard"]),
                        text(&g["endpoint"]),
                        if g["ready"] == true { "yes" } else { "NO" }.into(),
                        text(&g["reason"]),
                        g["numbers"]
                            .as_object()
                            .map(|n| {
                                n.iter()
                                    .filter(|(_, v)| !v.is_null())
                                    .map(|(k, v)| format!("{k}={}", text(v)))
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .unwrap_or_default(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &["GATE", "SHARD", "ENDPOINT", "READY", "REASON", "NUMBERS"],
        &rows,
    )
}

fn plan_text(plan: &Value) -> String {
    let mut out = String::new();
    for (label, value) in [
        ("plan", text(&plan["id"])),
        ("tenant", text(&plan["tenant_id"])),
        ("kind", text(&plan["kind"])),
        (
            "move",
            format!(
                "{} -> {}",
                text(&plan["source_shard"]),
                text(&plan["target_shard"])
            ),
        ),
        ("state", text(&plan["state"])),
        ("cutover revision", text(&plan["applied_revision"])),
        ("rollback revision", text(&plan["rolled_back_revision"])),
    ] {
        out.push_str(&format!("{label:<18} {value}\n"));
    }
    if let Some(failure) = plan["failure"].as_str() {
        out.push_str(&format!("{:<18} {failure}\n", "failure"));
    }
    out
}

/// Human form of an answer of the rebalancing API.
pub fn render(answer: &Value) -> String {
    let mut out = String::new();
    if let Some(plans) = answer["plans"].as_array() {
        let rows: Vec<Vec<String>> = plans
            .iter()
            .map(|p| {
                vec![
                    text(&p["id"]),
                    text(&p["tenant_id"]),
                    text(&p["kind"]),
                    text(&p["source_shard"]),
                    text(&p["target_shard"]),
                    text(&p["state"]),
                    text(&p["applied_revision"]),
                ]
            })
            .collect();
        out.push_str(&table(
            &["PLAN", "TENANT", "KIND", "FROM", "TO", "STATE", "REVISION"],
            &rows,
        ));
        let replicas = &answer["replicas"];
        if let Some(list) = replicas["replicas"].as_array() {
            out.push_str(&format!(
                "\npublished routing revision {}; replicas converged: {}\n",
                text(&replicas["published_revision"]),
                if replicas["converged"] == true {
                    "yes"
                } else {
                    "NO"
                }
            ));
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    vec![
                        text(&r["replica_id"]),
                        text(&r["routing_revision"]),
                        if r["stale"] == true { "stale" } else { "live" }.into(),
                    ]
                })
                .collect();
            out.push_str(&table(&["REPLICA", "ROUTING REVISION", "STATUS"], &rows));
        }
        return out;
    }
    if answer["error"].is_object() {
        // a refusal: the plan and gates when the API sent them
        if answer["plan"].is_object() {
            out.push_str(&plan_text(&answer["plan"]));
        }
        if answer["gates"].is_object() {
            out.push_str("\ngates:\n");
            out.push_str(&gates_table(&answer["gates"]));
        }
        return out;
    }
    out.push_str(&plan_text(answer));
    for (title, report) in [
        ("gates now", &answer["gates_now"]),
        ("gates at the last apply", &answer["last_gate_report"]),
    ] {
        if report.is_object() {
            out.push_str(&format!("\n{title}:\n"));
            out.push_str(&gates_table(report));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plans_and_gate_reports_render_as_aligned_tables() {
        let refusal = json!({
            "error": {"code": "gates_not_ready", "message": "…"},
            "plan": {"id": "rbp_1", "tenant_id": "acme", "kind": "projection", "source_shard": "old", "target_shard": "new", "state": "planned"},
            "gates": {"ready": false, "gates": [
                {"gate": "projection.caught_up", "shard": "new", "endpoint": "http://10.0.0.2:9101", "ready": false, "reason": "lag 7 is above 0", "numbers": {"lag": 7, "in_flight": 0, "checkpoint": null}},
            ]},
        });
        let text = render(&refusal);
        assert!(text.contains("move               old -> new"), "{text}");
        assert!(text.contains("projection.caught_up"));
        assert!(text.contains("NO     lag 7 is above 0"), "{text}");
        assert!(text.contains("lag=7") && !text.contains("checkpoint="));
        let list = json!({"plans": [
            {"id": "rbp_1", "tenant_id": "acme", "kind": "runner", "source_shard": "r1", "target_shard": "r2", "state": "applied", "applied_revision": 4}
        ], "replicas": {"published_revision": 4, "converged": true, "replicas": [{"replica_id": "dp-a", "routing_revision": 4, "stale": false}]}});
        let text = render(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PLAN   TENANT  KIND"), "{text}");
        assert!(lines[1].contains("applied  4"), "{text}");
        assert!(text.contains("replicas converged: yes"));
        assert!(text.contains("dp-a     4                 live"), "{text}");
    }
}
