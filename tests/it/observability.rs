//! Observability checked with the real tools: `promtool check metrics` on the worker's output,
//! `promtool check/test rules` on the alerts, a real Prometheus server that scrapes a worker
//! (and RabbitMQ's Prometheus plugin) and evaluates every PromQL expression of the Grafana
//! dashboard and of the alert rules, and the compose file against the Compose Specification's
//! JSON schema (vendored in specs/compose/).
//!
//! `prometheus` and `promtool` come from Debian's `prometheus` package, which `scripts/test`
//! installs; a missing tool fails the test with that hint. RabbitMQ's `rabbitmq_prometheus`
//! plugin runs on a private RabbitMQ node the test starts itself (the machine's broker is
//! never reconfigured).

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use refund_worker::metrics;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use refund_sandbox::FaultOptions;

use crate::{
    helpers::{REDIS_URL, TestEnv, binary, eventually, today},
    hostile::forged,
    ops::cli_ok,
    private_rabbit::PrivateRabbit,
};

/// The runbook base the test's Prometheus reads from the environment.
const RUNBOOK_BASE: &str = "https://runbooks.example.test/refund-worker/OPERATIONS.md";

// ------------------------------------------------------------------------------------------
// Tools and files

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// `prometheus` or `promtool` (Debian's `prometheus` package; `scripts/test` installs it).
fn prometheus_tool(name: &str) -> PathBuf {
    in_path(name).unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: run scripts/test (it installs Debian's `prometheus` \
             package, which provides prometheus and promtool)"
        )
    })
}

/// Runs a tool, optionally feeding `stdin`; returns (success, stdout + stderr).
fn run_tool(tool: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(tool)
        .args(args)
        .current_dir(repo("."))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ------------------------------------------------------------------------------------------
// A mixed batch: every provider, duplicates, retries, a pending refund, refusals, invalid jobs

/// A 32-character Pix e2eid.
fn e2eid(n: u32) -> String {
    format!("E{n:031}")
}

fn job(payment_id: &str, amount: u64, provider: &str) -> Value {
    json!({ "payment_id": payment_id, "amount": amount, "provider": provider, "date": today().to_string() })
}

/// The valid jobs (duplicates included) and the raw invalid bodies of a mixed batch.
fn mixed_batch(tag: &str) -> (Vec<Value>, Vec<String>) {
    let mut jobs = vec![
        job(&format!("pi_{tag}_1"), 1_000, "stripe"),
        job(&format!("pi_{tag}_2"), 2_000, "stripe"),
        job(&format!("pi_{tag}_flaky3"), 3_000, "stripe"),
        job(&format!("pi_{tag}_pending"), 3_500, "stripe"),
        job(&format!("pi_{tag}_declined"), 4_000, "stripe"),
        job("880001", 1_100, "mercadopago"),
        job("880002_declined", 1_200, "mercadopago"),
        job(&format!("pay_{tag}_1"), 1_300, "asaas"),
        job(&format!("pay_{tag}_flaky3"), 1_400, "asaas"),
        job(&format!("tx_{tag}_1"), 1_500, "rinne"),
        job(&format!("tx_{tag}_2"), 1_600, "rinne"),
        job(&e2eid(1), 1_700, "pix"),
        job(&e2eid(2), 1_800, "pix"),
    ];
    // Exact copies: deduplicated.
    jobs.push(jobs[0].clone());
    jobs.push(jobs[11].clone());
    let invalid = vec![
        format!(r#"{{"payment_id":"pi_{tag}_bad","amount":0,"provider":"stripe"}}"#),
        format!(r#"{{"payment_id":"pi_{tag}_typo","ammount":100,"provider":"stripe"}}"#),
    ];
    (jobs, invalid)
}

async fn publish_mixed_batch(env: &TestEnv) -> usize {
    let (jobs, invalid) = mixed_batch(&env.prefix().replace('-', "_"));
    env.publish_json(&jobs).await;
    for body in &invalid {
        env.publish_raw(body.as_bytes(), lapin::BasicProperties::default())
            .await;
    }
    jobs.len() + invalid.len()
}

/// The sum of every sample of `name` in a text exposition.
fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Jobs that reached a final outcome: succeeded, dead-lettered or deduplicated.
fn finished(text: &str) -> f64 {
    [
        "refunds_succeeded_total",
        "refunds_failed_total",
        "refunds_deduplicated_total",
    ]
    .iter()
    .map(|name| sample_sum(text, name))
    .sum()
}

// ------------------------------------------------------------------------------------------
// PromQL: the expressions of the dashboard and the alert rules, and the metrics they name

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end",
];

/// Index just past the string literal that starts at `i`.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Index just past the bracket that closes the one at `i` (strings inside are skipped).
fn skip_block(chars: &[char], mut i: usize, close: char) -> usize {
    i += 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The metric names a PromQL expression selects (a small lexer: identifiers that are not
/// functions, aggregations, keywords, label names in matchers or grouping lists, durations or
/// numbers).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_block(&chars, i, '}');
        } else if c == '[' {
            i = skip_block(&chars, i, ']');
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let opens = chars.get(next) == Some(&'(');
            let lower = ident.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if opens {
                    i = skip_block(&chars, next, ')');
                }
            } else if !(opens
                || KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str()))
            {
                names.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// One expression to check, and where it comes from.
#[derive(Debug, Clone)]
struct Query {
    origin: String,
    expr: String,
    /// Dashboard panel queries should return data after a run.
    panel: bool,
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/dashboards/refund-worker.json"))
        .expect("the dashboard is valid JSON")
}

fn collect_panels<'a>(panels: &'a [Value], out: &mut Vec<&'a Value>) {
    for panel in panels {
        out.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            collect_panels(inner, out);
        }
    }
}

/// Every panel target and every query variable of the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<Query> {
    let mut panels = Vec::new();
    collect_panels(dashboard["panels"].as_array().expect("panels"), &mut panels);
    let mut queries = Vec::new();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?}: a target without expr", panel["title"]));
            queries.push(Query {
                origin: format!(
                    "panel {:?} {}",
                    panel["title"].as_str().unwrap_or("?"),
                    target["refId"].as_str().unwrap_or("?")
                ),
                expr: expr.to_owned(),
                panel: true,
            });
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] == "query" {
            let query = &variable["query"];
            let expr = query
                .as_str()
                .or_else(|| query["query"].as_str())
                .expect("a query variable has a query");
            queries.push(Query {
                origin: format!("variable ${}", variable["name"].as_str().unwrap_or("?")),
                expr: expr.to_owned(),
                panel: false,
            });
        }
    }
    queries
}

/// Every alert and recording rule expression.
fn rule_queries() -> Vec<Query> {
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("config/prometheus/alerts.yml")).expect("alerts.yml is YAML");
    let mut queries = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .expect("a rule has a name");
            queries.push(Query {
                origin: format!("rule {name}"),
                expr: rule["expr"]
                    .as_str()
                    .expect("a rule has an expr")
                    .to_owned(),
                panel: false,
            });
        }
    }
    queries
}

/// Grafana's variables, as a dashboard user would have them: every provider, the test's
/// queue prefix, the currency the test refunds in, and intervals that fit a short run
/// scraped every second.
fn substitute(expr: &str, prefix: &str) -> String {
    let out = expr
        .replace("${__rate_interval}", "1m")
        .replace("$__rate_interval", "1m")
        .replace("${__interval}", "15s")
        .replace("$__interval", "15s")
        .replace("${__range}", "5m")
        .replace("$__range", "5m")
        .replace("${provider}", ".*")
        .replace("$provider", ".*")
        .replace("${prefix}", prefix)
        .replace("$prefix", prefix)
        .replace("${currency}", "BRL")
        .replace("$currency", "BRL");
    assert!(
        !out.contains('$'),
        "a template variable the test does not know: {expr}"
    );
    out
}

// ------------------------------------------------------------------------------------------
// A Prometheus server of our own

struct Prometheus {
    base: String,
    dir: PathBuf,
    child: tokio::process::Child,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts `prometheus` on a free port with the repository's prometheus.yml, rewritten to
    /// scrape `worker` and RabbitMQ's plugin at `rabbitmq` every second, with alerts.yml loaded.
    async fn start(tool: &Path, name: &str, worker: &str, rabbitmq: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-prometheus"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, test_config(worker, rabbitmq)).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = tokio::process::Command::new(tool)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=expand-external-labels")
            .env("RUNBOOK_BASE", RUNBOOK_BASE)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Self {
            base: format!("http://127.0.0.1:{port}"),
            dir,
            child,
            http: reqwest::Client::new(),
        };
        let ready = format!("{}/-/ready", prometheus.base);
        let http = prometheus.http.clone();
        let started = tokio::time::Instant::now();
        loop {
            if http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "prometheus did not get ready in 30 s; its log:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let body: Value = self
            .http
            .get(format!("{}{path}", self.base))
            .query(params)
            .send()
            .await
            .expect("prometheus answers")
            .json()
            .await
            .expect("prometheus answers JSON");
        body
    }

    /// `/api/v1/query`: the result vector, or the error Prometheus gave.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let body = self.api("/api/v1/query", &[("query", expr)]).await;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        let data = &body["data"];
        match data["resultType"].as_str() {
            Some("vector" | "matrix") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            // A bare scalar or string is one value.
            _ => Ok(vec![data["result"].clone()]),
        }
    }

    /// The value of an instant query that returns one series, if any.
    async fn scalar(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).await.ok()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    async fn metric_names(&self) -> BTreeSet<String> {
        let body = self.api("/api/v1/label/__name__/values", &[]).await;
        body["data"]
            .as_array()
            .expect("label values")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The repository's prometheus.yml with local targets, a 1 s interval and an absolute path
/// to alerts.yml (job names, metrics paths and params kept as they are).
fn test_config(worker: &str, rabbitmq: &str) -> String {
    use serde_yaml_ng::{Mapping, Value as Yaml};
    let mut config: Yaml = serde_yaml_ng::from_str(&read("config/prometheus/prometheus.yml"))
        .expect("prometheus.yml is YAML");
    config["global"]["scrape_interval"] = Yaml::from("1s");
    config["global"]["evaluation_interval"] = Yaml::from("1s");
    config["rule_files"] = Yaml::Sequence(vec![Yaml::from(
        repo("config/prometheus/alerts.yml").display().to_string(),
    )]);
    // The compose stack's Alertmanager is not here: the test reads alerts from Prometheus.
    if let Some(map) = config.as_mapping_mut() {
        map.remove("alerting");
    }
    let jobs = config["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs");
    let mut kept = Vec::new();
    for mut job in jobs.drain(..) {
        let target = match job["job_name"].as_str() {
            Some("refund-worker") => worker.to_owned(),
            Some("rabbitmq") => rabbitmq.to_owned(),
            _ => continue,
        };
        let map = job.as_mapping_mut().expect("a scrape config is a mapping");
        map.remove("dns_sd_configs");
        let mut targets = Mapping::new();
        targets.insert(
            Yaml::from("targets"),
            Yaml::Sequence(vec![Yaml::from(target)]),
        );
        map.insert(
            Yaml::from("static_configs"),
            Yaml::Sequence(vec![Yaml::Mapping(targets)]),
        );
        kept.push(job);
    }
    assert_eq!(
        kept.len(),
        2,
        "prometheus.yml scrapes jobs refund-worker and rabbitmq"
    );
    *jobs = kept;
    serde_yaml_ng::to_string(&config).unwrap()
}

async fn rabbitmq_plugin_answers(address: &str) -> bool {
    reqwest::get(format!("http://{address}/metrics"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

// ------------------------------------------------------------------------------------------
// The tests

#[test]
fn the_promql_lexer_finds_metric_names_only() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, provider) (rate(refunds_duration_seconds_bucket{provider=~"a|b"}[1m])))"#
        ),
        ["refunds_duration_seconds_bucket"]
    );
    assert_eq!(
        names(
            "max by (queue) (q_ready{queue=~\".+[.]jobs\"}) > 0\nunless on ()\n(sum(increase(a_total[10m])) + sum(b_total offset 5m)) > 1e+06"
        ),
        ["a_total", "b_total", "q_ready"]
    );
    assert_eq!(
        names(r#"absent(up{job="x"}) or x:y:rate5m * on (a) group_left (b) c"#),
        ["c", "up", "x:y:rate5m"]
    );
    assert_eq!(names("sum(x) by (provider) / 100"), ["x"]);
}

#[test]
fn the_dashboard_uses_the_provisioned_datasource_and_has_a_query_per_panel() {
    let datasources: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("grafana/provisioning/datasources/prometheus.yml")).unwrap();
    let uid = datasources["datasources"][0]["uid"].as_str().expect("uid");
    let providers: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("grafana/provisioning/dashboards/dashboards.yml")).unwrap();
    assert_eq!(
        providers["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards"),
        "docker-compose.yml mounts grafana/dashboards there"
    );
    let dashboard = dashboard();
    let mut panels = Vec::new();
    collect_panels(dashboard["panels"].as_array().unwrap(), &mut panels);
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "unique panel ids"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has a query", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"]["uid"], uid, "{}", panel["title"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_passes_on_the_worker_output_after_a_mixed_batch() {
    let promtool = prometheus_tool("promtool");
    let env = TestEnv::start("obs-promtool").await;
    let total = publish_mixed_batch(&env).await;
    let port = free_port();
    let mut child = tokio::process::Command::new(binary())
        .args(["run", "--metrics-addr", &format!("127.0.0.1:{port}")])
        .envs(env.child_env())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the refund-worker binary starts");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = std::sync::Mutex::new(String::new());
    eventually(
        Duration::from_secs(60),
        "the worker finishes the mixed batch",
        || async {
            let Ok(response) = reqwest::get(&url).await else {
                return false;
            };
            let body = response.text().await.unwrap_or_default();
            let done = finished(&body) >= total as f64;
            *text.lock().unwrap() = body;
            done
        },
    )
    .await;
    let text = text.into_inner().unwrap();
    for name in [
        "refunds_succeeded_total",
        "refunds_failed_total",
        "refunds_retried_total",
    ] {
        assert!(
            sample_sum(&text, name) > 0.0,
            "{name} counted something:\n{text}"
        );
    }

    let (ok, output) = run_tool(&promtool, &["check", "metrics"], Some(&text));
    println!(
        "promtool check metrics: {}",
        if output.trim().is_empty() {
            "ok"
        } else {
            output.trim()
        }
    );
    assert!(
        ok,
        "promtool check metrics failed:\n{output}\n--- metrics:\n{text}"
    );
    // No payment ids in labels.
    let (jobs, _) = mixed_batch(&env.prefix().replace('-', "_"));
    for job in jobs {
        let id = job["payment_id"].as_str().unwrap();
        assert!(!text.contains(id), "{id} appears in /metrics");
    }

    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops")
        .unwrap();
    assert!(status.success());
    env.cleanup().await;
}

#[test]
fn promtool_checks_the_prometheus_config_the_alert_rules_and_their_unit_tests() {
    let promtool = prometheus_tool("promtool");
    for args in [
        ["check", "rules", "config/prometheus/alerts.yml"],
        ["check", "config", "config/prometheus/prometheus.yml"],
        ["test", "rules", "config/prometheus/alerts.test.yml"],
    ] {
        let (ok, output) = run_tool(&promtool, &args, None);
        println!("promtool {}: {}", args.join(" "), output.trim());
        assert!(ok, "promtool {} failed:\n{output}", args.join(" "));
    }
    // Every alert has a summary, a runbook section that exists and a unit test.
    let tests = read("config/prometheus/alerts.test.yml");
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("config/prometheus/alerts.yml")).unwrap();
    let operations = read("docs/OPERATIONS.md");
    let anchors: BTreeSet<String> = operations
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|heading| {
            heading
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("config/prometheus/prometheus.yml")).unwrap();
    assert_eq!(
        config["global"]["external_labels"]["runbook_base"].as_str(),
        Some("${RUNBOOK_BASE}"),
        "prometheus.yml gives the runbook base"
    );
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: summary"
            );
            let runbook = rule["annotations"]["runbook_url"]
                .as_str()
                .expect("runbook_url");
            let anchor = runbook
                .strip_prefix("{{ $externalLabels.runbook_base }}#")
                .unwrap_or_else(|| panic!("{name}: runbook under runbook_base: {runbook}"));
            assert!(
                anchors.contains(anchor),
                "{name}: no section #{anchor} in docs/OPERATIONS.md ({anchors:?})"
            );
            // Every alert is unit-tested firing and silent.
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "{name}: no promtool unit test"
            );
        }
    }
    assert!(alerts >= 17, "{alerts} alerts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_evaluates_every_dashboard_and_alert_query_against_a_worker() {
    let prometheus_bin = prometheus_tool("prometheus");
    // A private node with the Prometheus plugin: the machine's own broker is not reconfigured.
    let rabbit = PrivateRabbit::start_with_prometheus().await;
    let rabbit_metrics = format!(
        "127.0.0.1:{}",
        rabbit.prometheus_port.expect("the node runs the plugin")
    );
    eventually(
        Duration::from_secs(60),
        "RabbitMQ's Prometheus plugin answers",
        || rabbitmq_plugin_answers(&rabbit_metrics),
    )
    .await;
    // A certificate that expires in 20 days: inside the 30-day warning, outside the 7-day page.
    let certificate = std::env::temp_dir().join(format!("obs-prom-{}.pem", std::process::id()));
    let key = certificate.with_extension("key");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=obs-prom", "-days", "20", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .output()
        .expect("openssl (Debian's openssl package) makes the test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let watched = certificate.display().to_string();
    let env = TestEnv::with_infra(
        "obs-prom",
        FaultOptions::default(),
        |settings| {
            settings
                .certificates
                .insert("pix_client".into(), watched.clone());
        },
        &rabbit.url,
        REDIS_URL,
    )
    .await;
    let worker = env.spawn_worker().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr = listener.local_addr().unwrap().to_string();
    let stop_server = CancellationToken::new();
    tokio::spawn(metrics::serve(
        listener,
        worker.metrics.clone(),
        worker.health.clone(),
        stop_server.clone(),
    ));
    let prometheus =
        Prometheus::start(&prometheus_bin, env.prefix(), &worker_addr, &rabbit_metrics).await;

    let mut last_up = String::new();
    let started = tokio::time::Instant::now();
    loop {
        let worker_up = prometheus.scalar(r#"up{job="refund-worker"}"#).await;
        let rabbit_up = prometheus.scalar(r#"up{job="rabbitmq"}"#).await;
        if worker_up == Some(1.0) && rabbit_up == Some(1.0) {
            break;
        }
        last_up = format!("worker {worker_up:?}, rabbitmq {rabbit_up:?}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "prometheus cannot scrape its targets ({last_up}); its log:\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = last_up;

    // Governed refunds (and so mandate denials) are not recorded by this branch's pipeline
    // yet: count denials by hand so the mandate panels have a series to show.
    worker
        .metrics
        .mandate_denied
        .with_label_values(&["agent-obs-test"])
        .inc();
    let mut total = publish_mixed_batch(&env).await;
    // A publisher forging the service's headers: ignored (the job runs as a fresh one), and
    // counted.
    let forged_job = job(
        &format!("pi_{}_forged", env.prefix().replace('-', "_")),
        1_900,
        "stripe",
    );
    env.publish_raw(
        &serde_json::to_vec(&forged_job).unwrap(),
        lapin::BasicProperties::default().with_headers(forged(&[("x-refund-attempts", "7")])),
    )
    .await;
    total += 1;
    eventually(
        Duration::from_secs(60),
        "the worker finishes the mixed batch",
        || async { finished(&worker.metrics.render()) >= total as f64 },
    )
    .await;
    worker
        .metrics
        .mandate_denied
        .with_label_values(&["agent-obs-test"])
        .inc();
    // An operator pauses a provider (recorded in the audit log), then someone deletes that
    // entry of the log in Redis.
    cli_ok(
        &env,
        &[
            "--as", "obs", "provider", "pause", "stripe", "--reason", "obs test",
        ],
    )
    .await;
    let mut redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deleted: u32 = redis::cmd("HDEL")
        .arg(format!("{{{}:audit}}:log", env.prefix()))
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(deleted, 1, "the pause is the log's first entry");
    // The worker reads pauses every second and samples the audit log every 15 s.
    for (expr, want) in [
        (r#"max(refunds_provider_paused{provider="stripe"})"#, 1.0),
        (
            "max(refunds_audit_log_seq - refunds_audit_log_entries)",
            1.0,
        ),
        ("sum(refunds_untrusted_headers_total)", 1.0),
        (
            "round((min(refunds_certificate_expiry_timestamp_seconds) - time()) / 86400)",
            20.0,
        ),
    ] {
        eventually(
            Duration::from_secs(40),
            &format!("prometheus reads {expr} = {want}"),
            || async { prometheus.scalar(expr).await == Some(want) },
        )
        .await;
    }
    // Until Prometheus has scraped the final numbers.
    let expected = finished(&worker.metrics.render());
    let scraped = "sum(refunds_succeeded_total) + sum(refunds_failed_total) + sum(refunds_deduplicated_total)";
    eventually(
        Duration::from_secs(20),
        "prometheus scrapes the final counts",
        || async { prometheus.scalar(scraped).await == Some(expected) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let names = prometheus.metric_names().await;
    let dashboard = dashboard();
    let mut queries = dashboard_queries(&dashboard);
    let panel_queries = queries.len();
    queries.extend(rule_queries());
    assert!(panel_queries >= 20, "the dashboard has its queries");

    let mut invalid = Vec::new();
    let mut missing = Vec::new();
    let mut empty = Vec::new();
    let mut table = Vec::new();
    for query in &queries {
        let expr = substitute(&query.expr, env.prefix());
        // Grafana's label_values(metric, label) is not PromQL: check the metric has the label.
        if let Some(args) = expr
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
            let (metric, label) = (metric.trim(), label.trim());
            if !names.contains(metric) {
                missing.push(format!("{}: {metric}", query.origin));
            }
            let body = prometheus
                .api(
                    &format!("/api/v1/label/{label}/values"),
                    &[("match[]", metric)],
                )
                .await;
            let values = body["data"].as_array().map_or(0, Vec::len);
            table.push(format!("{:>3} values  {}", values, query.origin));
            if values == 0 {
                empty.push(query.origin.clone());
            }
            continue;
        }
        for name in metric_names(&expr) {
            if !names.contains(&name) {
                missing.push(format!("{}: {name}", query.origin));
            }
        }
        match prometheus.query(&expr).await {
            Err(e) => invalid.push(format!("{}: {e}\n    {expr}", query.origin)),
            Ok(result) => {
                let numbers = result
                    .iter()
                    .filter(|s| s["value"][1].as_str().is_some_and(|v| v != "NaN"))
                    .count();
                table.push(format!(
                    "{:>3} series ({numbers} not NaN)  {}",
                    result.len(),
                    query.origin
                ));
                if query.panel && result.is_empty() {
                    empty.push(query.origin.clone());
                }
            }
        }
    }
    println!("{}", table.join("\n"));
    assert!(
        invalid.is_empty(),
        "invalid PromQL:\n{}",
        invalid.join("\n")
    );
    assert!(
        missing.is_empty(),
        "queries name metrics the scrape does not have:\n{}\nscraped: {names:?}",
        missing.join("\n")
    );
    assert!(
        empty.is_empty(),
        "dashboard queries with no data after a mixed batch:\n{}",
        empty.join("\n")
    );

    // The alert rules were loaded and evaluate without errors.
    let started = tokio::time::Instant::now();
    let health = loop {
        let body = prometheus.api("/api/v1/rules", &[]).await;
        let mut health = Vec::new();
        for group in body["data"]["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                health.push((
                    rule["name"].as_str().unwrap_or("?").to_owned(),
                    format!("{} {}", rule["health"], rule["lastError"]),
                ));
            }
        }
        if !health.is_empty() && health.iter().all(|(_, h)| !h.starts_with("\"unknown\"")) {
            break health;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the alert rules were not all evaluated: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        health.len(),
        rule_queries().len(),
        "every rule loaded: {health:?}"
    );
    for (rule, state) in &health {
        assert!(state.starts_with("\"ok\""), "rule {rule}: {state}");
    }

    // The signals produced above raise their alerts, whose runbook links are absolute.
    let wanted = [
        ("RefundAuditLogEntryMissing", "#a-gap-in-the-audit-log"),
        ("RefundsUntrustedHeaders", "#untrusted-headers"),
        ("RefundCertificateExpiring", "#certificates"),
    ];
    let mut active = Vec::new();
    let started = tokio::time::Instant::now();
    while wanted.iter().any(|(name, _)| {
        !active
            .iter()
            .any(|a: &Value| a["labels"]["alertname"] == *name)
    }) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "alerts {wanted:?} are not all active: {active:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let body = prometheus.api("/api/v1/alerts", &[]).await;
        active = body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
    }
    assert!(
        !active
            .iter()
            .any(|a| a["labels"]["alertname"] == "RefundCertificateExpiringSoon"),
        "20 days left is not a page: {active:?}"
    );
    for (name, anchor) in wanted {
        let alert = active
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .unwrap();
        assert_eq!(
            alert["annotations"]["runbook_url"],
            format!("{RUNBOOK_BASE}{anchor}"),
            "{alert}"
        );
    }

    let _ = std::fs::remove_file(&certificate);
    let _ = std::fs::remove_file(&key);
    prometheus.stop().await;
    stop_server.cancel();
    worker.stop().await;
    env.cleanup().await;
}

/// docker-compose.yml as Compose reads it: YAML with its anchors and `<<` merge keys resolved,
/// as JSON for the schema.
fn compose_file() -> (serde_yaml_ng::Value, Value) {
    let mut file: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    file.apply_merge()
        .expect("the compose file's merge keys resolve");
    let json = serde_json::to_value(&file).expect("the compose file converts to JSON");
    (file, json)
}

/// Every violation of the Compose Specification's JSON schema (vendored unmodified in
/// specs/compose/, see specs/NOTICE.md) by `instance`.
fn compose_violations(instance: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(&read("specs/compose/compose-spec.json"))
        .expect("the compose schema is JSON");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&schema)
        .expect("the compose schema compiles");
    validator
        .iter_errors(instance)
        .map(|e| format!("{e} (at {})", e.instance_path()))
        .collect()
}

#[test]
fn the_compose_schema_check_rejects_a_broken_compose_file() {
    // The check below must be able to fail: a typo'd key, a wrong type and an unknown
    // restart policy are each caught.
    let (_, valid) = compose_file();
    assert_eq!(compose_violations(&valid), Vec::<String>::new());
    let mut typo = valid.clone();
    typo["services"]["redis"]["imagee"] = json!("redis:7");
    let mut wrong_type = valid.clone();
    wrong_type["services"]["redis"]["ports"] = json!(6379);
    let mut no_services = valid.clone();
    no_services["services"]["worker"] = json!("not a service");
    for (what, broken) in [
        ("an unknown key", typo),
        ("ports as a number", wrong_type),
        ("a service that is a string", no_services),
    ] {
        assert!(
            !compose_violations(&broken).is_empty(),
            "the schema check accepts {what}"
        );
    }
}

#[test]
fn the_compose_file_is_valid_against_the_compose_specification() {
    let (file, json) = compose_file();
    let violations = compose_violations(&json);
    assert!(
        violations.is_empty(),
        "docker-compose.yml breaks the Compose Specification: {violations:#?}"
    );
    println!("docker-compose.yml: valid against specs/compose/compose-spec.json");
    let services: BTreeSet<&str> = json["services"]
        .as_object()
        .expect("services")
        .keys()
        .map(String::as_str)
        .collect();
    for needed in [
        "rabbitmq",
        "redis",
        "prometheus",
        "grafana",
        "worker",
        "sandbox",
        "loadgen",
    ] {
        assert!(
            services.contains(needed),
            "service {needed} in {services:?}"
        );
    }
    // What `docker compose config` checks beyond the schema: every service a service depends
    // on exists, and every named volume it mounts is declared at the top level.
    let volumes: BTreeSet<&str> = json["volumes"]
        .as_object()
        .map(|v| v.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for (name, service) in json["services"].as_object().unwrap() {
        let depends: Vec<&str> = match &service["depends_on"] {
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            Value::Object(map) => map.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        for dependency in depends {
            assert!(
                services.contains(dependency),
                "{name} depends on {dependency}, which is not a service"
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let Some(source) = volume.as_str().and_then(|v| v.split(':').next()) else {
                continue;
            };
            if !source.starts_with(['.', '/', '~']) {
                assert!(
                    volumes.contains(source),
                    "{name} mounts the named volume {source}, which is not declared"
                );
            }
        }
    }

    // Every bind-mounted file or folder exists, and so does every file the image copies.
    for (name, service) in file["services"].as_mapping().unwrap() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if let Some(path) = source.strip_prefix("./") {
                assert!(
                    repo(path).exists(),
                    "{name:?} mounts {source}, which does not exist"
                );
            }
        }
    }
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for line in read("Dockerfile").lines() {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                repo(source).exists(),
                "Dockerfile copies {source}, which does not exist"
            );
            assert!(
                !ignored
                    .iter()
                    .any(|i| source == i || source.starts_with(&format!("{i}/"))),
                "Dockerfile copies {source}, which .dockerignore leaves out"
            );
        }
    }
    assert!(
        read("config/rabbitmq/enabled_plugins").contains("rabbitmq_prometheus"),
        "the compose RabbitMQ enables its Prometheus plugin"
    );
}
