//! In-process harness: a proxy started from a temp config file, scripted backends on 127.0.0.1
//! (hyper servers with a few fault modes), a keep-alive client that never resends, and raw sockets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[allow(unused_imports)]
pub use nonstop_testkit::load::Load;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running proxy and the config file it was started from.
pub struct TestProxy {
    pub running: Option<nonstop_proxy::Running>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    /// `[proxy]` with listen/admin filled in, then `proxy_extra`, then `rest`.
    pub async fn start(proxy_extra: &str, rest: &str) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let text = Self::text(&dir, proxy_extra, rest);
        let path = dir.path().join("nonstop.toml");
        std::fs::write(&path, text).unwrap();
        let (config, source) = nonstop_config::Config::load(&path).unwrap();
        let running = nonstop_proxy::start(&config, &source).await.unwrap();
        let addr = running.listening[0];
        TestProxy {
            running: Some(running),
            addr,
            dir,
        }
    }

    fn text(dir: &tempfile::TempDir, proxy_extra: &str, rest: &str) -> String {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin = \"unix:{}\"\nworkers = 1\n{proxy_extra}\n{rest}",
            dir.path().join("admin.sock").display()
        )
    }

    pub fn shared(&self) -> &nonstop_proxy::Shared {
        &self.running.as_ref().unwrap().shared
    }

    /// Rewrites the config file (same `[proxy]` head) without reloading.
    pub fn rewrite(&self, proxy_extra: &str, rest: &str) {
        std::fs::write(self.config_path(), Self::text(&self.dir, proxy_extra, rest)).unwrap();
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("nonstop.toml")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn backend(&self, pool: &str, name: &str) -> nonstop_proxy::BackendView {
        let pool = self.shared().pool(pool).unwrap().view();
        pool.backends
            .into_iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    /// A client of this proxy's admin API, over its unix socket.
    pub fn admin(&self) -> nonstop_admin_client::AdminClient {
        let socket = self.dir.path().join("admin.sock");
        nonstop_admin_client::AdminClient::new(nonstop_admin_client::Endpoint::Unix(socket), None)
    }

    pub fn metrics(&self) -> String {
        self.shared().metrics().encode()
    }

    pub async fn stop(mut self) {
        self.running.take().unwrap().shutdown().await;
    }
}

/// What a scripted backend does with a request, chosen by its path.
///  - `/truncate`: Content-Length 100000, 1000 bytes, then close.
///  - `/hang`: never answers.
///  - `/echo-host`: answers with every Host header it got.
///  - `/health`: 200 while `healthy`, else 503.
///  - anything else: 200 `node=NAME`, after reading the whole body.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub requests: Arc<AtomicU64>,
    pub healthy: Arc<AtomicBool>,
    /// Every request path the backend received, in order.
    pub paths: Arc<std::sync::Mutex<Vec<String>>>,
    /// Connections accepted, and connections that have ended.
    pub connections: Arc<AtomicU64>,
    pub closed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_with(name, None).await
    }

    /// Like `start`, closing connections idle for `idle_close` (as nginx's keepalive_timeout does).
    pub async fn start_with(name: &str, idle_close: Option<Duration>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = paths.clone();
        let (connections, closed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (opened, ended) = (connections.clone(), closed.clone());
        let (node, count, health) = (name.to_string(), requests.clone(), healthy.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (node, count, health) = (node.clone(), count.clone(), health.clone());
                let seen = seen.clone();
                opened.fetch_add(1, Ordering::Relaxed);
                let ended = ended.clone();
                tokio::spawn(async move {
                    let _count_the_end = CountOnDrop(ended);
                    let mut head = [0u8; 64];
                    let n = stream.peek(&mut head).await.unwrap_or(0);
                    if head[..n].starts_with(b"GET /truncate") {
                        count.fetch_add(1, Ordering::Relaxed);
                        let mut buf = vec![0u8; 4096];
                        let _ = stream.read(&mut buf).await;
                        let head = "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n";
                        let _ = stream.write_all(head.as_bytes()).await;
                        let _ = stream.write_all(&[b'x'; 1000]).await;
                        return;
                    }
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (node, count, health) = (node.clone(), count.clone(), health.clone());
                        seen.lock().unwrap().push(req.uri().path().to_string());
                        async move {
                            if req.uri().path() != "/health" {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            let path = req.uri().path().to_string();
                            let hosts: Vec<String> = req
                                .headers()
                                .get_all("host")
                                .iter()
                                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                .collect();
                            let body = req.into_body().collect().await;
                            let mut response = match path.as_str() {
                                "/hang" => std::future::pending().await,
                                "/health" if !health.load(Ordering::Relaxed) => {
                                    let mut r = Response::new(Full::new(Bytes::from("down")));
                                    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                                    r
                                }
                                "/echo-host" => {
                                    Response::new(Full::new(Bytes::from(hosts.join("|"))))
                                }
                                _ => Response::new(Full::new(Bytes::from(format!(
                                    "node={node} body={}",
                                    body.map(|b| b.to_bytes().len() as i64).unwrap_or(-1)
                                )))),
                            };
                            response
                                .headers_mut()
                                .insert("x-node", node.parse().unwrap());
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let mut server = hyper::server::conn::http1::Builder::new();
                    if let Some(idle) = idle_close {
                        server
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(idle);
                    }
                    let _ = server.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            requests,
            healthy,
            paths,
            connections,
            closed,
            task,
        }
    }

    pub fn spec(&self) -> nonstop_proxy::BackendSpec {
        nonstop_proxy::BackendSpec {
            name: self.name.clone(),
            addr: self.addr.to_string(),
            weight: None,
            route: None,
            state: None,
        }
    }

    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

struct CountOnDrop(Arc<AtomicU64>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled keep-alive client; it never resends a request on its own.
pub fn client() -> HttpClient {
    client_from(None)
}

/// [`client`] with its connections made from `local` (e.g. 127.0.0.2, for address rules).
pub fn client_from(local: Option<std::net::IpAddr>) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(local);
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .retry_canceled_requests(false)
        .build(connector)
}

/// Status and body of one GET, or the client error as text.
pub async fn get(client: &HttpClient, url: &str) -> Result<(u16, String), String> {
    let response = client
        .get(url.parse().unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `condition` every 10 ms; panics naming `what` after [`DEADLINE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `request` on a fresh connection and reads until the proxy closes it or `limit` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The first line of a raw HTTP answer.
pub fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

/// The value of a metric line starting with `prefix`, 0 if absent.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
