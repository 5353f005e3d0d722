//! Routing documents (signed or from `--routing-file`) on arbitrary JSON: never panic; a
//! table that builds routes every placed tenant to valid endpoints, and survives a JSON
//! round trip unchanged.
#![no_main]

use gateway_core::routing::{RoutingDocument, RoutingTable, ServiceKind, validate_endpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(document) = serde_json::from_slice::<RoutingDocument>(data) else {
        return;
    };
    let again: RoutingDocument =
        serde_json::from_slice(&serde_json::to_vec(&document).expect("serialisable"))
            .expect("reparsable");
    assert_eq!(again, document);
    let Ok(table) = RoutingTable::build(document.clone(), 1, 0) else {
        return;
    };
    for kind in ServiceKind::ALL {
        for tenant in document.kind(kind).placement.keys() {
            let route = table.route(tenant, kind).expect("a placed tenant routes");
            assert!(!route.endpoints.is_empty());
            for endpoint in route.endpoints.iter() {
                assert!(validate_endpoint(endpoint), "{endpoint:?} routed");
                assert!(!endpoint.ends_with('/'));
            }
        }
    }
});
