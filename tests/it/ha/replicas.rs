//! Sessions and admin changes shared by the replicas, without stickiness.

use serde_json::json;

use super::{Cluster, both_answer, call};

/// T9.4 and an admin change made on one control plane enforced by both data planes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_sessions_and_admin_changes_without_stickiness() {
    let cluster = Cluster::start().await;
    let (id, token, refresh) = cluster.member("ha@example.com", 0).await;
    // signin on the first, refresh on the second, refresh again on the first
    let mut refresh = refresh;
    for control in [1, 0, 1] {
        let (status, tokens) = call(
            &cluster.client,
            "POST",
            format!("{}/v1/auth/refresh", cluster.controls[control].1),
            None,
            Some(json!({"refresh_token": refresh})),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "refresh on replica {control}: {tokens}");
        let next = tokens["refresh_token"].as_str().unwrap().to_string();
        assert_ne!(next, refresh);
        refresh = next;
    }
    both_answer(&cluster, &token, "acme", 200).await;
    // a role change on control plane 1 reaches both data planes
    cluster
        .admin_ok(
            1,
            "DELETE",
            "/admin/assignments",
            json!({"principal_id": id, "tenant_id": "acme", "role": "tenant_member"}),
        )
        .await;
    both_answer(&cluster, &token, "acme", 403).await;
    cluster
        .admin_ok(
            1,
            "POST",
            "/admin/assignments",
            json!({"principal_id": id, "tenant_id": "acme", "role": "tenant_member"}),
        )
        .await;
    both_answer(&cluster, &token, "acme", 200).await;
}
