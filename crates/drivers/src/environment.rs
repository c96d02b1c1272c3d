//! `config check`'s look at the host: whether each service's balancer (HAProxy socket, nginx
//! binary, mod_jk files and jkstatus, the proxy admin) and Tomcat bases exist and answer.

use nonstop_config::{Config, Source};
use nonstop_ports::Balancer;

use crate::{AnyBalancer, RuntimeSettings, local_balancer, runtime_settings};

/// What one look found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Verified; what was seen.
    Ok(String),
    /// Broken; what to fix.
    Failed(String),
    /// Not verifiable from here; why.
    Unchecked(String),
    /// Works, but a setting would serve better.
    Advice(String),
}

/// One finding of [`check_environment`] about a service's `part` (`balancer` or `runtime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub service: String,
    pub part: &'static str,
    pub outcome: Outcome,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (label, text) = match &self.outcome {
            Outcome::Ok(t) => ("ok", t),
            Outcome::Failed(t) => ("FAILED", t),
            Outcome::Unchecked(t) => ("not checked", t),
            Outcome::Advice(t) => ("advice", t),
        };
        write!(
            f,
            "service `{}`: {}: {label}: {text}",
            self.service, self.part
        )
    }
}

/// Looks at every service's balancer and runtime on this host; changes nothing.
pub async fn check_environment(config: &Config, source: &Source) -> Vec<Finding> {
    let mut found = Vec::new();
    for (name, svc) in &config.services {
        let finding = |part, outcome| Finding {
            service: name.clone(),
            part,
            outcome,
        };
        let balancer = match &svc.balancer.shared.host {
            Some(host) => Outcome::Unchecked(format!(
                "it runs on host `{}`; its agent reaches it at deploy time",
                host.get_ref()
            )),
            None => match local_balancer(name, svc, config, source) {
                Err(e) => Outcome::Failed(e),
                Ok(b) => look_at(&b).await,
            },
        };
        found.push(finding("balancer", balancer));
        if svc.on_hosts() {
            continue;
        }
        if let Ok(RuntimeSettings::Tomcat(tomcat)) = runtime_settings(name, svc, source) {
            match nonstop_runtime_tomcat::check_bases(&tomcat, svc.drain.sessions) {
                Ok(checked) => {
                    found.push(finding("runtime", Outcome::Ok(checked.summary)));
                    for advice in checked.advice {
                        found.push(finding("runtime", Outcome::Advice(advice)));
                    }
                }
                Err(e) => found.push(finding("runtime", Outcome::Failed(e.to_string()))),
            }
        }
    }
    found
}

async fn look_at(balancer: &AnyBalancer) -> Outcome {
    let result = match balancer {
        AnyBalancer::Nginx(b) => b.check_environment().await.map_err(|e| e.to_string()),
        AnyBalancer::Modjk(b) => b.check_environment().await.map_err(|e| e.to_string()),
        AnyBalancer::Haproxy(b) => b
            .api()
            .command("show info")
            .await
            .map(|_| "HAProxy answers on its stats socket".to_string())
            .map_err(|e| e.to_string()),
        AnyBalancer::Builtin(b) => b
            .members()
            .await
            .map(|m| {
                format!(
                    "the proxy's admin answers; the pool has {} backend(s)",
                    m.len()
                )
            })
            .map_err(|e| e.to_string()),
        AnyBalancer::Command(_) => {
            return Outcome::Unchecked(
                "a command balancer is only known by running its commands, which change traffic"
                    .into(),
            );
        }
        AnyBalancer::Remote(_) => {
            return Outcome::Unchecked("reached through an agent at deploy time".into());
        }
    };
    match result {
        Ok(seen) => Outcome::Ok(seen),
        Err(e) => Outcome::Failed(e),
    }
}
