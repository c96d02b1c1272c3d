//! The one error type of configuration loading: where (file:line:column), what, and how to fix it.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
    /// The offending line of the file, shown under the message.
    pub snippet: Option<String>,
}

impl ConfigError {
    pub(crate) fn at(
        file: &Path,
        text: &str,
        span: std::ops::Range<usize>,
        message: String,
        hint: Option<String>,
    ) -> Self {
        let start = span.start.min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.len() - line_start + 1;
        let snippet = text[line_start..].lines().next().map(str::to_owned);
        ConfigError {
            file: file.to_path_buf(),
            line,
            column,
            message,
            hint,
            snippet,
        }
    }

    pub(crate) fn unreadable(file: &Path, err: &std::io::Error) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message: format!("cannot read the configuration file: {err}"),
            hint: Some("check the path and that this user may read it".into()),
            snippet: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )?;
        }
        if let Some(snippet) = self.snippet.as_deref().filter(|s| !s.trim().is_empty()) {
            write!(f, "\n{:>5} | {snippet}", self.line)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  help: {hint}")?;
        }
        Ok(())
    }
}
