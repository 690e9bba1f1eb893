//! `capstan-upstream`: a tiny HTTP/1.1 server standing in for a mesh workload.
//!
//! Every request is answered with 200 and a JSON body naming the instance:
//! `{"service":"reviews","version":"v1","path":"/x","host":"reviews"}` plus a newline.
//!
//! One instance:      `capstan-upstream --name reviews --version v1 --listen 127.0.0.1:9081`
//! Many in one process: `capstan-upstream --serve reviews:v1:127.0.0.1:9081 --serve ratings:v1:127.0.0.1:0`
//!
//! Port 0 picks a free port. For every instance, once it is bound, one line
//! `serving NAME VERSION on ADDR` is printed on stdout (the e2e harness reads it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(about = "Tiny HTTP/1.1 upstream that answers with its service name and version as JSON")]
struct Args {
    /// Service name reported in responses (with --version and --listen).
    #[arg(long, requires_all = ["version", "listen"])]
    name: Option<String>,
    /// Version reported in responses.
    #[arg(long)]
    version: Option<String>,
    /// Address to listen on, e.g. 127.0.0.1:9081 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Extra instance as NAME:VERSION:ADDR; may be repeated.
    #[arg(long = "serve", value_name = "NAME:VERSION:ADDR")]
    serve: Vec<String>,
}

#[derive(Debug, Clone)]
struct Instance {
    name: String,
    version: String,
    addr: SocketAddr,
}

fn parse_serve(spec: &str) -> anyhow::Result<Instance> {
    let mut parts = spec.splitn(3, ':');
    let (Some(name), Some(version), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("--serve {spec:?}: expected NAME:VERSION:ADDR");
    };
    if name.is_empty() || version.is_empty() {
        bail!("--serve {spec:?}: NAME and VERSION must not be empty");
    }
    let addr = addr
        .parse()
        .with_context(|| format!("--serve {spec:?}: bad address {addr:?}"))?;
    Ok(Instance {
        name: name.to_string(),
        version: version.to_string(),
        addr,
    })
}

fn instances(args: Args) -> anyhow::Result<Vec<Instance>> {
    let mut out = Vec::new();
    if let (Some(name), Some(version), Some(addr)) = (args.name, args.version, args.listen) {
        out.push(Instance {
            name,
            version,
            addr,
        });
    }
    for spec in &args.serve {
        out.push(parse_serve(spec)?);
    }
    if out.is_empty() {
        bail!("nothing to serve: give --name/--version/--listen or at least one --serve");
    }
    Ok(out)
}

/// The response body, fields in this order.
#[derive(serde::Serialize)]
struct Reply<'a> {
    service: &'a str,
    version: &'a str,
    path: &'a str,
    host: &'a str,
}

fn reply_body(inst: &Instance, req: &Request<Incoming>) -> Bytes {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let reply = Reply {
        service: &inst.name,
        version: &inst.version,
        path,
        host,
    };
    // Serializing four strings cannot fail; fall back to an empty object just in case.
    let mut body = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".to_string());
    body.push('\n');
    Bytes::from(body)
}

async fn handle(
    inst: Arc<Instance>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = reply_body(&inst, &req);
    // Drain the request body so the connection can be reused; its content is irrelevant.
    let _ = req.into_body().collect().await;
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn serve(listener: TcpListener, inst: Arc<Instance>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("{} {}: accept failed: {e}", inst.name, inst.version);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let inst = inst.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(inst.clone(), req));
            // Errors here are client-side disconnects; nothing to do about them.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let instances = instances(Args::parse())?;
    let mut tasks = Vec::new();
    for inst in instances {
        let listener = TcpListener::bind(inst.addr)
            .await
            .with_context(|| format!("binding {} for {} {}", inst.addr, inst.name, inst.version))?;
        let bound = listener.local_addr()?;
        println!("serving {} {} on {bound}", inst.name, inst.version);
        tasks.push(tokio::spawn(serve(listener, Arc::new(inst))));
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = futures_all(tasks) => {}
    }
    Ok(())
}

async fn futures_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_serve_specs() {
        let i = parse_serve("reviews:v1:127.0.0.1:9081").unwrap();
        assert_eq!((i.name.as_str(), i.version.as_str()), ("reviews", "v1"));
        assert_eq!(i.addr, "127.0.0.1:9081".parse().unwrap());
        assert!(parse_serve("reviews:v1").is_err());
        assert!(parse_serve(":v1:127.0.0.1:1").is_err());
        assert!(parse_serve("reviews:v1:nonsense").is_err());
    }
}
