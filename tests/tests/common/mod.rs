//! Helpers shared by the integration tests: running the test helper binary (whose path only
//! integration tests know), and dropping files from the page cache.
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

/// Drops `path` from the page cache (`posix_fadvise(POSIX_FADV_DONTNEED)`), so that the next
/// read of it comes from the disk.
pub fn drop_from_cache(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: a valid descriptor for the call and plain integers; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(
        rc,
        0,
        "posix_fadvise {}: {}",
        path.display(),
        std::io::Error::from_raw_os_error(rc)
    );
}
