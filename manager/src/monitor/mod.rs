//! monitor: watches the stream instances' periodic reports and tells the stream manager when a
//! tenant's performance crosses a threshold, with the evidence. It receives reports through a
//! channel and sends notifications through another; it never reads a store, a queue or a
//! plugin, so what it decides follows from the reports alone (and can be tested on them).
//!
//! Per tenant it keeps the latest report of each instance (an instance silent for three
//! periods is forgotten) and evaluates, each time a report arrives, what those reports say
//! together: the group's lag, messages per second, mean and p95 time from a message's
//! acceptance to its rows being durable, the ratio of failed plugin calls, idleness, and
//! whether the tenant is over its storage quota. A condition must hold for `hold_seconds`
//! (report time) before it fires. Once fired it stays active until its value is back past the
//! clear level (the threshold × `clear_ratio`) for `hold_seconds`; while active, it fires
//! again only after `cooldown_seconds` and only if its value has grown by `escalation` since
//! it last fired: a load that hovers at a threshold causes one step, a load that keeps
//! growing causes more. Idleness fires every `idle_seconds` it lasts (one scale-in step each).

mod report;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use report::{InstanceReport, Latencies};

use crate::tenants::watch::TenantsHandle;
use crate::tenants::{StreamThresholds, TenantId};

/// The monitor's settings (`[monitor]`); a tenant's `stream_thresholds` override the
/// thresholds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// How often each instance reports, in seconds.
    pub report_every_seconds: f64,
    /// How long a condition must hold before it fires, and its clearing before it clears.
    pub hold_seconds: f64,
    /// The least time between two firings of one active condition.
    pub cooldown_seconds: f64,
    /// How much an active condition's value must grow to fire again.
    pub escalation: f64,
    /// A condition clears once its value is back past the threshold times this.
    pub clear_ratio: f64,
    /// How long a tenant must be idle (no message, no lag) to scale in one step.
    pub idle_seconds: f64,
    /// The thresholds of tenants that do not set their own.
    pub thresholds: Thresholds,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            report_every_seconds: 10.0,
            hold_seconds: 30.0,
            cooldown_seconds: 60.0,
            escalation: 1.5,
            clear_ratio: 0.8,
            idle_seconds: 120.0,
            thresholds: Thresholds::default(),
        }
    }
}

/// What a tenant's stream should not cross.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Messages in the topic not yet committed by the tenant's group, at most.
    pub max_lag: u64,
    /// Mean time from acceptance to durable rows, ms, at most.
    pub max_avg_latency_ms: f64,
    /// p95 of the same, ms, at most.
    pub max_p95_latency_ms: f64,
    /// Messages per second at least, while there is lag.
    pub min_messages_per_second: f64,
    /// Failed plugin calls per call, at most.
    pub max_failure_ratio: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_lag: 100_000,
            max_avg_latency_ms: 10_000.0,
            max_p95_latency_ms: 30_000.0,
            min_messages_per_second: 100.0,
            max_failure_ratio: 0.5,
        }
    }
}

impl Thresholds {
    /// These thresholds with a tenant's own where it sets them.
    pub fn with(mut self, own: Option<&StreamThresholds>) -> Self {
        if let Some(own) = own {
            self.max_lag = own.max_lag.unwrap_or(self.max_lag);
            self.max_avg_latency_ms = own.max_avg_latency_ms.unwrap_or(self.max_avg_latency_ms);
            self.max_p95_latency_ms = own.max_p95_latency_ms.unwrap_or(self.max_p95_latency_ms);
            self.min_messages_per_second = own.min_messages_per_second.unwrap_or(self.min_messages_per_second);
            self.max_failure_ratio = own.max_failure_ratio.unwrap_or(self.max_failure_ratio);
        }
        self
    }
}

/// A condition the monitor watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// The lag is over `max_lag`.
    MaxLag,
    /// The mean latency is over `max_avg_latency_ms`.
    MaxAvgLatency,
    /// The p95 latency is over `max_p95_latency_ms`.
    MaxP95Latency,
    /// Fewer than `min_messages_per_second` while the lag is at least a second's worth of
    /// that rate (a few messages in a batch being processed are no reason to scale).
    MinThroughput,
    /// The failure ratio is over `max_failure_ratio`.
    MaxFailureRatio,
    /// No message and no lag for `idle_seconds`.
    Idle,
    /// The tenant's data occupies its storage quota.
    OverQuota,
}

impl Signal {
    /// Whether acting on it means more instances.
    pub fn wants_more_instances(self) -> bool {
        matches!(
            self,
            Signal::MaxLag | Signal::MaxAvgLatency | Signal::MaxP95Latency | Signal::MinThroughput
        )
    }
}

/// Fired or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The condition held for the hold window (or grew while active).
    Fired,
    /// It is back under its clear level.
    Cleared,
}

/// What the reports said together, when a condition fired or cleared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// The group's lag (the largest an instance read).
    pub lag: u64,
    /// Messages per second, all instances.
    pub messages_per_second: f64,
    /// Mean acceptance → durable, ms.
    pub avg_latency_ms: Option<f64>,
    /// p95 of it (the largest of the instances'), ms.
    pub p95_latency_ms: Option<f64>,
    /// Failed plugin calls per call.
    pub failure_ratio: Option<f64>,
    /// Instances reporting.
    pub instances: u32,
    /// Over the storage quota.
    pub over_quota: bool,
}

/// A notification to the stream manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The tenant.
    pub tenant: TenantId,
    /// Which condition.
    pub signal: Signal,
    /// Fired or cleared.
    pub event: Event,
    /// The threshold in force.
    pub threshold: f64,
    /// The value that crossed it.
    pub value: f64,
    /// Everything the reports said.
    pub observed: Observed,
    /// How long the condition held before this, seconds.
    pub held_seconds: f64,
    /// When (report time, seconds since the epoch).
    pub at: f64,
}

/// The state of one condition of one tenant.
#[derive(Debug, Clone, Copy, Default)]
struct Condition {
    /// Since when it holds (or, while active, since when it is clear).
    since: Option<f64>,
    active: bool,
    last_fired_at: f64,
    last_fired_value: f64,
    /// The last value observed.
    last_value: Option<f64>,
}

/// One tenant's window.
#[derive(Debug, Default)]
struct TenantWindow {
    latest: BTreeMap<String, InstanceReport>,
    conditions: BTreeMap<Signal, Condition>,
    idle_since: Option<f64>,
    idle_fired_at: Option<f64>,
}

/// The monitor's evaluation, apart from its channels.
pub struct Evaluator {
    config: MonitorConfig,
    tenants: BTreeMap<TenantId, TenantWindow>,
}

impl Evaluator {
    /// An evaluator with no report yet.
    pub fn new(config: MonitorConfig) -> Self {
        Evaluator {
            config,
            tenants: BTreeMap::new(),
        }
    }

    /// Takes a report and returns what it makes fire or clear, under `thresholds` (the
    /// tenant's).
    pub fn observe(&mut self, report: InstanceReport, thresholds: &Thresholds) -> Vec<Notification> {
        let config = self.config.clone();
        let now = report.period_end;
        let tenant = report.tenant.clone();
        let window = self.tenants.entry(tenant.clone()).or_default();
        if report.state == "stopped" {
            // Its last report: the instance is gone, and says nothing about the others.
            window.latest.remove(&report.instance);
            return Vec::new();
        }
        window.latest.insert(report.instance.clone(), report);
        let stale = now - 3.0 * config.report_every_seconds.max(0.1);
        window.latest.retain(|_, r| r.period_end >= stale);
        let observed = observe(window.latest.values());
        let mut notifications = Vec::new();
        let lag = observed.lag as f64;
        let known = |value: Option<f64>| value.map_or(Reading::Unknown, Reading::Value);
        // Without lag, a low rate is no shortfall: the condition is clear, not unknown.
        let throughput = if lag >= thresholds.min_messages_per_second.max(1.0) {
            Reading::Value(observed.messages_per_second)
        } else {
            Reading::Clear(observed.messages_per_second)
        };
        let checks: [(Signal, f64, Reading, bool); 6] = [
            (Signal::MaxLag, thresholds.max_lag as f64, Reading::Value(lag), true),
            (
                Signal::MaxAvgLatency,
                thresholds.max_avg_latency_ms,
                known(observed.avg_latency_ms),
                true,
            ),
            (
                Signal::MaxP95Latency,
                thresholds.max_p95_latency_ms,
                known(observed.p95_latency_ms),
                true,
            ),
            (
                Signal::MinThroughput,
                thresholds.min_messages_per_second,
                throughput,
                false,
            ),
            (
                Signal::MaxFailureRatio,
                thresholds.max_failure_ratio,
                known(observed.failure_ratio),
                true,
            ),
            (
                Signal::OverQuota,
                0.5,
                Reading::Value(if observed.over_quota { 1.0 } else { 0.0 }),
                true,
            ),
        ];
        for (signal, threshold, value, is_max) in checks {
            let condition = window.conditions.entry(signal).or_default();
            let event = step(
                condition,
                &config,
                now,
                threshold,
                value,
                is_max,
                signal == Signal::OverQuota,
            );
            if let Some((event, value, held)) = event {
                notifications.push(Notification {
                    tenant: tenant.clone(),
                    signal,
                    event,
                    threshold,
                    value,
                    observed,
                    held_seconds: held,
                    at: now,
                });
            }
        }
        // Idle: nothing processed and nothing waiting, for a whole window; once per window.
        let idle = observed.lag == 0 && observed.messages_per_second == 0.0;
        if idle {
            let since = *window.idle_since.get_or_insert(now);
            let last = window.idle_fired_at.unwrap_or(since);
            if now - last >= config.idle_seconds {
                window.idle_fired_at = Some(now);
                notifications.push(Notification {
                    tenant,
                    signal: Signal::Idle,
                    event: Event::Fired,
                    threshold: config.idle_seconds,
                    value: now - since,
                    observed,
                    held_seconds: now - since,
                    at: now,
                });
            }
        } else {
            window.idle_since = None;
            window.idle_fired_at = None;
        }
        notifications
    }

    /// Forgets a tenant (removed) or an instance (stopped).
    pub fn forget(&mut self, tenant: &TenantId, instance: Option<&str>) {
        match instance {
            Some(id) => {
                if let Some(window) = self.tenants.get_mut(tenant) {
                    window.latest.remove(id);
                }
            }
            None => {
                self.tenants.remove(tenant);
            }
        }
    }
}

/// What the reports say about one condition.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// This value, to compare with the threshold.
    Value(f64),
    /// No evidence in these reports (no call, no latency): the last value stands.
    Unknown,
    /// The condition does not apply (a low rate without lag): clear, with this value.
    Clear(f64),
}

/// One condition's next state; returns the event, the value and how long it held.
fn step(
    condition: &mut Condition,
    config: &MonitorConfig,
    now: f64,
    threshold: f64,
    reading: Reading,
    is_max: bool,
    once: bool,
) -> Option<(Event, f64, f64)> {
    let (value, applies) = match reading {
        Reading::Value(value) => (value, true),
        Reading::Unknown => (condition.last_value?, true),
        Reading::Clear(value) => (value, false),
    };
    condition.last_value = applies.then_some(value);
    let beyond = applies && if is_max { value > threshold } else { value < threshold };
    let clear_level = if is_max {
        threshold * config.clear_ratio
    } else {
        threshold / config.clear_ratio.max(f64::MIN_POSITIVE)
    };
    let clear = !applies
        || if is_max {
            value <= clear_level
        } else {
            value >= clear_level
        };
    if !condition.active {
        if !beyond {
            condition.since = None;
            return None;
        }
        let since = *condition.since.get_or_insert(now);
        if now - since < config.hold_seconds {
            return None;
        }
        condition.active = true;
        condition.since = None;
        condition.last_fired_at = now;
        condition.last_fired_value = value;
        return Some((Event::Fired, value, now - since));
    }
    // Active: clears after holding clear, or fires again when it keeps growing.
    if clear {
        let since = *condition.since.get_or_insert(now);
        if now - since >= config.hold_seconds {
            *condition = Condition::default();
            return Some((Event::Cleared, value, now - since));
        }
        return None;
    }
    condition.since = None;
    let last = condition.last_fired_value;
    let grown = if is_max {
        value > last && value >= last * config.escalation
    } else {
        value < last && value <= last / config.escalation
    };
    if !once && beyond && grown && now - condition.last_fired_at >= config.cooldown_seconds {
        let held = now - condition.last_fired_at;
        condition.last_fired_at = now;
        condition.last_fired_value = value;
        return Some((Event::Fired, value, held));
    }
    None
}

/// What the latest reports say together.
fn observe<'a>(reports: impl Iterator<Item = &'a InstanceReport>) -> Observed {
    let mut observed = Observed::default();
    let (mut latency_sum, mut latency_messages) = (0.0, 0u64);
    let (mut calls, mut failures) = (0u64, 0u64);
    for report in reports {
        observed.instances += 1;
        observed.lag = observed.lag.max(report.lag.unwrap_or(0));
        let seconds = (report.period_end - report.period_start).max(0.001);
        observed.messages_per_second += report.messages as f64 / seconds;
        if let Some(avg) = report.avg_latency_ms {
            latency_sum += avg * report.messages as f64;
            latency_messages += report.messages;
        }
        if let Some(p95) = report.p95_latency_ms {
            observed.p95_latency_ms = Some(observed.p95_latency_ms.map_or(p95, |p: f64| p.max(p95)));
        }
        calls += report.calls;
        failures += report.failures;
        observed.over_quota |= report.over_quota;
    }
    observed.avg_latency_ms = (latency_messages > 0).then(|| latency_sum / latency_messages as f64);
    observed.failure_ratio = (calls > 0).then(|| failures as f64 / calls as f64);
    observed
}

/// Runs the monitor: reports in, notifications out, until the report channel closes.
pub async fn run(
    config: MonitorConfig,
    tenants: TenantsHandle,
    mut reports: mpsc::Receiver<InstanceReport>,
    notifications: mpsc::Sender<Notification>,
) {
    let defaults = config.thresholds;
    let mut evaluator = Evaluator::new(config);
    while let Some(report) = reports.recv().await {
        let current = tenants.current();
        let Some(tenant) = current.get(&report.tenant) else {
            evaluator.forget(&report.tenant, None);
            continue;
        };
        let thresholds = defaults.with(tenant.stream_thresholds.as_ref());
        for notification in evaluator.observe(report, &thresholds) {
            if notifications.send(notification).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
