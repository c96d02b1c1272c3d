//! Runs the real `nonstop-hello` binary on `--port 0` and talks HTTP/1.1 to it over a plain
//! socket: the endpoints tests rely on, the start-up failure mode and graceful SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running instance, killed (by the pid this test started) when dropped.
struct Hello {
    child: Child,
    port: u16,
}

impl Hello {
    fn start(extra: &[&str]) -> Hello {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nonstop-hello"))
            .args(["--port", "0", "--version", "7", "--node", "n1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nonstop-hello");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "listening on 127.0.0.1:PORT version=7 node=n1"
        let mut words = line.split_whitespace().skip(2);
        let addr = words.next().expect("listening on ADDR");
        assert_eq!(words.collect::<Vec<_>>(), ["version=7", "node=n1"]);
        let port = addr.rsplit_once(':').unwrap().1.parse().unwrap();
        Hello { child, port }
    }

    fn request(&self, method: &str, path: &str, headers: &str) -> (u16, String, String) {
        request(self.port, method, path, headers)
    }

    fn get(&self, path: &str) -> (u16, String, String) {
        request(self.port, "GET", path, "")
    }

    /// Status and body only.
    fn get_short(&self, path: &str) -> (u16, String) {
        let (status, _, body) = self.get(path);
        (status, body)
    }
}

/// Sends one request on a fresh connection; returns (status, lower-cased head, body).
fn request(port: u16, method: &str, path: &str, headers: &str) -> (u16, String, String) {
    read_reply(send(port, method, path, headers))
}

fn send(port: u16, method: &str, path: &str, headers: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 0\r\n{headers}\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

fn read_reply(mut stream: TcpStream) -> (u16, String, String) {
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a full response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

impl Drop for Hello {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < until, "no exit within {deadline:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn root_version_health_and_status() {
    let hello = Hello::start(&[]);
    let (status, head, body) = hello.get("/");
    assert_eq!((status, body.as_str()), (200, "hello v7 from n1\n"));
    assert!(
        head.contains("x-version: 7") && head.contains("x-node: n1"),
        "{head}"
    );
    assert_eq!(hello.get("/version").2, "7");
    assert_eq!(hello.get_short("/health"), (200, "UP".into()));
    assert_eq!(hello.request("POST", "/admin/fail-health", "").0, 200);
    assert_eq!(hello.get("/health").0, 503);
    assert_eq!(hello.request("POST", "/admin/heal", "").0, 200);
    assert_eq!(hello.get("/health").0, 200);
    assert_eq!(hello.get("/status/418").0, 418);
    assert_eq!(hello.get("/nope").0, 404);
    let (_, _, headers) = hello.request("GET", "/headers", "X-Forwarded-For: 10.0.0.1\r\n");
    let headers: serde_json::Value = serde_json::from_str(&headers).unwrap();
    assert_eq!(headers["x-forwarded-for"], "10.0.0.1");
}

#[test]
fn error_rate_fails_that_share_of_root_requests_and_not_health() {
    let hello = Hello::start(&["--error-rate", "0.2"]);
    let statuses: Vec<u16> = (0..50).map(|_| hello.get("/").0).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        10,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 500),
        "{statuses:?}"
    );
    assert_eq!(statuses[4], 500, "every 5th: {statuses:?}");
    assert!((0..10).all(|_| hello.get("/health").0 == 200));
    let bad = Command::new(env!("CARGO_BIN_EXE_nonstop-hello"))
        .args(["--error-rate", "1.5"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("between 0.0 and 1.0"));
}

#[test]
fn sessions_by_cookie_and_path_parameter() {
    let hello = Hello::start(&["--route", "r1", "--fail-health"]);
    assert_eq!(hello.get_short("/health"), (503, "DOWN".into()));
    let (_, head, body) = hello.get("/session");
    assert_eq!(body, "count=1 node=n1 version=7\n");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: jsessionid="))
        .expect("a new session sets its cookie");
    let id = cookie.split(';').next().unwrap().to_ascii_uppercase();
    assert!(id.ends_with(".R1") && id.len() == 32 + 3, "{id}");
    let id = format!("{}.r1", &id[..32]);
    let (_, head, body) = hello.request(
        "GET",
        "/session",
        &format!("Cookie: a=b; JSESSIONID={id}\r\n"),
    );
    assert_eq!(body, "count=2 node=n1 version=7\n");
    assert!(!head.contains("set-cookie"), "{head}");
    assert!(
        hello
            .get(&format!("/session;jsessionid={id}"))
            .2
            .starts_with("count=3 ")
    );
    // An id this process does not know starts a new session.
    assert!(
        hello
            .request("GET", "/session", "Cookie: JSESSIONID=00.r1\r\n")
            .2
            .starts_with("count=1 ")
    );
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let mut hello = Hello::start(&[]);
    let slow = send(hello.port, "GET", "/slow?ms=600", "");
    std::thread::sleep(Duration::from_millis(200)); // let the request reach the handler
    let pid = hello.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (status, _, body) = read_reply(slow);
    assert_eq!((status, body.as_str()), (200, "slept 600ms\n"));
    assert_eq!(
        wait_exit(&mut hello.child, Duration::from_secs(5)).code(),
        Some(0)
    );
}

#[test]
fn exit_on_start_exits_2() {
    let status = Command::new(env!("CARGO_BIN_EXE_nonstop-hello"))
        .args(["--port", "0", "--exit-on-start"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

#[tokio::test]
async fn websocket_echoes_text_with_node_prefix_and_binary_as_is() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let hello = Hello::start(&[]);
    let url = format!("ws://127.0.0.1:{}/ws", hello.port);
    let (mut socket, reply) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(reply.headers()["x-node"], "n1");
    socket.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("n1: hi")
    );
    socket.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::binary(vec![1, 2, 3])
    );
    socket.close(None).await.unwrap();
}
