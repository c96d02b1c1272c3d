//! Deploys and rollbacks started from the console: each runs the engine on its own thread (the
//! engine is not `Send`), its events go to a broadcast for live progress (SSE) and are kept.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Extension;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use http::StatusCode;
use http::header::CONTENT_TYPE;
use nonstop_config::service::Strategy;
use nonstop_engine::{DeployError, DeployReport, DeployRequest, Event};
use nonstop_ports::Version;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

use crate::artifacts::{self, Upload};
use crate::auth::{AuditNote, Caller};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::{App, AuditRecordOwned, write_audit};

/// One event of a job as the page sees it: the engine's events, then `finished`.
#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    pub seq: usize,
    pub at_ms: i64,
    /// The engine's event kind (`begin`, `step`, `progress`, …) or `finished`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub message: String,
    /// The engine's deploy number (its history entry), once known.
    pub deploy: Option<i64>,
}

/// How a job ended.
#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    /// `succeeded`, `rolled-back`, `refused` or `failed`.
    pub outcome: &'static str,
    pub message: String,
    pub report: Option<DeployReport>,
}

/// A job in lists.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub id: u64,
    pub service: String,
    pub kind: &'static str,
    pub actor: String,
    pub version: Option<String>,
    pub started_ms: i64,
    pub deploy: Option<i64>,
    pub result: Option<JobResult>,
}

/// A deploy or rollback run by the console.
pub struct Job {
    pub id: u64,
    pub service: String,
    /// `deploy` or `rollback`.
    pub kind: &'static str,
    pub actor: String,
    pub peer: String,
    pub version: Option<String>,
    pub started_ms: i64,
    log: Mutex<JobLog>,
    tx: broadcast::Sender<JobEvent>,
}

#[derive(Default)]
struct JobLog {
    events: Vec<JobEvent>,
    deploy: Option<i64>,
    result: Option<JobResult>,
}

impl Job {
    fn log(&self) -> MutexGuard<'_, JobLog> {
        // A poisoned log is still a log: keep showing what is there.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, kind: String, node: Option<String>, message: String, deploy: Option<i64>) {
        let mut log = self.log();
        if deploy.is_some() {
            log.deploy = deploy;
        }
        let event = JobEvent {
            seq: log.events.len(),
            at_ms: nonstop_store::now_ms(),
            kind,
            node,
            message,
            deploy: log.deploy,
        };
        log.events.push(event.clone());
        // Nobody listening is fine.
        let _ = self.tx.send(event);
    }

    fn engine_event(&self, event: &Event) {
        let kind = serde_json::to_value(event.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "step".into());
        self.push(
            kind,
            event.node.clone(),
            event.message.clone(),
            event.deploy,
        );
    }

    fn finish(&self, result: JobResult) {
        let message = format!("{}: {}", result.outcome, result.message);
        self.log().result = Some(result);
        self.push("finished".into(), None, message, None);
    }

    pub fn summary(&self) -> JobSummary {
        let log = self.log();
        JobSummary {
            id: self.id,
            service: self.service.clone(),
            kind: self.kind,
            actor: self.actor.clone(),
            version: self.version.clone(),
            started_ms: self.started_ms,
            deploy: log.deploy,
            result: log.result.clone(),
        }
    }

    fn finished(&self) -> bool {
        self.log().result.is_some()
    }

    /// The events so far and a receiver for the next ones, with no gap and no repeat.
    fn subscribe(&self) -> (Vec<JobEvent>, broadcast::Receiver<JobEvent>) {
        let log = self.log();
        (log.events.clone(), self.tx.subscribe())
    }

    fn events_after(&self, seq: Option<usize>) -> Vec<JobEvent> {
        let start = seq.map_or(0, |s| s + 1);
        self.log().events.iter().skip(start).cloned().collect()
    }
}

/// The console's jobs, newest kept in memory (history proper is in each service's store).
#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    all: Mutex<BTreeMap<u64, Arc<Job>>>,
}

/// Jobs kept in memory for the pages; older ones are in the store's history.
const KEEP_JOBS: usize = 200;

impl Jobs {
    fn all(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Job>>> {
        self.all.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.all().get(&id).cloned()
    }

    /// The unfinished job of `service`, if any.
    pub fn running(&self, service: &str) -> Option<Arc<Job>> {
        self.all()
            .values()
            .find(|j| j.service == service && !j.finished())
            .cloned()
    }

    pub fn recent(&self, service: &str, n: usize) -> Vec<JobSummary> {
        self.all()
            .values()
            .rev()
            .filter(|j| j.service == service)
            .take(n)
            .map(|j| j.summary())
            .collect()
    }

    /// Registers a new job unless one of the same service is running.
    pub(crate) fn start(
        &self,
        service: &str,
        kind: &'static str,
        caller: &Caller,
        version: Option<String>,
    ) -> ApiResult<Arc<Job>> {
        let mut all = self.all();
        if let Some(running) = all.values().find(|j| j.service == service && !j.finished()) {
            return Err(ApiError::conflict(format!(
                "a {} of `{service}` by {} is running (job {}); wait for it to finish",
                running.kind, running.actor, running.id
            )));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let job = Arc::new(Job {
            id,
            service: service.to_string(),
            kind,
            actor: caller.actor.clone(),
            peer: caller.peer.clone(),
            version,
            started_ms: nonstop_store::now_ms(),
            log: Mutex::new(JobLog::default()),
            tx: broadcast::channel(1024).0,
        });
        all.insert(id, job.clone());
        while all.len() > KEEP_JOBS {
            let Some((&oldest, _)) = all.iter().find(|(_, j)| j.finished()) else {
                break;
            };
            all.remove(&oldest);
        }
        Ok(job)
    }
}

/// What a job does on its thread.
pub(crate) enum Work {
    Deploy(DeployRequest),
    /// With `true`: even past a database migration that cannot be undone.
    Rollback(bool),
    /// The decision on a paused deploy whose process is gone, by whom.
    Decide(nonstop_engine::Decision, String),
}

/// Runs `work` on its own thread with a current-thread runtime; returns at once.
pub(crate) fn spawn(app: &App, job: Arc<Job>, work: Work, upload: Option<Upload>) -> ApiResult<()> {
    let app = app.clone();
    let thread_job = job.clone();
    std::thread::Builder::new()
        .name(format!("{}-{}", job.kind, job.id))
        .spawn(move || {
            let job = thread_job;
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&app, &job, work)))
                    .unwrap_or_else(|_| {
                        Err(DeployError::Failed("the deploy thread panicked".into()))
                    });
            drop(upload);
            let result = match outcome {
                Ok(report) => JobResult {
                    outcome: "succeeded",
                    message: format!(
                        "{} {} in {:.1}s",
                        report.version,
                        if job.kind == "rollback" {
                            "is back"
                        } else {
                            "is live"
                        },
                        report.duration_ms as f64 / 1000.0
                    ),
                    report: Some(report),
                },
                Err(e) => JobResult {
                    outcome: match e {
                        DeployError::RolledBack(_) => "rolled-back",
                        DeployError::Refused(_) => "refused",
                        DeployError::Environment(_) => "stopped",
                        DeployError::Failed(_) => "failed",
                    },
                    message: e.to_string(),
                    report: None,
                },
            };
            let record = AuditRecordOwned {
                actor: job.actor.clone(),
                peer: job.peer.clone(),
                action: format!("{}-finished", job.kind),
                service: Some(job.service.clone()),
                node: None,
                outcome: result.outcome.to_string(),
                detail: format!("job {}: {}", job.id, result.message),
            };
            job.finish(result);
            write_audit(&app.accounts, &record);
        })
        .map_err(|e| ApiError::internal(format!("cannot start a deploy thread: {e}")))?;
    Ok(())
}

fn run(app: &App, job: &Arc<Job>, work: Work) -> Result<DeployReport, DeployError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DeployError::Failed(format!("cannot start a runtime: {e}")))?;
    let emitter = job.clone();
    let mut engine = app.drivers.engine(
        &job.service,
        Box::new(move |event: &Event| emitter.engine_event(event)),
    )?;
    engine.act_for(&format!("{} via console", job.actor));
    rt.block_on(async {
        match work {
            Work::Deploy(request) => engine.deploy(request).await,
            Work::Rollback(force) => engine.rollback_with(force).await,
            Work::Decide(decision, by) => match engine.decide(decision, &by).await? {
                nonstop_engine::Decided::Resumed(report) => Ok(report),
                nonstop_engine::Decided::Undone { deploy } => Err(DeployError::RolledBack(
                    format!("deploy #{deploy} aborted by {by}; undone, the previous state serves"),
                )),
                nonstop_engine::Decided::Relayed { deploy, pid } => Err(DeployError::Refused(
                    format!("deploy #{deploy} is carried on by its own process (pid {pid})"),
                )),
            },
        }
    })
}

/// The deploy form's fields, as JSON (artifact by name from the drop directory).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployForm {
    artifact: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    strategy: Option<String>,
    /// Wait for a promote once the new release is up, before the switch.
    #[serde(default)]
    pause_before_switch: bool,
}

/// Version and strategy as typed, checked before anything happens.
fn options(
    version: Option<String>,
    strategy: Option<String>,
) -> ApiResult<(Option<Version>, Option<Strategy>)> {
    let version = version
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    if let Some(v) = &version {
        nonstop_engine::releases::check_version(v).map_err(ApiError::bad_request)?;
    }
    let strategy = strategy
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .map(|s| Strategy::from_str(&s))
        .transpose()
        .map_err(ApiError::bad_request)?;
    Ok((version.map(Version), strategy))
}

/// Starts a deploy: `multipart/form-data` with an uploaded `artifact` file, or JSON naming an
/// artifact in the drop directory; `version` and `strategy` are optional. Answers 202 with the
/// job, whose progress streams from `…/jobs/{job}/events`.
pub async fn deploy(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(service): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    app.drivers.parts(&service)?;
    let multipart = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (artifact, version, strategy, pause_before_switch, upload) = if multipart {
        let form = Multipart::from_request(request, &app)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        let form = read_upload(&app, form).await?;
        (
            form.upload.path.clone(),
            form.version,
            form.strategy,
            form.pause_before_switch,
            Some(form.upload),
        )
    } else {
        let ApiJson(form) = ApiJson::<DeployForm>::from_request(request, &app).await?;
        let path = artifacts::in_drop_dir(app.options.artifacts.as_deref(), &form.artifact)?;
        (
            path,
            form.version,
            form.strategy,
            form.pause_before_switch,
            None,
        )
    };
    let (version, strategy) = options(version, strategy)?;
    let name = artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let job = app.jobs.start(
        &service,
        "deploy",
        &caller,
        version.as_ref().map(|v| v.to_string()),
    )?;
    let detail = format!(
        "job {}: {name}{}{}",
        job.id,
        version
            .as_ref()
            .map(|v| format!(" as {v}"))
            .unwrap_or_default(),
        strategy
            .map(|s| format!(" ({})", s.as_str()))
            .unwrap_or_default()
    );
    let request = DeployRequest {
        artifact,
        version,
        strategy,
        env: BTreeMap::new(),
        pause_before_switch,
    };
    spawn(&app, job.clone(), Work::Deploy(request), upload)?;
    Ok(accepted(&job, detail))
}

pub(crate) fn accepted(job: &Job, detail: String) -> Response {
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "job": job.id,
            "events": format!("/api/services/{}/jobs/{}/events", job.service, job.id),
        })),
    )
        .into_response();
    response.extensions_mut().insert(AuditNote::detail(detail));
    response
}

/// The rollback's optional JSON body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackForm {
    /// Roll back even past a migration that cannot be undone (the page asks to confirm first).
    #[serde(default)]
    force_past_migration: bool,
}

/// Puts the previous release back; refused past a non-reversible migration unless
/// `force_past_migration` (audited as such).
pub async fn rollback(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
    Path(service): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let form: RollbackForm = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackForm::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("rollback body: {e}")))?
    };
    app.drivers.parts(&service)?;
    let job = app.jobs.start(&service, "rollback", &caller, None)?;
    let force = form.force_past_migration;
    spawn(&app, job.clone(), Work::Rollback(force), None)?;
    let detail = if force {
        format!(
            "job {}: forced past a migration that cannot be undone",
            job.id
        )
    } else {
        format!("job {}", job.id)
    };
    Ok(accepted(&job, detail))
}

/// The multipart deploy form, its file written to the upload area.
struct UploadForm {
    upload: Upload,
    version: Option<String>,
    strategy: Option<String>,
    pause_before_switch: bool,
}

async fn read_upload(app: &App, mut form: Multipart) -> ApiResult<UploadForm> {
    let limit = app.options.upload_limit;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the artifact is larger than the upload limit of {limit} bytes; nothing was changed"
            ),
        )
    };
    let field_error = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request(format!("unreadable upload: {}", e.body_text()))
        }
    };
    let (mut upload, mut version, mut strategy) = (None, None, None);
    let mut pause_before_switch = false;
    while let Some(mut field) = form.next_field().await.map_err(field_error)? {
        match field.name().unwrap_or("") {
            "artifact" => {
                if upload.is_some() {
                    return Err(ApiError::bad_request("send one `artifact` file"));
                }
                let name = field.file_name().unwrap_or("").to_string();
                let slot = artifacts::Upload::create(&app.options.state, &name)?;
                let mut file = tokio::fs::File::create(&slot.path)
                    .await
                    .map_err(|e| ApiError::internal(format!("upload: {e}")))?;
                let mut written = 0usize;
                while let Some(chunk) = field.chunk().await.map_err(field_error)? {
                    written += chunk.len();
                    if written > limit {
                        return Err(too_large());
                    }
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| ApiError::internal(format!("upload: {e}")))?;
                }
                file.sync_all()
                    .await
                    .map_err(|e| ApiError::internal(format!("upload: {e}")))?;
                if written == 0 {
                    return Err(ApiError::bad_request("the uploaded artifact is empty"));
                }
                upload = Some(slot);
            }
            "version" => version = Some(text_field(field).await?),
            "strategy" => strategy = Some(text_field(field).await?),
            "pause_before_switch" => {
                pause_before_switch = matches!(text_field(field).await?.as_str(), "true" | "on")
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected form field `{other}`: send artifact, version, strategy and pause_before_switch"
                )));
            }
        }
    }
    let upload = upload.ok_or_else(|| ApiError::bad_request("the form has no `artifact` file"))?;
    Ok(UploadForm {
        upload,
        version,
        strategy,
        pause_before_switch,
    })
}

async fn text_field(field: axum::extract::multipart::Field<'_>) -> ApiResult<String> {
    let text = field
        .text()
        .await
        .map_err(|e| ApiError::bad_request(format!("unreadable form field: {}", e.body_text())))?;
    if text.len() > 256 {
        return Err(ApiError::bad_request("a form field is too long"));
    }
    Ok(text)
}

fn job_of(app: &App, service: &str, id: u64) -> ApiResult<Arc<Job>> {
    app.jobs
        .get(id)
        .filter(|j| j.service == service)
        .ok_or_else(|| ApiError::not_found(format!("`{service}` has no console job {id}")))
}

/// A job with all its events so far.
pub async fn job(
    State(app): State<App>,
    Path((service, id)): Path<(String, u64)>,
) -> ApiResult<Response> {
    let job = job_of(&app, &service, id)?;
    let (events, _) = job.subscribe();
    Ok(axum::Json(json!({ "job": job.summary(), "events": events })).into_response())
}

/// Where an event stream is.
struct Feed {
    job: Arc<Job>,
    backlog: std::collections::VecDeque<JobEvent>,
    rx: broadcast::Receiver<JobEvent>,
    last: Option<usize>,
    done: bool,
}

/// The job's events as server-sent events: everything so far, then each as it happens, ending
/// with `finished`.
pub async fn events(
    State(app): State<App>,
    Path((service, id)): Path<(String, u64)>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let job = job_of(&app, &service, id)?;
    let (past, rx) = job.subscribe();
    let feed = Feed {
        job,
        backlog: past.into(),
        rx,
        last: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        if feed.done {
            return None;
        }
        let event = loop {
            if let Some(event) = feed.backlog.pop_front() {
                break event;
            }
            match feed.rx.recv().await {
                Ok(event) if feed.last.is_some_and(|l| event.seq <= l) => continue,
                Ok(event) => break event,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    feed.backlog = feed.job.events_after(feed.last).into();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        };
        feed.last = Some(event.seq);
        feed.done = event.kind == "finished";
        let sse = SseEvent::default()
            .event("job")
            .json_data(&event)
            .unwrap_or_else(|_| SseEvent::default().data("{}"));
        Some((Ok(sse), feed))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// For the uploads module: where a job's files go.
pub fn uploads_dir(state: &std::path::Path) -> PathBuf {
    state.join("uploads")
}
