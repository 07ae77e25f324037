//! The monitoring in `deploy/`: the alert rules and scrape config pass `promtool`, the rules'
//! unit tests pass, the compose `monitoring` profile provisions Prometheus and Grafana, and a
//! real Prometheus (Debian's `prometheus`, installed by `scripts/ensure-test-tools.sh`) scrapes
//! every service the harness starts, loads the rule files and finds the metrics they use.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use e2e::{Options, System};
use serde_json::Value;
use testkit::{TestEnv, eventually};

const TOOLS: &str = "is installed by scripts/ensure-test-tools.sh (Debian's prometheus package)";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

/// Runs `promtool args…` and fails the test with its output unless it succeeds.
fn promtool(args: &[&str]) -> Output {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("promtool {TOOLS}: {e}"));
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The files of `deploy/prometheus/<dir>` ending in `.yml`, relative to `deploy/prometheus`.
fn yml_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(deploy("prometheus").join(dir))
        .unwrap_or_else(|e| panic!("deploy/prometheus/{dir}: {e}"))
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yml"))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no .yml files in deploy/prometheus/{dir}"
    );
    files
}

#[test]
fn promtool_accepts_the_rules_and_the_config_and_the_rule_tests_pass() {
    let rules = yml_files("rules");
    let mut args = vec!["check", "rules"];
    args.extend(rules.iter().map(String::as_str));
    promtool(&args);

    promtool(&["check", "config", "prometheus.yml"]);

    let tests = yml_files("tests");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let output = promtool(&args);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("SUCCESS"),
        "promtool test rules did not report SUCCESS"
    );
}

/// The alert names of every rule file, from promtool's own parser's point of view: the YAML.
fn alert_names() -> Vec<String> {
    let mut names = Vec::new();
    for file in yml_files("rules") {
        let text = std::fs::read_to_string(deploy("prometheus").join(&file)).expect("rule file");
        names.extend(text.lines().filter_map(|line| {
            let name = line.trim().strip_prefix("- alert: ")?;
            Some(name.trim().to_owned())
        }));
    }
    names
}

#[test]
fn every_alert_has_unit_tests_that_show_it_firing_and_silent() {
    let tests: String = yml_files("tests")
        .iter()
        .map(|f| std::fs::read_to_string(deploy("prometheus").join(f)).expect("test file"))
        .collect();
    let names = alert_names();
    assert!(names.len() >= 12, "alerts: {names:?}");
    for name in names {
        // Each `alertname:` check is followed by its expectations: an empty list (silent) or
        // a list of alerts (firing).
        let checks: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            .filter(|check| check.lines().next().map(str::trim) == Some(name.as_str()))
            .collect();
        let silent = checks.iter().any(|c| c.contains("exp_alerts: []"));
        let firing = checks
            .iter()
            .any(|c| c.lines().nth(1).is_some_and(|l| l.trim() == "exp_alerts:"));
        assert!(
            silent && firing,
            "{name}: needs a test where it fires ({firing}) and one where it stays silent ({silent})"
        );
    }
}

#[test]
fn the_compose_monitoring_profile_provisions_prometheus_and_grafana() {
    // Read without a container engine; e2e/tests/compose.rs checks the whole file against the
    // compose specification's schema.
    let text = std::fs::read_to_string(repo().join("compose.yaml")).expect("compose.yaml");
    let compose: serde_norway::Value = serde_norway::from_str(&text).expect("compose.yaml is YAML");
    let services = &compose["services"];
    for (service, mounts) in [
        ("prometheus", &["deploy/prometheus"][..]),
        (
            "grafana",
            &["deploy/grafana/provisioning", "deploy/grafana/dashboards"][..],
        ),
    ] {
        let spec = &services[service];
        let profiles = serde_norway::to_string(&spec["profiles"]).expect("profiles");
        assert!(
            profiles.contains("monitoring"),
            "{service} is not in the monitoring profile: {profiles}"
        );
        let volumes = serde_norway::to_string(&spec["volumes"]).expect("volumes");
        for mount in mounts {
            assert!(
                volumes.contains(mount),
                "{service} does not mount {mount}: {volumes}"
            );
        }
    }
    let broker = serde_norway::to_string(&services["rabbitmq"]["volumes"]).expect("volumes");
    assert!(broker.contains("enabled_plugins"), "{broker}");
    let plugins =
        std::fs::read_to_string(deploy("rabbitmq/enabled_plugins")).expect("enabled_plugins");
    assert!(plugins.contains("rabbitmq_prometheus"), "{plugins}");

    // The dashboard uses the provisioned datasource.
    let datasource =
        std::fs::read_to_string(deploy("grafana/provisioning/datasources/prometheus.yml"))
            .expect("datasource provisioning");
    assert!(datasource.contains("uid: prometheus"), "{datasource}");
    for panel in dashboard()["panels"].as_array().expect("panels") {
        assert_eq!(
            panel["datasource"]["uid"], "prometheus",
            "{}",
            panel["title"]
        );
    }
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana/dashboards/saga.json")).expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// A `prometheus` process of this test, killed when dropped (and only it).
struct Prometheus {
    child: std::process::Child,
    url: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, config: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus {TOOLS}: {e}"));
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The answer of the HTTP API at `path` (`status` and `data`), if it answered JSON.
    async fn call(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let url = format!("{}{path}", self.url);
        let response = self.http.get(url).query(query).send().await.ok()?;
        response.json().await.ok()
    }

    /// The `data` of a successful API answer.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let body = self.call(path, query).await?;
        (body["status"] == "success").then(|| body["data"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scrape config of the services `system` runs, with the repository's rule files.
fn scrape_config(system: &System) -> String {
    let targets = [
        ("gateway", &system.gateway),
        ("products", &system.products),
        ("orders", &system.orders),
        ("webhook-publisher", &system.webhook_publisher),
        ("notifier", &system.notifier),
    ];
    let jobs: String = targets
        .iter()
        .map(|(job, running)| {
            let addr = running.as_ref().expect("service started").addr;
            format!("  - job_name: {job}\n    static_configs: [{{ targets: [\"{addr}\"] }}]\n")
        })
        .collect();
    let rules = deploy("prometheus/rules")
        .canonicalize()
        .expect("rules dir");
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {}/*.yml\n\
         scrape_configs:\n{jobs}",
        rules.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_every_service_and_loads_the_rules() {
    let env = TestEnv::new("monitoring").await.unwrap();
    let mut system = System::start(&env, Options::default()).await.unwrap();
    system.start_realtime().await.unwrap();
    // Some traffic, so the metrics the rules use exist.
    let product = system.create_product(5).await.unwrap();
    let order = system.accepted_order(&product, 1).await.unwrap();
    system
        .wait_terminal(std::slice::from_ref(&order), Duration::from_secs(30))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(dir.path(), &scrape_config(&system));

    // Every target up.
    let targets = eventually(Duration::from_secs(60), || async {
        let data = prometheus.api("/api/v1/targets", &[]).await?;
        let active = data["activeTargets"].as_array()?.clone();
        (active.len() == 5 && active.iter().all(|t| t["health"] == "up")).then_some(active)
    })
    .await;
    let targets = targets.unwrap_or_else(|| {
        panic!(
            "not every target is up; prometheus log:\n{}",
            prometheus.log()
        )
    });
    let mut jobs: Vec<&str> = targets
        .iter()
        .filter_map(|t| t["labels"]["job"].as_str())
        .collect();
    jobs.sort();
    assert_eq!(
        jobs,
        [
            "gateway",
            "notifier",
            "orders",
            "products",
            "webhook-publisher"
        ]
    );

    // The rule files loaded and every rule evaluated without error.
    let expected = alert_names();
    let rules = eventually(Duration::from_secs(30), || async {
        let data = prometheus.api("/api/v1/rules", &[]).await?;
        let rules: Vec<Value> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (rules.len() == expected.len() && rules.iter().all(|r| r["health"] == "ok"))
            .then_some(rules)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the rules did not load and evaluate; log:\n{}",
            prometheus.log()
        )
    });
    let mut loaded: Vec<String> = rules
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    let mut expected = expected;
    loaded.sort();
    expected.sort();
    assert_eq!(loaded, expected);

    // The services' metrics that the alerts and the dashboard use are there under those names.
    for query in [
        "outbox_oldest_age_seconds",
        "outbox_pending_rows",
        r#"http_request_duration_seconds{job="gateway", method="POST", route="/orders", quantile="0.99"}"#,
        r#"saga_transitions_total{to="CONFIRMED"}"#,
        r#"webhook_attempts_total{outcome="delivered"}"#,
        "webhooks_received_total",
    ] {
        let found = eventually(Duration::from_secs(30), || async {
            let data = prometheus.api("/api/v1/query", &[("query", query)]).await?;
            (!data["result"].as_array()?.is_empty()).then_some(())
        })
        .await;
        assert!(found.is_some(), "no series for {query}");
    }

    // Every dashboard query is valid PromQL for this Prometheus.
    for panel in dashboard()["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let answer = prometheus
                .call("/api/v1/query", &[("query", expr)])
                .await
                .expect("prometheus answers");
            assert_eq!(
                answer["status"], "success",
                "panel {}: {expr}: {answer}",
                panel["title"]
            );
        }
    }

    drop(prometheus);
    system.stop().await;
    env.cleanup().await;
}
