//! A private RabbitMQ node for tests that close its connections, kill it and restart it,
//! without touching the shared broker on 127.0.0.1:5672 that other tests use.
//!
//! The node runs as a child of the test process: its own name (`rw-<random>@localhost`), its
//! own free AMQP and distribution ports, its data, logs, Erlang cookie and an empty plugin list
//! in a temp dir, and none of the machine's RabbitMQ configuration (`/etc/rabbitmq`). The VM is
//! started with its shell on a pipe held by this struct (`RABBITMQ_ALLOW_INPUT`, so the start
//! script `exec`s the VM rather than forking it): if the test process dies without running
//! `Drop`, the pipe closes and the VM halts by itself, so no stray `beam.smp` is left behind.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where Debian installs the real scripts; `/usr/sbin/rabbitmq-server` is a wrapper that
/// switches to the `rabbitmq` user (and its cookie) when run as root.
const SCRIPTS: &str = "/usr/lib/rabbitmq/bin";

/// How long a (re)start may take on a loaded two-core machine.
const START_LIMIT: Duration = Duration::from_secs(120);

pub struct PrivateRabbit {
    /// `amqp://guest:guest@127.0.0.1:{port}/%2f`.
    pub url: String,
    /// The Erlang node name, for `rabbitmqctl -n`.
    node: String,
    /// Free ports picked once, kept across restarts (clients reconnect to the same URL).
    amqp_port: u16,
    dist_port: u16,
    /// Data, logs, cookie (as `$HOME`), configuration.
    dir: PathBuf,
    /// The `rabbitmq_prometheus` plugin's port, when the node runs it.
    pub prometheus_port: Option<u16>,
    /// The VM while it runs (its stdin is the pipe that keeps it alive).
    child: Option<Child>,
    /// How long each start took, for the figures.
    pub starts: Vec<Duration>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("a bound address")
        .port()
}

fn script(name: &str) -> PathBuf {
    let packaged = Path::new(SCRIPTS).join(name);
    if packaged.exists() {
        packaged
    } else {
        PathBuf::from(name)
    }
}

impl PrivateRabbit {
    /// Starts a fresh node and waits until it takes AMQP connections.
    pub async fn start() -> Self {
        Self::start_node(false, "").await
    }

    /// A fresh node with these extra `rabbitmq.conf` lines (settings the docs tell operators
    /// to make, tried on a node of the test's own).
    pub async fn start_with_conf(conf: &str) -> Self {
        Self::start_node(false, conf).await
    }

    /// A fresh node that also runs RabbitMQ's `rabbitmq_prometheus` plugin on a free port
    /// ([`Self::prometheus_port`]), for the tests that scrape the broker's own metrics.
    pub async fn start_with_prometheus() -> Self {
        Self::start_node(true, "").await
    }

    async fn start_node(with_prometheus: bool, extra_conf: &str) -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let dir = std::env::temp_dir().join(format!("rw-rabbit-{id}"));
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("a temp dir for the private RabbitMQ");
        }
        // No plugins but the one asked for, each on a port of its own (nothing clashes with
        // the shared node's), and none of /etc/rabbitmq's settings (its node name and listener
        // belong to the shared node).
        let prometheus_port = with_prometheus.then(free_port);
        let mut conf = format!("log.console = false\n{extra_conf}");
        let plugins = match prometheus_port {
            Some(port) => {
                conf.push_str(&format!(
                    "prometheus.tcp.port = {port}\nprometheus.tcp.ip = 127.0.0.1\n"
                ));
                "[rabbitmq_prometheus].\n"
            }
            None => "[].\n",
        };
        std::fs::write(dir.join("enabled_plugins"), plugins).unwrap();
        std::fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(dir.join("rabbitmq.conf"), conf).unwrap();
        let amqp_port = free_port();
        let mut rabbit = Self {
            url: format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2f"),
            node: format!("rw-{id}@localhost"),
            amqp_port,
            dist_port: free_port(),
            dir,
            prometheus_port,
            child: None,
            starts: Vec::new(),
        };
        rabbit.start_again().await;
        rabbit
    }

    /// Starts the node again (same name, ports and data) and waits until it takes
    /// connections; its durable queues come back with their messages.
    pub async fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "the private RabbitMQ is already running"
        );
        let started = Instant::now();
        let dir = &self.dir;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("console.log"))
            .unwrap();
        let child = Command::new(script("rabbitmq-server"))
            .current_dir(dir)
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins-expand"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_ALLOW_INPUT", "1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("ERL_CRASH_DUMP", dir.join("erl_crash.dump"))
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("rabbitmq-server is installed (it runs the shared RabbitMQ too)");
        self.child = Some(child);
        loop {
            if let Ok(Ok(connection)) = tokio::time::timeout(
                Duration::from_secs(5),
                lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default()),
            )
            .await
            {
                let _ = connection.close(200, "ready".into()).await;
                break;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "the private RabbitMQ exited ({status}) while starting; see {}",
                    self.dir.join("console.log").display()
                );
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "the private RabbitMQ did not start within {START_LIMIT:?}; see {}",
                self.dir.join("console.log").display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.starts.push(started.elapsed());
    }

    /// Crashes the node (SIGKILL to the VM): every connection drops at once, and nothing
    /// answers on its port until [`Self::start_again`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `rabbitmqctl close_all_connections`: the broker closes every client connection (the
    /// node stays up); returns what rabbitmqctl said.
    pub async fn close_all_connections(&self) -> String {
        self.ctl(&[
            "close_all_connections",
            "chaos test: connection closed by the broker",
        ])
        .await
    }

    /// Creates broker user `name` (password `name`-pw) with every permission on `/`, as an
    /// operator creates an agent's user (docs/MANDATES.md); returns its AMQP URL.
    pub async fn add_user(&self, name: &str) -> String {
        let password = format!("{name}-pw");
        self.ctl(&["add_user", name, &password]).await;
        self.ctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"])
            .await;
        format!("amqp://{name}:{password}@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// Runs `rabbitmqctl -n <this node> ARGS` with this node's cookie; panics if it fails.
    async fn ctl(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::new(script("rabbitmqctl"))
            .env("HOME", &self.dir)
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("rabbitmqctl runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} failed: {text}"
        );
        text
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
