//! The HTTP filter chain of capstan's HTTP connection managers, in istiod's order: fault
//! injection, CORS, then the router (which must be last). The fault and CORS filters do
//! nothing by themselves; a route turns them on with its `typed_per_filter_config` (see
//! `route/fault.rs` and `route/cors.rs`), as with istiod.

use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::util::pack_any;

/// The fault injection filter's name; routes key their `HTTPFault` by it.
pub const FAULT: &str = "envoy.filters.http.fault";
/// The CORS filter's name; routes key their `CorsPolicy` by it.
pub const CORS: &str = "envoy.filters.http.cors";
/// The router filter's name.
pub const ROUTER: &str = "envoy.filters.http.router";

/// The filters of an HTTP connection manager, for sidecar and gateway listeners alike:
/// fault, CORS, router.
pub fn http_filters() -> Vec<HttpFilter> {
    vec![
        filter(FAULT, pack_any(HttpFault::default())),
        filter(CORS, pack_any(Cors::default())),
        filter(ROUTER, pack_any(Router::default())),
    ]
}

fn filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_and_cors_come_before_the_router_which_is_last() {
        let filters = http_filters();
        let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [FAULT, CORS, ROUTER]);
        let type_urls: Vec<&str> = filters
            .iter()
            .map(|f| match &f.config_type {
                Some(ConfigType::TypedConfig(any)) => any.type_url.as_str(),
                other => panic!("{} has no typed config: {other:?}", f.name),
            })
            .collect();
        assert_eq!(
            type_urls,
            [
                "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
                "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            ]
        );
    }
}
