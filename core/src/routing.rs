//! Routing: which shard owns each tenant per service kind, and the endpoints of each
//! shard. The control plane publishes it as the signed `routing` document; the data plane
//! builds a [`RoutingTable`] from it aside and swaps it in whole.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::authz::TenantId;

/// The node services behind the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    Aggregate,
    Projection,
    Runner,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 3] = [
        ServiceKind::Aggregate,
        ServiceKind::Projection,
        ServiceKind::Runner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Aggregate => "aggregate",
            ServiceKind::Projection => "projection",
            ServiceKind::Runner => "runner",
        }
    }

    pub fn parse(value: &str) -> Option<ServiceKind> {
        ServiceKind::ALL.into_iter().find(|k| k.as_str() == value)
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a routing document or a lookup is refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RoutingError {
    #[error(
        "invalid shard id {0:?}: 1 to 63 characters of [a-z0-9_-], starting with a letter or digit"
    )]
    ShardId(String),
    #[error("{kind}: tenant {tenant} is placed on shard {shard}, which is not in the directory")]
    UnknownShard {
        kind: ServiceKind,
        tenant: String,
        shard: String,
    },
    #[error("{kind}: the default shard {0} is not in the directory", kind = .1)]
    UnknownDefault(String, ServiceKind),
    #[error("{kind}: shard {shard} has no endpoint")]
    NoEndpoint { kind: ServiceKind, shard: String },
    #[error(
        "{kind}: shard {shard}: endpoint {endpoint:?} is not an http(s) URL of a host and port"
    )]
    Endpoint {
        kind: ServiceKind,
        shard: String,
        endpoint: String,
    },
    #[error("tenant {tenant} is not routed for {kind}")]
    TenantNotRouted { tenant: String, kind: ServiceKind },
}

/// Shard ids: `^[a-z0-9][a-z0-9_-]{0,62}$`.
pub fn validate_shard_id(id: &str) -> Result<(), RoutingError> {
    let b = id.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_');
    if ok {
        Ok(())
    } else {
        Err(RoutingError::ShardId(id.chars().take(80).collect()))
    }
}

/// An upstream base URL: `http(s)://host:port` (no path, query or credentials).
pub fn validate_endpoint(endpoint: &str) -> bool {
    let Some(rest) = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@', ' '])
        || authority.len() > 255
    {
        return false;
    }
    // host[:port], IPv6 in brackets
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        match stripped.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Routing of one service kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KindRouting {
    /// tenant → shard.
    #[serde(default)]
    pub placement: BTreeMap<TenantId, String>,
    /// shard → endpoints (base URLs).
    #[serde(default)]
    pub shards: BTreeMap<String, Vec<String>>,
    /// Shard of tenants without a placement, if any.
    #[serde(default)]
    pub default_shard: Option<String>,
}

/// Payload of the signed `routing` document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoutingDocument {
    #[serde(default)]
    pub aggregate: KindRouting,
    #[serde(default)]
    pub projection: KindRouting,
    #[serde(default)]
    pub runner: KindRouting,
    /// Revision at which each kind's placement or shards last changed (set by the control
    /// plane when it publishes; informational for the data plane).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kind_revisions: BTreeMap<ServiceKind, u64>,
}

impl RoutingDocument {
    pub fn kind(&self, kind: ServiceKind) -> &KindRouting {
        match kind {
            ServiceKind::Aggregate => &self.aggregate,
            ServiceKind::Projection => &self.projection,
            ServiceKind::Runner => &self.runner,
        }
    }

    pub fn kind_mut(&mut self, kind: ServiceKind) -> &mut KindRouting {
        match kind {
            ServiceKind::Aggregate => &mut self.aggregate,
            ServiceKind::Projection => &mut self.projection,
            ServiceKind::Runner => &mut self.runner,
        }
    }

    /// No kind has a placement, a shard or a default: nothing is routed (the document a
    /// fresh control plane publishes).
    pub fn routes_nothing(&self) -> bool {
        ServiceKind::ALL.iter().all(|kind| {
            let routing = self.kind(*kind);
            routing.placement.is_empty()
                && routing.shards.is_empty()
                && routing.default_shard.is_none()
        })
    }

    /// Every placed shard and the default exist, every shard has valid endpoints.
    pub fn validate(&self) -> Result<(), RoutingError> {
        for kind in ServiceKind::ALL {
            let routing = self.kind(kind);
            for (shard, endpoints) in &routing.shards {
                validate_shard_id(shard)?;
                if endpoints.is_empty() {
                    return Err(RoutingError::NoEndpoint {
                        kind,
                        shard: shard.clone(),
                    });
                }
                if let Some(bad) = endpoints.iter().find(|e| !validate_endpoint(e)) {
                    return Err(RoutingError::Endpoint {
                        kind,
                        shard: shard.clone(),
                        endpoint: bad.chars().take(200).collect(),
                    });
                }
            }
            for (tenant, shard) in &routing.placement {
                if !routing.shards.contains_key(shard) {
                    return Err(RoutingError::UnknownShard {
                        kind,
                        tenant: tenant.to_string(),
                        shard: shard.clone(),
                    });
                }
            }
            if let Some(default) = &routing.default_shard
                && !routing.shards.contains_key(default)
            {
                return Err(RoutingError::UnknownDefault(default.clone(), kind));
            }
        }
        Ok(())
    }
}

/// Where a call goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub kind: ServiceKind,
    pub shard: Arc<str>,
    pub endpoints: Arc<[String]>,
    /// Routing revision that decided it.
    pub revision: u64,
}

/// A validated routing document ready for lookups (built once per revision).
#[derive(Debug)]
pub struct RoutingTable {
    pub revision: u64,
    pub issued_at: i64,
    pub document: RoutingDocument,
    endpoints: BTreeMap<ServiceKind, Shards>,
}

/// shard → its name (shared with every [`Route`]) and endpoints.
type Shards = BTreeMap<String, (Arc<str>, Arc<[String]>)>;

impl RoutingTable {
    pub fn build(
        document: RoutingDocument,
        revision: u64,
        issued_at: i64,
    ) -> Result<RoutingTable, RoutingError> {
        document.validate()?;
        let mut endpoints = BTreeMap::new();
        for kind in ServiceKind::ALL {
            let mut shards = BTreeMap::new();
            for (shard, list) in &document.kind(kind).shards {
                let list: Vec<String> = list
                    .iter()
                    .map(|e| e.trim_end_matches('/').to_string())
                    .collect();
                shards.insert(shard.clone(), (Arc::from(shard.as_str()), Arc::from(list)));
            }
            endpoints.insert(kind, shards);
        }
        Ok(RoutingTable {
            revision,
            issued_at,
            document,
            endpoints,
        })
    }

    /// `(tenant, kind)` → shard and endpoints; `TenantNotRouted` without a placement or a
    /// default.
    pub fn route(&self, tenant: &TenantId, kind: ServiceKind) -> Result<Route, RoutingError> {
        let routing = self.document.kind(kind);
        let shard = routing
            .placement
            .get(tenant)
            .or(routing.default_shard.as_ref())
            .ok_or_else(|| RoutingError::TenantNotRouted {
                tenant: tenant.to_string(),
                kind,
            })?;
        let (shard, endpoints) = self
            .endpoints
            .get(&kind)
            .and_then(|shards| shards.get(shard.as_str()))
            .ok_or_else(|| RoutingError::TenantNotRouted {
                tenant: tenant.to_string(),
                kind,
            })?;
        Ok(Route {
            kind,
            shard: Arc::clone(shard),
            endpoints: Arc::clone(endpoints),
            revision: self.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(t: &str) -> TenantId {
        TenantId::parse(t).unwrap()
    }

    fn doc() -> RoutingDocument {
        let mut doc = RoutingDocument::default();
        doc.aggregate
            .shards
            .insert("agg-1".into(), vec!["http://127.0.0.1:9102".into()]);
        doc.aggregate.shards.insert(
            "agg-2".into(),
            vec![
                "http://10.0.0.2:9102/".into(),
                "https://agg2.internal:443".into(),
            ],
        );
        doc.aggregate
            .placement
            .insert(tenant("acme"), "agg-2".into());
        doc.aggregate.default_shard = Some("agg-1".into());
        doc.projection
            .shards
            .insert("proj-1".into(), vec!["http://[::1]:9101".into()]);
        doc.projection
            .placement
            .insert(tenant("acme"), "proj-1".into());
        doc
    }

    #[test]
    fn tenants_route_to_their_shard_or_the_default() {
        let table = RoutingTable::build(doc(), 7, 100).unwrap();
        let route = table
            .route(&tenant("acme"), ServiceKind::Aggregate)
            .unwrap();
        assert_eq!((&*route.shard, route.revision), ("agg-2", 7));
        assert_eq!(
            &route.endpoints[..],
            &[
                "http://10.0.0.2:9102".to_string(),
                "https://agg2.internal:443".to_string()
            ]
        );
        assert_eq!(
            table
                .route(&tenant("globex"), ServiceKind::Aggregate)
                .unwrap()
                .shard,
            "agg-1".into()
        );
        assert_eq!(
            table.route(&tenant("globex"), ServiceKind::Projection),
            Err(RoutingError::TenantNotRouted {
                tenant: "globex".into(),
                kind: ServiceKind::Projection
            })
        );
        assert!(table.route(&tenant("acme"), ServiceKind::Runner).is_err());
    }

    #[test]
    fn invalid_documents_are_refused_whole() {
        let mut unknown = doc();
        unknown
            .aggregate
            .placement
            .insert(tenant("x"), "nope".into());
        assert!(matches!(
            unknown.validate(),
            Err(RoutingError::UnknownShard { .. })
        ));
        let mut default = doc();
        default.projection.default_shard = Some("ghost".into());
        assert!(matches!(
            default.validate(),
            Err(RoutingError::UnknownDefault(..))
        ));
        let mut empty = doc();
        empty.runner.shards.insert("r1".into(), vec![]);
        assert!(matches!(
            empty.validate(),
            Err(RoutingError::NoEndpoint { .. })
        ));
        for bad in [
            "ftp://x:1",
            "http://",
            "http://host/path",
            "http://user@host:1",
            "http://host:0",
            "http://host:99999",
            "host:80",
            "http://h ost:1",
        ] {
            let mut d = doc();
            d.runner.shards.insert("r1".into(), vec![bad.into()]);
            assert!(
                matches!(d.validate(), Err(RoutingError::Endpoint { .. })),
                "{bad}"
            );
        }
        let mut shard = doc();
        shard
            .runner
            .shards
            .insert("Bad Shard".into(), vec!["http://h:1".into()]);
        assert!(matches!(shard.validate(), Err(RoutingError::ShardId(_))));
        assert!(doc().validate().is_ok());
    }

    #[test]
    fn documents_round_trip_and_refuse_bad_tenants() {
        let text = serde_json::to_string(&doc()).unwrap();
        assert_eq!(
            serde_json::from_str::<RoutingDocument>(&text).unwrap(),
            doc()
        );
        assert!(serde_json::from_str::<RoutingDocument>(&text.replace("acme", "AC ME")).is_err());
    }
}
