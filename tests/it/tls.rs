//! TLS on the listeners (certificate reload, client certificates) and mutual TLS from the
//! data plane to the control plane and to upstream nodes, with the real binaries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_tests::nats::NatsServer;
use gateway_tests::process::PlaneProcess;
use gateway_tests::{SnapshotKeys, upstream};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;

use crate::proxy::send;

const START: Duration = Duration::from_secs(30);

/// A certificate authority that issues server and client certificates.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Authority {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `localhost` and 127.0.0.1: (certificate PEM, key PEM, certificate DER).
    fn issue(&self, name: &str) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    // write then rename: a reader never sees half a file
    let partial = dir.join(format!("{name}.partial"));
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path
}

fn client(ca: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        builder = builder
            .identity(reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// The DER of the certificate `address` presents (trusting `ca`).
async fn presented(address: &str, ca: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

use rustls::pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_speak_tls_reload_certificates_and_the_data_plane_uses_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let servers = Authority::new("gateway test server CA");
    let clients = Authority::new("gateway test client CA");
    let (cert_a, key_a, der_a) = servers.issue("first");
    let (cert_b, key_b, der_b) = servers.issue("second");
    let (client_cert, client_key, _) = clients.issue("data plane");
    let server_ca = write(dir.path(), "server-ca.pem", &servers.pem());
    let client_ca = write(dir.path(), "client-ca.pem", &clients.pem());
    let cert = write(dir.path(), "tls.crt", &cert_a);
    let key = write(dir.path(), "tls.key", &key_a);
    let client_cert_path = write(dir.path(), "client.crt", &client_cert);
    let client_key_path = write(dir.path(), "client.key", &client_key);
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();

    // the control plane requires client certificates issued by the client CA
    let nats = NatsServer::start();
    let keys = SnapshotKeys::generate();
    let prefix = gateway_tests::unique_prefix();
    let mut args = gateway_tests::control_plane_args(
        &nats.url(),
        &prefix,
        &keys,
        &[
            "--tls-cert",
            &path(&cert),
            "--tls-key",
            &path(&key),
            "--tls-client-ca",
            &path(&client_ca),
            "--ops-listen",
            "127.0.0.1:0",
        ],
    );
    args.push("--trusted-proxies".into());
    args.push("127.0.0.1".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut control = PlaneProcess::spawn("control-plane", &args, &[]);
    let fields = control.wait_for_log("control plane listening", START);
    assert_eq!(fields.get("tls").map(String::as_str), Some("true"));
    let control_base = format!(
        "https://localhost:{}",
        fields["addr"].rsplit(':').next().unwrap()
    );
    let control_ops = format!("http://{}", fields["ops_addr"]);
    let ca = servers.pem();
    let with_identity = client(&ca, Some((&client_cert, &client_key)));
    let admin =
        json!({"email": SnapshotKeys::ADMIN_EMAIL, "password": SnapshotKeys::ADMIN_PASSWORD});
    gateway_tests::process::wait_for_status(
        &reqwest::Client::new(),
        &format!("{control_ops}/ready"),
        200,
        START,
    )
    .await;
    let signin = format!("{control_base}/v1/auth/signin");
    let (status, answer) = send(
        &with_identity,
        "POST",
        signin,
        None,
        Some(admin.clone()),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let root = answer["access_token"].as_str().unwrap().to_string();
    // without a client certificate, or in the clear, nothing is answered
    assert!(
        client(&ca, None)
            .post(format!("{control_base}/v1/auth/signin"))
            .json(&admin)
            .send()
            .await
            .is_err(),
        "a client without a certificate was served"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://{}/ready", fields["addr"]))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "plain HTTP was served"
    );
    // the ops listener is plain and carries metrics; the API listener does not
    let ops = reqwest::Client::new();
    assert_eq!(
        ops.get(format!("{control_ops}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        with_identity
            .get(format!("{control_base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // an upstream node that also requires the data plane's client certificate
    let node = upstream::Node::new("tls-node");
    // the node's certificate is the planes' (same CA); clients must be the data plane
    let node_files = gateway_edge::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: Some(client_ca.clone()),
    };
    let node_tls =
        |alpn: &[&[u8]]| gateway_edge::tls::TlsReloader::load(node_files.clone(), alpn).unwrap();
    let http_tls = node_tls(&gateway_edge::http::HTTP_ALPN);
    let node_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_url = format!(
        "https://localhost:{}",
        node_listener.local_addr().unwrap().port()
    );
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(gateway_edge::http::serve(
        node_listener,
        Some(http_tls),
        node.http_router(),
        None,
        gateway_edge::h1::ConnLimits::with_max_body(1 << 20),
        stop.clone(),
        Duration::from_secs(1),
    ));

    // and its gRPC side (the aggregate contract), h2 only, client certificate required
    let grpc_tls = node_tls(&[b"h2"]);
    let grpc_listener = gateway_edge::tls::TlsListener::new(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        grpc_tls,
        gateway_edge::listen::ConnectionCap::new("node-grpc", 64),
    )
    .unwrap();
    let aggregate_url = format!(
        "https://localhost:{}",
        axum::serve::Listener::local_addr(&grpc_listener)
            .unwrap()
            .port()
    );
    let incoming = futures::stream::unfold(grpc_listener, |mut listener| async move {
        let (stream, _) = listener.next().await?;
        Some((Ok::<_, std::io::Error>(stream), listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(node.grpc_service())
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
    );

    // the data plane: TLS on its listeners, mutual TLS to the control plane and the node
    let (mut data, urls) = gateway_tests::spawn_data_plane(
        &nats.url(),
        &prefix,
        &keys,
        &[
            "--tls-cert",
            &path(&cert),
            "--tls-key",
            &path(&key),
            "--tls-reload-interval",
            "100ms",
            "--control-plane-url",
            &control_base,
            "--upstream-ca",
            &path(&server_ca),
            "--upstream-client-cert",
            &path(&client_cert_path),
            "--upstream-client-key",
            &path(&client_key_path),
        ],
    );
    let http_port = urls.http.rsplit(':').next().unwrap().to_string();
    let edge = format!("https://localhost:{http_port}");
    let edge_client = client(&ca, None);
    for (method, path, body) in [
        (
            "PUT",
            "/admin/routing/projection/shards/secure",
            json!({"endpoints": [node_url]}),
        ),
        (
            "PUT",
            "/admin/routing/projection/placements/acme",
            json!({"shard": "secure"}),
        ),
        (
            "PUT",
            "/admin/routing/aggregate/shards/secure",
            json!({"endpoints": [aggregate_url]}),
        ),
        (
            "PUT",
            "/admin/routing/aggregate/placements/acme",
            json!({"shard": "secure"}),
        ),
    ] {
        let url = format!("{control_base}{path}");
        let (status, answer) =
            send(&with_identity, method, url, Some(&root), Some(body), &[]).await;
        assert!((200..300).contains(&status), "{path}: {status} {answer}");
    }
    // sign-up and sign-in through the data plane reach the control plane over mutual TLS
    let member = json!({"email": "tls@example.com", "password": "plum tractor velvet lagoon"});
    let url = format!("{edge}/v1/auth/signup");
    let (status, user) = send(&edge_client, "POST", url, None, Some(member.clone()), &[]).await;
    assert_eq!(status, 201, "{user}");
    let assignment =
        json!({"principal_id": user["user_id"], "tenant_id": "acme", "role": "tenant_member"});
    let url = format!("{control_base}/admin/assignments");
    let (status, _) = send(
        &with_identity,
        "POST",
        url,
        Some(&root),
        Some(assignment),
        &[],
    )
    .await;
    assert_eq!(status, 201);
    let url = format!("{edge}/v1/auth/signin");
    let (status, tokens) = send(&edge_client, "POST", url, None, Some(member), &[]).await;
    assert_eq!(status, 200, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap().to_string();
    // a query goes to the node over mutual TLS
    let deadline = Instant::now() + START;
    let acme = [("x-tenant-id", "acme")];
    loop {
        let url = format!("{edge}/v1/query/orders");
        let (status, answer) = send(
            &edge_client,
            "POST",
            url,
            Some(&token),
            Some(json!({})),
            &acme,
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "query never served: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.recorded().iter().any(|r| r.path == "/v1/query/orders"));
    // and a command to the aggregate over gRPC with mutual TLS
    let url = format!("{edge}/v1/commands/order/o-1");
    let command = json!({"command_type": "Place", "payload": {"sku": "a"}});
    let (status, answer) = send(
        &edge_client,
        "POST",
        url,
        Some(&token),
        Some(command),
        &acme,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(node.recorded().iter().any(|r| r.protocol == "grpc"));

    // gRPC over TLS (h2 by ALPN)
    let grpc_port = urls.grpc.rsplit(':').next().unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("https://localhost:{grpc_port}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let deadline = Instant::now() + START;
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        // the health status follows readiness within half a second
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gRPC health never serving: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // a new certificate on disk is served to new connections without a restart
    let address = format!("127.0.0.1:{http_port}");
    assert_eq!(presented(&address, &ca).await, der_a);
    write(dir.path(), "tls.key", &key_b);
    write(dir.path(), "tls.crt", &cert_b);
    let deadline = Instant::now() + START;
    while presented(&address, &ca).await != der_b {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a broken replacement is refused and the last good certificate stays
    write(dir.path(), "tls.crt", "not a certificate");
    data.wait_for_log(
        "tls files changed but cannot be used; keeping the previous certificate",
        START,
    );
    assert_eq!(presented(&address, &ca).await, der_b);
    let metrics = gateway_tests::metrics_text(&reqwest::Client::new(), &urls.ops).await;
    assert!(
        metrics.contains("gateway_tls_reloads_total{result=\"refused\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_tls_reloads_total{result=\"loaded\"}"),
        "{metrics}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_stop_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write(
        dir.path(),
        "tls.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let key = write(dir.path(), "tls.key", "garbage");
    let keys = SnapshotKeys::generate();
    for (bin, mut args) in [
        (
            "control-plane",
            gateway_tests::control_plane_args("nats://127.0.0.1:1", "x_", &keys, &[]),
        ),
        (
            "data-plane",
            vec!["--snapshot-verify-key-file".to_string(), keys.verify_path()],
        ),
    ] {
        args.extend([
            "--tls-cert".into(),
            cert.to_str().unwrap().into(),
            "--tls-key".into(),
            key.to_str().unwrap().into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = PlaneProcess::spawn(bin, &args, &[]);
        let status = process.wait_exit(START);
        assert_eq!(status.code(), Some(2), "{bin}");
        let stderr = process.stderr().join("\n");
        assert!(stderr.contains("GATEWAY_TLS_CERT"), "{bin}: {stderr}");
        assert!(stderr.contains("tls.crt"), "{bin}: {stderr}");
    }
}
