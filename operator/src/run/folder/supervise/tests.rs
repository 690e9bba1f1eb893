use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

use super::{Readiness, restarting, watch_task};
use crate::monitoring::ReadyState;

const PART: &str = "the test task";

#[tokio::test]
async fn a_task_that_dies_is_restarted_and_capstan_is_not_ready_meanwhile() {
    let (tx, mut ready) = watch::channel(ReadyState::ready());
    let readiness = Readiness::new(tx);
    let runs = Arc::new(AtomicUsize::new(0));
    let supervisor = tokio::spawn(restarting(PART, readiness.clone(), {
        let runs = runs.clone();
        move || {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            let readiness = readiness.clone();
            async move {
                if run == 0 {
                    panic!("boom");
                }
                readiness.set(PART, None);
                std::future::pending::<()>().await;
            }
        }
    }));

    let failing = ready
        .wait_for(|state| state.failing.contains_key(PART))
        .await
        .expect("the supervisor runs")
        .failing[PART]
        .clone();
    assert!(failing.contains("panicked: boom"), "{failing}");
    assert!(failing.contains("restarting"), "{failing}");
    ready
        .wait_for(ReadyState::is_ready)
        .await
        .expect("the supervisor runs");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    supervisor.abort();
}

#[tokio::test]
async fn a_task_that_cannot_be_restarted_makes_capstan_not_ready_for_good() {
    let (tx, mut ready) = watch::channel(ReadyState::ready());
    let task = tokio::spawn(async { panic!("queue gone") });
    watch_task(PART, task, Readiness::new(tx)).await;
    let state = ready.borrow_and_update().clone();
    assert!(!state.is_ready());
    assert!(
        state.failing[PART].contains("panicked: queue gone"),
        "{state:?}"
    );
}
