//! A real HAProxy in master-worker mode in the foreground with its own temp dir: one frontend on
//! 127.0.0.1, backend `shop` with one server per node, an admin stats socket and a state file.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

pub struct Haproxy {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Haproxy {
    /// Backend `shop` balancing `balance roundrobin` over `nodes` (name, port), checked on
    /// `GET /health`; each server starts `disabled` until nonstop has started something on it.
    pub async fn start(nodes: &[(&str, u16)]) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        let port = crate::free_port();
        let mut cfg = format!(
            "global\n  maxconn 1024\n  stats socket {d}/admin.sock mode 600 level admin\n\
               server-state-file {d}/servers.state\n\
             defaults\n  mode http\n  load-server-state-from-file global\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend shop\n\
             backend shop\n  balance roundrobin\n  option httpchk GET /health\n  http-check expect status 200\n"
        );
        for (name, node_port) in nodes {
            cfg.push_str(&format!(
                "  server {name} 127.0.0.1:{node_port} check inter 500ms disabled\n"
            ));
        }
        std::fs::write(dir.path().join("haproxy.cfg"), &cfg).expect("write haproxy.cfg");
        let child = crate::peer::command("haproxy")
            .args(["-W", "-db", "-f"])
            .arg(dir.path().join("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let haproxy = Haproxy { child, dir, port };
        let socket = haproxy.socket();
        crate::wait_until(
            "haproxy opens its stats socket",
            Duration::from_secs(20),
            || {
                let socket = socket.clone();
                async move { std::os::unix::net::UnixStream::connect(&socket).is_ok() }
            },
        )
        .await;
        haproxy
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("servers.state")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The driver's settings for this HAProxy, as a TOML inline table.
    pub fn balancer_toml(&self) -> String {
        format!(
            "{{ kind = \"haproxy\", socket = \"{}\", backend = \"shop\", state_file = \"{}\" }}",
            self.socket().display(),
            self.state_file().display()
        )
    }

    /// The pid of the worker answering the Runtime API.
    pub fn worker_pid(&self) -> Option<String> {
        use std::io::{Read, Write};
        let mut socket = std::os::unix::net::UnixStream::connect(self.socket()).ok()?;
        socket.write_all(b"show info\n").ok()?;
        let mut answer = String::new();
        socket.read_to_string(&mut answer).ok()?;
        answer
            .lines()
            .find_map(|l| l.strip_prefix("Pid: "))
            .map(str::to_string)
    }

    /// Reloads HAProxy (SIGUSR2 to the master) and waits for the new worker.
    pub async fn reload(&self) {
        let before = self.worker_pid();
        crate::process::send_signal(self.child.id(), "USR2").expect("signal haproxy");
        crate::wait_until(
            "a new HAProxy worker answers",
            Duration::from_secs(20),
            || {
                let now = self.worker_pid();
                let before = before.clone();
                async move { now.is_some() && now != before }
            },
        )
        .await;
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = crate::process::send_signal(self.child.id(), "TERM");
        crate::poll_blocking(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
