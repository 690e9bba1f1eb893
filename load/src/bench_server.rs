//! capstan's side of the bench-server contract: the benchmark mesh ([`crate::mesh`]) in a
//! `SnapshotCache`, served over ADS by `capstan_xds::ads::serve`, and the control API on HTTP/1.1:
//!
//! - `GET /ready`: 200 once serving;
//! - `POST /endpoint?service=I&port=P`: endpoint 0 of `svc-I` moves to port P; 200 once the
//!   change is in the cache;
//! - `POST /cluster?name=NAME`: adds EDS cluster NAME (with an empty load assignment when the
//!   name has none, as the go-control-plane peer does); 200 once it is in the cache.
//!
//! The mesh starts as one complete snapshot (`SnapshotCache::replace`); each change encodes
//! the one resource it touches and goes through the push queue as an incremental update
//! (`PushQueue`, with `capstan run`'s defaults: 10 ms quiet window, 1 s maximum delay), so the
//! measured latency includes the debounce a real change waits for.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use capstan_xds::{DEFAULT_MAX_DELAY, DEFAULT_QUIET, PushQueue, Resource, SnapshotCache};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::mesh::{self, Mesh, MeshError};

/// The contract's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchServerArgs {
    /// Address to serve ADS (gRPC) on.
    #[arg(long)]
    pub ads: SocketAddr,
    /// Address to serve the control API (HTTP/1.1) on.
    #[arg(long)]
    pub control: SocketAddr,
    /// Services in the mesh (a cluster, a load assignment and a virtual host each).
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("ADS server: {0}")]
    Ads(#[from] tonic::transport::Error),
}

struct State {
    mesh: tokio::sync::Mutex<Mesh>,
    queue: PushQueue,
}

impl State {
    /// Applies `change` to the mesh and publishes the result through the push queue, waiting
    /// until it is in the cache; under one lock so that changes reach the cache in the order
    /// they were made.
    async fn change(
        &self,
        change: impl FnOnce(&mut Mesh) -> Result<Vec<Resource>, MeshError>,
    ) -> Result<(), String> {
        let mut mesh = self.mesh.lock().await;
        let resources = change(&mut mesh).map_err(|e| e.to_string())?;
        self.queue.submit_and_wait(mesh::put(resources)).await;
        Ok(())
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    args: &BenchServerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let mesh = Mesh::new(args.services, args.endpoints);
    let cache = SnapshotCache::new();
    cache.replace(mesh.snapshot());
    let (queue, _queue_task) = PushQueue::start(cache.clone(), DEFAULT_QUIET, DEFAULT_MAX_DELAY);
    let state = Arc::new(State {
        mesh: tokio::sync::Mutex::new(mesh),
        queue,
    });
    let ads = TcpListener::bind(args.ads)
        .await
        .map_err(|e| ServerError::Bind(args.ads, e))?;
    let control = TcpListener::bind(args.control)
        .await
        .map_err(|e| ServerError::Bind(args.control, e))?;
    info!(ads = %args.ads, control = %args.control, services = args.services,
          endpoints = args.endpoints, "capstan bench server serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut control_stop = stop_rx.clone();
    let control_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = control.accept() => match accepted {
                    Ok((stream, _)) => {
                        let state = state.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |request| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(handle(&state, request).await) }
                            });
                            if let Err(e) = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await
                            {
                                debug!(error = %e, "control connection ended");
                            }
                        });
                    }
                    Err(e) => debug!(error = %e, "control accept failed"),
                },
                _ = control_stop.wait_for(|stop| *stop) => break,
            }
        }
    });
    let mut ads_stop = stop_rx;
    let result = capstan_xds::ads::serve(ads, cache, async move {
        let _ = ads_stop.wait_for(|stop| *stop).await;
    })
    .await;
    control_task.abort();
    Ok(result?)
}

/// Completes on SIGINT or SIGTERM (how `ServerProcess::stop` asks a server to exit).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn reply(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response
}

/// The value of query parameter `name`.
fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

fn number<T: std::str::FromStr>(query: &str, name: &str) -> Result<T, String> {
    let value = param(query, name).ok_or_else(|| format!("missing query parameter {name}"))?;
    value
        .parse()
        .map_err(|_| format!("query parameter {name}={value:?} is not a number"))
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let query = request.uri().query().unwrap_or("");
    let result = match (request.method(), request.uri().path()) {
        (&Method::GET, "/ready") => Ok(()),
        (&Method::POST, "/endpoint") => {
            match (
                number::<usize>(query, "service"),
                number::<u32>(query, "port"),
            ) {
                (Ok(service), Ok(port)) => {
                    state
                        .change(|mesh| Ok(vec![mesh.set_endpoint_port(service, port)?]))
                        .await
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        (&Method::POST, "/cluster") => match param(query, "name") {
            Some(name) => state.change(|mesh| mesh.add_cluster(name)).await,
            None => Err("missing query parameter name".into()),
        },
        (method, path) => return reply(StatusCode::NOT_FOUND, format!("no {method} {path}\n")),
    };
    match result {
        Ok(()) => reply(StatusCode::OK, "ok\n"),
        Err(e) => reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        assert_eq!(param("service=3&port=9000", "port"), Some("9000"));
        assert_eq!(param("service=3&port=9000", "name"), None);
        assert_eq!(
            number::<u32>("port=x", "port"),
            Err("query parameter port=\"x\" is not a number".into())
        );
        assert!(number::<usize>("", "service").is_err());
    }
}
