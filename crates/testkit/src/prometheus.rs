//! A real Prometheus server of its own: temp config and data dir, an ephemeral port on
//! 127.0.0.1, every target scraped each second, stopped with SIGTERM on drop.

use std::process::{Command, Stdio};
use std::time::Duration;

use nonstop_http_client::{Url, get};

use crate::process::Proc;

pub struct Prometheus {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) as job `nonstop`
    /// every second, and waits until it is ready.
    pub async fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        // scrape_timeout must not exceed the interval (Prometheus refuses the config otherwise).
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: nonstop\n    metrics_path: /metrics\n    static_configs:\n      - targets: [{}]\n",
            quoted.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write prometheus.yml");
        let port = crate::free_port();
        let child = Command::new(crate::peer::require("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("prometheus.log"))
                    .expect("create prometheus.log"),
            )
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            proc: Proc { child },
            dir,
            port,
        };
        let ready = Url::parse(&format!("{}/-/ready", prometheus.url())).expect("a URL");
        crate::wait_until("Prometheus is ready", Duration::from_secs(30), || {
            let ready = ready.clone();
            async move {
                get(&ready, vec![], Duration::from_secs(1))
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await;
        prometheus
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The JSON answer of an instant `query` (for waits and test output).
    pub async fn query(&self, query: &str) -> String {
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .finish();
        let url = Url::parse(&format!("{}/api/v1/query", self.url())).expect("a URL");
        let request = nonstop_http_client::Request {
            method: "POST",
            headers: vec![(
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            )],
            body: body.as_bytes(),
        };
        match nonstop_http_client::send(&url, &request, Duration::from_secs(5)).await {
            Ok(r) => r.body,
            Err(e) => format!("error: {e}"),
        }
    }

    /// Waits until an instant `query` returns at least one series.
    pub async fn wait_for_series(&self, query: &str, timeout: Duration) {
        crate::wait_until(
            &format!("Prometheus has a series for {query}"),
            timeout,
            || async {
                let answer = self.query(query).await;
                answer.contains("\"status\":\"success\"") && !answer.contains("\"result\":[]")
            },
        )
        .await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("prometheus.log:\n{}", self.log());
        }
        // SIGTERM flushes and closes the TSDB; SIGKILL after 5 s (Proc's drop) if it hangs.
        let _ = crate::process::send_signal(self.proc.child.id(), "TERM");
        crate::poll_blocking(Duration::from_secs(5), || {
            matches!(self.proc.child.try_wait(), Ok(Some(_)))
        });
    }
}
