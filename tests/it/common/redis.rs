//! Real `redis-server` processes for the tests: standalone on a free loopback port, or a
//! 3-master Redis Cluster made with `redis-cli --cluster create`. Each server runs in its
//! own temporary directory without persistence and is killed on drop.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A loopback port that was free a moment ago.
/// $0.0615: 615 characters of `eleven_multilingual_v2` at $0.10 per 1K, the TTS call the
/// Redis tests make.
pub const PRICE: i64 = 61_500_000;

/// The body of that call.
pub fn tts_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"text": "x".repeat(615), "model_id": "eleven_multilingual_v2"})).unwrap()
}

/// The upstream's answer to it.
pub fn tts_reply() -> super::Reply {
    super::Reply::new(200)
        .header("content-type", "audio/mpeg")
        .header("character-cost", "615")
        .body(vec![0u8; 256])
}

/// A metric's total in a history hash (fields are `<metric>|<provider>|<model>`).
pub fn hist_total(c: &mut impl ::redis::ConnectionLike, key: &str, metric: &str) -> i64 {
    let fields: Vec<(String, i64)> = ::redis::cmd("HGETALL").arg(key).query(c).unwrap();
    fields.iter().filter(|(f, _)| f.split('|').next() == Some(metric)).map(|(_, v)| v).sum()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A port that is free together with `port + 10000` (a cluster node's bus port).
fn free_cluster_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

pub struct RedisServer {
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    dir: TempDir,
}

fn spawn(port: u16, dir: &Path, extra: &[String]) -> Child {
    // With TLS the plain port is off and `port` is the TLS port.
    let mut cmd = Command::new("redis-server");
    if extra.iter().any(|a| a == "--tls-cert-file") {
        cmd.args(["--port", "0", "--tls-port", &port.to_string()]);
    } else {
        cmd.args(["--port", &port.to_string()]);
    }
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (Debian package redis-server)")
}

fn wait_ready(port: u16, tls: bool) {
    if tls {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server (TLS) on port {port} did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        return;
    }
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok();
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "redis-server on port {port} did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl RedisServer {
    /// A standalone server on a free port.
    pub fn start() -> RedisServer {
        Self::start_with(free_port(), &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(port, dir.path(), &extra);
        wait_ready(port, extra.iter().any(|a| a == "--tls-cert-file"));
        RedisServer {
            port,
            extra,
            child: Some(child),
            dir,
        }
    }

    /// A server that speaks only TLS, with the certificate and key of [`TlsFiles`].
    pub fn start_tls(files: &TlsFiles) -> RedisServer {
        let (cert, key, ca) = (
            files.cert.display().to_string(),
            files.key.display().to_string(),
            files.ca.display().to_string(),
        );
        Self::start_with(
            free_port(),
            &[
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ],
        )
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection_with_timeout(Duration::from_secs(2)).unwrap()
    }

    /// SIGKILL: the server is gone at once, with everything it held.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port, empty (a crash without persistence).
    pub fn restart_empty(&mut self) {
        self.kill();
        self.dir = tempfile::tempdir().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = spawn(self.port, self.dir.path(), &self.extra);
            std::thread::sleep(Duration::from_millis(50));
            // The port may linger for a moment after the kill; try again if the server exits.
            if child.try_wait().unwrap().is_none() {
                self.child = Some(child);
                break;
            }
            assert!(Instant::now() < deadline, "redis-server could not restart on port {}", self.port);
        }
        wait_ready(self.port, self.extra.iter().any(|a| a == "--tls-cert-file"));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of masters only, every slot assigned.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::start_with(
                    free_cluster_port(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is installed (Debian package redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every node must agree that the cluster is up before clients use it.
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            loop {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut n.conn()).unwrap();
                if info.contains("cluster_state:ok") && info.contains(&format!("cluster_known_nodes:{masters}")) {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not come up: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// A seed node's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].port)
    }

    pub fn conn(&self) -> redis::cluster::ClusterConnection {
        redis::cluster::ClusterClient::new(vec![self.url()]).unwrap().get_connection().unwrap()
    }

    /// How many masters hold at least one of `keys` (a node answers `MOVED` for keys it does
    /// not own).
    pub fn masters_holding(&self, keys: &[String]) -> usize {
        self.nodes
            .iter()
            .filter(|n| {
                let mut c = n.conn();
                keys.iter().any(|k| redis::cmd("EXISTS").arg(k).query::<i64>(&mut c).is_ok_and(|e| e > 0))
            })
            .count()
    }
}

/// A test CA and a server certificate it signed for 127.0.0.1 (made with the `openssl` CLI).
pub struct TlsFiles {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    _dir: TempDir,
}

impl TlsFiles {
    pub fn generate() -> TlsFiles {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl is installed (Debian package openssl)");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=spendgate test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        TlsFiles {
            ca: d.join("ca.pem"),
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            _dir: dir,
        }
    }
}
