//! The `Reconciled` condition: what capstan says about each Istio object.
//!
//! Istio's status (`IstioStatus`) is a list of conditions plus a top-level
//! `observedGeneration`. Several controllers may write conditions on one object, and the
//! status subresource is patched with a JSON merge patch, which replaces lists whole: so the
//! patch built here carries every other condition unchanged and replaces only ours.
//!
//! Comparing what the condition should say ([`Desired`]) with what the object showed when
//! last watched ([`Observed`]) is what keeps status writes quiet: capstan patches only where
//! the two differ, and its own write, once watched back, matches.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};

/// The condition type capstan owns on every Istio object it watches.
pub const CONDITION_TYPE: &str = "Reconciled";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    #[allow(
        dead_code,
        reason = "part of the Kubernetes condition vocabulary; nothing reports it yet"
    )]
    Unknown,
}

impl ConditionStatus {
    /// The string written to `status.conditions[].status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// Why an object is (or is not) reconciled. The string forms are documented in
/// docs/kubernetes.md; keep the two in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Valid, and everything in it is served to proxies.
    Accepted,
    /// Valid, but some of it cannot be honoured (the message names the field).
    PartiallyApplied,
    /// Fails validation; the last good version (if any) is still served.
    Invalid,
    /// A kind capstan parses and validates but does not translate yet.
    NotSupported,
}

impl Reason {
    /// The string written to `status.conditions[].reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::PartiallyApplied => "PartiallyApplied",
            Reason::Invalid => "Invalid",
            Reason::NotSupported => "NotSupported",
        }
    }
}

/// What the `Reconciled` condition of one object should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// `metadata.generation` of the version this condition describes.
    pub generation: i64,
    pub status: ConditionStatus,
    pub reason: Reason,
    pub message: String,
}

/// The `Reconciled` condition found on an object as watched (absent: none written yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub observed_generation: Option<i64>,
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl Observed {
    /// Reads the `Reconciled` entry of `status.conditions[]` from an object's `status`.
    ///
    /// `None` when there is no such entry (or `status` is not an object). Missing string
    /// fields read as `""`, which never matches a [`Desired`], so a malformed entry gets
    /// rewritten. The generation is the condition's own `observedGeneration` if it has one,
    /// else the status's top-level one; either may be an integer or a string of digits
    /// (the CRD declares both as int-or-string).
    pub fn from_status(status: &Value) -> Option<Observed> {
        let condition = conditions(status)?.iter().find(|c| is_ours(c))?;
        let text = |field: &str| {
            condition
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let observed_generation = condition
            .get("observedGeneration")
            .and_then(int_or_string)
            .or_else(|| status.get("observedGeneration").and_then(int_or_string));
        Some(Observed {
            observed_generation,
            status: text("status"),
            reason: text("reason"),
            message: text("message"),
        })
    }
}

impl Desired {
    /// Whether the object already shows this condition: same generation, status, reason
    /// and message.
    pub fn matches(&self, observed: &Observed) -> bool {
        observed.observed_generation == Some(self.generation)
            && observed.status == self.status.as_str()
            && observed.reason == self.reason.as_str()
            && observed.message == self.message
    }

    /// The JSON merge patch body for the `status` subresource that makes the object show
    /// this condition.
    ///
    /// A merge patch replaces `conditions` whole, so every condition of other types in
    /// `existing_status` is carried over unchanged, in its place; ours is appended in place
    /// of any existing `Reconciled` entries. `lastTransitionTime` is kept from the existing
    /// `Reconciled` entry when its status (`True`/`False`/`Unknown`) is unchanged, else it is
    /// `now` (whole seconds, RFC 3339 UTC). Other `status` fields (`validationMessages`, …)
    /// are not in the patch, so they stay as they are.
    pub fn status_patch(&self, existing_status: Option<&Value>, now: Timestamp) -> Value {
        let existing = existing_status
            .and_then(conditions)
            .map_or(&[][..], Vec::as_slice);
        let mut kept: Vec<Value> = existing.iter().filter(|c| !is_ours(c)).cloned().collect();
        let previous = existing.iter().find(|c| is_ours(c));
        let transition = previous
            .filter(|c| c.get("status").and_then(Value::as_str) == Some(self.status.as_str()))
            .and_then(|c| c.get("lastTransitionTime"))
            .and_then(Value::as_str)
            .map_or_else(|| rfc3339_seconds(now), str::to_owned);
        let mut ours = Map::new();
        ours.insert("type".into(), CONDITION_TYPE.into());
        ours.insert("status".into(), self.status.as_str().into());
        ours.insert("reason".into(), self.reason.as_str().into());
        ours.insert("message".into(), self.message.clone().into());
        ours.insert("lastTransitionTime".into(), transition.into());
        ours.insert("observedGeneration".into(), self.generation.into());
        kept.push(Value::Object(ours));
        json!({
            "status": {
                "conditions": kept,
                "observedGeneration": self.generation,
            }
        })
    }
}

/// `status.conditions`, if it is a list.
fn conditions(status: &Value) -> Option<&Vec<Value>> {
    status.get("conditions")?.as_array()
}

fn is_ours(condition: &Value) -> bool {
    condition.get("type").and_then(Value::as_str) == Some(CONDITION_TYPE)
}

/// An int-or-string generation: `3` or `"3"`.
fn int_or_string(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `2024-05-01T12:00:00Z`: Kubernetes' `metav1.Time` form (whole seconds).
fn rfc3339_seconds(now: Timestamp) -> String {
    now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(generation: i64, status: ConditionStatus, reason: Reason, message: &str) -> Desired {
        Desired {
            generation,
            status,
            reason,
            message: message.to_owned(),
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    #[test]
    fn string_forms() {
        assert_eq!(ConditionStatus::True.as_str(), "True");
        assert_eq!(ConditionStatus::False.as_str(), "False");
        assert_eq!(ConditionStatus::Unknown.as_str(), "Unknown");
        assert_eq!(Reason::Accepted.as_str(), "Accepted");
        assert_eq!(Reason::PartiallyApplied.as_str(), "PartiallyApplied");
        assert_eq!(Reason::Invalid.as_str(), "Invalid");
        assert_eq!(Reason::NotSupported.as_str(), "NotSupported");
    }

    #[test]
    fn from_status_reads_our_condition_among_others() {
        let status = json!({
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "X", "message": "other"},
                {"type": "Reconciled", "status": "True", "reason": "Accepted",
                 "message": "ok", "observedGeneration": 4},
            ],
            "observedGeneration": 2,
        });
        assert_eq!(
            Observed::from_status(&status),
            Some(Observed {
                observed_generation: Some(4),
                status: "True".into(),
                reason: "Accepted".into(),
                message: "ok".into(),
            })
        );
    }

    #[test]
    fn from_status_generation_falls_back_to_top_level_and_accepts_strings() {
        let status = json!({
            "conditions": [{"type": "Reconciled", "status": "False", "reason": "Invalid", "message": "m"}],
            "observedGeneration": "7",
        });
        let observed = Observed::from_status(&status).expect("condition present");
        assert_eq!(observed.observed_generation, Some(7));

        let status = json!({
            "conditions": [{"type": "Reconciled", "status": "True", "observedGeneration": "12"}],
            "observedGeneration": 3,
        });
        let observed = Observed::from_status(&status).expect("condition present");
        assert_eq!(
            observed.observed_generation,
            Some(12),
            "the condition's own wins"
        );
        assert_eq!(observed.reason, "", "missing fields read as empty");
        assert_eq!(observed.message, "");

        let status = json!({"conditions": [{"type": "Reconciled", "status": "True",
                                            "observedGeneration": "not a number"}]});
        assert_eq!(
            Observed::from_status(&status).and_then(|o| o.observed_generation),
            None
        );
    }

    #[test]
    fn from_status_none_without_our_condition() {
        assert_eq!(Observed::from_status(&json!({})), None);
        assert_eq!(Observed::from_status(&json!(null)), None);
        assert_eq!(Observed::from_status(&json!({"conditions": "bogus"})), None);
        assert_eq!(
            Observed::from_status(&json!({"conditions": [{"type": "Ready", "status": "True"}],
                                          "observedGeneration": 1})),
            None
        );
    }

    #[test]
    fn matches_compares_all_four_fields() {
        let d = desired(3, ConditionStatus::True, Reason::Accepted, "ok");
        let same = Observed {
            observed_generation: Some(3),
            status: "True".into(),
            reason: "Accepted".into(),
            message: "ok".into(),
        };
        assert!(d.matches(&same));
        assert!(!d.matches(&Observed {
            observed_generation: Some(2),
            ..same.clone()
        }));
        assert!(!d.matches(&Observed {
            observed_generation: None,
            ..same.clone()
        }));
        assert!(!d.matches(&Observed {
            status: "False".into(),
            ..same.clone()
        }));
        assert!(!d.matches(&Observed {
            reason: "Invalid".into(),
            ..same.clone()
        }));
        assert!(!d.matches(&Observed {
            message: "ok ".into(),
            ..same
        }));
    }

    #[test]
    fn patch_on_empty_status() {
        let d = desired(
            2,
            ConditionStatus::False,
            Reason::Invalid,
            "spec.http[0]: bad",
        );
        let patch = d.status_patch(None, ts("2024-05-01T12:00:00.123456Z"));
        assert_eq!(
            patch,
            json!({"status": {
                "conditions": [{
                    "type": "Reconciled", "status": "False", "reason": "Invalid",
                    "message": "spec.http[0]: bad",
                    "lastTransitionTime": "2024-05-01T12:00:00Z",
                    "observedGeneration": 2,
                }],
                "observedGeneration": 2,
            }})
        );
        // What we wrote reads back as matching.
        let observed = Observed::from_status(&patch["status"]).expect("written condition");
        assert!(d.matches(&observed));
    }

    #[test]
    fn patch_keeps_other_conditions_and_replaces_ours() {
        let existing = json!({
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "R", "lastTransitionTime": "2020-01-01T00:00:00Z"},
                {"type": "Reconciled", "status": "True", "reason": "Accepted", "message": "old",
                 "lastTransitionTime": "2023-01-01T00:00:00Z", "observedGeneration": 1},
                {"type": "Other", "status": "Unknown", "x-extra": {"kept": true}},
            ],
            "validationMessages": [{"level": "WARNING"}],
            "observedGeneration": 1,
        });
        let d = desired(2, ConditionStatus::True, Reason::PartiallyApplied, "new");
        let patch = d.status_patch(Some(&existing), ts("2024-05-01T12:00:00Z"));
        let conditions = patch["status"]["conditions"].as_array().expect("list");
        assert_eq!(conditions.len(), 3);
        assert_eq!(conditions[0], existing["conditions"][0]);
        assert_eq!(conditions[1], existing["conditions"][2]);
        assert_eq!(conditions[2]["reason"], "PartiallyApplied");
        assert_eq!(conditions[2]["message"], "new");
        assert_eq!(
            conditions[2]["lastTransitionTime"], "2023-01-01T00:00:00Z",
            "status stayed True: transition time kept"
        );
        assert_eq!(patch["status"]["observedGeneration"], 2);
        assert!(
            patch["status"].get("validationMessages").is_none(),
            "fields we do not own are left out of the merge patch"
        );
    }

    #[test]
    fn patch_new_transition_time_when_status_changes() {
        let existing = json!({"conditions": [
            {"type": "Reconciled", "status": "True", "reason": "Accepted",
             "lastTransitionTime": "2023-01-01T00:00:00Z"},
        ]});
        let d = desired(5, ConditionStatus::False, Reason::Invalid, "broken");
        let patch = d.status_patch(Some(&existing), ts("2024-05-01T12:34:56Z"));
        assert_eq!(
            patch["status"]["conditions"][0]["lastTransitionTime"],
            "2024-05-01T12:34:56Z"
        );

        // Same status but no recorded time: now.
        let existing = json!({"conditions": [{"type": "Reconciled", "status": "False"}]});
        let patch = d.status_patch(Some(&existing), ts("2024-05-01T12:34:56Z"));
        assert_eq!(
            patch["status"]["conditions"][0]["lastTransitionTime"],
            "2024-05-01T12:34:56Z"
        );
    }

    #[test]
    fn patch_collapses_duplicate_reconciled_entries() {
        let existing = json!({"conditions": [
            {"type": "Reconciled", "status": "True", "lastTransitionTime": "2023-01-01T00:00:00Z"},
            {"type": "Reconciled", "status": "False"},
        ]});
        let d = desired(1, ConditionStatus::True, Reason::Accepted, "");
        let patch = d.status_patch(Some(&existing), ts("2024-05-01T00:00:00Z"));
        let conditions = patch["status"]["conditions"].as_array().expect("list");
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0]["lastTransitionTime"], "2023-01-01T00:00:00Z");
    }

    #[test]
    fn patch_tolerates_malformed_existing_status() {
        let d = desired(1, ConditionStatus::True, Reason::Accepted, "");
        for existing in [json!(null), json!("x"), json!({"conditions": {"a": 1}})] {
            let patch = d.status_patch(Some(&existing), ts("2024-05-01T00:00:00Z"));
            assert_eq!(
                patch["status"]["conditions"].as_array().map(Vec::len),
                Some(1)
            );
        }
    }
}
