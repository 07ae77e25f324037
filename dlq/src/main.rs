//! `dlq`: list dead letters with their death reason, and move chosen ones back to the queue they
//! died in, keeping their message id.
//!
//! ```sh
//! dlq list                                  # every DLQ
//! dlq list --queue orders_queue
//! dlq replay --queue orders_queue --id 01a2… --id 01a3…
//! dlq replay --queue products_queue --all
//! ```

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use lapin::ConnectionProperties;
use lapin::options::ConfirmSelectOptions;
use messaging::deadletter;
use messaging::topology::WORK_QUEUES;

#[derive(Parser)]
#[command(about = "List and replay dead letters of the saga's work queues")]
struct Cli {
    /// The broker (the vhost is part of the URL); a cluster's nodes comma-separated, the first
    /// that answers is used.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the dead letters (they stay where they are).
    List {
        /// A work queue (its `.dlq` is read); all of them when omitted.
        #[arg(long)]
        queue: Vec<String>,
    },
    /// Republish dead letters to the queue they died in and remove them from the DLQ.
    Replay {
        /// The work queue whose `.dlq` to replay from.
        #[arg(long)]
        queue: String,
        /// Message ids to replay.
        #[arg(long)]
        id: Vec<String>,
        /// Replay every dead letter of the queue.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let props = ConnectionProperties::default()
        .with_connection_name(format!("dlq@{}", messaging::config::hostname()).into());
    let nodes = messaging::broker::node_urls(&cli.amqp_url).context("AMQP_URL / --amqp-url")?;
    let connection = messaging::broker::connect_any(&nodes, props)
        .await
        .context("connect to the broker")?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    match cli.command {
        Command::List { queue } => {
            let queues = if queue.is_empty() {
                WORK_QUEUES.iter().map(|q| q.to_string()).collect()
            } else {
                queue
            };
            for queue in queues {
                let letters = deadletter::list(&channel, &queue).await?;
                println!("{queue}.dlq: {} message(s)", letters.len());
                for l in letters {
                    println!(
                        "  {}  type={}  order={}  reason={}  died in {} ×{}  body={}",
                        l.message_id.as_deref().unwrap_or("(no id)"),
                        l.kind.as_deref().unwrap_or("-"),
                        l.correlation_id.as_deref().unwrap_or("-"),
                        l.reason,
                        l.queue,
                        l.count,
                        l.body
                    );
                }
            }
        }
        Command::Replay { queue, id, all } => {
            if !all && id.is_empty() {
                bail!("say which messages: --id <message id> (repeatable) or --all");
            }
            let replayed = deadletter::replay(&channel, &queue, |l| {
                all || l.message_id.as_ref().is_some_and(|m| id.contains(m))
            })
            .await?;
            println!("replayed {replayed} message(s) from {queue}.dlq to {queue}");
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
