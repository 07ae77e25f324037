//! `deploy/rabbitmq/definitions.json` holds exactly the topology the services declare.

use std::collections::BTreeSet;

fn entries(value: &serde_json::Value, section: &str) -> BTreeSet<String> {
    value[section]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.to_string())
        .collect()
}

#[test]
fn the_definitions_file_is_the_generated_topology() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/rabbitmq/definitions.json"
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("definitions.json"))
            .expect("valid JSON");
    let generated = messaging::topology::definitions("/");
    for section in ["exchanges", "queues", "bindings"] {
        assert_eq!(
            entries(&file, section),
            entries(&generated, section),
            "{section} differ: regenerate with `cargo run -q -p messaging --example definitions > deploy/rabbitmq/definitions.json`"
        );
    }
    let users = file["users"].as_array().expect("users");
    assert!(
        users.iter().any(|u| u["name"] == "saga"),
        "the compose user is missing"
    );
    assert!(
        file["permissions"]
            .as_array()
            .expect("permissions")
            .iter()
            .any(|p| p["user"] == "saga" && p["vhost"] == "/")
    );
}
