//! nginx OSS has no per-upstream counters: a canary is judged on an access log in nonstop's
//! format ([`LOG_FORMAT`]), read incrementally, counted per upstream address (docs/balancers/nginx.md).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nonstop_ports::Traffic;

use crate::NginxError;

/// The `log_format` nonstop reads; the service's `server { }` logs with it via
/// `access_log PATH nonstop;`.
pub const LOG_FORMAT: &str = "log_format nonstop '$upstream_addr $status $upstream_response_time';";

/// Cumulative traffic per upstream address (`127.0.0.1:8081`) since this process first read the log.
pub type Counts = BTreeMap<String, Traffic>;

/// One access log, followed from where it ended when first read.
#[derive(Debug, Clone)]
pub struct AccessLog {
    path: PathBuf,
    tail: Arc<Mutex<Tail>>,
}

#[derive(Debug, Default)]
struct Tail {
    /// The file being read, its inode and how far it was read; `None` before the first read.
    open: Option<(File, u64, u64)>,
    /// The end of a line nginx has not finished writing yet.
    partial: Vec<u8>,
    counts: Counts,
}

impl AccessLog {
    pub fn new(path: impl Into<PathBuf>) -> AccessLog {
        AccessLog {
            path: path.into(),
            tail: Arc::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what nginx appended since the last call and returns the counts so far. The first
    /// call starts at the log's end (a canary only compares windows); a truncated log restarts at
    /// 0; a rotated one is read to its end, then the new file from 0.
    pub async fn counts(&self) -> Result<Counts, NginxError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read())
            .await
            .map_err(|e| NginxError::Invalid(format!("access log reader: {e}")))?
    }

    fn read(&self) -> Result<Counts, NginxError> {
        let io = |source| NginxError::Io {
            what: "cannot read the access log",
            path: self.path.display().to_string(),
            source,
        };
        let mut tail = self.tail.lock().expect("access log lock");
        let tail = &mut *tail;
        let meta = std::fs::metadata(&self.path).map_err(io)?;
        match tail.open.as_mut() {
            None => {
                let file = File::open(&self.path).map_err(io)?;
                tail.open = Some((file, meta.ino(), meta.len()));
                return Ok(tail.counts.clone());
            }
            Some((file, ino, offset)) if *ino != meta.ino() => {
                // Rotated: finish the old file (nginx may have written to it until reopening).
                read_from(file, offset, &mut tail.partial, &mut tail.counts).map_err(io)?;
                tail.partial.clear();
                let file = File::open(&self.path).map_err(io)?;
                tail.open = Some((file, meta.ino(), 0));
            }
            Some((_, _, offset)) if meta.len() < *offset => {
                *offset = 0;
                tail.partial.clear();
            }
            Some(_) => {}
        }
        let (file, _, offset) = tail.open.as_mut().expect("opened above");
        read_from(file, offset, &mut tail.partial, &mut tail.counts).map_err(io)?;
        Ok(tail.counts.clone())
    }
}

fn read_from(
    file: &mut File,
    offset: &mut u64,
    partial: &mut Vec<u8>,
    counts: &mut Counts,
) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(*offset))?;
    let mut buf = std::mem::take(partial);
    *offset += file.read_to_end(&mut buf)? as u64;
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    count_lines(&buf[..complete], counts);
    *partial = buf[complete..].to_vec();
    Ok(())
}

/// Adds every complete line of `text` to `counts`; lines not in nonstop's format are skipped.
pub fn count_lines(text: &[u8], counts: &mut Counts) {
    for line in text.split(|b| *b == b'\n') {
        if let Ok(line) = std::str::from_utf8(line) {
            count_line(line, counts);
        }
    }
}

/// One line: `ADDR[, ADDR…] STATUS TIME[, TIME…]`. Each address is one try; every try but
/// the last failed (nginx tries the next server only after an error or timeout), the last one
/// failed when the status is 5xx. ` : ` separates the groups of an internal redirect.
fn count_line(line: &str, counts: &mut Counts) -> Option<()> {
    let mut tokens = line.split_ascii_whitespace().peekable();
    let mut addrs = Vec::new();
    loop {
        let token = tokens.next()?;
        if token == ":" {
            continue;
        }
        addrs.push(token.trim_end_matches(','));
        if !(token.ends_with(',') || tokens.peek() == Some(&":")) {
            break;
        }
    }
    let status: u16 = tokens.next()?.parse().ok()?;
    let times: Vec<f64> = tokens
        .filter(|t| *t != ":")
        .map(|t| t.trim_end_matches(',').parse().unwrap_or(0.0))
        .collect();
    let last = addrs.len() - 1;
    for (i, addr) in addrs.into_iter().enumerate() {
        if addr == "-" {
            continue;
        }
        let t = counts.entry(addr.to_string()).or_default();
        t.requests += 1;
        if i < last || status >= 500 {
            t.errors += 1;
        }
        t.latency_ms_sum += times.get(i).copied().unwrap_or(0.0) * 1000.0;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(text: &str) -> Counts {
        let mut c = Counts::new();
        count_lines(text.as_bytes(), &mut c);
        c
    }

    #[test]
    fn each_try_counts_and_only_the_last_has_the_status() {
        let c = counts(
            "127.0.0.1:8081 200 0.004\n\
             127.0.0.1:8082 500 0.010\n\
             127.0.0.1:8082, 127.0.0.1:8081 200 0.001, 0.002\n\
             127.0.0.1:8081 404 0.001\n\
             - 499 -\n\
             127.0.0.1:8081 : 127.0.0.1:9000 502 0.001 : 0.000\n\
             garbage\n",
        );
        let a = c["127.0.0.1:8081"];
        let b = c["127.0.0.1:8082"];
        // 8081: 200, the retry's 200, a 404 (not the release's fault), the failed try before
        // the redirect's group.
        assert_eq!((a.requests, a.errors), (4, 1), "{a:?}");
        assert!((a.latency_ms_sum - 8.0).abs() < 1e-9, "{a:?}");
        assert_eq!((b.requests, b.errors), (2, 2), "{b:?}");
        assert_eq!(c["127.0.0.1:9000"].errors, 1);
        assert!(!c.contains_key("-"));
    }

    #[test]
    fn the_log_is_followed_across_partial_lines_truncation_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.log");
        std::fs::write(&path, "127.0.0.1:1 200 0.001\n").unwrap();
        let log = AccessLog::new(&path);
        let read = || {
            log.read()
                .unwrap()
                .get("127.0.0.1:1")
                .copied()
                .unwrap_or_default()
        };
        // The first read starts at the end: lines from before are not this window's.
        assert_eq!(read().requests, 0);
        let append = |text: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        append("127.0.0.1:1 200 0.001\n127.0.0.1:1 50");
        assert_eq!(read().requests, 1, "the half line waits");
        append("3 0.001\n");
        assert_eq!((read().requests, read().errors), (2, 1));
        // Truncated (copytruncate): from 0 again; the counts stay cumulative.
        std::fs::write(&path, "127.0.0.1:1 200 0.001\n").unwrap();
        assert_eq!(read().requests, 3);
        // Rotated (mv + reopen): the rest of the old file, then the new one from 0.
        append("127.0.0.1:1 200 0.001\n");
        std::fs::rename(&path, dir.path().join("shop.log.1")).unwrap();
        std::fs::write(&path, "127.0.0.1:1 502 0.001\n").unwrap();
        let t = read();
        assert_eq!((t.requests, t.errors), (5, 2), "{t:?}");
        std::fs::remove_file(&path).unwrap();
        assert!(log.read().unwrap_err().to_string().contains("shop.log"));
    }

    /// What parsing costs: printed, so docs/balancers/nginx.md can quote it.
    #[test]
    fn parsing_rate() {
        let lines = 200_000;
        let mut text = String::new();
        for i in 0..lines {
            let status = if i % 20 == 0 { 500 } else { 200 };
            text.push_str(&format!(
                "127.0.0.1:{} {status} 0.00{}\n",
                8081 + i % 2,
                i % 10
            ));
        }
        let started = std::time::Instant::now();
        let c = counts(&text);
        let took = started.elapsed();
        let total: u64 = c.values().map(|t| t.requests).sum();
        let errors: u64 = c.values().map(|t| t.errors).sum();
        assert_eq!((total, errors), (lines, lines / 20));
        eprintln!(
            "access log parsing: {lines} lines ({} bytes) in {took:?} = {:.0} lines/s",
            text.len(),
            lines as f64 / took.as_secs_f64()
        );
    }
}
