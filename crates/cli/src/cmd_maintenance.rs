//! `nonstop maintenance on|off SERVICE`: the service's balancer answers 503 with `Retry-After`
//! and a page (HTML or JSON by `Accept`) to everyone but the allowed networks, or stops doing so.

use std::process::ExitCode;

use nonstop_ports::{Balancer, Maintenance};

use crate::cmd_deploy::Common;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Turn maintenance mode on: 503 + Retry-After for every client outside --allow.
    On(OnArgs),
    /// Turn maintenance mode off: requests reach the backends again.
    Off(OffArgs),
}

#[derive(clap::Args)]
struct OnArgs {
    service: String,
    /// The text of the maintenance page.
    #[arg(long, default_value = Maintenance::DEFAULT_MESSAGE)]
    message: String,
    /// A client address or network that still reaches the backends (repeatable), e.g. 10.0.0.0/8.
    #[arg(long, value_name = "CIDR", value_parser = nonstop_ports::edge::parse_allow)]
    allow: Vec<ipnet::IpNet>,
    /// Seconds clients are told to wait (`Retry-After`).
    #[arg(long, default_value_t = Maintenance::DEFAULT_RETRY_AFTER_S, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    retry_after: u32,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct OffArgs {
    service: String,
    #[command(flatten)]
    common: Common,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (service, common, maintenance) = match args.command {
        Command::On(on) => {
            let maintenance = Maintenance {
                message: on.message,
                allow: on.allow,
                retry_after_s: on.retry_after,
            };
            (on.service, on.common, Some(maintenance))
        }
        Command::Off(off) => (off.service, off.common, None),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let engine = match common.engine(&service, Box::new(|_| {})) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(e.exit_code()));
        }
    };
    match runtime.block_on(engine.set_maintenance(maintenance.as_ref())) {
        Ok(said) => {
            if common.json {
                let state = runtime
                    .block_on(engine.balancer.maintenance())
                    .ok()
                    .flatten();
                println!(
                    "{}",
                    serde_json::json!({ "service": service, "maintenance": state, "result": said })
                );
            } else {
                println!("{said}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

/// The line `nonstop status` prints while maintenance mode is on.
pub fn status_line(maintenance: &serde_json::Value) -> Option<String> {
    let allow: Vec<&str> = maintenance["allow"]
        .as_array()?
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    Some(format!(
        "MAINTENANCE ON: 503 (Retry-After: {}s) for {}: \"{}\"",
        maintenance["retry_after_s"],
        if allow.is_empty() {
            "everyone".to_string()
        } else {
            format!("all but {}", allow.join(", "))
        },
        maintenance["message"].as_str().unwrap_or("")
    ))
}
