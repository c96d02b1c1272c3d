//! Prometheus' HTTP API, the one call a canary needs: `POST /api/v1/query_range` with a form
//! body (no URL length limit on long queries), its JSON matrix read into series of points.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nonstop_http_client::{HttpError, Request, Url};
use serde::Deserialize;

/// A Prometheus server: its base URL (a path prefix is kept) and the per-query timeout.
#[derive(Debug, Clone)]
pub struct PrometheusApi {
    base: Url,
    timeout: Duration,
}

/// One series of a range query: its labels and its (unix seconds, value) points.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Series {
    #[serde(default)]
    pub metric: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "points")]
    pub values: Vec<(f64, f64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Prometheus at {url} did not answer: {source}")]
    Unreachable { url: String, source: HttpError },
    #[error("Prometheus at {url} answered HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("Prometheus at {url} sent an answer that is not a range query's matrix: {message}")]
    BadAnswer { url: String, message: String },
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Series>,
}

/// Points come as `[1700000000.5, "0.25"]`: the value is a string so NaN and ±Inf survive JSON.
fn points<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(f64, f64)>, D::Error> {
    let raw: Vec<(f64, String)> = Vec::deserialize(d)?;
    raw.into_iter()
        .map(|(t, v)| {
            v.parse::<f64>()
                .map(|v| (t, v))
                .map_err(|_| serde::de::Error::custom(format!("`{v}` is not a number")))
        })
        .collect()
}

impl PrometheusApi {
    /// `url` must be `http://host[:port][/prefix]`.
    pub fn new(url: &str, timeout: Duration) -> Result<PrometheusApi, HttpError> {
        let mut base = Url::parse(url.trim_end_matches('/'))?;
        if base.path.contains(['?', '#']) {
            return Err(HttpError::BadUrl(url.to_string()));
        }
        if base.path == "/" {
            base.path.clear();
        }
        Ok(PrometheusApi { base, timeout })
    }

    fn endpoint(&self) -> Url {
        let mut url = self.base.clone();
        url.path.push_str("/api/v1/query_range");
        url
    }

    /// `query` evaluated every `step` from `start` to `end`.
    pub async fn query_range(
        &self,
        query: &str,
        start: SystemTime,
        end: SystemTime,
        step: Duration,
    ) -> Result<Vec<Series>, ApiError> {
        let url = self.endpoint();
        let shown = format!("http://{}{}", url.authority(), url.path);
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .append_pair("start", &unix(start))
            .append_pair("end", &unix(end))
            .append_pair("step", &format!("{}", step.as_secs_f64()))
            .finish();
        let request = Request {
            method: "POST",
            headers: vec![(
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            )],
            body: body.as_bytes(),
        };
        let response = nonstop_http_client::send(&url, &request, self.timeout)
            .await
            .map_err(|source| ApiError::Unreachable {
                url: shown.clone(),
                source,
            })?;
        let answer: Result<Answer, _> = serde_json::from_str(&response.body);
        match answer {
            Ok(Answer {
                status,
                data: Some(data),
                ..
            }) if status == "success" && response.status == 200 => {
                if data.result_type != "matrix" {
                    return Err(ApiError::BadAnswer {
                        url: shown,
                        message: format!("result type `{}`", data.result_type),
                    });
                }
                Ok(data.result)
            }
            Ok(answer) if response.status != 200 || answer.status != "success" => {
                Err(ApiError::Status {
                    url: shown,
                    status: response.status,
                    message: format!(
                        "{}: {}",
                        answer.error_type.as_deref().unwrap_or("error"),
                        answer.error.as_deref().unwrap_or("no message")
                    ),
                })
            }
            Ok(_) => Err(ApiError::BadAnswer {
                url: shown,
                message: "no `data`".into(),
            }),
            Err(_) if response.status != 200 => Err(ApiError::Status {
                url: shown,
                status: response.status,
                message: first_line(&response.body),
            }),
            Err(e) => Err(ApiError::BadAnswer {
                url: shown,
                message: e.to_string(),
            }),
        }
    }
}

fn unix(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

fn first_line(body: &str) -> String {
    let line = body.lines().next().unwrap_or("").trim();
    line.chars().take(200).collect()
}
