//! What Envoy holds, read off its `/config_dump`: listeners, clusters and endpoints, route
//! configurations with their virtual hosts and routes.

use super::*;

/// The `configs` entry whose `@type` ends with `kind` (e.g. `ClustersConfigDump`).
pub fn dump_section<'a>(dump: &'a Value, kind: &str) -> Option<&'a Value> {
    dump["configs"].as_array()?.iter().find(|c| {
        c["@type"]
            .as_str()
            .and_then(|t| t.rsplit('.').next())
            .is_some_and(|t| t == kind)
    })
}

pub fn array(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

pub fn socket_address(v: &Value) -> Option<SocketAddr> {
    let sa = &v["socket_address"];
    let ip: IpAddr = sa["address"].as_str()?.parse().ok()?;
    let port = u16::try_from(sa["port_value"].as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

#[derive(Debug)]
pub struct ListenerView {
    pub name: String,
    pub address: Option<SocketAddr>,
    /// Route configurations its HTTP connection managers take from RDS.
    pub route_configs: Vec<String>,
}

#[derive(Debug)]
pub struct ClusterView {
    pub name: String,
    pub kind: String,
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Debug)]
pub struct RouteConfigView {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHostView>,
}

#[derive(Debug)]
pub struct VirtualHostView {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<RouteView>,
}

#[derive(Debug)]
pub struct RouteView {
    pub name: String,
    pub matcher: String,
    pub action: String,
    pub weighted: bool,
    /// A request this route matches, or why none could be made up.
    pub request: Result<SampleRequest, String>,
}

#[derive(Debug, Clone)]
pub struct SampleRequest {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct Observed {
    pub listeners: Vec<ListenerView>,
    pub clusters: Vec<ClusterView>,
    pub route_configs: Vec<RouteConfigView>,
}

pub fn observe(dump: &Value) -> Observed {
    let mut listeners = Vec::new();
    if let Some(section) = dump_section(dump, "ListenersConfigDump") {
        for l in array(&section["dynamic_listeners"]) {
            let listener = &l["active_state"]["listener"];
            let mut route_configs = Vec::new();
            collect_rds_names(listener, &mut route_configs);
            listeners.push(ListenerView {
                name: l["name"].as_str().unwrap_or("?").to_string(),
                address: socket_address(&listener["address"]),
                route_configs,
            });
        }
    }

    let mut eds: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    if let Some(section) = dump_section(dump, "EndpointsConfigDump") {
        for e in array(&section["dynamic_endpoint_configs"]) {
            let config = &e["endpoint_config"];
            if let Some(name) = config["cluster_name"].as_str() {
                eds.insert(name.to_string(), load_assignment_addrs(config));
            }
        }
    }
    let mut clusters = Vec::new();
    if let Some(section) = dump_section(dump, "ClustersConfigDump") {
        for c in array(&section["dynamic_active_clusters"]) {
            let cluster = &c["cluster"];
            let name = cluster["name"].as_str().unwrap_or("?").to_string();
            let kind = cluster["type"].as_str().unwrap_or("EDS").to_string();
            let mut endpoints = load_assignment_addrs(&cluster["load_assignment"]);
            if let Some(from_eds) = eds.get(&name) {
                endpoints.extend(from_eds);
            }
            clusters.push(ClusterView {
                name,
                kind,
                endpoints,
            });
        }
    }

    let mut route_configs = Vec::new();
    if let Some(section) = dump_section(dump, "RoutesConfigDump") {
        for r in array(&section["dynamic_route_configs"]) {
            let config = &r["route_config"];
            let virtual_hosts = array(&config["virtual_hosts"])
                .map(|vh| VirtualHostView {
                    name: vh["name"].as_str().unwrap_or("?").to_string(),
                    domains: array(&vh["domains"])
                        .filter_map(|d| d.as_str().map(str::to_string))
                        .collect(),
                    routes: array(&vh["routes"]).map(route_view).collect(),
                })
                .collect();
            route_configs.push(RouteConfigView {
                name: config["name"].as_str().unwrap_or("?").to_string(),
                virtual_hosts,
            });
        }
    }
    Observed {
        listeners,
        clusters,
        route_configs,
    }
}

pub fn collect_rds_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == "rds"
                    && let Some(name) = child["route_config_name"].as_str()
                {
                    out.push(name.to_string());
                } else {
                    collect_rds_names(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_rds_names(i, out)),
        _ => {}
    }
}

pub fn load_assignment_addrs(assignment: &Value) -> Vec<SocketAddr> {
    array(&assignment["endpoints"])
        .flat_map(|locality| array(&locality["lb_endpoints"]))
        .filter_map(|lb| socket_address(&lb["endpoint"]["address"]))
        .collect()
}

/// A string matcher (`{"exact": "x"}`, `{"prefix": ...}`, ...) as text, and a value it matches.
pub fn string_matcher(m: &Value) -> (String, Option<String>) {
    for op in ["exact", "prefix", "suffix", "contains"] {
        if let Some(v) = m[op].as_str() {
            return (format!("{op} {v:?}"), Some(v.to_string()));
        }
    }
    if let Some(re) = m["safe_regex"]["regex"].as_str() {
        return (format!("regex {re:?}"), None);
    }
    (m.to_string(), None)
}

/// Describes a route's match and action, and makes up a request the match selects.
pub fn route_view(route: &Value) -> RouteView {
    let m = &route["match"];
    let mut conditions = Vec::new();
    let mut unmatchable = Vec::new();
    let mut path = "/".to_string();
    if let Some(p) = m["prefix"].as_str() {
        conditions.push(format!("prefix {p}"));
        path = if p.is_empty() { "/".into() } else { p.into() };
    } else if let Some(p) = m["path"].as_str() {
        conditions.push(format!("path {p}"));
        path = p.into();
    } else if let Some(p) = m["path_separated_prefix"].as_str() {
        conditions.push(format!("path prefix {p}"));
        path = p.into();
    } else if let Some(re) = m["safe_regex"]["regex"].as_str() {
        conditions.push(format!("path regex {re:?}"));
        unmatchable.push(format!("path regex {re:?}"));
    }
    let mut headers = Vec::new();
    for h in array(&m["headers"]) {
        let name = h["name"].as_str().unwrap_or("?").to_string();
        let invert = h["invert_match"].as_bool() == Some(true);
        let (text, value) = if h["present_match"].as_bool() == Some(true) {
            ("present".to_string(), Some("1".to_string()))
        } else if let Some(v) = h["exact_match"].as_str() {
            (format!("exact {v:?}"), Some(v.to_string()))
        } else {
            string_matcher(&h["string_match"])
        };
        let text = if invert { format!("not {text}") } else { text };
        conditions.push(format!("header {name} {text}"));
        match value {
            Some(v) if !invert && name == ":method" && v == "GET" => {}
            Some(v) if !invert && !name.starts_with(':') => headers.push((name, v)),
            _ => unmatchable.push(format!("header {name} {text}")),
        }
    }
    let mut query = Vec::new();
    for q in array(&m["query_parameters"]) {
        let name = q["name"].as_str().unwrap_or("?").to_string();
        let (text, value) = if q["present_match"].as_bool() == Some(true) {
            ("present".to_string(), Some(String::new()))
        } else {
            string_matcher(&q["string_match"])
        };
        conditions.push(format!("query {name} {text}"));
        match value {
            Some(v) if v.is_empty() => query.push(name),
            Some(v) => query.push(format!("{name}={v}")),
            None => unmatchable.push(format!("query {name} {text}")),
        }
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }

    let (action, weighted) = route_action(route);
    let request = if unmatchable.is_empty() {
        Ok(SampleRequest { path, headers })
    } else {
        Err(format!(
            "no sample: cannot make up a request matching {}",
            unmatchable.join(", ")
        ))
    };
    RouteView {
        name: route["name"].as_str().unwrap_or("").to_string(),
        matcher: conditions.join(" and "),
        action,
        weighted,
        request,
    }
}

pub fn route_action(route: &Value) -> (String, bool) {
    let mut extras = Vec::new();
    let (mut action, mut weighted) = (String::new(), false);
    let r = &route["route"];
    if let Some(c) = r["cluster"].as_str() {
        action = c.to_string();
    } else if r["weighted_clusters"].is_object() {
        weighted = true;
        let clusters = &r["weighted_clusters"]["clusters"];
        let total: u64 = array(clusters).filter_map(|c| c["weight"].as_u64()).sum();
        action = array(clusters)
            .map(|c| {
                let w = c["weight"].as_u64().unwrap_or(0);
                let name = c["name"].as_str().unwrap_or("?");
                if total == 100 {
                    format!("{w}% {name}")
                } else {
                    format!("{w}/{total} {name}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
    } else if route["direct_response"].is_object() {
        action = format!(
            "direct response {}",
            route["direct_response"]["status"].as_u64().unwrap_or(0)
        );
    } else if route["redirect"].is_object() {
        action = format!("redirect {}", route["redirect"]);
    } else if let Some(h) = r["cluster_header"].as_str() {
        action = format!("cluster named by header {h}");
    }
    if r.is_object() {
        for key in [
            "timeout",
            "prefix_rewrite",
            "host_rewrite_literal",
            "regex_rewrite",
        ] {
            if !r[key].is_null() {
                extras.push(format!("{key} {}", compact(&r[key])));
            }
        }
        if !r["retry_policy"].is_null() {
            extras.push("retry_policy".to_string());
        }
    }
    if let Some(filters) = route["typed_per_filter_config"].as_object() {
        for (name, config) in filters {
            extras.push(format!("{name} {}", compact(config)));
        }
    }
    if action.is_empty() {
        action = compact(route);
    }
    if !extras.is_empty() {
        action = format!("{action} [{}]", extras.join("; "));
    }
    (action, weighted)
}

pub fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The Host header to send to a virtual host: its shortest domain without a port, with a
/// wildcard filled in.
pub fn sample_host(domains: &[String]) -> Option<String> {
    let pick = domains
        .iter()
        .filter(|d| !d.contains(':'))
        .min_by_key(|d| d.len())
        .or_else(|| domains.first())?;
    Some(pick.replacen('*', "demo", 1))
}

/// The loopback endpoint addresses Envoy holds, each with the services (cluster host's short
/// name) and subsets of the clusters it is in. Other addresses are returned apart.
pub struct Workloads {
    pub loopback: BTreeMap<SocketAddr, (BTreeSet<String>, BTreeSet<String>)>,
    pub elsewhere: BTreeSet<SocketAddr>,
}

pub fn workloads(clusters: &[ClusterView]) -> Workloads {
    let mut w = Workloads {
        loopback: BTreeMap::new(),
        elsewhere: BTreeSet::new(),
    };
    for c in clusters {
        // Istio's names: `outbound|PORT|SUBSET|HOST`.
        let parts: Vec<&str> = c.name.split('|').collect();
        let (subset, host) = match parts.as_slice() {
            [_, _, subset, host] => (*subset, *host),
            _ => ("", c.name.as_str()),
        };
        let service = host.split('.').next().unwrap_or(host).to_string();
        for addr in &c.endpoints {
            if !addr.ip().is_loopback() {
                w.elsewhere.insert(*addr);
                continue;
            }
            let entry = w.loopback.entry(*addr).or_default();
            entry.0.insert(service.clone());
            if !subset.is_empty() {
                entry.1.insert(subset.to_string());
            }
        }
    }
    w
}
