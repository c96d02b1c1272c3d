//! The files beside the include: atomic writes (temp + fsync + rename), the backup, the JSON
//! state that lets every nonstop process see the same members, and a lock across processes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::NginxError;
use crate::render::DesiredSet;

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

pub fn state_path(include: &Path) -> PathBuf {
    sibling(include, ".state.json")
}

pub fn backup_path(include: &Path) -> PathBuf {
    sibling(include, ".bak")
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NginxError {
    let path = path.display().to_string();
    move |source| NginxError::Io { what, path, source }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NginxError> + Send + 'static,
) -> Result<T, NginxError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn write_atomic_sync(path: &Path, bytes: &[u8]) -> Result<(), NginxError> {
    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("cannot write", path)(e)
    })
}

pub async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NginxError> {
    let (path, bytes) = (path.to_path_buf(), bytes.to_vec());
    blocking(move || write_atomic_sync(&path, &bytes)).await
}

pub async fn remove(path: &Path) -> Result<(), NginxError> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("cannot remove", path)(e)),
        _ => Ok(()),
    }
}

/// Saves the current content as the backup, then writes `bytes`; returns the previous content.
pub async fn replace_with_backup(path: &Path, bytes: &[u8]) -> Result<Option<Vec<u8>>, NginxError> {
    let previous = match tokio::fs::read(path).await {
        Ok(old) => Some(old),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("cannot read", path)(e)),
    };
    if let Some(old) = &previous {
        write_atomic(&backup_path(path), old).await?;
    }
    write_atomic(path, bytes).await?;
    Ok(previous)
}

/// The text of `path`, or `None` if it does not exist.
pub async fn read_text(path: &Path) -> Result<Option<String>, NginxError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("cannot read", path)(e)),
    }
}

pub async fn read_state(path: &Path) -> Result<DesiredSet, NginxError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            NginxError::Invalid(format!(
                "the state file {} is not valid ({e}); restore it from the include or remove it",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DesiredSet::default()),
        Err(e) => Err(io("cannot read", path)(e)),
    }
}

/// Held while one change runs; the kernel drops the lock with the file.
pub struct FileLock {
    _file: File,
}

pub async fn lock(include: &Path) -> Result<FileLock, NginxError> {
    let path = sibling(include, ".lock");
    blocking(move || {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("cannot open the lock file", &path))?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| io("cannot lock", &path)(e.into()))?;
        Ok(FileLock { _file: file })
    })
    .await
}
