//! Prometheus metrics of the data plane: per pool/backend requests, statuses, latency, in-flight.
//! Handles are created once per backend and cloned into it, so the hot path only touches atomics.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub pool: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    pool: String,
    backend: String,
    class: StatusClass,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirect,
    ClientError,
    ServerError,
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.label())
    }
}

impl StatusClass {
    pub const ALL: [StatusClass; 5] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirect,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    pub fn of(status: http::StatusCode) -> StatusClass {
        match status.as_u16() {
            0..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirect,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    pub fn label(self) -> &'static str {
        ["1xx", "2xx", "3xx", "4xx", "5xx"][self as usize]
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    pool: String,
    kind: ErrorKind,
}

/// Why the proxy answered a request itself instead of relaying a backend's answer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ErrorKind {
    NoBackend,
    Connect,
    Timeout,
    BadResponse,
    BodyTooLarge,
    Retry,
    /// The client's body was malformed or cut off (400): the client's fault, not the backend's.
    ClientBody,
    /// The client paused its body longer than `timeouts.request_body` (408).
    ClientTimeout,
    /// Turned away by maintenance mode (503): on purpose, not a fault.
    Maintenance,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    pool: String,
    backend: String,
    to: HealthTo,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum HealthTo {
    Up,
    Down,
}

/// All metric families, registered once per proxy process.
pub struct Metrics {
    registry: Registry,
    responses: Family<StatusLabels, Counter>,
    latency: Family<BackendLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<BackendLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    failures: Family<BackendLabels, Counter>,
    up: Family<BackendLabels, Gauge>,
    health_changes: Family<HealthLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    unrouted: Counter,
    pub client_connections: Gauge,
    pub connection_limit_reached: Counter,
}

/// The metric handles one backend updates on every request.
#[derive(Clone)]
pub struct BackendMetrics {
    pub responses: [Counter; 5],
    pub latency: Histogram,
    pub in_flight: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub failures: Counter,
    pub up: Gauge,
    pub went_up: Counter,
    pub went_down: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nonstop");
        let responses = Family::<StatusLabels, Counter>::default();
        let latency = Family::<BackendLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
        );
        let in_flight = Family::default();
        let failures = Family::default();
        let up = Family::default();
        let health_changes = Family::default();
        let errors = Family::default();
        let unrouted = Counter::default();
        let client_connections = Gauge::default();
        let connection_limit_reached = Counter::default();
        registry.register(
            "client_connections",
            "Client connections open, all workers",
            client_connections.clone(),
        );
        registry.register(
            "connection_limit_reached",
            "Times a worker reached limits.connections_per_worker and stopped accepting",
            connection_limit_reached.clone(),
        );
        registry.register(
            "responses",
            "Responses relayed from backends, by status class",
            responses.clone(),
        );
        registry.register(
            "response_header_seconds",
            "Time from sending a request to a backend until its response headers arrived",
            latency.clone(),
        );
        registry.register(
            "in_flight",
            "Requests being served by a backend",
            in_flight.clone(),
        );
        registry.register(
            "backend_failures",
            "Connect errors, timeouts and malformed responses per backend",
            failures.clone(),
        );
        registry.register("backend_up", "1 when active health checks pass", up.clone());
        registry.register(
            "health_changes",
            "Health transitions of backends",
            health_changes.clone(),
        );
        registry.register(
            "proxy_errors",
            "Requests the proxy answered itself, by pool and reason",
            errors.clone(),
        );
        registry.register(
            "unrouted_requests",
            "Requests that matched no route",
            unrouted.clone(),
        );
        Metrics {
            registry,
            responses,
            latency,
            in_flight,
            failures,
            up,
            health_changes,
            errors,
            unrouted,
            client_connections,
            connection_limit_reached,
        }
    }

    pub fn backend(&self, pool: &str, backend: &str) -> BackendMetrics {
        let labels = BackendLabels {
            pool: pool.to_string(),
            backend: backend.to_string(),
        };
        let status = |class| StatusLabels {
            pool: pool.to_string(),
            backend: backend.to_string(),
            class,
        };
        let health = |to| HealthLabels {
            pool: pool.to_string(),
            backend: backend.to_string(),
            to,
        };
        BackendMetrics {
            responses: StatusClass::ALL
                .map(|class| self.responses.get_or_create_owned(&status(class))),
            latency: self.latency.get_or_create_owned(&labels),
            in_flight: self.in_flight.get_or_create_owned(&labels),
            failures: self.failures.get_or_create_owned(&labels),
            up: self.up.get_or_create_owned(&labels),
            went_up: self
                .health_changes
                .get_or_create_owned(&health(HealthTo::Up)),
            went_down: self
                .health_changes
                .get_or_create_owned(&health(HealthTo::Down)),
        }
    }

    /// Forgets a removed backend's series so that scrapes don't grow without bound.
    pub fn forget_backend(&self, pool: &str, backend: &str) {
        let labels = BackendLabels {
            pool: pool.to_string(),
            backend: backend.to_string(),
        };
        for class in StatusClass::ALL {
            self.responses.remove(&StatusLabels {
                pool: pool.to_string(),
                backend: backend.to_string(),
                class,
            });
        }
        for to in [HealthTo::Up, HealthTo::Down] {
            self.health_changes.remove(&HealthLabels {
                pool: pool.to_string(),
                backend: backend.to_string(),
                to,
            });
        }
        self.latency.remove(&labels);
        self.in_flight.remove(&labels);
        self.failures.remove(&labels);
        self.up.remove(&labels);
    }

    pub fn error(&self, pool: &str, kind: ErrorKind) {
        self.errors
            .get_or_create(&ErrorLabels {
                pool: pool.to_string(),
                kind,
            })
            .inc();
    }

    pub fn unrouted(&self) {
        self.unrouted.inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
