use capstan_crds::Kind;
use capstan_xds::{ProxyInfo, Role};

use super::fixtures::{service_entry as entry, sidecar, sidecar_proxy as sidecar_in};

use super::*;
use crate::index::{Index, istio_event as istio};

fn mesh(yamls: &[String]) -> (Mesh, Vec<Problem>) {
    let mut index = Index::new();
    for yaml in yamls {
        index.handle(istio(yaml));
    }
    Mesh::build(&index, "cluster.local")
}

/// Whether a sidecar in `namespace` with `labels` sees service `name.ns`.
fn sees(mesh: &Mesh, proxy: &ProxyInfo, service: &str) -> bool {
    let host = format!("{service}.svc.cluster.local");
    let namespace = service.split('.').nth(1).unwrap_or_default();
    let export_to = &mesh.services[&host].export_to;
    ScopeViews::new(mesh)
        .visibility(namespace, &host, export_to)
        .is_none_or(|v| v.allows(proxy))
}

#[test]
fn egress_hosts_name_services_by_namespace_and_host() {
    let own = EgressHost::parse("./*").expect("valid");
    assert!(own.names(true, "shop", "cart.shop.svc.cluster.local"));
    assert!(!own.names(false, "shop", "cart.shop.svc.cluster.local"));
    let named = EgressHost::parse("shop/*.shop.svc.cluster.local").expect("valid");
    assert!(named.names(false, "shop", "cart.shop.svc.cluster.local"));
    assert!(!named.names(false, "web", "cart.shop.svc.cluster.local"));
    let exact = EgressHost::parse("*/api.example.com").expect("valid");
    assert!(exact.names(false, "anywhere", "api.example.com"));
    assert!(!exact.names(false, "anywhere", "www.example.com"));
    assert!(EgressHost::parse("~/*").is_none(), "`~`: no namespace");
}

#[test]
fn a_root_namespace_default_scopes_every_namespace_without_its_own() {
    let (mesh, problems) = mesh(&[
        entry("cart", "shop"),
        entry("pages", "web"),
        entry("telemetry", "istio-system"),
        sidecar(
            "default",
            "istio-system",
            None,
            "[\"./*\", \"istio-system/*\"]",
        ),
        // `web` sees its own services and shop's cart, not istio-system's.
        sidecar(
            "default",
            "web",
            None,
            "[\"./*\", \"shop/cart.shop.svc.cluster.local\"]",
        ),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let shop = sidecar_in("shop", &[]);
    assert!(sees(&mesh, &shop, "cart.shop"));
    assert!(sees(&mesh, &shop, "telemetry.istio-system"));
    assert!(!sees(&mesh, &shop, "pages.web"));
    let web = sidecar_in("web", &[]);
    assert!(sees(&mesh, &web, "pages.web"));
    assert!(sees(&mesh, &web, "cart.shop"));
    assert!(!sees(&mesh, &web, "telemetry.istio-system"));
    // A namespace with no services of its own reads the default too.
    let empty = sidecar_in("empty", &[]);
    assert!(!sees(&mesh, &empty, "cart.shop"));
    assert!(sees(&mesh, &empty, "telemetry.istio-system"));
    // Gateways are not sidecars: a Sidecar never scopes them.
    let gateway = ProxyInfo {
        role: Role::Router,
        ..sidecar_in("web", &[])
    };
    assert!(sees(&mesh, &gateway, "telemetry.istio-system"));
}

#[test]
fn a_workload_scope_narrows_its_namespace_and_without_any_scope_all_is_seen() {
    let (unscoped, _) = mesh(&[entry("cart", "shop"), entry("pages", "web")]);
    assert!(ScopeViews::new(&unscoped).is_empty());
    assert!(sees(&unscoped, &sidecar_in("web", &[]), "cart.shop"));

    let (mesh, _) = mesh(&[
        entry("cart", "shop"),
        entry("pages", "web"),
        sidecar("frontend", "web", Some("app: frontend"), "[\"shop/*\"]"),
    ]);
    let frontend = sidecar_in("web", &[("app", "frontend")]);
    assert!(sees(&mesh, &frontend, "cart.shop"));
    assert!(!sees(&mesh, &frontend, "pages.web"), "not even its own");
    // Other workloads of the namespace, and other namespaces, are not scoped.
    assert!(sees(
        &mesh,
        &sidecar_in("web", &[("app", "admin")]),
        "pages.web"
    ));
    assert!(sees(&mesh, &sidecar_in("shop", &[]), "pages.web"));
}

#[test]
fn destinations_of_a_named_virtual_service_are_seen() {
    let routed = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: web}
spec:
  hosts: [cart.web.svc.cluster.local]
  http: [{route: [{destination: {host: cart.shop.svc.cluster.local}}]}]
";
    let (mesh, _) = mesh(&[
        entry("cart", "shop"),
        entry("cart", "web"),
        entry("other", "shop"),
        routed.to_string(),
        sidecar("default", "web", None, "[\"./*\"]"),
    ]);
    let web = sidecar_in("web", &[]);
    assert!(sees(&mesh, &web, "cart.web"));
    assert!(
        sees(&mesh, &web, "cart.shop"),
        "the VirtualService routes there"
    );
    assert!(!sees(&mesh, &web, "other.shop"));
}

#[test]
fn a_second_scope_for_the_same_sidecars_is_reported_and_not_applied() {
    let (mesh, problems) = mesh(&[
        entry("cart", "shop"),
        sidecar("a", "web", None, "[\"shop/*\"]"),
        sidecar("b", "web", None, "[\"./*\"]"),
    ]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].object.kind, Kind::Sidecar);
    assert_eq!(problems[0].object.name, "b");
    assert!(
        problems[0].message.contains("Sidecar web/a"),
        "{}",
        problems[0]
    );
    assert!(
        sees(&mesh, &sidecar_in("web", &[]), "cart.shop"),
        "`a` wins"
    );
}

#[test]
fn export_to_narrows_what_a_scope_sees() {
    let exported_to_web = entry("cart", "shop").replace(
        "  resolution: STATIC",
        "  exportTo: [., web]\n  resolution: STATIC",
    );
    // Without any Sidecar: the namespaces it is exported to.
    let (unscoped, _) = mesh(std::slice::from_ref(&exported_to_web));
    assert!(sees(&unscoped, &sidecar_in("shop", &[]), "cart.shop"));
    assert!(sees(&unscoped, &sidecar_in("web", &[]), "cart.shop"));
    assert!(!sees(&unscoped, &sidecar_in("admin", &[]), "cart.shop"));

    // With a default that sees only its own namespace, and web's own that sees everything:
    // both must allow.
    let (mesh, _) = mesh(&[
        exported_to_web,
        sidecar("default", "istio-system", None, "[\"./*\"]"),
        sidecar("default", "web", None, "[\"*/*\"]"),
        sidecar("default", "admin", None, "[\"*/*\"]"),
    ]);
    assert!(sees(&mesh, &sidecar_in("shop", &[]), "cart.shop"));
    assert!(sees(&mesh, &sidecar_in("web", &[]), "cart.shop"));
    assert!(
        !sees(&mesh, &sidecar_in("admin", &[]), "cart.shop"),
        "not exported"
    );
    assert!(
        !sees(&mesh, &sidecar_in("other", &[]), "cart.shop"),
        "neither"
    );
}

#[test]
fn the_default_infers_destinations_per_namespace() {
    let routed = |exported: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: front, namespace: web}}
spec:
  hosts: [front.web.svc.cluster.local]
  exportTo: {exported}
  http: [{{route: [{{destination: {{host: cart.shop.svc.cluster.local}}}}]}}]
"
        )
    };
    let root = sidecar(
        "default",
        "istio-system",
        None,
        "[\"./*\", \"*/front.web.svc.cluster.local\"]",
    );
    // `./*` names web's VirtualService for web's sidecars only; exported to `api` too, and
    // named there by `*/front…`, it is api's as well.
    let (mesh, _) = mesh(&[
        entry("cart", "shop"),
        entry("front", "web"),
        routed("[., api]"),
        root,
    ]);
    assert!(sees(&mesh, &sidecar_in("web", &[]), "cart.shop"));
    assert!(sees(&mesh, &sidecar_in("api", &[]), "cart.shop"));
    assert!(
        !sees(&mesh, &sidecar_in("other", &[]), "cart.shop"),
        "not exported there"
    );
    assert!(
        sees(&mesh, &sidecar_in("shop", &[]), "cart.shop"),
        "its own namespace"
    );
}

/// A Sidecar that sets only an outbound traffic policy (`policy` YAML).
fn policy_sidecar(name: &str, namespace: &str, selector: Option<&str>, policy: &str) -> String {
    let spec = format!("  outboundTrafficPolicy: {policy}\n");
    super::fixtures::sidecar_with(name, namespace, selector, &spec)
}

#[test]
fn a_sidecar_without_egress_sees_every_service() {
    let (mesh, problems) = mesh(&[
        entry("cart", "shop"),
        entry("pages", "web"),
        policy_sidecar("default", "web", None, "{mode: REGISTRY_ONLY}"),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    let web = sidecar_in("web", &[]);
    assert!(sees(&mesh, &web, "cart.shop") && sees(&mesh, &web, "pages.web"));
}

#[test]
fn each_sidecar_reads_the_outbound_mode_of_its_scope_or_the_mesh() {
    use OutboundMode::{AllowAny, RegistryOnly};
    let (unscoped, _) = mesh(&[entry("cart", "shop")]);
    for mode in [AllowAny, RegistryOnly] {
        let modes = unscoped.sidecar_scopes.outbound_modes(mode.clone());
        assert_eq!((modes.everyone, modes.scoped.len()), (mode, 0));
    }

    let (mesh, _) = mesh(&[
        // The root default narrows egress but leaves the mode to the mesh.
        sidecar("default", "istio-system", None, "[\"./*\"]"),
        // A policy without a mode is REGISTRY_ONLY, as in Istio's API.
        policy_sidecar("default", "shop", None, "{}"),
        // Workloads of shop whose own Sidecar sets nothing read the mesh's mode, not
        // shop's: one Sidecar applies to a sidecar.
        sidecar("admin", "shop", Some("app: admin"), "[\"*/*\"]"),
        policy_sidecar(
            "payments",
            "shop",
            Some("app: pay"),
            "{mode: REGISTRY_ONLY}",
        ),
        policy_sidecar("open", "web", None, "{mode: ALLOW_ANY}"),
    ]);
    let modes = mesh.sidecar_scopes.outbound_modes(AllowAny);
    assert_eq!(modes.everyone, AllowAny);
    let scoped: Vec<(String, OutboundMode)> = modes
        .scoped
        .iter()
        .map(|(s, m)| (format!("{:?}/{:?}", s.namespace, s.labels), m.clone()))
        .collect();
    // Only those apart from what their sidecars would read without them: not `open`
    // (ALLOW_ANY like the mesh), not `payments` (REGISTRY_ONLY like its namespace).
    assert_eq!(
        scoped,
        vec![
            ("Some(\"shop\")/{}".to_string(), RegistryOnly),
            ("Some(\"shop\")/{\"app\": \"admin\"}".to_string(), AllowAny),
        ]
    );
    let of = |ns: &str, labels: &[(&str, &str)]| {
        let proxy = sidecar_in(ns, labels);
        let mut selector = Selector::namespace(ns);
        selector.labels = proxy.labels.clone();
        modes.for_proxies(&selector).clone()
    };
    assert_eq!(of("shop", &[]), RegistryOnly);
    assert_eq!(of("shop", &[("app", "pay")]), RegistryOnly);
    assert_eq!(of("shop", &[("app", "admin")]), AllowAny);
    assert_eq!(of("web", &[]), AllowAny);
    assert_eq!(of("bookinfo", &[]), AllowAny);

    // The mesh's mode REGISTRY_ONLY: now `open` stands apart, and admin does not.
    let modes = mesh.sidecar_scopes.outbound_modes(RegistryOnly);
    assert_eq!(modes.everyone, RegistryOnly);
    let selectors: Vec<_> = modes
        .scoped
        .iter()
        .map(|(s, m)| (s.namespace.clone(), m.clone()))
        .collect();
    assert_eq!(selectors, vec![(Some("web".into()), AllowAny)]);
    assert_eq!(
        mesh.sidecar_scopes.setting_outbound().count(),
        3,
        "shop, payments and open set one"
    );
}
