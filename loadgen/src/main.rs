//! `loadgen`: places orders through the gateway at a fixed rate (open loop) or a fixed
//! concurrency (closed loop) and reports throughput, latency percentiles, errors and the CPU
//! and memory of every service process; `loadgen ceiling` measures the broker alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use loadgen::events::{self, Tracker};
use loadgen::procstat::{self, Watched};
use loadgen::recorder::{Recorder, Snapshot};
use loadgen::report::{ProcessUse, RunReport, Webhooks};
use loadgen::series;
use loadgen::target::Target;
use loadgen::{MESSAGES_PER_ORDER, ceiling, closed_loop, open_loop, webhooks};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for the saga: open loop (--rate), closed loop (--concurrency), or the broker ceiling (`loadgen ceiling`)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Persistent messages through quorum queues with confirms and manual acks: what the
    /// broker alone carries on this machine.
    Ceiling(CeilingArgs),
}

#[derive(Args)]
struct LoadArgs {
    /// Gateway base URL; several separated by commas (instances of the gateway): orders go to
    /// each in turn.
    #[arg(long, default_value = "http://127.0.0.1:3000", env = "LOADGEN_GATEWAY")]
    gateway: String,
    /// Broker URL including the vhost the services use (for the terminal events).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// HS256 secret the gateway verifies tokens with.
    #[arg(long, env = "JWT_SECRET")]
    jwt_secret: Option<String>,
    /// Open loop: orders started per second, on schedule, whatever the system does.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: clients that each place the next order when the last POST answered.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Length of the load phase, in seconds.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// After the load phase, how long to wait for outstanding terminal events, in seconds.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// Timeout of one POST, in seconds.
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// Do not send an Idempotency-Key header (by default every POST carries a fresh one).
    #[arg(long)]
    no_idempotency_key: bool,
    /// Products to create and order in turn (one: every reserve takes the same row's lock).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    products: u16,
    /// Processes to watch as `name=pid,…`; by default the service binaries are found by name.
    #[arg(long)]
    pids: Option<String>,
    /// The webhook-publishers' /metrics (comma-separated, one per instance), to count webhook
    /// deliveries.
    #[arg(long)]
    webhook_metrics: Option<String>,
    /// Print the RSS of every watched process every this many seconds during the load phase.
    #[arg(long)]
    mem_every: Option<f64>,
    /// Print count, p50, p99 and max of the POST → terminal latencies of every interval of this
    /// many seconds during the load phase (`series t=… n=… p50=… p99=… max=…`).
    #[arg(long)]
    series_every: Option<f64>,
    /// Title of the report.
    #[arg(long)]
    title: Option<String>,
}

#[derive(Args)]
struct CeilingArgs {
    /// Broker URL including the vhost to use.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Quorum queues loaded in parallel (the saga has four work queues: new orders, orders,
    /// products, webhooks).
    #[arg(long, default_value_t = 4)]
    queues: usize,
    /// Body size in bytes (about the mean body of the six messages of an order).
    #[arg(long, default_value_t = 180)]
    size: usize,
    /// Unconfirmed publishes in flight per queue (an outbox relay keeps up to 512 outstanding).
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Consumer prefetch (as the saga's: ORDERS_PREFETCH / PRODUCTS_PREFETCH default to 64).
    #[arg(long, default_value_t = 64)]
    prefetch: u16,
    /// Published but unconsumed messages per queue before the publisher waits.
    #[arg(long, default_value_t = 1000)]
    backlog: usize,
    /// Ack every message on its own, as the services did before they coalesced acks.
    #[arg(long)]
    single_acks: bool,
    /// Measured time, in seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Warm-up excluded from the rate, in seconds.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Sustained orders/s measured end to end, to print the efficiency ratio.
    #[arg(long)]
    orders_per_sec: Option<f64>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn watched(pids: Option<&str>) -> Result<Vec<Watched>> {
    match pids {
        Some(spec) => Ok(procstat::parse_pids(spec)?),
        None => Ok(procstat::find_by_name(&procstat::SERVICE_NAMES)),
    }
}

fn sample_all(list: &[Watched]) -> Vec<Option<procstat::Sample>> {
    list.iter().map(|w| procstat::sample(w.pid).ok()).collect()
}

/// A load run: listen to the terminal events, place the load while sampling the processes,
/// wait for the outstanding orders, count the webhooks, print the report.
async fn run_load(args: LoadArgs) -> Result<()> {
    let (mode, offered) = offered(&args)?;
    let Some(jwt_secret) = args.jwt_secret.as_deref() else {
        bail!("give --jwt-secret (or JWT_SECRET): the gateway's token secret");
    };
    let processes = watched(args.pids.as_deref())?;
    let recorder = Arc::new(Recorder::new());
    let tracker = Arc::new(Tracker::default());
    // A cluster's node list: the first node serves the listener.
    let amqp_url = messaging::broker::first_node_url(&args.amqp_url);
    let _listener = events::listen(amqp_url, tracker.clone(), recorder.clone())
        .await
        .context("listening to saga.events")?;
    let target = Target::prepare(
        &args.gateway,
        jwt_secret,
        1_000_000_000,
        usize::from(args.products),
        !args.no_idempotency_key,
        secs(args.request_timeout),
    )
    .await
    .context("preparing the target (token, product)")?;
    // Deliveries are counted from the publishers' counter: before the load, at its end and
    // after the drain.
    let webhooks_before = match args.webhook_metrics.as_deref() {
        Some(url) => Some((url, webhooks::delivered(&target.http, url).await?)),
        None => None,
    };

    let placed = place_load(&args, &target, &processes, &recorder, &tracker).await;
    let webhooks_at_load_end = match webhooks_before {
        Some((url, before)) => {
            let during_load = webhooks::delivered(&target.http, url).await? - before;
            Some((url, before, during_load))
        }
        None => None,
    };
    let drain_end = drain(&tracker, secs(args.drain)).await;
    let webhooks = match webhooks_at_load_end {
        Some((url, before, during_load)) => {
            // Deliveries trail the orders; give them the drain time too.
            let wait_until = drain_end.min(Instant::now() + Duration::from_secs(5));
            tokio::time::sleep_until(wait_until.into()).await;
            Some(Webhooks {
                during_load,
                in_all: webhooks::delivered(&target.http, url).await? - before,
                over: placed.started.elapsed(),
            })
        }
        None => None,
    };
    let final_ = recorder.snapshot();
    let outstanding = tracker.outstanding();
    let drained_after = (outstanding == 0).then(|| {
        final_.last_terminal.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(placed.ended)
        })
    });
    let report = RunReport {
        title: args
            .title
            .unwrap_or_else(|| format!("{mode}: {offered} for {:.0} s", args.duration)),
        offered,
        load_time: placed.load_time,
        at_load_end: placed.at_load_end,
        final_: final_.clone(),
        completion_span: final_
            .last_terminal
            .map(|t| t.saturating_duration_since(placed.started)),
        attempted: placed.attempted,
        outstanding,
        drained_after,
        processes: processes
            .into_iter()
            .zip(placed.before.into_iter().zip(placed.after))
            .map(|(watched, (before, after))| ProcessUse {
                watched,
                before,
                after,
            })
            .collect(),
        webhooks,
    };
    println!("{}", report.render());
    Ok(())
}

/// The mode of the run and the load it offers, from `--rate` or `--concurrency`.
fn offered(args: &LoadArgs) -> Result<(&'static str, String)> {
    Ok(match (args.rate, args.concurrency) {
        (Some(rate), None) if rate > 0.0 => ("open loop", format!("{rate} orders/s (open loop)")),
        (None, Some(c)) if c > 0 => ("closed loop", format!("{c} clients (closed loop)")),
        _ => bail!("give either --rate N (open loop) or --concurrency N (closed loop)"),
    })
}

/// The load phase as it went.
struct Placed {
    attempted: usize,
    started: Instant,
    load_time: Duration,
    ended: Instant,
    /// The watched processes before and after the load.
    before: Vec<Option<procstat::Sample>>,
    after: Vec<Option<procstat::Sample>>,
    at_load_end: Snapshot,
}

/// Places the load for `--duration` (open or closed loop), sampling the processes before and
/// after and, when asked, printing their memory and the latency series as it runs.
async fn place_load(
    args: &LoadArgs,
    target: &Target,
    processes: &[Watched],
    recorder: &Arc<Recorder>,
    tracker: &Arc<Tracker>,
) -> Placed {
    let duration = secs(args.duration);
    let mem_task = args
        .mem_every
        .map(|every| print_memory(processes.to_vec(), secs(every)));
    let series_task = args
        .series_every
        .map(|every| series::spawn(recorder.clone(), secs(every)));

    let before = sample_all(processes);
    let started = Instant::now();
    let attempted = match (args.rate, args.concurrency) {
        (Some(rate), _) => open_loop::run(target, rate, duration, recorder, tracker).await,
        (_, Some(c)) => closed_loop::run(target, c, duration, recorder, tracker).await,
        _ => 0,
    };
    let load_time = started.elapsed();
    let ended = Instant::now();
    let after = sample_all(processes);
    let at_load_end = recorder.snapshot();
    for task in [mem_task, series_task].into_iter().flatten() {
        task.abort();
    }
    Placed {
        attempted,
        started,
        load_time,
        ended,
        before,
        after,
        at_load_end,
    }
}

/// Prints the RSS of every process in `list` every `every` until aborted.
fn print_memory(list: Vec<Watched>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let row: Vec<String> = list
                .iter()
                .map(|w| match procstat::sample(w.pid) {
                    Ok(s) => format!("{}={:.1}MiB", w.name, s.rss_kb as f64 / 1024.0),
                    Err(_) => format!("{}=gone", w.name),
                })
                .collect();
            println!(
                "mem t={:.0}s {}",
                start.elapsed().as_secs_f64(),
                row.join(" ")
            );
        }
    })
}

/// Waits until no order is outstanding, at most `drain`; returns when the drain time ends.
async fn drain(tracker: &Tracker, drain: Duration) -> Instant {
    let drain_end = Instant::now() + drain;
    while tracker.outstanding() > 0 && Instant::now() < drain_end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drain_end
}

async fn run_ceiling(args: CeilingArgs) -> Result<()> {
    let settings = ceiling::Settings {
        amqp_url: messaging::broker::first_node_url(&args.amqp_url).to_owned(),
        queues: args.queues,
        body_size: args.size,
        window: args.window,
        prefetch: args.prefetch,
        duration: secs(args.duration),
        warmup: secs(args.warmup),
        backlog: args.backlog,
        coalesce_acks: !args.single_acks,
    };
    let outcome = ceiling::run(&settings).await.context("ceiling run")?;
    let per_order = MESSAGES_PER_ORDER.len() as f64;
    println!("### broker ceiling\n");
    println!(
        "{} quorum queue(s), {} B persistent bodies, confirm window {} per queue, at most {} unconsumed per queue, prefetch {}, manual acks ({}), measured {:.1} s after {:.0} s warm-up\n",
        settings.queues,
        settings.body_size,
        settings.window,
        settings.backlog,
        settings.prefetch,
        if settings.coalesce_acks {
            "coalesced: one multiple=true ack for the deliveries at hand, as the services do"
        } else {
            "one per message"
        },
        outcome.measured_for.as_secs_f64(),
        settings.warmup.as_secs_f64()
    );
    println!("| measure | value |\n|---|---|");
    println!(
        "| published and confirmed | {:.0} msgs/s |",
        outcome.confirmed_per_sec
    );
    println!(
        "| consumed and acked (the ceiling) | {:.0} msgs/s |",
        outcome.consumed_per_sec
    );
    println!(
        "| not confirmed (nack, or cut off when the run stopped) | {} |",
        outcome.nacked
    );
    println!("| broker messages per order | {per_order:.0} |");
    println!(
        "| orders/s the broker alone could carry | {:.0} |",
        outcome.consumed_per_sec / per_order
    );
    if let Some(orders) = args.orders_per_sec {
        println!(
            "| efficiency: {orders:.0} orders/s ÷ ({:.0} ÷ {per_order:.0}) | **{:.2}** |",
            outcome.consumed_per_sec,
            orders / (outcome.consumed_per_sec / per_order)
        );
    }
    println!("\nMessages of one confirmed order:\n");
    println!("| message | path |\n|---|---|");
    for hop in MESSAGES_PER_ORDER {
        println!(
            "| `{}` | {} → {} → {} |",
            hop.key, hop.from, hop.exchange, hop.queue
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Ceiling(args)) => run_ceiling(args).await,
        None => run_load(cli.load).await,
    }
}
