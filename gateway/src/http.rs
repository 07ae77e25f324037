//! The routes of the API and what each answers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jwt_auth::{Role, TokenVerifier};
use messaging::OutgoingMessage;
use messaging::broker::{Broker, PublishError};
use messaging::contracts::{
    CreateOrder, CreateProduct, Found, GetById, OrderView, ProductView, SalesSummary, SellersReport,
};
use messaging::rpc::{RpcClient, RpcError};
use messaging::topology::{COMMANDS, keys};
use serde::de::DeserializeOwned;
use service_kit::json_body::ValidJson;
use service_kit::problem::{FieldError, Problem};
use tower_http::cors::{Any, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tracing::{info, warn};
use uuid::Uuid;

use crate::admission::{Admission, Refusal, Shedding};
use crate::auth::{Caller, forbidden};
use crate::idempotency::{IdempotencyStore, KeyUse, order_id_for, valid_key};
use crate::ratelimit::RateLimiter;
use crate::requests::{
    OrderAccepted, OrderRequest, Period, PeriodParams, ProductRequest, ProductResponse,
    SellersResponse, SummaryResponse, price_cents,
};
use crate::sellers::SellerCache;

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER: u64 = 1;
/// The longest `POST /orders` waits for products to name a product's seller it does not know
/// yet; past it the order goes on without (orders learns the seller from the stock answer).
const SELLER_LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

/// What the handlers share. axum clones the state for every request, so it is one `Arc` (its
/// fields as [`Shared`]): cloning and dropping the fields (the broker handle, the clients, the
/// caches) was ≈ 3 % of the gateway's CPU per order (docs/benchmarks.md, session 19).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub broker: Broker,
    pub admission: Admission,
    pub rpc: Arc<RpcClient>,
    pub keys: IdempotencyStore,
    pub rpc_timeout: Duration,
    pub verifier: TokenVerifier,
    pub limiter: RateLimiter,
    /// The seller of each product seen, for `orders.create`.
    pub sellers: SellerCache,
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/products", post(create_product))
        .route("/products/{id}", get(get_product))
        .route("/reports/summary", get(sales_summary))
        .route("/reports/sellers", get(sellers_report))
        .route(
            "/openapi.json",
            get(|| async { Json(crate::openapi::spec()) }),
        )
        .fallback(service_kit::problem::no_route)
        .method_not_allowed_fallback(service_kit::problem::wrong_method)
        .layer(service_kit::json_body::body_limit(max_body_bytes))
        .layer(middleware::from_fn(service_kit::ops::record_request))
        .layer(cors())
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .with_state(state)
}

/// Browsers may call the API from any origin: it authenticates with bearer tokens, never
/// cookies, so no credentials are ever sent implicitly.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("traceparent"),
        ])
        .expose_headers([header::LOCATION, header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

#[utoipa::path(post, path = "/orders",
    request_body = OrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; the same key and body name the same order for 24 h")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "accepted once the broker confirmed orders.create", body = OrderAccepted, headers(("Location" = String, description = "/orders/{orderId}"))),
        (status = 400, description = "malformed JSON or invalid Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "this subject's request budget is spent (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "customerId of someone else", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid fields, or Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "refused at the door because too many orders wait to be decided (type /problems/overloaded), not confirmed by the broker, or the idempotency store is down; nothing was kept, retry after Retry-After", body = Problem, content_type = "application/problem+json")
    ))]
pub(crate) async fn place_order(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ValidJson(mut req): ValidJson<OrderRequest>,
) -> Result<Response, Problem> {
    req.customer_id = Some(customer_of(&caller, req.customer_id.take())?);
    let key = idempotency_key(&headers)?;
    // Before anything is claimed or published, so a refusal leaves nothing behind.
    let ticket = state.admission.try_admit().map_err(shedding)?;
    let mut new_key = false;
    let order_id = match &key {
        Some(key) => {
            let claimed = state.keys.claim(key, &req).await.map_err(|e| {
                warn!(error = %e, "redis unavailable; cannot honour Idempotency-Key");
                unavailable(
                    "the idempotency store is unavailable; retry with the same Idempotency-Key",
                )
            })?;
            if claimed == KeyUse::Conflict {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key-reused",
                    "Idempotency-Key reused",
                    "this Idempotency-Key was already used with a different body",
                ));
            }
            new_key = claimed == KeyUse::New;
            order_id_for(key, &req)
        }
        None => Uuid::now_v7().to_string(),
    };
    let product_id = req.product_id.trim().to_owned();
    let seller_id = seller_of(&state, &product_id).await;
    let command = CreateOrder {
        order_id: order_id.clone(),
        product_id,
        quantity: req.quantity as u32,
        customer_id: req.customer_id.clone(),
        idempotency_key: key,
        seller_id,
    };
    let msg = OutgoingMessage::json(COMMANDS, keys::ORDERS_CREATE, Some(&order_id), &command)
        .map_err(|e| internal(e.to_string()))?
        .with_traceparent(traceparent(&headers));
    if let Err(e) = state.broker.publish(&msg).await {
        drop(ticket);
        let refusal = Refusal::of_publish(&e);
        refusal.count();
        warn!(%order_id, message_id = %msg.message_id, error = %e, reason = refusal.label(), "orders.create not confirmed; answering 503");
        // Only when the broker certainly does not have the order: after a lost confirm it may,
        // and the key must keep naming this body.
        let not_stored = matches!(e, PublishError::Nacked | PublishError::NotConnected);
        if let (true, true, Some(key)) = (new_key, not_stored, command.idempotency_key.as_deref())
            && let Err(e) = state.keys.release(key, &req).await
        {
            // The key stays claimed for this body: a retry with it still goes through.
            warn!(%order_id, error = %e, "could not release the Idempotency-Key of a refused order");
        }
        return Err(match refusal {
            Refusal::BrokerFull => overloaded(
                "too many orders are waiting; retry later (with the same Idempotency-Key)",
            ),
            _ => unavailable(
                "the order could not be handed to the broker; retry (with the same Idempotency-Key)",
            ),
        });
    }
    ticket.published();
    info!(%order_id, message_id = %msg.message_id, "order accepted");
    let location = format!("/orders/{order_id}");
    let body = OrderAccepted {
        order_id,
        status: "PENDING".into(),
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// The seller of `product_id`, remembered or asked of products (at most
/// [`SELLER_LOOKUP_TIMEOUT`]). `None` for an unknown product, one without a seller, or when
/// products could not say in time: the order is accepted all the same.
async fn seller_of(state: &AppState, product_id: &str) -> Option<String> {
    if let Some(known) = state.sellers.get(product_id) {
        return known;
    }
    let timeout = state.rpc_timeout.min(SELLER_LOOKUP_TIMEOUT);
    let request = GetById {
        id: product_id.to_owned(),
    };
    match call_within::<_, Found<ProductView>>(state, keys::PRODUCTS_GET, &request, timeout).await {
        Ok(Found {
            found: Some(product),
        }) => {
            state
                .sellers
                .remember(&product.id, product.seller_id.clone());
            product.seller_id
        }
        Ok(Found { found: None }) => None,
        Err(problem) => {
            warn!(%product_id, detail = %problem.detail, "seller of the product not known; the order goes on without it");
            None
        }
    }
}

/// The order's customer is the caller; only an ADMIN may place an order for someone else.
fn customer_of(caller: &Caller, asked: Option<String>) -> Result<String, Problem> {
    match asked {
        Some(other) if other != caller.0.sub && !caller.is(Role::Admin) => {
            Err(forbidden("customerId must be the token's subject"))
        }
        Some(customer) => Ok(customer),
        None => Ok(caller.0.sub.clone()),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if valid_key(key) => Ok(Some(key.to_owned())),
        _ => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-idempotency-key",
            "Invalid Idempotency-Key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// A valid incoming W3C `traceparent`, carried into the messages the request causes.
fn traceparent(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let parts: Vec<_> = value.split('-').collect();
    let well_formed = parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_hexdigit()));
    well_formed.then_some(value)
}

/// An order the caller may not see is answered like one that does not exist.
#[utoipa::path(get, path = "/orders/{id}",
    params(("id" = String, Path, description = "the order id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the order", body = OrderView),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "this subject's request budget is spent (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such order, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the broker did not take the request", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "orders did not answer in time", body = Problem, content_type = "application/problem+json")
    ))]
pub(crate) async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, Problem> {
    let found: Found<OrderView> =
        call(&state, keys::ORDERS_GET, &GetById { id: id.clone() }).await?;
    found
        .found
        .filter(|o| {
            caller
                .0
                .sees(o.customer_id.as_deref(), o.seller_id.as_deref())
        })
        .map(Json)
        .ok_or_else(|| Problem::not_found("order", &id))
}

#[utoipa::path(get, path = "/products/{id}",
    params(("id" = String, Path, description = "the product id")),
    responses(
        (status = 200, description = "the product with its current stock", body = ProductResponse),
        (status = 404, description = "no such product", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the broker did not take the request", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "products did not answer in time", body = Problem, content_type = "application/problem+json")
    ))]
pub(crate) async fn get_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProductResponse>, Problem> {
    let found: Found<ProductView> =
        call(&state, keys::PRODUCTS_GET, &GetById { id: id.clone() }).await?;
    found
        .found
        .map(|p| Json(p.into()))
        .ok_or_else(|| Problem::not_found("product", &id))
}

/// ADMIN may create any product; a SELLER's products are always its own.
#[utoipa::path(post, path = "/products",
    request_body = ProductRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "created", body = ProductResponse, headers(("Location" = String, description = "/products/{id}"))),
        (status = 400, description = "malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "this subject's request budget is spent (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not ADMIN or SELLER, or another seller's product", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid fields", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the broker did not take the request", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "products did not answer in time", body = Problem, content_type = "application/problem+json")
    ))]
pub(crate) async fn create_product(
    State(state): State<AppState>,
    caller: Caller,
    ValidJson(req): ValidJson<ProductRequest>,
) -> Result<Response, Problem> {
    caller.require(&[Role::Admin, Role::Seller])?;
    let seller_id = if caller.is(Role::Seller) {
        if req.seller_id.is_some() && req.seller_id != caller.0.seller_id {
            return Err(forbidden("a seller can only create its own products"));
        }
        caller.0.seller_id.clone()
    } else {
        req.seller_id
    };
    let new = CreateProduct {
        name: req.name.trim().to_owned(),
        price_cents: price_cents(req.price).unwrap_or_default(),
        stock: req.stock,
        seller_id,
    };
    let product: ProductView = call(&state, keys::PRODUCTS_CREATE, &new).await?;
    info!(product_id = %product.id, stock = product.stock, "product created");
    state
        .sellers
        .remember(&product.id, product.seller_id.clone());
    let location = format!("/products/{}", product.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(ProductResponse::from(product)),
    )
        .into_response())
}

/// Sales over a period from orders.db: ADMIN over every order, a SELLER over its own products.
#[utoipa::path(get, path = "/reports/summary",
    params(PeriodParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "orders by status, confirmed units and revenue, top products; orders filtered by creation time, from <= createdAt < to", body = SummaryResponse),
        (status = 400, description = "from or to is not an RFC 3339 date-time, or from is later than to", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "a CLIENT", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "this subject's request budget is spent (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the broker did not take the request", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "orders did not answer in time", body = Problem, content_type = "application/problem+json")
    ))]
pub(crate) async fn sales_summary(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<PeriodParams>, QueryRejection>,
) -> Result<Json<SummaryResponse>, Problem> {
    caller.require(&[Role::Admin, Role::Seller])?;
    let seller_id = if caller.is(Role::Seller) {
        let own = caller.0.seller_id.clone();
        // The verifier refuses SELLER tokens without seller_id; this only guards the invariant.
        Some(own.ok_or_else(|| forbidden("this SELLER token carries no seller_id"))?)
    } else {
        None
    };
    let period = period(params)?;
    let summary: SalesSummary = call(
        &state,
        keys::ORDERS_REPORT_SUMMARY,
        &period.query(seller_id),
    )
    .await?;
    Ok(Json(SummaryResponse::new(period, summary)))
}

/// Every seller's orders and confirmed sales over a period, best first. ADMIN only.
#[utoipa::path(get, path = "/reports/sellers",
    params(PeriodParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "sellers ranked by confirmed revenue, then units, then orders; orders filtered by creation time, from <= createdAt < to", body = SellersResponse),
        (status = 400, description = "from or to is not an RFC 3339 date-time, or from is later than to", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "no valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not an ADMIN", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "this subject's request budget is spent (Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "the broker did not take the request", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "orders did not answer in time", body = Problem, content_type = "application/problem+json")
    ))]
pub(crate) async fn sellers_report(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<PeriodParams>, QueryRejection>,
) -> Result<Json<SellersResponse>, Problem> {
    caller.require(&[Role::Admin])?;
    let period = period(params)?;
    let report: SellersReport =
        call(&state, keys::ORDERS_REPORT_SELLERS, &period.query(None)).await?;
    Ok(Json(SellersResponse::new(period, report)))
}

/// The report period of the query string, or a 400 naming the parameter at fault.
fn period(params: Result<Query<PeriodParams>, QueryRejection>) -> Result<Period, Problem> {
    let bad_period = |error: FieldError| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-period",
            "Invalid report period",
            format!("{}: {}", error.field, error.message),
        )
        .with_errors(vec![error])
    };
    let Query(params) = params.map_err(|e| {
        bad_period(FieldError {
            field: "query".into(),
            message: e.body_text(),
        })
    })?;
    params.period().map_err(bad_period)
}

/// Asks the owning service and maps the ways that can fail onto HTTP.
async fn call<Req: serde::Serialize, Resp: DeserializeOwned>(
    state: &AppState,
    key: &str,
    body: &Req,
) -> Result<Resp, Problem> {
    call_within(state, key, body, state.rpc_timeout).await
}

/// [`call`] with its own time limit.
async fn call_within<Req: serde::Serialize, Resp: DeserializeOwned>(
    state: &AppState,
    key: &str,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, Problem> {
    let reply = state
        .rpc
        .call(key, body, timeout)
        .await
        .map_err(|e| match e {
            RpcError::Timeout(after) => {
                warn!(request = key, ?after, "no reply from the owning service");
                Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream-timeout",
                    "Upstream timeout",
                    format!("no answer from the service within {after:?}"),
                )
            }
            RpcError::Publish(PublishError::NotConnected) | RpcError::Publish(_) => {
                warn!(request = key, error = %e, "request not accepted by the broker");
                unavailable("the broker did not accept the request; retry shortly")
            }
            RpcError::Encode(e) => internal(e.to_string()),
        })?;
    serde_json::from_slice(&reply).map_err(|e| internal(format!("unreadable reply to {key}: {e}")))
}

/// The saga has as many undecided orders as it may, or the webhooks as many events waiting, or
/// nearly (early shedding): 503, nothing claimed or published.
fn shedding(s: Shedding) -> Problem {
    s.cause.count();
    let (what, detail) = match s.cause {
        Refusal::WebhookBacklog => (
            "the webhooks waiting to be sent are",
            "too many decided orders are waiting for their notifications; retry later (with the same Idempotency-Key)",
        ),
        _ => (
            "the saga's backlog is",
            "too many orders are waiting to be decided; retry later (with the same Idempotency-Key)",
        ),
    };
    let (refused, reached) = match s.early {
        true => ("refused early", "past half"),
        false => ("refused", "at"),
    };
    info!(
        backlog = s.backlog,
        limit = s.limit,
        "order {refused}: {what} {reached} the admission limit"
    );
    overloaded(detail)
}

fn overloaded(detail: &str) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "Too many orders waiting",
        detail,
    )
    .with_retry_after(RETRY_AFTER)
}

fn unavailable(detail: &str) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "Service unavailable",
        detail,
    )
    .with_retry_after(RETRY_AFTER)
}

fn internal(detail: String) -> Problem {
    warn!(%detail, "internal error");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        detail,
    )
}
