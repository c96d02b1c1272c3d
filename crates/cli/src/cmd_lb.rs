//! `nonstop lb`: operator verbs against a running proxy's admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use nonstop_admin_client::{AdminClient, BackendSpec, BackendState, Endpoint, Pool};

#[derive(clap::Args)]
pub struct Args {
    /// Admin endpoint: unix:/path/admin.sock or tcp:host:port. Defaults to the `admin` of --config.
    #[arg(long, env = "NONSTOP_ADMIN")]
    admin: Option<String>,
    #[command(flatten)]
    config: crate::args::ConfigFile,
    /// File holding the bearer token for a TCP admin endpoint.
    #[arg(long, env = "NONSTOP_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List pools and their backends with state, health and in-flight requests.
    Pools,
    /// Only sticky-session requests and in-flight ones reach POOL/BACKEND from now on.
    Drain { target: Target },
    /// POOL/BACKEND takes traffic again.
    Enable { target: Target },
    /// POOL/BACKEND gets no request at all.
    Disable { target: Target },
    /// Set the weight of POOL/BACKEND (1..=10000).
    Weight { target: Target, weight: u32 },
    /// Add a backend to a pool.
    Add {
        pool: String,
        name: String,
        addr: String,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        route: Option<String>,
    },
    /// Remove POOL/BACKEND; its in-flight requests finish.
    Remove { target: Target },
    /// Re-read the proxy's configuration file (an invalid file changes nothing).
    Reload,
}

/// `pool/backend`, as the operator writes it.
#[derive(Clone, Debug)]
struct Target {
    pool: String,
    backend: String,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((pool, backend)) if !pool.is_empty() && !backend.is_empty() => Ok(Target {
                pool: pool.into(),
                backend: backend.into(),
            }),
            _ => Err(format!("`{s}` is not POOL/BACKEND, e.g. shop/blue")),
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = client(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(execute(&client, args.command, args.json))?;
    Ok(ExitCode::SUCCESS)
}

fn client(args: &Args) -> anyhow::Result<AdminClient> {
    let from_file = || admin_settings(&args.config.path);
    let endpoint: Endpoint = match &args.admin {
        Some(text) => text.parse().map_err(anyhow::Error::msg)?,
        None => from_file()?
            .0
            .unwrap_or_else(|| nonstop_config::AdminEndpoint::default().to_string())
            .parse()
            .map_err(anyhow::Error::msg)?,
    };
    let token_file = match &args.token_file {
        Some(path) => Some(path.clone()),
        None if matches!(endpoint, Endpoint::Tcp(_)) => from_file()?.1,
        None => None,
    };
    let token = match token_file {
        Some(path) if matches!(endpoint, Endpoint::Tcp(_)) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the admin token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        _ => None,
    };
    Ok(AdminClient::new(endpoint, token))
}

/// `admin` and `admin_token_file` from the `[proxy]` section. Read without full validation, so
/// that `nonstop lb reload` can still reach a proxy whose file was just broken by an edit.
fn admin_settings(path: &std::path::Path) -> anyhow::Result<(Option<String>, Option<PathBuf>)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok((None, None));
    };
    let table: toml::Table = text.parse().with_context(|| {
        format!(
            "cannot find the admin endpoint: {} is not valid TOML; pass --admin",
            path.display()
        )
    })?;
    let proxy = table.get("proxy").and_then(|p| p.as_table());
    let get = |key: &str| {
        proxy
            .and_then(|p| p.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    Ok((get("admin"), get("admin_token_file").map(PathBuf::from)))
}

async fn execute(client: &AdminClient, command: Command, json: bool) -> anyhow::Result<()> {
    let state = |target: &Target, state| {
        let (pool, backend) = (target.pool.clone(), target.backend.clone());
        async move { client.set_state(&pool, &backend, state).await }
    };
    match command {
        Command::Pools => {
            let pools = client.pools().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pools)?);
            } else {
                print_pools(&pools);
            }
        }
        Command::Drain { target } => report(json, &state(&target, BackendState::Draining).await?)?,
        Command::Enable { target } => report(json, &state(&target, BackendState::Active).await?)?,
        Command::Disable { target } => {
            report(json, &state(&target, BackendState::Disabled).await?)?
        }
        Command::Weight { target, weight } => report(
            json,
            &client
                .set_weight(&target.pool, &target.backend, weight)
                .await?,
        )?,
        Command::Add {
            pool,
            name,
            addr,
            weight,
            route,
        } => {
            let spec = BackendSpec {
                name,
                addr,
                weight,
                route,
                state: None,
            };
            print_pools(&[client.add(&pool, &spec).await?]);
        }
        Command::Remove { target } => {
            print_pools(&[client.remove(&target.pool, &target.backend).await?])
        }
        Command::Reload => {
            let report = client.reload().await?;
            println!("reloaded {}", report.config.display());
            for line in &report.summary {
                println!("  {line}");
            }
        }
    }
    Ok(())
}

fn report(json: bool, backend: &nonstop_admin_client::Backend) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(backend)?);
    } else {
        println!(
            "{}: state={:?} weight={} health={} in_flight={}",
            backend.name, backend.state, backend.weight, backend.health, backend.in_flight
        );
    }
    Ok(())
}

fn print_pools(pools: &[Pool]) {
    for pool in pools {
        println!("pool {} ({})", pool.name, pool.balance);
        println!(
            "  {:<16} {:<22} {:>6} {:<9} {:<6} {:>9} {:>10} {:>8}",
            "BACKEND", "ADDR", "WEIGHT", "STATE", "HEALTH", "IN-FLIGHT", "REQUESTS", "FAILURES"
        );
        for b in &pool.backends {
            let health = if b.ejected {
                "ejected"
            } else {
                b.health.as_str()
            };
            let state = format!("{:?}", b.state).to_lowercase();
            println!(
                "  {:<16} {:<22} {:>6} {:<9} {:<6} {:>9} {:>10} {:>8}",
                b.name, b.addr, b.weight, state, health, b.in_flight, b.requests, b.failures
            );
        }
    }
}
