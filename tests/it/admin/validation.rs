//! Bad and malformed input on the admin routes: refused in the envelope, nothing written.

use gateway_store::Bucket;
use serde_json::{Value, json};

use super::{env, published};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_is_refused_in_the_envelope_and_writes_nothing() {
    let env = env().await;
    let admin = env.admin().await;
    let store = env.store().await;
    let (_, someone) = env.user("input@example.com").await;
    let before = env.audit_changes(&store).await.len();
    let cases = [
        (
            "POST",
            "/admin/roles",
            json!({"name": "Bad Name", "rights": []}),
            400,
            "invalid_role_name",
        ),
        (
            "POST",
            "/admin/roles",
            json!({"name": "ok_name", "rights": ["NOT A RIGHT"]}),
            400,
            "invalid_right",
        ),
        (
            "POST",
            "/admin/roles",
            json!({"name": "tenant_admin", "rights": []}),
            403,
            "builtin_role",
        ),
        (
            "POST",
            "/admin/roles",
            json!({"rights": []}),
            400,
            "invalid_body",
        ),
        (
            "POST",
            "/admin/assignments",
            json!({"principal_id": someone, "tenant_id": "Not_A_Tenant", "role": "tenant_member"}),
            400,
            "invalid_tenant",
        ),
        (
            "POST",
            "/admin/assignments",
            json!({"principal_id": "robert'); drop", "tenant_id": "acme", "role": "tenant_member"}),
            400,
            "invalid_principal",
        ),
        (
            "POST",
            "/admin/assignments",
            json!({"principal_id": someone, "tenant_id": "acme", "role": "no_such_role"}),
            400,
            "unknown_role",
        ),
        (
            "POST",
            "/admin/assignments",
            json!({"principal_id": "usr_0000", "tenant_id": "acme", "role": "tenant_member"}),
            400,
            "unknown_principal",
        ),
        (
            "POST",
            "/admin/rights",
            json!({"name": "*:x"}),
            400,
            "invalid_right",
        ),
        (
            "POST",
            "/admin/authz/explain",
            json!({"principal_id": someone, "tenant_id": "-x", "action": "a"}),
            400,
            "invalid_tenant",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, answer) = env
            .call(method, path, Some(&admin), Some(body.clone()))
            .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body}"
        );
    }
    let (status, _) = env
        .call(
            "PUT",
            "/admin/roles/nope",
            Some(&admin),
            Some(json!({"rights": []})),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        env.audit_changes(&store).await.len(),
        before,
        "refused input records no change"
    );
    let (_, roles) = env.call("GET", "/admin/roles", Some(&admin), None).await;
    assert_eq!(
        roles["roles"].as_array().unwrap().len(),
        3,
        "no role was created"
    );
    let doc = published(&env, &store, &someone).await.unwrap();
    assert!(doc.payload.grants.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_on_every_admin_route_are_refused_and_write_nothing() {
    let env = env().await;
    let admin = env.admin().await;
    let store = env.store().await;
    let (_, someone) = env.user("victim@example.com").await;
    let audit_before = env.audit_changes(&store).await.len();
    let users_before = store
        .kv(Bucket::Users)
        .keys("", None, 1000)
        .await
        .unwrap()
        .keys;
    // the mutating routes that take a JSON body (the others take none)
    let with_body: [(&str, &str); 11] = [
        ("POST", "/admin/roles"),
        ("PUT", "/admin/roles/{name}"),
        ("POST", "/admin/rights"),
        ("POST", "/admin/assignments"),
        ("DELETE", "/admin/assignments"),
        ("POST", "/admin/users"),
        ("PATCH", "/admin/users/{id}"),
        ("PUT", "/admin/users/{id}/password"),
        ("POST", "/admin/users/{id}/identities"),
        ("POST", "/admin/service-accounts"),
        ("POST", "/admin/service-accounts/{id}/rotate"),
    ];
    let declared = [
        control_plane::openapi::mutating_routes(control_plane::admin::iam_routes::router()),
        control_plane::openapi::mutating_routes(control_plane::admin::principal_routes::router()),
    ]
    .concat();
    assert!(
        with_body
            .iter()
            .all(|(method, path)| { declared.contains(&(method.to_string(), path.to_string())) })
    );
    for (method, template) in with_body {
        let path = template
            .replace("{id}", &someone)
            .replace("{name}", "some_role");
        for body in ["{\"unterminated\": ", "[1, 2, 3]", "\"a string\""] {
            let response = env
                .client
                .request(method.parse().unwrap(), format!("{}{path}", env.base))
                .bearer_auth(&admin)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 400, "{method} {path} {body}: {answer}");
            assert!(
                answer["error"]["code"].is_string(),
                "{method} {path} {body}: {answer}"
            );
        }
    }
    // semantic refusals on the principal routes
    let cases = [
        (
            "POST",
            "/admin/users".to_string(),
            json!({"email": "not-an-email"}),
            "invalid_email",
        ),
        (
            "POST",
            "/admin/users".to_string(),
            json!({"email": "new@example.com", "password": "short"}),
            "password_too_short",
        ),
        (
            "PATCH",
            format!("/admin/users/{someone}"),
            json!({"email": "nope"}),
            "invalid_email",
        ),
        (
            "PUT",
            format!("/admin/users/{someone}/password"),
            json!({"password": "passwordpassword"}),
            "password_too_common",
        ),
        (
            "POST",
            format!("/admin/users/{someone}/identities"),
            json!({"provider": "myspace", "subject": "1"}),
            "unknown_provider",
        ),
        (
            "POST",
            "/admin/service-accounts".to_string(),
            json!({"name": "  "}),
            "invalid_name",
        ),
        (
            "POST",
            "/admin/service-accounts".to_string(),
            json!({"name": "x", "tenant_id": "Bad Tenant"}),
            "invalid_tenant",
        ),
    ];
    for (method, path, body, code) in cases {
        let (status, answer) = env
            .call(method, &path, Some(&admin), Some(body.clone()))
            .await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{method} {path} {body}"
        );
    }
    let users_after = store
        .kv(Bucket::Users)
        .keys("", None, 1000)
        .await
        .unwrap()
        .keys;
    assert_eq!(users_before, users_after, "no user written");
    let new_actions: Vec<String> = env.audit_changes(&store).await[audit_before..].to_vec();
    assert!(
        new_actions.iter().all(|a| !a.starts_with("admin.")),
        "nothing audited as done: {new_actions:?}"
    );
    let (status, _) = env
        .call(
            "GET",
            &format!("/admin/users/{someone}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "the user is untouched");
}

/// The OpenAPI document as client generators read it: openapi-spec-validator (pinned, from
/// PyPI) finds no error (it once found one operationId on two routes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_passes_a_third_party_validator() {
    let env = env().await;
    let document = env
        .client
        .get(format!("{}/openapi.json", env.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &document).unwrap();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/validate_openapi.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .arg(&file)
        .output()
        .await
        .unwrap_or_else(|err| panic!("cannot run {python}: {err}"));
    assert!(
        output.status.success(),
        "openapi-spec-validator (scripts/ensure-python-clients.sh installs it): {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
