use super::*;

fn config() -> MonitorConfig {
    MonitorConfig {
        report_every_seconds: 1.0,
        hold_seconds: 5.0,
        cooldown_seconds: 10.0,
        escalation: 1.5,
        clear_ratio: 0.8,
        idle_seconds: 20.0,
        thresholds: Thresholds::default(),
    }
}

fn report(instance: &str, at: f64, messages: u64, lag: u64) -> InstanceReport {
    InstanceReport {
        tenant: "client1".parse().unwrap(),
        instance: instance.into(),
        period_start: at - 1.0,
        period_end: at,
        messages,
        bytes: messages * 100,
        rows: messages,
        rejected: 0,
        calls: u64::from(messages > 0),
        failures: 0,
        avg_latency_ms: (messages > 0).then_some(20.0),
        p95_latency_ms: (messages > 0).then_some(40.0),
        lag: Some(lag),
        partitions: vec![0, 1, 2, 3],
        state: "running".into(),
        note: None,
        over_quota: false,
    }
}

fn signals(notifications: &[Notification]) -> Vec<(Signal, Event)> {
    notifications.iter().map(|n| (n.signal, n.event)).collect()
}

#[test]
fn a_lag_over_the_threshold_fires_only_once_it_held_for_the_window_and_carries_its_evidence() {
    let mut evaluator = Evaluator::new(config());
    let thresholds = Thresholds::default();
    let mut fired = Vec::new();
    for second in 0..10 {
        let notes = evaluator.observe(report("i1", 100.0 + second as f64, 5000, 150_000), &thresholds);
        if !notes.is_empty() {
            fired.push((second, notes));
        }
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    let (second, notes) = &fired[0];
    assert_eq!(*second, 5, "held 5 s first");
    assert_eq!(signals(notes), vec![(Signal::MaxLag, Event::Fired)]);
    let note = &notes[0];
    assert_eq!(
        (note.threshold, note.value, note.held_seconds),
        (100_000.0, 150_000.0, 5.0)
    );
    assert_eq!(note.observed.lag, 150_000);
    assert_eq!(note.observed.messages_per_second, 5000.0);
    assert_eq!(note.observed.instances, 1);
}

#[test]
fn a_lag_that_hovers_at_the_threshold_fires_once_and_one_that_keeps_growing_fires_again() {
    let thresholds = Thresholds::default();
    let mut hovering = Evaluator::new(config());
    let mut fired = 0;
    for second in 0..120 {
        let lag = if second % 7 < 4 { 104_000 } else { 97_000 };
        fired += hovering
            .observe(report("i1", second as f64, 3000, lag), &thresholds)
            .iter()
            .filter(|n| n.event == Event::Fired)
            .count();
    }
    // 104k for 4 s then 97k for 3 s never holds 5 s: nothing fires at all...
    assert_eq!(fired, 0);
    let mut hovering = Evaluator::new(config());
    let mut events = Vec::new();
    for second in 0..120 {
        // ...and with longer swings it fires once; it never falls to 80 % to re-arm.
        let lag = if (second / 10) % 2 == 0 { 104_000 } else { 97_000 };
        events.extend(signals(
            &hovering.observe(report("i1", second as f64, 3000, lag), &thresholds),
        ));
    }
    assert_eq!(events, vec![(Signal::MaxLag, Event::Fired)]);

    let mut growing = Evaluator::new(config());
    let mut fired_at = Vec::new();
    for second in 0..40 {
        let lag = 110_000 + second * 20_000;
        for note in growing.observe(report("i1", second as f64, 3000, lag), &thresholds) {
            fired_at.push((second, note.value as u64));
        }
    }
    // Fires after the hold, then again once the cooldown passed and the lag grew by half.
    assert_eq!(fired_at, vec![(5, 210_000), (15, 410_000), (26, 630_000)]);
}

#[test]
fn a_fired_condition_clears_after_its_value_stays_under_the_clear_level_for_the_window() {
    let thresholds = Thresholds::default();
    let mut evaluator = Evaluator::new(config());
    let mut events = Vec::new();
    for second in 0..30 {
        let lag = match second {
            0..10 => 200_000,
            10..15 => 90_000, // under the threshold but over 80 % of it: still active
            _ => 10_000,
        };
        for note in evaluator.observe(report("i1", second as f64, 3000, lag), &thresholds) {
            events.push((second, note.signal, note.event));
        }
    }
    assert_eq!(
        events,
        vec![(5, Signal::MaxLag, Event::Fired), (20, Signal::MaxLag, Event::Cleared)]
    );
}

#[test]
fn idleness_fires_once_per_idle_window_and_any_message_resets_it() {
    let thresholds = Thresholds::default();
    let mut evaluator = Evaluator::new(config());
    let mut idle_at = Vec::new();
    for second in 0..70 {
        let messages = if second == 30 { 10 } else { 0 };
        for note in evaluator.observe(report("i1", second as f64, messages, 0), &thresholds) {
            assert_eq!(note.signal, Signal::Idle);
            idle_at.push(second);
        }
    }
    assert_eq!(idle_at, vec![20, 51]);
}

#[test]
fn the_instances_reports_add_up_and_a_silent_instance_is_forgotten() {
    let thresholds = Thresholds {
        min_messages_per_second: 5000.0,
        ..Thresholds::default()
    };
    let mut evaluator = Evaluator::new(config());
    let mut notes = Vec::new();
    for second in 0..8 {
        let at = second as f64;
        notes.extend(evaluator.observe(report("i1", at, 2000, 50_000), &thresholds));
        if second < 1 {
            notes.extend(evaluator.observe(report("i2", at, 2000, 50_000), &thresholds));
        }
    }
    // i1 and i2 made 4000 msg/s together (under 5000 with lag); when it fired, i2 had been
    // silent for more than three periods and the tenant made 2000.
    let throughput: Vec<&Notification> = notes.iter().filter(|n| n.signal == Signal::MinThroughput).collect();
    assert_eq!(throughput.len(), 1, "{notes:?}");
    assert_eq!(throughput[0].observed.instances, 1);
    assert_eq!(throughput[0].observed.messages_per_second, 2000.0);
}

#[test]
fn a_failing_plugin_crosses_the_failure_ratio_and_a_tenant_over_quota_fires_once() {
    let thresholds = Thresholds::default();
    let mut evaluator = Evaluator::new(config());
    let mut events = Vec::new();
    for second in 0..20 {
        let mut r = report("i1", second as f64, 100, 0);
        r.calls = 10;
        r.failures = 8;
        r.over_quota = true;
        events.extend(signals(&evaluator.observe(r, &thresholds)));
    }
    assert_eq!(
        events,
        vec![
            (Signal::MaxFailureRatio, Event::Fired),
            (Signal::OverQuota, Event::Fired)
        ]
    );
}

#[test]
fn latencies_give_an_exact_mean_and_a_p95_within_a_bucket() {
    let mut latencies = Latencies::default();
    assert_eq!(latencies.mean(), None);
    for ms in 1..=100 {
        latencies.add(ms as f64);
    }
    assert_eq!(latencies.mean(), Some(50.5));
    let p95 = latencies.quantile(0.95).unwrap();
    assert!((95.0..=95.0 * 1.1).contains(&p95), "{p95}");
    assert_eq!(latencies.count(), 100);
}

#[test]
fn a_low_rate_counts_only_while_there_is_lag_and_the_lag_draining_clears_it() {
    let thresholds = Thresholds {
        min_messages_per_second: 100.0,
        ..Thresholds::default()
    };
    let mut evaluator = Evaluator::new(config());
    let mut events = Vec::new();
    // A few messages waiting while a batch is processed, at no measured rate: not a shortfall.
    for second in 0..10 {
        events.extend(signals(
            &evaluator.observe(report("i1", second as f64, 0, 3), &thresholds),
        ));
    }
    assert_eq!(events, vec![], "a lag under a second's worth of the minimum rate");
    // A real shortfall fires; the lag gone, it clears even though the rate stays low.
    for second in 10..40 {
        let lag = if second < 20 { 10_000 } else { 0 };
        events.extend(signals(
            &evaluator.observe(report("i1", second as f64, 10, lag), &thresholds),
        ));
    }
    assert_eq!(
        events,
        vec![
            (Signal::MinThroughput, Event::Fired),
            (Signal::MinThroughput, Event::Cleared)
        ]
    );
}
