//! Types shared by several networking kinds, plus small serde helpers.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::types::MatchLabelsSelector;

/// `skip_serializing_if` helper: omit a field that holds its type's default value.
pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Matches a string by exactly one of `exact`, `prefix` or `regex` (RE2 syntax).
///
/// Modelled as a struct with three optional fields rather than an enum because Istio
/// gives an *empty* match (`{}`) a meaning in header and query-parameter maps: "the
/// header/parameter is present". [`StringMatch::kind`] gives the enum view; setting more
/// than one field is rejected by validation (and by the schema's `maxProperties: 1`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("maxProperties" = 1))]
pub struct StringMatch {
    /// Exact string match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Prefix-based match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// RE2-style regex match; the whole value must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// The single match criterion of a well-formed [`StringMatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringMatchKind<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}

impl StringMatch {
    pub fn exact(value: impl Into<String>) -> Self {
        Self {
            exact: Some(value.into()),
            ..Self::default()
        }
    }

    pub fn prefix(value: impl Into<String>) -> Self {
        Self {
            prefix: Some(value.into()),
            ..Self::default()
        }
    }

    pub fn regex(value: impl Into<String>) -> Self {
        Self {
            regex: Some(value.into()),
            ..Self::default()
        }
    }

    /// Number of criteria set (a valid match has 1, or 0 where presence matching is allowed).
    pub fn criteria_count(&self) -> usize {
        [&self.exact, &self.prefix, &self.regex]
            .into_iter()
            .filter(|c| c.is_some())
            .count()
    }

    /// `true` for `{}`, which means "present" in header and query-parameter matches.
    pub fn is_empty(&self) -> bool {
        self.criteria_count() == 0
    }

    /// The criterion, when exactly one is set; `None` for an empty or ambiguous match.
    pub fn kind(&self) -> Option<StringMatchKind<'_>> {
        match (&self.exact, &self.prefix, &self.regex) {
            (Some(e), None, None) => Some(StringMatchKind::Exact(e)),
            (None, Some(p), None) => Some(StringMatchKind::Prefix(p)),
            (None, None, Some(r)) => Some(StringMatchKind::Regex(r)),
            _ => None,
        }
    }
}

/// Selects a service port by number.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// Port number (1..=65535).
    pub number: u32,
}

/// Selects workloads by their labels (`networking.v1alpha3.WorkloadSelector`, used by
/// ServiceEntry).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must carry to be selected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A percentage, 0.0..=100.0.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// Parses a duration in Go's `time.ParseDuration` syntax as accepted by Istio for
/// durations held as strings in these types: one or more `<number><unit>` terms with
/// unit `ns`, `us` (or `µs`), `ms`, `s`, `m` or `h`, e.g. `"5s"`, `"1.5s"`, `"1m30s"`,
/// `"250ms"`. A bare `"0"` is accepted. Negative durations are rejected.
pub fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total_nanos: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after_unit) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total_nanos += value * scale;
        rest = after_unit;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total_nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("5s", Some(Duration::from_secs(5))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("250ms", Some(Duration::from_millis(250))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("2h", Some(Duration::from_secs(7200))),
            ("0", Some(Duration::ZERO)),
            ("10us", Some(Duration::from_micros(10))),
            ("", None),
            ("5", None),
            ("s", None),
            ("-5s", None),
            ("5 s", None),
            ("5sec", None),
            (".s", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), *want, "parse_duration({text:?})");
        }
    }

    #[test]
    fn string_match_kind() {
        assert_eq!(
            StringMatch::prefix("/x").kind(),
            Some(StringMatchKind::Prefix("/x"))
        );
        assert_eq!(StringMatch::default().kind(), None);
        let both = StringMatch {
            exact: Some("a".into()),
            regex: Some("b".into()),
            prefix: None,
        };
        assert_eq!(both.kind(), None);
        assert_eq!(both.criteria_count(), 2);
    }
}
