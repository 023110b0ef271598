//! Restore: rebuild a committed version into the registered regions.

use super::Checkpointer;
use std::path::Path;
use std::sync::Arc;

use crate::config::RestoreStats;
use crate::error::{Error, Result};
use crate::hash::RegionHashes;
use crate::read::Version;
use crate::write::index::Parent;

/// For each registered region (`regions`: ids and byte lengths, in engine order), its index
/// in the version's region table. Every registered region must be in the version with the
/// same size, and every region of the version must be registered.
pub(super) fn region_order(v: &Version, regions: &[(u64, usize)]) -> Result<Vec<usize>> {
    let path = v.file().path();
    let order = regions
        .iter()
        .map(|&(id, len)| stored_index(v, id, len))
        .collect::<Result<Vec<usize>>>()?;
    if let Some(e) = v
        .regions()
        .iter()
        .find(|e| !regions.iter().any(|r| r.0 == e.id))
    {
        return Err(Error::RegionMismatch {
            path: path.to_path_buf(),
            why: format!("region {} is in the checkpoint but not registered", e.id),
        });
    }
    Ok(order)
}

/// The parent picture of version `version` (already opened), with extents listed in the
/// engine's region order (`regions`).
pub(super) fn parent_from_version(
    v: &Version,
    version: u64,
    regions: &[(u64, usize)],
) -> Result<Parent> {
    let order = region_order(v, regions)?;
    let file = v.file();
    let mut parent = Parent::from_index(&file.index, version, file.identity(), file.header.depth);
    parent.extents = order.iter().map(|&i| parent.extents[i].clone()).collect();
    Ok(parent)
}

impl Checkpointer {
    /// Restores version `version` (the newest if `None`) into the registered regions. Every
    /// region of the checkpoint must be registered with the same size, and every registered
    /// region must be in the checkpoint. The next checkpoint is a delta against the restored
    /// version and gets a new number; versions above it are left alone.
    ///
    /// On error the contents of the regions are unspecified and the engine forgets its
    /// parent, so the next checkpoint is a full version.
    ///
    /// With `version` `None` and `CKPT_RESTORE_VERSION` set (by `ckpt debug`), that version
    /// is restored instead of the newest.
    pub fn restore(&mut self, version: Option<u64>) -> Result<RestoreStats> {
        // An asynchronous checkpoint in flight may be the version asked for.
        self.settle_logged();
        let version = match version {
            Some(v) => Some(v),
            None => crate::restore_version_override()?,
        };
        let (_, path) = self.store.resolve(version)?;
        self.restore_inner(&path, None)
    }

    /// Restores the version held in file `path`, a version file of this chain that may lie
    /// in another directory (a copy on other storage, say). As [`restore`](Self::restore),
    /// except that the next checkpoint is a full version when `path` is not in this store's
    /// directory: a delta here must not reference files that exist only there.
    pub fn restore_path(&mut self, path: &Path) -> Result<RestoreStats> {
        self.restore_inner(path, None)
    }

    /// Restores only regions `ids` from the version in file `path`; other registered
    /// regions keep their contents. Each id must be registered and stored with the same size.
    /// The next checkpoint is a full version.
    pub fn restore_regions(&mut self, path: &Path, ids: &[u64]) -> Result<RestoreStats> {
        self.restore_inner(path, Some(ids))
    }

    /// The ids and byte lengths of the regions stored in version file `path`.
    pub fn regions_in(path: &Path) -> Result<Vec<(u64, u64)>> {
        let f = crate::read::VersionFile::open(path)?;
        Ok(f.index.regions.iter().map(|r| (r.id, r.byte_len)).collect())
    }

    fn restore_inner(&mut self, path: &Path, only: Option<&[u64]>) -> Result<RestoreStats> {
        self.settle_logged();
        let v = Version::open(path)?;
        let header = &v.file().header;
        if header.name != self.store.name() {
            return Err(Error::ChainMismatch {
                path: path.to_path_buf(),
                found: header.name.clone(),
                wanted: self.store.name().to_string(),
            });
        }
        let version = header.version;
        let ps = v.page_size();
        // For each registered region: its index in the version, or None to leave it alone.
        let order: Vec<Option<usize>> = match only {
            None => region_order(&v, &self.regions())?
                .into_iter()
                .map(Some)
                .collect(),
            Some(ids) => self.selected_order(&v, ids)?,
        };
        if only.is_some() && ps != self.config.page_size as usize {
            return Err(Error::RegionMismatch {
                path: path.to_path_buf(),
                why: format!(
                    "a selective restore needs the engine's page size ({}), but the version's is {ps}",
                    self.config.page_size
                ),
            });
        }
        self.parent = None;
        self.tracker
            .before_restore()
            .map_err(|e| Error::io(path, "remove write-protection before restore", e))?;
        let mut bytes = 0u64;
        let mut new_hashes = Vec::with_capacity(self.regions.len());
        let mut targets = Vec::with_capacity(self.regions.len());
        for (r, i) in self.regions.iter().zip(&order) {
            let pages = if i.is_some() { r.len().div_ceil(ps) } else { 0 };
            new_hashes.push(vec![0u128; pages]);
        }
        for ((r, i), hashes) in self.regions.iter_mut().zip(&order).zip(&mut new_hashes) {
            let Some(i) = *i else {
                continue;
            };
            let out = r.mem.bytes_mut();
            bytes += out.len() as u64;
            targets.push(crate::read::Target {
                region: i,
                out,
                fast: Some(hashes.as_mut_slice()),
            });
        }
        let bytes_in_place = v.restore_regions(targets)?;
        let new_hashes: Vec<RegionHashes> = new_hashes
            .into_iter()
            .zip(&order)
            .zip(self.hashes.iter())
            .map(|((pages, i), old)| match i {
                Some(_) => RegionHashes {
                    pages,
                    pages_known: true,
                },
                None => old.clone(),
            })
            .collect();
        // Only now: a failed restore leaves the old page size and hashes (which describe
        // contents, so they stay truthful whatever the restore overwrote).
        self.config.page_size = ps as u32;
        self.hashes = Arc::new(new_hashes);
        // The regions now hold exactly the restored version: nothing is dirty. (After a
        // selective restore the next checkpoint is full, so the others need no tracking.)
        self.tracker
            .after_restore()
            .map_err(|e| Error::io(path, "write-protect after restore", e))?;
        let here = path.parent().map(|d| same_dir(d, self.store.dir()));
        if only.is_none() && here == Some(true) {
            self.parent = Some(Arc::new(parent_from_version(&v, version, &self.regions())?));
        }
        crate::sys::ckpt_restored(version);
        Ok(RestoreStats {
            version,
            files_read: v.files().len(),
            bytes,
            bytes_in_place,
        })
    }

    /// For each registered region, its index in the version if its id is in `ids`.
    fn selected_order(&self, v: &Version, ids: &[u64]) -> Result<Vec<Option<usize>>> {
        let path = v.file().path();
        let mismatch = |why: String| Error::RegionMismatch {
            path: path.to_path_buf(),
            why,
        };
        if let Some(id) = ids
            .iter()
            .find(|id| !self.regions.iter().any(|r| r.id == **id))
        {
            return Err(mismatch(format!("region {id} is not registered")));
        }
        self.regions
            .iter()
            .map(|r| {
                if !ids.contains(&r.id) {
                    return Ok(None);
                }
                stored_index(v, r.id, r.len()).map(Some)
            })
            .collect()
    }
}

/// The index in `v`'s region table of registered region `id` of `len` bytes: it must be
/// stored there with that size.
fn stored_index(v: &Version, id: u64, len: usize) -> Result<usize> {
    let mismatch = |why: String| Error::RegionMismatch {
        path: v.file().path().to_path_buf(),
        why,
    };
    let i = v.regions().iter().position(|e| e.id == id).ok_or_else(|| {
        mismatch(format!(
            "region {id} is registered but not in the checkpoint"
        ))
    })?;
    let stored = v.regions()[i].byte_len;
    if stored != len as u64 {
        return Err(mismatch(format!(
            "region {id} is {stored} bytes in the checkpoint but {len} bytes registered"
        )));
    }
    Ok(i)
}

/// Whether two directory paths name the same directory (an empty path is `.`).
fn same_dir(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        std::fs::canonicalize(p).ok()
    };
    match (norm(a), norm(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}
