//! `nonstop`: one binary for the proxy, the deploy engine's CLI and the small operator verbs.
//! Each subcommand lives in its own module; this file only parses and dispatches.

mod cmd_config;
mod cmd_lb;
mod cmd_proxy;
mod logging;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nonstop",
    version,
    about = "Zero-downtime deploys for load-balanced web services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the built-in HTTP load balancer.
    Proxy(cmd_proxy::Args),
    /// Talk to a running proxy's admin API: list pools, drain/enable/disable backends, reload.
    Lb(cmd_lb::Args),
    /// Work with configuration files.
    Config(cmd_config::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proxy(args) => cmd_proxy::run(args),
        Command::Lb(args) => cmd_lb::run(args),
        Command::Config(args) => cmd_config::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
