//! Typed errors. Every error that concerns a file names it.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
///
/// Errors about a checkpoint file always carry its path, and corruption errors name the
/// section (or page) that failed its check, so that an operator can tell which file to
/// distrust without reading the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call on `path` failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// What the engine was doing ("open", "write", "fsync", ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A checkpoint file failed a structural or checksum check.
    #[error("{path}: corrupt {section}: {detail}")]
    Corrupt {
        /// The file that failed the check.
        path: PathBuf,
        /// The section: "header", "footer", "index", "page 17 of region 3", ...
        section: String,
        /// What exactly was wrong.
        detail: String,
    },
    /// A version file references a file that does not exist.
    #[error("{path}: references {missing}, which is missing")]
    MissingReference {
        /// The referencing file.
        path: PathBuf,
        /// The referenced file that could not be found.
        missing: PathBuf,
    },
    /// A version file references a file whose identity changed (it was replaced).
    #[error(
        "{path}: references {referenced}, but that file was replaced: expected file id {expected}, found {found}"
    )]
    ReplacedReference {
        /// The referencing file.
        path: PathBuf,
        /// The referenced file.
        referenced: PathBuf,
        /// The identity the referencing file recorded.
        expected: String,
        /// The identity found on disk.
        found: String,
    },
    /// A chain or file name is not acceptable.
    #[error("invalid name {name:?}: {why}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Why it was rejected.
        why: &'static str,
    },
    /// An invalid configuration value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Region registration or lookup problem.
    #[error("region {id}: {why}")]
    Region {
        /// The region id.
        id: u64,
        /// What went wrong.
        why: String,
    },
    /// The registered regions do not match the checkpoint being restored.
    #[error("{path}: cannot restore: {why}")]
    RegionMismatch {
        /// The version file being restored.
        path: PathBuf,
        /// What does not match.
        why: String,
    },
    /// The requested version or chain does not exist.
    #[error("{dir}: {what}")]
    NotFound {
        /// The store directory.
        dir: PathBuf,
        /// What was looked for.
        what: String,
    },
    /// Another process holds the store's writer lock.
    #[error("{path}: locked by {} (is another process checkpointing chain {name:?} into this directory?)", holder.map_or("another process".to_string(), |p| format!("pid {p}")))]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The chain name.
        name: String,
        /// The process holding it, as it recorded itself in the lock file.
        holder: Option<u32>,
    },
    /// A version of that number (or a newer one) exists: a committed file is never replaced.
    #[error("{path}: cannot write this version: version {newest} exists, and numbers only grow")]
    VersionExists {
        /// The file that would have been written.
        path: PathBuf,
        /// The newest version in the store (or written by this engine).
        newest: u64,
    },
    /// A checkpoint was asked for before any region was registered.
    #[error("{dir}: no regions registered: register memory before checkpointing")]
    NoRegions {
        /// The store directory.
        dir: PathBuf,
    },
    /// A compaction kept changing the chain's files while a checkpoint retried.
    #[error("{dir}: the files of the chain kept changing under the writer (a compaction running in a loop?); nothing was committed")]
    Contended {
        /// The store directory.
        dir: PathBuf,
    },
    /// A background task panicked (a bug in ckpt).
    #[error("{what} panicked; please report this as a bug")]
    Panicked {
        /// The task.
        what: &'static str,
    },
    /// A store belongs to another chain than the one asked for.
    #[error("{path}: this store holds chain {found:?}, not {wanted:?}")]
    ChainMismatch {
        /// The file that says which chain the store holds.
        path: PathBuf,
        /// The chain it holds.
        found: String,
        /// The chain asked for.
        wanted: String,
    },
    /// An operation did not finish within its time bound; nothing half done is visible.
    #[error("timed out {what}")]
    TimedOut {
        /// What was being done.
        what: String,
    },
    /// An asynchronous checkpoint's background flush failed; nothing was committed under
    /// `path`, and the pages it would have stored go into the next checkpoint.
    #[error("{path}: the asynchronous checkpoint failed: {why}")]
    Flush {
        /// The version file it was writing.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A requested feature is not available on this system.
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// Builds an [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// Builds an [`Error::Corrupt`].
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        section: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.into(),
            section: section.into(),
            detail: detail.into(),
        }
    }

    /// The file this error is about, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Io { path, .. }
            | Error::Corrupt { path, .. }
            | Error::MissingReference { path, .. }
            | Error::ReplacedReference { path, .. }
            | Error::RegionMismatch { path, .. }
            | Error::Locked { path, .. }
            | Error::VersionExists { path, .. }
            | Error::ChainMismatch { path, .. }
            | Error::Flush { path, .. } => Some(path),
            Error::NotFound { dir, .. } | Error::NoRegions { dir } | Error::Contended { dir } => {
                Some(dir)
            }
            _ => None,
        }
    }
}
