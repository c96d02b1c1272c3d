//! `nonstop config check FILE`: validates a configuration without starting anything, then looks
//! at what it names on this host (sockets, binaries, status workers, bases) without changing it.

use std::path::PathBuf;
use std::process::ExitCode;

use nonstop_config::Config;
use nonstop_drivers::Outcome;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Parse and validate FILE; print what it defines, or where it is wrong and how to fix it;
    /// then check that each service's balancer and runtime exist and answer here.
    Check {
        file: PathBuf,
        /// Only validate the file; do not look at the host.
        #[arg(long)]
        offline: bool,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Check { file, offline } => {
            match Config::load(&file).and_then(|(config, source)| {
                nonstop_drivers::check(&config, &source)?;
                let canaries = nonstop_drivers::traffic_sources(&config, &source)?;
                Ok((config, source, canaries))
            }) {
                Ok((config, source, canaries)) => {
                    let backends: usize = config.pools.values().map(|p| p.backends.len()).sum();
                    let listeners = config.proxy.as_ref().map_or(0, |p| p.listen.len());
                    println!(
                        "{}: ok ({listeners} listener(s), {} pool(s), {backends} backend(s), {} service(s))",
                        file.display(),
                        config.pools.len(),
                        config.services.len()
                    );
                    for line in canaries {
                        println!("{line}");
                    }
                    if offline {
                        return Ok(ExitCode::SUCCESS);
                    }
                    let findings = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(nonstop_drivers::check_environment(&config, &source));
                    let mut failed = false;
                    for finding in &findings {
                        failed |= matches!(finding.outcome, Outcome::Failed(_));
                        println!("{finding}");
                    }
                    // The file is valid; what it names is missing or does not answer here.
                    Ok(if failed {
                        ExitCode::from(3)
                    } else {
                        ExitCode::SUCCESS
                    })
                }
                Err(err) => {
                    eprintln!("{err}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
