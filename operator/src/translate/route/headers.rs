//! VirtualService `headers` (on a route and on each destination) as Envoy header
//! operations, as istiod's `TranslateHeadersOperations` makes them: `set` overwrites,
//! `add` appends, each sorted by name; `:authority`/`host` cannot be set as headers and
//! become a host rewrite instead; pseudo-headers and `host` are never removed.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};

use crate::model::routing::{HeaderOps, Headers};

/// Envoy's four header lists and the authority to rewrite to.
#[derive(Debug, Default, PartialEq)]
pub struct HeaderMutations {
    pub request_to_add: Vec<HeaderValueOption>,
    pub request_to_remove: Vec<String>,
    pub response_to_add: Vec<HeaderValueOption>,
    pub response_to_remove: Vec<String>,
    /// From a request `set` (preferred) or `add` of `:authority` or `host`.
    pub authority: Option<String>,
}

pub fn header_mutations(headers: &Headers) -> HeaderMutations {
    let (request_to_add, authority) = to_add(&headers.request);
    let (response_to_add, _) = to_add(&headers.response);
    HeaderMutations {
        request_to_add,
        request_to_remove: to_remove(&headers.request),
        response_to_add,
        response_to_remove: to_remove(&headers.response),
        authority,
    }
}

/// `set` then `add` (each sorted by name, as the maps are); the authority, `set`'s first.
fn to_add(ops: &HeaderOps) -> (Vec<HeaderValueOption>, Option<String>) {
    let mut out = Vec::new();
    let mut authority = None;
    let lists = [
        (&ops.set, HeaderAppendAction::OverwriteIfExistsOrAdd),
        (&ops.add, HeaderAppendAction::AppendIfExistsOrAdd),
    ];
    for (headers, action) in lists {
        for (name, value) in headers {
            if is_authority(name) {
                authority.get_or_insert_with(|| value.clone());
            }
            if is_internal(name) {
                continue;
            }
            out.push(HeaderValueOption {
                header: Some(HeaderValue {
                    key: name.clone(),
                    value: value.clone(),
                    ..Default::default()
                }),
                append_action: action as i32,
                ..Default::default()
            });
        }
    }
    (out, authority)
}

fn to_remove(ops: &HeaderOps) -> Vec<String> {
    ops.remove
        .iter()
        .filter(|name| !is_internal(name))
        .cloned()
        .collect()
}

/// Headers Envoy does not let a route change: pseudo-headers and `host`.
fn is_internal(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn listed(options: &[HeaderValueOption]) -> Vec<(String, String, i32)> {
        options
            .iter()
            .map(|o| {
                let h = o.header.as_ref().expect("a header");
                (h.key.clone(), h.value.clone(), o.append_action)
            })
            .collect()
    }

    const SET: i32 = HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    const ADD: i32 = HeaderAppendAction::AppendIfExistsOrAdd as i32;

    #[test]
    fn set_overwrites_add_appends_remove_removes() {
        let headers = Headers {
            request: HeaderOps {
                set: map(&[("x-b", "2"), ("x-a", "1")]),
                add: map(&[("x-c", "3")]),
                remove: vec!["x-gone".into(), ":path".into(), "Host".into()],
            },
            response: HeaderOps {
                set: map(&[("x-r", "r")]),
                add: map(&[("x-q", "q")]),
                remove: vec!["server".into()],
            },
        };
        let out = header_mutations(&headers);
        let s = |k: &str, v: &str, a| (k.to_string(), v.to_string(), a);
        assert_eq!(
            listed(&out.request_to_add),
            [s("x-a", "1", SET), s("x-b", "2", SET), s("x-c", "3", ADD)]
        );
        assert_eq!(out.request_to_remove, ["x-gone"]);
        assert_eq!(
            listed(&out.response_to_add),
            [s("x-r", "r", SET), s("x-q", "q", ADD)]
        );
        assert_eq!(out.response_to_remove, ["server"]);
        assert_eq!(out.authority, None);
    }

    #[test]
    fn authority_becomes_a_host_rewrite_set_before_add() {
        let headers = Headers {
            request: HeaderOps {
                set: map(&[(":authority", "set.example")]),
                add: map(&[("host", "add.example"), ("x-k", "v")]),
                remove: Vec::new(),
            },
            response: HeaderOps::default(),
        };
        let out = header_mutations(&headers);
        assert_eq!(out.authority.as_deref(), Some("set.example"));
        assert_eq!(
            listed(&out.request_to_add),
            [("x-k".to_string(), "v".to_string(), ADD)]
        );

        let only_add = Headers {
            request: HeaderOps {
                add: map(&[("Host", "add.example")]),
                ..Default::default()
            },
            response: HeaderOps::default(),
        };
        let out = header_mutations(&only_add);
        assert_eq!(out.authority.as_deref(), Some("add.example"));
        assert!(out.request_to_add.is_empty());
    }
}
