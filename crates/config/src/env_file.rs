//! `env_files`: the secrets of a service's instances, read on the host where the instance runs
//! from `KEY=VALUE` files only its user can read; a value is never part of an error or a log.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why an env file was not used; names the file (and line), never a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvFileError {
    #[error("env file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "env file {path} has mode {mode:04o}; it holds secrets, so it must be 0600 or stricter (chmod 600 {path})"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "env file {path} is owned by uid {owner}, not by uid {user} that starts the instances (chown it to that user)"
    )]
    NotOwned {
        path: PathBuf,
        owner: u32,
        user: u32,
    },
    #[error("env file {path}:{line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Every variable of `paths`, in order (a later file wins over an earlier one).
pub fn read_env_files(paths: &[PathBuf]) -> Result<BTreeMap<String, String>, EnvFileError> {
    let mut env = BTreeMap::new();
    for path in paths {
        env.extend(read_env_file(path)?);
    }
    Ok(env)
}

/// One `KEY=VALUE` file: blank lines and lines starting with `#` are skipped, the value is
/// everything after the first `=`, taken literally (no quotes, no expansion).
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, EnvFileError> {
    let unreadable = |e: std::io::Error| EnvFileError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    // The checks are on the opened file, so a swap after them cannot slip another one in.
    let meta = file.metadata().map_err(unreadable)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(EnvFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let user = rustix::process::geteuid().as_raw();
    if meta.uid() != user {
        return Err(EnvFileError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
            user,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(unreadable)?;
    let mut env = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| EnvFileError::BadLine {
            path: path.to_path_buf(),
            line: index + 1,
            reason: reason.to_string(),
        };
        let (key, value) = trimmed
            .split_once('=')
            .ok_or_else(|| bad("not KEY=VALUE (the value is not shown)"))?;
        if !is_env_name(key) {
            return Err(bad(
                "the name before `=` must be letters, digits and _, not starting with a digit",
            ));
        }
        env.insert(key.to_string(), value.to_string());
    }
    Ok(env)
}

fn is_env_name(key: &str) -> bool {
    key.chars().next().is_some_and(|c| !c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_relative_env_file_in_the_config_is_refused_with_its_line() {
        let text = |files: &str| crate::Source {
            path: "nonstop.toml".into(),
            text: format!(
                "[services.shop]\nstrategy = \"rolling\"\nbalancer = {{ kind = \"command\", enable = [\"x\"], drain = [\"x\"], disable = [\"x\"] }}\nruntime = {{ kind = \"process\", start = [\"app\"], env_files = [{files}] }}\nreleases = {{ dir = \"/tmp/shop\" }}\n[[services.shop.nodes]]\nname = \"a\"\nport = 1\n"
            ),
        };
        let config = crate::Config::parse(&text("\"/etc/nonstop/shop.env\"")).unwrap();
        let shared = &config.services["shop"].runtime.shared;
        assert_eq!(shared.env_files, [PathBuf::from("/etc/nonstop/shop.env")]);
        let err = crate::Config::parse(&text("\"shop.env\"")).unwrap_err();
        assert_eq!(err.line, 4, "{err}");
        assert!(
            err.message.contains("`shop.env` is not an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn reads_pairs_and_later_files_win() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(
            dir.path(),
            "a.env",
            "# db\nDB_PASSWORD=s3cr=t\n\n  API_KEY=one\n",
            0o600,
        );
        let b = file(dir.path(), "b.env", "API_KEY=two\nEMPTY=\n", 0o400);
        let env = read_env_files(&[a, b]).unwrap();
        assert_eq!(env["DB_PASSWORD"], "s3cr=t");
        assert_eq!(env["API_KEY"], "two");
        assert_eq!(env["EMPTY"], "");
        assert_eq!(env.len(), 3);
    }

    #[test]
    fn refuses_open_modes_bad_lines_and_missing_files_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let open = file(dir.path(), "open.env", "K=hunter2\n", 0o640);
        let err = read_env_file(&open).unwrap_err();
        assert!(matches!(err, EnvFileError::TooOpen { mode: 0o640, .. }));
        assert!(err.to_string().contains("open.env"), "{err}");
        let bad = file(dir.path(), "bad.env", "OK=1\nhunter2\n", 0o600);
        let err = read_env_file(&bad).unwrap_err();
        assert!(err.to_string().contains("bad.env:2"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let name = file(dir.path(), "name.env", "1X=hunter2\n", 0o600);
        let err = read_env_file(&name).unwrap_err();
        assert!(err.to_string().contains("name.env:1"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = read_env_file(&dir.path().join("none.env")).unwrap_err();
        assert!(matches!(err, EnvFileError::Unreadable { .. }), "{err}");
    }

    #[test]
    fn refuses_a_file_of_another_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "theirs.env", "K=v\n", 0o600);
        let other = if rustix::process::geteuid().is_root() {
            65534
        } else {
            // Without root a file cannot be given away: the check is then shown on our own uid.
            assert!(read_env_file(&path).is_ok());
            return;
        };
        std::os::unix::fs::chown(&path, Some(other), None).unwrap();
        let err = read_env_file(&path).unwrap_err();
        assert!(
            matches!(err, EnvFileError::NotOwned { owner: 65534, .. }),
            "{err}"
        );
    }
}
