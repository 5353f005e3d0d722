//! Routing from a local file (`--routing-file`, local development): a plain
//! [`RoutingDocument`] in JSON, trusted because the operator wrote it (it is not signed),
//! validated whole, read at start (a bad file stops the start) and re-read when its
//! content changes. A new valid file is built aside and swapped in at once, as with the
//! signed document; an invalid one is refused and the last good table stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gateway_core::routing::{RoutingDocument, RoutingTable};
use gateway_core::signed::DocError;
use tokio_util::sync::CancellationToken;

use crate::mirror::{Mirrors, applied, reject};

/// Metrics and logs name the file source with this kind.
const KIND: &str = "routing_file";

fn parse(bytes: &[u8], revision: u64) -> Result<RoutingTable, String> {
    let document: RoutingDocument =
        serde_json::from_slice(bytes).map_err(|err| format!("not a routing document: {err}"))?;
    RoutingTable::build(document, revision, gateway_core::unix_now()).map_err(|e| e.to_string())
}

/// Reads and applies the file; the error names the path and the problem.
pub fn load(path: &Path, mirrors: &Mirrors) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let revision = mirrors.routing.load().as_ref().map_or(0, |t| t.revision) + 1;
    let table = parse(&bytes, revision).map_err(|err| format!("{}: {err}", path.display()))?;
    applied(KIND, table.revision, table.issued_at, "file");
    mirrors.routing.store(Some(Arc::new(table)));
    Ok(bytes)
}

/// Re-reads the file every `interval` until `shutdown`; applies it when its content
/// changed and is valid.
pub async fn watch(
    path: PathBuf,
    mirrors: Arc<Mirrors>,
    mut last: Vec<u8>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(err) => {
                reject(
                    KIND,
                    &DocError::Payload(format!("cannot read the file: {err}")),
                );
                continue;
            }
        };
        if bytes == last {
            continue;
        }
        match load(&path, &mirrors) {
            Ok(applied) => last = applied,
            Err(err) => {
                // refused once per content, not once per tick
                last = bytes;
                reject(KIND, &DocError::Payload(err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::authz::TenantId;
    use gateway_core::routing::ServiceKind;
    use serde_json::json;

    #[test]
    fn a_file_is_loaded_validated_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.json");
        let mirrors = Mirrors::new(true, false);
        let table = |shard: &str| json!({"projection": {"shards": {shard: ["http://127.0.0.1:9"]}, "placement": {"demo": shard}}});
        std::fs::write(&path, table("p1").to_string()).unwrap();
        load(&path, &mirrors).unwrap();
        let demo = TenantId::parse("demo").unwrap();
        let route = |m: &Mirrors| {
            m.routing
                .load_full()
                .unwrap()
                .route(&demo, ServiceKind::Projection)
                .unwrap()
        };
        assert_eq!(
            (route(&mirrors).shard, route(&mirrors).revision),
            ("p1".into(), 1)
        );
        // invalid: a placement on a missing shard; the last good table stays
        std::fs::write(
            &path,
            json!({"projection": {"placement": {"demo": "ghost"}}}).to_string(),
        )
        .unwrap();
        let err = load(&path, &mirrors).unwrap_err();
        assert!(
            err.contains("ghost") && err.contains("routing.json"),
            "{err}"
        );
        std::fs::write(&path, "{").unwrap();
        assert!(
            load(&path, &mirrors)
                .unwrap_err()
                .contains("not a routing document")
        );
        assert_eq!(&*route(&mirrors).shard, "p1");
        std::fs::write(&path, table("p2").to_string()).unwrap();
        load(&path, &mirrors).unwrap();
        assert_eq!(
            (route(&mirrors).shard, route(&mirrors).revision),
            ("p2".into(), 2)
        );
        assert!(load(&dir.path().join("absent.json"), &mirrors).is_err());
    }

    #[test]
    fn signed_routing_documents_are_ignored_when_a_file_routes() {
        use gateway_core::signed::{DocSigningKey, DocVerifyingKeys};
        let signer = DocSigningKey::generate();
        let keys = DocVerifyingKeys::new([signer.verifying_key()]);
        let mirrors = Mirrors::new(true, false);
        let doc = json!({"aggregate": {"shards": {"a": ["http://127.0.0.1:1"]}}});
        let bytes = signer.sign(crate::mirror::ROUTING, 9, 0, &doc).unwrap();
        assert_eq!(
            mirrors.apply(&keys, crate::mirror::ROUTING, &bytes),
            Ok(false)
        );
        assert!(mirrors.routing.load().is_none());
    }
}
