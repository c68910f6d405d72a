//! Real-shaped upstream transport for the tests: a private certificate authority made per
//! test (its PEM written to a file, as an operator would hand it to `tls_ca_file`), server
//! configurations it signs with a chosen ALPN offer, and an HTTP `CONNECT` proxy on loopback
//! that records what it was asked and what passed through it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority of the test's own.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// A file holding its certificate, PEM.
    pub file: PathBuf,
    _dir: tempfile::TempDir,
}

/// What a server offers in ALPN.
pub const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
pub const H1_ONLY: &[&[u8]] = &[b"http/1.1"];

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key).unwrap().pem();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, &pem).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            file,
            _dir: dir,
        }
    }

    /// The file's path as a YAML-safe string.
    pub fn file_str(&self) -> String {
        self.file.to_str().expect("temp paths are UTF-8").to_string()
    }

    /// A server configuration with a certificate this CA signed for `names` (DNS names or IP
    /// addresses), offering `alpn`.
    pub fn server_config(&self, names: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// One `CONNECT` the proxy received.
#[derive(Debug, Clone)]
pub struct Tunnelled {
    /// `host:port` asked for.
    pub target: String,
    /// The `Proxy-Authorization` header, if sent.
    pub auth: Option<String>,
    /// The first bytes the client sent through the tunnel.
    pub first_bytes: Vec<u8>,
}

/// An HTTP proxy that only tunnels: every `CONNECT` is answered 200 and joined to `to`,
/// whatever host it names (so names that do not resolve can be used), or answered 407 when
/// `require_auth` is set and the header differs.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Tunnelled>>>,
}

impl ConnectProxy {
    pub async fn start(to: SocketAddr, require_auth: Option<&str>) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let require_auth = require_auth.map(str::to_string);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let (seen, require_auth) = (seen2.clone(), require_auth.clone());
                tokio::spawn(async move {
                    let _ = tunnel(client, to, seen, require_auth).await;
                });
            }
        });
        ConnectProxy { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn tunnels(&self) -> Vec<Tunnelled> {
        self.seen.lock().clone()
    }
}

async fn tunnel(mut client: TcpStream, to: SocketAddr, seen: Arc<Mutex<Vec<Tunnelled>>>, require_auth: Option<String>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte, so nothing past the request head is consumed here.
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut words = request_line.split(' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default().to_string());
    let auth = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("proxy-authorization").then(|| v.trim().to_string())
    });
    if method != "CONNECT" {
        client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n").await?;
        return Ok(());
    }
    let index = {
        let mut s = seen.lock();
        s.push(Tunnelled {
            target,
            auth: auth.clone(),
            first_bytes: Vec::new(),
        });
        s.len() - 1
    };
    if require_auth.is_some() && auth != require_auth {
        client
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    }
    let mut upstream = TcpStream::connect(to).await?;
    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    let mut first = [0u8; 64];
    let n = client.read(&mut first).await?;
    seen.lock()[index].first_bytes = first[..n].to_vec();
    upstream.write_all(&first[..n]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
