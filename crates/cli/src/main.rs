//! `nonstop`: one binary for the proxy, the deploy engine's CLI and the small operator verbs.
//! Each subcommand lives in its own module; this file only parses and dispatches.

mod args;
mod cmd_agent;
mod cmd_config;
mod cmd_console;
mod cmd_demo;
mod cmd_deploy;
mod cmd_import;
mod cmd_lb;
mod cmd_maintenance;
mod cmd_pause;
mod cmd_proxy;
mod cmd_remote;
mod cmd_status;
mod logging;
mod signals;

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
    /// Deploy ARTIFACT to SERVICE with its strategy; rolls back by itself on failure (exit 2).
    Deploy(cmd_deploy::DeployArgs),
    /// Put the previous release of SERVICE back (instant while blue-green keeps it warm).
    Rollback(cmd_deploy::RollbackArgs),
    /// Let SERVICE's paused deploy go on (a canary pause, `--pause-before-switch`, an
    /// inconclusive canary window).
    Promote(cmd_deploy::ServiceArgs),
    /// Roll SERVICE's paused deploy back.
    Abort(cmd_deploy::ServiceArgs),
    /// Nodes, versions, balancer state and health of SERVICE.
    Status(cmd_deploy::ServiceArgs),
    /// Past deploys of SERVICE with outcome and duration; `--deploy N` shows its steps.
    History(cmd_deploy::HistoryArgs),
    /// Show (and with -f follow) the logs of SERVICE's instances.
    Logs(cmd_deploy::LogsArgs),
    /// Turn SERVICE's maintenance mode on (503 + Retry-After for all but --allow) or off.
    Maintenance(cmd_maintenance::Args),
    /// Generate a service config from what a balancer already runs (mod_jk workers.properties).
    Import(cmd_import::Args),
    /// The per-host agent a console drives over mutual TLS; `agent join` enrols it.
    Agent(cmd_agent::Args),
    /// The web console and JSON API (HTTPS): services, deploys, logs, users, TOTP, roles, audit.
    Console(cmd_console::Args),
    /// Quickstart: proxy + sample app, a zero-downtime deploy under load, then a bad one rolled back.
    Demo(cmd_demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Proxy(args) => cmd_proxy::run(args),
        Command::Lb(args) => cmd_lb::run(args),
        Command::Config(args) => cmd_config::run(args),
        Command::Deploy(args) => cmd_deploy::deploy(args),
        Command::Rollback(args) => cmd_deploy::rollback(args),
        Command::Promote(args) => cmd_pause::promote(args),
        Command::Abort(args) => cmd_pause::abort(args),
        Command::Status(args) => cmd_status::status(args),
        Command::History(args) => cmd_deploy::history(args),
        Command::Logs(args) => cmd_deploy::logs(args),
        Command::Import(args) => cmd_import::run(args),
        Command::Maintenance(args) => cmd_maintenance::run(args),
        Command::Demo(args) => cmd_demo::run(args),
        Command::Agent(args) => cmd_agent::run(args),
        Command::Console(args) => cmd_console::run(args),
    };
    // Webhooks of a deploy that just ended get a bounded wait, never an unbounded one.
    for line in nonstop_notify::finish(nonstop_notify::FINISH_BOUND) {
        eprintln!("{line}");
    }
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
