//! A real PostgreSQL server from Debian's package for one test: its own data directory,
//! 127.0.0.1 on a free port, trust auth for `postgres`; stopped (by its pid) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::Proc;

pub struct Postgres {
    pub port: u16,
    _server: Proc,
    _dir: tempfile::TempDir,
}

/// The newest `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> Result<PathBuf, String> {
    let root = crate::peer::require("/usr/lib/postgresql");
    let mut versions: Vec<u32> = std::fs::read_dir(&root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let newest = versions
        .last()
        .ok_or("no /usr/lib/postgresql/N: install Debian package postgresql")?;
    Ok(root.join(newest.to_string()).join("bin"))
}

fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

/// `program args…`, as the `postgres` user when this process is root (the server refuses root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = crate::peer::command("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl Postgres {
    pub async fn start() -> Result<Postgres, String> {
        let bin = bin_dir()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        if is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&data)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err("chown postgres the data dir failed".into());
            }
        }
        let out = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let port = crate::free_port();
        let server = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        let postgres = Postgres {
            port,
            _server: Proc { child: server },
            _dir: dir,
        };
        crate::try_wait_until("PostgreSQL answers", Duration::from_secs(30), || async {
            postgres.psql("SELECT 1").is_ok()
        })
        .await?;
        Ok(postgres)
    }

    /// The argv that runs `sql` against this server with `psql` (stopping on the first error).
    pub fn psql_argv(&self, sql: &str) -> Vec<String> {
        [
            "psql",
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Runs `sql`; `Ok` is what psql printed.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let argv = self.psql_argv(sql);
        let out = crate::peer::command(&argv[0])
            .args(&argv[1..])
            .output()
            .map_err(|e| format!("psql: {e} (install Debian package postgresql-client)"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}
