//! A canary's outside judges from its config: one Prometheus analysis per
//! `[[services.NAME.canary.analysis]]`, a bad URL, query or condition named with its line.

use nonstop_analysis_prometheus::{
    Condition, PrometheusAnalysis, PrometheusApi, QueryTemplate, Rule,
};
use nonstop_config::{ConfigError, ServiceConfig, Source};
use nonstop_ports::Analysis;
use toml::Spanned;

/// The analyses of service `name`, in their config order (none without a canary strategy's
/// `analysis` tables).
pub fn build(
    name: &str,
    svc: &ServiceConfig,
    source: &Source,
) -> Result<Vec<PrometheusAnalysis>, ConfigError> {
    let canary = &svc.canary;
    let Some(prometheus) = &canary.prometheus else {
        // The config crate refuses analyses without a server.
        return Ok(Vec::new());
    };
    let api = PrometheusApi::new(prometheus.url.get_ref(), prometheus.timeout.0).map_err(|e| {
        source.error_at(
            prometheus.url.span(),
            format!("service `{name}`: canary Prometheus: {e}"),
            Some(
                "write it like url = \"http://127.0.0.1:9090\" (plain http; a path prefix is kept)"
                    .into(),
            ),
        )
    })?;
    let condition = |text: &Spanned<String>, key: &str| {
        Condition::parse(text.get_ref()).map_err(|e| {
            source.error_at(
                text.span(),
                format!("service `{name}`: canary analysis `{key}`: {e}"),
                Some("a condition compares `result` with a number: <, <=, >, >= or ==".into()),
            )
        })
    };
    canary
        .analysis
        .iter()
        .map(|a| {
            let query = QueryTemplate::parse(a.query.get_ref()).map_err(|e| {
                source.error_at(
                    a.query.span(),
                    format!(
                        "service `{name}`: canary analysis `{}`: {e}",
                        a.name.get_ref()
                    ),
                    None,
                )
            })?;
            Ok(PrometheusAnalysis {
                name: a.name.get_ref().clone(),
                api: api.clone(),
                query,
                rule: Rule {
                    success: condition(&a.success, "success")?,
                    failure: a
                        .failure
                        .as_ref()
                        .map(|f| condition(f, "failure"))
                        .transpose()?,
                    count: *a.count.get_ref(),
                    failure_limit: a.failure_limit,
                },
                interval: a.interval.get_ref().0,
            })
        })
        .collect()
}

/// [`build`] as the engine holds them.
pub fn boxed(analyses: Vec<PrometheusAnalysis>) -> Vec<Box<dyn Analysis>> {
    analyses
        .into_iter()
        .map(|a| Box::new(a) as Box<dyn Analysis>)
        .collect()
}

#[cfg(test)]
mod tests {
    use nonstop_config::Config;

    use super::*;

    const NGINX_CANARY: &str = r#"
[services.shop]
strategy = "canary"
balancer = { kind = "nginx", include = "/etc/nginx/conf.d/shop.inc", nginx = ["nginx"], upstream = "shop" }
runtime = { kind = "process", start = ["app", "--port", "{port}"] }
releases = { dir = "/tmp/shop" }

[services.shop.canary]
prometheus = { url = "http://127.0.0.1:9090" }

[[services.shop.canary.analysis]]
name = "error-rate"
query = 'sum(rate(nginx_5xx{node=~"{canary}"}[{window}]))'
success = "result < 0.01"
failure = "result > 0.05"

[[services.shop.nodes]]
name = "blue"
port = 8081

[[services.shop.nodes]]
name = "green"
port = 8082
"#;

    fn check_text(text: &str) -> Result<Vec<PrometheusAnalysis>, ConfigError> {
        let source = Source {
            path: "nonstop.toml".into(),
            text: text.to_string(),
        };
        let config = Config::parse(&source)?;
        crate::check(&config, &source)?;
        build("shop", &config.services["shop"], &source)
    }

    #[test]
    fn a_canary_without_traffic_counters_is_allowed_with_an_analysis() {
        let built = check_text(NGINX_CANARY).unwrap();
        assert_eq!(built.len(), 1);
        assert_eq!(built[0].name(), "prometheus error-rate");
        assert!(built[0].rule.failure.is_some());
        // Without the analysis the same canary is refused at its strategy line.
        let bare = NGINX_CANARY
            .split("[services.shop.canary]")
            .next()
            .unwrap()
            .to_string()
            + "[[services.shop.nodes]]\nname = \"blue\"\nport = 8081\n[[services.shop.nodes]]\nname = \"green\"\nport = 8082\n";
        let err = check_text(&bare).unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        assert!(err.hint.unwrap().contains("Prometheus analysis"));
    }

    #[test]
    fn bad_url_condition_and_placeholder_name_their_line() {
        let err = check_text(&NGINX_CANARY.replace("http://127", "https://127")).unwrap_err();
        assert_eq!(err.line, 9, "{err}");
        assert!(err.message.contains("not an http:// URL"), "{err}");
        let err = check_text(&NGINX_CANARY.replace("\"result < 0.01\"", "\"result =< 0.01\""))
            .unwrap_err();
        assert_eq!(err.line, 14, "{err}");
        assert!(err.message.contains("`success`"), "{err}");
        let err =
            check_text(&NGINX_CANARY.replace("\"result > 0.05\"", "\"result > 5%\"")).unwrap_err();
        assert_eq!(err.line, 15, "{err}");
        assert!(
            err.message.contains("`failure`") && err.message.contains("5%"),
            "{err}"
        );
        let err = check_text(&NGINX_CANARY.replace("{canary}", "{canaries}")).unwrap_err();
        assert_eq!(err.line, 13, "{err}");
        assert!(err.message.contains("{canaries}"), "{err}");
    }
}
