//! `nonstop-hello`: the sample app of nonstop's tests and quickstart. It reports its version, node
//! and environment, keeps Tomcat-style sessions, echoes WebSockets, can start slowly, fail or crash.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

#[derive(Parser, Debug)]
#[command(name = "nonstop-hello", about = "Sample HTTP app for nonstop")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "HELLO_LISTEN")]
    listen: Option<SocketAddr>,
    /// Port on 127.0.0.1 (0 picks a free one); ignored when --listen is given.
    #[arg(long, env = "HELLO_PORT", default_value_t = 8081)]
    port: u16,
    #[arg(long, env = "HELLO_VERSION", default_value = "1")]
    version: String,
    #[arg(long, env = "HELLO_NODE", default_value = "hello")]
    node: String,
    /// Session route appended to session ids (Tomcat's jvmRoute); defaults to the node name.
    #[arg(long, env = "HELLO_ROUTE")]
    route: Option<String>,
    /// Wait this long before listening, like an app that starts slowly.
    #[arg(long, env = "HELLO_START_DELAY", value_parser = humantime::parse_duration)]
    start_delay: Option<Duration>,
    /// Answer 503 on /health from the start.
    #[arg(long, env = "HELLO_FAIL_HEALTH")]
    fail_health: bool,
    /// Exit with code 3 this long after starting.
    #[arg(long, env = "HELLO_CRASH_AFTER", value_parser = humantime::parse_duration)]
    crash_after: Option<Duration>,
    /// Exit with code 2 at once, like a build that dies at start-up.
    #[arg(long, env = "HELLO_EXIT_ON_START")]
    exit_on_start: bool,
}

struct App {
    version: HeaderValue,
    node: HeaderValue,
    route: String,
    healthy: AtomicBool,
    sessions: Mutex<HashMap<String, u64>>,
    next_session: AtomicU64,
    /// Randomly keyed per process: hashing a counter with it gives unguessable session ids.
    session_keys: std::hash::RandomState,
}

type Body = Full<Bytes>;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.exit_on_start {
        eprintln!("nonstop-hello: exiting at start-up as asked (--exit-on-start)");
        std::process::exit(2);
    }
    if let Some(after) = args.crash_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("nonstop-hello: crashing as asked (--crash-after)");
            std::process::exit(3);
        });
    }
    if let Some(delay) = args.start_delay {
        tokio::time::sleep(delay).await;
    }
    let addr = args
        .listen
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], args.port)));
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("nonstop-hello: cannot listen on {addr}: {err}");
            std::process::exit(1);
        }
    };
    let bound = listener.local_addr().expect("bound socket has an address");
    let app = Arc::new(App {
        version: HeaderValue::from_str(&args.version).expect("version is a header value"),
        node: HeaderValue::from_str(&args.node).expect("node is a header value"),
        route: args.route.clone().unwrap_or_else(|| args.node.clone()),
        healthy: AtomicBool::new(!args.fail_health),
        sessions: Mutex::new(HashMap::new()),
        next_session: AtomicU64::new(0),
        session_keys: std::hash::RandomState::new(),
    });
    println!(
        "listening on {bound} version={} node={}",
        args.version, args.node
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    serve(listener, app).await;
}

async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    let graceful = GracefulShutdown::new();
    let server = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = hyper::service::service_fn(move |req| handle(app.clone(), req));
                let conn = server.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move { let _ = conn.await; });
            }
            _ = terminate.recv() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let mut response = match (req.method(), path.split(';').next().unwrap_or("")) {
        (&Method::GET, "/") => text(format!(
            "hello v{} from {}\n",
            to_str(&app.version),
            to_str(&app.node)
        )),
        (&Method::GET, "/health") => {
            if app.healthy.load(Ordering::Relaxed) {
                text("UP".into())
            } else {
                status(StatusCode::SERVICE_UNAVAILABLE, "DOWN")
            }
        }
        (&Method::GET, "/version") => text(to_str(&app.version).to_string()),
        (&Method::GET, "/slow") => {
            let ms = query_param(req.uri().query(), "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(format!("slept {ms}ms\n"))
        }
        (&Method::GET, "/headers") => {
            let mut headers = serde_json::Map::new();
            for name in req.headers().keys() {
                let values: Vec<_> = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()))
                    .collect();
                headers.insert(name.to_string(), values.join(", ").into());
            }
            text(serde_json::Value::Object(headers).to_string())
        }
        // What the runtime gave this process (a sample app: a real one should not say this).
        (&Method::GET, "/env") => {
            let env: serde_json::Map<String, serde_json::Value> =
                std::env::vars().map(|(k, v)| (k, v.into())).collect();
            text(serde_json::Value::Object(env).to_string())
        }
        (&Method::POST, "/echo") => match req.into_body().collect().await {
            Ok(body) => Response::new(Full::new(body.to_bytes())),
            Err(_) => status(StatusCode::BAD_REQUEST, "body ended early"),
        },
        (&Method::GET, "/session") => session(&app, &req),
        (&Method::GET, "/ws") => websocket(&app, req),
        (&Method::POST, "/admin/fail-health") => {
            app.healthy.store(false, Ordering::Relaxed);
            text("health now fails\n".into())
        }
        (&Method::POST, "/admin/heal") => {
            app.healthy.store(true, Ordering::Relaxed);
            text("health now passes\n".into())
        }
        (&Method::POST, "/admin/crash") => {
            eprintln!("nonstop-hello: crashing as asked (/admin/crash)");
            std::process::exit(3);
        }
        (_, p) if p.starts_with("/status/") => {
            let code = p["/status/".len()..]
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            match code {
                Some(code) => status(code, code.canonical_reason().unwrap_or("")),
                None => status(StatusCode::BAD_REQUEST, "not a status code"),
            }
        }
        _ => status(StatusCode::NOT_FOUND, "not found"),
    };
    response
        .headers_mut()
        .insert("x-version", app.version.clone());
    response.headers_mut().insert("x-node", app.node.clone());
    Ok(response)
}

/// Tomcat-style session: the id ends in `.<route>`, kept in a cookie or a `;jsessionid=` path parameter.
fn session(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let from_cookie = req
        .headers()
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix("JSESSIONID="))
        .map(str::to_string)
        .next();
    let from_path = req
        .uri()
        .path()
        .split(";jsessionid=")
        .nth(1)
        .map(str::to_string);
    let mut sessions = app.sessions.lock().unwrap_or_else(|e| e.into_inner());
    let known = from_cookie
        .or(from_path)
        .filter(|id| sessions.contains_key(id));
    let (id, fresh) = match known {
        Some(id) => (id, false),
        None => {
            let n = app.next_session.fetch_add(1, Ordering::Relaxed);
            let (a, b) = (app.session_keys.hash_one(n), app.session_keys.hash_one(!n));
            (format!("{a:016X}{b:016X}.{}", app.route), true)
        }
    };
    let count = sessions.entry(id.clone()).or_insert(0);
    *count += 1;
    let mut response = text(format!(
        "count={count} node={} version={}\n",
        to_str(&app.node),
        to_str(&app.version)
    ));
    if fresh && let Ok(cookie) = HeaderValue::from_str(&format!("JSESSIONID={id}; Path=/")) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

fn websocket(app: &App, mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return status(StatusCode::BAD_REQUEST, "not a WebSocket request");
    };
    let node = to_str(&app.node).to_string();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = socket.next().await {
            let reply = match message {
                Message::Text(text) => Message::text(format!("{node}: {text}")),
                Message::Binary(data) => Message::Binary(data),
                Message::Close(_) => break,
                _ => continue,
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    });
    let mut response = status(StatusCode::SWITCHING_PROTOCOLS, "");
    let headers = response.headers_mut();
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    headers.insert("connection", HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert("sec-websocket-accept", accept);
    }
    response
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn to_str(value: &HeaderValue) -> &str {
    value.to_str().unwrap_or("?")
}

fn text(body: String) -> Response<Body> {
    Response::new(Full::new(Bytes::from(body)))
}

fn status(code: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = code;
    response
}
