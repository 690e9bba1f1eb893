//! Capture-mode sidecars get a route configuration per port, named by it, as istiod's: each
//! holds the services of its port answering to names without a port, so a Host without one
//! reaches the port the connection was made to.

use capstan_crds::Kind;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};

use super::tests::{capture, check_with, delete, istio, served_to};
use super::*;
use crate::model::sidecar_scope::fixtures::{service_entry, sidecar_proxy as proxy, sidecar_with};

/// `name` in shop, HTTP on `ports`.
fn entry(name: &str, ports: &[u32]) -> String {
    let ports: Vec<String> = ports
        .iter()
        .map(|p| format!("{{number: {p}, name: http-{p}, protocol: HTTP}}"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{name}.shop.svc.cluster.local]
  ports: [{}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.1}}]
",
        ports.join(", ")
    )
}

const CART_V2: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http: [{route: [{destination: {host: cart, subset: v2}}]}]
";

/// The route configurations `yamls` serve a sidecar of `namespace`, by name.
fn routes(yamls: &[String], namespace: &str) -> BTreeMap<String, RouteConfiguration> {
    served_to::<RouteConfiguration>(capture(), yamls, type_url::ROUTE, &proxy(namespace, &[]))
        .into_iter()
        .map(|config| (config.name.clone(), config))
        .collect()
}

fn virtual_host<'a>(config: &'a RouteConfiguration, name: &str) -> Option<&'a VirtualHost> {
    config.virtual_hosts.iter().find(|vh| vh.name == name)
}

/// The domains of virtual host `name` of `config`, which must have it.
fn domains<'a>(config: &'a RouteConfiguration, name: &str) -> &'a [String] {
    let found = virtual_host(config, name);
    &found
        .unwrap_or_else(|| panic!("{name} in {}", config.name))
        .domains
}

fn has(domains: &[String], domain: &str) -> bool {
    domains.iter().any(|d| d == domain)
}

#[test]
fn each_port_has_its_services_under_names_without_a_port() {
    let yamls = [entry("cart", &[80, 9080]), entry("ratings", &[9080])];
    let shop = routes(&yamls, "shop");
    assert_eq!(shop.keys().collect::<Vec<_>>(), ["80", "9080"]);
    for config in shop.values() {
        assert!(config.ignore_port_in_host_matching, "{}", config.name);
        let last = config.virtual_hosts.last().expect("virtual hosts");
        assert_eq!(
            last.domains,
            ["*"],
            "{} ends with the fallback",
            config.name
        );
    }
    // A bare `cart` on port 9080 is cart's 9080, not its first port.
    let cart = domains(&shop["9080"], "cart.shop.svc.cluster.local:9080");
    assert!(
        has(cart, "cart") && cart.iter().all(|d| !d.contains(':')),
        "{cart:?}"
    );
    assert!(virtual_host(&shop["9080"], "ratings.shop.svc.cluster.local:9080").is_some());
    assert!(has(
        domains(&shop["80"], "cart.shop.svc.cluster.local:80"),
        "cart"
    ));
    assert!(
        virtual_host(&shop["80"], "ratings.shop.svc.cluster.local:9080").is_none(),
        "ratings has no port 80"
    );
    // Another namespace reads qualified names only.
    let web = routes(&yamls, "web");
    let cart = domains(&web["9080"], "cart.shop.svc.cluster.local:9080");
    assert!(has(cart, "cart.shop") && !has(cart, "cart"), "{cart:?}");
}

/// A Sidecar importing a service on its second port only: a Host without a port reaches it
/// there (the shared configuration sent such a Host to the service's first port, which the
/// scope does not import).
#[test]
fn an_egress_port_imports_a_service_on_that_port_under_its_names() {
    let scoped = sidecar_with(
        "default",
        "web",
        None,
        "  egress:
  - port: {number: 9080, name: http-alt, protocol: HTTP}
    hosts: [shop/*]
  - hosts: [./*]
",
    );
    let yamls = [
        entry("cart", &[80, 9080]),
        service_entry("front", "web"),
        scoped,
    ];
    let web = routes(&yamls, "web");
    let cart = domains(&web["9080"], "cart.shop.svc.cluster.local:9080");
    assert!(has(cart, "cart.shop"), "{cart:?}");
    assert!(virtual_host(&web["80"], "cart.shop.svc.cluster.local:80").is_none());
    assert!(virtual_host(&web["80"], "front.web.svc.cluster.local:80").is_some());
}

#[test]
fn per_port_routes_built_incrementally_match_a_full_build() {
    check_with(
        capture(),
        vec![
            istio(&entry("cart", &[80])),
            istio(&entry("cart", &[80, 9080])),
            istio(&entry("ratings", &[9080])),
            istio(CART_V2),
            // Port 80 goes: its route configuration with it.
            istio(&entry("cart", &[9080])),
            istio(&sidecar_with(
                "default",
                "shop",
                None,
                "  egress:
  - port: {number: 9080, name: http-alt, protocol: HTTP}
    hosts: [./ratings.shop.svc.cluster.local]
  - hosts: [./*]
",
            )),
            istio(&entry("cart", &[80, 9080])),
            delete(Kind::Sidecar, "shop", "default"),
            delete(Kind::ServiceEntry, "shop", "ratings"),
            delete(Kind::VirtualService, "shop", "cart"),
            delete(Kind::ServiceEntry, "shop", "cart"),
        ],
    );
}

/// As istiod, a headless Kubernetes Service answers to every name under its own (a
/// StatefulSet pod's `db-0.db.shop.svc.cluster.local`): its cluster sends to where the
/// client connected. Other services do not.
#[test]
fn a_headless_service_answers_to_the_names_of_its_pods() {
    use crate::index::{Event, KubeService, KubeServicePort, NsName, Record};
    use prost::Message;
    let kube_service = |name: &str, headless: bool| {
        Event::Apply(Record::Service(KubeService {
            id: NsName::new("shop", name),
            ports: vec![KubeServicePort {
                name: "http".into(),
                port: 8080,
                protocol: Some(capstan_crds::Protocol::Http),
                target_port: 0,
            }],
            headless,
            cluster_ips: if headless {
                Vec::new()
            } else {
                vec!["10.96.0.9".into()]
            },
            export_to: Vec::new(),
            external_name: None,
            selector: Default::default(),
        }))
    };
    let mut pipeline = crate::reconcile::Pipeline::new(capture(), "cluster.local");
    pipeline.index.handle(kube_service("db", true));
    pipeline.index.handle(kube_service("web", false));
    let cache = capstan_xds::SnapshotCache::new();
    cache.replace(pipeline.full());
    let index = capstan_xds::type_index(type_url::ROUTE).expect("a served type");
    let state = cache.current();
    let config = state
        .snapshot
        .view(index, &proxy("shop", &[]))
        .map(|r| RouteConfiguration::decode(r.body().clone()).expect("decodes"))
        .find(|c| c.name == "8080")
        .expect("route configuration 8080");
    let db = domains(&config, "db.shop.svc.cluster.local:8080");
    for domain in ["*.db.shop.svc.cluster.local", "*.db.shop", "*.db", "db"] {
        assert!(has(db, domain), "{domain} in {db:?}");
    }
    let web = domains(&config, "web.shop.svc.cluster.local:8080");
    assert!(!web.iter().any(|d| d.starts_with('*')), "{web:?}");
    assert!(has(web, "10.96.0.9"), "{web:?}");
}
