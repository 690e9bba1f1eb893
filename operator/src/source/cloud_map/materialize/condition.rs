//! The `CloudMapSynced` condition on the ServiceEntries capstan materialises: whether they
//! reflect Cloud Map now or are the last good view kept while Cloud Map cannot be read.
//! Written next to other controllers' conditions (capstan's own `Reconciled` included),
//! which are kept as they are.

use serde_json::{Value, json};

pub const CONDITION: &str = "CloudMapSynced";

/// Whether the last polls of Cloud Map succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    pub synced: bool,
    /// `Polled`, `Throttled` or `PollFailed`.
    pub reason: String,
    pub message: String,
}

impl SyncState {
    pub fn synced() -> Self {
        SyncState {
            synced: true,
            reason: "Polled".into(),
            message: "the last Cloud Map poll succeeded".into(),
        }
    }

    pub fn failed(throttled: bool, error: &str) -> Self {
        SyncState {
            synced: false,
            reason: if throttled { "Throttled" } else { "PollFailed" }.into(),
            message: format!("Cloud Map cannot be read; this is the last good view: {error}"),
        }
    }
}

/// `status.conditions` with ours set to `state` (the others kept, in order); `None` when
/// ours already says it. `now` is an RFC 3339 time: the transition time when the status
/// flips, else the one it had is kept.
pub fn conditions(status: Option<&Value>, state: &SyncState, now: &str) -> Option<Value> {
    let existing: Vec<Value> = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let status_text = if state.synced { "True" } else { "False" };
    let ours = existing
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(CONDITION));
    if let Some(ours) = ours
        && ours.get("status").and_then(Value::as_str) == Some(status_text)
        && ours.get("reason").and_then(Value::as_str) == Some(state.reason.as_str())
        && ours.get("message").and_then(Value::as_str) == Some(state.message.as_str())
    {
        return None;
    }
    let since = ours
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status_text))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| Value::from(now));
    let condition = json!({
        "type": CONDITION,
        "status": status_text,
        "reason": state.reason,
        "message": state.message,
        "lastTransitionTime": since,
    });
    let mut out: Vec<Value> = existing
        .into_iter()
        .filter(|c| c.get("type").and_then(Value::as_str) != Some(CONDITION))
        .collect();
    out.push(condition);
    Some(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_are_kept_and_the_transition_time_moves_only_on_a_flip() {
        let status = json!({"conditions": [
            {"type": "Reconciled", "status": "True", "reason": "Accepted", "message": "ok"}
        ]});
        let synced = SyncState::synced();
        let first = conditions(Some(&status), &synced, "2026-12-05T00:00:00Z").expect("added");
        assert_eq!(first[0]["type"], "Reconciled");
        assert_eq!(first[1]["status"], "True");
        let status = json!({ "conditions": first });
        // Already said: nothing to write.
        assert_eq!(
            conditions(Some(&status), &synced, "2026-12-05T01:00:00Z"),
            None
        );
        let failed = SyncState::failed(true, "Rate exceeded");
        let flipped = conditions(Some(&status), &failed, "2026-12-05T02:00:00Z").expect("flipped");
        assert_eq!(flipped[1]["reason"], "Throttled");
        assert_eq!(flipped[1]["lastTransitionTime"], "2026-12-05T02:00:00Z");
        // Still failing, another message: the transition time stays.
        let status = json!({ "conditions": flipped });
        let again = conditions(
            Some(&status),
            &SyncState::failed(false, "timeout"),
            "2026-12-05T03:00:00Z",
        )
        .expect("new reason");
        assert_eq!(again[1]["lastTransitionTime"], "2026-12-05T02:00:00Z");
        assert_eq!(again.as_array().map(Vec::len), Some(2));
    }
}
