//! End-to-end harness for capstan: real Envoy, the capstan binary and `capstan-upstream`
//! servers as child processes on 127.0.0.1.
//!
//! - [`process`]: child processes with a log file, killed (with their group) on drop
//! - [`ports`]: free loopback ports
//! - [`locate`]: capstan / Envoy / upstream binaries, log directories
//! - [`envoy`]: bootstrap generator, Envoy process, admin API (listeners, config_dump, stats)
//! - [`capstan`]: `capstan run` on a config dir
//! - [`agent`]: `capstan agent` processes, an in-test CA for them, Envoys with static SDS bootstraps
//! - [`upstreams`]: `capstan-upstream` instances
//! - [`http`]: a minimal HTTP/1.1 client and the upstream's JSON reply
//! - [`wait`]: `wait_until` polling with a descriptive timeout error
//! - [`netns`]: a private network namespace (with a pod network) for the Kubernetes tests
//! - [`hostile_ads`]: raw ADS clients that misbehave on purpose, for the fault tests
//! - [`fixtures`], [`mesh`]: Istio YAML and the reviews mesh most tests start from
//! - [`capture`], [`capture_mesh`], [`capture_identity`]: Istio's traffic capture in a private
//!   namespace, a workload behind it with its sidecar, and that workload with an identity
//!   (CA, agent, `sds-grpc`) and clients from another pod
//! - [`gateway_mesh`]: the reviews mesh with an ingress gateway Envoy, for the gateway tests
//! - [`kube`]: a real etcd + kube-apiserver on loopback (CRDs, RBAC, kubectl) for Kubernetes tests
//! - [`moto`]: AWS Private CA on loopback (patched moto) for the Private CA issuer tests
//! - [`cloudmap`]: AWS Cloud Map on that moto, for the Cloud Map source tests
//! - [`tls_pki`]: a throwaway CA and an HTTPS client for gateway and TLS-origination tests
//! - [`bench_info`]: the machine and commit a benchmark ran on, for its report
//! - [`bench`]: what `capstan-kube-bench` and `capstan-cloud-map-bench` share: the capstan and
//!   istiod servers, the simulated proxy fleet, process memory and CPU idleness
//! - [`connect_proxy`]: an HTTP CONNECT proxy in the test process, for tunnelling tests

pub mod agent;
pub mod bench;
pub mod bench_info;
pub mod capstan;
pub mod capture;
pub mod capture_identity;
pub mod capture_mesh;
pub mod cloudmap;
pub mod connect_proxy;
pub mod envoy;
pub mod explain;
pub mod ext_authz;
pub mod fixtures;
pub mod folder_mesh;
pub mod gateway_mesh;
pub mod helm;
pub mod hostile_ads;
pub mod http;
pub mod identity;
pub mod injection;
pub mod jwt;
pub mod kube;
pub mod kube_mesh;
pub mod locate;
pub mod mesh;
pub mod moto;
pub mod netns;
pub mod ports;
pub mod process;
pub mod tls_pki;
pub mod transport;
pub mod upstreams;
pub mod wait;

pub use wait::wait_until;
