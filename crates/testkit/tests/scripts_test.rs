//! scripts/test where it cannot install: with a PATH that lacks the JDK, Node and the rest, it names
//! their Debian packages and the one apt-get command, exits 2 and never reaches cargo.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn without_apt_get_it_names_the_missing_packages_and_runs_nothing() {
    let dir = std::env::temp_dir().join(format!("nonstop-scripts-test-{}", std::process::id()));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // Only what the script itself uses, and a cargo that leaves a mark if it is ever run.
    for tool in ["bash", "awk", "id", "dirname"] {
        let real = nonstop_testkit::peer::find(tool).unwrap();
        let _ = symlink(&real, bin.join(tool));
    }
    let marker = dir.join("cargo-ran");
    let cargo = bin.join("cargo");
    std::fs::write(&cargo, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = Command::new(repo().join("scripts/test"))
        .env_clear()
        .env("PATH", &bin)
        .env("NONSTOP_TEST_INSTALL", "no")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!marker.exists(), "cargo ran: {stderr}");
    for line in [
        "default-jdk-headless     (for java, javac, jar)",
        "nodejs                   (for npm, node)",
        "gcc                      (for cc)",
        "curl                     (for curl)",
    ] {
        assert!(stderr.contains(line), "no `{line}` in:\n{stderr}");
    }
    let command = stderr
        .lines()
        .find(|l| l.contains("apt-get install"))
        .unwrap_or_else(|| panic!("no apt-get command in:\n{stderr}"));
    assert!(
        command.trim_start().starts_with(
            "sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev "
        ) && command.contains(" default-jdk-headless ")
            && command.contains(" nodejs npm "),
        "{command}"
    );
    assert!(stderr.contains("no apt-get here"), "{stderr}");
}
