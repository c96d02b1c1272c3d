//! The command balancer: the operator's own programs switch traffic (an L4 switch's CLI, a cloud
//! load balancer's tool), run from argv templates — never through a shell, so no data is parsed.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use nonstop_ports::template::{check_hooks, fill};
use nonstop_ports::{Balancer, LbState, Member, NodeName, PortError, PortResult, Traffic};
use serde::Deserialize;
use tokio::process::Command;

/// Placeholders the hooks may use.
pub const PLACEHOLDERS: &[&str] = &["node", "addr", "weight"];

/// The driver's config (`balancer = { kind = "command", ... }` minus the kind).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Sends new requests to `{node}` at `{addr}`.
    pub enable: Vec<String>,
    /// Stops new requests to `{node}`; running ones (and sessions, where the switch can) finish.
    pub drain: Vec<String>,
    /// Takes `{node}` out entirely.
    pub disable: Vec<String>,
    /// Prints one line per member: `NODE STATE [IN_FLIGHT]`, STATE being active, draining or
    /// disabled (also understood: up/enabled/ready, drain, down/maint/stopped).
    pub status: Vec<String>,
    /// Optional: makes `{node}` at `{addr}` known to the switch (else it must already be).
    #[serde(default)]
    pub register: Option<Vec<String>>,
    /// Optional: sets `{node}`'s `{weight}`, for canaries.
    #[serde(default)]
    pub weight: Option<Vec<String>>,
    /// Longest a hook may run, e.g. `"30s"`.
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

fn default_timeout() -> String {
    "30s".into()
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("command balancer config: {0}")]
    Config(String),
    #[error("hook `{hook}` ({program}) {problem}")]
    Hook {
        hook: &'static str,
        program: String,
        problem: String,
    },
    #[error("status hook printed `{line}`: {problem}")]
    Status { line: String, problem: String },
}

impl From<CommandError> for PortError {
    fn from(e: CommandError) -> Self {
        PortError::new(e.to_string())
    }
}

/// A balancer driven by the operator's commands.
#[derive(Debug)]
pub struct CommandBalancer {
    config: CommandConfig,
    timeout: Duration,
    /// Addresses given to `register`, for `{addr}` in later hooks.
    addrs: std::sync::Mutex<BTreeMap<NodeName, String>>,
}

impl CommandBalancer {
    pub fn new(config: CommandConfig) -> Result<CommandBalancer, CommandError> {
        let timeout = humantime::parse_duration(&config.timeout)
            .map_err(|e| CommandError::Config(format!("timeout `{}`: {e}", config.timeout)))?;
        let hooks = [
            ("enable", Some(&config.enable)),
            ("drain", Some(&config.drain)),
            ("disable", Some(&config.disable)),
            ("status", Some(&config.status)),
            ("register", config.register.as_ref()),
            ("weight", config.weight.as_ref()),
        ];
        check_hooks(hooks, PLACEHOLDERS).map_err(CommandError::Config)?;
        Ok(CommandBalancer {
            config,
            timeout,
            addrs: Default::default(),
        })
    }

    fn addr_of(&self, node: &NodeName) -> String {
        self.addrs
            .lock()
            .expect("no panics while held")
            .get(node)
            .cloned()
            .unwrap_or_default()
    }

    /// Runs `argv` with placeholders filled; returns its stdout, or what went wrong with its stderr.
    async fn run(
        &self,
        hook: &'static str,
        argv: &[String],
        node: Option<&NodeName>,
        weight: Option<u32>,
    ) -> Result<String, CommandError> {
        let mut values = BTreeMap::new();
        if let Some(node) = node {
            values.insert("node", node.to_string());
            values.insert("addr", self.addr_of(node));
        }
        if let Some(weight) = weight {
            values.insert("weight", weight.to_string());
        }
        let argv: Vec<String> = argv.iter().map(|a| fill(a, &values)).collect();
        let program = argv[0].clone();
        let failed = |problem: String| CommandError::Hook {
            hook,
            program: program.clone(),
            problem,
        };
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("could not start: {e}")))?;
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                failed(format!(
                    "did not finish within {:?} and was killed",
                    self.timeout
                ))
            })?
            .map_err(|e| failed(e.to_string()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(failed(format!(
                "failed ({}): {}",
                output.status,
                stderr.trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    async fn apply(&self, node: &NodeName, state: LbState) -> Result<(), CommandError> {
        let (hook, argv) = match state {
            LbState::Active => ("enable", &self.config.enable),
            LbState::Draining => ("drain", &self.config.drain),
            LbState::Disabled => ("disable", &self.config.disable),
        };
        self.run(hook, argv, Some(node), None).await.map(drop)
    }
}

/// Parses the status hook's output.
pub fn parse_status(text: &str) -> Result<Vec<(NodeName, LbState, i64)>, CommandError> {
    let mut members = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let bad = |problem: &str| CommandError::Status {
            line: line.to_string(),
            problem: problem.to_string(),
        };
        let mut fields = line.split_whitespace();
        let node = fields.next().ok_or_else(|| bad("no node name"))?;
        let state = match fields.next().map(str::to_ascii_lowercase).as_deref() {
            Some("active" | "up" | "enabled" | "ready") => LbState::Active,
            Some("draining" | "drain") => LbState::Draining,
            Some("disabled" | "down" | "maint" | "stopped") => LbState::Disabled,
            Some(_) => return Err(bad("the state must be active, draining or disabled")),
            None => return Err(bad("expected `NODE STATE [IN_FLIGHT]`")),
        };
        let in_flight = match fields.next() {
            Some(n) => n
                .parse()
                .map_err(|_| bad("IN_FLIGHT must be a whole number"))?,
            None => 0,
        };
        members.push((NodeName::from(node), state, in_flight));
    }
    Ok(members)
}

/// Actives first, then drains, then disables: no step of a switch leaves the pool empty.
fn switch_order(state: LbState) -> u8 {
    match state {
        LbState::Active => 0,
        LbState::Draining => 1,
        LbState::Disabled => 2,
    }
}

impl Balancer for CommandBalancer {
    /// A status command reports states and in-flight counts, not requests.
    fn reports_traffic(&self) -> bool {
        false
    }

    async fn members(&self) -> PortResult<Vec<Member>> {
        let text = self.run("status", &self.config.status, None, None).await?;
        Ok(parse_status(&text)?
            .into_iter()
            .map(|(node, state, in_flight)| Member {
                addr: self.addr_of(&node),
                node,
                state,
                weight: 1,
                in_flight,
                healthy: true,
                traffic: Traffic::default(),
            })
            .collect())
    }

    async fn register(&self, node: &NodeName, addr: &str) -> PortResult<()> {
        self.addrs
            .lock()
            .expect("no panics while held")
            .insert(node.clone(), addr.to_string());
        if let Some(argv) = &self.config.register {
            self.run("register", argv, Some(node), None).await?;
        }
        let members = self.members().await?;
        if !members.iter().any(|m| m.node == *node) {
            return Err(PortError::new(format!(
                "the status hook does not list `{node}`: add it to the switch, or give a `register` hook"
            )));
        }
        Ok(())
    }

    async fn set_state(&self, node: &NodeName, state: LbState) -> PortResult<()> {
        self.apply(node, state).await.map_err(Into::into)
    }

    async fn set_weight(&self, node: &NodeName, weight: u32) -> PortResult<()> {
        match &self.config.weight {
            Some(argv) => self
                .run("weight", argv, Some(node), Some(weight))
                .await
                .map(drop)
                .map_err(Into::into),
            // Without a hook every member has weight 1 (what `members` reports), so 1 is a no-op.
            None if weight == 1 => Ok(()),
            None => Err(PortError::new(
                "this command balancer has no `weight` hook: canary deploys need one",
            )),
        }
    }

    /// The hooks run one by one, actives first, so the pool never goes empty in between.
    async fn switch(&self, changes: &[(NodeName, LbState, Option<u32>)]) -> PortResult<()> {
        let mut ordered: Vec<_> = changes.iter().collect();
        ordered.sort_by_key(|(_, state, _)| switch_order(*state));
        for (node, state, weight) in ordered {
            if let Some(weight) = weight {
                self.set_weight(node, *weight).await?;
            }
            self.apply(node, *state).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A switch simulated by a script: its state file holds `NODE STATE` lines.
    fn switch_script(dir: &std::path::Path) -> String {
        let script = dir.join("switch.sh");
        std::fs::write(
            &script,
            r#"#!/bin/sh
set -eu
db="$(dirname "$0")/members"
touch "$db"
case "$1" in
  status) cat "$db" ;;
  set) grep -v "^$2 " "$db" > "$db.new" || true; echo "$2 $3 0" >> "$db.new"; mv "$db.new" "$db" ;;
  fail) echo "switch refused: $2" >&2; exit 3 ;;
esac
"#,
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .unwrap();
        script.display().to_string()
    }

    fn balancer(script: &str, enable_verb: &str) -> CommandBalancer {
        let argv = |args: &[&str]| -> Vec<String> {
            std::iter::once(script.to_string())
                .chain(args.iter().map(|s| s.to_string()))
                .collect()
        };
        CommandBalancer::new(CommandConfig {
            enable: argv(&[enable_verb, "{node}", "active"]),
            drain: argv(&["set", "{node}", "draining"]),
            disable: argv(&["set", "{node}", "disabled"]),
            status: argv(&["status"]),
            register: Some(argv(&["set", "{node}", "disabled"])),
            weight: None,
            timeout: "5s".into(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hooks_switch_report_and_fail_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let script = switch_script(dir.path());
        let lb = balancer(&script, "set");
        let (a, b) = (NodeName::from("a"), NodeName::from("b"));
        lb.register(&a, "127.0.0.1:8081").await.unwrap();
        lb.register(&b, "127.0.0.1:8082").await.unwrap();
        lb.switch(&[
            (a.clone(), LbState::Active, None),
            (b.clone(), LbState::Disabled, None),
        ])
        .await
        .unwrap();
        let members = lb.members().await.unwrap();
        let state = |n: &str| members.iter().find(|m| m.node.as_str() == n).unwrap().state;
        assert_eq!(
            (state("a"), state("b")),
            (LbState::Active, LbState::Disabled)
        );
        assert_eq!(members[0].addr, "127.0.0.1:8081");

        let failing = balancer(&script, "fail");
        let err = failing
            .set_state(&a, LbState::Active)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("switch refused: a") && err.contains("exit status: 3"),
            "{err}"
        );
        assert!(
            lb.set_weight(&a, 5)
                .await
                .unwrap_err()
                .to_string()
                .contains("weight")
        );
    }

    #[tokio::test]
    async fn a_node_data_value_is_one_argument_never_a_shell_word() {
        let dir = tempfile::tempdir().unwrap();
        let script = switch_script(dir.path());
        let lb = balancer(&script, "set");
        let odd = NodeName::from("x;touch pwned");
        lb.set_state(&odd, LbState::Draining).await.unwrap();
        assert!(!dir.path().join("pwned").exists() && !std::path::Path::new("pwned").exists());
    }

    #[test]
    fn config_and_status_are_checked() {
        let bad: CommandConfig = toml::from_str(
            "enable = [\"l4\", \"{nod}\"]\ndrain = [\"l4\"]\ndisable = [\"l4\"]\nstatus = [\"l4\"]\n",
        )
        .unwrap();
        assert!(
            CommandBalancer::new(bad)
                .unwrap_err()
                .to_string()
                .contains("{nod}")
        );
        let parsed = parse_status("# node state in-flight\na up 3\nb maint\n").unwrap();
        assert_eq!(parsed[0], (NodeName::from("a"), LbState::Active, 3));
        assert_eq!(parsed[1], (NodeName::from("b"), LbState::Disabled, 0));
        assert!(parse_status("a sideways\n").is_err());
    }
}
