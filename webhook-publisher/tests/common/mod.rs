//! Shared pieces of the publisher's integration tests: a scriptable webhook endpoint (plain HTTP,
//! or HTTPS with a certificate from a CA the test makes), the publisher spawned in-process on a
//! private vhost, its API called with an ADMIN token, and an order event published the way the
//! orders service does.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jwt_auth::Role;
use messaging::OutgoingMessage;
use messaging::contracts::OrderEvent;
use messaging::topology::EVENTS;
use serde_json::Value;
use service_kit::Running;
use service_kit::config::CommonConfig;
use testkit::TestEnv;
use testkit::amqp::TestClient;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use webhook_publisher::Config;
use webhook_publisher::client::TlsRoots;
use webhook_publisher::schedule::RetrySchedule;
use webhook_signing::Secret;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const LONG: Duration = Duration::from_secs(30);
/// The publisher's JWT secret in these tests; [`token`] signs with it.
pub const JWT_SECRET: &str = "webhook-publisher-test-jwt-secret";

/// A token signed with [`JWT_SECRET`], valid for an hour.
pub fn token(sub: &str, role: Role, seller_id: Option<&str>) -> String {
    jwt_auth::issue_for(
        JWT_SECRET.as_bytes(),
        sub,
        role,
        seller_id,
        Duration::from_secs(3600),
    )
    .expect("sign a test token")
}

/// One request the endpoint received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Checks the Standard Webhooks signature with `secret`.
    pub fn signed_with(&self, secret: &str) -> bool {
        let timestamp: i64 = self.header("webhook-timestamp").parse().unwrap();
        Secret::parse(secret).unwrap().verify(
            self.header("webhook-id"),
            timestamp,
            &self.body,
            self.header("webhook-signature"),
        )
    }
}

/// How the endpoint answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// Status with a `Retry-After` header (seconds).
    RetryAfter(u16, u64),
    /// Never answers until the endpoint is released.
    Hang,
    /// Status with a body of this many bytes.
    Big(u16, usize),
    /// Status with exactly this body.
    Body(u16, &'static [u8]),
    /// 307 to `/followed` on the same server (which would answer 200).
    Redirect,
}

struct Behaviour {
    script: VecDeque<Answer>,
    then: Answer,
    received: Vec<Received>,
    in_flight: usize,
    max_in_flight: usize,
    followed: usize,
}

/// A webhook endpoint on a free port whose answers a test scripts.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<Behaviour>>,
    release: CancellationToken,
}

impl Endpoint {
    /// Answers `script` in order, then `then` forever.
    pub async fn start(script: Vec<Answer>, then: Answer) -> Self {
        Self::serve(script, then, None).await
    }

    /// The same over HTTPS, with `tls`'s certificate.
    pub async fn start_tls(
        script: Vec<Answer>,
        then: Answer,
        tls: Arc<rustls::ServerConfig>,
    ) -> Self {
        Self::serve(script, then, Some(tls)).await
    }

    async fn serve(
        script: Vec<Answer>,
        then: Answer,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let state = Arc::new(Mutex::new(Behaviour {
            script: script.into(),
            then,
            received: Vec::new(),
            in_flight: 0,
            max_in_flight: 0,
            followed: 0,
        }));
        let release = CancellationToken::new();
        let endpoint = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            scheme: if tls.is_some() { "https" } else { "http" },
            state,
            release,
        };
        let app = Router::new()
            .route("/hook", post(answer))
            .route("/followed", axum::routing::any(followed))
            .with_state(endpoint.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        match tls {
            None => drop(tokio::spawn(
                async move { axum::serve(listener, app).await },
            )),
            Some(tls) => {
                let listener = TlsListener {
                    tcp: listener,
                    acceptor: TlsAcceptor::from(tls),
                };
                drop(tokio::spawn(
                    async move { axum::serve(listener, app).await },
                ))
            }
        }
        Self { addr, ..endpoint }
    }

    pub fn url(&self) -> String {
        format!("{}://{}/hook", self.scheme, self.addr)
    }

    /// From now on, answer `answer` to everything.
    pub fn answer_always(&self, answer: Answer) {
        let mut state = self.state.lock().unwrap();
        state.script.clear();
        state.then = answer;
    }

    /// Lets hanging requests go (they get a 503).
    pub fn release(&self) {
        self.release.cancel();
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// How many redirects were followed (must stay 0).
    pub fn followed(&self) -> usize {
        self.state.lock().unwrap().followed
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }
}

/// Accepts TCP connections and completes their TLS handshake; a failed handshake (the client
/// refused the certificate) is dropped and never reaches the app.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A private CA made for one test, and a server certificate it signed for `localhost` and
/// 127.0.0.1.
pub struct TestCa {
    /// The CA certificate, PEM (what `WEBHOOK_CA_FILE` holds).
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "webhook-publisher test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone(), ca_cert.der().clone()], key)
        .unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }

    /// The CA as the publisher's extra roots, read from a PEM file as `WEBHOOK_CA_FILE` is.
    pub fn roots(&self, env: &TestEnv) -> TlsRoots {
        let path = env.dir.path().join("test-ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        TlsRoots::from_pem_file(&path).unwrap()
    }
}

async fn followed(State(endpoint): State<Endpoint>) -> StatusCode {
    endpoint.state.lock().unwrap().followed += 1;
    StatusCode::OK
}

async fn answer(State(endpoint): State<Endpoint>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = {
        let mut state = endpoint.state.lock().unwrap();
        state.received.push(Received {
            headers,
            body,
            at: Instant::now(),
        });
        state.in_flight += 1;
        state.max_in_flight = state.max_in_flight.max(state.in_flight);
        state
            .script
            .pop_front()
            .unwrap_or_else(|| state.then.clone())
    };
    let response = match answer {
        Answer::Status(code) => {
            (StatusCode::from_u16(code).unwrap(), "scripted answer").into_response()
        }
        Answer::RetryAfter(code, seconds) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", seconds.to_string())],
            "slow down",
        )
            .into_response(),
        Answer::Redirect => (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", "/followed")],
            "moved",
        )
            .into_response(),
        Answer::Big(code, size) => {
            (StatusCode::from_u16(code).unwrap(), "x".repeat(size)).into_response()
        }
        Answer::Body(code, body) => (StatusCode::from_u16(code).unwrap(), body).into_response(),
        Answer::Hang => {
            endpoint.release.cancelled().await;
            (StatusCode::SERVICE_UNAVAILABLE, "released").into_response()
        }
    };
    endpoint.state.lock().unwrap().in_flight -= 1;
    response
}

/// The publisher's configuration for a test: private vhost and data dir, a short schedule.
pub fn config(env: &TestEnv, default_url: &str, schedule_ms: &str) -> Config {
    Config {
        common: CommonConfig {
            http_addr: "127.0.0.1:0".parse().unwrap(),
            amqp_url: env.amqp_url.clone(),
            redis_url: env.redis_url.clone(),
            redis_prefix: env.redis_prefix.clone(),
            data_dir: env.data_dir("webhook-publisher"),
        },
        notifier_url: default_url.to_owned(),
        webhook_secret: Secret::parse(SECRET).unwrap(),
        schedule: RetrySchedule::parse_ms(schedule_ms, 0.2).unwrap(),
        timeout: Duration::from_secs(5),
        endpoint_concurrency: 2,
        prefetch: 32,
        jwt_secret: JWT_SECRET.to_owned().into(),
        allowed_networks: webhook_publisher::egress::parse_allowed_networks("127.0.0.0/8").unwrap(),
        extra_roots: TlsRoots::default(),
        history_retention: Duration::from_secs(30 * 86_400),
        prune_every: Duration::from_secs(60),
        database: None,
    }
}

/// Runs each named `async fn(Kind)` as two tests, `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::Kind::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name($crate::common::Kind::Postgres).await
            }
        }
    )*};
}

/// Which store a test runs the publisher on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// The store of one test: `webhooks.db` in the env's data dir, or a PostgreSQL database of
/// its own (dropped by [`TestStore::drop`]).
pub struct TestStore {
    pub kind: Kind,
    pub pg: Option<testkit::TestDatabase>,
}

impl TestStore {
    pub async fn new(kind: Kind, hint: &str) -> Self {
        let pg = match kind {
            Kind::Sqlite => None,
            Kind::Postgres => Some(testkit::TestDatabase::create(hint).await.unwrap()),
        };
        Self { kind, pg }
    }

    /// `cfg` on this store: with PostgreSQL a small pool (tests share the server's
    /// connections) and a one-second lease (the delivery lease is then the timeout + 5 s,
    /// as on SQLite).
    pub fn apply(&self, mut cfg: Config) -> Config {
        cfg.database = self.pg.as_ref().map(|db| {
            let mut pg = messaging::pg::PgConfig::parse(&db.url).unwrap();
            pg.pool_size = 6;
            pg.lease = Duration::from_secs(1);
            pg
        });
        cfg
    }

    /// The one number `sql` reads from the publisher's tables (the same SQL on both).
    pub async fn count(&self, cfg: &Config, sql: &str) -> i64 {
        match &self.pg {
            None => {
                let db = cfg.common.data_dir.join("webhooks.db");
                let sql = sql.to_owned();
                tokio::task::spawn_blocking(move || {
                    let conn = deadpool_sqlite::rusqlite::Connection::open(db).unwrap();
                    conn.busy_timeout(Duration::from_secs(5)).unwrap();
                    conn.query_row(&sql, [], |r| r.get(0)).unwrap()
                })
                .await
                .unwrap()
            }
            Some(db) => {
                let client = db.connect().await.unwrap();
                client.query_one(sql, &[]).await.unwrap().get(0)
            }
        }
    }

    /// Runs `sql` with one text parameter (`?1` on SQLite, `$1` on PostgreSQL).
    pub async fn execute(&self, cfg: &Config, sql: &str, param: &str) {
        match &self.pg {
            None => {
                let db = cfg.common.data_dir.join("webhooks.db");
                let (sql, param) = (sql.replace("$1", "?1"), param.to_owned());
                tokio::task::spawn_blocking(move || {
                    let conn = deadpool_sqlite::rusqlite::Connection::open(db).unwrap();
                    conn.busy_timeout(Duration::from_secs(5)).unwrap();
                    conn.execute(&sql, [param]).unwrap();
                })
                .await
                .unwrap()
            }
            Some(db) => {
                let client = db.connect().await.unwrap();
                client.execute(sql, &[&param]).await.unwrap();
            }
        }
    }

    /// Ends the test's store (before `env.cleanup()`): on PostgreSQL, checks that the
    /// publisher wrote no SQLite file, and drops the database. (For SQLite the env's temp dir
    /// goes with the env.)
    pub async fn finish(self, env: &TestEnv) {
        if let Some(db) = self.pg {
            let file = env.data_dir("webhook-publisher").join("webhooks.db");
            assert!(
                !file.exists(),
                "with DATABASE_URL set the publisher wrote {}",
                file.display()
            );
            db.drop().await.unwrap();
        }
    }
}

/// An HTTP client that sends an ADMIN token with every request.
pub fn api() -> reqwest::Client {
    client_as(Role::Admin)
}

/// An HTTP client that sends a token of `role` with every request.
pub fn client_as(role: Role) -> reqwest::Client {
    let seller = (role == Role::Seller).then_some("s1");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token("tester", role, seller))
            .parse()
            .unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Spawns the publisher and waits until it consumes (its topology is then declared).
pub async fn start(config: Config) -> Running {
    let running = webhook_publisher::spawn(config).await.unwrap();
    testkit::wait_ready(&running.url(), LONG)
        .await
        .expect("the publisher never became ready");
    running
}

pub fn order_event(
    order_id: &str,
    customer: Option<&str>,
    seller: Option<&str>,
    status: &str,
) -> OrderEvent {
    OrderEvent {
        order_id: order_id.to_owned(),
        product_id: "product-1".to_owned(),
        quantity: 2,
        customer_id: customer.map(str::to_owned),
        seller_id: seller.map(str::to_owned),
        status: status.to_owned(),
        reason: None,
        occurred_at: "2026-11-23T00:00:00Z".to_owned(),
    }
}

/// An `order.*` event as the orders service publishes it.
pub fn event_message(kind: &str, event: &OrderEvent) -> OutgoingMessage {
    OutgoingMessage::json(EVENTS, kind, Some(&event.order_id), event).unwrap()
}

pub async fn publish(client: &TestClient, kind: &str, order_id: &str) -> OutgoingMessage {
    let msg = event_message(
        kind,
        &order_event(order_id, Some("c1"), Some("s1"), "PENDING"),
    );
    publish_message(client, &msg).await.unwrap();
    msg
}

/// GETs `url` with an ADMIN token; the answer must be 200.
pub async fn get_json(url: &str) -> Value {
    let response = api().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.unwrap()
}

/// The deliveries of the publisher at `base`, filtered by the query string.
pub async fn deliveries(base: &str, query: &str) -> Vec<Value> {
    get_json(&format!("{base}/deliveries?{query}"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until the delivery of `order_id` has `status`, and returns its detail.
pub async fn wait_for_status(base: &str, order_id: &str, status: &str) -> Value {
    let found = testkit::eventually(LONG, || async {
        let list = deliveries(base, "").await;
        let delivery = list.into_iter().find(|d| d["orderId"] == order_id)?;
        (delivery["status"] == status).then_some(delivery)
    })
    .await;
    let delivery =
        found.unwrap_or_else(|| panic!("the delivery of {order_id} never became {status}"));
    get_json(&format!(
        "{base}/deliveries/{}",
        delivery["id"].as_str().unwrap()
    ))
    .await
}

/// Creates a subscription over HTTP and returns its JSON (with the secret).
pub async fn subscribe(base: &str, url: &str, events: &[&str]) -> Value {
    let response = api()
        .post(format!("{base}/subscriptions"))
        .json(&serde_json::json!({"url": url, "events": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// Publishes `msg` as the services would (their envelope's properties) through the raw test
/// client, and waits for the confirm.
pub async fn publish_message(
    client: &testkit::amqp::TestClient,
    msg: &messaging::OutgoingMessage,
) -> anyhow::Result<()> {
    let properties = msg.properties("test");
    client
        .publish(&msg.exchange, &msg.routing_key, &msg.body, properties)
        .await
}
