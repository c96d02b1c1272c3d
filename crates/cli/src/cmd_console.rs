//! `nonstop console`: the web console and JSON API over HTTPS, with accounts, roles and audit.
//! On a first run without users it prints a one-time secret for `/setup`, never a password.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use nonstop_console::{Console, ConsoleOptions};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: crate::args::ConfigFile,
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Accounts, audit log, the console's CA and join tokens (created 0700).
    #[arg(
        long,
        env = "NONSTOP_CONSOLE_STATE",
        default_value = "/var/lib/nonstop-console"
    )]
    state: PathBuf,
    /// A directory of artifacts the deploy form may pick by name (uploads work without it).
    #[arg(long, value_name = "DIR")]
    artifacts: Option<PathBuf>,
    /// A reverse proxy whose X-Forwarded-For is believed for audit and lockout (repeatable).
    #[arg(long = "trusted-proxy", value_name = "IP")]
    trusted_proxies: Vec<IpAddr>,
    /// Largest artifact upload in bytes.
    #[arg(long, default_value_t = ConsoleOptions::DEFAULT_UPLOAD_LIMIT)]
    upload_limit: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init(false);
    let config = std::path::absolute(&args.config.path)
        .with_context(|| format!("config {}", args.config.path.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let console = Console::bind(ConsoleOptions {
            config,
            listen: args.listen,
            state: args.state,
            artifacts: args.artifacts,
            trusted_proxies: args.trusted_proxies,
            upload_limit: args.upload_limit,
        })
        .await
        .map_err(|e| anyhow!(e))?;
        let url = format!("https://{}", console.local_addr());
        let mut out = std::io::stdout().lock();
        writeln!(out, "nonstop console on {url}")?;
        writeln!(out, "  CA sha256 (agents pin it): {}", console.ca_sha256())?;
        if let Some(secret) = console.bootstrap_secret() {
            writeln!(
                out,
                "  first run: open {url}/setup and enter this one-time secret: {secret}"
            )?;
            writeln!(out, "  (it works once; restart the console for a new one)")?;
        }
        out.flush()?;
        drop(out);
        console.serve(crate::signals::interrupted()).await;
        Ok(ExitCode::SUCCESS)
    })
}
