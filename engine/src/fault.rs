//! Fault injection for crash and failure tests, driven by environment variables read once.
//!
//! - `CKPT_FAULT_KILL=<point>`: the process sends itself SIGKILL when it reaches `<point>`;
//!   `CKPT_FAULT_KILL=<point>#<n>`: when it reaches `<point>` for the n-th time.
//! - `CKPT_FAULT_FAIL=<point>`: [`fail`] returns true at `<point>`, and the caller turns that
//!   into an I/O error, as if the disk had failed.
//!
//! With neither variable set, each call is one load of a cached `Option`.

use std::sync::OnceLock;

fn var(name: &str, cell: &'static OnceLock<Option<String>>) -> Option<&'static str> {
    if name == "CKPT_FAULT_KILL" {
        if let Some(s) = OVERRIDE.get() {
            return Some(s.as_str());
        }
    }
    cell.get_or_init(|| std::env::var(name).ok()).as_deref()
}

static OVERRIDE: OnceLock<String> = OnceLock::new();

/// Arms a kill point from inside the process (as `CKPT_FAULT_KILL` would), for a test program
/// that wants only one of its MPI ranks to die. Can be set once per process.
pub fn arm_kill(spec: &str) {
    let _ = OVERRIDE.set(spec.to_string());
}

static KILL: OnceLock<Option<String>> = OnceLock::new();
static FAIL: OnceLock<Option<String>> = OnceLock::new();

static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Kills the process with SIGKILL if `CKPT_FAULT_KILL` names this point (and, with `#n`,
/// this is the n-th time the point is reached).
pub fn point(name: &str) {
    let Some(spec) = var("CKPT_FAULT_KILL", &KILL) else {
        return;
    };
    let (want, nth) = match spec.split_once('#') {
        Some((w, n)) => (w, n.parse::<u64>().unwrap_or(1)),
        None => (spec, 1),
    };
    if want == name {
        let hit = HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if hit == nth {
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// True if `CKPT_FAULT_FAIL` names this point.
pub fn fail(name: &str) -> bool {
    var("CKPT_FAULT_FAIL", &FAIL) == Some(name)
}
