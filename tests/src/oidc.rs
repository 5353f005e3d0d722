//! A standards-compliant OpenID provider on loopback for tests: discovery, authorization
//! endpoint (auto-approving the person the test chose), token endpoint with client
//! authentication and PKCE (S256), RS256-signed ID tokens with the nonce, and a JWKS.
//! Knobs let tests make it misbehave (wrong audience, wrong nonce).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const KEY_PEM: &str = include_str!("../fixtures/test-oidc-provider-rsa.pem");
const KID: &str = "test-provider-key-1";

/// The person who "signs in" at the provider next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    pub subject: String,
    pub email: String,
    pub email_verified: bool,
}

/// Ways to make the provider misbehave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Issue ID tokens for another audience.
    pub wrong_audience: bool,
    /// Put another nonce in ID tokens.
    pub wrong_nonce: bool,
}

struct Grant {
    person: Person,
    client_id: String,
    redirect_uri: String,
    nonce: Option<String>,
    challenge: String,
}

#[derive(Clone)]
struct Provider {
    issuer: String,
    client_id: String,
    client_secret: String,
    person: Arc<Mutex<Person>>,
    faults: Arc<Mutex<Faults>>,
    grants: Arc<Mutex<HashMap<String, Grant>>>,
    key: jsonwebtoken::EncodingKey,
    jwk: Value,
}

pub struct TestProvider {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    state: Provider,
}

impl TestProvider {
    /// Starts a provider on 127.0.0.1 for one registered client.
    pub async fn start(client_id: &str, client_secret: &str) -> TestProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let issuer = format!("http://{}", listener.local_addr().expect("addr"));
        let private = rsa::RsaPrivateKey::from_pkcs8_pem(KEY_PEM).expect("fixture key");
        let jwk = json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": KID,
            "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
        });
        let state = Provider {
            issuer: issuer.clone(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            person: Arc::new(Mutex::new(Person {
                subject: "1000001".into(),
                email: "person@gmail.example".into(),
                email_verified: true,
            })),
            faults: Arc::default(),
            grants: Arc::default(),
            key: jsonwebtoken::EncodingKey::from_rsa_der(
                private.to_pkcs1_der().expect("pkcs1").as_bytes(),
            ),
            jwk,
        };
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/jwks", get(jwks))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestProvider {
            issuer,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            state,
        }
    }

    /// Who signs in next.
    pub fn set_person(&self, person: Person) {
        *self.state.person.lock().expect("person") = person;
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().expect("faults") = faults;
    }
}

async fn discovery(State(p): State<Provider>) -> Json<Value> {
    Json(json!({
        "issuer": p.issuer,
        "authorization_endpoint": format!("{}/authorize", p.issuer),
        "token_endpoint": format!("{}/token", p.issuer),
        "jwks_uri": format!("{}/jwks", p.issuer),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["sub", "email", "email_verified", "iss", "aud", "exp", "iat", "nonce"],
    }))
}

async fn jwks(State(p): State<Provider>) -> Json<Value> {
    Json(json!({"keys": [p.jwk]}))
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: String,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error}))).into_response()
}

async fn authorize(State(p): State<Provider>, Query(q): Query<AuthorizeQuery>) -> Response {
    if q.client_id != p.client_id {
        return oauth_error(StatusCode::BAD_REQUEST, "unauthorized_client");
    }
    if q.response_type != "code" || !q.scope.split(' ').any(|s| s == "openid") {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (Some(challenge), Some("S256")) = (q.code_challenge, q.code_challenge_method.as_deref())
    else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let code = uuid::Uuid::new_v4().simple().to_string();
    let person = p.person.lock().expect("person").clone();
    p.grants.lock().expect("grants").insert(
        code.clone(),
        Grant {
            person,
            client_id: q.client_id,
            redirect_uri: q.redirect_uri.clone(),
            nonce: q.nonce,
            challenge,
        },
    );
    let target = format!(
        "{}{}code={code}&state={}",
        q.redirect_uri,
        if q.redirect_uri.contains('?') {
            "&"
        } else {
            "?"
        },
        url_escape(&q.state)
    );
    Redirect::to(&target).into_response()
}

fn url_escape(value: &str) -> String {
    serde_urlencoded::to_string([("v", value)])
        .unwrap_or_default()
        .trim_start_matches("v=")
        .to_string()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    code: String,
    redirect_uri: String,
    code_verifier: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let text = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |s: &str| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}"))
            .ok()
            .and_then(|v| v.into_iter().next())
            .map(|(_, v)| v)
    };
    Some((decode(id)?, decode(secret)?))
}

async fn token(State(p): State<Provider>, headers: HeaderMap, body: String) -> Response {
    let Ok(form) = serde_urlencoded::from_str::<TokenForm>(&body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let (id, secret) = match (basic(&headers), form.client_id, form.client_secret) {
        (Some(pair), _, _) => pair,
        (None, Some(id), Some(secret)) => (id, secret),
        _ => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
    };
    if id != p.client_id || secret != p.client_secret {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.grant_type != "authorization_code" {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    // codes are single-use
    let Some(grant) = p.grants.lock().expect("grants").remove(&form.code) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let verifier_ok = form
        .code_verifier
        .as_deref()
        .is_some_and(|v| URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())) == grant.challenge);
    if grant.client_id != id || grant.redirect_uri != form.redirect_uri || !verifier_ok {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let faults = p.faults.lock().expect("faults").clone();
    let now = gateway_core::unix_now();
    let claims = json!({
        "iss": p.issuer,
        "sub": grant.person.subject,
        "aud": if faults.wrong_audience { "someone-else".to_string() } else { p.client_id.clone() },
        "iat": now,
        "exp": now + 300,
        "nonce": if faults.wrong_nonce { Some("not-the-nonce".to_string()) } else { grant.nonce },
        "email": grant.person.email,
        "email_verified": grant.person.email_verified,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(KID.into());
    let Ok(id_token) = jsonwebtoken::encode(&header, &claims, &p.key) else {
        return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    };
    Json(json!({
        "access_token": uuid::Uuid::new_v4().simple().to_string(),
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": id_token,
        "scope": "openid email profile",
    }))
    .into_response()
}
