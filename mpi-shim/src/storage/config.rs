//! The `[storage]` table of a job's TOML configuration file: where each level lives and how
//! versions move between them.
//!
//! ```toml
//! [storage]
//! local = "/tmp/ckpt/{job}/node{node}"   # node-local cache (L1); {node} {rank} {job} expand
//! persistent = "/lustre/me/run42"        # parallel file system (L4); optional
//! partner = true                         # copy each rank's delta to a rank on another node (L2)
//! mode = "async"                         # flush to persistent storage in the background
//! persistent_interval = 2                # flush every 2nd committed version
//! keep_local = 2                         # committed versions kept in each local cache
//! keep_persistent = 4                    # committed versions kept on persistent storage
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;

/// When versions are flushed to persistent storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// The checkpoint returns once its flush is committed on persistent storage.
    #[default]
    Sync,
    /// The checkpoint returns once it is committed in the local caches (and partner copies);
    /// a background thread flushes it, committed at a later checkpoint or [`wait`].
    ///
    /// [`wait`]: crate::Job::wait
    Async,
}

/// The storage levels of a job.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The node-local cache: a path template in which `{node}`, `{rank}` and `{job}` expand
    /// (the node's index, the rank, and the batch job's id).
    pub local: String,
    /// Persistent storage (a job store on a parallel file system), if any.
    #[serde(default)]
    pub persistent: Option<PathBuf>,
    /// Whether each rank's versions are also copied to a partner rank on another node.
    #[serde(default)]
    pub partner: bool,
    /// Synchronous or background flushes to persistent storage.
    #[serde(default)]
    pub mode: FlushMode,
    /// Flush every k-th version (by number) to persistent storage; 1 flushes all.
    #[serde(default = "one")]
    pub persistent_interval: u64,
    /// Committed versions kept in each local cache (all when unset).
    #[serde(default)]
    pub keep_local: Option<usize>,
    /// Committed versions kept on persistent storage (all when unset).
    #[serde(default)]
    pub keep_persistent: Option<usize>,
}

fn one() -> u64 {
    1
}

#[derive(Deserialize)]
struct FileShape {
    storage: Option<StorageConfig>,
}

impl StorageConfig {
    /// One level: the job store `dir`, as `--store DIR` gives.
    pub fn single(dir: impl AsRef<Path>) -> StorageConfig {
        StorageConfig {
            local: dir.as_ref().display().to_string(),
            persistent: None,
            partner: false,
            mode: FlushMode::Sync,
            persistent_interval: 1,
            keep_local: None,
            keep_persistent: None,
        }
    }

    /// Reads the `[storage]` table of the TOML file `path`. Other tables are left to their
    /// readers; a missing `[storage]` table, an unknown key or a bad value is an error naming
    /// the file.
    pub fn load(path: &Path) -> Result<StorageConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            why: format!("cannot read the configuration file: {e}"),
        })?;
        StorageConfig::parse(path, &text)
    }

    /// [`load`](Self::load) from text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<StorageConfig, ConfigError> {
        let err = |why: String| ConfigError {
            path: path.to_path_buf(),
            why,
        };
        let shape: FileShape = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let cfg = shape
            .storage
            .ok_or_else(|| err("no [storage] table".into()))?;
        cfg.check().map_err(err)?;
        Ok(cfg)
    }

    /// Whether the settings make sense together; `Err` says what does not.
    pub fn check(&self) -> Result<(), String> {
        if self.local.trim().is_empty() {
            return Err("[storage] local is empty".into());
        }
        let mut rest = self.local.as_str();
        while let Some(i) = rest.find('{') {
            let Some(j) = rest[i..].find('}') else {
                return Err(format!(
                    "[storage] local {:?}: an unclosed `{{`",
                    self.local
                ));
            };
            let key = &rest[i + 1..i + j];
            if !matches!(key, "node" | "rank" | "job") {
                return Err(format!(
                    "[storage] local {:?}: unknown placeholder {{{key}}} (known: {{node}}, {{rank}}, {{job}})",
                    self.local
                ));
            }
            rest = &rest[i + j + 1..];
        }
        if self.persistent_interval == 0 {
            return Err("[storage] persistent_interval must be at least 1".into());
        }
        if self.keep_local == Some(0) || self.keep_persistent == Some(0) {
            return Err("[storage] keep_local and keep_persistent must be at least 1".into());
        }
        if self.persistent.is_none() {
            if self.mode == FlushMode::Async {
                return Err(
                    "[storage] mode = \"async\" flushes to persistent storage: set persistent"
                        .into(),
                );
            }
            if self.keep_persistent.is_some() {
                return Err("[storage] keep_persistent is set but persistent is not".into());
            }
        }
        Ok(())
    }

    /// The local cache's path for `rank` on node `node` of batch job `job`.
    pub fn local_dir(&self, node: u32, rank: u32, job: &str) -> PathBuf {
        PathBuf::from(
            self.local
                .replace("{node}", &node.to_string())
                .replace("{rank}", &rank.to_string())
                .replace("{job}", job),
        )
    }
}

/// The batch job's id for `{job}`: `SLURM_JOB_ID`, `PBS_JOBID`, `LSB_JOBID` or
/// `CKPT_JOB_ID`, else `"nojob"`.
pub fn job_id() -> String {
    ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "CKPT_JOB_ID"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "nojob".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StorageConfig, ConfigError> {
        StorageConfig::parse(Path::new("/etc/job.toml"), text)
    }

    #[test]
    fn a_full_table_parses() {
        let c = parse(
            "[storage]\nlocal = \"/tmp/{job}/n{node}/r{rank}\"\npersistent = \"/pfs/x\"\n\
             partner = true\nmode = \"async\"\npersistent_interval = 3\nkeep_local = 2\n\
             keep_persistent = 5\n[other]\nx = 1\n",
        )
        .unwrap();
        assert_eq!(c.mode, FlushMode::Async);
        assert!(c.partner);
        assert_eq!(c.persistent_interval, 3);
        assert_eq!(c.keep_local, Some(2));
        assert_eq!(c.keep_persistent, Some(5));
        assert_eq!(c.local_dir(3, 7, "42"), PathBuf::from("/tmp/42/n3/r7"));
    }

    #[test]
    fn defaults_are_one_synchronous_level() {
        let c = parse("[storage]\nlocal = \"/tmp/x\"\n").unwrap();
        assert_eq!(c, StorageConfig::single("/tmp/x"));
    }

    #[test]
    fn bad_tables_are_errors_naming_the_file() {
        for (text, says) in [
            ("[storage]\n", "local"),
            ("x = 1\n", "no [storage] table"),
            (
                "[storage]\nlocal = \"/a/{host}\"\n",
                "unknown placeholder {host}",
            ),
            ("[storage]\nlocal = \"/a\"\nmode = \"later\"\n", "later"),
            (
                "[storage]\nlocal = \"/a\"\nmode = \"async\"\n",
                "set persistent",
            ),
            ("[storage]\nlocal = \"/a\"\nkeep_local = 0\n", "at least 1"),
            (
                "[storage]\nlocal = \"/a\"\npersistent_interval = 0\n",
                "at least 1",
            ),
            ("[storage]\nlocal = \"/a\"\nspeed = 3\n", "speed"),
            ("[storage]\nlocal = \"/a\"\npartner = \"yes\"\n", "partner"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("/etc/job.toml: "), "{e}");
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }
}
