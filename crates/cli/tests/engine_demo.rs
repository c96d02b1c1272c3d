//! The quickstart: `nonstop demo` runs a deploy and a rolled-back bad release under a request
//! stream and must report zero failed requests for both.

mod support;

use std::process::Command;

#[test]
fn demo_deploys_and_rolls_back_with_zero_failed_requests() {
    // The demo finds nonstop-hello next to its own binary.
    support::hello_bin();
    let out = Command::new(support::nonstop_bin())
        .args(["demo", "--clients", "4"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("failed: 0").count(), 2, "{text}");
    assert!(text.contains("rolled back"), "{text}");
    assert!(text.contains("versions seen: v1: "), "{text}");
    assert!(text.contains("zero failed requests"), "{text}");
}
