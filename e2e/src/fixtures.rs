//! Istio YAML for the tests: a `reviews` service in namespace `bookinfo` with subsets v1..v3.

/// The reviews service's host name.
pub const REVIEWS_HOST: &str = "reviews.bookinfo.svc.cluster.local";
/// The reviews service port.
pub const REVIEWS_PORT: u16 = 9080;

/// ServiceEntry for reviews: STATIC endpoints on 127.0.0.1, one per (version, port).
pub fn reviews_service_entry(endpoints: &[(&str, u16)]) -> String {
    let mut eps = String::new();
    for (version, port) in endpoints {
        eps.push_str(&format!(
            "  - address: 127.0.0.1\n    ports:\n      http: {port}\n    labels:\n      app: reviews\n      version: {version}\n"
        ));
    }
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts:
  - {REVIEWS_HOST}
  location: MESH_INTERNAL
  ports:
  - number: {REVIEWS_PORT}
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
{eps}"
    )
}

/// A STATIC ServiceEntry `name.bookinfo.svc.cluster.local` with one endpoint, 127.0.0.1:`port`.
pub fn service_entry(name: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: bookinfo}}
spec:
  hosts: [{name}.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
"
    )
}

/// DestinationRule with one subset per version label.
pub fn reviews_destination_rule(versions: &[&str]) -> String {
    let mut subsets = String::new();
    for v in versions {
        subsets.push_str(&format!("  - name: {v}\n    labels:\n      version: {v}\n"));
    }
    format!(
        "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
  namespace: bookinfo
spec:
  host: {REVIEWS_HOST}
  subsets:
{subsets}"
    )
}

/// VirtualService: requests with `end-user: <user>` go to `matched`, all others to `default`.
pub fn reviews_vs_header_match(user: &str, matched: &str, default: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts:
  - {REVIEWS_HOST}
  http:
  - name: {user}-to-{matched}
    match:
    - headers:
        end-user:
          exact: {user}
    route:
    - destination:
        host: {REVIEWS_HOST}
        subset: {matched}
  - name: default
    route:
    - destination:
        host: {REVIEWS_HOST}
        subset: {default}
"
    )
}

/// VirtualService `reviews` splitting all traffic by weight over subsets (weights are not
/// checked here, so tests can write invalid ones).
pub fn reviews_vs_weighted(weights: &[(&str, u32)]) -> String {
    reviews_vs_weighted_named("reviews", weights)
}

/// Like [`reviews_vs_weighted`] with another VirtualService name.
pub fn reviews_vs_weighted_named(name: &str, weights: &[(&str, u32)]) -> String {
    let mut routes = String::new();
    for (subset, weight) in weights {
        routes.push_str(&format!(
            "    - destination:\n        host: {REVIEWS_HOST}\n        subset: {subset}\n      weight: {weight}\n"
        ));
    }
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
  namespace: bookinfo
spec:
  hosts:
  - {REVIEWS_HOST}
  http:
  - route:
{routes}"
    )
}

/// A file that is not valid YAML (unclosed flow sequence).
pub const BROKEN_YAML: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: broken
  namespace: bookinfo
spec:
  hosts: [reviews.bookinfo.svc.cluster.local
  http:
  - route: {{{
";
