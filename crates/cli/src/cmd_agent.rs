//! `nonstop agent run|join`: the per-host daemon, and its one-time enrolment with a console.
//! The agent takes typed operations from the console only, over mutual TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: AgentCommand,
}

#[derive(clap::Subcommand)]
enum AgentCommand {
    /// Serve the console: releases, instances, logs and the balancer of this host.
    Run(RunArgs),
    /// Enrol this host with a console using a one-time token (prints nothing secret).
    Join(JoinArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    config: crate::args::ConfigFile,
    /// Credentials, releases, logs and the record of what runs here.
    #[arg(long, default_value = "/var/lib/nonstop-agent")]
    state: PathBuf,
    /// Address to listen on; default this host's `agent` in [hosts].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Largest artifact accepted, in bytes.
    #[arg(long, default_value_t = nonstop_agent::DEFAULT_MAX_ARTIFACT)]
    max_artifact: u64,
}

#[derive(clap::Args)]
struct JoinArgs {
    /// The console, `https://HOST:PORT`.
    url: String,
    /// The one-time join token the console issued for this host.
    #[arg(long, env = "NONSTOP_JOIN_TOKEN")]
    token: String,
    /// The console CA's SHA-256, shown with the token: the console is trusted only if it matches.
    #[arg(long)]
    ca_sha256: String,
    /// This host's name, as in [hosts.NAME] and the token.
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "/var/lib/nonstop-agent")]
    state: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::logging::init(false);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match args.command {
            AgentCommand::Run(run) => {
                let agent = nonstop_agent::Agent::bind(&nonstop_agent::AgentOptions {
                    config: run.config.path,
                    state: run.state,
                    listen: run.listen,
                    max_artifact: run.max_artifact,
                })
                .await
                .map_err(|e| anyhow!(e))?;
                println!("nonstop agent {} listening on {}", agent.name, agent.addr);
                agent.serve().await;
                Ok(ExitCode::SUCCESS)
            }
            AgentCommand::Join(join) => {
                nonstop_agent::join(
                    &join.url,
                    &join.token,
                    &join.ca_sha256,
                    &join.name,
                    &join.state,
                )
                .await
                .map_err(|e| anyhow!(e))?;
                println!(
                    "joined as {}; credentials in {}",
                    join.name,
                    join.state.join("identity").display()
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
