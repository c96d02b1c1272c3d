//! `nonstop deploy|rollback|status|history|logs`: the deploy engine's verbs for humans and CI.
//! Exit codes: 0 success, 1 error, 2 rolled back, 3 refused (locked, bad input, missing artifact).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use nonstop_config::service::Strategy;
use nonstop_engine::{DeployError, DeployRequest, Event, EventKind};
use nonstop_ports::{NodeName, Version};

pub use nonstop_drivers::open_engine as engine;
pub type Emit = Box<dyn Fn(&Event)>;

#[derive(clap::Args, Clone)]
pub struct Common {
    #[command(flatten)]
    pub config: crate::args::ConfigFile,
    /// Print machine-readable JSON lines instead of a progress display.
    #[arg(long)]
    pub json: bool,
    /// The console's state directory, for services whose nodes run on [hosts]: its fleet
    /// credentials reach their agents.
    #[arg(long, env = "NONSTOP_FLEET", value_name = "CONSOLE_STATE_DIR")]
    pub fleet: Option<PathBuf>,
}

impl Common {
    pub fn engine(
        &self,
        service: &str,
        emit: Box<dyn Fn(&Event)>,
    ) -> Result<nonstop_drivers::ServiceEngine, DeployError> {
        let fleet = match &self.fleet {
            Some(dir) => Some(nonstop_drivers::Fleet::open(dir).map_err(DeployError::Refused)?),
            None => None,
        };
        nonstop_drivers::open_fleet_engine(&self.config.path, service, emit, fleet.as_ref())
    }
}

#[derive(clap::Args)]
pub struct DeployArgs {
    pub service: String,
    /// The artifact: a jar, a war, a directory, a tarball, any file; copied into the release.
    pub artifact: PathBuf,
    /// Release version (default: the first 12 hex digits of the artifact's SHA-256).
    #[arg(long)]
    pub version: Option<String>,
    /// Override the service's strategy: blue-green, rolling or canary.
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Extra environment for this release (KEY=VALUE, repeatable); kept with the release.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Print the steps the deploy would take and change nothing.
    #[arg(long)]
    pub plan: bool,
    #[command(flatten)]
    pub remote: crate::cmd_remote::ConsoleArgs,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args)]
pub struct ServiceArgs {
    pub service: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    pub service: String,
    /// Roll back even past a database migration that cannot be undone (the previous release
    /// then runs on the migrated database).
    #[arg(long)]
    pub force_past_migration: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args)]
pub struct HistoryArgs {
    pub service: String,
    /// How many deploys to list, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Show the journal (every step) of this deploy.
    #[arg(long)]
    pub deploy: Option<i64>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args)]
pub struct LogsArgs {
    pub service: String,
    /// One node; default all.
    pub node: Option<String>,
    /// Keep printing as the logs grow, across deploys.
    #[arg(long, short)]
    pub follow: bool,
    /// Lines of history to show first.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub lines: usize,
    #[command(flatten)]
    pub config: crate::args::ConfigFile,
}

/// Renders engine events: JSON lines, a spinner on a terminal, or plain timestamped lines.
pub struct Renderer {
    bar: Option<indicatif::ProgressBar>,
}

impl Renderer {
    pub fn new(json: bool) -> (Renderer, Emit) {
        let started = Instant::now();
        if json {
            return (
                Renderer { bar: None },
                Box::new(|event: &Event| {
                    say(&serde_json::to_string(event).expect("plain data"));
                }),
            );
        }
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                    .expect("static template"),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            let shown = bar.clone();
            return (
                Renderer { bar: Some(bar) },
                Box::new(move |event: &Event| match event.kind {
                    EventKind::Progress => shown.set_message(event.message.clone()),
                    kind => {
                        shown.println(format!("{} {}", mark(kind), event.message));
                        shown.set_message(event.message.clone());
                    }
                }),
            );
        }
        (
            Renderer { bar: None },
            Box::new(move |event: &Event| {
                say(&format!(
                    "[{:>6.1}s] {} {}",
                    started.elapsed().as_secs_f64(),
                    mark(event.kind),
                    event.message
                ));
            }),
        )
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A line on stdout; a closed terminal or pipe must not abort a deploy halfway, so errors are dropped.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn mark(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Begin => "▶",
        EventKind::Step => "→",
        EventKind::Progress => "…",
        EventKind::Switched => "⇄",
        EventKind::RollingBack => "↩",
        EventKind::Warn => "!",
        EventKind::Done => "■",
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A closed terminal (SIGHUP) must not cut a deploy short: the handler just swallows it.
fn ignore_hangup() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>, DeployError> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| DeployError::Refused(format!("--env `{pair}` is not KEY=VALUE")))
        })
        .collect()
}

/// Prints the outcome and turns it into the documented exit code.
fn conclude<T: serde::Serialize>(
    json: bool,
    renderer: &Renderer,
    result: Result<T, DeployError>,
) -> ExitCode {
    renderer.finish();
    match result {
        Ok(report) => {
            let report = serde_json::to_value(&report).unwrap_or_default();
            // `--plan` reports nothing: it printed the plan, and nothing ran to succeed.
            if json && !report.is_null() {
                say(
                    &serde_json::json!({"result": "succeeded", "exit_code": 0, "report": report})
                        .to_string(),
                );
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            let result = match &err {
                DeployError::RolledBack(_) => "rolled-back",
                DeployError::Refused(_) => "refused",
                DeployError::Environment(_) => "stopped",
                DeployError::Failed(_) => "failed",
            };
            if json {
                say(&serde_json::json!({"result": result, "error": err.to_string(), "exit_code": err.exit_code()}).to_string());
            }
            let _ = writeln!(std::io::stderr(), "{result}: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let json = args.common.json;
    if args.remote.console.is_some() {
        return crate::cmd_remote::deploy(
            &args.remote,
            &args.service,
            &args.artifact,
            args.version.as_deref(),
            args.strategy.map(|s| s.as_str()),
            json,
        );
    }
    let (renderer, emit) = Renderer::new(json);
    let rt = runtime()?;
    let result = (|| {
        let env = parse_env(&args.env)?;
        let version = args.version.clone().map(Version);
        let mut engine = args.common.engine(&args.service, emit)?;
        if args.plan {
            let version = match &version {
                Some(v) => v.clone(),
                None => Version(
                    nonstop_engine::releases::checksum(&args.artifact)
                        .map_err(DeployError::Refused)?[..12]
                        .to_string(),
                ),
            };
            // The same plan a deploy runs, from the same observation; nothing is changed.
            let plan = rt.block_on(engine.plan(&version, args.strategy))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"plan": plan, "lines": plan.lines()})
                );
            } else {
                println!(
                    "plan: deploy {} {version} ({}); nothing will be changed",
                    args.service, plan.strategy
                );
                for line in plan.lines() {
                    println!("  {line}");
                }
            }
            return Ok(None);
        }
        let request = DeployRequest {
            artifact: args.artifact.clone(),
            version,
            strategy: args.strategy,
            env,
        };
        rt.block_on(async {
            let _hangup = ignore_hangup();
            let finished = tokio::select! {
                result = engine.deploy(request) => Some(result),
                // Ctrl-C or SIGTERM: the deploy stops at its next step and rolls back.
                () = crate::signals::interrupted() => None,
            };
            match finished {
                Some(result) => result,
                None => Err(engine.abandon("was interrupted by a signal").await),
            }
        })
        .map(Some)
    })();
    Ok(conclude(json, &renderer, result))
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let json = args.common.json;
    let (renderer, emit) = Renderer::new(json);
    let rt = runtime()?;
    let result = args
        .common
        .engine(&args.service, emit)
        .and_then(|mut engine| {
            rt.block_on(async {
                let _hangup = ignore_hangup();
                let finished = tokio::select! {
                    result = engine.rollback_with(args.force_past_migration) => Some(result),
                    // Ctrl-C or SIGTERM: the deploy stops at its next step and rolls back.
                () = crate::signals::interrupted() => None,
                };
                match finished {
                    Some(result) => result,
                    None => Err(engine.abandon("was interrupted by a signal").await),
                }
            })
        });
    Ok(conclude(json, &renderer, result))
}

pub fn status(args: ServiceArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let engine = match args.common.engine(&args.service, Box::new(|_| {})) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(e.exit_code()));
        }
    };
    let report = serde_json::to_value(rt.block_on(engine.status()))?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = &report;
    let serving: Vec<&str> = s["serving"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    let recorded = format!(
        "release {}, previous {}",
        s["current"].as_str().unwrap_or("none"),
        s["previous"].as_str().unwrap_or("none")
    );
    if serving.is_empty() {
        println!(
            "{}: NOTHING SERVES (no node the balancer would send requests to runs); {recorded}",
            args.service
        );
    } else {
        println!(
            "{}: serving {} ({recorded})",
            args.service,
            serving.join(" and ")
        );
    }
    if let Some(err) = s["balancer_error"].as_str() {
        println!("  balancer: {err}");
    }
    if let Some(line) = crate::cmd_maintenance::status_line(&s["maintenance"]) {
        println!("  {line}");
    }
    println!(
        "  {:<10} {:>5}  {:<14} {:>7}  {:<8} {:<14} {:>6} {:>9}  HEALTH",
        "NODE", "PORT", "VERSION", "PID", "PROCESS", "BALANCER", "WEIGHT", "IN-FLIGHT"
    );
    for node in s["nodes"].as_array().into_iter().flatten() {
        println!(
            "  {:<10} {:>5}  {:<14} {:>7}  {:<8} {:<14} {:>6} {:>9}  {}",
            node["node"].as_str().unwrap_or(""),
            node["port"],
            node["version"].as_str().unwrap_or("-"),
            node["pid"].as_i64().map_or("-".into(), |p| p.to_string()),
            node["process"].as_str().unwrap_or("-"),
            match (
                node["balancer"].as_str(),
                node["balancer_healthy"].as_bool()
            ) {
                (Some(state), Some(false)) => format!("{state}/down"),
                (Some(state), _) => state.to_string(),
                (None, _) => "-".to_string(),
            },
            node["weight"]
                .as_u64()
                .map_or("-".into(), |w| w.to_string()),
            node["in_flight"]
                .as_i64()
                .map_or("-".into(), |w| w.to_string()),
            node["health"].as_str().unwrap_or("-"),
        );
    }
    if let Some(unfinished) = s["unfinished"].as_str() {
        println!("  ! {unfinished}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let engine = match args.common.engine(&args.service, Box::new(|_| {})) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(e.exit_code()));
        }
    };
    if let Some(id) = args.deploy {
        let steps = engine.store.journal_of(id)?;
        if args.common.json {
            println!("{}", serde_json::to_string_pretty(&steps)?);
        } else {
            // One line per step: what it was, then what happened (its journaled result).
            for s in steps {
                let mark = match s.phase.as_deref() {
                    Some("begin") => "→",
                    Some("done") => "  ✓",
                    Some("failed") => "  ✗",
                    _ => "",
                };
                let index = s.index.map_or(String::new(), |i| format!("{:>2}.", i + 1));
                println!(
                    "{}  {index:<3} {:<11} {mark} {}",
                    nonstop_store::format_ms(s.at_ms),
                    s.step,
                    s.detail
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let deployments = engine.store.deployments(args.limit)?;
    if args.common.json {
        println!("{}", serde_json::to_string_pretty(&deployments)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>5}  {:<20}  {:<8} {:<22} {:<10} {:<11} {:>8}  {:<16} REASON",
        "#", "STARTED", "KIND", "VERSION", "STRATEGY", "OUTCOME", "TOOK", "BY"
    );
    for d in deployments {
        println!(
            "{:>5}  {:<20}  {:<8} {:<22} {:<10} {:<11} {:>8}  {:<16} {}",
            d.id,
            nonstop_store::format_ms(d.started_ms),
            d.kind,
            format!(
                "{} → {}",
                d.from_version.as_deref().unwrap_or("-"),
                d.version
            ),
            d.strategy,
            d.outcome.as_str(),
            d.duration()
                .map_or("-".into(), |t| format!("{:.1}s", t.as_secs_f64())),
            d.holder,
            // One line: a start error can quote a multi-line log.
            d.reason.unwrap_or_default().replace('\n', " | ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let engine = match engine(&args.config.path, &args.service, Box::new(|_| {})) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(e.exit_code()));
        }
    };
    let nodes: Vec<String> = match &args.node {
        Some(node) => {
            if engine.config.node(node).is_none() {
                eprintln!("{} has no node `{node}`", args.service);
                return Ok(ExitCode::from(3));
            }
            vec![node.clone()]
        }
        None => engine
            .config
            .nodes
            .iter()
            .map(|n| n.name.get_ref().clone())
            .collect(),
    };
    let prefix = nodes.len() > 1;
    let store = engine.store;
    // Per node: the file being shown and how far it was read.
    let mut open: BTreeMap<String, (PathBuf, u64)> = BTreeMap::new();
    let mut first = true;
    loop {
        for node in &nodes {
            let Some(record) = store.instance(&NodeName(node.clone()))? else {
                continue;
            };
            let path = record.instance.log.clone();
            let entry = open
                .entry(node.clone())
                .or_insert_with(|| (PathBuf::new(), 0));
            if entry.0 != path {
                let start = if first {
                    tail_offset(&path, args.lines)
                } else {
                    0
                };
                if !first || prefix {
                    println!("==> {node}: {} <==", path.display());
                }
                *entry = (path.clone(), start);
            }
            let Ok(mut file) = std::fs::File::open(&path) else {
                continue;
            };
            if file.seek(SeekFrom::Start(entry.1)).is_err() {
                continue;
            }
            let mut text = String::new();
            if let Ok(n) = file.read_to_string(&mut text) {
                entry.1 += n as u64;
            }
            for line in text.lines() {
                if prefix {
                    println!("{node} | {line}");
                } else {
                    println!("{line}");
                }
            }
        }
        first = false;
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Byte offset where the last `lines` lines of `path` begin.
fn tail_offset(path: &Path, lines: usize) -> u64 {
    let Ok(bytes) = std::fs::read(path) else {
        return 0;
    };
    let mut seen = 0;
    for (i, b) in bytes.iter().enumerate().rev() {
        if *b == b'\n' && i + 1 != bytes.len() {
            seen += 1;
            if seen == lines {
                return (i + 1) as u64;
            }
        }
    }
    0
}
