//! Releases on disk: `<dir>/releases/<version>/` holds a copy of the artifact and `release.json`
//! (checksum, artifact name, env). Installing is atomic (copy to a temp dir, then rename).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use nonstop_ports::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub version: Version,
    /// File name of the artifact inside the release directory.
    pub artifact_name: String,
    pub checksum: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub created_ms: i64,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Release {
    pub fn artifact(&self) -> PathBuf {
        self.dir.join(&self.artifact_name)
    }

    pub fn log(&self, node: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{node}.log"))
    }
}

pub fn releases_dir(base: &Path) -> PathBuf {
    base.join("releases")
}

/// A version is a directory name: keep it to a safe alphabet.
pub fn check_version(version: &str) -> Result<(), String> {
    if nonstop_ports::is_plain_name(version, 64) {
        Ok(())
    } else {
        Err(format!(
            "version `{version}` is not usable as a directory name; use letters, digits, . _ - + (at most 64)"
        ))
    }
}

/// Checks that `artifact` exists and can be read completely; returns its checksum.
pub fn checksum(artifact: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(artifact)
        .map_err(|e| format!("artifact {} cannot be used: {e}", artifact.display()))?;
    let mut hasher = Sha256::new();
    if meta.is_dir() {
        let mut files = Vec::new();
        walk(artifact, artifact, &mut files)?;
        files.sort();
        for rel in files {
            hasher.update(rel.to_string_lossy().as_bytes());
            hasher.update([0]);
            hash_file(&artifact.join(&rel), &mut hasher)?;
        }
    } else {
        hash_file(artifact, &mut hasher)?;
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn hash_file(path: &Path, hasher: &mut Sha256) -> Result<(), String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| format!("artifact {} cannot be read: {e}", path.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("artifact {} cannot be read: {e}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

fn copy_into(src: &Path, dst: &Path) -> std::io::Result<()> {
    if std::fs::metadata(src)?.is_dir() {
        std::fs::create_dir_all(dst)?;
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            copy_into(&entry.path(), &dst.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(src, dst).map(drop)
    }
}

/// Copies `artifact` into a new release; an existing release of the same version must match.
pub fn install(
    base: &Path,
    artifact: &Path,
    version: Option<Version>,
    env: BTreeMap<String, String>,
) -> Result<Release, String> {
    let sum = checksum(artifact)?;
    let version = version.unwrap_or_else(|| Version(sum[..12].to_string()));
    check_version(version.as_str())?;
    let artifact_name = artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "artifact".into());
    if let Some(existing) = load(base, &version) {
        if existing.checksum == sum && existing.env == env {
            return Ok(existing);
        }
        return Err(format!(
            "release {version} already exists with a different artifact or env (checksum {}…); deploy it under another --version",
            &existing.checksum[..12]
        ));
    }
    let root = releases_dir(base);
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let tmp = root.join(format!(".tmp-{version}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| -> std::io::Result<Release> {
        std::fs::create_dir_all(&tmp)?;
        copy_into(artifact, &tmp.join(&artifact_name))?;
        let release = Release {
            version: version.clone(),
            artifact_name: artifact_name.clone(),
            checksum: sum.clone(),
            env,
            created_ms: now_ms(),
            dir: root.join(version.as_str()),
        };
        let json = serde_json::to_vec_pretty(&release).expect("plain data");
        std::fs::write(tmp.join("release.json"), json)?;
        std::fs::rename(&tmp, &release.dir)?;
        Ok(release)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        format!(
            "cannot install release {version} in {}: {e}",
            root.display()
        )
    })
}

pub fn load(base: &Path, version: &Version) -> Option<Release> {
    let dir = releases_dir(base).join(version.as_str());
    let text = std::fs::read(dir.join("release.json")).ok()?;
    let mut release: Release = serde_json::from_slice(&text).ok()?;
    release.dir = dir;
    Some(release)
}

/// All installed releases, oldest first.
pub fn list(base: &Path) -> Vec<Release> {
    let mut all: Vec<Release> = std::fs::read_dir(releases_dir(base))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (!name.starts_with('.')).then(|| load(base, &Version(name)))?
        })
        .collect();
    all.sort_by_key(|r| r.created_ms);
    all
}

/// Deletes the oldest releases beyond `keep`, never one in `protect` (running, previous).
pub fn prune(base: &Path, keep: usize, protect: &[Version]) -> Vec<Version> {
    let all = list(base);
    let mut removable: Vec<&Release> = all
        .iter()
        .filter(|r| !protect.contains(&r.version))
        .collect();
    let mut removed = Vec::new();
    while removable.len() > keep {
        let oldest = removable.remove(0);
        if std::fs::remove_dir_all(&oldest.dir).is_ok() {
            removed.push(oldest.version.clone());
        }
    }
    removed
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where a service's store lives: next to its releases.
pub fn store_path(base: &Path) -> PathBuf {
    base.join("nonstop.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_copies_checksums_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("app.jar");
        std::fs::write(&artifact, b"v1").unwrap();
        let base = dir.path().join("shop");
        let r = install(&base, &artifact, Some(Version::from("1")), BTreeMap::new()).unwrap();
        assert_eq!(std::fs::read(r.artifact()).unwrap(), b"v1");
        assert_eq!(r.checksum.len(), 64);
        assert_eq!(load(&base, &Version::from("1")).unwrap(), r);
        let again = install(&base, &artifact, Some(Version::from("1")), BTreeMap::new()).unwrap();
        assert_eq!(again, r);
        std::fs::write(&artifact, b"v1-changed").unwrap();
        let err = install(&base, &artifact, Some(Version::from("1")), BTreeMap::new()).unwrap_err();
        assert!(err.contains("another --version"), "{err}");
        let derived = install(&base, &artifact, None, BTreeMap::new()).unwrap();
        assert_eq!(derived.version.as_str().len(), 12);
    }

    #[test]
    fn directories_are_copied_and_bad_input_refused() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        std::fs::create_dir_all(app.join("lib")).unwrap();
        std::fs::write(app.join("lib/a.txt"), b"a").unwrap();
        let base = dir.path().join("shop");
        let r = install(&base, &app, Some(Version::from("2.0")), BTreeMap::new()).unwrap();
        assert!(r.artifact().join("lib/a.txt").exists());
        let missing = install(&base, &dir.path().join("nope.jar"), None, BTreeMap::new());
        assert!(missing.unwrap_err().contains("nope.jar"));
        let bad = install(&base, &app, Some(Version::from("../etc")), BTreeMap::new());
        assert!(bad.unwrap_err().contains("directory name"));
    }

    #[test]
    fn prune_keeps_protected_and_newest() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("shop");
        let artifact = dir.path().join("a");
        for v in 1..=6 {
            std::fs::write(&artifact, format!("{v}")).unwrap();
            let mut r = install(
                &base,
                &artifact,
                Some(Version(v.to_string())),
                BTreeMap::new(),
            )
            .unwrap();
            r.created_ms = v;
            std::fs::write(r.dir.join("release.json"), serde_json::to_vec(&r).unwrap()).unwrap();
        }
        let removed = prune(&base, 2, &[Version::from("1"), Version::from("6")]);
        assert_eq!(removed, vec![Version::from("2"), Version::from("3")]);
        let left: Vec<String> = list(&base).into_iter().map(|r| r.version.0).collect();
        assert_eq!(left, ["1", "4", "5", "6"]);
    }
}
