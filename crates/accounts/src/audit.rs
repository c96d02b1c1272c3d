//! The audit log: who did what to which service, from where and with what outcome; append-only
//! (triggers refuse UPDATE and DELETE) and exportable as CSV safe to open in a spreadsheet, or JSON.

use std::io::Write;

use rusqlite::params;
use rusqlite::types::Value;
use serde::Serialize;

use crate::{Accounts, Result};

/// One event to record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditEntry<'a> {
    /// A user name, `token:OWNER/NAME`, or whatever the caller uses for the system itself.
    pub actor: &'a str,
    pub peer: &'a str,
    pub action: &'a str,
    pub service: Option<&'a str>,
    pub node: Option<&'a str>,
    pub outcome: &'a str,
    pub detail: &'a str,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub peer: String,
    pub action: String,
    pub service: Option<String>,
    pub node: Option<String>,
    pub outcome: String,
    pub detail: String,
}

/// Which records to read; `Default` is all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub service: Option<String>,
    pub actor: Option<String>,
    /// Only records at or after this time.
    pub since_ms: Option<i64>,
    /// At most this many (the newest); 0 means no limit.
    pub limit: usize,
}

const CSV_HEADER: [&str; 9] = [
    "id", "at_ms", "actor", "peer", "action", "service", "node", "outcome", "detail",
];

/// `value` as one CSV field (RFC 4180). A value a spreadsheet would take for a formula gets a
/// leading `'`, so that an actor or detail like `=HYPERLINK(…)` is shown, not evaluated.
pub fn csv_cell(value: &str) -> String {
    let neutralised = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_string()
    };
    if neutralised.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", neutralised.replace('"', "\"\""))
    } else {
        neutralised
    }
}

/// `text` with control and bidirectional-override characters written as `\u{…}`, so that a
/// name like `eve\r\nadmin ok` or one with U+202E cannot forge or reorder what a reader sees.
pub fn escape_text(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            out.push_str(&format!("\\u{{{:04x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Accounts {
    /// Records `entry` at `now_ms` (every text with [`escape_text`]); returns its id.
    pub fn audit(&self, entry: &AuditEntry<'_>, now_ms: i64) -> Result<i64> {
        let e = |t: &str| escape_text(t).into_owned();
        self.db.execute(
            "INSERT INTO audit (at_ms, actor, peer, action, service, node, outcome, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                now_ms,
                e(entry.actor),
                e(entry.peer),
                e(entry.action),
                entry.service.map(e),
                entry.node.map(e),
                e(entry.outcome),
                e(entry.detail)
            ],
        )?;
        Ok(self.db.last_insert_rowid())
    }

    /// The records `filter` selects, newest first.
    pub fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let mut sql = String::from(
            "SELECT id, at_ms, actor, peer, action, service, node, outcome, detail
             FROM audit WHERE 1",
        );
        let mut args: Vec<Value> = Vec::new();
        if let Some(service) = &filter.service {
            args.push(Value::Text(service.clone()));
            sql.push_str(&format!(" AND service = ?{}", args.len()));
        }
        if let Some(actor) = &filter.actor {
            args.push(Value::Text(actor.clone()));
            sql.push_str(&format!(" AND actor = ?{}", args.len()));
        }
        if let Some(since_ms) = filter.since_ms {
            args.push(Value::Integer(since_ms));
            sql.push_str(&format!(" AND at_ms >= ?{}", args.len()));
        }
        // SQLite reads a negative LIMIT as none.
        let limit = match filter.limit {
            0 => -1,
            n => i64::try_from(n).unwrap_or(i64::MAX),
        };
        args.push(Value::Integer(limit));
        sql.push_str(&format!(
            " ORDER BY at_ms DESC, id DESC LIMIT ?{}",
            args.len()
        ));
        let mut stmt = self.db.prepare(&sql)?;
        let records = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok(AuditRecord {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    actor: r.get(2)?,
                    peer: r.get(3)?,
                    action: r.get(4)?,
                    service: r.get(5)?,
                    node: r.get(6)?,
                    outcome: r.get(7)?,
                    detail: r.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(records)
    }

    /// Writes the records `filter` selects as CSV with a header, CRLF line ends, newest first;
    /// returns how many records it wrote.
    pub fn export_audit_csv(&self, filter: &AuditFilter, mut out: impl Write) -> Result<usize> {
        let records = self.audit_log(filter)?;
        out.write_all(CSV_HEADER.join(",").as_bytes())?;
        out.write_all(b"\r\n")?;
        for r in &records {
            let opt = |v: &Option<String>| csv_cell(v.as_deref().unwrap_or(""));
            let line = [
                r.id.to_string(),
                r.at_ms.to_string(),
                csv_cell(&r.actor),
                csv_cell(&r.peer),
                csv_cell(&r.action),
                opt(&r.service),
                opt(&r.node),
                csv_cell(&r.outcome),
                csv_cell(&r.detail),
            ]
            .join(",");
            out.write_all(line.as_bytes())?;
            out.write_all(b"\r\n")?;
        }
        out.flush()?;
        Ok(records.len())
    }

    /// Writes the records `filter` selects as a JSON array, newest first; returns how many.
    pub fn export_audit_json(&self, filter: &AuditFilter, mut out: impl Write) -> Result<usize> {
        let records = self.audit_log(filter)?;
        serde_json::to_writer(&mut out, &records)?;
        out.write_all(b"\n")?;
        out.flush()?;
        Ok(records.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    fn entry<'a>(actor: &'a str, service: Option<&'a str>, detail: &'a str) -> AuditEntry<'a> {
        AuditEntry {
            actor,
            peer: "10.0.0.1",
            action: "deploy",
            service,
            node: Some("web-1"),
            outcome: "ok",
            detail,
        }
    }

    #[test]
    fn records_come_back_newest_first_and_filtered() {
        let f = fixture();
        let a = f.audit(&entry("alice", Some("shop"), "v1"), T0).unwrap();
        let b = f.audit(&entry("bob", Some("api"), "v2"), T0 + 10).unwrap();
        let c = f.audit(&entry("alice", None, "login"), T0 + 20).unwrap();
        let d = f
            .audit(&entry("alice", Some("shop"), "v3"), T0 + 20)
            .unwrap();
        assert!(a < b && b < c && c < d);

        let ids = |filter: AuditFilter| -> Vec<i64> {
            f.audit_log(&filter).unwrap().iter().map(|r| r.id).collect()
        };
        assert_eq!(ids(AuditFilter::default()), [d, c, b, a]);
        assert_eq!(
            ids(AuditFilter {
                service: Some("shop".into()),
                ..Default::default()
            }),
            [d, a]
        );
        assert_eq!(
            ids(AuditFilter {
                actor: Some("alice".into()),
                ..Default::default()
            }),
            [d, c, a]
        );
        assert_eq!(
            ids(AuditFilter {
                since_ms: Some(T0 + 10),
                ..Default::default()
            }),
            [d, c, b]
        );
        assert_eq!(
            ids(AuditFilter {
                limit: 2,
                ..Default::default()
            }),
            [d, c]
        );
        assert_eq!(
            ids(AuditFilter {
                service: Some("shop".into()),
                actor: Some("alice".into()),
                since_ms: Some(T0 + 1),
                limit: 5,
            }),
            [d]
        );

        let record = &f.audit_log(&AuditFilter::default()).unwrap()[1];
        assert_eq!(
            record,
            &AuditRecord {
                id: c,
                at_ms: T0 + 20,
                actor: "alice".into(),
                peer: "10.0.0.1".into(),
                action: "deploy".into(),
                service: None,
                node: Some("web-1".into()),
                outcome: "ok".into(),
                detail: "login".into(),
            }
        );
    }

    #[test]
    fn the_log_is_append_only() {
        let f = fixture();
        let id = f.audit(&entry("alice", Some("shop"), "v1"), T0).unwrap();
        let update =
            f.db.execute("UPDATE audit SET actor = 'mallory' WHERE id = ?1", [id]);
        assert!(
            update
                .as_ref()
                .is_err_and(|e| e.to_string().contains("append-only")),
            "{update:?}"
        );
        let delete = f.db.execute("DELETE FROM audit WHERE id = ?1", [id]);
        assert!(
            delete
                .as_ref()
                .is_err_and(|e| e.to_string().contains("append-only")),
            "{delete:?}"
        );
        let all = f.audit_log(&AuditFilter::default()).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].actor, "alice");
        // Deleting the user leaves their name in the log.
        ready_user(&f, "alice", crate::Role::Viewer);
        assert!(f.delete_user("alice").unwrap());
        assert_eq!(f.audit_log(&AuditFilter::default()).unwrap().len(), 1);
    }

    #[test]
    fn control_and_bidi_characters_are_escaped_in_every_field() {
        let f = fixture();
        let forged = "eve\r\n2026-01-01 admin ok\u{202e}nimda";
        f.audit(
            &AuditEntry {
                actor: forged,
                peer: "10.0.0.1\n",
                action: "login",
                outcome: "denied",
                detail: "\u{2066}x\u{2069}",
                ..Default::default()
            },
            T0,
        )
        .unwrap();
        let record = &f.audit_log(&AuditFilter::default()).unwrap()[0];
        assert_eq!(
            record.actor,
            "eve\\u{000d}\\u{000a}2026-01-01 admin ok\\u{202e}nimda"
        );
        assert_eq!(record.peer, "10.0.0.1\\u{000a}");
        assert_eq!(record.detail, "\\u{2066}x\\u{2069}");
        assert_eq!(escape_text("plain é"), "plain é");
    }

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell(""), "");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_cell("a\r\nb"), "\"a\r\nb\"");
        assert_eq!(csv_cell("=1+1"), "'=1+1");
        assert_eq!(csv_cell("+1"), "'+1");
        assert_eq!(csv_cell("-1"), "'-1");
        assert_eq!(csv_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_cell("\tx"), "'\tx");
        // Defused and quoted: the apostrophe goes inside the quotes.
        assert_eq!(csv_cell("\rx"), "\"'\rx\"");
        assert_eq!(
            csv_cell("=HYPERLINK(\"http://evil\",\"x\")"),
            "\"'=HYPERLINK(\"\"http://evil\"\",\"\"x\"\")\""
        );
        // Only the start of a cell makes a formula.
        assert_eq!(csv_cell("a=b"), "a=b");
        assert_eq!(csv_cell("2024-01-01"), "2024-01-01");
    }

    #[test]
    fn csv_export_escapes_every_text_cell() {
        let f = fixture();
        f.audit(&entry("alice", Some("shop"), "v1"), T0).unwrap();
        f.audit(
            &AuditEntry {
                actor: "=cmd|' /C calc'!A0",
                peer: "10.0.0.2",
                action: "login",
                service: None,
                node: None,
                outcome: "refused",
                detail: "said \"hi\",\nthen left",
            },
            T0 + 1,
        )
        .unwrap();
        let mut out = Vec::new();
        assert_eq!(
            f.export_audit_csv(&AuditFilter::default(), &mut out)
                .unwrap(),
            2
        );
        let csv = String::from_utf8(out).unwrap();
        assert_eq!(
            csv,
            format!(
                "id,at_ms,actor,peer,action,service,node,outcome,detail\r\n\
                 2,{},'=cmd|' /C calc'!A0,10.0.0.2,login,,,refused,\"said \"\"hi\"\",\\u{{000a}}then left\"\r\n\
                 1,{},alice,10.0.0.1,deploy,shop,web-1,ok,v1\r\n",
                T0 + 1,
                T0
            )
        );
    }

    #[test]
    fn json_export_is_an_array_of_records() {
        let f = fixture();
        f.audit(&entry("alice", Some("shop"), "=1"), T0).unwrap();
        f.audit(&entry("bob", None, "x"), T0 + 1).unwrap();
        let mut out = Vec::new();
        let filter = AuditFilter {
            actor: Some("alice".into()),
            ..Default::default()
        };
        assert_eq!(f.export_audit_json(&filter, &mut out).unwrap(), 1);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!([{
                "id": 1,
                "at_ms": T0,
                "actor": "alice",
                "peer": "10.0.0.1",
                "action": "deploy",
                "service": "shop",
                "node": "web-1",
                "outcome": "ok",
                "detail": "=1",
            }])
        );
    }
}
