//! What the `ckpt` and `ckpt-compact` binaries share: argument groups, the progress bar,
//! and how a command's outcome becomes output and an exit status.
//!
//! ```no_run
//! use ckpt_cli::{finish, progress_bar};
//! let pb = progress_bar(10, "verify", false);
//! pb.finish_and_clear();
//! let code = finish(false, Ok(true));
//! # let _ = code;
//! ```

pub mod hooks;
pub mod report;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};

/// A store directory and, when it holds several chains, which one.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Store directory (a chain's directory, or a job store).
    pub dir: PathBuf,
    /// Chain name (optional when DIR holds one chain).
    #[arg(long)]
    pub name: Option<String>,
}

/// Dirty-page tracking modes, as command-line values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackingArg {
    /// userfaultfd where the kernel supports it, hashing otherwise.
    Auto,
    /// Hash every page.
    Hash,
    /// userfaultfd write-protection (fails where unavailable).
    Uffd,
}

impl From<TrackingArg> for ckpt_engine::Tracking {
    fn from(t: TrackingArg) -> Self {
        match t {
            TrackingArg::Auto => ckpt_engine::Tracking::Auto,
            TrackingArg::Hash => ckpt_engine::Tracking::Hash,
            TrackingArg::Uffd => ckpt_engine::Tracking::Uffd,
        }
    }
}

/// Snapshot mechanisms of asynchronous checkpoints, as command-line values.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotArg {
    /// Copy for sparse userfaultfd deltas, fork otherwise.
    Auto,
    /// Copy the candidate pages into a staging buffer.
    Copy,
    /// fork(): the child writes the version from its copy-on-write view.
    Fork,
}

impl From<SnapshotArg> for ckpt_engine::Snapshot {
    fn from(s: SnapshotArg) -> Self {
        match s {
            SnapshotArg::Auto => ckpt_engine::Snapshot::Auto,
            SnapshotArg::Copy => ckpt_engine::Snapshot::Copy,
            SnapshotArg::Fork => ckpt_engine::Snapshot::Fork,
        }
    }
}

/// `println!` for command output that does not panic when stdout is a closed pipe
/// (`ckpt ls DIR | head -1`): the process then exits at once, with status 141 as if killed by
/// SIGPIPE; any other write error ends it with status 2 and a message.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_line(::std::format_args!($($arg)*))
    };
}

/// The implementation of [`out!`].
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("{}: error: cannot write the output: {e}", program());
        std::process::exit(2);
    }
}

/// A progress bar on stderr when it is a terminal and output is not JSON; hidden otherwise.
pub fn progress_bar(len: u64, msg: &str, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {elapsed}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.to_string());
    pb
}

/// Prints `doc` as one JSON document on stdout (with `--json`), or runs `human`.
pub fn emit<T: serde::Serialize>(json: bool, doc: &T, human: impl FnOnce()) {
    if json {
        match serde_json::to_string(doc) {
            Ok(s) => out!("{s}"),
            Err(e) => out!("{}", serde_json::json!({ "error": e.to_string() })),
        }
    } else {
        human();
    }
}

/// The exit status of a command: 0 when it succeeded, 1 when it ran but found a problem
/// (`Ok(false)`: a file that does not verify), 2 on an error, which is printed once on
/// stderr and, with `--json`, as `{"error": ...}` on stdout.
pub fn finish(json: bool, outcome: anyhow::Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let msg = message(&e);
            if json {
                out!("{}", serde_json::json!({ "error": msg }));
            }
            eprintln!("{}: error: {msg}", program());
            ExitCode::from(2)
        }
    }
}

/// An error and its causes, each cause once: engine errors already include their OS reason
/// in their own text, so a cause whose text is already there is not repeated.
pub fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}

fn program() -> String {
    std::env::args()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "ckpt".into())
}
