//! Raw AMQP access for tests: publish what a misbehaving peer would send, count and drain queues.
//!
//! Raw on purpose: the test kit knows nothing of the services' envelope, so a test that sends a
//! well-formed message passes `msg.properties(..)` of its `OutgoingMessage` to
//! [`TestClient::publish`].

use anyhow::{Context, Result};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub struct TestClient {
    _connection: Connection,
    pub channel: Channel,
}

impl TestClient {
    pub async fn connect(amqp_url: &str) -> Result<Self> {
        let connection = Connection::connect(
            amqp_url,
            ConnectionProperties::default().with_connection_name("test-client".into()),
        )
        .await
        .context("connect test client")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            _connection: connection,
            channel,
        })
    }

    /// Publishes raw bytes with the given properties and waits for the confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<()> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await?
            .await?;
        anyhow::ensure!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "test publish to {exchange}/{routing_key} not routed"
        );
        Ok(())
    }

    /// Ready messages in `queue` (exact, unlike the management API's sampled counts).
    pub async fn ready_count(&self, queue: &str) -> Result<u32> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        Ok(self
            .channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?
            .message_count())
    }

    /// Takes every ready message out of `queue` (acking them) and returns them.
    pub async fn drain(&self, queue: &str) -> Result<Vec<lapin::message::BasicGetMessage>> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await?
        {
            out.push(msg);
        }
        Ok(out)
    }
}
