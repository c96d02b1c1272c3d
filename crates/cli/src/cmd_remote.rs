//! `nonstop deploy --console URL`: the CI path through a console, the same one its buttons take
//! (its engine, lock, journal, audit), authenticated with a CI token; follows the job to its end.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use hyper::{Method, StatusCode};
use nonstop_agent_client::{ConsoleClient, empty, multipart_with_file};

/// Where and as whom to reach a console.
#[derive(clap::Args, Clone, Debug)]
pub struct ConsoleArgs {
    /// Deploy through this console (`https://HOST:PORT`) instead of from this machine.
    #[arg(long, env = "NONSTOP_CONSOLE", requires_all = ["token", "console_ca_sha256"])]
    pub console: Option<String>,
    /// A CI token of the console, scoped to the service.
    #[arg(long, env = "NONSTOP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The console CA's SHA-256 (shown on its Agents page): the console is trusted only if it matches.
    #[arg(long, env = "NONSTOP_CONSOLE_CA_SHA256")]
    pub console_ca_sha256: Option<String>,
}

/// Uploads `artifact` as a deploy job of `service` and prints its events until it ends.
pub fn deploy(
    console: &ConsoleArgs,
    service: &str,
    artifact: &Path,
    version: Option<&str>,
    strategy: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let url = console.console.as_deref().expect("checked by the caller");
    let client = ConsoleClient::new(
        url,
        console.console_ca_sha256.as_deref().unwrap_or_default(),
    )
    .map_err(|e| anyhow!(e))?
    .with_token(console.token.as_deref().unwrap_or_default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut fields = Vec::new();
        if let Some(v) = version {
            fields.push(("version", v));
        }
        if let Some(s) = strategy {
            fields.push(("strategy", s));
        }
        let (content_type, length, body) = multipart_with_file(&fields, "artifact", artifact)
            .await
            .map_err(|e| anyhow!(e))?;
        let path = format!("/api/services/{service}/deploy");
        let (status, answer) = client
            .request(
                Method::POST,
                &path,
                &[
                    ("content-type", content_type),
                    ("content-length", length.to_string()),
                ],
                body,
            )
            .await
            .map_err(|e| anyhow!(e))?;
        if status != StatusCode::ACCEPTED {
            eprintln!(
                "the console refused the deploy ({status}): {}",
                String::from_utf8_lossy(&answer).trim()
            );
            return Ok(ExitCode::from(3));
        }
        let accepted: serde_json::Value = serde_json::from_slice(&answer)?;
        let job = accepted["job"]
            .as_u64()
            .context("the console's answer names no job")?;
        follow(&client, service, job, json).await
    })
}

/// Polls the job, printing each new event, until it has a result; maps it to an exit code.
async fn follow(
    client: &ConsoleClient,
    service: &str,
    job: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let path = format!("/api/services/{service}/jobs/{job}");
    let mut printed = 0;
    loop {
        let (status, answer) = client
            .request(Method::GET, &path, &[], empty())
            .await
            .map_err(|e| anyhow!(e))?;
        if !status.is_success() {
            bail!(
                "job {job}: {status}: {}",
                String::from_utf8_lossy(&answer).trim()
            );
        }
        let state: serde_json::Value = serde_json::from_slice(&answer)?;
        let events = state["events"].as_array().cloned().unwrap_or_default();
        for event in events.iter().skip(printed) {
            if json {
                println!("{event}");
            } else {
                println!(
                    "{} {}",
                    event["kind"].as_str().unwrap_or(""),
                    event["message"].as_str().unwrap_or("")
                );
            }
        }
        printed = printed.max(events.len());
        if let Some(result) = state["job"]["result"].as_object() {
            return Ok(ExitCode::from(
                match result.get("outcome").and_then(|o| o.as_str()) {
                    Some("succeeded") => 0,
                    Some("rolled-back") => 2,
                    Some("refused") => 3,
                    _ => 1,
                },
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
