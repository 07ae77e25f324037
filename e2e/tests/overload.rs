//! Overload: the gateway refuses new orders at the door (503 + `Retry-After`) once the saga's
//! backlog reaches `ORDERS_ADMISSION_LIMIT`, across gateway instances, with the intake queue's
//! `x-max-length` as the broker's backstop; refused orders leave nothing behind, every 202 is
//! decided, and stock answers never wait behind a flood of new orders.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use e2e::{Options, System};
use futures::future::join_all;
use lapin::options::BasicPublishOptions;
use messaging::OutgoingMessage;
use messaging::contracts::CreateOrder;
use messaging::topology::{COMMANDS, ORDERS_INTAKE_QUEUE, WEBHOOKS_QUEUE, keys};
use serde_json::{Value, json};
use testkit::amqp::TestClient;
use testkit::{TestEnv, eventually};

/// What one `POST /orders` answered.
struct Answer {
    key: String,
    status: u16,
    retry_after: Option<u64>,
    content_type: String,
    body: Value,
}

impl Answer {
    fn order_id(&self) -> String {
        self.body["orderId"].as_str().unwrap_or_default().to_owned()
    }

    /// A 503 as the issue asks for it: problem+json, `Retry-After`, the overload type.
    fn assert_refused(&self) {
        assert_eq!(self.status, 503, "{}", self.body);
        assert!(
            self.retry_after.is_some_and(|s| s >= 1),
            "503 without Retry-After"
        );
        assert_eq!(self.content_type, "application/problem+json");
        assert_eq!(self.body["type"], "/problems/overloaded", "{}", self.body);
    }
}

async fn post(system: &System, base: &str, product: &str, quantity: i64, key: &str) -> Answer {
    let response = system
        .http
        .post(format!("{base}/orders"))
        .bearer_auth(&system.client_token)
        .header("Idempotency-Key", key)
        .json(&json!({ "productId": product, "quantity": quantity }))
        .send()
        .await
        .expect("the gateway answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    let content_type = header("content-type").unwrap_or_default();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        key: key.to_owned(),
        status,
        retry_after,
        content_type,
        body,
    }
}

/// `n` orders of one unit each at once, each with its own Idempotency-Key `<tag>-<i>`.
async fn burst(system: &System, base: &str, product: &str, tag: &str, n: usize) -> Vec<Answer> {
    join_all((0..n).map(|i| {
        let key = format!("{tag}-{i}");
        async move { post(system, base, product, 1, &key).await }
    }))
    .await
}

fn split(answers: Vec<Answer>) -> (Vec<Answer>, Vec<Answer>) {
    let (accepted, refused): (Vec<_>, Vec<_>) = answers.into_iter().partition(|a| a.status == 202);
    for r in &refused {
        r.assert_refused();
    }
    (accepted, refused)
}

/// Rows of orders.db: id → status.
async fn rows(system: &System) -> HashMap<String, String> {
    let db = system.orders_db().await.unwrap();
    db.call(|conn| {
        let mut stmt = conn.prepare("SELECT id, status FROM orders")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<HashMap<String, String>, _>>()
    })
    .await
    .unwrap()
}

/// The value of one sample line of the gateway's `/metrics`.
async fn metric(system: &System, base: &str, series: &str) -> Option<f64> {
    let text = system
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Retries each order with its own key until accepted, as a client honouring `Retry-After`
/// would (only sooner); returns the order ids.
async fn retry_until_accepted(
    system: &System,
    base: &str,
    product: &str,
    quantity: i64,
    keys: &[String],
) -> Vec<String> {
    let mut ids = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(60);
    for key in keys {
        loop {
            let answer = post(system, base, product, quantity, key).await;
            if answer.status == 202 {
                ids.push(answer.order_id());
                break;
            }
            answer.assert_refused();
            assert!(Instant::now() < give_up, "{key} still refused after 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    ids
}

/// Products and a gateway admitting at most `limit` (0 = off), the orders service not started
/// yet, so the saga's backlog only grows until a test starts it.
async fn without_orders(env: &TestEnv, limit: u64) -> System {
    let options = Options {
        admission_limit: limit,
        ..Options::default()
    };
    let mut system = System::empty(env, options);
    system.start_products().await.unwrap();
    system.start_gateway().await.unwrap();
    system
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_above_the_bound_is_refused_at_the_door_and_nothing_is_lost() {
    let env = TestEnv::new("overload-burst").await.unwrap();
    let limit = 10;
    let mut system = without_orders(&env, limit).await;
    let product = system.create_product(10_000).await.unwrap();
    let gateway = system.url("");

    // The saga is not consuming yet, so the backlog only grows: of 120 orders at once, at most
    // the bound get in and the rest are refused.
    let (accepted, refused) = split(burst(&system, &gateway, &product, "burst", 120).await);
    assert!(
        !accepted.is_empty() && accepted.len() as u64 <= limit,
        "{} accepted with a bound of {limit}",
        accepted.len()
    );
    assert_eq!(accepted.len() + refused.len(), 120);
    let refused_total = metric(
        &system,
        &gateway,
        "gateway_orders_refused_total{reason=\"backlog\"}",
    )
    .await
    .unwrap_or(0.0);
    assert!(refused_total >= refused.len() as f64, "{refused_total}");
    // (Its value is shared by every gateway of this test process, so only its presence.)
    assert!(
        metric(&system, &gateway, "gateway_admission_open")
            .await
            .is_some()
    );

    // Every 202 is decided, and the refused ones left nothing behind: no row, no message.
    system.start_orders().await.unwrap();
    let ids: Vec<String> = accepted.iter().map(Answer::order_id).collect();
    let statuses = system
        .wait_terminal(&ids, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(statuses.values().all(|s| s == "CONFIRMED"), "{statuses:?}");
    assert_eq!(rows(&system).await.len(), accepted.len());
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    assert_eq!(client.ready_count(ORDERS_INTAKE_QUEUE).await.unwrap(), 0);

    // Nor an Idempotency-Key reservation: the first refused key may even name another body
    // (a reserved key would answer 422).
    let mut later = retry_until_accepted(
        &system,
        &gateway,
        &product,
        2,
        std::slice::from_ref(&refused[0].key),
    )
    .await;
    // The others, retried with their keys, all get in and are decided once.
    let retried: Vec<String> = refused[1..].iter().map(|a| a.key.clone()).collect();
    later.extend(retry_until_accepted(&system, &gateway, &product, 1, &retried).await);
    let statuses = system
        .wait_terminal(&later, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(statuses.values().all(|s| s == "CONFIRMED"), "{statuses:?}");
    assert_eq!(rows(&system).await.len(), 120);
    let units = accepted.len() as i64 + 2 + (refused.len() as i64 - 1);
    assert_eq!(system.stock(&product).await.unwrap(), 10_000 - units);

    system.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_answers_keep_flowing_while_new_orders_are_refused() {
    let env = TestEnv::new("overload-answers").await.unwrap();
    let mut system = without_orders(&env, 50).await;
    let product = system.create_product(100_000).await.unwrap();
    let client = TestClient::connect(&env.amqp_url).await.unwrap();

    // The order placed just before the flood, then 2,000 new orders behind it in the intake
    // queue (published straight to the broker, as a burst of earlier admissions would be).
    let first = system.accepted_order(&product, 1).await.unwrap();
    let backlog = 2_000;
    let mut confirms = Vec::new();
    for i in 0..backlog {
        let id = format!("flood-{i}");
        let create = CreateOrder {
            order_id: id.clone(),
            product_id: product.clone(),
            quantity: 1,
            customer_id: None,
            idempotency_key: None,
            seller_id: None,
        };
        let msg = OutgoingMessage::json(COMMANDS, keys::ORDERS_CREATE, Some(&id), &create).unwrap();
        let confirm = client
            .channel
            .basic_publish(
                COMMANDS.into(),
                keys::ORDERS_CREATE.into(),
                BasicPublishOptions::default(),
                &msg.body,
                msg.properties("test"),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }

    // Now the saga runs while clients keep trying to place orders.
    system.start_orders().await.unwrap();
    let gateway = system.url("");
    let db = system.orders_db().await.unwrap();
    let mut refused = 0;
    let mut admitted = Vec::new();
    let mut round = 0;
    let decided_with_backlog = loop {
        round += 1;
        let (accepted, no) =
            split(burst(&system, &gateway, &product, &format!("r{round}"), 8).await);
        refused += no.len();
        admitted.extend(accepted.iter().map(Answer::order_id));
        let id = first.clone();
        let status: Option<String> = db
            .call(move |c| {
                c.query_row("SELECT status FROM orders WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
            })
            .await
            .ok();
        if status.as_deref().is_some_and(|s| s != "PENDING") {
            break client.ready_count(ORDERS_INTAKE_QUEUE).await.unwrap();
        }
        assert!(round < 600, "the first order was never decided");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(refused > 0);
    assert!(
        decided_with_backlog > 0,
        "the first order's stock answer waited until every new order was taken in"
    );

    // The flood drains and every order in it is decided, none cancelled by its deadline.
    let mut ids: Vec<String> = (0..backlog).map(|i| format!("flood-{i}")).collect();
    ids.push(first);
    ids.extend(admitted);
    let statuses = system
        .wait_terminal(&ids, Duration::from_secs(90))
        .await
        .unwrap();
    assert!(statuses.values().all(|s| s == "CONFIRMED"), "{statuses:?}");
    // Admitting again once it drained.
    let after = retry_until_accepted(&system, &gateway, &product, 1, &["after".into()]).await;
    system
        .wait_terminal(&after, Duration::from_secs(30))
        .await
        .unwrap();

    system.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bound_holds_across_two_gateway_instances() {
    let env = TestEnv::new("overload-two").await.unwrap();
    let limit = 20;
    let mut system = without_orders(&env, limit).await;
    let second = system.spawn_gateway().await.unwrap();
    let product = system.create_product(10_000).await.unwrap();
    let (one, two) = (system.url(""), second.url());

    // Nothing consumes: what one instance admitted fills the bound for the other too.
    let (first_in, first_out) = split(burst(&system, &one, &product, "one", 60).await);
    assert!(
        !first_in.is_empty() && first_in.len() as u64 <= limit,
        "{}",
        first_in.len()
    );
    assert!(!first_out.is_empty());
    let client = TestClient::connect(&env.amqp_url).await.unwrap();
    let queued = eventually(Duration::from_secs(10), || async {
        (client.ready_count(ORDERS_INTAKE_QUEUE).await.ok()? as usize == first_in.len())
            .then_some(())
    })
    .await;
    assert!(queued.is_some());
    // Two poll intervals: the second instance has read the backlog by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids: Vec<String> = first_in.iter().map(Answer::order_id).collect();
    // A burst may stop short of the bound: near it, orders are refused early and at random (a
    // slow machine, or an unlucky draw). The second instance then takes some of the rest, never
    // more; a few bursts fill the bound (each place left is taken with high probability).
    for round in 0..10 {
        if ids.len() as u64 >= limit {
            break;
        }
        let (more, _) = split(burst(&system, &two, &product, &format!("two-{round}"), 60).await);
        ids.extend(more.iter().map(Answer::order_id));
        assert!(
            ids.len() as u64 <= limit,
            "the second gateway admitted past the bound: {} of {limit}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(ids.len() as u64, limit);
    let (late, refused) = split(burst(&system, &two, &product, "two-late", 60).await);
    assert!(
        late.is_empty(),
        "the second gateway admitted past the bound"
    );
    assert_eq!(refused.len(), 60);
    assert_eq!(
        client.ready_count(ORDERS_INTAKE_QUEUE).await.unwrap() as usize,
        ids.len()
    );

    // Once the saga drains the backlog, both admit again, and everything admitted is decided.
    system.start_orders().await.unwrap();
    ids.extend(retry_until_accepted(&system, &one, &product, 1, &["again-one".into()]).await);
    ids.extend(retry_until_accepted(&system, &two, &product, 1, &["again-two".into()]).await);
    let statuses = system
        .wait_terminal(&ids, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(statuses.values().all(|s| s == "CONFIRMED"), "{statuses:?}");
    assert_eq!(rows(&system).await.len(), ids.len());

    second.stop().await;
    system.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_intake_queue_is_a_nack_and_a_503() {
    let env = TestEnv::new("overload-broker").await.unwrap();
    // Admission control off: only the broker's own limit stands.
    let mut system = without_orders(&env, 0).await;
    let product = system.create_product(100).await.unwrap();
    let gateway = system.url("");

    // An operator lowers the intake queue's length limit with a policy (docs/operations.md).
    let mgmt = testkit::rabbit::management_url();
    let http = reqwest::Client::new();
    let policy = json!({
        "pattern": format!("^{ORDERS_INTAKE_QUEUE}$"),
        "definition": {"max-length": 5},
        "apply-to": "queues",
    });
    http.put(format!("{mgmt}/api/policies/{}/intake-limit", env.vhost))
        .basic_auth("guest", Some("guest"))
        .json(&policy)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let applied = eventually(Duration::from_secs(20), || async {
        let queue: Value = http
            .get(format!(
                "{mgmt}/api/queues/{}/{ORDERS_INTAKE_QUEUE}",
                env.vhost
            ))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (queue["effective_policy_definition"]["max-length"] == 5).then_some(())
    })
    .await;
    assert!(applied.is_some(), "the policy was not applied");

    // Orders go in until the queue is full; then the broker nacks and the client gets a 503.
    let mut accepted = Vec::new();
    let refused = loop {
        let answer = post(
            &system,
            &gateway,
            &product,
            1,
            &format!("full-{}", accepted.len()),
        )
        .await;
        if answer.status != 202 {
            break answer;
        }
        accepted.push(answer.order_id());
        assert!(accepted.len() <= 10, "the broker never refused");
    };
    refused.assert_refused();
    assert!(accepted.len() >= 5, "refused after {}", accepted.len());
    let counted = metric(
        &system,
        &gateway,
        "gateway_orders_refused_total{reason=\"broker_full\"}",
    )
    .await
    .unwrap_or(0.0);
    assert!(counted >= 1.0, "{counted}");

    // Once the saga drains the queue, the refused order's key is free, even for another body.
    system.start_orders().await.unwrap();
    accepted.extend(
        retry_until_accepted(
            &system,
            &gateway,
            &product,
            3,
            std::slice::from_ref(&refused.key),
        )
        .await,
    );
    let statuses = system
        .wait_terminal(&accepted, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(statuses.values().all(|s| s == "CONFIRMED"), "{statuses:?}");
    assert_eq!(rows(&system).await.len(), accepted.len());

    system.stop().await;
    env.cleanup().await;
}

/// The webhooks of decided orders are a backlog too: with the webhook publisher not running,
/// `webhooks_queue` fills with the orders' events, and past `ORDERS_ADMISSION_WEBHOOK_LIMIT`
/// new orders are refused (reason `webhook_backlog`) although the saga itself is idle. The
/// refused order leaves nothing behind, and once the publisher runs and the queue drains it gets
/// in with its key and is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_are_refused_while_the_webhooks_of_earlier_ones_pile_up() {
    let env = TestEnv::new("overload-webhooks").await.unwrap();
    // Three events per order (created, stock changed, confirmed): two orders pass the bound.
    let webhook_limit = 6;
    let options = Options {
        webhook_admission_limit: webhook_limit,
        ..Options::default()
    };
    let mut system = System::empty(&env, options);
    system.start_products().await.unwrap();
    system.start_orders().await.unwrap();
    system.start_gateway().await.unwrap();
    let product = system.create_product(1_000).await.unwrap();
    let gateway = system.url("");
    let client = TestClient::connect(&env.amqp_url).await.unwrap();

    // One order at a time, each decided and its events seen by a poll before the next.
    let mut accepted = Vec::new();
    let refused = loop {
        assert!(
            accepted.len() < 10,
            "no refusal after {} orders",
            accepted.len()
        );
        let answer = post(
            &system,
            &gateway,
            &product,
            1,
            &format!("hooks-{}", accepted.len()),
        )
        .await;
        if answer.status != 202 {
            answer.assert_refused();
            break answer;
        }
        let id = answer.order_id();
        system
            .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(30))
            .await
            .unwrap();
        accepted.push(id);
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let waiting = client.ready_count(WEBHOOKS_QUEUE).await.unwrap();
    assert!(
        u64::from(waiting) > webhook_limit / 2,
        "refused with only {waiting} events waiting"
    );
    assert!(
        metric(
            &system,
            &gateway,
            "gateway_orders_refused_total{reason=\"webhook_backlog\"}"
        )
        .await
        .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(
        rows(&system).await.len(),
        accepted.len(),
        "the refused order left a row"
    );

    // The publisher (and its notifier) start and drain the queue: the refused key gets in.
    system.start_realtime().await.unwrap();
    let later = retry_until_accepted(
        &system,
        &gateway,
        &product,
        1,
        std::slice::from_ref(&refused.key),
    )
    .await;
    let statuses = system
        .wait_terminal(&later, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(statuses.values().all(|s| s == "CONFIRMED"), "{statuses:?}");
    assert_eq!(rows(&system).await.len(), accepted.len() + 1);

    system.stop().await;
    env.cleanup().await;
}
