//! A gateway Envoy on capstan, for the gateway tests (e2e/tests/gateway*.rs): the reviews mesh
//! with one ingress gateway, the YAML those tests share, and what they read off a gateway.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, ensure};

use crate::agent::{self, Agent, AgentSpec, StaticEnvoy, client_bootstrap};
use crate::capstan::Capstan;
use crate::envoy::{AdsMode, Bootstrap, Envoy, loopback};
use crate::fixtures::reviews_vs_header_match;
use crate::http::HttpClient;
use crate::locate::{capstan_bin, envoy_bin};
use crate::mesh::{CONFIG_TIMEOUT, TestEnv, start_reviews};
use crate::upstreams::Upstreams;

/// Gateways take their ISTIO_MUTUAL certificates from an agent as sidecars do.
pub use crate::agent::with_agent_sds;

/// A port for a gateway listener, distinct within this process and below the kernel's
/// ephemeral range (32768 and up by default). The gateway tests run in a network namespace of
/// their own, where only their own processes bind: a port the kernel hands out for `:0` (an
/// upstream's, Envoy's admin) can then never be the one a Gateway names, which a port found
/// free and released (`ports::free_port`) could be by the time Envoy binds it.
pub fn gateway_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(20_000);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The labels of Istio's ingress gateway pods.
pub const INGRESS_LABELS: &[(&str, &str)] = &[("istio", "ingressgateway")];

/// The reviews mesh (its sidecar VirtualService sends jason to v2, the rest to v1), capstan,
/// and one gateway Envoy, with `gateway_yaml` in `gateway.yaml`.
pub struct GatewayMesh {
    pub gateway: Envoy,
    pub capstan: Capstan,
    _upstreams: Upstreams,
    pub env: TestEnv,
}

impl GatewayMesh {
    pub async fn start(
        name: &str,
        upstream_bin: &Path,
        gateway_yaml: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(name, upstream_bin, gateway_yaml, AdsMode::Sotw).await
    }

    /// [`GatewayMesh::start`] with the gateway on ADS `mode`.
    pub async fn start_with(
        name: &str,
        upstream_bin: &Path,
        gateway_yaml: &str,
        mode: AdsMode,
    ) -> anyhow::Result<Self> {
        Self::start_labelled(name, upstream_bin, gateway_yaml, mode, INGRESS_LABELS).await
    }

    /// [`GatewayMesh::start_with`] with a gateway Envoy (of istio-system) labelled `labels`.
    pub async fn start_labelled(
        name: &str,
        upstream_bin: &Path,
        gateway_yaml: &str,
        mode: AdsMode,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_in(
            name,
            upstream_bin,
            gateway_yaml,
            mode,
            labels,
            "istio-system",
        )
        .await
    }

    /// [`GatewayMesh::start_labelled`] with the gateway Envoy's pod in `namespace`.
    pub async fn start_in(
        name: &str,
        upstream_bin: &Path,
        gateway_yaml: &str,
        mode: AdsMode,
        labels: &[(&str, &str)],
        namespace: &str,
    ) -> anyhow::Result<Self> {
        crate::netns::network_up()?;
        let env = TestEnv::new(name)?;
        let upstreams = start_reviews(
            &env,
            upstream_bin,
            &reviews_vs_header_match("jason", "v2", "v1"),
        )
        .await?;
        env.write_config("gateway.yaml", gateway_yaml)?;
        let capstan = Capstan::start(&env.config_dir, &env.log_dir).await?;
        let bootstrap = Bootstrap {
            namespace: namespace.to_string(),
            ..Bootstrap::gateway(mode, capstan.xds_port, labels)
        };
        let gateway = Envoy::start(
            &crate::locate::envoy_bin()?,
            &bootstrap,
            &env.log_dir,
            "gateway",
        )
        .await?;
        Ok(Self {
            gateway,
            capstan,
            _upstreams: upstreams,
            env,
        })
    }

    /// Waits for the gateway's listener on `port`; returns its address.
    pub async fn listening(&self, port: u16) -> anyhow::Result<SocketAddr> {
        let bound = self
            .gateway
            .wait_listener_port(&format!("0.0.0.0_{port}"), CONFIG_TIMEOUT)
            .await
            .with_context(|| format!("logs in {}", self.env.log_dir.display()))?;
        ensure!(bound == port, "listener bound {bound}, expected {port}");
        Ok(loopback(port))
    }

    /// The names of the listeners the gateway Envoy holds.
    pub async fn listener_names(&self) -> anyhow::Result<Vec<String>> {
        let v: serde_json::Value = self
            .gateway
            .admin_get("/listeners?format=json")
            .await?
            .json()?;
        Ok(v["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect())
    }
}

/// An ingress gateway Envoy (a `router` labelled `istio: ingressgateway`) on `capstan`.
pub async fn start_gateway(
    env: &TestEnv,
    capstan: &Capstan,
    mode: AdsMode,
) -> anyhow::Result<Envoy> {
    Envoy::start(
        &crate::locate::envoy_bin()?,
        &Bootstrap::gateway(mode, capstan.xds_port, INGRESS_LABELS),
        &env.log_dir,
        "gateway",
    )
    .await
}

/// Waits until `GET path` with Host `host` is answered by an upstream of `service`.
pub async fn wait_for_service(
    client: &mut HttpClient,
    host: &str,
    path: &str,
    service: &str,
) -> anyhow::Result<()> {
    crate::wait_until(
        &format!("{host}{path} answered by {service}"),
        CONFIG_TIMEOUT,
        async || {
            let reply = client.get(host, path, &[]).await?.upstream_reply()?;
            ensure!(reply.service == service, "{reply:?}");
            Ok(())
        },
    )
    .await
}

/// A ServiceEntry `name` (namespace shop) for `host`, with one port `number` of `protocol`,
/// served by the upstream on 127.0.0.1:`port`; ends with `---`.
pub fn loopback_entry(
    name: &str,
    host: &str,
    (number, protocol): (u16, &str),
    port: u16,
) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{host}]
  ports: [{{number: {number}, name: p, protocol: {protocol}}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{p: {port}}}}}]
---
"#
    )
}

/// Gateway istio-system/edge, selecting Istio's ingress gateway pods, with one TCP server on
/// `port` for every host; ends with `---`.
pub fn edge_tcp_gateway(port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
"#
    )
}

/// A VirtualService `name` (namespace shop) for `host`, bound to Gateway istio-system/edge,
/// sending every connection to `destination`:`port`; ends with `---`.
pub fn edge_tcp_route(name: &str, host: &str, destination: &str, port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{host}]
  gateways: [istio-system/edge]
  tcp:
  - route: [{{destination: {{host: {destination}, port: {{number: {port}}}}}}}]
---
"#
    )
}

/// A Gateway with one plain HTTP server on `port` for every host, with `tls` settings if any.
pub fn http_gateway(port: u16, tls: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ["*"]
{tls}"#
    )
}

/// Gateway `ingress` in istio-system (the gateway Envoy's namespace), selecting Istio's
/// ingress gateway pods, with `servers` (YAML list items, indented two spaces).
pub fn ingress_gateway(servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
{servers}"
    )
}

/// The VirtualService bound to the gateway: `/reviews` on shop.example.com to `subset`.
pub fn shop(subset: &str) -> String {
    shop_routes(&format!(
        "  - match: [{{uri: {{prefix: /reviews}}}}]
    route: [{{destination: {{host: reviews, subset: {subset}}}}}]
"
    ))
}

/// The VirtualService for shop.example.com bound to the gateway, with `http` routes (YAML
/// list items, indented two spaces).
pub fn shop_routes(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: bookinfo}}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/ingress]
  http:
{http}"
    )
}

/// Requests `envoy` sent through `cluster` (0 when it has no such cluster).
pub async fn cluster_requests(envoy: &Envoy, cluster: &str) -> anyhow::Result<u64> {
    envoy
        .stat(&format!("cluster.{cluster}.upstream_rq_total"))
        .await
}

/// A ServiceEntry standing in for the `istio-egressgateway` Service: port 80 of
/// `istio-egressgateway.istio-system.svc.cluster.local` reaches the gateway's listener on
/// `egress_port`. Ends with a document separator.
pub fn egress_gateway_service(egress_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {egress_port}}}}}]
---
"#
    )
}

/// An egress gateway Envoy and a client's sidecar Envoy on one capstan.
pub struct EgressPair {
    pub egress: Envoy,
    pub sidecar: Envoy,
    /// The sidecar's outbound listener.
    pub outbound: SocketAddr,
}

/// Starts an egress gateway (`istio: egressgateway`, ADS `mode`) and a sidecar (Delta) on
/// `capstan`, and waits for the gateway's listener on `egress_port` and the sidecar's
/// outbound listener.
pub async fn start_egress_and_sidecar(
    env: &TestEnv,
    capstan: &Capstan,
    mode: AdsMode,
    egress_port: u16,
) -> anyhow::Result<EgressPair> {
    let envoy_bin = crate::locate::envoy_bin()?;
    let egress = Envoy::start(
        &envoy_bin,
        &Bootstrap::gateway(mode, capstan.xds_port, &[("istio", "egressgateway")]),
        &env.log_dir,
        "egress-gateway",
    )
    .await?;
    let sidecar = Envoy::start(
        &envoy_bin,
        &Bootstrap::new(AdsMode::Delta, capstan.xds_port),
        &env.log_dir,
        "sidecar",
    )
    .await?;
    egress
        .wait_listener_port(&format!("0.0.0.0_{egress_port}"), CONFIG_TIMEOUT)
        .await?;
    let outbound = sidecar
        .wait_listener_port(crate::mesh::OUTBOUND_LISTENER, CONFIG_TIMEOUT)
        .await?;
    Ok(EgressPair {
        egress,
        sidecar,
        outbound: loopback(outbound),
    })
}

/// A gateway Envoy (labels `istio: ingressgateway`) bootstrapped as Istio's gateway pods are,
/// with cluster `sds-grpc` to a real `capstan agent` for the gateway's identity
/// ([`GATEWAY_SAN`]), and the CA that agent signs with, which also takes the tokens of
/// `others`.
pub async fn start_gateway_with_agent(
    env: &TestEnv,
    capstan: &Capstan,
    others: &[(&str, capstan_ca::SpiffeId)],
) -> anyhow::Result<(Envoy, Agent, agent::TestCa)> {
    let gateway_id = capstan_ca::SpiffeId::parse(GATEWAY_SAN).context("GATEWAY_SAN")?;
    start_gateway_with_agent_as(env, capstan, &gateway_id, others).await
}

/// [`start_gateway_with_agent`] with the gateway's identity `gateway_id`.
pub async fn start_gateway_with_agent_as(
    env: &TestEnv,
    capstan: &Capstan,
    gateway_id: &capstan_ca::SpiffeId,
    others: &[(&str, capstan_ca::SpiffeId)],
) -> anyhow::Result<(Envoy, Agent, agent::TestCa)> {
    let mut tokens = vec![("gateway-token", gateway_id.clone())];
    tokens.extend(others.iter().cloned());
    let ca = agent::TestCa::start(
        &env.log_dir,
        "mesh-ca",
        &tokens,
        std::time::Duration::from_secs(3600),
    )
    .await?;
    let gateway_agent = Agent::start(
        &capstan_bin()?,
        &ca.target(),
        &env.log_dir,
        &AgentSpec::for_identity("gw-agent", gateway_id, "gateway-token"),
    )
    .await?;
    let bootstrap = with_agent_sds(
        &Bootstrap::gateway(AdsMode::Sotw, capstan.xds_port, INGRESS_LABELS),
        &gateway_agent.sds_socket,
    );
    let gateway =
        Envoy::start_json(&envoy_bin()?, &bootstrap, &env.log_dir, "gateway", None).await?;
    Ok((gateway, gateway_agent, ca))
}

/// The SPIFFE id of the gateway [`start_gateway_with_agent`] starts.
pub const GATEWAY_SAN: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway";

/// A mesh workload with its own agent (identity `id`, presenting `token` to `ca`) and Envoy,
/// whose listener `plain` sends HTTP/1.1 over the mesh's mTLS to the gateway `(gateway_san,
/// port)`, checking the gateway's SPIFFE id; a client of that listener. Its files are named
/// after the id's service account. Keep the agent and Envoy as long as the client is used.
pub async fn start_mesh_client(
    env: &TestEnv,
    ca: &agent::TestCa,
    (id, token): (&capstan_ca::SpiffeId, &str),
    (gateway_san, port): (&str, u16),
) -> anyhow::Result<(Agent, StaticEnvoy, HttpClient)> {
    let account = &id.service_account;
    let client_agent = Agent::start(
        &capstan_bin()?,
        &ca.target(),
        &env.log_dir,
        &AgentSpec::for_identity(&format!("{account}-agent"), id, token),
    )
    .await?;
    let workload = StaticEnvoy::start(
        &envoy_bin()?,
        &client_bootstrap(&client_agent.sds_socket, gateway_san, port),
        &env.log_dir,
        &format!("{account}-envoy"),
    )
    .await?;
    let client = HttpClient::new(loopback(workload.wait_listener_port("plain").await?));
    Ok((client_agent, workload, client))
}
