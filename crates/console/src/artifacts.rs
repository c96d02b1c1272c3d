//! Artifacts from the network, safely: a name picked from the operator's drop directory (a
//! plain file name, never a path), or an upload written to a private scratch directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use nonstop_accounts::Action;
use serde::Serialize;
use serde_json::json;

use crate::auth::{Caller, may};
use crate::error::{ApiError, ApiResult};
use crate::state::App;

const MAX_NAME: usize = 255;

/// Checks that `name` is a plain file name: letters, digits, `.`, `_`, `-`, `+`; not hidden,
/// no `..`, no separators. Anything else is refused, not cleaned up.
pub fn check_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "`{}` is not an artifact name: use a plain file name (letters, digits, `.`, `_`, `-`, `+`; no path, no `..`); nothing was changed",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// The file `name` in the drop directory, if it is one there.
pub fn in_drop_dir(dir: Option<&Path>, name: &str) -> ApiResult<PathBuf> {
    check_name(name)?;
    let dir = dir.ok_or_else(|| {
        ApiError::bad_request(
            "this console has no artifact drop directory (--artifacts); upload the artifact instead",
        )
    })?;
    let root = dir
        .canonicalize()
        .map_err(|e| ApiError::internal(format!("artifact directory {}: {e}", dir.display())))?;
    let path = root.join(name);
    // Links are followed, but what they reach must still be inside the directory.
    let real = path.canonicalize().map_err(|_| {
        ApiError::not_found(format!(
            "there is no artifact `{name}` in the drop directory"
        ))
    })?;
    if !real.starts_with(&root) || !real.is_file() {
        return Err(ApiError::bad_request(format!(
            "`{name}` is not a file inside the drop directory"
        )));
    }
    Ok(real)
}

/// One artifact on offer.
#[derive(Debug, Serialize)]
pub struct Artifact {
    pub name: String,
    pub bytes: u64,
    pub modified_ms: Option<i64>,
}

/// The artifacts the deploy form offers: the drop directory's, to a caller who may deploy some
/// service (to anyone else the list is empty, the directory not even read).
pub async fn offered(
    State(app): State<App>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    let config = app.drivers.load()?;
    let mut deployer = false;
    for service in config.services.keys() {
        if may(&app, &caller, service, Action::Deploy).await? {
            deployer = true;
            break;
        }
    }
    let list = if deployer {
        list(app.options.artifacts.as_deref()).await?
    } else {
        Vec::new()
    };
    Ok(axum::Json(json!({
        "drop_dir": app.options.artifacts.is_some(),
        "upload_limit": app.options.upload_limit,
        "artifacts": list,
    }))
    .into_response())
}

/// The artifacts of the drop directory with acceptable names, by name: regular files, and links
/// only if what they reach is a file inside the directory (what a deploy would take).
pub async fn list(dir: Option<&Path>) -> ApiResult<Vec<Artifact>> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| ApiError::internal(format!("artifact directory {}: {e}", dir.display())))?;
    let mut found = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if check_name(&name).is_err() || in_drop_dir(Some(dir), &name).is_err() {
            continue;
        }
        let Ok(meta) = tokio::fs::metadata(entry.path()).await else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64);
        found.push(Artifact {
            name,
            bytes: meta.len(),
            modified_ms,
        });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// An uploaded artifact in its own scratch directory, removed with this value.
#[derive(Debug)]
pub struct Upload {
    dir: PathBuf,
    pub path: PathBuf,
}

static UPLOADS: AtomicU64 = AtomicU64::new(0);

impl Upload {
    /// A place for an upload named `name` under the state directory.
    pub fn create(state: &Path, name: &str) -> ApiResult<Upload> {
        let name = if name.is_empty() { "artifact" } else { name };
        check_name(name)?;
        let dir = crate::deploys::uploads_dir(state).join(format!(
            "{}-{}",
            std::process::id(),
            UPLOADS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(format!("upload directory {}: {e}", dir.display())))?;
        Ok(Upload {
            path: dir.join(name),
            dir,
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        for good in ["app.jar", "shop-1.4+b2.war", "A_b.tar.gz"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "..",
            ".hidden",
            "a..b",
            "a\\b",
            "a b",
            "/etc/passwd",
            "é.jar",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn drop_dir_lookups_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let drop = dir.path().join("drop");
        std::fs::create_dir(&drop).unwrap();
        std::fs::write(drop.join("app.jar"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), drop.join("link.jar")).unwrap();
        assert!(in_drop_dir(Some(&drop), "app.jar").is_ok());
        assert_eq!(
            in_drop_dir(Some(&drop), "../secret").unwrap_err().status,
            400
        );
        assert_eq!(
            in_drop_dir(Some(&drop), "link.jar").unwrap_err().status,
            400
        );
        assert_eq!(
            in_drop_dir(Some(&drop), "missing.jar").unwrap_err().status,
            404
        );
        assert_eq!(in_drop_dir(None, "app.jar").unwrap_err().status, 400);
        // The listing shows the file, not the link to the outside (nor its target's size).
        std::fs::write(dir.path().join("big"), vec![b'x'; 4096]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("big"), drop.join("big.jar")).unwrap();
        std::os::unix::fs::symlink(drop.join("app.jar"), drop.join("inside.jar")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let names: Vec<String> = rt
            .block_on(list(Some(&drop)))
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["app.jar", "inside.jar"]);
    }

    #[test]
    fn an_upload_slot_is_removed_with_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let slot = Upload::create(dir.path(), "app.jar").unwrap();
        std::fs::write(&slot.path, b"x").unwrap();
        let parent = slot.path.parent().unwrap().to_path_buf();
        drop(slot);
        assert!(!parent.exists());
        assert!(Upload::create(dir.path(), "../app.jar").is_err());
    }
}
