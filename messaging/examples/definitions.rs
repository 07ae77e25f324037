//! Prints `deploy/rabbitmq/definitions.json`: the broker's user for compose and the whole
//! topology, generated from `messaging::topology` so the file cannot drift from the code.
//!
//! `cargo run -q -p messaging --example definitions > deploy/rabbitmq/definitions.json`

/// `saga`/`saga`, hashed the way RabbitMQ does (base64 of salt ++ SHA-256(salt ++ password)),
/// with the fixed salt 5a6b7c8d so the file is reproducible. Change it for anything public.
const SAGA_PASSWORD_HASH: &str = "Wmt8jdrLLlkDomgWeu3n9S60NDhvXpm2eXPUGdwWSBgEazFg";

fn main() {
    let mut definitions = messaging::topology::definitions("/");
    let extra = serde_json::json!({
        "users": [{"name": "saga", "password_hash": SAGA_PASSWORD_HASH, "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]}],
        "vhosts": [{"name": "/"}],
        "permissions": [{"user": "saga", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
        "policies": [],
    });
    if let (Some(all), Some(extra)) = (definitions.as_object_mut(), extra.as_object()) {
        all.extend(extra.clone());
    }
    match serde_json::to_string_pretty(&definitions) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("cannot render definitions: {e}"),
    }
}
