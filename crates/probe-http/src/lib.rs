//! The HTTP health probe: one GET on an instance's own port, judged by status and optional body text.
//! One fresh connection per try, so a probe never rides on a connection the app has given up on.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use nonstop_ports::Probe;

#[derive(Debug, Clone)]
pub struct HttpProbe {
    pub path: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    pub timeout: Duration,
}

impl HttpProbe {
    async fn try_once(&self, host: &str, port: u16) -> Result<(), String> {
        let addr = format!("{host}:{port}");
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        tokio::spawn(connection);
        let request = Request::get(&self.path)
            .header("host", &addr)
            .header("user-agent", "nonstop-health")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET {}: {e}", self.path))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if status != self.expect_status {
            return Err(format!(
                "GET {} answered {status}, expected {}",
                self.path, self.expect_status
            ));
        }
        if let Some(expected) = &self.expect_body
            && !String::from_utf8_lossy(&body).contains(expected.as_str())
        {
            return Err(format!(
                "GET {} answered without `{expected}` in its body",
                self.path
            ));
        }
        Ok(())
    }
}

impl Probe for HttpProbe {
    async fn check(&self, host: &str, port: u16) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.try_once(host, port)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "GET {} timed out after {:?}",
                self.path, self.timeout
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve(answer: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    fn probe(body: Option<&str>) -> HttpProbe {
        HttpProbe {
            path: "/health".into(),
            expect_status: 200,
            expect_body: body.map(str::to_string),
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn judges_status_and_body() {
        let up = serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nUP").await;
        let down = serve("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nDOWN").await;
        assert_eq!(probe(Some("UP")).check("127.0.0.1", up).await, Ok(()));
        assert!(probe(Some("READY")).check("127.0.0.1", up).await.is_err());
        let err = probe(None).check("127.0.0.1", down).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
    }

    #[tokio::test]
    async fn refused_and_silent_ports_fail_in_time() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(probe(None).check("127.0.0.1", closed).await.is_err());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = listener.local_addr().unwrap().port();
        let mut quick = probe(None);
        quick.timeout = Duration::from_millis(200);
        let err = quick.check("127.0.0.1", silent).await.unwrap_err();
        assert!(err.contains("timed out"), "{err}");
    }
}
