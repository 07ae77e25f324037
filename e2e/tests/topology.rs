//! What the services declare on a real broker is what `definitions.json` describes.

use std::collections::BTreeSet;

use serde_json::Value;
use testkit::TestEnv;
use testkit::amqp::TestClient;

/// (name, sorted arguments) of each queue, or (source, key, destination) of each binding.
fn queues(defs: &Value) -> BTreeSet<(String, String)> {
    defs["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| {
            (
                q["name"].as_str().unwrap_or("").to_owned(),
                q["arguments"].to_string(),
            )
        })
        .collect()
}

fn bindings(defs: &Value) -> BTreeSet<(String, String, String)> {
    defs["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["source"] != "")
        .map(|b| {
            (
                b["source"].as_str().unwrap_or("").to_owned(),
                b["routing_key"].as_str().unwrap_or("").to_owned(),
                b["destination"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_holds_exactly_the_described_topology() {
    let env = TestEnv::new("topology").await.unwrap();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    messaging::topology::declare(&client.channel).await.unwrap();
    // A broker from before orders_intake_queue: new orders were bound to orders_queue. Declaring
    // again (every service does it on every reconnect) removes that binding and is otherwise
    // harmless.
    for (exchange, key, queue) in messaging::topology::RETIRED_BINDINGS {
        client
            .channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
    }
    messaging::topology::declare(&client.channel).await.unwrap();

    let url = format!(
        "{}/api/definitions/{}",
        testkit::rabbit::management_url(),
        env.vhost
    );
    let exported: Value = reqwest::Client::new()
        .get(url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let described = messaging::topology::definitions(&env.vhost);
    assert_eq!(queues(&exported), queues(&described));
    assert_eq!(bindings(&exported), bindings(&described));
    let exchanges = |d: &Value| -> BTreeSet<String> {
        d["exchanges"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["name"].as_str().unwrap_or(""),
                    e["type"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert_eq!(exchanges(&exported), exchanges(&described));
    env.cleanup().await;
}
