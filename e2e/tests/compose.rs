//! `compose.yaml` is valid for a compose tool and wires what operators rely on: every service
//! with a health check on `/ready`, started only once the broker and Redis are healthy.

use std::process::Command;

#[test]
fn compose_file_is_valid_and_complete() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose.yaml");
    let output = Command::new("docker-compose")
        .args(["-f", file, "config"])
        .output()
        .expect(
            "docker-compose is installed by scripts/ensure-test-tools.sh (Debian's docker-compose)",
        );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "docker-compose config refused the file:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config: serde_json::Value = yaml_to_json(&text);
    let services = config["services"].as_object().expect("services");
    for name in [
        "rabbitmq",
        "redis",
        "gateway",
        "orders",
        "products",
        "webhook-publisher",
        "notifier",
    ] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for name in [
        "gateway",
        "orders",
        "products",
        "webhook-publisher",
        "notifier",
    ] {
        let service = &services[name];
        let check = service["healthcheck"]["test"].to_string();
        assert!(
            check.contains("/ready"),
            "{name} has no /ready health check: {check}"
        );
        for dependency in ["rabbitmq", "redis"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"], "service_healthy",
                "{name} → {dependency}"
            );
        }
    }
    let broker_volumes = services["rabbitmq"]["volumes"].to_string();
    assert!(
        broker_volumes.contains("definitions.json"),
        "the broker does not load the definitions"
    );
}

/// `docker-compose config` prints YAML; this turns the subset it prints into JSON via Python,
/// which the compose tool itself runs on.
fn yaml_to_json(yaml: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write yaml");
    let out = child.wait_with_output().expect("python3 output");
    serde_json::from_slice(&out.stdout).expect("compose config as JSON")
}
