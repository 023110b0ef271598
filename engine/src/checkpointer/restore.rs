//! Restore: rebuild a committed version into the registered regions.

use super::Checkpointer;
use crate::config::RestoreStats;
use crate::error::{Error, Result};
use crate::hash::RegionHashes;
use crate::read::Version;
use crate::write::index::Parent;

impl Checkpointer {
    /// For each registered region (in engine order), its index in the version's region
    /// table. Every registered region must be in the version with the same size, and every
    /// region of the version must be registered.
    pub(super) fn region_order(&self, v: &Version) -> Result<Vec<usize>> {
        let path = v.file().path();
        let mismatch = |why: String| Error::RegionMismatch {
            path: path.to_path_buf(),
            why,
        };
        let mut order = Vec::with_capacity(self.regions.len());
        for r in &self.regions {
            let i = v
                .regions()
                .iter()
                .position(|e| e.id == r.id)
                .ok_or_else(|| {
                    mismatch(format!(
                        "region {} is registered but not in the checkpoint",
                        r.id
                    ))
                })?;
            let stored = v.regions()[i].byte_len;
            if stored != r.len() as u64 {
                return Err(mismatch(format!(
                    "region {} is {stored} bytes in the checkpoint but {} bytes registered",
                    r.id,
                    r.len()
                )));
            }
            order.push(i);
        }
        if let Some(e) = v
            .regions()
            .iter()
            .find(|e| !self.regions.iter().any(|r| r.id == e.id))
        {
            return Err(mismatch(format!(
                "region {} is in the checkpoint but not registered",
                e.id
            )));
        }
        Ok(order)
    }

    /// Restores version `version` (the newest if `None`) into the registered regions. Every
    /// region of the checkpoint must be registered with the same size, and every registered
    /// region must be in the checkpoint. The next checkpoint is a delta against the restored
    /// version and gets a new number; versions above it are left alone.
    ///
    /// On error the contents of the regions are unspecified and the engine forgets its
    /// parent, so the next checkpoint is a full version.
    pub fn restore(&mut self, version: Option<u64>) -> Result<RestoreStats> {
        let (version, path) = self.store.resolve(version)?;
        let v = Version::open(&path)?;
        let ps = v.page_size();
        let order = self.region_order(&v)?;
        self.parent = None;
        self.tracker
            .before_restore()
            .map_err(|e| Error::io(&path, "remove write-protection before restore", e))?;
        let mut bytes = 0u64;
        let mut new_hashes = Vec::with_capacity(self.regions.len());
        for (r, &i) in self.regions.iter_mut().zip(&order) {
            let out = r.mem.bytes_mut();
            bytes += out.len() as u64;
            let pages = v.restore_region(i, out)?;
            let mut h = RegionHashes::unknown(out.len(), ps);
            h.pages = pages;
            h.pages_known = true;
            new_hashes.push(h);
        }
        // Only now: a failed restore leaves the old page size and hashes (which describe
        // contents, so they stay truthful whatever the restore overwrote).
        self.config.page_size = ps as u32;
        self.hashes = new_hashes;
        // The regions now hold exactly the restored version: nothing is dirty.
        self.tracker
            .after_restore()
            .map_err(|e| Error::io(&path, "write-protect after restore", e))?;
        self.parent = Some(self.parent_from_version(&v, version)?);
        Ok(RestoreStats {
            version,
            files_read: v.files().len(),
            bytes,
        })
    }

    /// The parent picture of version `version` (already opened), with extents listed in the
    /// engine's region order.
    pub(super) fn parent_from_version(&self, v: &Version, version: u64) -> Result<Parent> {
        let order = self.region_order(v)?;
        let file = v.file();
        let mut parent =
            Parent::from_index(&file.index, version, file.identity(), file.header.depth);
        parent.extents = order.iter().map(|&i| parent.extents[i].clone()).collect();
        Ok(parent)
    }
}
