//! The JavaScript SDK's tests (Node's test runner) and the end-to-end tests
//! in headless Chromium, against this build's broker binary, so that the one
//! test command covers the clients too. `clients/js/run-tests.sh` installs
//! what is missing (npm packages from the lockfile, Debian's chromium).

use std::process::Command;

#[test]
fn javascript_sdk_and_browser_end_to_end() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/run-tests.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run clients/js/run-tests.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("# tests") || l.starts_with("# pass") || l.starts_with("# fail"))
        .collect();
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "JavaScript tests failed: {summary:?}");
    assert!(
        summary
            .iter()
            .any(|l| l.starts_with("# pass") && l != &"# pass 0"),
        "no JavaScript test ran: {summary:?}"
    );
    assert!(summary.contains(&"# fail 0"), "{summary:?}");
}
