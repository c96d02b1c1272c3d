//! `nonstop config check FILE`: validates a configuration without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use nonstop_config::Config;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Parse and validate FILE; print what it defines, or where it is wrong and how to fix it.
    Check { file: PathBuf },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Check { file } => match Config::load(&file).and_then(|(config, source)| {
            nonstop_drivers::check(&config, &source)?;
            let canaries = nonstop_drivers::traffic_sources(&config, &source)?;
            Ok((config, canaries))
        }) {
            Ok((config, canaries)) => {
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
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                eprintln!("{err}");
                Ok(ExitCode::from(1))
            }
        },
    }
}
