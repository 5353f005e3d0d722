//! Both plane binaries against a real NATS: ops routes, readiness, bad configuration, shutdown.

mod config;
mod ops;
mod readiness;
mod reconcile;

use std::time::Duration;

use gateway_store::nats::NatsConfig;
use gateway_store::{Store, StoreConfig};
use gateway_tests::SnapshotKeys;
use gateway_tests::nats::NatsServer;
use gateway_tests::process::PlaneProcess;

const START: Duration = Duration::from_secs(30);

struct Env {
    nats: NatsServer,
    keys: SnapshotKeys,
    prefix: String,
}

impl Env {
    fn new() -> Env {
        Env {
            nats: NatsServer::start(),
            keys: SnapshotKeys::generate(),
            prefix: gateway_tests::unique_prefix(),
        }
    }

    fn control(&self, extra: &[&str]) -> (PlaneProcess, String) {
        let mut flags = vec!["--store-timeout", "1s"];
        flags.extend_from_slice(extra);
        gateway_tests::spawn_control_plane(&self.nats.url(), &self.prefix, &self.keys, &flags)
    }

    /// Returns the process, the public base URL and the ops base URL.
    fn data(&self, snapshots_optional: bool, extra: &[&str]) -> (PlaneProcess, String, String) {
        let (process, http, ops, _) = self.data_with_grpc(snapshots_optional, extra);
        (process, http, ops)
    }

    /// Also returns the gRPC URL.
    fn data_with_grpc(
        &self,
        snapshots_optional: bool,
        extra: &[&str],
    ) -> (PlaneProcess, String, String, String) {
        let url = self.nats.url();
        let verify = self.keys.verify_path();
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--nats-url",
            &url,
            "--store-prefix",
            &self.prefix,
            "--snapshot-verify-key-file",
            &verify,
            "--store-timeout",
            "1s",
        ];
        if snapshots_optional {
            args.push("--snapshots-optional");
        }
        args.extend_from_slice(extra);
        let mut process = PlaneProcess::spawn("data-plane", &args, &[]);
        let fields = process.wait_for_log("data plane listening", START);
        let http = format!("http://{}", fields["http_addr"]);
        let ops = format!("http://{}", fields["ops_addr"]);
        let grpc = format!("http://{}", fields["grpc_addr"]);
        (process, http, ops, grpc)
    }

    async fn store(&self) -> Store {
        Store::open(&StoreConfig::Nats(NatsConfig {
            url: self.nats.url(),
            prefix: self.prefix.clone(),
            ..NatsConfig::default()
        }))
        .await
        .unwrap()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}
