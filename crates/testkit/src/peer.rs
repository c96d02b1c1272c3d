//! The real programs the tests run, found before they are spawned: a missing one fails the test
//! with one line naming it and its Debian package (from `peers.txt`), not a `NotFound` backtrace.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

/// The table scripts/test installs from: `<program or absolute path> <Debian package>...`.
const PEERS: &str = include_str!("../peers.txt");

/// Searched after `PATH`: Debian puts nginx, HAProxy and `ip` in /usr/sbin, which a non-root
/// user's `PATH` lacks.
const SBIN: &str = "/usr/local/sbin:/usr/sbin:/sbin";

/// One line of `peers.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub program: &'static str,
    pub packages: Vec<&'static str>,
}

/// Every line of `peers.txt`, in its order.
pub fn peers() -> Vec<Peer> {
    PEERS
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut words = line.split_whitespace();
            Peer {
                program: words.next().unwrap_or_default(),
                packages: words.collect(),
            }
        })
        .collect()
}

/// A program a test needs that is not installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub program: String,
    /// Empty when `peers.txt` does not list the program (a test's own mistake).
    pub packages: Vec<&'static str>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.packages.as_slice() {
            [] => write!(
                f,
                "{} not found, and crates/testkit/peers.txt names no Debian package for it",
                self.program
            ),
            [one] => write!(
                f,
                "{} not found: install Debian package {one} (or run scripts/test as root)",
                self.program
            ),
            many => write!(
                f,
                "{} not found: install Debian packages {} (or run scripts/test as root)",
                self.program,
                many.join(" ")
            ),
        }
    }
}

impl std::error::Error for Missing {}

/// `program` as an absolute path that exists, or the first executable file of that name in the
/// directories of `search` (a `PATH`-style list).
fn locate(program: &str, search: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = Path::new(program);
    if path.is_absolute() {
        return path.exists().then(|| path.to_path_buf());
    }
    std::env::split_paths(search)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

fn find_in(program: &str, search: &OsStr) -> Result<PathBuf, Missing> {
    locate(program, search).ok_or_else(|| Missing {
        program: program.to_string(),
        packages: peers()
            .into_iter()
            .find(|peer| peer.program == program)
            .map(|peer| peer.packages)
            .unwrap_or_default(),
    })
}

/// Where `program` (a name on `PATH` or an absolute path, as listed in `peers.txt`) is installed.
pub fn find(program: &str) -> Result<PathBuf, Missing> {
    let mut search = std::env::var_os("PATH").unwrap_or_default();
    if !search.is_empty() {
        search.push(":");
    }
    search.push(SBIN);
    find_in(program, &search)
}

/// [`find`], failing the test (at the caller's line) with the one line of [`Missing`] when it is
/// not installed.
#[track_caller]
pub fn require(program: &str) -> PathBuf {
    match find(program) {
        Ok(path) => path,
        Err(missing) => panic!("{missing}"),
    }
}

/// A command for the installed `program` (by its full path), or the test fails with [`Missing`].
#[track_caller]
pub fn command(program: &str) -> std::process::Command {
    std::process::Command::new(require(program))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_peer_is_one_line_naming_the_program_and_its_package() {
        let missing = find_in("nginx", OsStr::new("")).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "nginx not found: install Debian package nginx-light (or run scripts/test as root)"
        );
        let missing = find_in("npm", OsStr::new("/nonexistent")).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "npm not found: install Debian packages nodejs npm (or run scripts/test as root)"
        );
        let missing = find_in("/nonexistent/usr/bin/chromium", OsStr::new("")).unwrap_err();
        assert!(missing.packages.is_empty(), "{missing:?}");

        let panic = std::panic::catch_unwind(|| require("nonstop-no-such-program")).unwrap_err();
        let text = panic.downcast_ref::<String>().expect("a String panic");
        assert_eq!(
            text,
            "nonstop-no-such-program not found, and crates/testkit/peers.txt names no Debian package for it"
        );
    }

    #[test]
    fn an_installed_program_is_found_by_full_path_on_the_search_list() {
        let sh = find_in("sh", OsStr::new("/nonexistent:/bin:/usr/bin")).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(find_in("/bin", OsStr::new("")).unwrap(), Path::new("/bin"));
        // A directory of the program's name is not the program.
        let dirs = tempfile_dir();
        std::fs::create_dir_all(dirs.join("nginx")).unwrap();
        assert!(find_in("nginx", dirs.as_os_str()).is_err());
        let _ = std::fs::remove_dir_all(&dirs);
    }

    #[test]
    fn every_listed_peer_has_a_package_and_one_line() {
        let peers = peers();
        assert!(peers.len() >= 15, "{peers:?}");
        for peer in &peers {
            assert!(!peer.packages.is_empty(), "{peer:?}");
            let same = peers.iter().filter(|p| p.program == peer.program).count();
            assert_eq!(same, 1, "{} is listed {same} times", peer.program);
        }
        let nginx = peers.iter().find(|p| p.program == "nginx").unwrap();
        assert_eq!(nginx.packages, ["nginx-light"]);
    }

    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!("nonstop-testkit-peer-{}", std::process::id()))
    }
}
