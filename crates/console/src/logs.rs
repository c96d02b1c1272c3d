//! Live log of one node's instance as server-sent events: the last lines, then each new line,
//! switching to the new instance's log file when a deploy replaces it (the store says which).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use nonstop_ports::NodeName;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error::{ApiError, ApiResult};
use crate::services::with_store;
use crate::state::App;

const POLL: Duration = Duration::from_millis(250);
/// How often the store is asked whether the node runs another instance (another log file).
const RECHECK: Duration = Duration::from_secs(1);
const MAX_READ: usize = 256 * 1024;
const MAX_LINE: usize = 16 * 1024;

#[derive(Deserialize)]
pub struct LogQuery {
    /// Lines of history to send first (default 100, at most 1000).
    lines: Option<usize>,
}

/// Where a log stream is.
struct Tail {
    base: PathBuf,
    service: String,
    node: String,
    file: Option<PathBuf>,
    offset: u64,
    partial: Vec<u8>,
    queue: VecDeque<SseEvent>,
    checked: Option<Instant>,
    history: usize,
}

impl Tail {
    /// The log file the store records for the node now.
    async fn current_file(&self) -> Option<PathBuf> {
        let node = NodeName(self.node.clone());
        with_store(self.base.clone(), &self.service, move |s| s.instance(&node))
            .await
            .ok()
            .flatten()
            .map(|r| r.instance.log)
    }

    async fn poll(&mut self) {
        if self.checked.is_none_or(|t| t.elapsed() >= RECHECK) {
            self.checked = Some(Instant::now());
            let file = self.current_file().await;
            if file != self.file {
                if let Some(path) = &file {
                    self.queue.push_back(
                        SseEvent::default()
                            .event("file")
                            .data(path.display().to_string()),
                    );
                    self.offset = tail_offset(path, self.history).await;
                    self.history = 0;
                }
                self.file = file;
                self.partial.clear();
            }
        }
        let Some(path) = &self.file else {
            return;
        };
        let Ok(mut file) = tokio::fs::File::open(path).await else {
            return;
        };
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Truncated or replaced: start again from its beginning.
            self.offset = 0;
            self.partial.clear();
        }
        if file.seek(SeekFrom::Start(self.offset)).await.is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(read) = (&mut file)
            .take(MAX_READ as u64)
            .read_to_end(&mut buf)
            .await
        else {
            return;
        };
        self.offset += read as u64;
        self.partial.extend_from_slice(&buf);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.push_line(&line[..line.len() - 1]);
        }
        if self.partial.len() > MAX_LINE {
            let line = std::mem::take(&mut self.partial);
            self.push_line(&line);
        }
    }

    fn push_line(&mut self, line: &[u8]) {
        self.queue.push_back(line_event(line));
    }
}

/// The most of a log's end looked at for its last lines: opening a stream on a big log must not
/// read all of it.
const TAIL_WINDOW: u64 = 1 << 20;

/// Byte offset where the last `lines` lines of `path` begin (within its last [`TAIL_WINDOW`]
/// bytes; a longer history starts at the first line that begins inside it).
async fn tail_offset(path: &std::path::Path, lines: usize) -> u64 {
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return 0;
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    if lines == 0 {
        return len;
    }
    // One byte more than the window, to see whether the window starts a line.
    let start = len.saturating_sub(TAIL_WINDOW + 1);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).await.is_err()
        || (&mut file)
            .take(len - start)
            .read_to_end(&mut bytes)
            .await
            .is_err()
    {
        return len;
    }
    let mut seen = 0;
    for (i, b) in bytes.iter().enumerate().rev() {
        if *b == b'\n' && i + 1 != bytes.len() {
            seen += 1;
            if seen == lines {
                return start + (i + 1) as u64;
            }
        }
    }
    if start == 0 {
        return 0;
    }
    // The window starts mid-line: begin at the first whole line in it.
    bytes
        .iter()
        .position(|b| *b == b'\n')
        .map_or(len, |i| start + (i + 1) as u64)
}

type Events = futures_util::stream::BoxStream<'static, Result<SseEvent, Infallible>>;

/// Follows the log of `node`: `file` events name the file, `line` events carry its lines. A node
/// on another host is followed through its agent, which streams its own record's log.
pub async fn follow(
    State(app): State<App>,
    Path((service, node)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> ApiResult<Response> {
    let parts = app.drivers.parts(&service)?;
    let Some(node_config) = parts.config.node(&node) else {
        return Err(ApiError::not_found(format!(
            "service `{service}` has no node `{node}`"
        )));
    };
    let history = query.lines.unwrap_or(100).min(1000);
    if let Some(host) = node_config.host() {
        let agent = app.drivers.agent(host)?;
        let response = agent
            .logs(&service, &node, history, true)
            .await
            .map_err(|e| ApiError::new(axum::http::StatusCode::BAD_GATEWAY, e.to_string()))?;
        return Ok(Sse::new(remote_lines(host, response))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let tail = Tail {
        base: parts.base,
        service,
        node,
        file: None,
        offset: 0,
        partial: Vec::new(),
        queue: VecDeque::new(),
        checked: None,
        history,
    };
    let stream = futures_util::stream::unfold(tail, |mut tail| async move {
        loop {
            if let Some(event) = tail.queue.pop_front() {
                return Some((Ok::<_, Infallible>(event), tail));
            }
            tail.poll().await;
            if tail.queue.is_empty() {
                tokio::time::sleep(POLL).await;
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// An agent's log stream as `line` events (after one `file` event naming the host).
fn remote_lines(host: &str, response: hyper::Response<hyper::body::Incoming>) -> Events {
    use http_body_util::BodyExt;
    let first = SseEvent::default()
        .event("file")
        .data(format!("{host}: the node's current log"));
    let chunks = response.into_body().into_data_stream();
    let lines = futures_util::stream::unfold(
        (chunks, Vec::<u8>::new(), VecDeque::<SseEvent>::new()),
        |(mut chunks, mut partial, mut queue)| async move {
            loop {
                if let Some(event) = queue.pop_front() {
                    return Some((Ok(event), (chunks, partial, queue)));
                }
                let chunk = chunks.next().await?.ok()?;
                partial.extend_from_slice(&chunk);
                while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=end).collect();
                    queue.push_back(line_event(&line[..line.len() - 1]));
                }
                if partial.len() > MAX_LINE {
                    queue.push_back(line_event(&std::mem::take(&mut partial)));
                }
            }
        },
    );
    futures_util::stream::once(async move { Ok(first) })
        .chain(lines)
        .boxed()
}

fn line_event(line: &[u8]) -> SseEvent {
    let text = String::from_utf8_lossy(line);
    SseEvent::default()
        .event("line")
        .data(text.trim_end_matches('\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_tail_is_found_in_the_end_of_the_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.log");
        std::fs::write(&small, b"a\nb\nc\n").unwrap();
        assert_eq!(tail_offset(&small, 2).await, 2);
        assert_eq!(tail_offset(&small, 9).await, 0);
        assert_eq!(tail_offset(&small, 0).await, 6);
        // 3 MiB of lines: the last two are found without reading the rest.
        let big = dir.path().join("big.log");
        let line = format!("{}\n", "x".repeat(1023));
        std::fs::write(&big, line.repeat(3 * 1024)).unwrap();
        let len = 3 * 1024 * 1024;
        assert_eq!(tail_offset(&big, 2).await, len - 2048);
        // More history than the window holds starts at the window's first whole line.
        assert_eq!(tail_offset(&big, 5000).await, len - TAIL_WINDOW);
    }
}
