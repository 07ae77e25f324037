//! The service's link to RabbitMQ: one named connection, kept alive by a supervisor.
//!
//! The supervisor connects, declares the topology, opens a confirm-mode publishing channel and
//! then attaches every registered [`Attachment`] (consumers, the RPC reply listener) on channels
//! of their own, with their own QoS. When anything breaks — the connection, a consumer, a
//! publish — it tears the whole link down and builds it again. Rebuilding from scratch re-applies
//! topology, QoS and consumers every time, which is why we do not rely on lapin's
//! `enable_auto_recover` (see docs/decisions.md).
//!
//! The broker may be a cluster: `AMQP_URL` then lists every node (comma-separated, see
//! [`node_urls`]). The first connection goes to a node picked at random, so that services spread
//! over the cluster; when a link is lost the supervisor tries the next node at once, then the
//! others in turn, and only when every node refused does it wait (capped exponential backoff,
//! 100 ms doubling to 3 s, jittered) before the next round. A single URL is a cluster of one.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::envelope::OutgoingMessage;
use crate::topology;

/// Why an `AMQP_URL` list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeListError {
    #[error("no broker URL given")]
    Empty,
    #[error("entry {position} of the list is empty (a doubled or trailing comma?)")]
    EmptyEntry { position: usize },
    #[error("entry {position} ({node}) is not an AMQP URL: {reason}")]
    Invalid {
        position: usize,
        node: String,
        reason: String,
    },
    #[error(
        "the nodes name different vhosts ({first:?} and {other:?}); a cluster's nodes share one"
    )]
    MixedVhosts { first: String, other: String },
}

/// Splits `AMQP_URL` into the broker's node URLs: one URL, or a comma-separated list of a
/// cluster's nodes (`amqp://u:p@rabbit1:5672/%2f,amqp://u:p@rabbit2:5672/%2f,…`). Every entry
/// must be an `amqp://` or `amqps://` URL, and all of them must name the same vhost.
pub fn node_urls(list: &str) -> Result<Vec<String>, NodeListError> {
    if list.trim().is_empty() {
        return Err(NodeListError::Empty);
    }
    let mut urls = Vec::new();
    let mut vhost: Option<String> = None;
    for (i, entry) in list.split(',').enumerate() {
        let position = i + 1;
        let url = entry.trim();
        if url.is_empty() {
            return Err(NodeListError::EmptyEntry { position });
        }
        let parsed = AMQPUri::from_str(url).map_err(|reason| NodeListError::Invalid {
            position,
            node: node_label(url),
            reason,
        })?;
        match &vhost {
            None => vhost = Some(parsed.vhost),
            Some(first) if *first != parsed.vhost => {
                return Err(NodeListError::MixedVhosts {
                    first: first.clone(),
                    other: parsed.vhost,
                });
            }
            Some(_) => {}
        }
        urls.push(url.to_owned());
    }
    Ok(urls)
}

/// The first node of an `AMQP_URL` list, for tools that hold one connection (the whole value
/// when it is not a list).
pub fn first_node_url(list: &str) -> &str {
    list.split(',')
        .map(str::trim)
        .find(|u| !u.is_empty())
        .unwrap_or(list)
}

/// `host:port` of a node URL, for logs (never the credentials).
pub fn node_label(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.to_owned()
}

/// Connects to the first node of `urls` that answers, in order. For tools that need one plain
/// connection (the `dlq` command, test helpers) rather than a supervised link.
pub async fn connect_any(
    urls: &[String],
    props: ConnectionProperties,
) -> lapin::Result<Connection> {
    let mut last = None;
    for url in urls {
        match Connection::connect(url, props.clone()).await {
            Ok(connection) => return Ok(connection),
            Err(e) => {
                warn!(node = %node_label(url), error = %e, "broker node unreachable; trying the next");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed).into()
    }))
}

/// The order in which the nodes are tried: a round visits every node once, starting with
/// `next`; a lost link moves `next` to the node after the one that was lost, so a dead node is
/// tried last, not first.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rotation {
    len: usize,
    next: usize,
}

impl Rotation {
    fn new(len: usize, start: usize) -> Self {
        let len = len.max(1);
        Self {
            len,
            next: start % len,
        }
    }

    fn round(&self) -> impl Iterator<Item = usize> + use<> {
        let (len, next) = (self.len, self.next);
        (0..len).map(move |k| (next + k) % len)
    }

    fn lost(&mut self, node: usize) {
        self.next = (node + 1) % self.len;
    }
}

/// A link that lived at least this long was healthy: losing it sends the supervisor to the next
/// node at once. A shorter one (broken right after it was built) waits for the backoff first, so
/// that a link that cannot stay up never turns into a busy loop.
const STABLE_LINK: Duration = Duration::from_secs(2);

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Every node of the broker (one for a single node); see [`node_urls`].
    pub urls: Vec<String>,
    /// Service name: the `app_id` of every message and the first half of the connection name.
    pub service: String,
    /// How long a publish waits for the broker's confirm.
    pub confirm_timeout: Duration,
    /// The cap of the reconnect backoff.
    pub max_reconnect_delay: Duration,
    /// How long one node may take to accept a connection and the link's setup.
    pub connect_timeout: Duration,
}

impl BrokerConfig {
    /// `url` is `AMQP_URL`: one URL or a comma-separated list of nodes (validated at startup by
    /// [`crate::config::CommonConfig::from_env`]; an entry that is not a URL here fails to
    /// connect and is logged, the other nodes still serve).
    pub fn new(url: &str, service: &str) -> Self {
        let mut urls = node_urls(url).unwrap_or_else(|_| {
            url.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect()
        });
        if urls.is_empty() {
            // Never an empty rotation: the one (bad) URL fails to connect and says why.
            urls.push(url.to_owned());
        }
        Self {
            urls,
            service: service.to_owned(),
            confirm_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// `service@host`, so the management UI shows who is who.
    pub fn connection_name(&self) -> String {
        format!("{}@{}", self.service, crate::config::hostname())
    }
}

/// Something that lives on the connection and must be re-created on every new one.
pub trait Attachment: Send + Sync + 'static {
    /// Opens its channel(s) on `connection` and returns the task that serves them; the task
    /// ending means the attachment is broken and the link is rebuilt.
    fn attach(
        self: Arc<Self>,
        connection: Arc<Connection>,
    ) -> BoxFuture<'static, lapin::Result<tokio::task::JoinHandle<()>>>;
}

/// What an [`Attachment::attach`] does, written once: opens a channel on `connection`, lets
/// `setup` prepare it (prefetch, consume, confirms) and return the loop that serves it, and runs
/// that loop in a task of its own. A failed setup fails the attach (the link is rebuilt).
pub fn attach_channel<S, SetUp, Serve>(
    connection: Arc<Connection>,
    setup: S,
) -> BoxFuture<'static, lapin::Result<tokio::task::JoinHandle<()>>>
where
    S: FnOnce(Channel) -> SetUp + Send + 'static,
    SetUp: Future<Output = lapin::Result<Serve>> + Send + 'static,
    Serve: Future<Output = ()> + Send + 'static,
{
    Box::pin(async move {
        let channel = connection.create_channel().await?;
        let serve = setup(channel).await?;
        Ok(tokio::spawn(serve))
    })
}

/// Why a publish did not get a positive confirm. Every variant means "not known to be stored".
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for {exchange}/{routing_key}: the message was returned ({reply})")]
    Unroutable {
        exchange: String,
        routing_key: String,
        reply: String,
    },
    #[error("channel error: {0}")]
    Channel(#[from] lapin::Error),
}

impl PublishError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotConnected => "not_connected",
            Self::ConfirmTimeout(_) => "confirm_timeout",
            Self::Nacked => "nacked",
            Self::Unroutable { .. } => "unroutable",
            Self::Channel(_) => "channel",
        }
    }
}

/// A live connection's publishing channel, and the signal that this link (and no later one)
/// is broken. Each link has a token of its own, so a failure reported late on an old link can
/// never tear down the next one.
#[derive(Clone)]
struct Link {
    publisher: Channel,
    broken: CancellationToken,
    /// Which node of [`BrokerConfig::urls`] it is connected to.
    node: usize,
}

struct Inner {
    config: BrokerConfig,
    link: watch::Sender<Option<Link>>,
    attachments: std::sync::Mutex<Vec<Arc<dyn Attachment>>>,
    /// Links built so far.
    opened: AtomicU64,
}

/// Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Self {
        let (link, _) = watch::channel(None);
        Self {
            inner: Arc::new(Inner {
                config,
                link,
                attachments: std::sync::Mutex::new(Vec::new()),
                opened: AtomicU64::new(0),
            }),
        }
    }

    pub fn service(&self) -> &str {
        &self.inner.config.service
    }

    /// Registers something to (re)attach on every connection. Call before [`Broker::run`].
    pub fn attach(&self, attachment: Arc<dyn Attachment>) {
        if let Ok(mut list) = self.inner.attachments.lock() {
            list.push(attachment);
        }
    }

    pub fn is_connected(&self) -> bool {
        self.inner.link.borrow().is_some()
    }

    /// `host:port` of the node the link is on, while connected.
    pub fn connected_node(&self) -> Option<String> {
        let node = self.inner.link.borrow().as_ref()?.node;
        self.inner.config.urls.get(node).map(|u| node_label(u))
    }

    /// Waits until a link is up, at most `wait`.
    pub async fn wait_connected(&self, wait: Duration) -> bool {
        let mut rx = self.inner.link.subscribe();
        tokio::time::timeout(wait, rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Publishes and waits for the broker's confirm. `Ok` means the broker has the message
    /// (persisted, for a persistent message on a durable queue) and it was routed.
    pub async fn publish(&self, msg: &OutgoingMessage) -> Result<(), PublishError> {
        let key = msg.routing_key.clone();
        metrics::counter!("messages_published_total", "routing_key" => key.clone()).increment(1);
        let result = self.publish_confirmed(msg).await;
        match &result {
            Ok(()) => metrics::counter!("messages_confirmed_total", "routing_key" => key).increment(1),
            Err(e) => metrics::counter!("messages_publish_failed_total", "routing_key" => key, "reason" => e.kind()).increment(1),
        }
        result
    }

    async fn publish_confirmed(&self, msg: &OutgoingMessage) -> Result<(), PublishError> {
        let link = self
            .inner
            .link
            .borrow()
            .clone()
            .ok_or(PublishError::NotConnected)?;
        let timeout = self.inner.config.confirm_timeout;
        let result = publish_on(&link.publisher, msg, self.service(), timeout).await;
        match &result {
            Err(PublishError::Channel(e)) => {
                if !link.broken.is_cancelled() {
                    warn!(error = %e, message_id = %msg.message_id, "publishing channel failed; rebuilding the broker link");
                }
                link.broken.cancel();
            }
            // A channel that stops confirming is wedged even if no error was reported on it.
            Err(PublishError::ConfirmTimeout(after)) => {
                if !link.broken.is_cancelled() {
                    warn!(?after, message_id = %msg.message_id, "no confirm in time; rebuilding the broker link");
                }
                link.broken.cancel();
            }
            _ => {}
        }
        result
    }

    /// Keeps the link up until `shutdown`. Run it in its own task.
    pub async fn run(self, shutdown: CancellationToken) {
        let nodes = self.inner.config.urls.len();
        let mut rotation = Rotation::new(nodes, rand::random_range(0..nodes.max(1)));
        let mut delays = self.reconnect_delays();
        while !shutdown.is_cancelled() {
            let mut lived = None;
            for node in rotation.round() {
                if shutdown.is_cancelled() {
                    break;
                }
                let url = &self.inner.config.urls[node];
                let opened =
                    tokio::time::timeout(self.inner.config.connect_timeout, self.open_link(node))
                        .await;
                match opened {
                    Ok(Ok((connection, tasks, link))) => {
                        let since = Instant::now();
                        let mut tasks = self.serve_link(&connection, tasks, &link, &shutdown).await;
                        // The connection closes before the consumers' tasks end: a consumer's
                        // channel dropped while its connection is open closes itself, and that
                        // close meeting the connection's own is what lapin logs as an ERROR.
                        self.close_link(&connection, &shutdown).await;
                        tasks.shutdown().await;
                        rotation.lost(node);
                        lived = Some(since.elapsed());
                        if !shutdown.is_cancelled() {
                            warn!(service = %self.service(), node = %node_label(url), "lost the broker connection; reconnecting");
                        }
                        break;
                    }
                    Ok(Err(e)) => {
                        warn!(service = %self.service(), node = %node_label(url), error = %e, "could not connect to the broker node")
                    }
                    Err(_) => {
                        warn!(service = %self.service(), node = %node_label(url), after = ?self.inner.config.connect_timeout, "the broker node did not answer in time")
                    }
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            if lived.is_some_and(|l| l >= STABLE_LINK) {
                // A healthy link was lost (its node died, most likely): the next node at once.
                delays = self.reconnect_delays();
                continue;
            }
            let delay = delays
                .next()
                .unwrap_or(self.inner.config.max_reconnect_delay);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.inner.link.send_replace(None);
        info!(service = %self.service(), "broker link stopped");
    }

    /// Closes a link that [`Broker::serve_link`] gave up (or that shutdown ended).
    async fn close_link(&self, connection: &Connection, shutdown: &CancellationToken) {
        let reason = if shutdown.is_cancelled() {
            "shutting down"
        } else {
            "reconnecting"
        };
        // Close the publishing channel before the connection: dropped, it would close itself
        // while the connection closes, which lapin logs as an error. Only a live connection is
        // closed: closing a dead one fails with "invalid connection state" for nothing.
        if let Some(link) = self.inner.link.send_replace(None)
            && connection.status().connected()
            && link.publisher.status().connected()
        {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                link.publisher.close(200, reason.into()),
            )
            .await;
        }
        if connection.status().connected() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), connection.close(200, reason.into()))
                    .await;
        }
    }

    fn reconnect_delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.inner.config.max_reconnect_delay)
            .with_jitter()
            .without_max_times()
            .build()
    }

    async fn open_link(&self, node: usize) -> lapin::Result<(Arc<Connection>, JoinSet<()>, Link)> {
        let config = &self.inner.config;
        let props =
            ConnectionProperties::default().with_connection_name(config.connection_name().into());
        let connection = Arc::new(Connection::connect(&config.urls[node], props).await?);
        let setup = connection.create_channel().await?;
        topology::declare(&setup).await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let attachments: Vec<_> = self
            .inner
            .attachments
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        let mut tasks = JoinSet::new();
        for attachment in attachments {
            let handle = attachment.attach(connection.clone()).await?;
            tasks.spawn(async move {
                // Aborting this wrapper (link rebuilt, shutdown) must stop the attachment's
                // task too; dropping a JoinHandle alone would leave it running.
                let abort = handle.abort_handle();
                let _guard = AbortOnDrop(abort);
                let _ = handle.await;
            });
        }
        let link = Link {
            publisher,
            broken: CancellationToken::new(),
            node,
        };
        let opened = self.inner.opened.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.link.send_replace(Some(link.clone()));
        info!(service = %config.service, connection = %config.connection_name(), node = %node_label(&config.urls[node]), link = opened, "connected to the broker, topology declared");
        Ok((connection, tasks, link))
    }

    /// Returns when the link must be rebuilt (or on shutdown).
    async fn serve_link(
        &self,
        connection: &Connection,
        mut tasks: JoinSet<()>,
        link: &Link,
        shutdown: &CancellationToken,
    ) -> JoinSet<()> {
        let mut events = connection.events_listener();
        let mut health = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = link.broken.cancelled() => break,
                Some(_) = tasks.join_next() => {
                    warn!(service = %self.service(), "a consumer or listener stopped");
                    break;
                }
                Some(event) = events.next() => {
                    if let lapin::Event::Error(e) = event {
                        warn!(service = %self.service(), error = %e, "broker connection error");
                        break;
                    }
                }
                _ = health.tick() => {
                    if !connection.status().connected() {
                        break;
                    }
                }
            }
        }
        tasks
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Publishes `msg` on a confirm-mode channel and waits for the confirm.
pub(crate) async fn publish_on(
    channel: &Channel,
    msg: &OutgoingMessage,
    app_id: &str,
    confirm_timeout: Duration,
) -> Result<(), PublishError> {
    let options = BasicPublishOptions {
        mandatory: msg.mandatory,
        ..Default::default()
    };
    let pending = channel
        .basic_publish(
            msg.exchange.as_str().into(),
            msg.routing_key.as_str().into(),
            options,
            &msg.body,
            msg.properties(app_id),
        )
        .await?;
    let confirmation = tokio::time::timeout(confirm_timeout, pending)
        .await
        .map_err(|_| PublishError::ConfirmTimeout(confirm_timeout))??;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable {
            exchange: msg.exchange.clone(),
            routing_key: msg.routing_key.clone(),
            reply: returned.reply_text.to_string(),
        }),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
        // The channel is in confirm mode, so this means the broker link is not what we set up.
        Confirmation::NotRequested => Err(PublishError::NotConnected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_a_cluster_of_one() {
        let urls = node_urls("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(urls, ["amqp://guest:guest@127.0.0.1:5672/%2f"]);
    }

    #[test]
    fn a_list_is_split_and_trimmed() {
        let urls =
            node_urls(" amqp://u:p@rabbit1:5672/saga , amqp://u:p@rabbit2/saga,amqps://u:p@rabbit3:5671/saga ")
                .unwrap();
        assert_eq!(
            urls,
            [
                "amqp://u:p@rabbit1:5672/saga",
                "amqp://u:p@rabbit2/saga",
                "amqps://u:p@rabbit3:5671/saga"
            ]
        );
    }

    #[test]
    fn malformed_lists_are_refused_with_the_entry() {
        assert_eq!(node_urls(""), Err(NodeListError::Empty));
        assert_eq!(node_urls("  "), Err(NodeListError::Empty));
        assert_eq!(
            node_urls("amqp://a/%2f,"),
            Err(NodeListError::EmptyEntry { position: 2 })
        );
        assert_eq!(
            node_urls("amqp://a/%2f,,amqp://b/%2f"),
            Err(NodeListError::EmptyEntry { position: 2 })
        );
        assert!(matches!(
            node_urls("amqp://a/%2f,http://b/%2f"),
            Err(NodeListError::Invalid { position: 2, .. })
        ));
        assert!(matches!(
            node_urls("rabbit1:5672"),
            Err(NodeListError::Invalid { position: 1, .. })
        ));
        assert!(matches!(
            node_urls("amqp://a:5672/one,amqp://b:5672/two"),
            Err(NodeListError::MixedVhosts { .. })
        ));
    }

    #[test]
    fn an_invalid_entry_is_named_without_its_password() {
        let err = node_urls("amqp://u:p@a/%2f,amqp://user:secret@b:99999/%2f")
            .unwrap_err()
            .to_string();
        assert!(err.contains("entry 2") && err.contains("b:99999"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn labels_and_first_node() {
        assert_eq!(node_label("amqp://u:p@rabbit1:5672/%2f"), "rabbit1:5672");
        assert_eq!(node_label("amqp://rabbit2?heartbeat=5"), "rabbit2");
        assert_eq!(node_label("amqp://u:p@w@rabbit3:1/v"), "rabbit3:1");
        assert_eq!(first_node_url(" amqp://a/v , amqp://b/v"), "amqp://a/v");
        assert_eq!(first_node_url("amqp://a/v"), "amqp://a/v");
    }

    #[test]
    fn a_config_takes_every_node() {
        let config = BrokerConfig::new("amqp://a:1/v,amqp://b:2/v,amqp://c:3/v", "orders");
        assert_eq!(config.urls.len(), 3);
        assert_eq!(BrokerConfig::new("", "orders").urls, [""]);
    }

    #[test]
    fn a_round_visits_every_node_once_from_the_start() {
        let rotation = Rotation::new(3, 1);
        assert_eq!(rotation.round().collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(Rotation::new(3, 7).round().collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(Rotation::new(1, 0).round().collect::<Vec<_>>(), [0]);
        // No node at all still yields a round of one, never a panic on `% 0`.
        assert_eq!(Rotation::new(0, 5).round().collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_lost_node_is_tried_last() {
        let mut rotation = Rotation::new(3, 0);
        rotation.lost(0);
        assert_eq!(rotation.round().collect::<Vec<_>>(), [1, 2, 0]);
        rotation.lost(2);
        assert_eq!(rotation.round().collect::<Vec<_>>(), [0, 1, 2]);
        let mut single = Rotation::new(1, 0);
        single.lost(0);
        assert_eq!(single.round().collect::<Vec<_>>(), [0]);
    }
}

/// The link against the shared broker, in a vhost of its own (the test command runs RabbitMQ
/// with its management plugin; `TEST_AMQP_BASE` and `RABBITMQ_MANAGEMENT_URL` move it).
#[cfg(test)]
mod link_tests {
    use super::*;

    /// A vhost of the test's own (testkit), reached as `host`.
    struct Vhost(testkit::Vhost);

    impl Vhost {
        async fn new(test: &str) -> Self {
            Self(
                testkit::Vhost::create(test)
                    .await
                    .expect("a vhost of the test's own"),
            )
        }

        fn url(&self, host: &str) -> String {
            self.0.url().replace("127.0.0.1", host)
        }

        async fn delete(self) {
            self.0.delete().await
        }
    }

    /// A link to `url` run in a task of its own; cancel the token and await the task to stop it.
    fn start(url: &str) -> (Broker, CancellationToken, tokio::task::JoinHandle<()>) {
        let broker = Broker::new(BrokerConfig::new(url, "link-test"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(broker.clone().run(stop.clone()));
        (broker, stop, task)
    }

    fn current(broker: &Broker) -> Option<Link> {
        broker.inner.link.borrow().clone()
    }

    fn opened(broker: &Broker) -> u64 {
        broker.inner.opened.load(Ordering::SeqCst)
    }

    async fn wait_for(what: &str, wait: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + wait;
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within {wait:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_reported_late_on_an_old_link_does_not_tear_down_the_next() {
        let vhost = Vhost::new("late-failure").await;
        let (broker, stop, task) = start(&vhost.url("127.0.0.1"));
        assert!(broker.wait_connected(Duration::from_secs(10)).await);
        let old = current(&broker).expect("a link");
        // Two publishes on the same link fail one after the other: the first ends the link,
        // the second arrives while nothing serves it (a `Notify` kept it as a permit that tore
        // down the next link at once).
        old.broken.cancel();
        old.broken.cancel();
        wait_for("the second link", Duration::from_secs(10), || {
            opened(&broker) == 2 && broker.is_connected()
        })
        .await;
        // And one more, well after the new link is up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        old.broken.cancel();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(opened(&broker), 2, "the new link was torn down");
        assert!(broker.is_connected());
        stop.cancel();
        task.await.unwrap();
        vhost.delete().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_node_in_the_list_is_passed_over_at_once() {
        let vhost = Vhost::new("dead-node").await;
        let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dead = format!("amqp://guest:guest@127.0.0.1:{dead_port}/{}", vhost.0.name);
        let live = vhost.url("127.0.0.1");
        // Whichever node the random start picks, the live one is reached in the first round.
        for _ in 0..3 {
            let (broker, stop, task) = start(&format!("{dead},{live}"));
            assert!(broker.wait_connected(Duration::from_secs(3)).await);
            assert_eq!(broker.connected_node(), Some(node_label(&live)));
            assert_eq!(opened(&broker), 1);
            stop.cancel();
            task.await.unwrap();
        }
        vhost.delete().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_link_moves_to_the_next_node_without_waiting() {
        let vhost = Vhost::new("next-node").await;
        // One broker reached under two names: two "nodes" for the rotation.
        let (a, b) = (vhost.url("127.0.0.1"), vhost.url("localhost"));
        let (broker, stop, task) = start(&format!("{a},{b}"));
        assert!(broker.wait_connected(Duration::from_secs(10)).await);
        for round in 0..3 {
            let before = broker.connected_node().expect("connected");
            tokio::time::sleep(STABLE_LINK + Duration::from_millis(200)).await;
            current(&broker).expect("a link").broken.cancel();
            let lost = Instant::now();
            wait_for("the link on the other node", Duration::from_secs(2), || {
                broker.connected_node().is_some_and(|n| n != before)
            })
            .await;
            assert!(
                lost.elapsed() < Duration::from_secs(1),
                "round {round}: took {:?}",
                lost.elapsed()
            );
        }
        stop.cancel();
        task.await.unwrap();
        vhost.delete().await;
    }
}
