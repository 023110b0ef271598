//! Read-only operations on a store for tools: list versions, verify files, export a version
//! to plain files. None of them takes the writer lock.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::FLAG_FULL;
use crate::read::{Version, VersionFile};
use crate::store::Store;

/// One committed version as listed by [`list`].
#[derive(Debug, Clone)]
pub struct VersionInfo {
    /// Version number.
    pub version: u64,
    /// Parent version, if a delta.
    pub parent: Option<u64>,
    /// Plain file name.
    pub file: String,
    /// File size.
    pub bytes: u64,
    /// Delta depth (0: full).
    pub depth: u32,
    /// Whether the file is self-contained.
    pub full: bool,
}

/// Lists the committed versions of a chain, reading each file's header (and checking it).
pub fn list(store: &Store) -> Result<Vec<VersionInfo>> {
    store
        .versions()?
        .into_iter()
        .map(|v| {
            let path = store.path_of(v);
            let f = VersionFile::open(&path)?;
            Ok(VersionInfo {
                version: v,
                parent: f.header.parent.map(|p| p.version),
                file: crate::store::version_file_name(store.name(), v),
                bytes: f.size(),
                depth: f.header.depth,
                full: f.header.flags & FLAG_FULL != 0,
            })
        })
        .collect()
}

/// Fully checks one version: its file (header, footer, index, every stored page against its
/// hash), every file it references (identity, and every page it uses there), so that a
/// version that passes restores correctly.
pub fn verify_version(path: &Path) -> Result<()> {
    let v = Version::open(path)?;
    for f in v.files() {
        f.verify_records()?;
    }
    v.verify_references()
}

/// Writes each region of `version` (newest if `None`) to `out/region-<id>.bin` (mode 0600).
/// Returns the version and the files written.
pub fn export(store: &Store, version: Option<u64>, out: &Path) -> Result<(u64, Vec<PathBuf>)> {
    let version = match version {
        Some(v) => v,
        None => store.latest()?.ok_or_else(|| Error::NotFound {
            dir: store.dir().to_path_buf(),
            what: format!("no versions of chain {:?}", store.name()),
        })?,
    };
    let path = store.path_of(version);
    if !path.exists() {
        return Err(Error::NotFound {
            dir: store.dir().to_path_buf(),
            what: format!("no version {version} of chain {:?}", store.name()),
        });
    }
    let v = Version::open(&path)?;
    crate::store::create_dir_durable(out)?;
    let mut written = Vec::new();
    for (i, r) in v.regions().iter().enumerate() {
        let p = out.join(format!("region-{}.bin", r.id));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| Error::io(&p, "create", e))?;
        f.set_len(r.byte_len)
            .map_err(|e| Error::io(&p, "set length", e))?;
        let mut map =
            crate::sys::mapping::map_new_output(&f).map_err(|e| Error::io(&p, "mmap", e))?;
        v.restore_region(i, &mut map)?;
        map.flush().map_err(|e| Error::io(&p, "flush", e))?;
        written.push(p);
    }
    Ok((version, written))
}
