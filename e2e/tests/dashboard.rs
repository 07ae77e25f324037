//! The dashboard in headless Chromium against the whole system (gateway, orders, products,
//! webhook publisher, notifier): what happened before the page opened comes from the reports,
//! orders placed through the gateway then move the cards, the chart, the top products, the
//! products running low and the feed without a reload; a SELLER sees only its own products.
//! A screenshot of each view is kept in the test's temp dir (`target/tmp/`). A second test
//! follows the stock changes the page lists as "running low" over a plain WebSocket.
//!
//! Needs chromium (`scripts/ensure-test-tools.sh` installs it): without it the test fails.

use std::time::Duration;

use anyhow::{Context, Result};
use e2e::system::{CUSTOMER, token};
use e2e::{Options, System};
use jwt_auth::Role;
use serde_json::{Value, json};
use testkit::TestEnv;
use testkit::browser::Browser;
use testkit::ws::WsClient;

const WAIT: Duration = Duration::from_secs(30);

/// `POST /products` as ADMIN; returns the id.
async fn product(
    system: &System,
    name: &str,
    price: f64,
    stock: i64,
    seller: &str,
) -> Result<String> {
    let response = system
        .request(reqwest::Method::POST, "/products", &system.admin_token)
        .json(&json!({"name": name, "price": price, "stock": stock, "sellerId": seller}))
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 201,
        "create {name}: {}",
        response.status()
    );
    let body: Value = response.json().await?;
    body["id"].as_str().map(str::to_owned).context("no id")
}

fn card(name: &str) -> String {
    format!("document.getElementById('card-{name}').dataset.value")
}

const CHART_TOTAL: &str = "document.getElementById('chart').dataset.total";
const FEED: &str =
    "[...document.querySelectorAll('#feed li .text')].map(e => e.textContent).join('\\n')";
const TOP: &str = "[...document.querySelectorAll('#top tbody tr')].map(r => [...r.cells].map(c => c.textContent).join(' / ')).join('\\n')";
const LOW: &str = "[...document.querySelectorAll('#low tbody tr')].map(r => [...r.cells].map(c => c.textContent).join(' / ')).join('\\n')";

fn is(expected: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v.as_str() == Some(expected)
}

fn has(needle: String) -> impl Fn(&Value) -> bool {
    move |v: &Value| v.as_str().is_some_and(|s| s.contains(&needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_loads_from_the_reports_and_follows_orders_live() -> Result<()> {
    let env = TestEnv::new("dashboard").await?;
    let mut system = System::start(&env, Options::default()).await?;
    system.start_realtime().await?;
    let widget = product(&system, "widget", 9.99, 50, "seller-1").await?;
    let gadget = product(&system, "gadget", 4.50, 3, "seller-1").await?;
    let other = product(&system, "gizmo", 2.00, 20, "seller-2").await?;

    // Before the page opens: two confirmed widget orders (3 units) and one of seller-2's.
    let before = vec![
        system.accepted_order(&widget, 1).await?,
        system.accepted_order(&widget, 2).await?,
        system.accepted_order(&other, 1).await?,
    ];
    system.wait_terminal(&before, WAIT).await?;

    let profile = tempfile::tempdir()?;
    let mut page = Browser::launch(profile.path()).await?;
    let admin = token("ops", Role::Admin, None);
    page.open(&format!("{}/#token={admin}", system.notifier_url()))
        .await?;
    page.wait_until(
        "document.getElementById('status').textContent",
        "connected",
        WAIT,
        is("connected"),
    )
    .await?;
    // The token is a password field and has left the address bar.
    assert_eq!(
        page.eval("document.getElementById('token').type").await?,
        "password"
    );
    assert_eq!(page.eval("location.hash").await?, "");
    page.wait_until(
        &card("CONFIRMED"),
        "3 confirmed from the reports",
        WAIT,
        is("3"),
    )
    .await?;
    assert_eq!(page.eval(&card("PENDING")).await?, "0");
    assert_eq!(page.eval(&card("units")).await?, "4");
    assert_eq!(page.eval(&card("revenue")).await?, "31.97");
    page.wait_until(
        CHART_TOTAL,
        "the earlier decisions in the chart",
        WAIT,
        is("3"),
    )
    .await?;
    page.wait_until(
        FEED,
        "what happened before",
        WAIT,
        has("Before now: 3 orders — 3 confirmed".into()),
    )
    .await?;
    page.wait_until(
        TOP,
        "the top products",
        WAIT,
        has("widget / 3 / 29.97".into()),
    )
    .await?;

    // Now live: one more widget confirmed, a gadget order refused for want of stock, and one
    // that takes the last gadgets.
    let confirmed = system.accepted_order(&widget, 1).await?;
    let rejected = system.accepted_order(&gadget, 5).await?;
    let emptied = system.accepted_order(&gadget, 3).await?;
    let statuses = system
        .wait_terminal(
            &[confirmed.clone(), rejected.clone(), emptied.clone()],
            WAIT,
        )
        .await?;
    assert_eq!(statuses[&rejected], "REJECTED");
    page.wait_until(&card("CONFIRMED"), "the new confirmations", WAIT, is("5"))
        .await?;
    page.wait_until(&card("REJECTED"), "the rejection", WAIT, is("1"))
        .await?;
    page.wait_until(&card("revenue"), "the reports' revenue", WAIT, is("55.46"))
        .await?;
    assert_eq!(page.eval(&card("units")).await?, "8");
    assert_eq!(page.eval(&card("PENDING")).await?, "0");
    page.wait_until(CHART_TOTAL, "the new decisions in the chart", WAIT, is("6"))
        .await?;
    let short = |id: &str| format!("order {}…{}", &id[..4], &id[id.len() - 6..]);
    page.wait_until(
        FEED,
        "the confirmation in words",
        WAIT,
        has(format!(
            "{} by {CUSTOMER}: 1 × widget confirmed",
            short(&confirmed)
        )),
    )
    .await?;
    page.wait_until(
        FEED,
        "the rejection in words",
        WAIT,
        has(format!(
            "{} by {CUSTOMER}: 5 × gadget rejected (",
            short(&rejected)
        )),
    )
    .await?;
    page.wait_until(
        LOW,
        "the emptied gadget running low",
        WAIT,
        has("gadget / 0".into()),
    )
    .await?;
    page.wait_until(
        TOP,
        "the gadget among the top products",
        WAIT,
        has("gadget / 3 / 13.50".into()),
    )
    .await?;
    // No raw JSON in the feed.
    let feed = page.eval(FEED).await?;
    assert!(!feed.as_str().unwrap_or("").contains('{'), "{feed}");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let admin_shot = shots.join("dashboard-admin.png");
    page.screenshot(&admin_shot).await?;
    println!("screenshot: {}", admin_shot.display());

    // seller-2 sees only its own product's figures.
    let seller = token("s2", Role::Seller, Some("seller-2"));
    page.open(&format!("{}/#token={seller}", system.notifier_url()))
        .await?;
    page.wait_until(
        "document.getElementById('who').textContent",
        "the seller",
        WAIT,
        has("seller-2".into()),
    )
    .await?;
    page.wait_until(&card("CONFIRMED"), "seller-2's one order", WAIT, is("1"))
        .await?;
    assert_eq!(page.eval(&card("REJECTED")).await?, "0");
    page.wait_until(CHART_TOTAL, "seller-2's decisions", WAIT, is("1"))
        .await?;
    let top = page
        .wait_until(TOP, "seller-2's top product", WAIT, has("gizmo".into()))
        .await?;
    assert!(!top.as_str().unwrap_or("").contains("widget"), "{top}");
    // Live, too: its own order moves its cards, seller-1's does not reach it.
    let theirs = system.accepted_order(&other, 2).await?;
    let not_theirs = system.accepted_order(&widget, 1).await?;
    system
        .wait_terminal(&[theirs.clone(), not_theirs.clone()], WAIT)
        .await?;
    page.wait_until(&card("CONFIRMED"), "seller-2's new order", WAIT, is("2"))
        .await?;
    page.wait_until(
        FEED,
        "seller-2's order in words",
        WAIT,
        has(format!(
            "{} by {CUSTOMER}: 2 × gizmo confirmed",
            short(&theirs)
        )),
    )
    .await?;
    page.wait_until(&card("revenue"), "seller-2's revenue", WAIT, is("6"))
        .await?;
    assert_eq!(page.eval(&card("units")).await?, "3");
    page.wait_until(
        TOP,
        "the reports read again",
        WAIT,
        has("gizmo / 3 / 6.00".into()),
    )
    .await?;
    let feed = page.eval(FEED).await?;
    assert!(
        !feed.as_str().unwrap_or("").contains(&short(&not_theirs)),
        "{feed}"
    );
    assert!(!feed.as_str().unwrap_or("").contains("widget"), "{feed}");
    let seller_shot = shots.join("dashboard-seller.png");
    page.screenshot(&seller_shot).await?;

    drop(page);
    system.stop().await;
    env.cleanup().await;
    Ok(())
}

/// What the dashboard's "running low" list is fed by, end to end: products emits
/// `product.stockChanged`, the publisher delivers it, the notifier pushes `stock.updated` to
/// ADMINs and the product's SELLER only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_changes_reach_admins_and_the_products_seller_over_the_websocket() -> Result<()> {
    let env = TestEnv::new("dash-stock").await?;
    let mut system = System::start(&env, Options::default()).await?;
    system.start_realtime().await?;
    let base = system.notifier_url();
    let admin = WsClient::connect(&base, "admin", &token("ops", Role::Admin, None)).await;
    let seller = WsClient::connect(
        &base,
        "seller-1",
        &token("s1", Role::Seller, Some("seller-1")),
    )
    .await;
    let other = WsClient::connect(
        &base,
        "seller-2",
        &token("s2", Role::Seller, Some("seller-2")),
    )
    .await;
    let client = WsClient::connect(&base, "customer", &token(CUSTOMER, Role::Client, None)).await;

    let gadget = product(&system, "gadget", 4.50, 3, "seller-1").await?;
    let order = system.accepted_order(&gadget, 2).await?;
    system
        .wait_terminal(std::slice::from_ref(&order), WAIT)
        .await?;
    let of_gadget = |client: &WsClient| -> Vec<(i64, i64, String)> {
        client
            .of_type("stock.updated")
            .iter()
            .filter(|m| m["data"]["productId"] == gadget.as_str())
            .map(|m| {
                let d = &m["data"];
                (
                    d["stock"].as_i64().unwrap_or(-1),
                    d["delta"].as_i64().unwrap_or(0),
                    d["reason"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let expected = vec![(3, 3, "created".to_owned()), (1, -2, "reserved".to_owned())];
    for who in [&admin, &seller] {
        let got = testkit::eventually(WAIT, || async {
            let got = of_gadget(who);
            (got.len() >= 2).then_some(got)
        })
        .await;
        assert_eq!(got.as_ref(), Some(&expected), "{}", who.name);
        assert_eq!(
            who.of_type("stock.updated")[0]["data"]["sellerId"],
            "seller-1"
        );
    }
    // The customer saw its order decided; by then neither it nor seller-2 got a stock change.
    client
        .wait_for(|m| m["type"] == "order.confirmed" && testkit::ws::has_order(&order)(m))
        .await;
    assert!(other.of_type("stock.updated").is_empty());
    assert!(client.of_type("stock.updated").is_empty());

    system.stop().await;
    env.cleanup().await;
    Ok(())
}
