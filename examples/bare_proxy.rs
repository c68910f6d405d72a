//! The floor of the benchmarks: a reverse proxy on the same stack as spendgate (hyper's
//! HTTP/1.1 server on a multi-thread tokio runtime, hyper-util's pooled client, mimalloc)
//! that does nothing but forward, streaming both ways. What spendgate costs beyond it is
//! its own work; what it costs beyond nginx is the stack's.
//!
//! ```text
//! cargo run --release --example bare_proxy -- 127.0.0.1:18082 http://127.0.0.1:18081
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use http::uri::{PathAndQuery, Uri};
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Upstream = Client<HttpConnector, Incoming>;

async fn forward(client: Upstream, upstream: Uri, mut req: Request<Incoming>) -> Result<http::Response<Incoming>, Infallible> {
    // Strip the first path segment (`/elevenlabs/...` -> `/...`), as a prefix route does.
    let path = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
    let rest = path.get(1..).and_then(|p| p.find('/').map(|i| &p[i..])).unwrap_or("/");
    let uri = Uri::builder()
        .scheme(upstream.scheme().cloned().expect("an absolute upstream"))
        .authority(upstream.authority().cloned().expect("an absolute upstream"))
        .path_and_query(rest)
        .build()
        .expect("a valid uri");
    *req.uri_mut() = uri;
    req.headers_mut().remove(http::header::HOST);
    match client.request(req).await {
        Ok(r) => Ok(r),
        Err(e) => {
            eprintln!("upstream: {e}");
            std::process::exit(1);
        }
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().and_then(|a| a.parse().ok()).expect("usage: bare_proxy LISTEN UPSTREAM");
    let upstream: Uri = args.next().and_then(|a| a.parse().ok()).expect("usage: bare_proxy LISTEN UPSTREAM");
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(http);
    let listener = TcpListener::bind(listen).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
