//! Arguments that several subcommands share, defined once so they read and behave the same.

use std::path::PathBuf;

/// `--config FILE` (or `NONSTOP_CONFIG`), the one nonstop configuration file.
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigFile {
    /// The nonstop configuration file ([proxy], [pools.*], [services.*]).
    #[arg(
        id = "config",
        long = "config",
        short = 'c',
        value_name = "FILE",
        env = "NONSTOP_CONFIG",
        default_value = "/etc/nonstop/nonstop.toml"
    )]
    pub path: PathBuf,
}
