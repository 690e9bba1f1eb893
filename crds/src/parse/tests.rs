use super::*;
use crate::networking::{Resolution, StringMatch, StringMatchKind, TlsMode};

const BOOKINFO: &str = include_str!("../../testdata/bookinfo.yaml");
const SERVICE_ENTRIES: &str = include_str!("../../testdata/service-entries.yaml");

fn parse_ok(file: &str, text: &str) -> Vec<Document> {
    parse_documents(file, text)
        .unwrap_or_else(|e| panic!("file error: {e}"))
        .into_iter()
        .map(|doc| doc.unwrap_or_else(|e| panic!("document error: {e}")))
        .collect()
}

/// The single per-document error of `text`.
fn doc_error(text: &str) -> DocumentError {
    let docs = parse_documents("test.yaml", text).unwrap_or_else(|e| panic!("file error: {e}"));
    assert_eq!(docs.len(), 1, "expected one document");
    match docs.into_iter().next() {
        Some(Err(e)) => e,
        Some(Ok(doc)) => panic!("expected an error, parsed {doc:?}"),
        None => unreachable!(),
    }
}

#[test]
fn bookinfo_parses_with_all_api_versions() {
    let docs = parse_ok("bookinfo.yaml", BOOKINFO);
    let summary: Vec<(Kind, &str, &str, &str)> = docs
        .iter()
        .map(|d| {
            (
                d.object.kind(),
                d.object.namespace_or_default(),
                d.object.name(),
                d.api_version.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                Kind::DestinationRule,
                "bookinfo",
                "reviews",
                "networking.istio.io/v1"
            ),
            (
                Kind::VirtualService,
                "bookinfo",
                "reviews",
                "networking.istio.io/v1beta1"
            ),
            (
                Kind::DestinationRule,
                "bookinfo",
                "ratings",
                "networking.istio.io/v1alpha3"
            ),
            (
                Kind::VirtualService,
                "bookinfo",
                "ratings",
                "networking.istio.io/v1alpha3"
            ),
            (
                Kind::VirtualService,
                "default",
                "productpage",
                "networking.istio.io/v1"
            ),
        ]
    );
    // The comment-only document is skipped and not counted.
    let indices: Vec<usize> = docs.iter().map(|d| d.index).collect();
    assert_eq!(indices, vec![0, 1, 2, 3, 4]);
    assert_eq!(docs[0].line, Some(2));
    assert_eq!(docs[4].object.namespace(), None);

    for doc in &docs {
        assert_eq!(
            doc.validate(),
            vec![],
            "{:?} should be valid",
            doc.object.key()
        );
    }
}

#[test]
fn bookinfo_contents() {
    let docs = parse_ok("bookinfo.yaml", BOOKINFO);
    let Some(dr) = docs[0].object.as_destination_rule() else {
        panic!("not a DestinationRule");
    };
    let names: Vec<&str> = dr.spec.subsets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["v1", "v2", "v3"]);
    let tls = dr.spec.traffic_policy.as_ref().and_then(|p| p.tls.as_ref());
    assert_eq!(tls.map(|t| t.mode), Some(TlsMode::IstioMutual));
    let v2_hash = dr.spec.subset("v2").and_then(|s| s.traffic_policy.as_ref());
    let header = v2_hash
        .and_then(|p| p.load_balancer.as_ref())
        .and_then(|lb| lb.consistent_hash.as_ref())
        .and_then(|h| h.http_header_name.as_deref());
    assert_eq!(header, Some("end-user"));

    let Some(vs) = docs[1].object.as_virtual_service() else {
        panic!("not a VirtualService");
    };
    let jason = &vs.spec.http[0];
    assert_eq!(
        jason.matches[0].headers.get("end-user"),
        Some(&StringMatch::exact("jason"))
    );
    assert_eq!(jason.route[0].destination.subset, "v2");
    assert!(vs.spec.http[1].matches.is_empty());
    assert_eq!(vs.spec.http[1].route[0].destination.subset, "v1");

    let Some(ratings) = docs[3].object.as_virtual_service() else {
        panic!("not a VirtualService");
    };
    let route = &ratings.spec.http[0];
    let weights: Vec<i32> = route.route.iter().map(|r| r.weight).collect();
    assert_eq!(weights, [80, 20]);
    let uri = route.matches[0].uri.as_ref().and_then(StringMatch::kind);
    assert_eq!(uri, Some(StringMatchKind::Prefix("/ratings")));
    assert!(route.matches[0].ignore_uri_case);
    assert_eq!(route.timeout.as_deref(), Some("10s"));
}

#[test]
fn service_entries_parse_and_validate() {
    let docs = parse_ok("service-entries.yaml", SERVICE_ENTRIES);
    assert_eq!(docs.len(), 2);
    let Some(api) = docs[0].object.as_service_entry() else {
        panic!("not a ServiceEntry");
    };
    assert_eq!(api.spec.resolution, Resolution::Dns);
    assert_eq!(api.spec.ports[1].target_port, 8080);
    let Some(db) = docs[1].object.as_service_entry() else {
        panic!("not a ServiceEntry");
    };
    assert_eq!(db.spec.resolution, Resolution::Static);
    assert_eq!(db.spec.endpoints[1].ports.get("tcp-postgres"), Some(&15432));
    assert_eq!(
        db.spec.endpoints[0].labels.get("role").map(String::as_str),
        Some("primary")
    );
    for doc in &docs {
        assert_eq!(
            doc.validate(),
            vec![],
            "{:?} should be valid",
            doc.object.key()
        );
    }
}

#[test]
fn round_trip_yaml_types_yaml_types() {
    let originals: Vec<IstioObject> = parse_ok("bookinfo.yaml", BOOKINFO)
        .into_iter()
        .chain(parse_ok("service-entries.yaml", SERVICE_ENTRIES))
        .map(|d| d.object)
        .collect();
    let mut yaml = String::new();
    for object in &originals {
        let text = serde_saphyr::to_string(object).unwrap_or_else(|e| panic!("serialize: {e}"));
        yaml.push_str("---\n");
        yaml.push_str(&text);
    }
    assert!(!yaml.contains("null"), "serialization adds noise:\n{yaml}");
    assert!(!yaml.contains("ignoreUriCase: false"), "{yaml}");
    let reparsed: Vec<IstioObject> = parse_ok("round-trip.yaml", &yaml)
        .into_iter()
        .map(|d| d.object)
        .collect();
    assert_eq!(
        reparsed, originals,
        "round trip changed objects; YAML was:\n{yaml}"
    );
}

#[test]
fn unknown_field_reports_path_and_line() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    lables:
      version: v1
";
    let err = doc_error(text);
    assert_eq!(err.reason, DocumentErrorReason::UnknownField);
    assert_eq!(err.field.as_deref(), Some("spec.subsets[0].lables"));
    assert_eq!(err.line, Some(9));
    assert_eq!(err.kind.as_deref(), Some("DestinationRule"));
    assert_eq!(err.name.as_deref(), Some("reviews"));
    let shown = err.to_string();
    assert!(
        shown.starts_with("test.yaml:9: document 1 (DestinationRule reviews): spec.subsets[0].lables: unknown field `lables`"),
        "{shown}"
    );
    assert!(
        shown.contains("`labels`"),
        "should list expected fields: {shown}"
    );
}

#[test]
fn unknown_fields_in_nested_maps_and_top_level() {
    let typo_in_string_match = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [r]
  http:
  - match:
    - headers:
        end-user: {exatc: jason}
    route:
    - destination: {host: r}
";
    let err = doc_error(typo_in_string_match);
    assert_eq!(
        err.field.as_deref(),
        Some("spec.http[0].match[0].headers.end-user.exatc")
    );
    assert_eq!(err.line, Some(9));

    let top_level =
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspce: {}\n";
    let err = doc_error(top_level);
    assert_eq!(err.reason, DocumentErrorReason::UnknownField);
    assert_eq!(err.field.as_deref(), Some("spce"));
    assert_eq!(err.line, Some(4));
}

#[test]
fn wrong_types_and_enum_values() {
    let cases: &[(&str, &str)] = &[
        (
            "kind: VirtualService\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n      weight: eighty\n",
            "spec.http[0].route[0].weight",
        ),
        (
            "kind: ServiceEntry\nspec:\n  hosts: [a.example.com]\n  resolution: DNZ\n",
            "spec.resolution",
        ),
        (
            "kind: ServiceEntry\nspec:\n  hosts: [a.example.com]\n  ports:\n  - number: -1\n    name: x\n",
            "spec.ports[0].number",
        ),
        (
            "kind: DestinationRule\nspec:\n  host: r\n  subsets:\n  - name: v1\n    labels: {version: [1]}\n",
            "spec.subsets[0].labels.version",
        ),
        ("kind: DestinationRule\nspec: just-a-string\n", "spec"),
        // A sequence is not accepted where a struct is expected (no positional fields).
        ("kind: DestinationRule\nspec: [reviews]\n", "spec"),
        (
            "kind: VirtualService\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r, port: [80]}\n",
            "spec.http[0].route[0].destination.port",
        ),
    ];
    for (body, field) in cases {
        let text = format!("apiVersion: networking.istio.io/v1\nmetadata: {{name: t}}\n{body}");
        let err = doc_error(&text);
        assert_eq!(err.reason, DocumentErrorReason::InvalidField, "{err}");
        assert_eq!(err.field.as_deref(), Some(*field), "{err}");
    }
}

#[test]
fn unsupported_kinds_and_versions_do_not_stop_other_documents() {
    let text = "\
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ef}
spec: {}
---
apiVersion: networking.istio.io/v2
kind: VirtualService
metadata: {name: vs}
---
apiVersion: security.istio.io/v1
kind: DestinationRule
metadata: {name: dr}
---
apiVersion: networking.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: pa}
---
apiVersion: security.istio.io/v1alpha3
kind: AuthorizationPolicy
metadata: {name: ap}
---
kind: ServiceEntry
metadata: {name: se}
---
just a string
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ok, namespace: prod}
spec:
  hosts: [ok.example.com]
";
    let docs = parse_documents("mixed.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    let reasons: Vec<Result<Kind, DocumentErrorReason>> = docs
        .iter()
        .map(|d| d.as_ref().map(|d| d.object.kind()).map_err(|e| e.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            Err(DocumentErrorReason::UnsupportedKind),
            Err(DocumentErrorReason::UnsupportedApiVersion),
            Err(DocumentErrorReason::UnsupportedApiVersion),
            Err(DocumentErrorReason::UnsupportedApiVersion),
            Err(DocumentErrorReason::UnsupportedApiVersion),
            Err(DocumentErrorReason::MissingTypeInfo),
            Err(DocumentErrorReason::NotAnObject),
            Ok(Kind::ServiceEntry),
        ]
    );
    let Some(Err(filter)) = docs.first() else {
        panic!("expected an error");
    };
    assert!(
        filter
            .to_string()
            .contains("unsupported kind `EnvoyFilter`"),
        "{filter}"
    );
    assert_eq!(filter.line, Some(2));
    assert_eq!(
        filter.api_version.as_deref(),
        Some("networking.istio.io/v1alpha3")
    );
    let Some(Err(pa)) = docs.get(3) else {
        panic!("expected an error");
    };
    assert!(
        pa.message
            .contains("expected security.istio.io/ followed by one of v1, v1beta1"),
        "{pa}"
    );
    let Some(Err(v2)) = docs.get(1) else {
        panic!("expected an error");
    };
    assert!(v2.to_string().contains("networking.istio.io/v2"), "{v2}");
    assert_eq!(v2.index, 1);
    assert!(
        v2.to_string().contains("document 2 (VirtualService vs)"),
        "{v2}"
    );
}

#[test]
fn syntax_error_is_a_file_error_with_line() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ok
spec:
  hosts: [ok.example.com
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
";
    let err = match parse_documents("broken.yaml", text) {
        Err(e) => e,
        Ok(docs) => panic!("expected a file error, got {docs:?}"),
    };
    assert_eq!(err.file, "broken.yaml");
    assert!(err.line.is_some(), "{err:?}");
    assert!(err.to_string().starts_with("broken.yaml:"), "{err}");
    assert!(!err.message.contains('\n'));
    assert!(
        !err.message.contains("at line"),
        "location is shown once: {err}"
    );

    let bad_indent = "a:\n  b: 1\n c: 2\n";
    let err = match parse_documents("indent.yaml", bad_indent) {
        Err(e) => e,
        Ok(docs) => panic!("expected a file error, got {docs:?}"),
    };
    assert_eq!(err.line, Some(3), "{err}");
}

#[test]
fn duplicate_keys_are_rejected() {
    let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nkind: ServiceEntry\n";
    assert!(parse_documents("dup.yaml", text).is_err());
}

#[test]
fn empty_and_comment_only_files_have_no_documents() {
    for text in ["", "\n", "# nothing\n", "---\n---\n", "---\n# c\n...\n"] {
        let docs = parse_documents("empty.yaml", text).unwrap_or_else(|e| panic!("{e}"));
        assert!(docs.is_empty(), "{text:?}");
    }
}

#[test]
fn null_fields_mean_absent() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: x}
spec:
  hosts:
  ports:
  resolution:
";
    let docs = parse_ok("nulls.yaml", text);
    let Some(se) = docs[0].object.as_service_entry() else {
        panic!("not a ServiceEntry");
    };
    assert!(se.spec.hosts.is_empty());
    assert_eq!(se.spec.resolution, Resolution::None);
}

#[test]
fn validation_errors_map_to_lines() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings, subset: v1}
      weight: 80
    - destination: {host: ratings, subset: v2}
      weight: 10
";
    let docs = parse_ok("weights.yaml", text);
    let errors = docs[0].validate();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field, "spec.http[0].route");
    assert_eq!(docs[0].line_of(&errors[0].field), Some(8));
    assert_eq!(docs[0].line_of("spec.http[0].route[1].weight"), Some(12));
    assert_eq!(docs[0].line_of("spec.http[0].route[1].headers"), Some(11));
    assert_eq!(docs[0].line_of("spec.nothing.here"), Some(5));
}

#[test]
fn parse_single_requires_one_document() {
    let one = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec: {hosts: [x.example.com]}\n";
    assert!(parse_single("one.yaml", one).is_ok());
    let two = format!("{one}---\n{one}");
    assert!(matches!(
        parse_single("two.yaml", &two),
        Err(ParseError::File(_))
    ));
    assert!(matches!(
        parse_single("none.yaml", ""),
        Err(ParseError::File(_))
    ));
    let bad = "apiVersion: v1\nkind: Pod\n";
    assert!(matches!(
        parse_single("pod.yaml", bad),
        Err(ParseError::Document(_))
    ));
}

#[test]
fn deep_nesting_is_refused_without_crashing() {
    let depth = 100_000;
    let text = format!("spec: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    assert!(parse_documents("deep.yaml", &text).is_err());
}

#[test]
fn anchors_and_aliases_are_resolved() {
    let text = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r}
spec:
  host: r
  subsets:
  - name: v1
    labels: &v1 {version: v1}
  - name: v1-copy
    labels: *v1
";
    let docs = parse_ok("anchors.yaml", text);
    let Some(dr) = docs[0].object.as_destination_rule() else {
        panic!("not a DestinationRule");
    };
    assert_eq!(dr.spec.subsets[0].labels, dr.spec.subsets[1].labels);
}

#[test]
fn security_kinds_parse_in_their_versions() {
    let text = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec: {}
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
";
    let docs = parse_ok("security.yaml", text);
    let kinds: Vec<Kind> = docs.iter().map(|d| d.object.kind()).collect();
    assert_eq!(
        kinds,
        [
            Kind::PeerAuthentication,
            Kind::AuthorizationPolicy,
            Kind::Gateway
        ]
    );
    let yaml = serde_saphyr::to_string(&docs[0].object).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        yaml.starts_with("apiVersion: security.istio.io/v1\n"),
        "{yaml}"
    );
    for doc in &docs {
        assert_eq!(doc.validate(), vec![], "{:?}", doc.object.key());
    }
}
