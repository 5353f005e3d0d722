//! Browser sessions: strict cookies, and the CSRF token for changes.

use serde_json::{Value, json};

use super::{edge, until_allowed};
use crate::proxy::PASSWORD;

/// `(name, value, attributes)` of every `set-cookie` of `response`.
fn set_cookies(response: &reqwest::Response) -> Vec<(String, String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let text = v.to_str().unwrap();
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').unwrap();
            (name.into(), value.into(), attributes.to_string())
        })
        .collect()
}

/// ASVS 7.1 / 3.3 and the OWASP CSRF cheat sheet: browser sessions keep their tokens in
/// `__Host-` cookies that scripts cannot read (`HttpOnly; Secure; SameSite=Strict`), and a
/// cookie never authorizes a change without the CSRF token (double submit) or from a
/// cross-site fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sessions_use_strict_cookies_and_need_the_csrf_token_for_changes() {
    let (stack, node) = edge().await;
    let (client, data) = (&stack.client, &stack.data);
    let (bearer, _) = stack
        .member("browser@example.com", &[("acme", "tenant_member")])
        .await;
    until_allowed(&stack, &bearer).await;
    let signin = client
        .post(format!("{}/v1/auth/signin", data.http))
        .header("x-token-delivery", "cookie")
        .json(&json!({"email": "browser@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(signin.status(), 200);
    let cookies = set_cookies(&signin);
    let body: Value = signin.json().await.unwrap();
    assert!(body.get("access_token").is_none() && body.get("refresh_token").is_none());
    let csrf = body["csrf_token"].as_str().unwrap().to_string();
    let names: Vec<&str> = cookies.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["__Host-gw_access", "__Host-gw_refresh", "__Host-gw_csrf"]
    );
    for (name, _, attributes) in &cookies {
        for attribute in ["Path=/", "Secure", "SameSite=Strict"] {
            assert!(attributes.contains(attribute), "{name}: {attributes}");
        }
        assert!(!attributes.contains("Domain"), "{name}: {attributes}");
        assert_eq!(
            attributes.contains("HttpOnly"),
            name != "__Host-gw_csrf",
            "{name}: {attributes}"
        );
    }
    assert_eq!(cookies[2].1, csrf);
    let jar = |cookies: &[(String, String, String)]| {
        cookies
            .iter()
            .map(|(n, v, _)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let session = jar(&cookies);
    let query = |cookie: String, extra: Vec<(&'static str, String)>| {
        let mut request = client
            .post(format!("{}/v1/query/v", data.http))
            .header("cookie", cookie)
            .header("x-tenant-id", "acme")
            .json(&json!({}));
        for (name, value) in extra {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body["error"]["code"].as_str().map(str::to_string))
        }
    };
    // the cookie and its CSRF token: served
    assert_eq!(
        query(session.clone(), vec![("x-csrf-token", csrf.clone())]).await,
        (200, None)
    );
    let refused = (403, Some("csrf_failed".to_string()));
    type CsrfCase<'a> = (&'a str, String, Vec<(&'static str, String)>);
    let cases: Vec<CsrfCase> = vec![
        ("no CSRF header", session.clone(), vec![]),
        (
            "a CSRF header of another session",
            session.clone(),
            vec![("x-csrf-token", "A".repeat(43))],
        ),
        (
            "the right token from a cross-site fetch",
            session.clone(),
            vec![
                ("x-csrf-token", csrf.clone()),
                ("sec-fetch-site", "cross-site".into()),
            ],
        ),
        (
            "a second (tossed) CSRF cookie",
            format!("{session}; __Host-gw_csrf={}", "B".repeat(43)),
            vec![("x-csrf-token", csrf.clone())],
        ),
        (
            "the header alone, no CSRF cookie",
            jar(&cookies[..1]),
            vec![("x-csrf-token", csrf.clone())],
        ),
    ];
    for (case, cookie, extra) in cases {
        assert_eq!(query(cookie, extra).await, refused, "{case}");
    }
    // reading needs no CSRF token: a GET on the runner passthrough authenticates by cookie
    // (and is then refused for lack of runner.admin, not for lack of a credential)
    let response = client
        .get(format!("{}/admin/runner/workflows", data.http))
        .header("cookie", session.clone())
        .header("x-tenant-id", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "no_matching_right"
    );

    // refresh by cookie: CSRF required, then new cookies; the old refresh cookie is spent
    let refresh = |cookie: String, token: Option<String>| {
        let mut request = client
            .post(format!("{}/v1/auth/refresh", data.http))
            .header("cookie", cookie)
            .header("x-token-delivery", "cookie")
            .json(&json!({}));
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        request.send()
    };
    let response = refresh(session.clone(), None).await.unwrap();
    assert_eq!(response.status(), 403);
    let response = refresh(session.clone(), Some(csrf.clone())).await.unwrap();
    assert_eq!(response.status(), 200);
    let renewed = set_cookies(&response);
    let renewed_csrf = response.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(renewed[0].1, cookies[0].1, "a new access token");
    assert_ne!(renewed[1].1, cookies[1].1, "a rotated refresh token");
    let renewed_session = jar(&renewed);
    assert_eq!(
        query(
            renewed_session.clone(),
            vec![("x-csrf-token", renewed_csrf.clone())]
        )
        .await,
        (200, None)
    );

    // sign-out by cookie clears the cookies
    let response = client
        .post(format!("{}/v1/auth/signout", data.http))
        .header("cookie", renewed_session.clone())
        .header("x-csrf-token", renewed_csrf.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let cleared = set_cookies(&response);
    assert_eq!(cleared.len(), 3);
    assert!(
        cleared
            .iter()
            .all(|(_, value, attributes)| value.is_empty() && attributes.contains("Max-Age=0"))
    );
    // and its refresh token is dead
    let response = refresh(renewed_session, Some(renewed_csrf)).await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        node.node
            .recorded()
            .iter()
            .all(|r| r.header("cookie").is_none() && r.header("x-csrf-token").is_none()),
        "browser credentials never reach an upstream"
    );
}
