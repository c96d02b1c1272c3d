//! Targeted preview and maintenance mode on HAProxy, without a reload: nonstop fills maps that
//! `use-server`/`force-persist` and `http-request return` lines in haproxy.cfg read
//! (the exact lines: docs/balancers/haproxy.md).

use nonstop_ports::{Maintenance, PortResult, Preview};

use crate::maps::MapFile;
use crate::{HaproxyBalancer, HaproxyError};

/// The same pages as the built-in proxy's, one line each (a map value is one line).
fn pages(m: &Maintenance) -> (String, String) {
    let mut text = String::new();
    for c in m.message.chars() {
        match c {
            '&' => text.push_str("&amp;"),
            '<' => text.push_str("&lt;"),
            '>' => text.push_str("&gt;"),
            '"' => text.push_str("&quot;"),
            '\'' => text.push_str("&#39;"),
            '\n' | '\r' => text.push(' '),
            c => text.push(c),
        }
    }
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Maintenance</title></head><body><h1>Down for maintenance</h1><p>{text}</p></body></html>"
    );
    let mut message = String::new();
    for c in m.message.chars() {
        match c {
            '"' => message.push_str("\\\""),
            '\\' => message.push_str("\\\\"),
            c if c.is_control() => message.push_str(&format!("\\u{:04x}", c as u32)),
            c => message.push(c),
        }
    }
    let json = format!(
        "{{\"error\":\"maintenance\",\"message\":\"{message}\",\"retry_after_s\":{}}}",
        m.retry_after_s
    );
    (html, json)
}

impl HaproxyBalancer {
    fn map(&self, which: &str, path: Option<&std::path::PathBuf>) -> Result<MapFile, HaproxyError> {
        path.map(|p| MapFile::new(p)).ok_or_else(|| {
            HaproxyError::Invalid(format!(
                "the haproxy balancer of backend `{}` has no `{which}`: add it to the service's balancer table and the lines of docs/balancers/haproxy.md to haproxy.cfg",
                self.backend
            ))
        })
    }

    /// Keys `BACKEND` (a preview is on) and `BACKEND/SERVER` (one per preview member).
    pub(crate) async fn apply_preview(&self, preview: Option<&Preview>) -> PortResult<()> {
        let map = self.map("preview_map", self.preview_map.as_ref())?;
        let prefix = format!("{}/", self.backend);
        let mut wanted: Vec<String> = Vec::new();
        if let Some(p) = preview {
            for node in &p.nodes {
                wanted.push(self.server(node)?);
            }
            wanted.push(self.backend.clone());
        }
        let entries = map.entries(&self.api).await?;
        // Members first, the switch key last; on clearing, the switch key goes first.
        if preview.is_none() && entries.iter().any(|(k, _)| *k == self.backend) {
            map.remove(&self.api, &self.backend).await?;
        }
        for (key, _) in &entries {
            if key.starts_with(&prefix) && !wanted.contains(key) {
                map.remove(&self.api, key).await?;
            }
        }
        for key in &wanted {
            if !entries.iter().any(|(k, _)| k == key) {
                map.put(&self.api, &entries, key, "1").await?;
            }
        }
        map.save(&self.api).await?;
        Ok(())
    }

    /// Keys `BACKEND.retry`, `BACKEND.json`, `BACKEND.html` (the switch, set last) in the
    /// maintenance map; the allowed networks in the service's own `map_ip` file.
    pub(crate) async fn apply_maintenance(&self, m: Option<&Maintenance>) -> PortResult<()> {
        let map = self.map("maintenance_map", self.maintenance_map.as_ref())?;
        let allow = self.map("allow_map", self.allow_map.as_ref())?;
        let key = |suffix: &str| format!("{}.{suffix}", self.backend);
        let entries = map.entries(&self.api).await?;
        match m {
            Some(m) => {
                allow.clear(&self.api).await?;
                for net in &m.allow {
                    allow.put(&self.api, &[], &net.to_string(), "1").await?;
                }
                allow.save(&self.api).await?;
                let (html, json) = pages(m);
                map.put(
                    &self.api,
                    &entries,
                    &key("retry"),
                    &m.retry_after_s.to_string(),
                )
                .await?;
                map.put(&self.api, &entries, &key("json"), &json).await?;
                map.put(&self.api, &entries, &key("html"), &html).await?;
            }
            None => {
                for suffix in ["html", "json", "retry"] {
                    if entries.iter().any(|(k, _)| *k == key(suffix)) {
                        map.remove(&self.api, &key(suffix)).await?;
                    }
                }
                allow.clear(&self.api).await?;
                allow.save(&self.api).await?;
            }
        }
        map.save(&self.api).await?;
        Ok(())
    }

    /// Maintenance mode as the maps hold it now.
    pub(crate) async fn read_maintenance(&self) -> PortResult<Option<Maintenance>> {
        let (Some(path), Some(allow_path)) = (&self.maintenance_map, &self.allow_map) else {
            return Ok(None);
        };
        let entries = MapFile::new(path).entries(&self.api).await?;
        let value = |suffix: &str| {
            let key = format!("{}.{suffix}", self.backend);
            entries
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
        };
        if value("html").is_none() {
            return Ok(None);
        }
        let json: serde_json::Value =
            serde_json::from_str(&value("json").unwrap_or_default()).unwrap_or_default();
        let allow = MapFile::new(allow_path)
            .entries(&self.api)
            .await?
            .into_iter()
            .filter_map(|(k, _)| nonstop_ports::edge::parse_allow(&k).ok())
            .collect();
        Ok(Some(Maintenance {
            message: json["message"].as_str().unwrap_or_default().to_string(),
            allow,
            retry_after_s: value("retry").and_then(|v| v.parse().ok()).unwrap_or(0),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_for_html_json_and_the_runtime_api() {
        let m = Maintenance {
            message: "back at <5> & \"soon\"; ok".into(),
            allow: vec![],
            retry_after_s: 30,
        };
        let (html, json) = pages(&m);
        assert!(html.contains("back at &lt;5&gt; &amp; &quot;soon&quot;; ok"));
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["message"], "back at <5> & \"soon\"; ok");
        assert_eq!(parsed["retry_after_s"], 30);
    }
}
