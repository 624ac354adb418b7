//! The queue contract, the same test bodies against both backends: the embedded queue (in a
//! temporary folder) and a real Kafka broker at `MYSIMBDP_TEST_KAFKA` (`host:port`). Without
//! that variable the Kafka tests print SKIPPED and pass, unless `MYSIMBDP_REQUIRE_SERVICES=1`,
//! where they fail.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mysimbdp::queue::{Queue, QueueBackend, QueueConfig, QueueConsumer, QueueErrorKind, QueuedMessage, open};
use mysimbdp::tenants::TenantId;

const TOPIC_PREFIX: &str = "mysimbdp-test.";

/// A backend to test, with its configuration and a scratch folder.
struct Env {
    config: QueueConfig,
    dir: tempfile::TempDir,
}

impl Env {
    fn embedded() -> Env {
        Env {
            config: QueueConfig::default(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `None` (after a loud SKIPPED line) when no broker is configured and services are not
    /// required.
    fn kafka() -> Option<Env> {
        let brokers = mysimbdp_tests::Service::Kafka.address()?;
        let mut config = QueueConfig {
            backend: QueueBackend::Kafka,
            ..QueueConfig::default()
        };
        config.kafka.brokers = brokers;
        config.kafka.topic_prefix = TOPIC_PREFIX.to_string();
        Some(Env {
            config,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    async fn open(&self) -> Arc<dyn Queue> {
        open(&self.config, self.dir.path()).await.unwrap()
    }

    fn partitions(&self) -> u32 {
        match self.config.backend {
            QueueBackend::Embedded => self.config.embedded.partitions,
            QueueBackend::Kafka => self.config.kafka.partitions,
        }
    }
}

/// A tenant id no other test or run uses (Kafka topics outlive a run).
fn unique_tenant(label: &str) -> TenantId {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let id = format!(
        "{label}_{:x}{:x}{}",
        std::process::id(),
        nanos % (1 << 36),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    id.parse().unwrap()
}

/// Message `id`: its id in 8 big-endian bytes, then a body (text or binary by id).
fn message(id: u64) -> Vec<u8> {
    let mut payload = id.to_be_bytes().to_vec();
    match id % 3 {
        0 => payload.extend((0..=255u8).cycle().skip(id as usize % 256).take(300)),
        _ => payload.extend(format!(r#"{{"id": {id}, "text": "reading ü {id}"}}"#).as_bytes()),
    }
    payload
}

fn id_of(message: &QueuedMessage) -> u64 {
    u64::from_be_bytes(message.payload[..8].try_into().unwrap())
}

async fn produce_ids(queue: &dyn Queue, tenant: &TenantId, ids: std::ops::Range<u64>, per_call: usize) {
    let all: Vec<u64> = ids.collect();
    for chunk in all.chunks(per_call) {
        let produced = queue
            .produce(tenant, chunk.iter().map(|id| message(*id)).collect())
            .await
            .unwrap();
        assert_eq!(produced.messages, chunk.len() as u64);
    }
}

/// Polls until `count` messages came or `timeout` passed.
async fn poll_count(consumer: &mut dyn QueueConsumer, count: usize, timeout: Duration) -> Vec<QueuedMessage> {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    while received.len() < count && Instant::now() < deadline {
        received.extend(consumer.poll(1000, Duration::from_millis(500)).await.unwrap());
    }
    received
}

/// The highest offset of each partition among `messages`.
fn last_offsets(messages: &[QueuedMessage]) -> Vec<(u32, u64)> {
    let mut last = BTreeMap::new();
    for m in messages {
        let entry = last.entry(m.partition).or_insert(m.offset);
        *entry = (*entry).max(m.offset);
    }
    last.into_iter().collect()
}

async fn produced_messages_come_back_complete_in_partition_order_with_intact_bytes(env: Env) {
    let queue = env.open().await;
    let tenant = unique_tenant("roundtrip");
    produce_ids(&*queue, &tenant, 0..1000, 100).await;
    // One message of 1 MiB, of every byte value.
    let big: Vec<u8> = 1000u64
        .to_be_bytes()
        .into_iter()
        .chain((0..(1 << 20) - 8).map(|i| (i * 7 % 256) as u8))
        .collect();
    queue.produce(&tenant, vec![big.clone()]).await.unwrap();

    let mut consumer = queue.consumer(&tenant, "reader").await.unwrap();
    let received = poll_count(&mut *consumer, 1001, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 1001, "every message comes back, once");
    let mut by_partition: BTreeMap<u32, Vec<&QueuedMessage>> = BTreeMap::new();
    for m in &received {
        by_partition.entry(m.partition).or_default().push(m);
    }
    assert_eq!(
        by_partition.len() as u32,
        env.partitions(),
        "messages are spread over every partition"
    );
    for (partition, messages) in &by_partition {
        for pair in messages.windows(2) {
            assert!(
                pair[0].offset < pair[1].offset && id_of(pair[0]) < id_of(pair[1]),
                "partition {partition}: offsets and production order increase together"
            );
        }
    }
    let now = mysimbdp_now_ms();
    for m in &received {
        let id = id_of(m);
        let expected = if id == 1000 { big.clone() } else { message(id) };
        assert!(m.payload == expected, "message {id}: bytes unchanged");
        assert!(
            (now - 600_000..=now + 1000).contains(&m.timestamp_ms),
            "message {id}: timestamp {} is the time it was stored",
            m.timestamp_ms
        );
    }
    let ids: BTreeSet<u64> = received.iter().map(id_of).collect();
    assert_eq!(ids, (0..=1000).collect::<BTreeSet<u64>>());
}

fn mysimbdp_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn a_message_over_the_limit_is_refused_as_too_large(env: Env) {
    let queue = env.open().await;
    let tenant = unique_tenant("toolarge");
    let error = queue
        .produce(
            &tenant,
            vec![b"small".to_vec(), vec![0; env.config.max_message_bytes + 1]],
        )
        .await
        .unwrap_err();
    assert_eq!(error.kind, QueueErrorKind::TooLarge, "{}", error.message);
}

async fn a_new_consumer_resumes_after_the_committed_offsets_and_gets_the_uncommitted_again(env: Env) {
    let queue = env.open().await;
    let tenant = unique_tenant("resume");
    produce_ids(&*queue, &tenant, 0..400, 100).await;

    let mut first = queue.consumer(&tenant, "app").await.unwrap();
    let received = poll_count(&mut *first, 400, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 400);
    // Commit the first half of what each partition delivered.
    let mut by_partition: BTreeMap<u32, Vec<&QueuedMessage>> = BTreeMap::new();
    for m in &received {
        by_partition.entry(m.partition).or_default().push(m);
    }
    let mut commit = Vec::new();
    let mut uncommitted = BTreeSet::new();
    for (partition, messages) in &by_partition {
        let half = messages.len() / 2;
        commit.push((*partition, messages[half - 1].offset));
        uncommitted.extend(messages[half..].iter().map(|m| id_of(m)));
    }
    // A group whose consumer exists but has not committed yet.
    let mut other = queue.consumer(&tenant, "audit").await.unwrap();
    first.commit(&commit).await.unwrap();
    drop(first);

    let mut second = queue.consumer(&tenant, "app").await.unwrap();
    let mut again = poll_count(&mut *second, uncommitted.len(), Duration::from_secs(60)).await;
    again.extend(second.poll(1000, Duration::from_secs(1)).await.unwrap());
    let again_ids: Vec<u64> = again.iter().map(id_of).collect();
    assert_eq!(
        again_ids.len(),
        uncommitted.len(),
        "only the uncommitted messages come again"
    );
    assert_eq!(again_ids.into_iter().collect::<BTreeSet<_>>(), uncommitted);

    // Another group is independent: the first group's commits do not move it.
    assert_eq!(poll_count(&mut *other, 400, Duration::from_secs(60)).await.len(), 400);
}

async fn two_consumers_of_a_group_split_the_partitions_and_see_every_message_once(env: Env) {
    let queue = env.open().await;
    let tenant = unique_tenant("split");
    queue.ensure_topic(&tenant).await.unwrap();
    let mut a = queue.consumer(&tenant, "app").await.unwrap();
    let mut b = queue.consumer(&tenant, "app").await.unwrap();
    let all: BTreeSet<u32> = (0..env.partitions()).collect();
    // Let the group settle (Kafka assigns while the members poll; the topic is still empty).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (owned_a, owned_b) = loop {
        assert!(a.poll(10, Duration::from_millis(100)).await.unwrap().is_empty());
        assert!(b.poll(10, Duration::from_millis(100)).await.unwrap().is_empty());
        let (owned_a, owned_b): (BTreeSet<u32>, BTreeSet<u32>) = (
            a.assignment().unwrap().into_iter().collect(),
            b.assignment().unwrap().into_iter().collect(),
        );
        let split = !owned_a.is_empty()
            && !owned_b.is_empty()
            && owned_a.is_disjoint(&owned_b)
            && owned_a.union(&owned_b).copied().collect::<BTreeSet<_>>() == all;
        if split {
            break (owned_a, owned_b);
        }
        assert!(
            Instant::now() < deadline,
            "the group never split: {owned_a:?} / {owned_b:?}"
        );
    };

    produce_ids(&*queue, &tenant, 0..1000, 250).await;
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 1000 && Instant::now() < deadline {
        for (consumer, owned) in [(&mut a, &owned_a), (&mut b, &owned_b)] {
            let batch = consumer.poll(500, Duration::from_millis(200)).await.unwrap();
            for m in &batch {
                assert!(owned.contains(&m.partition), "a consumer only gets its own partitions");
                assert!(seen.insert(id_of(m)), "message {} delivered twice", id_of(m));
            }
            consumer.commit(&last_offsets(&batch)).await.unwrap();
        }
    }
    assert_eq!(seen.len(), 1000, "together they see every message");
    for consumer in [&mut a, &mut b] {
        assert!(consumer.poll(100, Duration::from_millis(500)).await.unwrap().is_empty());
        assert_eq!(consumer.lag().await.unwrap(), 0);
    }

    // When one leaves, the other takes over its partitions (from the committed offsets).
    drop(b);
    produce_ids(&*queue, &tenant, 1000..1100, 100).await;
    let rest = poll_count(&mut *a, 100, Duration::from_secs(60)).await;
    let rest_ids: BTreeSet<u64> = rest.iter().map(id_of).collect();
    assert_eq!(rest_ids, (1000..1100).collect::<BTreeSet<u64>>());
    assert_eq!(a.assignment().unwrap().into_iter().collect::<BTreeSet<_>>(), all);
}

async fn lag_counts_the_uncommitted_messages_and_drains_to_zero(env: Env) {
    let queue = env.open().await;
    let tenant = unique_tenant("lag");
    produce_ids(&*queue, &tenant, 0..300, 100).await;
    let mut consumer = queue.consumer(&tenant, "app").await.unwrap();
    assert_eq!(consumer.lag().await.unwrap(), 300);
    let received = poll_count(&mut *consumer, 300, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 300);
    assert_eq!(consumer.lag().await.unwrap(), 300, "polling alone commits nothing");
    let mut committed = 0;
    for chunk in received.chunks(100) {
        consumer.commit(&last_offsets(chunk)).await.unwrap();
        committed += chunk.len() as u64;
        // Offsets commit per partition: everything up to each partition's last offset in the
        // chunk, which received order makes exactly the chunk's messages and those before.
        assert_eq!(consumer.lag().await.unwrap(), 300 - committed);
    }
    assert_eq!(consumer.lag().await.unwrap(), 0);
    // A lag of another group sees all of it.
    let mut other = queue.consumer(&tenant, "other").await.unwrap();
    assert_eq!(other.lag().await.unwrap(), 300);
}

async fn an_acknowledged_message_survives_a_kill_9_of_the_producing_process(env: Env) {
    let tenant = unique_tenant("kill");
    let data_dir = env.dir.path().to_path_buf();
    let args: Vec<String> = match env.config.backend {
        QueueBackend::Embedded => vec!["embedded".into(), data_dir.display().to_string(), tenant.to_string()],
        QueueBackend::Kafka => vec![
            "kafka".into(),
            env.config.kafka.brokers.clone(),
            TOPIC_PREFIX.into(),
            tenant.to_string(),
        ],
    };
    let acknowledged = run_and_kill_probe(&args, 5000);
    println!("probe acknowledged {} messages before kill -9", acknowledged.len());

    let queue = env.open().await;
    let mut consumer = queue.consumer(&tenant, "verify").await.unwrap();
    let mut found = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !acknowledged.is_subset(&found) && Instant::now() < deadline {
        for m in consumer.poll(5000, Duration::from_millis(500)).await.unwrap() {
            found.insert(String::from_utf8(m.payload).unwrap());
        }
    }
    let missing: Vec<&String> = acknowledged.difference(&found).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages are missing after kill -9, e.g. {missing:?}",
        acknowledged.difference(&found).count(),
        acknowledged.len()
    );
    println!(
        "all {} acknowledged found among {} stored",
        acknowledged.len(),
        found.len()
    );
}

/// Starts the probe, waits for `at_least` acknowledged ids, kills it with SIGKILL, and returns
/// every id it printed (complete lines only).
fn run_and_kill_probe(args: &[String], at_least: usize) -> HashSet<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_queue_probe"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        while stdout.read_line(&mut line).unwrap_or(0) > 0 {
            if line.ends_with('\n') && lines_tx.send(line.trim_end().to_string()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let mut acknowledged = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acknowledged.len() < at_least {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(id) => {
                acknowledged.insert(id);
            }
            Err(e) => {
                let _ = child.kill();
                panic!("the probe acknowledged {} ids, then: {e}", acknowledged.len());
            }
        }
    }
    // SIGKILL: no destructor, no flush, no clean close of the queue.
    let pid = child.id();
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "probe {pid} was killed: {status}");
    reader.join().unwrap();
    acknowledged.extend(lines_rx.try_iter());
    acknowledged
}

/// Runs each test body against the embedded queue and against Kafka.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Env::embedded()).await;
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(env) = super::Env::kafka() else { return };
                    super::$name(env).await;
                }
            )*
        }
    };
}

on_both_backends!(
    produced_messages_come_back_complete_in_partition_order_with_intact_bytes,
    a_message_over_the_limit_is_refused_as_too_large,
    a_new_consumer_resumes_after_the_committed_offsets_and_gets_the_uncommitted_again,
    two_consumers_of_a_group_split_the_partitions_and_see_every_message_once,
    lag_counts_the_uncommitted_messages_and_drains_to_zero,
    an_acknowledged_message_survives_a_kill_9_of_the_producing_process,
);
