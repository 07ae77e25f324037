//! The gateway's guards: bearer tokens, roles, who may read which order, per-subject rate
//! limits, CORS and security headers.

use std::time::Duration;

use e2e::system::{CUSTOMER, JWT_SECRET, token};
use e2e::{Options, System};
use jwt_auth::{Claims, Role};
use reqwest::Method;
use serde_json::{Value, json};
use testkit::TestEnv;

fn order_body(product: &str) -> Value {
    json!({"productId": product, "quantity": 1})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_roles_and_visibility() {
    let env = TestEnv::new("auth").await.unwrap();
    let system = System::start(&env, Options::default()).await.unwrap();
    let product = system.create_product(10).await.unwrap();

    // No token, a token signed with another secret, an expired token: 401 with WWW-Authenticate.
    let expired = jwt_auth::issue(
        JWT_SECRET.as_bytes(),
        &Claims {
            sub: "x".into(),
            role: Role::Client,
            seller_id: None,
            exp: 1_000_000_000,
        },
    )
    .unwrap();
    let forged = jwt_auth::issue(
        b"another-secret",
        &Claims {
            sub: "x".into(),
            role: Role::Admin,
            seller_id: None,
            exp: 4_000_000_000,
        },
    )
    .unwrap();
    let anonymous = system
        .http
        .post(system.url("/orders"))
        .json(&order_body(&product))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        anonymous.headers()["content-type"],
        "application/problem+json"
    );
    for bad in [expired, forged, "not-a-jwt".to_owned()] {
        let refused = system
            .request(Method::POST, "/orders", &bad)
            .json(&order_body(&product))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
    }
    let unauth_read = system
        .http
        .get(system.url("/orders/whatever"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth_read.status(), 401);

    // Products: a CLIENT may not create; a SELLER creates its own only; an ADMIN anything.
    let new_product = json!({"name": "lamp", "price": 12.5, "stock": 3});
    let client = system
        .request(Method::POST, "/products", &system.client_token)
        .json(&new_product)
        .send()
        .await
        .unwrap();
    assert_eq!(client.status(), 403);
    let seller = token("s-user", Role::Seller, Some("seller-9"));
    let made: Value = system
        .request(Method::POST, "/products", &seller)
        .json(&new_product)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(made["sellerId"], "seller-9");
    let foreign = json!({"name": "lamp", "price": 12.5, "stock": 3, "sellerId": "seller-1"});
    let stolen = system
        .request(Method::POST, "/products", &seller)
        .json(&foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(stolen.status(), 403);

    // Orders belong to the token's subject; a CLIENT cannot order for someone else.
    let for_other = json!({"productId": product, "quantity": 1, "customerId": "someone-else"});
    let refused = system
        .post("/orders")
        .json(&for_other)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let id = system.accepted_order(&product, 1).await.unwrap();
    system
        .wait_terminal(std::slice::from_ref(&id), Duration::from_secs(20))
        .await
        .unwrap();
    let path = format!("/orders/{id}");

    let own: Value = system
        .request(Method::GET, &path, &system.client_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["customerId"], CUSTOMER);
    let stranger = system
        .request(Method::GET, &path, &token("customer-2", Role::Client, None))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stranger.status(),
        404,
        "another customer must not see the order"
    );
    let owner_seller = system
        .request(
            Method::GET,
            &path,
            &token("s1", Role::Seller, Some("seller-1")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        owner_seller.status(),
        200,
        "the product's seller sees the order"
    );
    let other_seller = system
        .request(
            Method::GET,
            &path,
            &token("s2", Role::Seller, Some("seller-2")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(other_seller.status(), 404);
    let admin = system
        .request(Method::GET, &path, &system.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);

    system.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_subject_has_its_own_request_budget() {
    let env = TestEnv::new("ratelimit").await.unwrap();
    let options = Options {
        // One token every 2 s: a loaded machine cannot refill one between the 3rd and 4th request.
        rate_limit: Some((0.5, 3)),
        ..Options::default()
    };
    let system = System::start(&env, options).await.unwrap();

    let read = |token: String| {
        let request = system.request(Method::GET, "/orders/none", &token);
        async move { request.send().await.unwrap() }
    };
    for _ in 0..3 {
        assert_eq!(read(system.client_token.clone()).await.status(), 404);
    }
    let limited = read(system.client_token.clone()).await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        limited.headers()["content-type"],
        "application/problem+json"
    );
    // Another subject is not affected, and the first one gets a token back after two seconds.
    assert_eq!(read(system.admin_token.clone()).await.status(), 404);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(read(system.client_token.clone()).await.status(), 404);

    system.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cors_and_security_headers() {
    let env = TestEnv::new("headers").await.unwrap();
    let system = System::start(&env, Options::default()).await.unwrap();

    let preflight = system
        .http
        .request(Method::OPTIONS, system.url("/orders"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, idempotency-key, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("idempotency-key") && allowed.contains("authorization"),
        "{allowed}"
    );

    let response = system
        .request(Method::GET, "/orders/none", &system.admin_token)
        .send()
        .await
        .unwrap();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(response.headers()[name], value, "{name}");
    }
    assert!(response.headers().contains_key("content-security-policy"));

    system.stop().await;
    env.cleanup().await;
}
