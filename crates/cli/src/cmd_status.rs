//! `nonstop status SERVICE`: what runs and serves now, a paused deploy and a running canary
//! with its numbers, as the engine sees them.

use std::process::ExitCode;

use crate::cmd_deploy::{ServiceArgs, runtime};

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
    print_canary(&s["canary"]);
    if let Some(p) = s["paused"].as_object() {
        println!(
            "  ⏸ paused at step {} of {} ({}) since {}; aborts on its own at {}{}",
            p["step"],
            p["steps"],
            p["why"].as_str().unwrap_or(""),
            nonstop_store::format_ms(p["since_ms"].as_i64().unwrap_or(0)),
            nonstop_store::format_ms(p["until_ms"].as_i64().unwrap_or(0)),
            if p["holder_alive"].as_bool() == Some(false) {
                " (its process is gone: promote resumes it in yours)"
            } else {
                ""
            }
        );
        println!(
            "    decide: `nonstop promote {0}` or `nonstop abort {0}` here, or a deployer of {0} in the console",
            args.service
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The running canary's steps, each with the canary's and the stable release's numbers.
fn print_canary(canary: &serde_json::Value) {
    let Some(steps) = canary["steps"].as_array() else {
        return;
    };
    println!("  canary of {}:", canary["version"].as_str().unwrap_or("?"));
    for step in steps {
        let numbers = |n: &serde_json::Value| {
            if n.is_null() {
                return "-".to_string();
            }
            format!(
                "{} req, {:.2}% errors, {}",
                n["requests"],
                n["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
                n["mean_latency_ms"]
                    .as_f64()
                    .map_or("-".into(), |l| format!("{l:.1}ms"))
            )
        };
        let what = match step["share"].as_u64() {
            Some(share) => format!("{share}%"),
            None => "pause".into(),
        };
        println!(
            "    {:>2}. {:<6} {:<8} canary {} | stable {}",
            step["number"],
            what,
            step["state"].as_str().unwrap_or(""),
            numbers(&step["canary"]),
            numbers(&step["stable"])
        );
    }
}
