//! The service's link to RabbitMQ: one named connection, kept alive by a supervisor.
//!
//! The supervisor connects, declares the topology, opens a confirm-mode publishing channel and
//! then attaches every registered [`Attachment`] (consumers, the RPC reply listener) on channels
//! of their own, with their own QoS. When anything breaks — the connection, a consumer, a
//! publish — it tears the whole link down and builds it again with a capped exponential backoff
//! (100 ms doubling to 3 s, jittered). Rebuilding from scratch re-applies topology, QoS and
//! consumers every time, which is why we do not rely on lapin's `enable_auto_recover`
//! (see docs/decisions.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use futures::future::BoxFuture;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::envelope::OutgoingMessage;
use crate::topology;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub url: String,
    /// Service name: the `app_id` of every message and the first half of the connection name.
    pub service: String,
    /// How long a publish waits for the broker's confirm.
    pub confirm_timeout: Duration,
    /// The cap of the reconnect backoff.
    pub max_reconnect_delay: Duration,
}

impl BrokerConfig {
    pub fn new(url: &str, service: &str) -> Self {
        Self {
            url: url.to_owned(),
            service: service.to_owned(),
            confirm_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(3),
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

/// A live connection and its publishing channel.
#[derive(Clone)]
struct Link {
    publisher: Channel,
    generation: u64,
}

struct Inner {
    config: BrokerConfig,
    link: watch::Sender<Option<Link>>,
    attachments: std::sync::Mutex<Vec<Arc<dyn Attachment>>>,
    broken: Notify,
    generation: AtomicU64,
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
                broken: Notify::new(),
                generation: AtomicU64::new(0),
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
                warn!(error = %e, message_id = %msg.message_id, "publishing channel failed; rebuilding the broker link");
                self.mark_broken(link.generation);
            }
            // A channel that stops confirming is wedged even if no error was reported on it.
            Err(PublishError::ConfirmTimeout(after)) => {
                warn!(?after, message_id = %msg.message_id, "no confirm in time; rebuilding the broker link");
                self.mark_broken(link.generation);
            }
            _ => {}
        }
        result
    }

    fn mark_broken(&self, generation: u64) {
        if self.inner.generation.load(Ordering::SeqCst) == generation {
            self.inner.broken.notify_one();
        }
    }

    /// Keeps the link up until `shutdown`. Run it in its own task.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut delays = self.reconnect_delays();
        while !shutdown.is_cancelled() {
            match self.open_link().await {
                Ok((connection, tasks)) => {
                    delays = self.reconnect_delays();
                    self.serve_link(&connection, tasks, &shutdown).await;
                    let reason = if shutdown.is_cancelled() {
                        "shutting down"
                    } else {
                        "reconnecting"
                    };
                    // Close the publishing channel before the connection: dropped, it would
                    // close itself while the connection closes, which lapin logs as an error.
                    if let Some(link) = self.inner.link.send_replace(None) {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            link.publisher.close(200, reason.into()),
                        )
                        .await;
                    }
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        connection.close(200, reason.into()),
                    )
                    .await;
                    if shutdown.is_cancelled() {
                        break;
                    }
                    warn!(service = %self.service(), "lost the broker connection; reconnecting");
                }
                Err(e) => {
                    warn!(service = %self.service(), error = %e, "could not connect to the broker; retrying")
                }
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
    }

    fn reconnect_delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.inner.config.max_reconnect_delay)
            .with_jitter()
            .without_max_times()
            .build()
    }

    async fn open_link(&self) -> lapin::Result<(Arc<Connection>, JoinSet<()>)> {
        let config = &self.inner.config;
        let props =
            ConnectionProperties::default().with_connection_name(config.connection_name().into());
        let connection = Arc::new(Connection::connect(&config.url, props).await?);
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
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.link.send_replace(Some(Link {
            publisher,
            generation,
        }));
        info!(service = %config.service, connection = %config.connection_name(), "connected to the broker, topology declared");
        Ok((connection, tasks))
    }

    /// Returns when the link must be rebuilt (or on shutdown).
    async fn serve_link(
        &self,
        connection: &Connection,
        mut tasks: JoinSet<()>,
        shutdown: &CancellationToken,
    ) {
        let mut events = connection.events_listener();
        let mut health = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.inner.broken.notified() => break,
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
        tasks.shutdown().await;
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
