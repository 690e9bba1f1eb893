use super::*;

const ME: &str = "capstan-a";
const OTHER: &str = "capstan-b";

fn timing() -> Timing<'static> {
    Timing {
        identity: ME,
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn record(holder: Option<&str>, renewed: &str) -> LeaseRecord {
    LeaseRecord {
        holder: holder.map(str::to_owned),
        lease_duration: Some(secs(15)),
        acquire_time: Some("2024-01-01T00:00:00Z".parse().expect("time")),
        renew_time: Some(renewed.parse().expect("time")),
        transitions: 3,
    }
}

/// A candidate that has seen `rec` since `at`.
fn candidate_seeing(rec: &LeaseRecord, at: Instant) -> LocalState {
    let mut local = LocalState::default();
    local.observe(rec, at);
    local
}

fn leader(renewed_at: Instant) -> LocalState {
    LocalState {
        leading: true,
        last_renewed: Some(renewed_at),
        observed: None,
    }
}

#[test]
fn absent_lease_is_created() {
    let t0 = Instant::now();
    assert_eq!(
        decide(timing(), &LocalState::default(), Seen::Absent, t0),
        Action::Create
    );
    // Deleted under a leader: recreate it (still within the renew deadline).
    assert_eq!(
        decide(timing(), &leader(t0), Seen::Absent, t0 + secs(2)),
        Action::Create
    );
}

#[test]
fn unreachable_api_waits_until_the_renew_deadline_then_steps_down() {
    let t0 = Instant::now();
    assert_eq!(
        decide(timing(), &LocalState::default(), Seen::Unreachable, t0),
        Action::Wait
    );
    let local = leader(t0);
    assert_eq!(
        decide(timing(), &local, Seen::Unreachable, t0 + secs(9)),
        Action::Wait,
        "still within the renew deadline: keep leading"
    );
    assert_eq!(
        decide(timing(), &local, Seen::Unreachable, t0 + secs(10)),
        Action::StepDown
    );
    // Past the deadline even a readable lease naming us does not save it: our renew
    // would land after others may have taken over.
    let mine = record(Some(ME), "2024-01-01T00:00:00Z");
    assert_eq!(
        decide(timing(), &local, Seen::Present(&mine), t0 + secs(11)),
        Action::StepDown
    );
}

#[test]
fn our_own_lease_is_renewed() {
    let t0 = Instant::now();
    let mine = record(Some(ME), "2024-01-01T00:00:00Z");
    let mut local = leader(t0);
    local.observe(&mine, t0);
    assert_eq!(
        decide(timing(), &local, Seen::Present(&mine), t0 + secs(2)),
        Action::Renew
    );
    // A restarted process with the same identity resumes by renewing at once.
    let fresh = candidate_seeing(&mine, t0);
    assert_eq!(
        decide(timing(), &fresh, Seen::Present(&mine), t0),
        Action::Renew
    );
}

#[test]
fn a_valid_lease_of_another_holder_is_waited_out_on_our_clock() {
    let t0 = Instant::now();
    let theirs = record(Some(OTHER), "2024-01-01T00:00:00Z");
    let local = candidate_seeing(&theirs, t0);
    assert_eq!(
        decide(timing(), &local, Seen::Present(&theirs), t0),
        Action::Wait
    );
    assert_eq!(
        decide(
            timing(),
            &local,
            Seen::Present(&theirs),
            t0 + secs(15) - Duration::from_millis(1)
        ),
        Action::Wait
    );
    assert_eq!(
        decide(timing(), &local, Seen::Present(&theirs), t0 + secs(15)),
        Action::TakeOver
    );
}

#[test]
fn remote_timestamps_do_not_decide_expiry() {
    let t0 = Instant::now();
    // renewTime decades ago (a skewed clock, or our own clock far ahead): still valid
    // until it has stayed unchanged for the lease duration as *we* measure it.
    let ancient = record(Some(OTHER), "2000-01-01T00:00:00Z");
    let local = candidate_seeing(&ancient, t0);
    assert_eq!(
        decide(timing(), &local, Seen::Present(&ancient), t0 + secs(1)),
        Action::Wait
    );
    // renewTime in the future does not keep a dead holder alive either.
    let future = record(Some(OTHER), "2999-01-01T00:00:00Z");
    let local = candidate_seeing(&future, t0);
    assert_eq!(
        decide(timing(), &local, Seen::Present(&future), t0 + secs(15)),
        Action::TakeOver
    );
}

#[test]
fn each_renewal_restarts_the_candidates_clock() {
    let t0 = Instant::now();
    let first = record(Some(OTHER), "2024-01-01T00:00:00Z");
    let renewed = record(Some(OTHER), "2024-01-01T00:00:14Z");
    let mut local = candidate_seeing(&first, t0);
    local.observe(&renewed, t0 + secs(14));
    assert_eq!(
        decide(timing(), &local, Seen::Present(&renewed), t0 + secs(16)),
        Action::Wait
    );
    // Seeing the same record again does not move the clock.
    local.observe(&renewed, t0 + secs(20));
    assert_eq!(
        decide(timing(), &local, Seen::Present(&renewed), t0 + secs(29)),
        Action::TakeOver
    );
}

#[test]
fn a_record_not_yet_observed_counts_as_just_seen() {
    let t0 = Instant::now();
    let old = record(Some(OTHER), "2024-01-01T00:00:00Z");
    let new = record(Some(OTHER), "2024-01-01T00:00:02Z");
    let local = candidate_seeing(&old, t0);
    assert_eq!(
        decide(timing(), &local, Seen::Present(&new), t0 + secs(60)),
        Action::Wait
    );
}

#[test]
fn the_records_own_duration_wins_over_ours() {
    let t0 = Instant::now();
    let short = LeaseRecord {
        lease_duration: Some(secs(5)),
        ..record(Some(OTHER), "2024-01-01T00:00:00Z")
    };
    let local = candidate_seeing(&short, t0);
    assert_eq!(
        decide(timing(), &local, Seen::Present(&short), t0 + secs(5)),
        Action::TakeOver
    );
    let unset = LeaseRecord {
        lease_duration: None,
        ..record(Some(OTHER), "2024-01-01T00:00:00Z")
    };
    let local = candidate_seeing(&unset, t0);
    assert_eq!(
        decide(timing(), &local, Seen::Present(&unset), t0 + secs(14)),
        Action::Wait
    );
    assert_eq!(
        decide(timing(), &local, Seen::Present(&unset), t0 + secs(15)),
        Action::TakeOver
    );
}

#[test]
fn a_released_lease_is_taken_over_at_once() {
    let t0 = Instant::now();
    let released = LeaseRecord {
        lease_duration: Some(secs(1)),
        ..record(None, "2024-01-01T00:00:00Z")
    };
    let local = candidate_seeing(&released, t0);
    assert_eq!(
        decide(timing(), &local, Seen::Present(&released), t0),
        Action::TakeOver
    );
}

#[test]
fn a_leader_that_sees_another_holder_steps_down() {
    let t0 = Instant::now();
    let theirs = record(Some(OTHER), "2024-01-01T00:00:00Z");
    assert_eq!(
        decide(timing(), &leader(t0), Seen::Present(&theirs), t0 + secs(1)),
        Action::StepDown
    );
    let released = record(None, "2024-01-01T00:00:00Z");
    assert_eq!(
        decide(
            timing(),
            &leader(t0),
            Seen::Present(&released),
            t0 + secs(1)
        ),
        Action::StepDown,
        "someone released our lease: we are not the holder any more"
    );
}

/// Two replicas on one timeline: the leader renews every 2 s until its API access breaks
/// at 30 s; the candidate polls every 2 s. The leader must have stepped down before the
/// candidate takes over, and the candidate must take over eventually.
#[test]
fn a_partitioned_leader_steps_down_before_a_candidate_takes_over() {
    let t0 = Instant::now();
    let retry = secs(2);
    let broken_at = t0 + secs(30);
    let mut a = LocalState::default();
    let mut b = LocalState::default();
    let mut lease: Option<LeaseRecord> = None;
    let mut renewals = 0u64;
    let (mut a_stepped_down, mut b_took_over) = (None, None);
    let ta = timing();
    let tb = Timing {
        identity: OTHER,
        ..timing()
    };
    let mut now = t0;
    while now < t0 + secs(120) {
        // Replica a.
        let seen = if now >= broken_at {
            Seen::Unreachable
        } else {
            match &lease {
                Some(rec) => {
                    a.observe(rec, now);
                    Seen::Present(rec)
                }
                None => Seen::Absent,
            }
        };
        match decide(ta, &a, seen, now) {
            Action::Create | Action::Renew | Action::TakeOver => {
                renewals += 1;
                let renewed = LeaseRecord {
                    transitions: renewals as i32,
                    ..record(Some(ME), "2024-01-01T00:00:00Z")
                };
                lease = Some(renewed.clone());
                a.became_leader(now);
                a.observe(&renewed, now);
            }
            Action::StepDown => {
                a.step_down();
                a_stepped_down.get_or_insert(now);
            }
            Action::Wait => {}
        }
        // Replica b, a moment later.
        let later = now + Duration::from_millis(500);
        if let Some(rec) = lease.clone() {
            b.observe(&rec, later);
            if decide(tb, &b, Seen::Present(&rec), later) == Action::TakeOver {
                b_took_over.get_or_insert(later);
                lease = Some(record(Some(OTHER), "2024-01-01T00:01:00Z"));
                b.became_leader(later);
            }
        }
        assert!(!(a.leading && b.leading), "two leaders at {:?}", now - t0);
        now += retry;
    }
    let stepped = a_stepped_down.expect("a stepped down");
    let took = b_took_over.expect("b took over");
    assert!(stepped < took);
    assert!(stepped - broken_at <= secs(10));
    assert!(took - broken_at <= secs(15) + retry * 2);
}

#[test]
fn a_dropped_flag_reads_false() {
    let (tx, mut rx) = watch::channel(false);
    let flag = LeaderFlag(tx);
    flag.send_replace(true);
    assert!(*rx.borrow_and_update());
    drop(flag);
    assert!(!*rx.borrow_and_update(), "never left at true");
    assert!(rx.has_changed().is_err(), "and closed");
}

#[test]
fn observe_keeps_the_first_sighting() {
    let t0 = Instant::now();
    let rec = record(Some(OTHER), "2024-01-01T00:00:00Z");
    let mut local = LocalState::default();
    local.observe(&rec, t0);
    local.observe(&rec, t0 + secs(5));
    assert_eq!(local.observed, Some((rec, t0)));
}

#[test]
fn records_read_from_leases() {
    let lease = Lease {
        metadata: ObjectMeta::default(),
        spec: Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(-3),
            lease_transitions: Some(4),
            renew_time: Some(MicroTime("2024-01-01T00:00:00Z".parse().expect("time"))),
            ..LeaseSpec::default()
        }),
    };
    let rec = LeaseRecord::from_lease(&lease);
    assert_eq!(rec.holder, None, "an empty holder is a released lease");
    assert_eq!(rec.lease_duration, None);
    assert_eq!(rec.transitions, 4);
    assert!(rec.renew_time.is_some());
    let bare = LeaseRecord::from_lease(&Lease::default());
    assert_eq!(
        bare,
        LeaseRecord {
            holder: None,
            lease_duration: None,
            acquire_time: None,
            renew_time: None,
            transitions: 0,
        }
    );

    let config = LeaseConfig::new("ns", ME);
    let created = new_lease(&config);
    let rec = LeaseRecord::from_lease(&created);
    assert_eq!(rec.holder.as_deref(), Some(ME));
    assert_eq!(rec.lease_duration, Some(secs(15)));
    assert_eq!(created.metadata.name.as_deref(), Some(DEFAULT_LEASE_NAME));
    assert_eq!(created.metadata.namespace.as_deref(), Some("ns"));
    // It serialises as the API expects.
    let json = serde_json::to_value(&created).expect("serialise");
    assert_eq!(json["spec"]["holderIdentity"], ME);
    assert_eq!(json["spec"]["leaseDurationSeconds"], 15);
    assert!(json["spec"]["renewTime"].is_string());
}

#[test]
fn config_validation_and_scaling() {
    let config = LeaseConfig::new("istio-system", ME);
    assert_eq!(config.name, "capstan-leader");
    assert!(config.validate().is_ok());
    assert_eq!(config.lease_duration_seconds(), 15);

    let scaled = config.clone().with_lease_duration(secs(6));
    assert_eq!(scaled.renew_deadline, secs(4));
    assert_eq!(scaled.retry_period, Duration::from_millis(800));
    assert!(scaled.validate().is_ok());

    let bad = |f: fn(&mut LeaseConfig)| {
        let mut c = config.clone();
        f(&mut c);
        c.validate().is_err()
    };
    assert!(bad(|c| c.renew_deadline = c.lease_duration));
    assert!(bad(|c| c.retry_period = secs(9)), "10 s ≤ 1.2 × 9 s");
    assert!(bad(|c| c.retry_period = Duration::ZERO));
    assert!(bad(|c| c.lease_duration = Duration::from_millis(500)));
    assert!(bad(|c| c.identity.clear()));
    assert!(bad(|c| c.namespace.clear()));

    let odd = LeaseConfig {
        lease_duration: Duration::from_millis(2500),
        ..config.clone()
    };
    assert_eq!(odd.lease_duration_seconds(), 3, "rounded up");
}

#[test]
fn unusable_timings_are_replaced() {
    // Only --lease-duration-secs set, below the default renew deadline: the other two
    // follow it.
    let short = LeaseConfig::new("ns", ME).with_lease_duration(secs(3));
    let short = LeaseConfig {
        renew_deadline: DEFAULT_RENEW_DEADLINE,
        retry_period: DEFAULT_RETRY_PERIOD,
        ..short
    };
    let fixed = usable(short);
    assert_eq!(fixed.lease_duration, secs(3));
    assert_eq!(fixed.renew_deadline, secs(2));
    assert!(fixed.validate().is_ok());

    // A duration too short to scale: the defaults.
    let tiny = LeaseConfig {
        lease_duration: Duration::from_millis(100),
        ..LeaseConfig::new("ns", ME)
    };
    let fixed = usable(tiny);
    assert_eq!(fixed.lease_duration, DEFAULT_LEASE_DURATION);
    assert!(fixed.validate().is_ok());

    let fine = LeaseConfig::new("ns", ME);
    assert_eq!(usable(fine.clone()), fine);
}

#[test]
fn identities_differ_per_call_and_name_the_host() {
    let a = default_identity();
    let b = default_identity();
    assert_ne!(a, b);
    let (host, suffix) = a.rsplit_once('_').expect("host_suffix");
    assert!(!host.is_empty());
    assert_eq!(suffix.len(), 16);
}

#[test]
fn jitter_stays_within_client_go_bounds() {
    for _ in 0..200 {
        let d = jittered(secs(2));
        assert!(
            d >= secs(2) && d < secs(2).mul_f64(1.0 + JITTER_FACTOR),
            "{d:?}"
        );
    }
}
