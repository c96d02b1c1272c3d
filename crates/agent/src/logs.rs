//! A node's log over the agent API: its last lines from the end of the file, then, when
//! following, only what is appended (each poll reads from the offset the follower reached).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::routes::{ApiError, Result, Shared, node};

#[derive(Deserialize)]
pub struct LogQuery {
    #[serde(default = "default_lines")]
    lines: usize,
    #[serde(default)]
    follow: bool,
}

fn default_lines() -> usize {
    100
}

/// The node's current log: its last lines, then, when following, what is appended to it.
pub async fn logs(
    State(state): State<Shared>,
    Path((service_name, node_name)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> Result<Response> {
    let (svc, _, node) = node(&state, &service_name, &node_name)?;
    let record = svc
        .store
        .lock()
        .await
        .instance(&node)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no instance of {node} on this host"),
            )
        })?;
    let path = record.instance.log;
    let (tail, mut offset) = read_tail(&path, query.lines.min(10_000))
        .await
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, format!("log: {e}")))?;
    let (tx, rx) =
        tokio::sync::mpsc::channel::<std::result::Result<bytes::Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        if tx.send(Ok(bytes::Bytes::from(tail))).await.is_err() || !query.follow {
            return;
        }
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            if tx.is_closed() {
                return;
            }
            let Ok(fresh) = read_after(&path, &mut offset).await else {
                return;
            };
            if !fresh.is_empty() && tx.send(Ok(bytes::Bytes::from(fresh))).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok((
        [("content-type", "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// How often a followed log is looked at (its length only, unless it grew).
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// The most of a log's end read for its last lines, and the most sent per poll.
const TAIL_WINDOW: u64 = 1 << 20;

/// The last `lines` lines of the log at `path`, from at most its last [`TAIL_WINDOW`] bytes, and
/// the offset its end is at.
async fn read_tail(path: &std::path::Path, lines: usize) -> std::io::Result<(Vec<u8>, u64)> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    // One byte more than the window, to see whether the window starts a line.
    let start = len.saturating_sub(TAIL_WINDOW + 1);
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let mut text = Vec::new();
    (&mut file).take(len - start).read_to_end(&mut text).await?;
    let mut tail = tail_lines(&text, lines);
    if start > 0 && tail.len() == text.len() {
        // The window starts mid-line: drop that partial first line.
        let cut = tail.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
        tail = &tail[cut..];
    }
    Ok((tail.to_vec(), start + text.len() as u64))
}

/// What was appended to the log at `path` since `offset` (at most [`TAIL_WINDOW`] per call);
/// moves `offset` on. A file shorter than `offset` was truncated or replaced: read from its start.
async fn read_after(path: &std::path::Path, offset: &mut u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    if len < *offset {
        *offset = 0;
    }
    if len == *offset {
        return Ok(Vec::new());
    }
    file.seek(std::io::SeekFrom::Start(*offset)).await?;
    let mut fresh = Vec::new();
    (&mut file)
        .take(TAIL_WINDOW)
        .read_to_end(&mut fresh)
        .await?;
    *offset += fresh.len() as u64;
    Ok(fresh)
}

fn tail_lines(text: &[u8], lines: usize) -> &[u8] {
    let mut seen = 0;
    let end = text
        .len()
        .saturating_sub(usize::from(text.ends_with(b"\n")));
    for i in (0..end).rev() {
        if text[i] == b'\n' {
            seen += 1;
            if seen == lines {
                return &text[i + 1..];
            }
        }
    }
    if lines == 0 { &[] } else { text }
}

#[cfg(test)]
mod tests {
    use super::tail_lines;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
    }
}
