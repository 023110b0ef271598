//! Configuration files of the C and VeloC interfaces: VeloC's INI-style `key = value` lines,
//! with `VELOC_<KEY>` (or `CKPT_<KEY>`) environment variables overriding the file.

use std::path::{Path, PathBuf};

use ckpt_engine::{Config, Tracking};

use crate::storage::StorageConfig;

/// A configuration file that cannot be used. The message names the file and the line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {why}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub why: String,
}

/// The `key = value` pairs of a file, in order, with their line numbers. Blank lines, lines
/// starting with `#` or `;`, and section headers (`[name]`) are skipped.
pub fn parse_ini(path: &Path, text: &str) -> Result<Vec<(String, String, usize)>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('[')
        {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ConfigError {
                path: path.to_path_buf(),
                why: format!("line {}: expected `key = value`, found {line:?}", i + 1),
            });
        };
        out.push((k.trim().to_ascii_lowercase(), v.trim().to_string(), i + 1));
    }
    Ok(out)
}

/// Reads and parses a configuration file; an unreadable file is an error naming it.
pub fn read_ini(path: &Path) -> Result<Vec<(String, String, usize)>, ConfigError> {
    parse_ini(path, &read_text(path)?)
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        why: format!("cannot read the configuration file: {e}"),
    })
}

/// The value of `key` in `pairs` (the last one wins), overridden by the environment
/// variable `<prefix><KEY>` when set.
fn lookup(pairs: &[(String, String, usize)], prefix: &str, key: &str) -> Option<String> {
    if let Ok(v) = std::env::var(format!("{prefix}{}", key.to_ascii_uppercase())) {
        return Some(v);
    }
    pairs
        .iter()
        .rev()
        .find(|(k, _, _)| k == key)
        .map(|(_, v, _)| v.clone())
}

fn number<T: std::str::FromStr>(path: &Path, key: &str, v: &str) -> Result<T, ConfigError> {
    v.parse().map_err(|_| ConfigError {
        path: path.to_path_buf(),
        why: format!("{key} = {v:?} is not a valid number"),
    })
}

/// Engine settings any configuration file may carry: `tracking` (auto, hash, uffd),
/// `compression` (zstd level, 0 = none), `max_chain_depth`, `page_size`, `audit_every`,
/// `snapshot` (how asynchronous checkpoints take their snapshot: auto, copy, fork),
/// `flush_stall_secs` (a forked flush stuck on locks this long is killed; 0: never).
const ENGINE_KEYS: [&str; 7] = [
    "tracking",
    "compression",
    "max_chain_depth",
    "page_size",
    "audit_every",
    "snapshot",
    "flush_stall_secs",
];

fn engine_config(
    path: &Path,
    pairs: &[(String, String, usize)],
    prefix: &str,
) -> Result<Config, ConfigError> {
    let mut c = Config::default();
    if let Some(v) = lookup(pairs, prefix, "tracking") {
        c.tracking = v.parse::<Tracking>().map_err(|e| ConfigError {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
    }
    if let Some(v) = lookup(pairs, prefix, "snapshot") {
        c.snapshot = v
            .parse::<ckpt_engine::Snapshot>()
            .map_err(|e| ConfigError {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
    }
    if let Some(v) = lookup(pairs, prefix, "compression") {
        c.compression_level = number(path, "compression", &v)?;
    }
    if let Some(v) = lookup(pairs, prefix, "max_chain_depth") {
        c.max_chain_depth = number(path, "max_chain_depth", &v)?;
    }
    if let Some(v) = lookup(pairs, prefix, "page_size") {
        c.page_size = number(path, "page_size", &v)?;
    }
    if let Some(v) = lookup(pairs, prefix, "audit_every") {
        c.audit_every = number(path, "audit_every", &v)?;
    }
    if let Some(v) = lookup(pairs, prefix, "flush_stall_secs") {
        let secs: u64 = number(path, "flush_stall_secs", &v)?;
        c.flush_stall_limit = (secs > 0).then(|| std::time::Duration::from_secs(secs));
    }
    Ok(c)
}

/// Warns (through `tracing`) about each key of `pairs` not in `known`.
fn warn_unknown(path: &Path, pairs: &[(String, String, usize)], known: &[&str]) -> Vec<String> {
    let mut unknown = Vec::new();
    for (k, _, line) in pairs {
        if !known.contains(&k.as_str()) && !ENGINE_KEYS.contains(&k.as_str()) {
            tracing::warn!("{}: line {line}: unknown key {k:?} ignored", path.display());
            unknown.push(k.clone());
        }
    }
    unknown
}

/// The native C API's optional configuration file: engine settings (see `ENGINE_KEYS`;
/// `CKPT_<KEY>` variables override them) and, in a TOML `[storage]` table, the job's storage
/// levels (see [`crate::storage`]). Engine keys go before any table; values may be quoted.
pub fn native(path: Option<&Path>) -> Result<(Config, Option<StorageConfig>), ConfigError> {
    let Some(p) = path else {
        let path = PathBuf::from("(no configuration file)");
        return Ok((engine_config(&path, &[], "CKPT_")?, None));
    };
    let text = read_text(p)?;
    let storage = if text.lines().any(|l| l.trim() == "[storage]") {
        Some(StorageConfig::parse(p, &text)?)
    } else {
        None
    };
    // The engine keys: everything before the first table.
    let head: String = text
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut pairs = parse_ini(p, &head)?;
    for (_, v, _) in &mut pairs {
        if let Some(inner) = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            *v = inner.to_string();
        }
    }
    warn_unknown(p, &pairs, &[]);
    Ok((engine_config(p, &pairs, "CKPT_")?, storage))
}

/// Whether a VeloC checkpoint returns before or after its copy reaches persistent storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `mode = sync`: durable in scratch and persistent when the checkpoint returns.
    Sync,
    /// `mode = async`: durable in scratch when it returns; a background thread copies it to
    /// persistent storage (`VELOC_Checkpoint_wait` waits for that). With `nonblocking =
    /// true` (a ckpt extension), it returns once its snapshot is taken, and the scratch write
    /// is in the background too.
    Async,
}

/// A VeloC configuration file.
#[derive(Debug, Clone)]
pub struct VelocConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// `scratch`: the node-local directory (required).
    pub scratch: PathBuf,
    /// `persistent`: the directory on shared storage (optional).
    pub persistent: Option<PathBuf>,
    /// `mode` (required).
    pub mode: Mode,
    /// `max_versions`: versions kept on persistent storage (all if unset or 0).
    pub max_versions: Option<usize>,
    /// `scratch_versions`: versions kept in scratch (all if unset or 0).
    pub scratch_versions: Option<usize>,
    /// `persistent_interval`, seconds: a checkpoint is copied to persistent storage only if
    /// this long has passed since the last copy (0 or unset: every checkpoint).
    pub persistent_interval: Option<u64>,
    /// `ec_interval`, seconds: accepted for compatibility; ckpt has no erasure-coding level.
    pub ec_interval: Option<i64>,
    /// `nonblocking` (ckpt's extension, `mode = async` only): checkpoints return once their
    /// snapshot is taken, before the scratch write (`VELOC_Checkpoint_wait` waits for it).
    pub nonblocking: bool,
    /// Engine settings.
    pub engine: Config,
}

const VELOC_KEYS: [&str; 14] = [
    "scratch",
    "nonblocking",
    "persistent",
    "mode",
    "max_versions",
    "scratch_versions",
    "persistent_interval",
    "ec_interval",
    "chksum",
    "axl_type",
    "watchdog",
    "failure_domain",
    "persistent_versions",
    "meta_interval",
];

impl VelocConfig {
    /// Reads a VeloC configuration file; `VELOC_<KEY>` variables override its values.
    pub fn load(path: &Path) -> Result<VelocConfig, ConfigError> {
        let text = read_text(path)?;
        VelocConfig::parse(path, &text)
    }

    /// Parses the text of a VeloC configuration file read from `path` (named in errors);
    /// `VELOC_<KEY>` variables override its values.
    pub fn parse(path: &Path, text: &str) -> Result<VelocConfig, ConfigError> {
        let pairs = parse_ini(path, text)?;
        let err = |why: String| ConfigError {
            path: path.to_path_buf(),
            why,
        };
        warn_unknown(path, &pairs, &VELOC_KEYS);
        let get = |k: &str| lookup(&pairs, "VELOC_", k).filter(|v| !v.is_empty());
        let scratch = get("scratch").ok_or_else(|| {
            err("no `scratch` directory (required: `scratch = /node/local/dir`)".into())
        })?;
        let mode = match get("mode").as_deref() {
            Some("sync") => Mode::Sync,
            Some("async") => Mode::Async,
            Some(m) => return Err(err(format!("mode = {m:?}: expected sync or async"))),
            None => {
                return Err(err(
                    "no `mode` (required: `mode = sync` or `mode = async`)".into()
                ))
            }
        };
        let count = |k: &str| -> Result<Option<usize>, ConfigError> {
            get(k)
                .map(|v| number::<usize>(path, k, &v))
                .transpose()
                .map(|o| o.filter(|&n| n > 0))
        };
        let nonblocking = match get("nonblocking").as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") if mode == Mode::Async => true,
            Some("true" | "1") => {
                return Err(err(
                    "nonblocking = true needs mode = async (sync mode waits for every copy)".into(),
                ))
            }
            Some(v) => return Err(err(format!("nonblocking = {v:?}: expected true or false"))),
        };
        if let Some(v) = get("chksum") {
            if !matches!(v.as_str(), "true" | "false" | "1" | "0") {
                return Err(err(format!("chksum = {v:?}: expected true or false")));
            }
        }
        Ok(VelocConfig {
            path: path.to_path_buf(),
            scratch: PathBuf::from(scratch),
            persistent: get("persistent").map(PathBuf::from),
            mode,
            max_versions: count("max_versions")?,
            scratch_versions: count("scratch_versions")?,
            persistent_interval: get("persistent_interval")
                .map(|v| number(path, "persistent_interval", &v))
                .transpose()?,
            ec_interval: get("ec_interval")
                .map(|v| number(path, "ec_interval", &v))
                .transpose()?,
            nonblocking,
            engine: engine_config(path, &pairs, "VELOC_")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("veloc.cfg");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn veloc_file() {
        let (_d, p) = write(
            "# comment\nscratch = /tmp/s\npersistent=/tmp/p\nmode = async\nmax_versions = 3\n\
             chksum = true\nmeta = /x\nec_interval = -1\n",
        );
        let c = VelocConfig::load(&p).unwrap();
        assert_eq!(c.scratch, PathBuf::from("/tmp/s"));
        assert_eq!(c.persistent, Some(PathBuf::from("/tmp/p")));
        assert_eq!(c.mode, Mode::Async);
        assert_eq!(c.max_versions, Some(3));
        assert_eq!(c.scratch_versions, None);
        assert_eq!(c.ec_interval, Some(-1));
    }

    #[test]
    fn veloc_errors_name_the_file() {
        let (_d, p) = write("persistent = /tmp/p\nmode = sync\n");
        let e = VelocConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("veloc.cfg") && e.contains("scratch"), "{e}");
        let (_d, p) = write("scratch = /tmp/s\nmode = fast\n");
        let e = VelocConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("mode"), "{e}");
        let (_d, p) = write("scratch = /tmp/s\nmode = sync\nmax_versions = many\n");
        assert!(VelocConfig::load(&p).is_err());
        let (_d, p) = write("scratch /tmp/s\n");
        let e = VelocConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = VelocConfig::load(Path::new("/nonexistent/v.cfg"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/v.cfg"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let (_d, p) = write("scratch = /tmp/s\nmode = sync\nec_interval = 5\n");
        // No other test reads ec_interval, so setting its variable here races with nothing.
        std::env::set_var("VELOC_EC_INTERVAL", "17");
        let c = VelocConfig::load(&p);
        std::env::remove_var("VELOC_EC_INTERVAL");
        assert_eq!(c.unwrap().ec_interval, Some(17));
    }

    #[test]
    fn native_engine_keys() {
        let (_d, p) = write("tracking = hash\ncompression = 0\nmax_chain_depth = 4\n");
        let (c, storage) = native(Some(&p)).unwrap();
        assert_eq!(c.tracking, Tracking::Hash);
        assert_eq!(c.compression_level, 0);
        assert_eq!(c.max_chain_depth, 4);
        assert_eq!(c.flush_stall_limit, Config::default().flush_stall_limit);
        assert!(storage.is_none());
        let (_d, p) = write("flush_stall_secs = 30\n");
        let limit = native(Some(&p)).unwrap().0.flush_stall_limit;
        assert_eq!(limit, Some(std::time::Duration::from_secs(30)));
        let (_d, p) = write("flush_stall_secs = 0\n");
        assert_eq!(native(Some(&p)).unwrap().0.flush_stall_limit, None);
        let (_d, p) = write("flush_stall_secs = soon\n");
        assert!(native(Some(&p)).is_err());
        let (_d, p) = write("tracking = psychic\n");
        assert!(native(Some(&p)).is_err());
    }

    #[test]
    fn native_storage_table() {
        let (_d, p) =
            write("tracking = \"hash\"\n[storage]\nlocal = \"/tmp/n{node}\"\npartner = true\n");
        let (c, storage) = native(Some(&p)).unwrap();
        assert_eq!(c.tracking, Tracking::Hash);
        let storage = storage.unwrap();
        assert!(storage.partner);
        assert_eq!(storage.local, "/tmp/n{node}");
        let (_d, p) = write("[storage]\nlocal = \"/tmp/x\"\nmode = \"eventually\"\n");
        let e = native(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("eventually"), "{e}");
    }
}
