//! The stream manager's decisions: what it does when the monitor notifies it (scale out, scale
//! in, pause over quota, resume, hold a failing plugin, hold while the queue does not answer)
//! and when a message arrives for a tenant running no instance. Each decision is logged as one
//! line and kept, with the threshold and the observed values, in the tenant's
//! `_decisions.jsonl`; with `autoscale: false` the tenant's decisions are kept as what would
//! have been done, and nothing is done.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{StreamError, StreamManager};
use crate::durable::unix_now;
use crate::monitor::{Event, Notification, Observed, Signal};
use crate::report::StreamLog;
use crate::tenants::TenantId;

/// What the manager did (or would have done).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// One more instance.
    ScaleOut,
    /// One instance fewer.
    ScaleIn,
    /// The tenant's instances stop consuming.
    Pause,
    /// They consume again.
    Resume,
    /// Nothing, on purpose (see the reason).
    None,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::ScaleOut => "scale_out",
            Action::ScaleIn => "scale_in",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::None => "none",
        }
    }
}

/// The threshold a decision answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Crossed {
    /// Which condition (`max_lag`, `idle`, `message_arrived`, ...).
    pub name: String,
    /// Fired or cleared.
    pub event: Event,
    /// Its limit.
    pub limit: f64,
    /// The value observed.
    pub value: f64,
    /// How long it held, seconds.
    pub held_seconds: f64,
}

/// One decision, as kept and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When (seconds since the epoch).
    pub time: f64,
    /// The tenant.
    pub tenant: TenantId,
    /// What triggered it.
    pub threshold: Crossed,
    /// What the reports said.
    pub observed: Observed,
    /// What was done.
    pub action: Action,
    /// Whether it was done (`false`: automatic scaling is off, or it failed).
    pub applied: bool,
    /// Instances before and after.
    pub instances_before: u32,
    /// Instances after.
    pub instances_after: u32,
    /// Why, in words.
    pub reason: String,
}

fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::MaxLag => "max_lag",
        Signal::MaxAvgLatency => "max_avg_latency_ms",
        Signal::MaxP95Latency => "max_p95_latency_ms",
        Signal::MinThroughput => "min_messages_per_second",
        Signal::MaxFailureRatio => "max_failure_ratio",
        Signal::Idle => "idle_seconds",
        Signal::OverQuota => "max_memory_size",
    }
}

impl StreamManager {
    /// Acts on the monitor's notifications until the channel closes.
    pub(super) async fn act_on(self: Arc<Self>, mut notifications: tokio::sync::mpsc::Receiver<Notification>) {
        while let Some(notification) = notifications.recv().await {
            self.act(notification).await;
        }
    }

    async fn act(self: &Arc<Self>, note: Notification) {
        let tenant = note.tenant.clone();
        let tenants = self.ctx.tenants.current();
        let Some(config) = tenants.get(&tenant) else {
            return;
        };
        let autoscale = config.autoscale.unwrap_or(true);
        let limits = self.ctx.config.limits(config);
        let before = self.instance_count(&tenant);
        let partitions = self.ctx.queue.partition_count(&tenant).await.ok();
        let ceiling = partitions.map_or(limits.max_instances, |p| limits.max_instances.min(p.max(1)));
        let crossed = Crossed {
            name: signal_name(note.signal).into(),
            event: note.event,
            limit: note.threshold,
            value: note.value,
            held_seconds: note.held_seconds,
        };
        let (action, reason) = match (note.signal, note.event) {
            (signal, Event::Fired) if signal.wants_more_instances() => {
                let cooldown = self.ctx.monitor.cooldown_seconds;
                let since = self
                    .scaled_out
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&tenant)
                    .map(|at| unix_now() - at);
                if let Some(since) = since.filter(|s| *s < cooldown) {
                    // Several conditions often cross together (lag, and the rate while it
                    // waits): one step, then the new instance gets the cooldown to take effect.
                    (
                        Action::None,
                        format!(
                            "{} is past its limit, but the tenant scaled out {since:.0} s ago: the new instance has {cooldown:.0} s (cooldown_seconds) to take effect",
                            crossed.name
                        ),
                    )
                } else if before >= ceiling {
                    if before > 0 {
                        // At the ceiling: say so once per firing, and do nothing.
                        (
                            Action::None,
                            format!(
                                "{} is past its limit but {before} instances run, the most it may ({} max_stream_instances, {} partitions)",
                                crossed.name,
                                limits.max_instances,
                                partitions.map_or("unknown".into(), |p| p.to_string())
                            ),
                        )
                    } else {
                        return;
                    }
                } else if let Err(e) = self.ctx.queue.reachable(&tenant).await {
                    // The instances wait for the queue (a broker outage also stops the rate and
                    // holds the lag): another would wait too, and join a rebalance on return.
                    (
                        Action::None,
                        format!(
                            "{} is past its limit, but the queue does not answer: more instances would wait for it like the others ({e})",
                            crossed.name
                        ),
                    )
                } else {
                    (
                        Action::ScaleOut,
                        format!("{} is past its limit for {:.0} s", crossed.name, note.held_seconds),
                    )
                }
            }
            (Signal::Idle, Event::Fired) => {
                if before <= limits.min_instances {
                    return;
                }
                (
                    Action::ScaleIn,
                    format!("no message and no lag for {:.0} s", note.held_seconds),
                )
            }
            (Signal::MaxFailureRatio, Event::Fired) => (
                Action::None,
                format!(
                    "the plugin failed on {:.0} % of its calls: more instances would fail the same; the failing messages go to the rejected log, and a version that fails on everything is quarantined",
                    note.value * 100.0
                ),
            ),
            (Signal::OverQuota, Event::Fired) => (
                Action::Pause,
                "the tenant's data occupies its storage quota: its instances stop consuming until it is under again"
                    .into(),
            ),
            (Signal::OverQuota, Event::Cleared) => (
                Action::Resume,
                "the tenant's data is under its storage quota again".into(),
            ),
            _ => return,
        };
        if action == Action::ScaleOut {
            let mut scaled_out = self.scaled_out.lock().unwrap_or_else(|e| e.into_inner());
            scaled_out.insert(tenant.clone(), unix_now());
        }
        let outcome = match action {
            Action::ScaleOut if autoscale => self.start_instance(&tenant).map(|_| ()),
            Action::ScaleIn if autoscale => self.stop_newest(&tenant).await,
            Action::Pause | Action::Resume => {
                self.ctx.set_paused(&tenant, action == Action::Pause);
                Ok(())
            }
            _ => Err(StreamError::State(String::new())),
        };
        let applied = outcome.is_ok();
        let reason = match outcome {
            Err(_) if !autoscale && matches!(action, Action::ScaleOut | Action::ScaleIn) => {
                format!("{reason} (automatic scaling is off for this tenant: not done)")
            }
            Err(StreamError::State(e)) if e.is_empty() => reason,
            Err(e) => format!("{reason}; not done: {e}"),
            Ok(()) => reason,
        };
        let decision = Decision {
            time: unix_now(),
            tenant: tenant.clone(),
            threshold: crossed,
            observed: note.observed,
            action,
            applied,
            instances_before: before,
            instances_after: self.instance_count(&tenant),
            reason,
        };
        self.record(&decision).await;
    }

    /// A message was accepted for `tenant`: if it runs no instance (a minimum of 0, scaled in
    /// while idle), one starts, so the message is stored.
    pub fn wake(self: &Arc<Self>, tenant: &TenantId) {
        if self.instance_count(tenant) > 0 {
            return;
        }
        let tenants = self.ctx.tenants.current();
        let Some(config) = tenants.get(tenant) else {
            return;
        };
        // Zero instances is the idle state only of a pay-per-use tenant (minimum 0); a tenant
        // with a minimum of 1 or more is at zero because the operator stopped its instances,
        // and a message does not overrule that.
        if self.ctx.config.limits(config).min_instances > 0 {
            return;
        }
        let autoscale = config.autoscale.unwrap_or(true);
        let applied = {
            // One wake at a time: concurrent posts start one instance, not one each.
            let mut woken = self.woken.lock().unwrap_or_else(|e| e.into_inner());
            if self.instance_count(tenant) > 0 || self.ctx.plugins.stream_plugin(tenant).is_err() {
                return;
            }
            let now = unix_now();
            if !autoscale {
                // What would have been done, once a minute at most.
                if woken.get(tenant).is_some_and(|at| now - at < 60.0) {
                    return;
                }
                woken.insert(tenant.clone(), now);
            }
            let started = autoscale && self.start_instance(tenant).is_ok();
            if started {
                // The woken instance gets the cooldown before more are started for its lag.
                let mut scaled_out = self.scaled_out.lock().unwrap_or_else(|e| e.into_inner());
                scaled_out.insert(tenant.clone(), now);
            }
            started
        };
        let decision = Decision {
            time: unix_now(),
            tenant: tenant.clone(),
            threshold: Crossed {
                name: "message_arrived".into(),
                event: Event::Fired,
                limit: 0.0,
                value: 1.0,
                held_seconds: 0.0,
            },
            observed: Observed::default(),
            action: Action::ScaleOut,
            applied,
            instances_before: 0,
            instances_after: self.instance_count(tenant),
            reason: if autoscale {
                "a message arrived for a tenant running no instance".into()
            } else {
                "a message arrived for a tenant running no instance (automatic scaling is off for this tenant: not done)"
                    .into()
            },
        };
        let manager = Arc::clone(self);
        tokio::spawn(async move { manager.record(&decision).await });
    }

    /// Stops the tenant's most recent instance (its batch in hand stored and committed first).
    async fn stop_newest(&self, tenant: &TenantId) -> Result<(), StreamError> {
        let newest = self
            .desired()
            .instances(tenant)
            .and_then(|ids| ids.last().cloned())
            .ok_or_else(|| StreamError::NoInstance {
                tenant: tenant.clone(),
                instance: "-".into(),
            })?;
        self.stop_instance(tenant, &newest).await
    }

    /// Logs, counts and keeps a decision.
    async fn record(&self, decision: &Decision) {
        let line = format!(
            "stream decision tenant={} threshold={} event={:?} limit={} value={:.1} held_s={:.0} action={} applied={} instances={}->{} lag={} msg_s={:.0} avg_ms={} p95_ms={} reason={:?}",
            decision.tenant,
            decision.threshold.name,
            decision.threshold.event,
            decision.threshold.limit,
            decision.threshold.value,
            decision.threshold.held_seconds,
            decision.action.as_str(),
            decision.applied,
            decision.instances_before,
            decision.instances_after,
            decision.observed.lag,
            decision.observed.messages_per_second,
            decision
                .observed
                .avg_latency_ms
                .map_or("-".into(), |v| format!("{v:.0}")),
            decision
                .observed
                .p95_latency_ms
                .map_or("-".into(), |v| format!("{v:.0}")),
            decision.reason
        );
        log::info!("{line}");
        self.ctx
            .metrics
            .stream_decision(decision.tenant.as_str(), decision.action.as_str());
        let reports = Arc::clone(&self.ctx.reports);
        let kept = decision.clone();
        let written =
            tokio::task::spawn_blocking(move || reports.append_record(&kept.tenant, StreamLog::Decisions, &kept)).await;
        if !matches!(written, Ok(Ok(()))) {
            log::error!("stream: tenant={} cannot keep a decision", decision.tenant);
        }
    }
}
