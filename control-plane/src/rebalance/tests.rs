//! Plan transitions of the rebalancer that need no running node.

use super::*;

#[test]
fn plan_ids_are_checked_before_any_lookup() {
    let id = format!("rbp_{}", uuid::Uuid::new_v4().simple());
    assert!(valid_plan_id(&id));
    for bad in [
        "",
        "rbp_",
        "rbp_xyz",
        "plan.rbp_1",
        &format!("{id}0"),
        "rbp_../../x",
    ] {
        assert!(!valid_plan_id(bad), "{bad}");
    }
}

#[test]
fn the_effective_shard_is_the_placement_or_the_default() {
    let mut doc = RoutingDocument::default();
    let acme = TenantId::parse("acme").unwrap();
    assert_eq!(effective(&doc, ServiceKind::Runner, &acme), None);
    doc.runner.default_shard = Some("r0".into());
    assert_eq!(
        effective(&doc, ServiceKind::Runner, &acme).as_deref(),
        Some("r0")
    );
    doc.runner.placement.insert(acme.clone(), "r1".into());
    assert_eq!(
        effective(&doc, ServiceKind::Runner, &acme).as_deref(),
        Some("r1")
    );
}
