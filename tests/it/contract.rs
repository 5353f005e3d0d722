//! The control plane's API against its own OpenAPI document: schemathesis (pinned, from
//! PyPI; scripts/ensure-schemathesis.sh) generates calls to every operation from the
//! document served at `/openapi.json` and checks every answer (status declared, body as
//! declared, schema-valid requests accepted and invalid ones refused, no server error),
//! through every phase, stateful included. It signs in as the bootstrap admin; the hooks
//! in tests/contract keep it from acting on that very account. The few rules a JSON
//! Schema cannot say are listed, with their reasons, in tests/contract/schemathesis.toml.

use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use serde_json::{Value, json};

/// The JSON answer to `request`.
async fn json(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_answers_as_its_openapi_document_says() {
    let schemathesis = std::env::var("SCHEMATHESIS_BIN").expect(
        "SCHEMATHESIS_BIN names the schemathesis command (scripts/test.sh installs it with scripts/ensure-schemathesis.sh)",
    );
    let nats = NatsServer::start();
    let keys = SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    let (_control, base) = gateway_tests::spawn_control_plane(&nats.url(), &prefix, &keys, &[]);
    let client = reqwest::Client::new();
    let signed_in = json(client.post(format!("{base}/v1/auth/signin")).json(
        &json!({"email": SnapshotKeys::ADMIN_EMAIL, "password": SnapshotKeys::ADMIN_PASSWORD}),
    ))
    .await;
    let token = signed_in["access_token"].as_str().unwrap().to_string();
    // the sign-in answer is what the document's TokenResponse says (schemathesis rarely
    // signs in for real: it does not know a password)
    let document = json(client.get(format!("{base}/openapi.json"))).await;
    let declared = &document["components"]["schemas"]["TokenResponse"];
    let fields = signed_in.as_object().unwrap();
    for field in fields.keys() {
        assert!(
            declared["properties"].get(field).is_some(),
            "{field} is not declared: {declared}"
        );
    }
    for required in declared["required"].as_array().unwrap() {
        assert!(
            fields.contains_key(required.as_str().unwrap()),
            "{required} missing from {signed_in}"
        );
    }
    let session = json(
        client
            .get(format!("{base}/v1/auth/session"))
            .bearer_auth(&token),
    )
    .await;
    let admin = session["user_id"].as_str().unwrap().to_string();

    let contract = concat!(env!("CARGO_MANIFEST_DIR"), "/contract");
    let output = tokio::process::Command::new(&schemathesis)
        .args(["--no-color", "--config-file"])
        .arg(format!("{contract}/schemathesis.toml"))
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all", "--max-examples", "10", "--seed", "1"])
        .env("SCHEMATHESIS_HOOKS", format!("{contract}/hooks.py"))
        .env("CONTRACT_ADMIN_ID", &admin)
        .current_dir(contract)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run {schemathesis}: {err}"));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found answers the document does not allow:\n{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // it ran every phase over the whole document, not an empty selection
    assert!(report.contains("Tested: "), "{report}");
    let tested = report
        .lines()
        .find_map(|line| line.trim().strip_prefix("Tested: "))
        .and_then(|count| count.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert!(tested >= 70, "only {tested} operations tested:\n{report}");
}
