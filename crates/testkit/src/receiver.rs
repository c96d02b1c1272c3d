//! A webhook receiver on 127.0.0.1 (http, or https with a test CA): a hyper server that records
//! every request and answers with a chosen status after a chosen delay, until it is dropped.

use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A CA of its own and a certificate for `127.0.0.1` and `localhost` signed by it.
pub struct TestTls {
    /// What a client must trust (a webhook's `ca_file`).
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestTls {
    pub fn new() -> TestTls {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        TestTls {
            ca_pem,
            server: Arc::new(server),
        }
    }
}

impl Default for TestTls {
    fn default() -> Self {
        TestTls::new()
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    pub port: u16,
    scheme: &'static str,
    seen: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Answers `status` to every request, `delay` after it was read.
    pub async fn start(status: u16, delay: Duration) -> Receiver {
        Receiver::serve(status, delay, None).await
    }

    /// [`Receiver::start`] over https with `tls`'s certificate.
    pub async fn start_tls(status: u16, delay: Duration, tls: &TestTls) -> Receiver {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
        Receiver::serve(status, delay, Some(acceptor)).await
    }

    async fn serve(
        status: u16,
        delay: Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (record, tls) = (record.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => answer(stream, record, status, delay).await,
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                answer(stream, record, status, delay).await;
                            }
                        }
                    }
                });
            }
        });
        Receiver {
            port,
            scheme,
            seen,
            task,
        }
    }

    /// `http(s)://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves one connection: records each request, answers `status` after `delay`.
async fn answer<IO>(io: IO, record: Arc<Mutex<Vec<Received>>>, status: u16, delay: Duration)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let path = req.uri().to_string();
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let body = req.into_body().collect().await?.to_bytes().to_vec();
            record.lock().unwrap().push(Received {
                path,
                headers,
                body,
                at: Instant::now(),
            });
            tokio::time::sleep(delay).await;
            let mut answer = Response::new(Full::new(Bytes::from_static(b"ok")));
            *answer.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            Ok::<_, hyper::Error>(answer)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
