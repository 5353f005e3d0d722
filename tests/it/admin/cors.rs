//! CORS on the control plane's auth and admin APIs: the configured exact origins only,
//! with credentials; other origins get no CORS field at all.

use serde_json::json;

use super::{Env, env_with};

const ADMIN_UI: &str = "https://admin.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_origins_may_call_the_apis_from_a_page() {
    let env: Env = env_with(&[
        "--cors-allowed-origins",
        "https://admin.example.com,http://localhost:3000",
    ])
    .await;
    let admin = env.admin().await;
    let preflight = |origin: &'static str| {
        env.client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/admin/users", env.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    // the Admin UI's preflight is answered, with credentials and a cache time
    let answer = preflight(ADMIN_UI).await.unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    let field = |name: &str| {
        answer
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    assert_eq!(
        field("access-control-allow-origin").as_deref(),
        Some(ADMIN_UI)
    );
    assert_eq!(
        field("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert!(
        field("access-control-allow-methods")
            .unwrap()
            .contains("get")
    );
    assert!(
        field("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    assert_eq!(field("access-control-max-age").as_deref(), Some("600"));
    // another origin gets no allow-origin field, without which a browser accepts nothing
    let answer = preflight("https://evil.example").await.unwrap();
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // nor does a look-alike of an allowed one
    let answer = preflight("https://admin.example.com.evil.example")
        .await
        .unwrap();
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // the Admin UI signs in and lists users; the answer names its origin and exposes the
    // correlation id
    let signin = env
        .client
        .post(format!("{}/v1/auth/signin", env.base))
        .header("origin", ADMIN_UI)
        .json(&json!({
            "email": gateway_tests::SnapshotKeys::ADMIN_EMAIL,
            "password": gateway_tests::SnapshotKeys::ADMIN_PASSWORD,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(signin.status(), 200);
    assert_eq!(signin.headers()["access-control-allow-origin"], ADMIN_UI);
    let users = env
        .client
        .get(format!("{}/admin/users", env.base))
        .header("origin", ADMIN_UI)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 200);
    assert_eq!(users.headers()["access-control-allow-origin"], ADMIN_UI);
    assert!(
        users.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("x-correlation-id")
    );
    // a page of another origin still gets its answer from the server, without the fields
    // that would let the browser hand it to the page
    let users = env
        .client
        .get(format!("{}/admin/users", env.base))
        .header("origin", "https://evil.example")
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(users.headers().get("access-control-allow-origin").is_none());
}

/// The page the browser test loads: signs in, then lists users, against `base` (another
/// origin), and writes the outcome into `#out`.
fn admin_ui_page(base: &str) -> String {
    let credentials = json!({
        "email": gateway_tests::SnapshotKeys::ADMIN_EMAIL,
        "password": gateway_tests::SnapshotKeys::ADMIN_PASSWORD,
    });
    format!(
        r#"<!doctype html>
<html><body><pre id="out">pending</pre><script>
(async () => {{
  const out = document.getElementById("out");
  try {{
    const signin = await fetch("{base}/v1/auth/signin", {{
      method: "POST",
      headers: {{"content-type": "application/json"}},
      body: JSON.stringify({credentials}),
    }});
    const tokens = await signin.json();
    const users = await fetch("{base}/admin/users", {{
      headers: {{"authorization": "Bearer " + tokens.access_token}},
    }});
    const correlation = users.headers.get("x-correlation-id");
    out.textContent = "LISTED " + users.status + " correlation=" + (correlation ? "yes" : "no")
      + " " + JSON.stringify(await users.json());
  }} catch (err) {{
    out.textContent = "BLOCKED " + err;
  }}
}})();
</script></body></html>"#
    )
}

/// Serves `page` at `/` on `listener` until the test ends; returns the origin.
fn serve_page(listener: std::net::TcpListener, page: String) -> String {
    let origin = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

/// The text the page's script left in `#out` (the page source also names the outcomes
/// and the credentials, so only this element counts).
fn page_outcome(dom: &str) -> String {
    let start = dom
        .find(r#"<pre id="out">"#)
        .expect("the page's #out element")
        + 14;
    let end = start + dom[start..].find("</pre>").expect("#out closed");
    dom[start..end].replace("&quot;", "\"")
}

/// The DOM of `url` after its scripts ran, as Debian's chromium (headless) renders it.
async fn browser_dom(url: &str) -> String {
    let browser = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(90), run)
        .await
        .expect("chromium finished within 90 s")
        .unwrap_or_else(|err| {
            panic!(
                "cannot run {browser} (scripts/ensure-browser.sh installs Debian's chromium): {err}"
            )
        });
    assert!(output.status.success(), "{browser}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A real browser (Debian's chromium, headless) loads the Admin UI's page from its origin:
/// the page signs in and lists users across origins. The same page served from another
/// origin is stopped by the browser at the sign-in's preflight: nothing reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_the_admin_ui_signs_in_and_lists_users_in_a_real_browser() {
    let ui = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ui_origin = format!("http://{}", ui.local_addr().unwrap());
    let env: Env = env_with(&["--cors-allowed-origins", &ui_origin]).await;
    let page = admin_ui_page(&env.base);
    assert_eq!(serve_page(ui, page.clone()), ui_origin);
    let other_origin = serve_page(elsewhere, page);

    let listed = page_outcome(&browser_dom(&format!("{ui_origin}/")).await);
    assert!(
        listed.starts_with("LISTED 200 correlation=yes "),
        "{listed}"
    );
    let users: serde_json::Value =
        serde_json::from_str(listed.splitn(4, ' ').nth(3).unwrap()).expect("the users page");
    assert!(
        users
            .to_string()
            .contains(gateway_tests::SnapshotKeys::ADMIN_EMAIL),
        "{users}"
    );

    let blocked = page_outcome(&browser_dom(&format!("{other_origin}/")).await);
    assert!(blocked.starts_with("BLOCKED TypeError"), "{blocked}");
}
