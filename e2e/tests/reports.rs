//! Sales reports through the gateway, answered by orders from orders.db: exact figures after a
//! known set of orders (confirmed, rejected, cancelled by the deadline; two sellers, two
//! prices), what each role may see, period filtering and bad periods.

use std::time::Duration;

use e2e::system::token;
use e2e::{Options, System};
use jwt_auth::Role;
use reqwest::Method;
use serde_json::{Value, json};
use testkit::TestEnv;

/// `POST /products` as ADMIN; returns the product id.
async fn product(system: &System, name: &str, price: f64, stock: i64, seller: &str) -> String {
    let body = json!({"name": name, "price": price, "stock": stock, "sellerId": seller});
    let response = system
        .request(Method::POST, "/products", &system.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let made: Value = response.json().await.unwrap();
    made["id"].as_str().unwrap().to_owned()
}

/// `GET path` with `token`: status and JSON body.
async fn get(system: &System, path: &str, token: &str) -> (u16, Value, String) {
    let response = system
        .request(Method::GET, path, token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, response.json().await.unwrap(), content_type)
}

fn counts(pending: i64, confirmed: i64, rejected: i64, cancelled: i64) -> Value {
    json!({"PENDING": pending, "CONFIRMED": confirmed, "REJECTED": rejected, "CANCELLED": cancelled})
}

/// Now, in the form the reports echo (UTC, milliseconds).
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_sum_the_sagas_outcomes_per_role_and_period() {
    let env = TestEnv::new("reports").await.unwrap();
    let mut system = System::start(&env, Options::default()).await.unwrap();
    // Two sellers, two prices: 0.10 would drift as a float sum (0.1 × 3 ≠ 0.3).
    let apple = product(&system, "apple", 0.10, 100, "seller-1").await;
    let brush = product(&system, "brush", 19.99, 3, "seller-2").await;

    // First batch: 2 apples and 2 brushes confirmed.
    let first = vec![
        system.accepted_order(&apple, 2).await.unwrap(),
        system.accepted_order(&brush, 2).await.unwrap(),
    ];
    let statuses = system
        .wait_terminal(&first, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(statuses.values().all(|s| s == "CONFIRMED"), "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = now_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Second batch: 1 apple confirmed, 5 brushes rejected (1 left), 1 apple cancelled because
    // products is down past the deadline.
    let more = vec![
        system.accepted_order(&apple, 1).await.unwrap(),
        system.accepted_order(&brush, 5).await.unwrap(),
    ];
    let statuses = system
        .wait_terminal(&more, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(statuses[&more[0]], "CONFIRMED");
    assert_eq!(statuses[&more[1]], "REJECTED");
    system.stop_products().await;
    system
        .restart_orders(Duration::from_millis(800))
        .await
        .unwrap();
    let late = system.accepted_order(&apple, 1).await.unwrap();
    let statuses = system
        .wait_terminal(std::slice::from_ref(&late), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(statuses[&late], "CANCELLED");
    // The gateway named the seller at creation, so even an order products never saw has one.
    let cancelled = system.order(&late).await.unwrap().unwrap();
    assert_eq!(cancelled["sellerId"], "seller-1", "{cancelled}");

    // ADMIN: everything.
    let admin = system.admin_token.clone();
    let (status, all, _) = get(&system, "/reports/summary", &admin).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["from"], Value::Null);
    assert_eq!(all["to"], Value::Null);
    assert_eq!(all["orders"], counts(0, 3, 1, 1));
    assert_eq!(all["unitsConfirmed"], 5);
    assert_eq!(all["revenueConfirmed"].to_string(), "40.28"); // 3 × 0.10 + 2 × 19.99
    assert_eq!(
        all["topProducts"],
        json!([
            {"productId": brush, "name": "brush", "unitsConfirmed": 2, "revenueConfirmed": 39.98},
            {"productId": apple, "name": "apple", "unitsConfirmed": 3, "revenueConfirmed": 0.3},
        ])
    );
    let (status, sellers, _) = get(&system, "/reports/sellers", &admin).await;
    assert_eq!(status, 200, "{sellers}");
    assert_eq!(
        sellers["sellers"],
        json!([
            {"sellerId": "seller-2", "orders": 2, "unitsConfirmed": 2, "revenueConfirmed": 39.98},
            {"sellerId": "seller-1", "orders": 3, "unitsConfirmed": 3, "revenueConfirmed": 0.3},
        ])
    );

    // A SELLER sees its own products only, and not the sellers' ranking.
    let seller_1 = token("s1", Role::Seller, Some("seller-1"));
    let (status, own, _) = get(&system, "/reports/summary", &seller_1).await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["orders"], counts(0, 2, 0, 1));
    assert_eq!(own["unitsConfirmed"], 3);
    assert_eq!(own["revenueConfirmed"].to_string(), "0.3");
    assert_eq!(own["topProducts"].as_array().unwrap().len(), 1);
    assert_eq!(own["topProducts"][0]["productId"], apple.as_str());
    let seller_2 = token("s2", Role::Seller, Some("seller-2"));
    let (_, own, _) = get(&system, "/reports/summary", &seller_2).await;
    assert_eq!(own["orders"], counts(0, 1, 1, 0));
    assert_eq!(own["revenueConfirmed"].to_string(), "39.98");
    let (status, _, _) = get(&system, "/reports/sellers", &seller_1).await;
    assert_eq!(status, 403);
    let (status, _, _) = get(&system, "/reports/summary", &system.client_token).await;
    assert_eq!(status, 403);
    let (status, _, _) = get(&system, "/reports/sellers", &system.client_token).await;
    assert_eq!(status, 403);
    // A SELLER token without seller_id is not a valid token at all.
    let nameless = token("s3", Role::Seller, None);
    let (status, _, _) = get(&system, "/reports/summary", &nameless).await;
    assert_eq!(status, 401);
    let response = system
        .http
        .get(system.url("/reports/summary"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Periods: on the order's creation time, from inclusive, to exclusive.
    let (status, early, _) = get(&system, &format!("/reports/summary?to={between}"), &admin).await;
    assert_eq!(status, 200, "{early}");
    assert_eq!(early["orders"], counts(0, 2, 0, 0));
    assert_eq!(early["unitsConfirmed"], 4);
    assert_eq!(early["revenueConfirmed"].to_string(), "40.18");
    assert_eq!(early["to"], between.as_str());
    let (_, late_part, _) = get(&system, &format!("/reports/summary?from={between}"), &admin).await;
    assert_eq!(late_part["orders"], counts(0, 1, 1, 1));
    assert_eq!(late_part["revenueConfirmed"].to_string(), "0.1");
    assert_eq!(late_part["from"], between.as_str());
    let (_, sellers_late, _) =
        get(&system, &format!("/reports/sellers?from={between}"), &admin).await;
    assert_eq!(
        sellers_late["sellers"],
        json!([
            {"sellerId": "seller-1", "orders": 2, "unitsConfirmed": 1, "revenueConfirmed": 0.1},
            {"sellerId": "seller-2", "orders": 1, "unitsConfirmed": 0, "revenueConfirmed": 0.0},
        ])
    );
    // The same instant with an offset (+ encoded) is the same bound.
    let (_, future, _) = get(
        &system,
        "/reports/summary?from=2999-01-01T01:00:00%2B01:00",
        &admin,
    )
    .await;
    assert_eq!(future["from"], "2999-01-01T00:00:00.000Z");
    assert_eq!(future["orders"], counts(0, 0, 0, 0));
    assert_eq!(future["revenueConfirmed"].to_string(), "0.0");
    assert_eq!(future["topProducts"], json!([]));

    // Bad periods: 400 problem+json naming the parameter.
    for (query, parameter) in [
        ("from=yesterday", "from"),
        ("to=2026-13-01T00:00:00Z", "to"),
        ("from=2026-12-02T10:00:00Z&to=2026-12-01T10:00:00Z", "from"),
        ("to=2026-12-01", "to"),
    ] {
        for path in ["/reports/summary", "/reports/sellers"] {
            let (status, problem, content_type) =
                get(&system, &format!("{path}?{query}"), &admin).await;
            assert_eq!(status, 400, "{path}?{query}: {problem}");
            assert_eq!(content_type, "application/problem+json", "{path}?{query}");
            assert_eq!(problem["errors"][0]["field"], parameter, "{problem}");
            assert!(
                problem["detail"].as_str().unwrap().starts_with(parameter),
                "{problem}"
            );
        }
    }

    system.stop().await;
    env.cleanup().await;
}
