//! `nonstop promote|abort SERVICE`: the decision on a paused deploy. Its own process acts on
//! it; if that process is gone, this one resumes (promote) or undoes (abort) the deploy.

use std::process::ExitCode;

use nonstop_engine::{Decided, Decision, DeployError};

use crate::cmd_deploy::{Renderer, ServiceArgs, conclude, runtime};

pub fn promote(args: ServiceArgs) -> anyhow::Result<ExitCode> {
    decide(args, Decision::Promote)
}

pub fn abort(args: ServiceArgs) -> anyhow::Result<ExitCode> {
    decide(args, Decision::Abort)
}

fn decide(args: ServiceArgs, decision: Decision) -> anyhow::Result<ExitCode> {
    let json = args.common.json;
    let (renderer, emit) = Renderer::new(json);
    let rt = runtime()?;
    let by = nonstop_store::Holder::current().name;
    let result = args
        .common
        .engine(&args.service, emit)
        .and_then(|mut engine| rt.block_on(engine.decide(decision, &by)));
    let verb = match decision {
        Decision::Promote => "promoted",
        Decision::Abort => "aborted",
    };
    let result: Result<serde_json::Value, DeployError> = result.map(|decided| match decided {
        Decided::Relayed { deploy, pid } => {
            if !json {
                println!(
                    "deploy #{deploy} {verb} by {by}; its process (pid {pid}) {}",
                    match decision {
                        Decision::Promote => "goes on",
                        Decision::Abort => "rolls it back",
                    }
                );
            }
            serde_json::json!({"deploy": deploy, "decision": decision, "by": by, "relayed_to_pid": pid})
        }
        Decided::Resumed(report) => {
            serde_json::json!({"deploy": report.deploy, "decision": decision, "by": by, "resumed": report})
        }
        Decided::Undone { deploy } => {
            if !json {
                println!("deploy #{deploy} {verb} by {by}; undone, the previous state serves");
            }
            serde_json::json!({"deploy": deploy, "decision": decision, "by": by, "undone": true})
        }
    });
    Ok(conclude(json, &renderer, result))
}
