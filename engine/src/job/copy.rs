//! Copying committed versions of a job store to another job store: how the scheduler hooks
//! move checkpoints between storage levels (`ckpt prolog` stages the newest one into the
//! node-local cache, `ckpt epilog` scavenges the cache's versions out to persistent storage).
//!
//! A version is copied rank file by rank file, parents before children, each file atomically
//! (temporary, fsync, rename, directory fsync), then checked, and its commit record is
//! copied last: until then the destination does not list the version, so a crash at any
//! instant leaves at most invisible rank files and dead temporaries, which the next copy
//! reuses or removes. Files the destination already holds with the right identity are not
//! copied again, so copying twice is harmless.

use std::path::PathBuf;
use std::time::Instant;

use std::path::Path;

use super::{JobStore, META_FILE};
use crate::error::{Error, Result};
use crate::store::{self, Store};

/// What [`JobStore::copy_version_to`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CopyReport {
    /// Versions copied (their commit records written at the destination).
    pub versions: Vec<u64>,
    /// Versions the destination already had.
    pub already_there: Vec<u64>,
    /// Rank files copied.
    pub files_copied: u64,
    /// Their bytes.
    pub bytes_copied: u64,
    /// Rank files the destination already had with the right identity.
    pub files_reused: u64,
    /// Dead temporaries (of an earlier, interrupted copy) removed at the destination.
    pub temps_removed: Vec<PathBuf>,
}

impl JobStore {
    /// Copies committed version `v` into job store `dst` (same chain; created if needed):
    /// the job description, every rank's files the version needs, each checked against
    /// this store's commit record (with `verify`, every page too), and the commit record
    /// last. Fails, copying no commit record, if `deadline` passes first.
    pub fn copy_version_to(
        &self,
        dst: &JobStore,
        v: u64,
        verify: bool,
        deadline: Option<Instant>,
        report: &mut CopyReport,
    ) -> Result<()> {
        let meta = self.meta()?.ok_or_else(|| Error::NotFound {
            dir: self.dir.clone(),
            what: format!("no {META_FILE} file: not a job store"),
        })?;
        let rec = self.read_commit(v)?;
        // The destination's description: written once, and it must agree.
        match dst.meta()? {
            Some(m) if m.world_size != meta.world_size => {
                return Err(Error::corrupt(
                    dst.dir.join(META_FILE),
                    "job description",
                    format!(
                        "says {} ranks, the job store copied into it has {}",
                        m.world_size, meta.world_size
                    ),
                ))
            }
            Some(_) => {}
            None => match dst.write_meta(meta.world_size) {
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => other?,
            },
        }
        if dst.commits()?.contains(&v) {
            if dst.read_commit(v)? != rec {
                return Err(Error::corrupt(
                    dst.commits_dir().join(dst.commit_name(v)),
                    "commit record",
                    format!(
                        "differs from {}'s record of version {v}: two different jobs?",
                        self.dir.display()
                    ),
                ));
            }
            report.already_there.push(v);
            return Ok(());
        }
        for rank in 0..meta.world_size {
            let src = self.check_rank_file(v, rank, meta.world_size)?;
            let dst_store = Store::new(dst.checked_rank_dir(rank)?, &self.name)?;
            let copy = copy_chain(&src, &dst_store, deadline, report)?;
            let version = crate::read::Version::open(&copy)?;
            if !version.file().satisfies(&rec.ranks[rank as usize]) {
                return Err(Error::ReplacedReference {
                    path: copy.clone(),
                    referenced: copy,
                    expected: crate::format::hex(&rec.ranks[rank as usize].file_id),
                    found: crate::format::hex(&version.file().header.file_id),
                });
            }
            if verify {
                crate::catalog::verify_version(&copy)?;
            }
        }
        dst.write_commit(&rec)?;
        report.versions.push(v);
        Ok(())
    }
}

/// Copies version file `src` and every file it references (its chain, as far as it reaches)
/// into store `dst`, parents before children, each atomically; files `dst` already holds
/// with the right identity are kept. Dead temporaries of an earlier, interrupted copy are
/// removed first, and the full versions copied join `dst`'s membership record, so that its
/// writer accepts them. Returns the copy of `src`. Fails, leaving only complete files
/// behind, if `deadline` passes first.
pub fn copy_chain(
    src: &Path,
    dst: &Store,
    deadline: Option<Instant>,
    report: &mut CopyReport,
) -> Result<PathBuf> {
    let src_dir = match src.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    store::create_dir_durable(dst.dir())?;
    report
        .temps_removed
        .extend(store::remove_dead_temps(dst.dir())?);
    // Itself first in the list: copy what it references before it.
    let mut needed = crate::catalog::check_complete(src)?;
    needed.reverse();
    let mut roots = Vec::new();
    for (name, identity) in &needed {
        let to = dst.dir().join(name);
        if store::exists(&to)? && crate::catalog::satisfies(&to, identity).unwrap_or(false) {
            report.files_reused += 1;
            continue;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(Error::TimedOut {
                what: format!("copying {} into {}", src.display(), dst.dir().display()),
            });
        }
        let from = src_dir.join(name);
        report.bytes_copied += store::copy_file_atomic(&from, &to)?;
        report.files_copied += 1;
        crate::fault::point("copy-chain");
        if crate::catalog::parent_of(&to)?.is_none() {
            roots.push(identity.file_id);
        }
    }
    if !roots.is_empty() {
        dst.record_roots(&roots)?;
    }
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::InvalidName {
            name: src.display().to_string(),
            why: "not a plain file name",
        })?;
    Ok(dst.dir().join(name))
}
