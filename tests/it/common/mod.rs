//! Shared test harness: a hyper mock upstream on 127.0.0.1 serving fixtures, the proxy
//! started in-process on ephemeral ports, and a small HTTP client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use spendgate::config::Config;
use spendgate::domain::window::Clock;
use spendgate::server::{self, Handle, Options};

/// Path of a fixture file under tests/fixtures.
pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

pub fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixture_path(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

/// Parses a `*_headers.txt` fixture (raw HTTP/1.1 head) into status and headers, dropping
/// framing headers (the mock frames its own body).
pub fn fixture_head(rel: &str) -> (StatusCode, Vec<(String, String)>) {
    let text = String::from_utf8(fixture(rel)).unwrap();
    let mut lines = text.lines();
    let status_line = lines.next().unwrap();
    let code: u16 = status_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    for l in lines {
        if l.trim().is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        let k = k.trim().to_ascii_lowercase();
        if matches!(k.as_str(), "transfer-encoding" | "content-length" | "connection") {
            continue;
        }
        headers.push((k, v.trim().to_string()));
    }
    (StatusCode::from_u16(code).unwrap(), headers)
}

/// What the mock received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// HTTP/1.1 or HTTP/2, as spoken on the connection.
    pub version: http::Version,
}

/// How the mock answers one request.
#[derive(Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body pieces, each sent as its own chunk after `delay`.
    pub chunks: Vec<Bytes>,
    pub delay: Duration,
    /// After the chunks, abort the connection instead of ending the body cleanly.
    pub cut: bool,
    /// Hold the body open (send nothing more) for this long after the chunks.
    pub stall: Option<Duration>,
    /// After the first chunk, wait for this to be notified before sending the rest.
    pub gate: Option<Arc<tokio::sync::Notify>>,
}

impl Reply {
    pub fn new(status: u16) -> Self {
        Self { status, ..Default::default() }
    }
    pub fn json(body: impl Into<Bytes>) -> Self {
        Self::new(200).header("content-type", "application/json").body(body)
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_ascii_lowercase(), v.to_string()));
        self
    }
    pub fn headers(mut self, h: Vec<(String, String)>) -> Self {
        self.headers.extend(h);
        self
    }
    pub fn body(mut self, b: impl Into<Bytes>) -> Self {
        self.chunks = vec![b.into()];
        self
    }
    /// The body split into pieces of `size` bytes, `delay` apart.
    pub fn pieces(mut self, b: &[u8], size: usize, delay: Duration) -> Self {
        self.chunks = b.chunks(size.max(1)).map(Bytes::copy_from_slice).collect();
        self.delay = delay;
        self
    }
    pub fn cut(mut self) -> Self {
        self.cut = true;
        self
    }
    pub fn gate(mut self, g: Arc<tokio::sync::Notify>) -> Self {
        self.gate = Some(g);
        self
    }
    pub fn stall(mut self, d: Duration) -> Self {
        self.stall = Some(d);
        self
    }
}

type Responder = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A hyper mock upstream.
pub struct Mock {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    responder: Arc<Mutex<Responder>>,
}

impl Mock {
    pub async fn start(responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Mock {
        Mock::serve(None, responder).await
    }

    /// A mock that speaks TLS with `config` (its certificate and ALPN offer); HTTP/2 or
    /// HTTP/1.1 as the handshake chose.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>, responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Mock {
        Mock::serve(Some(tokio_rustls::TlsAcceptor::from(config)), responder).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>, responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Mock {
        env::init();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let responder: Arc<Mutex<Responder>> = Arc::new(Mutex::new(Arc::new(responder)));
        let (seen2, resp2) = (seen.clone(), responder.clone());
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let conns = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (seen, resp, tls) = (seen2.clone(), resp2.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, resp) = (seen.clone(), resp.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let s = Seen {
                                method: parts.method,
                                path: parts.uri.path().to_string(),
                                query: parts.uri.query().map(str::to_string),
                                headers: parts.headers,
                                body,
                                version: parts.version,
                            };
                            let reply = (resp.lock().clone())(&s);
                            seen.lock().push(s);
                            Ok::<_, Infallible>(build_response(reply))
                        }
                    });
                    let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = server.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            // A handshake the client aborts (an untrusted certificate) ends here.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = server.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Mock {
            addr,
            seen,
            connections,
            responder,
        }
    }

    pub fn set(&self, responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.responder.lock() = Arc::new(responder);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().last().cloned().expect("the mock received a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }
}

type MockBody = StreamBody<tokio_stream_shim::Receiver>;

fn build_response(reply: Reply) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let Reply {
        status,
        headers,
        chunks,
        delay,
        cut,
        stall,
        gate,
    } = reply;
    tokio::spawn(async move {
        for (i, c) in chunks.into_iter().enumerate() {
            if i == 1 {
                if let Some(g) = &gate {
                    g.notified().await;
                }
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(Frame::data(c))).await.is_err() {
                return;
            }
        }
        if let Some(d) = stall {
            tokio::time::sleep(d).await;
        }
        if cut {
            let _ = tx.send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut by the mock"))).await;
        }
    });
    let mut r = Response::new(StreamBody::new(tokio_stream_shim::Receiver(rx)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        r.headers_mut().append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    r
}

/// A minimal `Stream` over an mpsc receiver (avoids a tokio-stream dependency).
pub mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use hyper::body::Frame;

    pub struct Receiver(pub tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

    impl futures_util::Stream for Receiver {
        type Item = Result<Frame<Bytes>, std::io::Error>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}

/// The proxy running in this process.
pub struct Proxy {
    pub handle: Handle,
    pub client: TestClient,
    pub _dir: Option<tempfile::TempDir>,
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.data_addr)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.handle.admin_addr)
    }
    pub async fn metrics(&self) -> String {
        let r = self.client.get(&self.admin_url("/metrics"), &[]).await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }
}

/// Starts the proxy on ephemeral ports with a YAML config. `{upstream}` in the YAML is
/// replaced by the mock's URL; `listen` and `admin.listen` default to port 0.
pub async fn start_proxy(yaml: &str, upstream: &str) -> Proxy {
    start_proxy_with_clock(yaml, upstream, Clock::system()).await
}

pub async fn start_proxy_with_clock(yaml: &str, upstream: &str, clock: Clock) -> Proxy {
    env::init();
    let mut text = yaml.replace("{upstream}", upstream);
    if !text.contains("\nlisten:") && !text.starts_with("listen:") {
        text = format!("listen: \"127.0.0.1:0\"\n{text}");
    }
    if !text.contains("\nadmin:") {
        text.push_str("\nadmin:\n  listen: \"127.0.0.1:0\"\n");
    }
    let mut config = Config::from_yaml(&text, "test.yaml").unwrap_or_else(|e| panic!("test config: {e}"));
    let dir = own_database(&mut config);
    let handle = server::start(config, Options { config_path: None, clock }).await.expect("proxy starts");
    Proxy {
        handle,
        client: TestClient::new(),
        _dir: dir,
    }
}

/// Gives a proxy on the embedded store with the default `store.path` a database of its own
/// (tests run side by side in one process); the directory lives as long as the proxy.
pub fn own_database(config: &mut Config) -> Option<tempfile::TempDir> {
    if config.store.backend != spendgate::config::Backend::Memory || config.store.path != std::path::Path::new("spendgate.db") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    config.store.path = dir.path().join("spendgate.db");
    Some(dir)
}

/// The four providers mounted on one mock upstream.
pub fn providers_yaml() -> &'static str {
    "providers:\n  elevenlabs: {kind: elevenlabs, prefix: /elevenlabs, upstream: \"{upstream}\"}\n  gemini: {kind: gemini, prefix: /gemini, upstream: \"{upstream}\"}\n  openai: {kind: openai, prefix: /openai, upstream: \"{upstream}\"}\n  anthropic: {kind: anthropic, prefix: /anthropic, upstream: \"{upstream}\"}\n  vertex: {kind: vertex, prefix: /vertex, upstream: \"{upstream}\"}\n"
}

pub mod browser;
pub mod env;
pub mod ops;
pub mod process;
pub mod python;
pub mod redis;
pub mod tls;

/// A mock that streams a fixture as SSE in pieces of `piece` bytes, holding everything after
/// the first piece until the returned gate is notified.
pub async fn gated_stream(fixture_name: &str, piece: usize) -> (Mock, Arc<tokio::sync::Notify>) {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let body = fixture(fixture_name);
    let mock = Mock::start(move |_| {
        Reply::new(200)
            .header("content-type", "text/event-stream")
            .pieces(&body, piece, Duration::ZERO)
            .gate(g.clone())
    })
    .await;
    (mock, gate)
}

/// The value of one series in the Prometheus text format (`series` includes its labels and
/// the space before the value); `None` when absent.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// Polls `ok` until it holds; fails the test after 20 s.
pub async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every settlement already started has been written; PANICS when one is still
/// running at `Handle::settled`'s deadline (a stuck settlement must not let a "costs
/// nothing" assertion made after it pass).
pub async fn settled_or_fail(handle: &Handle) {
    if let Err(e) = handle.settled().await {
        panic!("{e}");
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

#[derive(Clone)]
pub struct TestClient {
    inner: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClient {
    pub fn new() -> Self {
        env::init();
        Self {
            inner: Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http(),
        }
    }

    pub async fn send(&self, method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Incoming> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.inner
            .request(b.body(Full::new(body.into())).unwrap())
            .await
            .expect("request reaches the proxy")
    }

    pub async fn request(&self, method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Got {
        let r = self.send(method, url, headers, body).await;
        let (parts, body) = r.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn post(&self, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Got {
        self.request(Method::POST, url, headers, body).await
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Got {
        self.request(Method::GET, url, headers, Bytes::new()).await
    }
}

/// Reads a counter from the store: `(scope, tenant, window, field)` in the current bucket.
pub async fn counter(p: &Proxy, scope: spendgate::domain::Scope, tenant: &str, window: spendgate::domain::window::Window, field: &str) -> i64 {
    settled_or_fail(&p.handle).await;
    let rt = p.handle.app.runtime();
    let bucket = rt.calendar.bucket(window, p.handle.app.clock.now());
    let key = spendgate::quota::ledger::CounterKey {
        scope,
        tenant: tenant.into(),
        window,
        bucket: bucket.id,
        field: field.into(),
    };
    p.handle.app.store.read(&[key]).await.unwrap()[0]
}

/// The profile's monthly cost in nano-dollars.
pub async fn monthly_cost(p: &Proxy, profile: &str) -> i64 {
    counter(
        p,
        spendgate::domain::Scope::Profile,
        profile,
        spendgate::domain::window::Window::Monthly,
        "cost",
    )
    .await
}

/// Dollars as nano-dollars, from a decimal string (exact).
pub fn usd(s: &str) -> i64 {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut frac = frac.to_string();
    assert!(frac.len() <= 9, "finer than a nano-dollar: {s}");
    while frac.len() < 9 {
        frac.push('0');
    }
    int.parse::<i64>().unwrap() * 1_000_000_000 + frac.parse::<i64>().unwrap()
}
