//! Helpers that need the test helper binary's path (known only to integration tests).
#![allow(dead_code)]

/// Runs the test helper program and returns its stdout lines; panics with its stderr if it
/// fails.
pub fn testapp(args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ckpt-testapp"))
        .args(args)
        .output()
        .expect("spawn ckpt-testapp");
    assert!(
        out.status.success(),
        "ckpt-testapp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Path of the helper binary.
pub fn testapp_path() -> &'static str {
    env!("CARGO_BIN_EXE_ckpt-testapp")
}
