//! Request plumbing of the control-plane API: JSON bodies whose rejections answer in the
//! envelope (400/413/415), the client address, and the bearer-token extractor.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use gateway_edge::{ApiError, ErrorCode, Reason};
use serde::de::DeserializeOwned;

/// Largest JSON body accepted by the API routes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `Json<T>` whose failures are envelope errors that never echo the body.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(json_rejection(JsonRejection::MissingJsonContentType(
                Default::default(),
            )));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|err| json_rejection(err.into()))?;
        if !gateway_core::json_depth_within(&bytes, MAX_JSON_DEPTH) {
            return Err(ApiError::bad_request(format!(
                "the body nests deeper than {MAX_JSON_DEPTH} levels"
            ))
            .with_reason(Reason::JsonTooDeep));
        }
        // every body of the API is an object: serde would also read a struct from an array
        // of its fields in order, which the document does not allow
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request("the body must be a JSON object")
                .with_reason(Reason::InvalidBody));
        }
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(value)| ApiJson(value))
            .map_err(json_rejection)
    }
}

/// Deepest nesting of arrays and objects a body may have: no API body needs more than a
/// few levels, and a bound keeps every parser (ours and the upstreams') out of trouble.
pub const MAX_JSON_DEPTH: usize = 32;

/// `application/json` or a `+json` media type, as axum's `Json` accepts.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be json (content-type: application/json)",
        ),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request("the body is not valid json").with_reason(Reason::MalformedJson)
        }
        JsonRejection::JsonDataError(err) => {
            // serde messages may quote input values: only the field name goes back
            let text = err.body_text();
            let message = match text.split("missing field `").nth(1) {
                Some(rest) => format!(
                    "missing field {}",
                    rest.split('`').next().unwrap_or_default()
                ),
                None => "the body does not match the expected fields".to_string(),
            };
            ApiError::bad_request(message).with_reason(Reason::InvalidBody)
        }
        JsonRejection::BytesRejection(err) => {
            if err.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                )
            } else {
                ApiError::bad_request("the body could not be read")
            }
        }
        _ => ApiError::bad_request("the body could not be read"),
    }
}

/// Address of the client: the socket peer, or the address a trusted proxy (the data
/// plane, `--trusted-proxies`) put in `x-forwarded-for`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<crate::AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        Ok(ClientIp(gateway_edge::http::client_ip(
            peer,
            &parts.headers,
            &state.trusted_proxies,
        )))
    }
}

/// The raw bearer token of the request (`Authorization: Bearer ...`).
pub struct BearerToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // a bearer token, or a browser session's cookie under the CSRF check
        gateway_edge::http::credential(&parts.headers, &parts.method)
            .map(|token| BearerToken(token.to_string()))
            .map_err(gateway_edge::http::credential_refusal)
    }
}

/// An optional whole number that may come written as a float with no fraction (`3.0`): JSON
/// Schema's `integer` allows it, serde's `u64` does not.
pub fn whole_number<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(whole) = number.as_u64() {
        return Ok(Some(whole));
    }
    match number.as_f64() {
        Some(value) if value.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(&value) => {
            Ok(Some(value as u64))
        }
        _ => Err(serde::de::Error::custom(
            "a whole number of at least 0 is expected",
        )),
    }
}
