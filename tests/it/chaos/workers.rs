//! `refund-worker run` as operators run it: child processes that a chaos test kills, stops and
//! restarts. Each writes its log to a file of its own, kept when a test fails.

use std::{
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::process::{Child, Command};

use crate::helpers::{TestEnv, binary};

/// The logs of one test's workers.
pub struct Logs {
    /// `$TMPDIR/refund-worker-chaos/<prefix>/`.
    pub dir: PathBuf,
    /// Workers started so far (names the next one's log).
    spawned: usize,
}

impl Logs {
    pub fn new(env: &TestEnv) -> Self {
        let dir = std::env::temp_dir()
            .join("refund-worker-chaos")
            .join(env.prefix());
        std::fs::create_dir_all(&dir).expect("a log dir");
        Self { dir, spawned: 0 }
    }

    /// Lines of a worker's log that contain `text`.
    pub fn count(&self, worker: &str, text: &str) -> usize {
        std::fs::read_to_string(self.dir.join(format!("{worker}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(text))
            .count()
    }

    /// Removes the logs (the test passed).
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One `refund-worker run` process.
pub struct WorkerProcess {
    /// The process (killed if the test panics).
    child: Child,
    /// `worker-N`, its log's name.
    pub name: String,
}

impl WorkerProcess {
    /// Starts `refund-worker run` with the env's settings (plus `extra` arguments).
    pub fn spawn(env: &TestEnv, logs: &mut Logs, extra: &[&str]) -> Self {
        logs.spawned += 1;
        let name = format!("worker-{}", logs.spawned);
        let log = std::fs::File::create(logs.dir.join(format!("{name}.log"))).unwrap();
        let mut args = vec!["run"];
        if !extra.contains(&"--metrics-addr") {
            args.extend(["--metrics-addr", "127.0.0.1:0"]);
        }
        args.extend(extra);
        let child = Command::new(binary())
            .args(&args)
            .envs(env.child_env())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the refund-worker binary starts");
        Self { child, name }
    }

    /// SIGKILL: no grace, no clean-up; whatever it held comes back from the broker.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }

    /// SIGTERM, then its exit status (it must finish or hand back in-flight jobs in time).
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "SIGTERM to {}", self.name);
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop within 60s of SIGTERM", self.name))
            .unwrap()
    }

    /// Whether it is still running (it must never exit by itself while consuming).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for it to exit on its own (`--exit-when-idle`).
    pub async fn wait(mut self, limit: Duration) -> ExitStatus {
        let status = tokio::time::timeout(limit, self.child.wait()).await;
        match status {
            Ok(status) => status.unwrap(),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!("{} did not go idle within {limit:?}", self.name);
            }
        }
    }
}

/// Runs `refund-worker run --exit-when-idle` to the end: what is left after the faults gets
/// finished (and nothing is left anywhere when it exits 0).
pub async fn drain(env: &TestEnv, logs: &mut Logs, limit: Duration) {
    let worker = WorkerProcess::spawn(env, logs, &["--exit-when-idle"]);
    let name = worker.name.clone();
    let status = worker.wait(limit).await;
    assert!(
        status.success(),
        "{name} (--exit-when-idle) exited {status}; see {}",
        logs.dir.display()
    );
}

/// A free local port for a worker's `/metrics` and `/readyz`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
