//! A focused, repeatable measurement of the webhook-publisher alone: deliveries/s and CPU
//! seconds per delivery.
//!
//! It creates a private vhost (`TestEnv`), starts a local HTTP sink that answers 200 to every
//! webhook, starts the **release binary** of the publisher as a child process (its own
//! `DATA_DIR` in the env's temp dir, `NOTIFIER_URL` pointing at the sink), publishes `N`
//! `order.*` events into `saga.events` (all at once, or at `--rate` per second), and waits until
//! the publisher's `webhook_attempts_total{outcome="delivered"}` reaches `N`. It prints the wall
//! time, deliveries/s, the publisher's CPU seconds (`utime+stime` of `/proc/<pid>/stat`) and its
//! RSS. Then it stops the child and deletes the vhost and temp dir.
//!
//! ```sh
//! cargo build --release -p webhook-publisher --bin webhook-publisher --example delivery_bench
//! flock /tmp/bench.lock $CARGO_TARGET_DIR/release/examples/delivery_bench \
//!     $CARGO_TARGET_DIR/release/webhook-publisher 10000 [rate] [extra ENV=value ...]
//! ```

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use messaging::OutgoingMessage;
use messaging::contracts::OrderEvent;
use messaging::topology::EVENTS;
use testkit::TestEnv;
use testkit::amqp::TestClient;
use tokio::process::{Child, Command};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The whole measurement must end within this time.
const DEADLINE: Duration = Duration::from_secs(60);
/// Unconfirmed publishes in flight when publishing at full speed.
const WINDOW: usize = 256;

struct Args {
    binary: String,
    count: usize,
    rate: Option<f64>,
    extra_env: Vec<(String, String)>,
}

fn args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let binary = it
        .next()
        .context("usage: delivery_bench <publisher binary> <count> [rate|0] [ENV=value ...]")?;
    let count = it
        .next()
        .unwrap_or_else(|| "10000".into())
        .parse()
        .context("count")?;
    let rate: f64 = it
        .next()
        .unwrap_or_else(|| "0".into())
        .parse()
        .context("rate")?;
    let extra_env = it
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect::<Option<Vec<_>>>()
        .context("extra arguments must be ENV=value")?;
    Ok(Args {
        binary,
        count,
        rate: (rate > 0.0).then_some(rate),
        extra_env,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let env = TestEnv::new("whbench").await?;
    let outcome = run(&env, &args).await;
    env.cleanup().await;
    let report = outcome?;
    println!("{report}");
    Ok(())
}

/// Starts the sink: counts every POST and answers 200, after `SINK_DELAY_MS` (default 0) to
/// imitate a receiver with some latency (the notifier runs a Redis script per webhook).
async fn start_sink() -> Result<(String, Arc<AtomicUsize>)> {
    let delay: u64 = std::env::var("SINK_DELAY_MS")
        .unwrap_or_else(|_| "0".into())
        .parse()
        .context("SINK_DELAY_MS")?;
    let received = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/webhooks",
            post(move |State(n): State<Arc<AtomicUsize>>| async move {
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                n.fetch_add(1, Ordering::Relaxed);
                "{\"received\":true}"
            }),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}/webhooks"), received))
}

fn spawn_publisher(env: &TestEnv, args: &Args, sink: &str, port: u16) -> Result<Child> {
    let mut command = Command::new(&args.binary);
    command
        .env("AMQP_URL", &env.amqp_url)
        .env("DATA_DIR", env.data_dir("webhook-publisher"))
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("NOTIFIER_URL", sink)
        .env("WEBHOOK_SECRET", SECRET)
        // The bench's secrets are short test values: development rules apply.
        .env("APP_ENV", "development")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in &args.extra_env {
        command.env(k, v);
    }
    command
        .spawn()
        .with_context(|| format!("could not start {}", args.binary))
}

/// `utime + stime` of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc stat")?;
    let after_name = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .context("short /proc stat")?
            .parse::<f64>()
            .context("tick count")
    };
    // Fields 14 and 15 of stat(5); after the name, field 3 is index 0.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("read /proc status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib / 1024.0)
}

fn event(i: usize) -> Result<OutgoingMessage> {
    let order_id = format!("bench-order-{i}");
    let event = OrderEvent {
        order_id: order_id.clone(),
        product_id: "product-1".into(),
        quantity: 1,
        customer_id: Some("c1".into()),
        seller_id: Some("s1".into()),
        status: "PENDING".into(),
        reason: None,
        occurred_at: "2026-01-01T00:00:00Z".into(),
    };
    let kind = if i % 2 == 0 {
        "order.created"
    } else {
        "order.confirmed"
    };
    Ok(OutgoingMessage::json(
        EVENTS,
        kind,
        Some(&order_id),
        &event,
    )?)
}

/// Publishes `count` events, at most [`WINDOW`] unconfirmed, paced to `rate` if given.
async fn publish_all(client: &TestClient, count: usize, rate: Option<f64>) -> Result<()> {
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..count {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let msg = event(i)?;
        let confirm = client
            .channel
            .basic_publish(
                EVENTS.into(),
                msg.routing_key.as_str().into(),
                Default::default(),
                &msg.body,
                msg.properties("bench"),
            )
            .await?;
        pending.push_back(confirm);
        if pending.len() >= WINDOW {
            if let Some(confirm) = pending.pop_front() {
                confirm.await?;
            }
        }
    }
    for confirm in pending {
        confirm.await?;
    }
    Ok(())
}

/// With `RSS_EVERY_S` set, prints the publisher's RSS at that interval (to see growth over a
/// longer run; nothing scrapes `/metrics` meanwhile, as in the soak of docs/benchmarks.md).
async fn sample_rss(pid: u32, t0: Instant) {
    let Some(every) = std::env::var("RSS_EVERY_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    loop {
        tokio::time::sleep(Duration::from_secs(every)).await;
        if let Ok(rss) = rss_mib(pid) {
            eprintln!("t={:.0}s rss_mib={rss:.1}", t0.elapsed().as_secs_f64());
        }
    }
}

/// SIGTERM, then SIGKILL if the publisher is still there after 10 s.
async fn stop(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

async fn delivered_metric(http: &reqwest::Client, base: &str) -> Result<usize> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let line = text
        .lines()
        .find(|l| l.starts_with("webhook_attempts_total{outcome=\"delivered\"}"));
    Ok(line
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as usize))
}

async fn run(env: &TestEnv, args: &Args) -> Result<String> {
    let (sink, received) = start_sink().await?;
    let port = testkit::ports::free_port()?;
    let child = spawn_publisher(env, args, &sink, port)?;
    let pid = child.id().context("the publisher exited at once")?;
    let base = format!("http://127.0.0.1:{port}");
    testkit::wait_ready(&base, Duration::from_secs(20)).await?;
    let client = TestClient::connect(&env.amqp_url).await?;
    let http = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu0, t0) = (cpu_seconds(pid)?, Instant::now());
    let sampler = tokio::spawn(sample_rss(pid, t0));
    publish_all(&client, args.count, args.rate).await?;
    let published = t0.elapsed();
    while received.load(Ordering::Relaxed) < args.count {
        if t0.elapsed() > DEADLINE {
            bail!(
                "only {} of {} delivered in time",
                received.load(Ordering::Relaxed),
                args.count
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let received_at = t0.elapsed();
    while delivered_metric(&http, &base).await? < args.count {
        if t0.elapsed() > DEADLINE {
            bail!("the publisher never recorded every delivery");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (cpu, wall) = (cpu_seconds(pid)? - cpu0, t0.elapsed());
    let rss = rss_mib(pid)?;
    sampler.abort();
    stop(child).await;
    let n = args.count as f64;
    Ok(format!(
        "count={} rate={} published_in={:.2}s all_received={:.2}s all_settled={:.2}s deliveries_per_s={:.0} cpu_s={:.2} cpu_s_per_1000={:.3} cpu_pct={:.0} rss_mib={:.1}",
        args.count,
        args.rate.map_or("burst".to_owned(), |r| r.to_string()),
        published.as_secs_f64(),
        received_at.as_secs_f64(),
        wall.as_secs_f64(),
        n / wall.as_secs_f64(),
        cpu,
        cpu / n * 1000.0,
        cpu / wall.as_secs_f64() * 100.0,
        rss
    ))
}
