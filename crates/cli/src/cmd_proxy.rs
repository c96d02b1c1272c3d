//! `nonstop proxy`: loads the config, sets up logging and runs the built-in load balancer.

use std::process::ExitCode;

use anyhow::Context;
use nonstop_config::{Config, LogFormat};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: crate::args::ConfigFile,
    /// Log as JSON lines instead of human-readable text (overrides `log_format`).
    #[arg(long)]
    json_logs: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, source) = Config::load(&args.config.path)?;
    let proxy = config.proxy.as_ref().with_context(|| {
        format!(
            "{}: no [proxy] section; add one with `listen = \"127.0.0.1:8080\"`",
            args.config.path.display()
        )
    })?;
    let json = args.json_logs || proxy.log_format == LogFormat::Json;
    crate::logging::init(json);
    // The data plane runs on its own worker threads (see `workers`); this runtime only carries
    // the admin API, health checks and signals.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("nonstop-control")
        .enable_all()
        .build()?
        .block_on(nonstop_proxy::run(config, source))?;
    Ok(ExitCode::SUCCESS)
}
