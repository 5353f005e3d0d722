//! The platform cannot lose its last admin: no self-disable or self force-reset, and no
//! disable, force-reset, delete or role removal of the last platform admin who can sign in.

use serde_json::json;

use super::{PASSWORD, env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_platform_admin_cannot_be_locked_out() {
    let env = env().await;
    let (admin, admin_id) = env
        .signin(
            gateway_tests::SnapshotKeys::ADMIN_EMAIL,
            gateway_tests::SnapshotKeys::ADMIN_PASSWORD,
        )
        .await;
    let refused = |status: u16, body: &serde_json::Value, reason: &str| {
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], reason, "{body}");
    };
    let platform = |who: &str| json!({"principal_id": who, "role": "platform_admin"});

    // alone: none of the ways out is open
    let (status, body) = env
        .call(
            "POST",
            &format!("/admin/users/{admin_id}/disable"),
            Some(&admin),
            None,
        )
        .await;
    refused(status, &body, "self_lockout");
    let (status, body) = env
        .call(
            "POST",
            &format!("/admin/users/{admin_id}/password/force-reset"),
            Some(&admin),
            None,
        )
        .await;
    refused(status, &body, "self_lockout");
    let (status, body) = env
        .call(
            "DELETE",
            "/admin/assignments",
            Some(&admin),
            Some(platform(&admin_id)),
        )
        .await;
    refused(status, &body, "last_platform_admin");
    // nothing changed: the admin still signs in and still administers
    let (admin, _) = env
        .signin(
            gateway_tests::SnapshotKeys::ADMIN_EMAIL,
            gateway_tests::SnapshotKeys::ADMIN_PASSWORD,
        )
        .await;
    let (status, _) = env.call("GET", "/admin/users", Some(&admin), None).await;
    assert_eq!(status, 200);

    // a second platform admin: now one of them may go
    let (_, bea) = env.user("bea@example.com").await;
    let (status, body) = env
        .call(
            "POST",
            "/admin/assignments",
            Some(&admin),
            Some(platform(&bea)),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (bea_token, _) = env.signin("bea@example.com", PASSWORD).await;
    let (status, body) = env
        .call(
            "POST",
            &format!("/admin/users/{admin_id}/disable"),
            Some(&bea_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // bea is the last one who can sign in: her role, her account and her password stay
    let (status, body) = env
        .call(
            "DELETE",
            "/admin/assignments",
            Some(&bea_token),
            Some(platform(&bea)),
        )
        .await;
    refused(status, &body, "last_platform_admin");
    let (status, body) = env
        .call(
            "POST",
            &format!("/admin/users/{bea}/disable"),
            Some(&bea_token),
            None,
        )
        .await;
    refused(status, &body, "self_lockout");
    // the disabled admin does not count: enabling it back makes bea removable again
    let (status, _) = env
        .call(
            "POST",
            &format!("/admin/users/{admin_id}/enable"),
            Some(&bea_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = env
        .call(
            "DELETE",
            "/admin/assignments",
            Some(&bea_token),
            Some(platform(&bea)),
        )
        .await;
    assert_eq!(status, 204, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_routing_replacement_says_what_it_replaces_and_never_empties_by_accident() {
    let env = env().await;
    let admin = env.admin().await;
    let routing = json!({"projection": {"shards": {"p1": ["http://10.0.0.1:8080"]}, "placement": {"acme": "p1"}}});
    let (status, body) = env
        .call(
            "PUT",
            "/admin/routing",
            Some(&admin),
            Some(json!({"routing": routing})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("routing_replace_unsafe")),
        "{body}"
    );
    let (status, body) = env
        .call(
            "PUT",
            "/admin/routing",
            Some(&admin),
            Some(json!({"expected_revision": 1, "routing": routing})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // the wipe of the finding: refused, and the placement is still there
    for wipe in [
        json!({"routing": {}}),
        json!({"expected_revision": 2, "routing": {}}),
    ] {
        let (status, body) = env
            .call("PUT", "/admin/routing", Some(&admin), Some(wipe))
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("routing_replace_unsafe")),
            "{body}"
        );
    }
    let (_, now) = env.call("GET", "/admin/routing", Some(&admin), None).await;
    assert_eq!(now["revision"], 2);
    assert_eq!(now["routing"]["projection"]["placement"]["acme"], "p1");
    // said in so many words, it goes
    let (status, body) = env
        .call(
            "PUT",
            "/admin/routing",
            Some(&admin),
            Some(json!({"expected_revision": 2, "confirm_empty": true, "routing": {}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Two platform admins removing each other at the same moment: the check and the change
/// run under one lock, so one of them stays (check-then-act would let both pass the check
/// and leave nobody).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_removing_each_other_at_once_leave_one() {
    let env = env().await;
    let (first, first_id) = env
        .signin(
            gateway_tests::SnapshotKeys::ADMIN_EMAIL,
            gateway_tests::SnapshotKeys::ADMIN_PASSWORD,
        )
        .await;
    let (_, second_id) = env.user("second-admin@example.com").await;
    let platform = |who: &str| json!({"principal_id": who, "role": "platform_admin"});
    let first_email = gateway_tests::SnapshotKeys::ADMIN_EMAIL;
    let first_password = gateway_tests::SnapshotKeys::ADMIN_PASSWORD;
    // (token, id, email, password), the survivor of the last round first
    let mut admins = [
        (first, first_id, first_email, first_password),
        (
            String::new(),
            second_id,
            "second-admin@example.com",
            PASSWORD,
        ),
    ];
    for round in 0..8 {
        // both hold platform_admin, both signed in
        let (status, _) = env
            .call(
                "POST",
                "/admin/assignments",
                Some(&admins[0].0),
                Some(platform(&admins[1].1)),
            )
            .await;
        assert!(status == 201 || status == 200, "round {round}: {status}");
        for admin in admins.iter_mut() {
            admin.0 = env.signin(admin.2, admin.3).await.0;
        }
        let ((a, a_body), (b, b_body)) = tokio::join!(
            env.call(
                "DELETE",
                "/admin/assignments",
                Some(&admins[0].0),
                Some(platform(&admins[1].1))
            ),
            env.call(
                "DELETE",
                "/admin/assignments",
                Some(&admins[1].0),
                Some(platform(&admins[0].1))
            ),
        );
        let removed = [a == 204, b == 204];
        assert_eq!(
            removed.iter().filter(|r| **r).count(),
            1,
            "round {round}: exactly one removal: {a} {a_body} / {b} {b_body}"
        );
        for (status, body) in [(a, &a_body), (b, &b_body)] {
            assert!(
                status == 204
                    || (status == 409 && body["error"]["code"] == "last_platform_admin")
                    || status == 403,
                "round {round}: {status} {body}"
            );
        }
        // the survivor still administers, and brings the other back next round
        if removed[1] {
            admins.swap(0, 1);
        }
        let (status, _) = env
            .call("GET", "/admin/users", Some(&admins[0].0), None)
            .await;
        assert_eq!(status, 200, "round {round}: the survivor administers");
    }
}
