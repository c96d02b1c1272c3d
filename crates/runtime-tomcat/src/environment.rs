//! For `config check`: every node's CATALINA_BASE exists with a `conf/server.xml`, and what its
//! `<Cluster>` (session replication) means for a session drain. Nothing is changed.

use crate::{TomcatConfig, TomcatError, strip_xml_comments};

/// What was verified, plus advice; an error names the base and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasesChecked {
    pub summary: String,
    pub advice: Vec<String>,
}

/// Checks the bases of `config`; `drain_sessions` is the service's `drain.sessions`.
pub fn check_bases(
    config: &TomcatConfig,
    drain_sessions: bool,
) -> Result<BasesChecked, TomcatError> {
    let mut clustered = Vec::new();
    for (node, base) in &config.bases {
        let server = base.join("conf/server.xml");
        let xml = std::fs::read_to_string(&server).map_err(|e| TomcatError::File {
            path: server.clone(),
            message: format!(
                "node `{node}`: cannot read its server.xml ({e}): `bases` must name an existing \
                 CATALINA_BASE (with conf/server.xml, e.g. one made by tomcat10-instance-create)"
            ),
        })?;
        if has_cluster(&xml) {
            clustered.push(node.as_str());
        }
    }
    let mut advice = Vec::new();
    if !clustered.is_empty() && drain_sessions {
        advice.push(format!(
            "{} replicate sessions (<Cluster> in conf/server.xml): with replication a restarted \
             node's users continue on the other one, so `drain = {{ sessions = false }}` ends each \
             drain at in-flight = 0 instead of waiting for sessions (docs/runtimes/tomcat.md, \
             \"Session clustering\")",
            clustered.join(", ")
        ));
    }
    let counted = match config.session_manager()? {
        Some(_) => "; sessions counted by the manager",
        None if drain_sessions => {
            advice.push(
                "drain.sessions = true without manager_user/manager_password_file: nonstop cannot \
                 count a node's sessions, so every drain waits its full timeout"
                    .into(),
            );
            ""
        }
        None => "",
    };
    Ok(BasesChecked {
        summary: format!(
            "{} CATALINA_BASE(s) found{}{counted}",
            config.bases.len(),
            if clustered.is_empty() {
                ""
            } else {
                " (clustered)"
            }
        ),
        advice,
    })
}

/// Whether `server.xml` configures a `<Cluster>` outside comments.
fn has_cluster(xml: &str) -> bool {
    strip_xml_comments(xml).contains("<Cluster")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(bases: &[(&str, &Path)]) -> TomcatConfig {
        TomcatConfig {
            bases: bases
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_path_buf()))
                .collect(),
            context: "app".into(),
            ..TomcatConfig::default()
        }
    }

    #[test]
    fn a_missing_base_is_refused_and_a_cluster_suggests_no_session_drain() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("t1"), dir.path().join("t2"));
        std::fs::create_dir_all(one.join("conf")).unwrap();
        std::fs::write(
            one.join("conf/server.xml"),
            "<Server><!-- <Cluster className=\"x\"/> --><Engine/></Server>",
        )
        .unwrap();
        let err = check_bases(&config(&[("t1", &one), ("t2", &two)]), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node `t2`") && err.contains("existing"),
            "{err}"
        );

        let checked = check_bases(&config(&[("t1", &one)]), true).unwrap();
        assert_eq!(checked.summary, "1 CATALINA_BASE(s) found");
        assert!(checked.advice[0].contains("cannot count"), "{checked:?}");
        std::fs::write(
            one.join("conf/server.xml"),
            "<Server><Engine><Cluster className=\"org.apache.catalina.ha.tcp.SimpleTcpCluster\"/></Engine></Server>",
        )
        .unwrap();
        let checked = check_bases(&config(&[("t1", &one)]), true).unwrap();
        assert!(
            checked.advice[0].contains("sessions = false"),
            "{checked:?}"
        );
        let checked = check_bases(&config(&[("t1", &one)]), false).unwrap();
        assert!(checked.advice.is_empty(), "{checked:?}");
    }
}
