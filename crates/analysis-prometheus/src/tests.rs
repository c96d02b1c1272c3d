//! The analysis against a fake Prometheus (a tiny hyper server with canned answers): the
//! request it sends, and the verdict on matrices, API errors, garbage and a dead server.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nonstop_ports::{NodeName, Version};

use super::*;

/// What the fake saw: method, path and form body of each request.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// Serves `status` + `body` to every request on 127.0.0.1; returns its base URL.
async fn fake_prometheus(status: u16, body: &'static str) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let log = log.clone();
                async move {
                    let method = req.method().to_string();
                    let path = req.uri().path().to_string();
                    let form = req.into_body().collect().await?.to_bytes();
                    let form = String::from_utf8_lossy(&form).into_owned();
                    log.lock().unwrap().push((method, path, form));
                    let mut answer =
                        hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *answer.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    Ok::<_, hyper::Error>(answer)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (url, seen)
}

fn analysis(url: &str) -> PrometheusAnalysis {
    PrometheusAnalysis {
        name: "error-rate".into(),
        api: PrometheusApi::new(url, Duration::from_secs(2)).unwrap(),
        query: QueryTemplate::parse(r#"sum(rate(x{backend=~"{canary}"}[{window}]))"#).unwrap(),
        rule: Rule {
            success: Condition::parse("result < 0.01").unwrap(),
            failure: None,
            count: 3,
            failure_limit: 0,
        },
        interval: Duration::from_secs(10),
    }
}

fn window() -> AnalysisWindow {
    AnalysisWindow {
        service: "shop".into(),
        version: Version("2".into()),
        step: 1,
        share: 10,
        window: Duration::from_secs(30),
        canaries: vec![NodeName::from("green")],
        stable: vec![NodeName::from("blue")],
    }
}

const FAILING: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[
  {"metric":{},"values":[[1000,"0"],[1010,"0.2"],[1020,"0.25"],[1030,"NaN"]]}]}}"#;
const PASSING: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[
  {"metric":{},"values":[[1000,"0"],[1010,"0.001"],[1020,"0"],[1030,"0"]]}]}}"#;

#[tokio::test]
async fn sends_a_range_query_over_the_window_and_judges_its_points() {
    let (url, seen) = fake_prometheus(200, FAILING).await;
    let a = analysis(&format!("{url}/prom/"));
    let end = std::time::UNIX_EPOCH + Duration::from_millis(1_000_030_500);
    let v = a.analyze_until(&window(), end).await;
    let Verdict::Fail(m) = v else { panic!("{v:?}") };
    assert!(m.contains("2 of 3 measurements failed"), "{m}");
    assert!(m.contains("[0, 0.2, 0.25] and 1 NaN"), "{m}");
    let (method, path, form) = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", "/prom/api/v1/query_range")
    );
    let pairs: std::collections::BTreeMap<String, String> = form_urlencoded::parse(form.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(pairs["query"], r#"sum(rate(x{backend=~"green"}[30s]))"#);
    assert_eq!(pairs["start"], "1000000.500");
    assert_eq!(pairs["end"], "1000030.500");
    assert_eq!(pairs["step"], "10");

    let (url, _) = fake_prometheus(200, PASSING).await;
    let v = analysis(&url).analyze(&window()).await;
    assert!(
        matches!(&v, Verdict::Pass(m) if m.contains("4 measured [0, 1.000e-3, 0, 0]")),
        "{v:?}"
    );
}

#[tokio::test]
async fn api_errors_garbage_and_a_dead_server_are_inconclusive() {
    let bad_query =
        r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected <EOF>"}"#;
    let (url, _) = fake_prometheus(400, bad_query).await;
    let v = analysis(&url).analyze(&window()).await;
    let Verdict::Inconclusive(m) = v else {
        panic!("{v:?}")
    };
    assert!(m.starts_with("inconclusive"), "{m}");
    assert!(m.contains("HTTP 400: bad_data: 1:5: parse error"), "{m}");

    let (url, _) = fake_prometheus(502, "<html>Bad Gateway</html>").await;
    let v = analysis(&url).analyze(&window()).await;
    assert!(
        matches!(&v, Verdict::Inconclusive(m) if m.contains("HTTP 502: <html>Bad Gateway")),
        "{v:?}"
    );

    let vector = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    let (url, _) = fake_prometheus(200, vector).await;
    let v = analysis(&url).analyze(&window()).await;
    assert!(
        matches!(&v, Verdict::Inconclusive(m) if m.contains("result type `vector`")),
        "{v:?}"
    );

    let empty = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
    let (url, _) = fake_prometheus(200, empty).await;
    let v = analysis(&url).analyze(&window()).await;
    assert!(
        matches!(&v, Verdict::Inconclusive(m) if m.contains("no series")),
        "{v:?}"
    );

    // Nothing listens on a port just freed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let v = analysis(&format!("http://127.0.0.1:{port}"))
        .analyze(&window())
        .await;
    let Verdict::Inconclusive(m) = v else {
        panic!("{v:?}")
    };
    assert!(m.contains("inconclusive, no measurement"), "{m}");
    assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}");
}

#[test]
fn only_plain_http_urls_are_taken() {
    for bad in [
        "https://prom:9090",
        "prom:9090",
        "http://",
        "http://p/x?y=1",
    ] {
        assert!(
            PrometheusApi::new(bad, Duration::from_secs(1)).is_err(),
            "{bad}"
        );
    }
    PrometheusApi::new("http://prometheus.internal:9090/", Duration::from_secs(1)).unwrap();
}
