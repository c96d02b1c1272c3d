//! A real nginx master in the foreground with every path inside its own temp dir, its notices
//! (one per reload) in `error.log`, stopped with SIGTERM so its workers go too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::Proc;

pub struct Nginx {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
}

impl Nginx {
    /// The argv that runs this nginx (`-p`, `-e`, `-c` inside `dir`), as a driver config needs.
    pub fn argv(dir: &Path) -> Vec<String> {
        let d = dir.display();
        vec![
            crate::peer::require("nginx").display().to_string(),
            "-p".into(),
            format!("{d}/"),
            "-e".into(),
            format!("{d}/error.log"),
            "-c".into(),
            format!("{d}/nginx.conf"),
        ]
    }

    /// A whole nginx.conf for `dir`: 2 workers, pid file, notice log, temp paths, and
    /// `http_body` inside `http { }`.
    pub fn conf(dir: &Path, http_body: &str) -> String {
        let d = dir.display();
        format!(
            "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log notice;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             {http_body}\n}}\n"
        )
    }

    /// Writes `files` (name, text) into a new temp dir (`nginx.conf` among them, see
    /// [`Nginx::conf`]), starts nginx and waits for its pid file.
    pub async fn start(files: &[(&str, String)]) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, files).await
    }

    /// [`Nginx::start`] in a dir the caller made (to name it in the files first).
    pub async fn start_in(dir: tempfile::TempDir, files: &[(&str, String)]) -> Nginx {
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write an nginx file");
        }
        let argv = Self::argv(dir.path());
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (apt-get install nginx-light)");
        let nginx = Nginx {
            proc: Proc { child },
            dir,
        };
        let pid_file = nginx.path("nginx.pid");
        crate::wait_until("nginx writes its pid file", Duration::from_secs(20), || {
            let exists = pid_file.exists();
            async move { exists }
        })
        .await;
        nginx
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Reloads so far: the master's SIGHUP notices in its error log.
    pub fn reloads(&self) -> usize {
        std::fs::read_to_string(self.path("error.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("signal 1 (SIGHUP) received"))
            .count()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.path("error.log")).unwrap_or_default();
            let errors: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("[notice]"))
                .take(20)
                .collect();
            eprintln!("nginx error.log:\n{}", errors.join("\n"));
        }
        // SIGTERM lets the master stop its workers; Proc's SIGKILL would orphan them.
        let _ = crate::process::send_signal(self.proc.child.id(), "TERM");
        crate::poll_blocking(Duration::from_secs(5), || {
            matches!(self.proc.child.try_wait(), Ok(Some(_)))
        });
    }
}
