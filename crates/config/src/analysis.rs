//! A canary's outside judges: `prometheus = { url, timeout }` and `[[…canary.analysis]]` queries.
//! Their shape and numbers are checked here; URL, query and conditions by the analysis driver.

use serde::Deserialize;
use toml::Spanned;

use crate::service::CanaryConfig;
use crate::{ConfigError, HumanDuration, Source};

/// The Prometheus server the queries run against.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSource {
    /// `http://host:port`, optionally with a path prefix.
    pub url: Spanned<String>,
    /// Longest wait for one query's answer; a slower Prometheus makes the window inconclusive.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration::secs(5)
}

/// One PromQL query judged at the end of every canary step, point by point.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnalysisQuery {
    pub name: Spanned<String>,
    /// PromQL with `{service}`, `{version}`, `{canary}`, `{stable}`, `{window}` placeholders.
    pub query: Spanned<String>,
    /// Each measurement must satisfy this, e.g. `result < 0.01`.
    pub success: Spanned<String>,
    /// A measurement matching this fails even where `success` holds.
    #[serde(default)]
    pub failure: Option<Spanned<String>>,
    /// Spacing of the measurements in the window (the range query's step).
    #[serde(default = "default_interval")]
    pub interval: Spanned<HumanDuration>,
    /// Measurements needed in a window; fewer is inconclusive.
    #[serde(default = "default_count")]
    pub count: Spanned<u32>,
    /// Failed measurements tolerated in a window.
    #[serde(default)]
    pub failure_limit: u32,
}

fn default_interval() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration::secs(10))
}

fn default_count() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}

/// Checks the analyses of service `name`'s canary.
pub(crate) fn check(name: &str, canary: &CanaryConfig, source: &Source) -> Result<(), ConfigError> {
    let here = |span: std::ops::Range<usize>, msg: String, hint: &str| {
        source.error_at(span, msg, Some(hint.to_string()))
    };
    if let (None, Some(first)) = (&canary.prometheus, canary.analysis.first()) {
        return Err(here(
            first.name.span(),
            format!(
                "service `{name}`: canary analysis `{}` has no Prometheus to ask",
                first.name.get_ref()
            ),
            &format!(
                "add `prometheus = {{ url = \"http://127.0.0.1:9090\" }}` to [services.{name}.canary]"
            ),
        ));
    }
    if let Some(prometheus) = &canary.prometheus
        && prometheus.timeout.0.is_zero()
    {
        return Err(here(
            prometheus.url.span(),
            format!("service `{name}`: the Prometheus `timeout` is zero"),
            "give it a few seconds, e.g. timeout = \"5s\"",
        ));
    }
    for (i, analysis) in canary.analysis.iter().enumerate() {
        let label = analysis.name.get_ref();
        if label.trim().is_empty() {
            return Err(here(
                analysis.name.span(),
                format!("service `{name}`: a canary analysis has an empty `name`"),
                "name it for logs and verdicts, e.g. name = \"error-rate\"",
            ));
        }
        if canary.analysis[..i]
            .iter()
            .any(|a| a.name.get_ref() == label)
        {
            return Err(here(
                analysis.name.span(),
                format!("service `{name}`: two canary analyses are named `{label}`"),
                "give each analysis its own name",
            ));
        }
        if *analysis.count.get_ref() == 0 {
            return Err(here(
                analysis.count.span(),
                format!(
                    "service `{name}`: analysis `{label}` has count = 0, which would pass a window without any measurement"
                ),
                "require at least 1 measurement (the default is 3)",
            ));
        }
        if analysis.interval.get_ref().0 < std::time::Duration::from_secs(1) {
            return Err(here(
                analysis.interval.span(),
                format!("service `{name}`: analysis `{label}` has an interval under 1s"),
                "measure every few scrape intervals, e.g. interval = \"10s\"",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::tests::parse;

    const CANARY: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
admin = "unix:/tmp/admin.sock"

[pools.shop]

[services.shop]
strategy = "canary"
balancer = { kind = "builtin", pool = "shop" }
runtime = { kind = "process", start = ["app", "{port}"] }
releases = { dir = "/tmp/shop" }

[services.shop.canary]
prometheus = { url = "http://127.0.0.1:9090" }

[[services.shop.canary.analysis]]
name = "error-rate"
query = 'sum(rate(x{backend=~"{canary}"}[{window}]))'
success = "result < 0.01"

[[services.shop.nodes]]
name = "blue"
port = 8081

[[services.shop.nodes]]
name = "green"
port = 8082
"#;

    #[test]
    fn analyses_parse_with_their_defaults() {
        let config = parse(CANARY).unwrap();
        let canary = &config.services["shop"].canary;
        let prometheus = canary.prometheus.as_ref().unwrap();
        assert_eq!(prometheus.url.get_ref(), "http://127.0.0.1:9090");
        assert_eq!(prometheus.timeout.0.as_secs(), 5);
        let a = &canary.analysis[0];
        assert_eq!(*a.count.get_ref(), 3);
        assert_eq!(a.interval.get_ref().0.as_secs(), 10);
        assert_eq!((a.failure_limit, a.failure.is_none()), (0, true));
    }

    #[test]
    fn mistakes_name_their_line() {
        let no_source = CANARY.replace("prometheus = { url = \"http://127.0.0.1:9090\" }", "");
        let err = parse(&no_source).unwrap_err();
        assert_eq!(err.line, 18, "{err}");
        assert!(
            err.hint.as_ref().unwrap().contains("prometheus = { url"),
            "{err}"
        );
        let err = parse(&CANARY.replace("success =", "count = 0\nsuccess =")).unwrap_err();
        assert_eq!(err.line, 20, "{err}");
        let err =
            parse(&CANARY.replace("success =", "interval = \"500ms\"\nsuccess =")).unwrap_err();
        assert_eq!(err.line, 20, "{err}");
        assert!(err.message.contains("under 1s"), "{err}");
        let twice = format!(
            "{CANARY}\n[[services.shop.canary.analysis]]\nname = \"error-rate\"\nquery = \"up\"\nsuccess = \"result == 1\"\n"
        );
        let err = parse(&twice).unwrap_err();
        assert_eq!(err.line, 31, "{err}");
        assert!(err.message.contains("two canary analyses"), "{err}");
        let err = parse(&CANARY.replace("success =", "sucess = \"x\"\nsuccess =")).unwrap_err();
        assert_eq!(err.line, 20, "{err}");
        assert!(err.message.contains("sucess"), "{err}");
    }
}
