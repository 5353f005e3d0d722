//! The real plane binaries as child processes: spawn with flags, find their listening
//! addresses in their JSON logs, wait for `/ready`, send SIGTERM, collect logs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`cargo build --workspace --bins` builds them all).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test binary> or target/<profile>/<tool> -> target/<profile>/<name>
    let dir = exe.parent().expect("the executable's directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().expect("target profile dir")
    } else {
        dir
    };
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// A running plane; killed on drop.
pub struct PlaneProcess {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl PlaneProcess {
    /// Spawns `bin` with `args` and extra `env` (the parent's environment is inherited but
    /// every `GATEWAY_` variable is cleared so tests are independent of the shell).
    pub fn spawn(bin: &str, args: &[&str], env: &[(&str, &str)]) -> PlaneProcess {
        let mut command = Command::new(bin_path(bin));
        for (key, _) in std::env::vars() {
            if key.starts_with("GATEWAY_") || key.starts_with("OTEL_") {
                command.env_remove(key);
            }
        }
        command
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn plane");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        for (stream, sink) in [
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                Arc::clone(&lines),
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                Arc::clone(&stderr),
            ),
        ] {
            if let Some(stream) = stream {
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        sink.lock().expect("log lock").push(line);
                    }
                });
            }
        }
        PlaneProcess {
            child: Some(child),
            lines,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Every stdout line so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().expect("log lock").clone()
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("log lock").clone()
    }

    /// Waits for a JSON log line whose `message` is `message` and returns its fields.
    pub fn wait_for_log(&mut self, message: &str, timeout: Duration) -> HashMap<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "process exited ({status}) before logging {message:?}; stderr: {:?}",
                    self.stderr()
                );
            }
            for line in self.logs() {
                if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&line)
                    && map.get("message").and_then(|m| m.as_str()) == Some(message)
                {
                    return map
                        .into_iter()
                        .map(|(k, v)| {
                            let v = v.as_str().map(str::to_string).unwrap_or(v.to_string());
                            (k, v)
                        })
                        .collect();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no log {message:?} within {timeout:?}; stdout: {:?}; stderr: {:?}",
                self.logs(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                // let the log readers finish
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PlaneProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `url` until it answers `status`, or panics at the deadline.
pub async fn wait_for_status(client: &reqwest::Client, url: &str, status: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match client.get(url).send().await {
            Ok(response) if response.status().as_u16() == status => return,
            Ok(response) => {
                last = format!(
                    "{} {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                )
            }
            Err(err) => last = err.to_string(),
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer {status} within {timeout:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
