//! `mysimbdp-bench-stream`: near-realtime ingestion through the running platform beside the raw
//! rate of the same queue and store on the same messages, measured in the same run:
//!
//! 1. **HTTP → queue**: client1 messages (JSON, ~270 bytes) posted as NDJSON requests by
//!    several clients at once, acknowledged messages/s; against the same messages produced
//!    straight to the same queue: `rdkafka` with the platform's producer settings (every message
//!    sent, then every delivery awaited), or SQLite appends into tables of the shape of the
//!    embedded queue's segments, with its pragmas (one fsynced transaction per request's worth).
//! 2. **topic → store**: an instance started on the topic the pass filled, rows/s from its
//!    first batch to its last (its own counters); against the same rows (wrangled in-process by
//!    client1's own crate) inserted straight into the same store.
//! 3. **latency**: at half the sustained rate (the lower of the two platform rates) posted to
//!    client1 with one instance running, probes posted one at a time to client2 (its own
//!    stream plugin) and polled through the API (`.../count`) until their row is readable:
//!    POST to readable, p50/p99. Beside it, client1's instance's own figure (the mean time from
//!    a message's acceptance to its rows being durable, per batch).
//!
//! Each pass has a warm-up of the same kind first; rounds alternate which side runs first.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/mysimbdp-bench-stream --queue embedded
//! scripts/services.sh start kafka
//! target/release/mysimbdp-bench-stream --queue kafka --kafka 127.0.0.1:9092
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use datagen::{Shape, Spec};
use mysimbdp::queue::KafkaQueueConfig;
use mysimbdp_bench::{embedded, rows};
use mysimbdp_tests::platform::{ADMIN_TOKEN, Backend, Client, Platform, QueueBackend, TenantSpec};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

const NDJSON: &str = "application/x-ndjson";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum QueueArg {
    Embedded,
    Kafka,
}

/// Near-realtime ingestion benchmark.
#[derive(Parser)]
struct Args {
    /// Which queue (the store is the embedded default).
    #[arg(long, value_enum)]
    queue: QueueArg,
    /// The Kafka broker, for `--queue kafka`.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka: String,
    /// Messages per measured round.
    #[arg(long, default_value_t = 500_000)]
    messages: u64,
    /// Messages of each side's warm-up.
    #[arg(long, default_value_t = 200_000)]
    warmup: u64,
    /// Measured rounds.
    #[arg(long, default_value_t = 2)]
    rounds: u64,
    /// Clients posting at once.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Messages per request.
    #[arg(long, default_value_t = 1000)]
    per_request: usize,
    /// Extra `mysimbdp.toml` lines for the platform (`[stream]` settings, say).
    #[arg(long, default_value = "")]
    platform_config: String,
    /// How long the latency pass runs, in seconds.
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
}

/// Partitions of the tenant's topic (the platform's default) and of the baseline's.
const PARTITIONS: u32 = 4;

fn messages(count: u64, seed: u64) -> Vec<Vec<u8>> {
    Spec::rows(Shape::Client1JsonLines, count)
        .with_seed(seed)
        .to_vec()
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn bodies(messages: &[Vec<u8>], per_request: usize) -> Vec<Vec<u8>> {
    messages.chunks(per_request).map(|chunk| chunk.join(&b'\n')).collect()
}

fn rate(count: u64, seconds: f64) -> f64 {
    count as f64 / seconds
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.queue == QueueArg::Kafka {
        // SAFETY: set before any other thread exists; the harness reads it to configure the platform.
        unsafe { std::env::set_var("MYSIMBDP_TEST_KAFKA", &args.kafka) };
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let work = tempfile::Builder::new().prefix("mysimbdp-bench-stream-").tempdir()?;
    let queue = match args.queue {
        QueueArg::Embedded => QueueBackend::Embedded,
        QueueArg::Kafka => QueueBackend::Kafka,
    };
    // client1 starts with no instance (the HTTP pass only fills its topic) and the bench alone
    // starts and stops its instances (the monitor would start one at the first message);
    // client2 carries the latency probes.
    let client1 = TenantSpec::new("client1", &["csv"])
        .with("max_messages_per_second", 100_000_000)
        .with("min_stream_instances", 0)
        .with("autoscale", false);
    let client2 = TenantSpec::new("client2", &["txt"]);
    let platform = Platform::start(
        Backend::Embedded,
        &[client1.clone(), client2.clone()],
        &format!("{}\n{}\n", queue.config(), args.platform_config.replace("\\n", "\n")),
    );
    for tenant in ["client1", "client2"] {
        let name = format!("clientstreamingestapp_{tenant}");
        platform.install_plugin(&name, &format!("lib{name}.so"));
    }
    wait_for_plugins(&platform)?;
    let client = platform.client();
    println!(
        "# mysimbdp-bench-stream: queue {}, {} client1 messages per round, {} rounds, {} clients × {} messages per request",
        match args.queue {
            QueueArg::Embedded => "embedded (SQLite)",
            QueueArg::Kafka => "kafka",
        },
        args.messages,
        args.rounds,
        args.clients,
        args.per_request
    );

    let mut raw_queue = RawQueue::new(args.queue, &args.kafka, work.path(), &runtime)?;
    let raw_store = work.path().join("raw-store");
    // Warm-ups of every side.
    let warm = messages(args.warmup, 1000);
    raw_queue.produce(&runtime, &warm, args.per_request)?;
    post_all(&client, &client1, &bodies(&warm, args.per_request), args.clients)?;
    drain(&platform, &client1, warm.len() as u64)?;
    runtime.block_on(embedded::raw_inserts(&raw_store, &rows::client1_messages(&warm)?, 2000))?;
    drop(warm);

    let mut totals = Totals::default();
    for round in 0..args.rounds {
        let batch = messages(args.messages, round + 1);
        let count = batch.len() as u64;
        let request_bodies = bodies(&batch, args.per_request);
        let data = rows::client1_messages(&batch)?;
        let platform_first = round % 2 == 1;
        let mut http = None;
        let mut store = None;
        if platform_first {
            http = Some(post_all(&client, &client1, &request_bodies, args.clients)?);
            store = Some(drain(&platform, &client1, count)?);
        }
        let raw_produce = raw_queue.produce(&runtime, &batch, args.per_request)?;
        let raw_insert = runtime.block_on(embedded::raw_inserts(&raw_store, &data, 2000))?;
        if !platform_first {
            http = Some(post_all(&client, &client1, &request_bodies, args.clients)?);
            store = Some(drain(&platform, &client1, count)?);
        }
        let (http, store) = (http.expect("ran"), store.expect("ran"));
        let order = if platform_first { " (platform first)" } else { "" };
        let produce_rate = rate(count, raw_produce.as_secs_f64());
        let http_rate = rate(count, http.as_secs_f64());
        println!(
            "round {round}{order}: HTTP → queue {http_rate:>9.0} msg/s   {:<28} {produce_rate:>9.0} msg/s   ratio {:.2}",
            raw_queue.describe(),
            http_rate / produce_rate
        );
        let insert_rate = rate(count, raw_insert.as_secs_f64());
        println!(
            "round {round}{order}: topic → store {:>9.0} rows/s  {:<28} {insert_rate:>9.0} rows/s  ratio {:.2}  (platform CPU {:.1} µs/row, {:.2} cores)",
            store.rows_per_second,
            "raw rusqlite inserts",
            store.rows_per_second / insert_rate,
            store.cpu_us_per_row,
            store.cpu_us_per_row * store.rows_per_second / 1e6
        );
        totals.add(count, http, raw_produce, store, raw_insert);
    }
    let http_rate = rate(totals.messages, totals.http.as_secs_f64());
    let produce_rate = rate(totals.messages, totals.raw_produce.as_secs_f64());
    let store_rate = rate(totals.store_rows, totals.store_seconds);
    let insert_rate = rate(totals.messages, totals.raw_insert.as_secs_f64());
    println!(
        "# overall: HTTP → queue {http_rate:.0} msg/s vs {produce_rate:.0} ({}): ratio {:.2}; topic → store {store_rate:.0} rows/s vs {insert_rate:.0} (raw inserts): ratio {:.2}",
        raw_queue.describe(),
        http_rate / produce_rate,
        store_rate / insert_rate
    );

    let sustained = http_rate.min(store_rate);
    latency(
        &platform,
        &client,
        &client1,
        &client2,
        sustained / 2.0,
        Duration::from_secs(args.latency_seconds),
    )?;
    Ok(())
}

#[derive(Default)]
struct Totals {
    messages: u64,
    http: Duration,
    raw_produce: Duration,
    store_rows: u64,
    store_seconds: f64,
    raw_insert: Duration,
}

impl Totals {
    fn add(&mut self, count: u64, http: Duration, raw_produce: Duration, store: Drained, raw_insert: Duration) {
        self.messages += count;
        self.http += http;
        self.raw_produce += raw_produce;
        self.store_rows += store.rows;
        self.store_seconds += store.seconds;
        self.raw_insert += raw_insert;
    }
}

fn wait_for_plugins(platform: &Platform) -> anyhow::Result<()> {
    let loaded = mysimbdp_tests::wait_until(Duration::from_secs(30), || {
        ["client1", "client2"].iter().all(|tenant| {
            let (_, stats) = platform.get(&format!("/v1/tenants/{tenant}/stats"), &format!("{tenant}-token"));
            stats["plugins"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["kind"] == "stream" && p["version"].is_object()))
        })
    });
    anyhow::ensure!(loaded, "the stream plugins did not load: {}", platform.tail_log());
    Ok(())
}

/// Posts every body, `clients` at a time, each until acknowledged; returns the wall time.
fn post_all(client: &Client, tenant: &TenantSpec, bodies: &[Vec<u8>], clients: usize) -> anyhow::Result<Duration> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                        loop {
                            match client.post_messages(&tenant.name, &tenant.token(), NDJSON, body) {
                                Ok((202, _, _)) => break,
                                Ok((429 | 503, _, retry_after)) => {
                                    std::thread::sleep(Duration::from_secs(retry_after.unwrap_or(1)));
                                }
                                Ok((status, answer, _)) => anyhow::bail!("a post got {status}: {answer}"),
                                Err(e) => anyhow::bail!("a post got no answer: {e}"),
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow::anyhow!("a poster panicked"))?)
    })?;
    Ok(started.elapsed())
}

fn admin(platform: &Platform, method: &str, path: &str) -> (u16, Value) {
    let (status, body, _) = platform.request(method, path, ADMIN_TOKEN, b"");
    (status, body)
}

fn instance(platform: &Platform, tenant: &TenantSpec, id: &str) -> Value {
    let (_, body) = platform.get(
        &format!("/v1/tenants/{}/stream/instances", tenant.name),
        &tenant.token(),
    );
    body["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["instance_id"] == id).cloned())
        .unwrap_or(Value::Null)
}

/// What an instance did draining a topic.
struct Drained {
    rows: u64,
    seconds: f64,
    rows_per_second: f64,
    /// The platform's CPU per row over the same span, µs.
    cpu_us_per_row: f64,
}

/// Starts an instance on the tenant's topic, times it from its first batch until it has
/// stored `count` rows, and stops it.
fn drain(platform: &Platform, tenant: &TenantSpec, count: u64) -> anyhow::Result<Drained> {
    let path = format!("/v1/tenants/{}/stream/instances", tenant.name);
    let (status, body) = admin(platform, "POST", &path);
    anyhow::ensure!(status == 201, "starting an instance: {status} {body}");
    let id = body["instance_id"].as_str().context("an instance id")?.to_string();
    let deadline = Instant::now() + Duration::from_secs(3600);
    let pid: u32 = platform.pid().parse()?;
    let mut first: Option<(Instant, u64, Duration)> = None;
    let (finished, rows) = loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the instance never stored the rows: {}",
            platform.tail_log()
        );
        let status = instance(platform, tenant, &id);
        let rows = status["rows"].as_u64().unwrap_or(0);
        let now = Instant::now();
        if rows > 0 && first.is_none() {
            first = Some((now, rows, mysimbdp_bench::cpu::of_process(pid).unwrap_or_default()));
        }
        if rows >= count {
            break (now, rows);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let cpu_at_end = mysimbdp_bench::cpu::of_process(pid).unwrap_or_default();
    let (started, at_start, cpu_at_start) = first.context("a first batch")?;
    let (status, body) = admin(platform, "DELETE", &format!("{path}/{id}"));
    anyhow::ensure!(status == 204, "stopping the instance: {status} {body}");
    anyhow::ensure!(rows == count, "the instance stored {rows} rows of {count}");
    let seconds = finished.duration_since(started).as_secs_f64();
    Ok(Drained {
        rows: rows - at_start,
        seconds,
        rows_per_second: (rows - at_start) as f64 / seconds,
        cpu_us_per_row: cpu_at_end.saturating_sub(cpu_at_start).as_secs_f64() * 1e6 / (rows - at_start).max(1) as f64,
    })
}

/// The raw queue side: the same messages produced straight to the same kind of queue.
enum RawQueue {
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
    Sqlite {
        connection: rusqlite::Connection,
        next_offset: Vec<i64>,
    },
}

impl RawQueue {
    fn new(queue: QueueArg, brokers: &str, work: &Path, runtime: &tokio::runtime::Runtime) -> anyhow::Result<Self> {
        match queue {
            QueueArg::Kafka => {
                let defaults = KafkaQueueConfig::default();
                let mut config = ClientConfig::new();
                config.set("bootstrap.servers", brokers);
                let admin: AdminClient<DefaultClientContext> = config.create()?;
                let topic = format!("bench.raw.{}", std::process::id());
                let new_topic = NewTopic::new(&topic, PARTITIONS as i32, TopicReplication::Fixed(1));
                for result in runtime.block_on(admin.create_topics([&new_topic], &AdminOptions::new()))? {
                    match result {
                        Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((name, code)) => anyhow::bail!("creating {name}: {code}"),
                    }
                }
                // The platform's producer settings (queue/kafka.rs).
                let producer = config
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("linger.ms", defaults.linger_ms.to_string())
                    .set("batch.size", defaults.batch_bytes.to_string())
                    .set("compression.type", &defaults.compression)
                    .set(
                        "queue.buffering.max.kbytes",
                        defaults.producer_buffer_kbytes.to_string(),
                    )
                    .set("queue.buffering.max.messages", "1000000")
                    .create()?;
                Ok(RawQueue::Kafka { producer, topic })
            }
            QueueArg::Embedded => {
                let connection = rusqlite::Connection::open(work.join("raw-queue.sqlite"))?;
                let mode: String = connection.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
                anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "WAL refused");
                connection.execute_batch(mysimbdp::queue::embedded::CONNECTION_PRAGMAS)?;
                // One table per partition, of the shape of the queue's segments.
                for partition in 0..PARTITIONS {
                    connection.execute_batch(&format!(
                        "CREATE TABLE raw_partition_{partition} {};",
                        mysimbdp::queue::embedded::SEGMENT_COLUMNS
                    ))?;
                }
                Ok(RawQueue::Sqlite {
                    connection,
                    next_offset: vec![0; PARTITIONS as usize],
                })
            }
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            RawQueue::Kafka { .. } => "raw rdkafka produce",
            RawQueue::Sqlite { .. } => "raw SQLite appends",
        }
    }

    /// Produces every message and waits until all are durable; returns the time it took.
    fn produce(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        messages: &[Vec<u8>],
        per_request: usize,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        match self {
            RawQueue::Kafka { producer, topic } => runtime.block_on(async {
                let mut deliveries = Vec::with_capacity(messages.len());
                for (index, payload) in messages.iter().enumerate() {
                    let mut record = FutureRecord::<(), [u8]>::to(topic)
                        .payload(payload.as_slice())
                        .partition((index as u32 % PARTITIONS) as i32);
                    loop {
                        match producer.send_result(record) {
                            Ok(delivery) => {
                                deliveries.push(delivery);
                                break;
                            }
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                                record = back;
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                            Err((e, _)) => anyhow::bail!("producing: {e}"),
                        }
                    }
                }
                for delivery in futures_util::future::join_all(deliveries).await {
                    match delivery {
                        Ok(Ok(_)) => {}
                        Ok(Err((e, _))) => anyhow::bail!("a delivery failed: {e}"),
                        Err(_) => anyhow::bail!("the producer went away"),
                    }
                }
                Ok(())
            })?,
            RawQueue::Sqlite {
                connection,
                next_offset,
            } => {
                let now = (mysimbdp::durable::unix_now() * 1000.0) as i64;
                for chunk in messages.chunks(per_request) {
                    let transaction = connection.transaction()?;
                    {
                        let mut inserts = (0..PARTITIONS)
                            .map(|partition| {
                                transaction.prepare(&format!(
                                    "INSERT INTO raw_partition_{partition} (message_offset, timestamp_ms, payload)
                                     VALUES (?1, ?2, ?3)"
                                ))
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        for (index, payload) in chunk.iter().enumerate() {
                            let partition = index % PARTITIONS as usize;
                            inserts[partition].execute(rusqlite::params![
                                next_offset[partition],
                                now,
                                payload.as_slice()
                            ])?;
                            next_offset[partition] += 1;
                        }
                    }
                    transaction.commit()?;
                }
            }
        }
        Ok(started.elapsed())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The latency pass: load on client1 at `load_rate` messages/s, probes on client2.
fn latency(
    platform: &Platform,
    client: &Client,
    client1: &TenantSpec,
    client2: &TenantSpec,
    load_rate: f64,
    duration: Duration,
) -> anyhow::Result<()> {
    let (status, body) = admin(platform, "POST", "/v1/tenants/client1/stream/instances");
    anyhow::ensure!(status == 201, "starting an instance: {status} {body}");
    let load_id = body["instance_id"].as_str().context("an instance id")?.to_string();
    // 100 requests a second, each of the messages that make the rate.
    let per_request = ((load_rate / 100.0).ceil() as usize).max(1);
    let interval = Duration::from_secs_f64(per_request as f64 / load_rate);
    let load_messages = messages((load_rate * duration.as_secs_f64() * 1.2) as u64 + 1000, 77);
    let load_bodies = bodies(&load_messages, per_request);
    let probes: Vec<String> = String::from_utf8(Spec::rows(Shape::Client2JsonLines, 2000).with_seed(78).to_vec())?
        .lines()
        .map(str::to_string)
        .collect();
    let count = || platform.count_so_far("client2", &client2.token(), "invocations");
    let probe = |index: usize| -> anyhow::Result<f64> {
        let before = count();
        let started = Instant::now();
        match client.post_messages("client2", &client2.token(), NDJSON, probes[index].as_bytes()) {
            Ok((202, _, _)) => {}
            other => anyhow::bail!("a probe got {other:?}"),
        }
        while count() <= before {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "a probe never became readable"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    };
    for index in 0..20 {
        probe(index)?; // warm-up: client2's table, its instance, the connections
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (samples, batch_latencies, posted) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let loader = scope.spawn(|| -> anyhow::Result<u64> {
            let started = Instant::now();
            let mut posted = 0;
            for (k, body) in load_bodies.iter().enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = started + interval * k as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                match client.post_messages("client1", &client1.token(), NDJSON, body) {
                    Ok((202, _, _)) => posted += per_request as u64,
                    other => anyhow::bail!("a load post got {other:?}"),
                }
            }
            Ok(posted)
        });
        let watcher = scope.spawn(|| {
            let mut seen = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                let status = instance(platform, client1, &load_id);
                if let (Some(at), Some(ms)) = (
                    status["last_batch_at"].as_f64(),
                    status["last_batch_latency_ms"].as_f64(),
                ) {
                    seen.insert(at.to_bits(), ms);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen.into_values().collect::<Vec<f64>>()
        });
        let began = Instant::now();
        let mut samples = Vec::new();
        let mut index = 20;
        while began.elapsed() < duration {
            samples.push(probe(index % probes.len())?);
            index += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        let posted = loader.join().map_err(|_| anyhow::anyhow!("the loader panicked"))??;
        let batches = watcher.join().map_err(|_| anyhow::anyhow!("the watcher panicked"))?;
        Ok((samples, batches, posted))
    })?;
    let mut samples = samples;
    samples.sort_by(f64::total_cmp);
    let mut batches = batch_latencies;
    batches.sort_by(f64::total_cmp);
    let offered = posted as f64 / duration.as_secs_f64();
    println!(
        "latency at {load_rate:.0} msg/s offered to client1 (half the sustained rate; {offered:.0} msg/s posted, {per_request} per request):"
    );
    println!(
        "  POST → row readable through the API (client2 probes, n={}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  client1's batches, mean acceptance → durable (instance report, n={}): p50 {:.1} ms, p99 {:.1} ms",
        batches.len(),
        percentile(&batches, 50.0),
        percentile(&batches, 99.0)
    );
    Ok(())
}
