//! `nonstop proxy`: the built-in HTTP load balancer that makes nonstop work on a bare machine.
//! This file wires the pieces together: state, request path, health checks, admin API, reload.

mod admin;
mod attempt;
mod backend;
mod balance;
mod client_body;
mod control;
mod edge;
mod forward;
mod h1_body;
mod headers;
mod health;
mod host;
mod metrics;
mod persist;
mod reload;
mod response_body;
mod server;
mod state;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use http::HeaderValue;
use nonstop_config::{AdminEndpoint, Config, ProxyConfig, Source};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backend::ChecksView;
pub use control::{BackendPatch, ControlError, HealthMark};
pub use edge::Edge;
pub use metrics::Metrics;
pub use reload::{BackendsFrom, ChangeKind, PoolChange, ReloadReport};
pub use state::{BackendSpec, BackendView, PoolView};

use health::ProbeClient;
use state::Table;
use upstream::Upstream;

/// State shared by every connection, the admin API and background tasks.
pub struct Shared {
    table: ArcSwap<Table>,
    probe_client: ProbeClient,
    metrics: Arc<Metrics>,
    request_ids: RequestIds,
    config_path: PathBuf,
    /// The `[proxy]` section last applied, to tell which changes need a restart.
    applied: std::sync::Mutex<ProxyConfig>,
    reload_lock: tokio::sync::Mutex<()>,
    weak_self: Weak<Shared>,
}

impl Shared {
    fn new(
        proxy: &ProxyConfig,
        config: &Config,
        config_path: &Path,
    ) -> anyhow::Result<Arc<Shared>> {
        let metrics = Arc::new(Metrics::new());
        let saved = state_file(proxy, config_path)
            .map(|path| persist::load(&path))
            .unwrap_or_default();
        let table = reload::build_table(proxy, config, None, &saved, &metrics, &mut Vec::new())
            .map_err(anyhow::Error::msg)?;
        let shared = Arc::new_cyclic(|weak_self| Shared {
            table: ArcSwap::from_pointee(table),
            probe_client: health::probe_client(),
            metrics,
            request_ids: RequestIds::new(),
            config_path: config_path.to_path_buf(),
            applied: std::sync::Mutex::new(proxy.clone()),
            reload_lock: tokio::sync::Mutex::new(()),
            weak_self: weak_self.clone(),
        });
        for pool in &shared.table.load().pools {
            health::spawn(pool, shared.probe_client.clone());
        }
        Ok(shared)
    }
}

impl Shared {
    /// Records every pool's members in the state file, if one is configured. A failure is logged,
    /// not returned: the change itself already took effect.
    pub(crate) fn save_state(&self) {
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let path = state_file(&applied, &self.config_path);
        drop(applied);
        if let Some(path) = path
            && let Err(err) = persist::save(&path, &self.table.load())
        {
            tracing::error!(file = %path.display(), error = %err, "cannot write the state file");
        }
    }
}

/// `state_file`, with a relative path taken relative to the config file's directory.
fn state_file(proxy: &ProxyConfig, config_path: &Path) -> Option<PathBuf> {
    let path = proxy.state_file.as_ref()?;
    Some(match config_path.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.clone(),
    })
}

/// Request ids: an incoming valid `X-Request-Id` is kept, otherwise a process-unique one is made.
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(0);
        RequestIds {
            prefix: seed ^ std::process::id().rotate_left(16),
            next: AtomicU64::new(1),
        }
    }

    fn take(&self, headers: &http::HeaderMap) -> HeaderValue {
        if let Some(id) = headers.get("x-request-id") {
            let ok = id.len() <= 128 && id.as_bytes().iter().all(|b| b.is_ascii_graphic());
            if ok && !id.is_empty() {
                return id.clone();
            }
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // `{prefix:08x}-{n:x}`, written by hand: this runs for every request.
        let mut buf = [0u8; 8 + 1 + 16];
        let hex = |nibble: u64| b"0123456789abcdef"[(nibble & 0xf) as usize];
        for (i, slot) in buf[..8].iter_mut().enumerate() {
            *slot = hex(u64::from(self.prefix) >> (28 - 4 * i));
        }
        buf[8] = b'-';
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            buf[9 + i] = hex(n >> (4 * (digits - 1 - i)));
        }
        HeaderValue::from_bytes(&buf[..9 + digits]).expect("hex digits are a valid header value")
    }
}

/// A running proxy: its shared state and the addresses it actually bound.
pub struct Running {
    pub shared: Arc<Shared>,
    pub listening: Vec<SocketAddr>,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// Binds everything the `[proxy]` section asks for and starts serving.
pub async fn start(config: &Config, source: &Source) -> anyhow::Result<Running> {
    let Some(proxy) = config.proxy.as_ref() else {
        bail!(
            "{}: there is no [proxy] section; add one with at least `listen = \"127.0.0.1:8080\"`",
            source.path.display()
        );
    };
    let shared = Shared::new(proxy, config, &source.path)?;
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    // Thread-per-core, like nginx's workers: each thread runs its own single-threaded runtime,
    // accepts on its own SO_REUSEPORT socket and keeps its own backend connections, so a request
    // never hops between threads.
    let worker_count = proxy
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut listening = Vec::new();
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..worker_count).map(|_| Vec::new()).collect();
    for addr in &proxy.listen {
        let first = reuseport_listener(*addr).with_context(|| {
            format!(
                "cannot listen on {addr} (from `listen` in {})",
                source.path.display()
            )
        })?;
        let bound = first.local_addr()?;
        listening.push(bound);
        per_worker[0].push(first);
        for listeners in per_worker.iter_mut().skip(1) {
            listeners.push(
                reuseport_listener(bound).with_context(|| format!("cannot listen on {bound}"))?,
            );
        }
    }
    let mut workers = Vec::with_capacity(worker_count);
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let (shared, shutdown, proxy) = (shared.clone(), shutdown.clone(), proxy.clone());
        let thread = std::thread::Builder::new()
            .name(format!("nonstop-worker-{index}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a worker runtime can be built");
                runtime.block_on(worker(index, listeners, shared, proxy, shutdown));
            })
            .context("cannot start a worker thread")?;
        workers.push(thread);
    }

    let token = match &proxy.admin_token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let admin_app = admin::router(shared.clone(), token);
    match &proxy.admin {
        AdminEndpoint::Unix(path) => {
            tasks.spawn(serve_admin(bind_unix(path)?, admin_app, shutdown.clone()));
        }
        AdminEndpoint::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for the admin API on {addr}"))?;
            tasks.spawn(serve_admin(listener, admin_app, shutdown.clone()));
        }
    }

    if let Some(addr) = proxy.metrics {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        let metrics = shared.metrics.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics.encode() }
            }),
        );
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }
    tracing::info!(listen = ?listening, admin = %proxy.admin, "proxy started");
    Ok(Running {
        shared,
        listening,
        shutdown,
        tasks,
        workers,
    })
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (at most `drain_timeout`), then returns.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        let workers = std::mem::take(&mut self.workers);
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
        if let AdminEndpoint::Unix(path) = &self
            .shared
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admin
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs the proxy until SIGTERM/SIGINT; SIGHUP reloads the configuration.
pub async fn run(config: Config, source: Source) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let running = start(&config, &source).await?;
    loop {
        tokio::select! {
            _ = hangup.recv() => match running.shared.reload().await {
                Ok(_report) => {}
                Err(err) => tracing::error!("reload refused, still serving the previous configuration: {err}"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    running.shutdown().await;
    Ok(())
}

/// One data-plane thread: accepts on its listeners and serves until shutdown, then drains.
async fn worker(
    index: usize,
    listeners: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    proxy: ProxyConfig,
    shutdown: CancellationToken,
) {
    let upstream = Upstream::new(proxy.timeouts.connect.0, proxy.timeouts.idle.0);
    let sweeper = {
        let (upstream, stop) = (upstream.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(upstream.sweep_every());
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = every.tick() => upstream.sweep(),
                }
            }
        })
    };
    let max_header_size = proxy.limits.max_header_size.as_u64() as usize;
    let context = Arc::new(server::Context {
        shared,
        upstream,
        idle: proxy.timeouts.idle.0,
        max_header_size,
        http2: server::Http2::new(max_header_size),
        stop: shutdown.clone(),
    });
    let connections = ConnectionLimit::new(index, proxy.limits.connections_per_worker);
    let tracker = TaskTracker::new();
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(error = %err, "cannot use a listening socket");
                continue;
            }
        };
        loops.spawn(accept_loop(
            listener,
            context.clone(),
            tracker.clone(),
            connections.clone(),
        ));
    }
    while loops.join_next().await.is_some() {}
    // The accept loops have ended; each connection closes once its request is answered.
    tracker.close();
    let drain = context.shared.table.load().settings.drain_timeout;
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!("drain timeout ran out with requests still in flight");
    }
    sweeper.abort();
}

async fn serve_admin<L: axum::serve::Listener>(
    listener: L,
    app: axum::Router,
    stop: CancellationToken,
) where
    L::Addr: std::fmt::Debug,
{
    let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
    if let Err(err) = served.await {
        tracing::error!(error = %err, "admin API stopped");
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn accept_loop(
    listener: TcpListener,
    context: Arc<server::Context>,
    tracker: TaskTracker,
    connections: ConnectionLimit,
) {
    loop {
        let permit = tokio::select! {
            _ = context.stop.cancelled() => return,
            permit = connections.acquire(&context.shared.metrics) => permit,
        };
        let (stream, peer) = tokio::select! {
            _ = context.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let context = context.clone();
        tracker.spawn(async move {
            server::serve(stream, peer, context).await;
            drop(permit);
        });
    }
}

/// `limits.connections_per_worker`: a worker at its cap stops accepting, so new connections wait
/// in the kernel's listen backlog (as HAProxy does at `maxconn`) instead of being reset.
#[derive(Clone)]
struct ConnectionLimit {
    worker: usize,
    cap: usize,
    permits: Arc<tokio::sync::Semaphore>,
    /// When the cap was last logged, so an overloaded worker logs once a minute, not per accept.
    logged: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// One client connection's place under the cap; counted in `nonstop_client_connections`.
struct ConnectionPermit {
    _permit: tokio::sync::OwnedSemaphorePermit,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl ConnectionLimit {
    fn new(worker: usize, cap: usize) -> ConnectionLimit {
        ConnectionLimit {
            worker,
            cap,
            permits: Arc::new(tokio::sync::Semaphore::new(cap)),
            logged: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    fn log_full(&self) {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return;
        }
        *logged = Some(std::time::Instant::now());
        tracing::warn!(
            worker = self.worker,
            open = self.cap,
            "worker {} holds limits.connections_per_worker = {} client connections; new ones wait in the listen backlog until one closes (raise the limit if this machine can hold more)",
            self.worker,
            self.cap
        );
    }

    async fn acquire(&self, metrics: &Metrics) -> ConnectionPermit {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics.connection_limit_reached.inc();
                self.log_full();
                let waited = self.permits.clone().acquire_owned().await;
                waited.expect("the semaphore is never closed")
            }
        };
        metrics.client_connections.inc();
        ConnectionPermit {
            _permit: permit,
            open: metrics.client_connections.clone(),
        }
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read admin_token_file {}", path.display()))?
        .trim()
        .to_string();
    if token.len() < 16 {
        bail!(
            "the admin token in {} is shorter than 16 characters; use a long random one (e.g. `openssl rand -hex 32`)",
            path.display()
        );
    }
    Ok(token)
}

fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another process already serves the admin API at {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot create the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::RequestIds;

    #[test]
    fn request_ids_read_prefix_dash_counter_in_hex() {
        let ids = RequestIds::new();
        for n in [1u64, 9, 10, 255, 4096, u64::MAX - 1] {
            ids.next.store(n, std::sync::atomic::Ordering::Relaxed);
            let id = ids.take(&http::HeaderMap::new());
            assert_eq!(id.to_str().unwrap(), format!("{:08x}-{n:x}", ids.prefix));
        }
        let mut sent = http::HeaderMap::new();
        sent.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(ids.take(&sent), "abc-123");
    }
}
