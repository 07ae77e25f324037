//! One trace id from the HTTP request to the webhook: the gateway takes the client's
//! `traceparent`, every message of the saga carries it, and the webhook request sends it on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use e2e::{Options, System};
use serde_json::json;
use testkit::{TestEnv, eventually};

/// An HTTP endpoint that records the `traceparent` of every webhook it receives.
async fn sink() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let record = record.clone();
            async move {
                let traceparent = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                record.lock().unwrap().push(traceparent);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trace_of_a_request_reaches_the_webhook() {
    let env = TestEnv::new("trace").await.unwrap();
    let mut system = System::start(&env, Options::default()).await.unwrap();
    system.start_realtime().await.unwrap();
    let (url, seen) = sink().await;
    let publisher = system.webhook_publisher.as_ref().unwrap().url();
    let subscribed = system
        .http
        .post(format!("{publisher}/subscriptions"))
        .bearer_auth(&system.admin_token)
        .json(&json!({"url": url, "events": ["order.confirmed"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(subscribed.status(), 201);
    let product = system.create_product(3).await.unwrap();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = system
        .post("/orders")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"productId": product, "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let received = eventually(Duration::from_secs(20), || async {
        seen.lock().unwrap().first().cloned()
    })
    .await;
    let traceparent = received.expect("the sink never got the webhook");
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "webhook traceparent {traceparent}"
    );

    system.stop().await;
    env.cleanup().await;
}
