//! `ckpt prolog` and `ckpt epilog`: Slurm's Prolog and Epilog, which move a job's checkpoints
//! between the node-local cache and persistent storage (SCR's stage-in and scavenge).
//!
//! The job store of job `J` lives in `<local_root>/J` while the job runs (the application
//! writes there) and in `<persistent_root>/J` between runs. The prolog creates the cache
//! directory (mode 0700, owned by the job's user) and stages the newest committed version in
//! from persistent storage (a requeued job); the epilog copies every committed version the
//! cache holds out to persistent storage, verifies it, applies retention there, and only then
//! removes the cache. A committed version's only copy is never deleted: if anything fails or
//! the time bound passes, the cache stays and the epilog fails, naming what went wrong.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ckpt_engine::job::{CopyReport, JobStore};
use serde::{Deserialize, Serialize};

/// The default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/ckpt/ckpt.toml";

/// `/etc/ckpt/ckpt.toml` (or the file `CKPT_CONFIG` names).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// The node-local cache: job `J` writes `<local_root>/J`.
    pub local_root: PathBuf,
    /// Persistent storage: job `J`'s checkpoints are kept in `<persistent_root>/J`.
    pub persistent_root: PathBuf,
    /// Committed versions kept on persistent storage (0 or absent: all).
    #[serde(default)]
    pub keep: usize,
    /// The epilog gives up (keeping the cache) after this many seconds. Default 600.
    #[serde(default = "default_timeout")]
    pub epilog_timeout_secs: u64,
}

fn default_timeout() -> u64 {
    600
}

impl HookConfig {
    /// Reads `path`, or `CKPT_CONFIG`, or [`DEFAULT_CONFIG`].
    pub fn load(path: Option<&Path>) -> Result<HookConfig> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os("CKPT_CONFIG")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG)),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read the configuration", path.display()))?;
        HookConfig::parse(&path, &text)
    }

    /// Parses the text of a configuration read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<HookConfig> {
        let c: HookConfig =
            toml::from_str(text).with_context(|| format!("{}: invalid", path.display()))?;
        for (key, p) in [
            ("local_root", &c.local_root),
            ("persistent_root", &c.persistent_root),
        ] {
            if !p.is_absolute() {
                bail!(
                    "{}: {key} = {:?} must be an absolute path",
                    path.display(),
                    p
                );
            }
        }
        Ok(c)
    }
}

/// The job, from Slurm's environment.
#[derive(Debug, Clone, Serialize)]
pub struct SlurmJob {
    /// `SLURM_JOB_ID`.
    pub id: String,
    /// `SLURM_JOB_USER`.
    pub user: String,
    /// `SLURM_JOB_UID`.
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
}

impl SlurmJob {
    /// Reads `SLURM_JOB_ID`, `SLURM_JOB_USER` and `SLURM_JOB_UID` (and `SLURM_JOB_GID`, or the
    /// user's primary group).
    pub fn from_env() -> Result<SlurmJob> {
        let var = |k: &str| {
            std::env::var(k)
                .with_context(|| format!("{k} is not set (run me as Slurm's Prolog or Epilog)"))
        };
        let id = var("SLURM_JOB_ID")?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("SLURM_JOB_ID = {id:?} is not a job id");
        }
        let user = var("SLURM_JOB_USER")?;
        let uid: u32 = var("SLURM_JOB_UID")?
            .parse()
            .context("SLURM_JOB_UID is not a number")?;
        let gid = match std::env::var("SLURM_JOB_GID")
            .ok()
            .and_then(|g| g.parse().ok())
        {
            Some(g) => g,
            None => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map_or(uid, |u| u.gid.as_raw()),
        };
        Ok(SlurmJob { id, user, uid, gid })
    }
}

/// What the prolog did.
#[derive(Debug, Serialize)]
pub struct PrologReport {
    /// The job's cache directory.
    pub local: PathBuf,
    /// The version staged in, if any.
    pub staged: Option<u64>,
    /// The copy.
    pub copy: CopyReport,
    /// Newer versions that could not be staged, and why.
    pub skipped: Vec<String>,
}

/// What the epilog did.
#[derive(Debug, Serialize)]
pub struct EpilogReport {
    /// The job's cache directory.
    pub local: PathBuf,
    /// Persistent storage of the job.
    pub persistent: PathBuf,
    /// The copy out.
    pub copy: CopyReport,
    /// Commit records retention removed from persistent storage.
    pub retired: Vec<u64>,
    /// Whether the cache was removed.
    pub cache_removed: bool,
}

/// Gives `path` and everything under it to the job's user.
fn chown_tree(path: &Path, job: &SlurmJob) -> Result<()> {
    let (uid, gid) = (
        Some(nix::unistd::Uid::from_raw(job.uid)),
        Some(nix::unistd::Gid::from_raw(job.gid)),
    );
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("{}: cannot stat", path.display()))?;
    if meta.file_type().is_symlink() {
        bail!(
            "{}: a symbolic link inside a job store; refusing it",
            path.display()
        );
    }
    nix::unistd::chown(path, uid, gid).with_context(|| {
        format!(
            "{}: cannot give it to {} ({})",
            path.display(),
            job.user,
            job.uid
        )
    })?;
    if meta.is_dir() {
        for e in
            std::fs::read_dir(path).with_context(|| format!("{}: cannot list", path.display()))?
        {
            chown_tree(&e?.path(), job)?;
        }
    }
    Ok(())
}

/// Creates a root directory the hooks put job directories in, if it is missing: mode 0711,
/// so that each job's user can reach their own (0700) job directory but list no one else's.
fn ensure_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if root.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(root)
        .with_context(|| format!("{}: cannot create", root.display()))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("{}: cannot set its mode", root.display()))?;
    Ok(())
}

/// `ckpt prolog`.
pub fn prolog(cfg: &HookConfig, job: &SlurmJob) -> Result<PrologReport> {
    let local = cfg.local_root.join(&job.id);
    let persistent = cfg.persistent_root.join(&job.id);
    ensure_root(&cfg.local_root)?;
    ckpt_engine::store::create_dir(&local)?;
    chown_tree(&local, job)?;
    let mut report = PrologReport {
        local: local.clone(),
        staged: None,
        copy: CopyReport::default(),
        skipped: Vec::new(),
    };
    let Some((from, _)) = JobStore::detect(&persistent)? else {
        return Ok(report); // a first run: nothing to stage
    };
    let commits = from.commits()?;
    let to = JobStore::new(&local, from.name())?;
    for &v in commits.iter().rev() {
        match from.copy_version_to(&to, v, false, None, &mut report.copy) {
            Ok(()) => {
                report.staged = Some(v);
                break;
            }
            Err(e) => report.skipped.push(format!("version {v}: {e}")),
        }
    }
    if report.staged.is_none() && !commits.is_empty() {
        bail!(
            "{}: committed versions exist but none could be staged into {} (the job would \
             start from scratch over them): {}",
            persistent.display(),
            local.display(),
            report.skipped.join("; ")
        );
    }
    chown_tree(&local, job)?;
    Ok(report)
}

/// `ckpt epilog`. `progress(done, total)` counts the versions scavenged.
pub fn epilog(
    cfg: &HookConfig,
    job: &SlurmJob,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<EpilogReport> {
    let local = cfg.local_root.join(&job.id);
    let persistent = cfg.persistent_root.join(&job.id);
    let deadline = Instant::now() + Duration::from_secs(cfg.epilog_timeout_secs);
    let mut report = EpilogReport {
        local: local.clone(),
        persistent: persistent.clone(),
        copy: CopyReport::default(),
        retired: Vec::new(),
        cache_removed: false,
    };
    if !local.exists() {
        return Ok(report); // already cleaned (an epilog run twice)
    }
    let detected = JobStore::detect(&local)?;
    if detected.is_none() {
        // No job description here. Version files without one may belong to versions whose
        // commit records live on another node (a job store split across node-local caches):
        // they might be the only copy, so they stay.
        if let Some(f) = first_version_file(&local)? {
            bail!(
                "{} holds checkpoint files ({}) but no job description (ckpt-job): not a job \
                 store this epilog can flush (one split across nodes?); the cache is kept",
                local.display(),
                f.display()
            );
        }
    }
    if let Some((from, _)) = detected {
        let commits = from.commits()?;
        let to = JobStore::new(&persistent, from.name())?;
        ensure_root(&cfg.persistent_root)?;
        for (i, &v) in commits.iter().enumerate() {
            progress(i as u64, commits.len() as u64);
            from.copy_version_to(&to, v, true, Some(deadline), &mut report.copy)
                .with_context(|| {
                    format!(
                        "scavenging version {v} to {} (the cache {} is kept)",
                        persistent.display(),
                        local.display()
                    )
                })?;
        }
        progress(commits.len() as u64, commits.len() as u64);
        if cfg.keep > 0 && !commits.is_empty() {
            report.retired = to.compact(cfg.keep, false)?.commits_removed;
        }
        if persistent.exists() {
            chown_tree(&persistent, job)?;
        }
        // Only now may the cache go: every committed version it holds is on persistent
        // storage, or older than what retention keeps there.
        let kept = to.commits()?;
        let oldest = kept.first().copied().unwrap_or(u64::MAX);
        if let Some(v) = commits.iter().find(|v| !kept.contains(v) && **v > oldest) {
            bail!(
                "version {v} is in {} but not in {}; the cache is kept",
                local.display(),
                persistent.display()
            );
        }
    }
    std::fs::remove_dir_all(&local)
        .with_context(|| format!("{}: cannot remove the cache", local.display()))?;
    report.cache_removed = true;
    Ok(report)
}

/// The first version file (of either naming) under `dir`, if any.
fn first_version_file(dir: &Path) -> Result<Option<PathBuf>> {
    for e in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let e = e?;
        let p = e.path();
        let t = e.file_type()?;
        if t.is_dir() {
            if let Some(f) = first_version_file(&p)? {
                return Ok(Some(f));
            }
        } else if ckpt_engine::store::Naming::parse_any(&e.file_name().to_string_lossy()).is_some()
        {
            return Ok(Some(p));
        }
    }
    Ok(None)
}
