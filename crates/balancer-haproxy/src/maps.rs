//! HAProxy maps changed through the Runtime API (`show/add/set/del map`), then written back to
//! their file atomically, so what nonstop set survives an HAProxy reload.

use std::path::{Path, PathBuf};

use crate::{HaproxyError, RuntimeApi};

/// One map file declared in haproxy.cfg (`map(PATH)`, `map_ip(PATH)`).
#[derive(Debug, Clone)]
pub struct MapFile {
    pub path: PathBuf,
}

impl MapFile {
    pub fn new(path: &Path) -> MapFile {
        MapFile {
            path: path.to_path_buf(),
        }
    }

    fn name(&self) -> Result<String, HaproxyError> {
        let name = self.path.display().to_string();
        if name.is_empty() || name.contains([' ', ';', '\n', '\\']) {
            return Err(HaproxyError::Invalid(format!(
                "map file `{name}` must be a path without spaces, `;` or `\\`"
            )));
        }
        Ok(name)
    }

    /// The map's entries as HAProxy holds them now.
    pub async fn entries(&self, api: &RuntimeApi) -> Result<Vec<(String, String)>, HaproxyError> {
        let command = format!("show map {}", self.name()?);
        let answer = api.command(&command).await?;
        parse_show_map(&answer).map_err(|answer| HaproxyError::Refused {
            command: self.missing_hint(&command),
            answer,
        })
    }

    fn missing_hint(&self, command: &str) -> String {
        format!(
            "{command}` (declare the map in haproxy.cfg, e.g. `acl … map({}) -m found`, create the file, and reload HAProxy; docs/balancers/haproxy.md",
            self.path.display()
        )
    }

    /// Sets `key` to `value`, adding the entry if it is not there.
    pub async fn put(
        &self,
        api: &RuntimeApi,
        entries: &[(String, String)],
        key: &str,
        value: &str,
    ) -> Result<(), HaproxyError> {
        let verb = if entries.iter().any(|(k, _)| k == key) {
            "set"
        } else {
            "add"
        };
        api.set(&format!(
            "{verb} map {} {} {}",
            self.name()?,
            cli_word(key),
            cli_word(value)
        ))
        .await
    }

    pub async fn remove(&self, api: &RuntimeApi, key: &str) -> Result<(), HaproxyError> {
        api.set(&format!("del map {} {}", self.name()?, cli_word(key)))
            .await
    }

    pub async fn clear(&self, api: &RuntimeApi) -> Result<(), HaproxyError> {
        api.set(&format!("clear map {}", self.name()?)).await
    }

    /// Writes HAProxy's current entries to the file (temp + rename), the format it loads at start.
    pub async fn save(&self, api: &RuntimeApi) -> Result<(), HaproxyError> {
        let mut text = String::from("# written by nonstop; changed through the Runtime API\n");
        for (key, value) in self.entries(api).await? {
            text.push_str(&format!("{key} {value}\n"));
        }
        let file_err = |e: std::io::Error| {
            HaproxyError::Invalid(format!(
                "cannot write map file {}: {e}",
                self.path.display()
            ))
        };
        let tmp = self.path.with_extension("nonstop-tmp");
        tokio::fs::write(&tmp, text).await.map_err(file_err)?;
        tokio::fs::rename(&tmp, &self.path).await.map_err(file_err)
    }
}

/// One Runtime API word: the CLI splits commands on `;` and words on spaces, and takes `\` as
/// an escape (an HTML entity's `;` must not end the command).
fn cli_word(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, ' ' | '\\' | '\t' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `show map` lines are `0xADDR key value`; a value may hold spaces.
fn parse_show_map(answer: &str) -> Result<Vec<(String, String)>, String> {
    let mut entries = Vec::new();
    for line in answer.lines().filter(|l| !l.trim().is_empty()) {
        let Some(rest) = line.strip_prefix("0x") else {
            return Err(line.trim().to_string());
        };
        let mut words = rest.splitn(3, ' ');
        let (_addr, key) = (words.next(), words.next().unwrap_or(""));
        entries.push((key.to_string(), words.next().unwrap_or("").to_string()));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_map_keeps_spaces_in_values_and_reports_errors() {
        let answer = "0x55d0c8 shop.html <p>down for a bit</p>\n0x55d0c9 shop.retry 120\n\n";
        assert_eq!(
            parse_show_map(answer).unwrap(),
            vec![
                ("shop.html".to_string(), "<p>down for a bit</p>".to_string()),
                ("shop.retry".to_string(), "120".to_string())
            ]
        );
        assert_eq!(
            parse_show_map("Unknown map identifier. Please use #<id> or <file>.\n").unwrap_err(),
            "Unknown map identifier. Please use #<id> or <file>."
        );
        assert_eq!(cli_word(r#"a b\c&lt;"#), r#"a\ b\\c&lt\;"#);
    }
}
