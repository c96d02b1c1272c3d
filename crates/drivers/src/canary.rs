//! Where a canary's numbers come from, per balancer: refused at `config check` (with its line)
//! where the balancer counts nothing per member, and said plainly where it does.

use nonstop_balancer_modjk::ModjkMode;
use nonstop_config::service::Strategy;
use nonstop_config::{Config, ConfigError, ServiceConfig, Source};

use crate::{BalancerSettings, balancer_settings};

/// What a balancer counts per member for a canary, or `None` (with the way to make it count).
fn traffic_source(name: &str, settings: &BalancerSettings) -> Result<String, String> {
    match settings {
        BalancerSettings::Builtin { .. } => {
            Ok("the built-in proxy's per-backend counters (requests, 5xx + connect errors, latency)".into())
        }
        BalancerSettings::Haproxy(_) => Ok(
            "HAProxy `show stat` per server (stot; hrsp_5xx + eresp + econ; ttime × stot)".into(),
        ),
        BalancerSettings::Nginx(c) => match &c.access_log {
            Some(log) => Ok(format!(
                "nginx access log {} (`{}`, written by `access_log {} nonstop;`)",
                log.display(),
                nonstop_balancer_nginx::LOG_FORMAT,
                log.display()
            )),
            None => Err(format!(
                "give the nginx balancer `access_log = \"/var/log/nginx/{name}-nonstop.log\"`, written by nginx with `{}` and `access_log /var/log/nginx/{name}-nonstop.log nonstop;` (docs/balancers/nginx.md, \"Canary\"), or use strategy = \"blue-green\" or \"rolling\"",
                nonstop_balancer_nginx::LOG_FORMAT
            )),
        },
        BalancerSettings::Modjk(c) => match c.mode {
            ModjkMode::Uriworkermap { status: None, .. } => Err(
                "give the uriworkermap mode `status = { url = …, user = …, password_file = … }` or use mode `jkstatus` (docs/balancers/modjk.md, \"Canary\"), or use strategy = \"blue-green\" or \"rolling\"".into(),
            ),
            _ => Ok(
                "the mod_jk status worker per member (elected; errors = failed connects/reads, reply timeouts and positive fail_on_status only; no latency)".into(),
            ),
        },
        BalancerSettings::Command(_) => Err(
            "use strategy = \"blue-green\" or \"rolling\" with this balancer, or a balancer that counts requests per node (builtin, haproxy, nginx with access_log, mod_jk with a status worker)".into(),
        ),
    }
}

/// A canary on a balancer that counts nothing per member would be judged on zero requests:
/// refused at the `strategy` line.
pub(crate) fn check(
    name: &str,
    svc: &ServiceConfig,
    settings: &BalancerSettings,
    source: &Source,
) -> Result<(), ConfigError> {
    // A Prometheus analysis judges a canary whatever the balancer counts.
    if *svc.strategy.get_ref() != Strategy::Canary || !svc.canary.analysis.is_empty() {
        return Ok(());
    }
    let Err(fix) = traffic_source(name, settings) else {
        return Ok(());
    };
    let (kind, without) = match settings {
        BalancerSettings::Nginx(_) => ("nginx", " without `access_log`"),
        BalancerSettings::Modjk(_) => ("modjk", " without a status worker"),
        _ => ("command", ""),
    };
    Err(source.error_at(
        svc.strategy.span(),
        format!(
            "service `{name}`: a canary is judged on the new release's requests, and the {kind} balancer reports no per-node traffic{without}: every canary would be inconclusive"
        ),
        Some(format!(
            "{fix}; or add a Prometheus analysis ([[services.{name}.canary.analysis]], docs/strategies/canary.md)"
        )),
    ))
}

/// For `config check`: one line per canary service naming where its verdicts' numbers come from.
pub fn traffic_sources(config: &Config, source: &Source) -> Result<Vec<String>, ConfigError> {
    let mut lines = Vec::new();
    for (name, svc) in &config.services {
        if *svc.strategy.get_ref() != Strategy::Canary {
            continue;
        }
        let settings = balancer_settings(name, svc, config, source)?;
        if let Ok(from) = traffic_source(name, &settings) {
            lines.push(format!("service `{name}`: the canary is judged on {from}"));
        }
    }
    Ok(lines)
}
