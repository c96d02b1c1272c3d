//! The JkMountFile on disk: read with its path in errors, and rewritten atomically (backup, temp
//! + fsync + rename) with its mode kept and its mtime moved past the old one.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::ModjkError;

pub fn read(path: &Path) -> Result<String, ModjkError> {
    std::fs::read_to_string(path).map_err(|e| ModjkError::File {
        path: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })
}

/// Backup, then temp + fsync + rename; keeps the file's mode, and moves the mtime strictly past
/// the old one because mod_jk compares whole seconds and would miss two writes in one second.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), ModjkError> {
    use std::io::Write;
    let err = |message: String| ModjkError::File {
        path: path.to_path_buf(),
        message,
    };
    let old = std::fs::metadata(path).map_err(|e| err(format!("cannot stat: {e}")))?;
    let name = path
        .file_name()
        .ok_or_else(|| err("not a file path".into()))?
        .to_string_lossy();
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::copy(path, dir.join(format!("{name}.nonstop.bak")))
        .map_err(|e| err(format!("cannot back up: {e}")))?;
    let tmp = dir.join(format!(".{name}.nonstop.tmp"));
    let mut f = std::fs::File::create(&tmp)
        .map_err(|e| err(format!("cannot create {}: {e}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .map_err(|e| err(format!("cannot write: {e}")))?;
    f.set_permissions(old.permissions())
        .map_err(|e| err(format!("cannot set mode: {e}")))?;
    let old_mtime = old.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let whole = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    };
    let now = SystemTime::now();
    let mtime = if whole(now) > whole(old_mtime) {
        now
    } else {
        SystemTime::UNIX_EPOCH + Duration::from_secs(whole(old_mtime) + 1)
    };
    f.set_modified(mtime)
        .map_err(|e| err(format!("cannot set mtime: {e}")))?;
    f.sync_all()
        .map_err(|e| err(format!("cannot fsync: {e}")))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| err(format!("cannot replace: {e}")))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_keeps_mode_backs_up_and_advances_mtime() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uriworkermap.properties");
        std::fs::write(&path, "/*=lb\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        write_atomic(&path, "/*=lb;disabled=a\n").unwrap();
        write_atomic(&path, "/*=lb;stopped=a\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert!(secs(meta.modified().unwrap()) >= secs(before) + 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "/*=lb;stopped=a\n");
        let backup = dir.path().join("uriworkermap.properties.nonstop.bak");
        assert_eq!(
            std::fs::read_to_string(backup).unwrap(),
            "/*=lb;disabled=a\n"
        );
    }
}
