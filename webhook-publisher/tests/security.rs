//! The publisher safe by default, on the real broker and real HTTP(S) endpoints: the ADMIN guard
//! of its API, secrets shown only when asked for, no delivery to forbidden addresses (at
//! registration and at delivery), TLS with a private CA, bounded history, and a corrupt event
//! filter that fails loudly.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use jwt_auth::Role;
use messaging::topology::keys;
use serde_json::{Value, json};
use testkit::TestEnv;
use testkit::amqp::TestClient;

on_both_backends!(
    a_secret_is_shown_at_creation_and_on_request_only,
    a_delivery_is_refused_when_its_address_became_forbidden,
    finished_history_is_deleted_after_the_retention_and_pending_is_kept,
    a_corrupt_event_filter_fails_loudly,
);

/// A problem+json answer with `status`.
async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_api_needs_an_admin_token_and_health_does_not() {
    let env = TestEnv::new("wh-guard").await.unwrap();
    let endpoint = Endpoint::start(vec![], Answer::Status(200)).await;
    let publisher = start(config(&env, &endpoint.url(), "50")).await;
    let base = publisher.url();
    let anonymous = reqwest::Client::new();
    let routes = [
        ("GET", "/subscriptions"),
        ("POST", "/subscriptions"),
        ("GET", "/subscriptions/x"),
        ("GET", "/subscriptions/x/secret"),
        ("DELETE", "/subscriptions/x"),
        ("GET", "/deliveries"),
        ("GET", "/deliveries/x"),
        ("POST", "/deliveries/x/replay"),
    ];
    let request = |client: &reqwest::Client, method: &str, path: &str| {
        client.request(method.parse().unwrap(), format!("{base}{path}"))
    };

    let foreign = jwt_auth::issue_for(
        b"another-secret-entirely",
        "admin",
        Role::Admin,
        None,
        Duration::from_secs(600),
    )
    .unwrap();
    let expired = jwt_auth::issue(
        JWT_SECRET.as_bytes(),
        &jwt_auth::Claims {
            sub: "admin".into(),
            role: Role::Admin,
            seller_id: None,
            exp: 1_000,
        },
    )
    .unwrap();
    for (method, path) in routes {
        let none = request(&anonymous, method, path).send().await.unwrap();
        assert_eq!(
            none.headers()["www-authenticate"],
            "Bearer",
            "{method} {path}"
        );
        let problem = assert_problem(none, 401).await;
        assert!(problem["detail"].as_str().unwrap().contains("no token"));
        for bad in [foreign.as_str(), expired.as_str(), "not.a.jwt"] {
            let refused = request(&anonymous, method, path)
                .bearer_auth(bad)
                .send()
                .await
                .unwrap();
            assert_problem(refused, 401).await;
        }
        for role in [Role::Seller, Role::Client] {
            let refused = request(&client_as(role), method, path)
                .send()
                .await
                .unwrap();
            let problem = assert_problem(refused, 403).await;
            assert!(
                problem["detail"].as_str().unwrap().contains("ADMIN"),
                "{problem}"
            );
        }
    }
    // With an ADMIN token the same routes answer as usual.
    let admin = api();
    for (path, status) in [
        ("/subscriptions", 200),
        ("/deliveries", 200),
        ("/subscriptions/x", 404),
    ] {
        let answer = request(&admin, "GET", path).send().await.unwrap();
        assert_eq!(answer.status(), status, "{path}");
    }
    // Health, readiness and metrics stay open for probes and Prometheus.
    for path in ["/health", "/ready", "/metrics"] {
        let open = anonymous.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(open.status(), 200, "{path}");
    }

    publisher.stop().await;
    env.cleanup().await;
}

async fn a_secret_is_shown_at_creation_and_on_request_only(kind: Kind) {
    let env = TestEnv::new("wh-secret").await.unwrap();
    let store = TestStore::new(kind, "wh-secret").await;
    let endpoint = Endpoint::start(vec![], Answer::Status(200)).await;
    let publisher = start(store.apply(config(&env, &endpoint.url(), "50"))).await;
    let base = publisher.url();
    let admin = api();

    let response = admin
        .post(format!("{base}/subscriptions"))
        .json(&json!({"url": endpoint.url(), "events": ["order.*"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));

    let list = get_json(&format!("{base}/subscriptions")).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("secret").is_none()),
        "the list shows a secret: {list}"
    );
    let one = get_json(&format!("{base}/subscriptions/{id}")).await;
    assert_eq!(one["id"], id);
    assert!(
        one.get("secret").is_none(),
        "reading shows the secret: {one}"
    );
    assert!(!one.to_string().contains(secret));

    let revealed = admin
        .get(format!("{base}/subscriptions/{id}/secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(revealed.status(), 200);
    assert_eq!(revealed.headers()["cache-control"], "no-store");
    let revealed: Value = revealed.json().await.unwrap();
    assert_eq!(revealed, json!({"id": id, "secret": secret}));
    let unknown = admin
        .get(format!("{base}/subscriptions/nope/secret"))
        .send()
        .await
        .unwrap();
    assert_problem(unknown, 404).await;

    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn every_forbidden_address_class_is_refused_at_registration() {
    let env = TestEnv::new("wh-ssrf").await.unwrap();
    let endpoint = Endpoint::start(vec![], Answer::Status(200)).await;
    let mut cfg = config(&env, &endpoint.url(), "50");
    cfg.allowed_networks = Vec::new();
    let publisher = start(cfg).await;
    let base = publisher.url();
    let admin = api();

    for (url, class) in [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://[::1]:9/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://10.0.0.1/hook", "private"),
        ("http://172.16.5.4/hook", "private"),
        ("http://192.168.0.1/hook", "private"),
        ("http://[fd00::1]/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://0.0.0.0:9/hook", "unspecified"),
        ("http://[::]:9/hook", "unspecified"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://[ff02::1]/hook", "multicast"),
        ("http://100.64.0.1/hook", "carrier-grade NAT"),
        ("http://[::ffff:127.0.0.1]:9/hook", "loopback"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://2130706433:9/hook", "loopback"),
    ] {
        let refused = admin
            .post(format!("{base}/subscriptions"))
            .json(&json!({"url": url, "events": ["order.*"]}))
            .send()
            .await
            .unwrap();
        let problem = assert_problem(refused, 422).await;
        let errors = problem["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{url}: {problem}");
        assert_eq!(errors[0]["field"], "url", "{url}");
        let message = errors[0]["message"].as_str().unwrap();
        assert!(message.contains(class), "{url}: {message}");
    }
    // The operator's own NOTIFIER_URL is trusted, wherever it points.
    let trusted = admin
        .post(format!("{base}/subscriptions"))
        .json(&json!({"url": endpoint.url(), "events": ["order.created"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(trusted.status(), 201);
    let list = get_json(&format!("{base}/subscriptions")).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "default + the trusted one"
    );

    publisher.stop().await;
    env.cleanup().await;
}

/// The detail (with attempts) of the delivery of `order_id` to `subscription_id`, once it has
/// `status`.
async fn wait_delivery(base: &str, subscription_id: &str, order_id: &str, status: &str) -> Value {
    let found = testkit::eventually(LONG, || async {
        let list = deliveries(base, &format!("subscription={subscription_id}")).await;
        let delivery = list.into_iter().find(|d| d["orderId"] == order_id)?;
        (delivery["status"] == status).then_some(delivery)
    })
    .await
    .unwrap_or_else(|| {
        panic!("the delivery of {order_id} to {subscription_id} never became {status}")
    });
    get_json(&format!(
        "{base}/deliveries/{}",
        found["id"].as_str().unwrap()
    ))
    .await
}

async fn failed_attempts(base: &str, subscription_id: &str, order_id: &str) -> Vec<Value> {
    let detail = wait_delivery(base, subscription_id, order_id, "failed").await;
    detail["attempts"].as_array().unwrap().clone()
}

/// The id of the subscription to `url`.
async fn subscription_of(base: &str, url: &str) -> String {
    let list = get_json(&format!("{base}/subscriptions")).await;
    let found = list.as_array().unwrap().iter().find(|s| s["url"] == url);
    found.expect("no such subscription")["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn a_delivery_is_refused_when_its_address_became_forbidden(kind: Kind) {
    let env = TestEnv::new("wh-ssrf-late").await.unwrap();
    let store = TestStore::new(kind, "wh-ssrf-late").await;
    let notifier = Endpoint::start(vec![], Answer::Status(200)).await;
    let target = Endpoint::start(vec![], Answer::Status(200)).await;
    // Registered while loopback was allowed ...
    let mut cfg = store.apply(config(&env, &notifier.url(), "50"));
    cfg.allowed_networks =
        webhook_publisher::egress::parse_allowed_networks("127.0.0.0/8,::1/128").unwrap();
    let publisher = start(cfg.clone()).await;
    let base = publisher.url();
    let by_name = format!("http://localhost:{}/hook", target.addr.port());
    let named = subscribe(&base, &by_name, &["order.*"]).await;
    let literal = subscribe(&base, &target.url(), &["order.*"]).await;
    publisher.stop().await;

    // ... and sent after it no longer is: `localhost` resolves to loopback only.
    cfg.allowed_networks = Vec::new();
    let publisher = start(cfg).await;
    let base = publisher.url();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    publish(&client, keys::ORDER_CREATED, "order-ssrf").await;

    let attempts = failed_attempts(&base, named["id"].as_str().unwrap(), "order-ssrf").await;
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        let error = attempt["error"].as_str().unwrap();
        assert!(
            error.starts_with("forbidden address: localhost resolves only to refused addresses")
                && error.contains("loopback"),
            "{error}"
        );
        assert!(attempt["statusCode"].is_null());
    }
    let attempts = failed_attempts(&base, literal["id"].as_str().unwrap(), "order-ssrf").await;
    let error = attempts[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("forbidden address: 127.0.0.1 is a loopback address"),
        "{error}"
    );
    assert!(
        target.received().is_empty(),
        "a forbidden address was sent to"
    );
    // The operator's NOTIFIER_URL is trusted and still delivered to.
    let default = subscription_of(&base, &notifier.url()).await;
    wait_delivery(&base, &default, "order-ssrf", "delivered").await;
    assert_eq!(notifier.received().len(), 1);

    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn https_deliveries_trust_the_ca_file_and_record_certificate_errors() {
    let env = TestEnv::new("wh-tls").await.unwrap();
    let ca = TestCa::new();
    let notifier = Endpoint::start(vec![], Answer::Status(200)).await;
    let secure = Endpoint::start_tls(vec![], Answer::Status(200), ca.server.clone()).await;
    assert!(secure.url().starts_with("https://127.0.0.1:"));

    // With the test CA in WEBHOOK_CA_FILE the endpoint's certificate is accepted.
    let mut cfg = config(&env, &notifier.url(), "50");
    cfg.extra_roots = ca.roots(&env);
    let publisher = start(cfg.clone()).await;
    let base = publisher.url();
    let sub = subscribe(&base, &secure.url(), &["order.*"]).await;
    let sub_id = sub["id"].as_str().unwrap();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    publish(&client, keys::ORDER_CONFIRMED, "order-tls").await;
    let detail = wait_delivery(&base, sub_id, "order-tls", "delivered").await;
    assert_eq!(detail["attempts"][0]["statusCode"], 200);
    let received = secure.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].signed_with(sub["secret"].as_str().unwrap()));
    publisher.stop().await;

    // Without it, the same certificate is refused and the attempt says why.
    cfg.extra_roots = Default::default();
    let publisher = start(cfg).await;
    let base = publisher.url();
    publish(&client, keys::ORDER_CONFIRMED, "order-tls-2").await;
    let attempts = failed_attempts(&base, sub_id, "order-tls-2").await;
    assert_eq!(attempts.len(), 2);
    for attempt in attempts {
        let error = attempt["error"].as_str().unwrap();
        assert!(
            error.starts_with("the TLS handshake with the endpoint failed")
                && error.contains("certificate"),
            "{error}"
        );
    }
    assert_eq!(
        secure.received().len(),
        1,
        "no request after a refused certificate"
    );

    publisher.stop().await;
    env.cleanup().await;
}

async fn finished_history_is_deleted_after_the_retention_and_pending_is_kept(kind: Kind) {
    let env = TestEnv::new("wh-retention").await.unwrap();
    let store = TestStore::new(kind, "wh-retention").await;
    let ok = Endpoint::start(vec![], Answer::Status(200)).await;
    let broken = Endpoint::start(vec![], Answer::Status(500)).await;
    let hanging = Endpoint::start(vec![], Answer::Hang).await;
    // 50 ms before the only retry: the broken endpoint's delivery fails quickly.
    let mut cfg = store.apply(config(&env, &ok.url(), "50"));
    let retention = Duration::from_secs(2);
    cfg.history_retention = retention;
    cfg.prune_every = Duration::from_millis(100);
    // Longer than the test: the hanging endpoint's delivery stays pending throughout.
    cfg.timeout = Duration::from_secs(60);
    let publisher = start(cfg.clone()).await;
    let base = publisher.url();
    subscribe(&base, &broken.url(), &["order.*"]).await;
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    publish(&client, keys::ORDER_CREATED, "order-old").await;
    let finished = testkit::eventually(LONG, || async {
        let list = deliveries(&base, "").await;
        let done = list.iter().filter(|d| d["status"] != "pending").count();
        (list.len() == 2 && done == 2).then_some(list)
    })
    .await
    .expect("both deliveries should finish");
    assert_eq!(store.count(&cfg, "SELECT COUNT(*) FROM attempts").await, 3);

    // A subscription whose endpoint never answers: its delivery stays pending.
    let waiting = subscribe(&base, &hanging.url(), &["order.*"]).await;
    publish(&client, keys::ORDER_CREATED, "order-pending").await;
    testkit::eventually(LONG, || async {
        let list = deliveries(&base, "").await;
        let old_left = list.iter().any(|d| d["orderId"] == "order-old");
        (!old_left).then_some(())
    })
    .await
    .expect("the finished deliveries were never deleted");
    for delivery in &finished {
        let id = delivery["id"].as_str().unwrap();
        let detail = api()
            .get(format!("{base}/deliveries/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(detail.status(), 404);
    }
    // Well past the retention of the second event's deliveries: its finished ones are gone
    // with their attempts, its pending one (older than the retention too) is kept.
    tokio::time::sleep(retention + Duration::from_millis(1500)).await;
    let left = deliveries(&base, "").await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["status"], "pending");
    assert_eq!(left[0]["subscriptionId"], waiting["id"]);
    assert_eq!(left[0]["orderId"], "order-pending");
    assert_eq!(hanging.received().len(), 1);
    assert_eq!(
        store.count(&cfg, "SELECT COUNT(*) FROM attempts").await,
        0,
        "attempts of deleted deliveries are left"
    );

    hanging.release();
    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}

async fn a_corrupt_event_filter_fails_loudly(kind: Kind) {
    let env = TestEnv::new("wh-filter").await.unwrap();
    let store = TestStore::new(kind, "wh-filter").await;
    let endpoint = Endpoint::start(vec![], Answer::Status(200)).await;
    let other = Endpoint::start(vec![], Answer::Status(200)).await;
    let cfg = store.apply(config(&env, &endpoint.url(), "50"));
    let publisher = start(cfg.clone()).await;
    let base = publisher.url();
    let sub = subscribe(&base, &other.url(), &["order.created"]).await;
    let id = sub["id"].as_str().unwrap();
    // Written by hand (or by a bug): not a JSON list.
    store
        .execute(
            &cfg,
            "UPDATE subscriptions SET events = 'order.created' WHERE id = $1",
            id,
        )
        .await;

    let shown = get_json(&format!("{base}/subscriptions/{id}")).await;
    let reason = shown["filterError"].as_str().expect("no filterError shown");
    assert!(reason.contains("not a JSON list"), "{reason}");
    assert_eq!(shown["events"], json!([]));

    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    publish(&client, keys::ORDER_CREATED, "order-corrupt").await;
    let failed = testkit::eventually(LONG, || async {
        let list = deliveries(&base, &format!("subscription={id}")).await;
        list.into_iter().find(|d| d["orderId"] == "order-corrupt")
    })
    .await
    .expect("no delivery recorded for the subscription with a corrupt filter");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["attemptCount"], 0);
    let error = failed["lastError"].as_str().unwrap();
    assert!(
        error.starts_with(
            "not sent: the subscription's event filter is corrupt (the stored event filter"
        ) && error.contains("replay"),
        "{error}"
    );
    assert!(other.received().is_empty());
    // The healthy default subscription is not held up.
    let default = subscription_of(&base, &endpoint.url()).await;
    wait_delivery(&base, &default, "order-corrupt", "delivered").await;
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("webhook_filter_errors_total") && l.contains(id)),
        "no webhook_filter_errors_total for {id}"
    );

    publisher.stop().await;
    store.finish(&env).await;
    env.cleanup().await;
}
