use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use capstan_crds::Kind;
use serde_json::json;
use tokio::sync::Semaphore;

use super::*;
use crate::status::condition::{ConditionStatus, Reason};

fn key(name: &str) -> ObjectKey {
    ObjectKey {
        kind: Kind::VirtualService,
        namespace: "default".into(),
        name: name.into(),
    }
}

fn accepted(generation: i64) -> Desired {
    Desired {
        generation,
        status: ConditionStatus::True,
        reason: Reason::Accepted,
        message: "served to proxies".into(),
    }
}

fn invalid(generation: i64, message: &str) -> Desired {
    Desired {
        generation,
        status: ConditionStatus::False,
        reason: Reason::Invalid,
        message: message.into(),
    }
}

/// What the watch would show after `desired` was written.
fn shown(desired: &Desired) -> Observed {
    let patch = desired.status_patch(None, Timestamp::now());
    Observed::from_status(&patch["status"]).expect("our condition")
}

fn item(name: &str, desired: Desired, observed: Option<Observed>) -> StatusItem {
    StatusItem {
        key: key(name),
        desired,
        observed,
        status: None,
        resource_version: None,
    }
}

// ---- the ledger (pure) ----

/// The names of the objects a plan patches, in order.
fn names(plan: Vec<&StatusItem>) -> Vec<String> {
    plan.into_iter().map(|i| i.key.name.clone()).collect()
}

#[test]
fn plan_writes_only_differences() {
    let mut ledger = Ledger::default();
    let items = status_set(vec![
        item("new", accepted(1), None),
        item("same", accepted(2), Some(shown(&accepted(2)))),
        item("stale-generation", accepted(3), Some(shown(&accepted(2)))),
        item("changed", invalid(1, "bad"), Some(shown(&accepted(1)))),
    ]);
    assert_eq!(
        names(ledger.plan(&items)),
        ["changed", "new", "stale-generation"]
    );
}

#[test]
fn plan_does_not_repeat_a_write_the_watch_has_not_shown_yet() {
    let mut ledger = Ledger::default();
    let items = status_set(vec![item("a", accepted(1), None)]);
    assert_eq!(names(ledger.plan(&items)), ["a"]);
    ledger.record(key("a"), accepted(1));
    // A publish before the watch event of our write: nothing to do.
    assert!(ledger.plan(&items).is_empty());
    // The desired condition changed meanwhile: write again.
    let changed = status_set(vec![item("a", invalid(2, "x"), None)]);
    assert_eq!(names(ledger.plan(&changed)), ["a"]);
}

#[test]
fn plan_forgets_confirmed_writes_so_later_divergence_is_repaired() {
    let mut ledger = Ledger::default();
    ledger.record(key("a"), accepted(1));
    // The watch shows our write: the memory goes.
    let confirmed = status_set(vec![item("a", accepted(1), Some(shown(&accepted(1))))]);
    assert!(ledger.plan(&confirmed).is_empty());
    assert!(ledger.written.is_empty());
    // Someone removes or alters the condition later: same desired, written again.
    let tampered = status_set(vec![item("a", accepted(1), None)]);
    assert_eq!(names(ledger.plan(&tampered)), ["a"]);
}

#[test]
fn plan_forgets_objects_no_longer_published_and_dedups_keys() {
    let mut ledger = Ledger::default();
    ledger.record(key("gone"), accepted(1));
    let items = status_set(vec![
        item("a", accepted(1), None),
        item("a", invalid(1, "later wins"), None),
    ]);
    let plan = ledger.plan(&items);
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].desired, invalid(1, "later wins"));
    assert!(!ledger.written.contains_key(&key("gone")));
}

#[test]
fn api_resource_is_the_v1_storage_version() {
    let ar = api_resource(Kind::VirtualService);
    assert_eq!(ar.group, "networking.istio.io");
    assert_eq!(ar.version, "v1");
    assert_eq!(ar.api_version, "networking.istio.io/v1");
    assert_eq!(ar.kind, "VirtualService");
    assert_eq!(ar.plural, "virtualservices");
    let ar = api_resource(Kind::AuthorizationPolicy);
    assert_eq!(ar.api_version, "security.istio.io/v1");
    assert_eq!(ar.plural, "authorizationpolicies");
}

#[test]
fn api_errors_are_classified() {
    let api = |code| {
        kube::Error::Api(
            kube::core::Status::failure("m", "R")
                .with_code(code)
                .boxed(),
        )
    };
    assert!(matches!(WriteError::classify(api(404)), WriteError::Gone));
    assert!(matches!(
        WriteError::classify(api(409)),
        WriteError::Rejected { code: 409, .. }
    ));
    assert!(matches!(
        WriteError::classify(api(422)),
        WriteError::Rejected { code: 422, .. }
    ));
    assert!(matches!(WriteError::classify(api(500)), WriteError::Api(_)));
    assert!(matches!(WriteError::classify(api(403)), WriteError::Api(_)));
}

// ---- the task, against a fake API ----

#[derive(Debug, Clone, Copy)]
enum Reply {
    Ok,
    Gone,
    Conflict,
    Unavailable,
    Hang,
}

#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<(ObjectKey, Value)>>,
    replies: Mutex<HashMap<String, VecDeque<Reply>>>,
    delay: Option<Duration>,
    /// When set, each patch waits for a permit (the test lets them through).
    gate: Option<Arc<Semaphore>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Fake {
    fn reply(&self, name: &str, replies: &[Reply]) {
        self.replies
            .lock()
            .expect("lock")
            .insert(name.into(), replies.iter().copied().collect());
    }

    fn calls(&self) -> Vec<(String, Value)> {
        self.calls
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, v)| (k.name.clone(), v.clone()))
            .collect()
    }

    fn names(&self) -> Vec<String> {
        self.calls().into_iter().map(|(n, _)| n).collect()
    }
}

impl Patcher for Arc<Fake> {
    async fn patch(&self, key: &ObjectKey, body: Value) -> Result<(), WriteError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let reply = self
            .replies
            .lock()
            .expect("lock")
            .get_mut(&key.name)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Reply::Ok);
        self.calls.lock().expect("lock").push((key.clone(), body));
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        match reply {
            Reply::Ok => Ok(()),
            Reply::Gone => Err(WriteError::Gone),
            Reply::Conflict => Err(WriteError::Rejected {
                code: 409,
                message: "conflict".into(),
            }),
            Reply::Unavailable => Err(WriteError::Timeout(Duration::ZERO)),
            Reply::Hang => std::future::pending().await,
        }
    }
}

struct Harness {
    fake: Arc<Fake>,
    writer: StatusWriter,
    leader: watch::Sender<bool>,
    evaluations: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Harness {
    fn start(fake: Fake, leading: bool) -> Harness {
        let fake = Arc::new(fake);
        let (leader, leader_rx) = watch::channel(leading);
        let (counter, evaluations) = watch::channel(0);
        let options = Options {
            request_timeout: Duration::from_millis(200),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
            evaluations: Some(counter),
            ..Options::default()
        };
        let (writer, task) = StatusWriter::start_with(fake.clone(), leader_rx, options);
        Harness {
            fake,
            writer,
            leader,
            evaluations,
            task,
        }
    }

    /// Publishes and waits until the writer has evaluated it.
    async fn publish(&mut self, items: Vec<StatusItem>) {
        let before = *self.evaluations.borrow_and_update();
        self.writer.publish(status_set(items));
        self.settle(before).await;
    }

    async fn set_leader(&mut self, leading: bool) {
        let before = *self.evaluations.borrow_and_update();
        self.leader.send_replace(leading);
        self.settle(before).await;
    }

    async fn settle(&mut self, before: u64) {
        timeout(
            Duration::from_secs(5),
            self.evaluations.wait_for(|&n| n > before),
        )
        .await
        .expect("the writer evaluated in time")
        .expect("writer alive");
    }

    async fn wait_for_calls(&self, n: usize) {
        timeout(Duration::from_secs(5), async {
            while self.fake.calls().len() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("expected {n} patches, saw {:?}", self.fake.names()));
    }
}

#[tokio::test]
async fn writes_a_difference_once_with_the_merge_patch_body() {
    let mut h = Harness::start(Fake::default(), true);
    let status = json!({"conditions": [{"type": "Other", "status": "True"}]});
    let items = vec![
        StatusItem {
            status: Some(Arc::new(status.clone())),
            resource_version: Some("42".into()),
            ..item("a", invalid(4, "spec.http: bad"), None)
        },
        item("b", accepted(1), Some(shown(&accepted(1)))),
    ];
    h.publish(items.clone()).await;
    let calls = h.fake.calls();
    assert_eq!(calls.len(), 1, "only the object that differs: {calls:?}");
    let (name, body) = &calls[0];
    assert_eq!(name, "a");
    let conditions = body["status"]["conditions"].as_array().expect("list");
    assert_eq!(conditions[0], status["conditions"][0], "others' kept");
    assert_eq!(conditions[1]["type"], "Reconciled");
    assert_eq!(conditions[1]["reason"], "Invalid");
    assert_eq!(conditions[1]["message"], "spec.http: bad");
    assert_eq!(body["status"]["observedGeneration"], 4);
    // Conditional on the version last watched: never over another controller's later write.
    assert_eq!(body["metadata"]["resourceVersion"], "42");

    // The index publishes again before the watch shows our write: no second patch.
    h.publish(items).await;
    assert_eq!(h.fake.calls().len(), 1);
}

#[tokio::test]
async fn writes_only_while_leader_and_catches_up_on_becoming_leader() {
    let mut h = Harness::start(Fake::default(), false);
    h.publish(vec![item("a", accepted(1), None)]).await;
    h.publish(vec![
        item("a", accepted(2), None),
        item("b", accepted(1), None),
    ])
    .await;
    assert!(h.fake.calls().is_empty(), "a standby writes nothing");

    h.set_leader(true).await;
    h.wait_for_calls(2).await;
    let calls = h.fake.calls();
    assert_eq!(h.fake.names(), ["a", "b"], "the last published set");
    assert_eq!(calls[0].1["status"]["observedGeneration"], 2);

    h.set_leader(false).await;
    h.publish(vec![item("c", accepted(1), None)]).await;
    assert_eq!(h.fake.calls().len(), 2, "stopped writing on stepping down");
}

#[tokio::test]
async fn becoming_leader_again_forgets_old_writes() {
    let mut h = Harness::start(Fake::default(), true);
    let items = vec![item("a", accepted(1), None)];
    h.publish(items).await;
    assert_eq!(h.fake.calls().len(), 1);
    h.set_leader(false).await;
    // Another replica led meanwhile; the watch still shows no condition on `a`.
    h.set_leader(true).await;
    h.wait_for_calls(2).await;
}

#[tokio::test]
async fn gone_objects_are_dropped_and_conflicts_retried_on_the_next_publish() {
    let fake = Fake::default();
    fake.reply("gone", &[Reply::Gone]);
    fake.reply("busy", &[Reply::Conflict]);
    let mut h = Harness::start(fake, true);
    let items = vec![
        item("busy", accepted(1), None),
        item("gone", accepted(1), None),
    ];
    h.publish(items.clone()).await;
    assert_eq!(h.fake.names(), ["busy", "gone"]);
    // Neither failure schedules a retry by itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.fake.calls().len(), 2);
    // A later publish (the index no longer has `gone`) retries the conflict.
    h.publish(vec![items[0].clone()]).await;
    assert_eq!(h.fake.names(), ["busy", "gone", "busy"]);
    h.publish(vec![items[0].clone()]).await;
    assert_eq!(h.fake.calls().len(), 3, "the retry succeeded: not again");
}

#[tokio::test]
async fn transient_failures_and_timeouts_are_retried_by_themselves() {
    let fake = Fake::default();
    fake.reply("flaky", &[Reply::Unavailable, Reply::Unavailable]);
    fake.reply("slow", &[Reply::Hang]);
    let mut h = Harness::start(fake, true);
    h.publish(vec![
        item("flaky", accepted(1), None),
        item("slow", accepted(1), None),
    ])
    .await;
    // flaky: fail, fail, ok; slow: hang (times out), ok.
    h.wait_for_calls(5).await;
    let names = h.fake.names();
    assert_eq!(
        names.iter().filter(|n| *n == "flaky").count(),
        3,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| *n == "slow").count(),
        2,
        "{names:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(h.fake.calls().len(), 5, "no more once everything landed");
}

#[tokio::test]
async fn concurrency_is_bounded() {
    let fake = Fake {
        delay: Some(Duration::from_millis(20)),
        ..Fake::default()
    };
    let mut h = Harness::start(fake, true);
    let items = (0..40)
        .map(|i| item(&format!("o{i:02}"), accepted(1), None))
        .collect();
    h.publish(items).await;
    assert_eq!(h.fake.calls().len(), 40);
    let max = h.fake.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= CONCURRENCY, "{max} in flight");
    assert!(max > 1, "patches do run concurrently ({max})");
}

#[tokio::test]
async fn the_latest_publish_wins() {
    let gate = Arc::new(Semaphore::new(0));
    let fake = Fake {
        gate: Some(gate.clone()),
        ..Fake::default()
    };
    let h = Harness::start(fake, true);
    // A pass blocked on `a`'s patch...
    h.writer
        .publish(status_set(vec![item("a", accepted(1), None)]));
    timeout(Duration::from_secs(5), async {
        while h.fake.in_flight.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("patch started");
    // ...while two publishes arrive: only the second is ever written.
    h.writer
        .publish(status_set(vec![item("b", invalid(1, "first"), None)]));
    h.writer
        .publish(status_set(vec![item("b", invalid(1, "second"), None)]));
    gate.add_permits(10);
    h.wait_for_calls(2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls = h.fake.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].0, "b");
    assert_eq!(calls[1].1["status"]["conditions"][0]["message"], "second");
}

#[tokio::test]
async fn a_fixed_leader_flag_keeps_writing_and_dropped_handles_end_the_task() {
    let mut h = Harness::start(Fake::default(), true);
    h.publish(vec![item("a", accepted(1), None)]).await;
    assert_eq!(h.fake.calls().len(), 1);
    let Harness {
        fake,
        writer,
        leader,
        mut evaluations,
        task,
    } = h;
    // `--leader-elect=false`: a flag that is `true` and never changes (its sender gone).
    // (The elector itself never leaves `true` behind: see lease::LeaderFlag.)
    drop(leader);
    let before = *evaluations.borrow_and_update();
    writer.publish(status_set(vec![item("b", accepted(1), None)]));
    timeout(
        Duration::from_secs(5),
        evaluations.wait_for(|&n| n > before),
    )
    .await
    .expect("evaluated")
    .expect("alive");
    assert_eq!(fake.names(), ["a", "b"]);
    drop(writer);
    timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends once every handle is dropped")
        .expect("no panic");
}
