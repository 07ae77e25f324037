//! Reading and replaying dead letters: what an operator does with a `<queue>.dlq`.
//!
//! Listing takes every message out of the DLQ without acking it and then gives them all back
//! (nack + requeue), the way the management UI's "Get messages" does. Replaying republishes the
//! chosen ones to the queue they died in — straight to that queue through the default exchange,
//! with their properties and message id unchanged, and waits for the confirm before acking the
//! dead letter, so a message is never in neither queue.

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::topology::dlq;

/// Stop after this many messages so a huge DLQ cannot exhaust memory.
const MAX_MESSAGES: usize = 10_000;

/// One dead letter as an operator sees it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub kind: Option<String>,
    pub correlation_id: Option<String>,
    /// `rejected`, `expired`, `maxlen` or `delivery_limit`, from the first `x-death` entry.
    pub reason: String,
    /// The queue it died in.
    pub queue: String,
    /// How many times it died there.
    pub count: i64,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("republishing {message_id:?} to {queue} was not confirmed")]
    NotConfirmed {
        message_id: Option<String>,
        queue: String,
    },
}

/// Lists the dead letters of `work_queue` (its `<work_queue>.dlq`), leaving them in place.
pub async fn list(channel: &Channel, work_queue: &str) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let taken = take_all(channel, &dlq(work_queue)).await?;
    let letters = taken.iter().map(describe).collect();
    give_back(&taken).await?;
    Ok(letters)
}

/// Republishes the dead letters of `work_queue` that `choose` picks to the queue they died in;
/// returns how many. The channel must be in confirm mode.
pub async fn replay(
    channel: &Channel,
    work_queue: &str,
    choose: impl Fn(&DeadLetter) -> bool,
) -> Result<usize, DeadLetterError> {
    let taken = take_all(channel, &dlq(work_queue)).await?;
    let mut replayed = 0;
    let mut keep = Vec::new();
    for message in taken {
        let letter = describe(&message);
        if !choose(&letter) {
            keep.push(message);
            continue;
        }
        let props = without_delivery_count(&message.delivery.properties);
        let confirm = channel
            .basic_publish(
                "".into(),
                letter.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &message.delivery.data,
                props,
            )
            .await?
            .await?;
        if !matches!(confirm, Confirmation::Ack(None)) {
            keep.push(message);
            give_back(&keep).await?;
            return Err(DeadLetterError::NotConfirmed {
                message_id: letter.message_id,
                queue: letter.queue,
            });
        }
        message.delivery.ack(BasicAckOptions::default()).await?;
        replayed += 1;
    }
    give_back(&keep).await?;
    Ok(replayed)
}

async fn take_all(channel: &Channel, queue: &str) -> Result<Vec<BasicGetMessage>, DeadLetterError> {
    let mut taken = Vec::new();
    while taken.len() < MAX_MESSAGES {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        {
            Some(message) => taken.push(message),
            None => break,
        }
    }
    Ok(taken)
}

async fn give_back(messages: &[BasicGetMessage]) -> Result<(), DeadLetterError> {
    for message in messages {
        message
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await?;
    }
    Ok(())
}

fn describe(message: &BasicGetMessage) -> DeadLetter {
    let props = &message.delivery.properties;
    let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.to_string());
    let death = first_death(props);
    let field = |name: &str| death.as_ref().and_then(|d| d.inner().get(name).cloned());
    let as_text = |v: Option<AMQPValue>| match v {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        _ => String::new(),
    };
    let count = match field("count") {
        Some(AMQPValue::LongLongInt(n)) => n,
        Some(AMQPValue::LongInt(n)) => i64::from(n),
        _ => 0,
    };
    let body = String::from_utf8_lossy(&message.delivery.data);
    DeadLetter {
        message_id: text(props.message_id()),
        kind: text(props.kind()),
        correlation_id: text(props.correlation_id()),
        reason: as_text(field("reason")),
        queue: as_text(field("queue")),
        count,
        body: body.chars().take(200).collect(),
    }
}

fn first_death(props: &BasicProperties) -> Option<FieldTable> {
    match props.headers().as_ref()?.inner().get("x-death")? {
        AMQPValue::FieldArray(deaths) => match deaths.as_slice().first()? {
            AMQPValue::FieldTable(death) => Some(death.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The queue counts deliveries again from zero for the replayed copy.
fn without_delivery_count(props: &BasicProperties) -> BasicProperties {
    let mut headers = props
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    headers.remove("x-delivery-count");
    props.clone().with_headers(FieldTable::from(headers))
}
