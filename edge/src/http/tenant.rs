//! The tenant of a tenant-scoped call: exactly one well-formed `x-tenant-id`.

use axum::http::{HeaderMap, HeaderName};

use crate::error::ApiError;
use gateway_core::{ErrorCode, Reason};

/// Header naming the tenant of a tenant-scoped call.
pub const TENANT_HEADER: &str = "x-tenant-id";
pub static TENANT_NAME: HeaderName = HeaderName::from_static(TENANT_HEADER);

/// The tenant of a tenant-scoped route, from exactly one well-formed `x-tenant-id`
/// header: missing, malformed or repeated headers are a 400 in the envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantHeader(pub gateway_core::authz::TenantId);

impl TenantHeader {
    /// The tenant named by `headers` (see [`TenantHeader`]).
    pub fn from_headers(headers: &HeaderMap) -> Result<TenantHeader, ApiError> {
        let mut values = headers.get_all(&TENANT_NAME).iter();
        let bad = |reason, message: &str| {
            ApiError::new(ErrorCode::InvalidTenant, message).with_reason(reason)
        };
        let Some(value) = values.next() else {
            return Err(bad(
                Reason::MissingTenant,
                "the x-tenant-id header is required",
            ));
        };
        if values.next().is_some() {
            return Err(bad(
                Reason::AmbiguousTenant,
                "send exactly one x-tenant-id header",
            ));
        }
        let value = value
            .to_str()
            .map_err(|_| bad(Reason::InvalidTenant, "x-tenant-id is not a tenant id"))?;
        gateway_core::authz::TenantId::parse(value)
            .map(TenantHeader)
            .map_err(|err| bad(Reason::InvalidTenant, &err.to_string()))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TenantHeader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        TenantHeader::from_headers(&parts.headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;

    #[tokio::test]
    async fn tenant_headers_are_required_single_and_well_formed() {
        use tower::ServiceExt;
        let app = Router::new().route(
            "/t",
            get(|TenantHeader(t): TenantHeader| async move { t.to_string() }),
        );
        let call = |headers: Vec<&'static str>| {
            let app = app.clone();
            async move {
                let mut request = axum::http::Request::builder().uri("/t");
                for value in headers {
                    request = request.header(TENANT_HEADER, value);
                }
                let response = app
                    .oneshot(request.body(axum::body::Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
                    .await
                    .unwrap();
                (status, String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        assert_eq!(call(vec!["acme"]).await, (200, "acme".into()));
        for (headers, reason) in [
            (vec![], "missing_tenant"),
            (vec!["ACME"], "invalid_tenant"),
            (vec!["acme/../globex"], "invalid_tenant"),
            (vec![""], "invalid_tenant"),
            (vec!["acme", "globex"], "ambiguous_tenant"),
        ] {
            let (status, body) = call(headers.clone()).await;
            assert_eq!(status, 400, "{headers:?}");
            assert!(body.contains(reason), "{headers:?}: {body}");
        }
    }
}
