//! Read-only operations on a store for tools: list versions, verify files, export a version
//! to plain files. None of them takes the writer lock.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::FLAG_FULL;
use crate::read::{Version, VersionFile};
use crate::store::Store;

/// One committed version as listed by [`list`].
#[derive(Debug, Clone, serde::Serialize)]
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
                file: store.file_name(v),
                bytes: f.size(),
                depth: f.header.depth,
                full: f.header.flags & FLAG_FULL != 0,
            })
        })
        .collect()
}

/// What `ckpt inspect` shows of one version file, from [`inspect`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileSummary {
    /// The file inspected.
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Chain name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Random file id (hex).
    pub file_id: String,
    /// The version it is a delta against.
    pub parent: Option<ParentSummary>,
    /// Whether it references no other file.
    pub full: bool,
    /// Delta steps to the nearest full version.
    pub depth: u32,
    /// Page size.
    pub page_size: u32,
    /// How dirty pages were found: `hash`, `uffd` or `compactor`.
    pub tracking: &'static str,
    /// zstd level of its pages.
    pub compression_level: i32,
    /// When it was written, nanoseconds since the Unix epoch.
    pub created_unix_nanos: u64,
    /// Its regions.
    pub regions: Vec<RegionSummary>,
    /// Pages of all regions.
    pub pages_total: u64,
    /// Pages stored in this file.
    pub pages_stored: u64,
    /// Pages found in other files.
    pub pages_referenced: u64,
    /// Uncompressed bytes of the pages stored here.
    pub stored_raw_bytes: u64,
    /// Bytes of the data section.
    pub data_bytes: u64,
    /// Bytes of the index section.
    pub index_bytes: u64,
    /// `stored_raw_bytes / data_bytes`.
    pub compression_ratio: f64,
    /// The other files its pages live in.
    pub references: Vec<ReferenceSummary>,
}

/// A parent, in a [`FileSummary`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParentSummary {
    /// Its version.
    pub version: u64,
    /// Its file id (hex).
    pub file_id: String,
    /// Its index checksum (hex).
    pub index_checksum: String,
}

/// A region, in a [`FileSummary`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionSummary {
    /// Region id.
    pub id: u64,
    /// Length in bytes.
    pub bytes: u64,
    /// Pages covering it.
    pub pages: u64,
    /// Extents mapping them.
    pub extents: u64,
}

/// A referenced file, in a [`FileSummary`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReferenceSummary {
    /// Its file name.
    pub file: String,
    /// Its version.
    pub version: u64,
    /// Its file id (hex).
    pub file_id: String,
}

/// Opens and checks one version file (not the files it references) and summarises it.
pub fn inspect(path: &Path) -> Result<FileSummary> {
    use crate::format::hex;
    let f = VersionFile::open(path)?;
    let h = &f.header;
    let pages_total: u64 = f
        .index
        .regions
        .iter()
        .map(|r| r.page_count(h.page_size))
        .sum();
    let pages_stored = f.index.records.len() as u64;
    Ok(FileSummary {
        file: path.display().to_string(),
        bytes: f.size(),
        name: h.name.clone(),
        version: h.version,
        file_id: hex(&h.file_id),
        parent: h.parent.map(|p| ParentSummary {
            version: p.version,
            file_id: hex(&p.identity.file_id),
            index_checksum: hex(&p.identity.index_checksum),
        }),
        full: h.flags & FLAG_FULL != 0,
        depth: h.depth,
        page_size: h.page_size,
        tracking: h.tracking.as_str(),
        compression_level: h.compression_level,
        created_unix_nanos: h.created_unix_nanos,
        regions: f
            .index
            .regions
            .iter()
            .map(|r| RegionSummary {
                id: r.id,
                bytes: r.byte_len,
                pages: r.page_count(h.page_size),
                extents: r.extent_count,
            })
            .collect(),
        pages_total,
        pages_stored,
        pages_referenced: pages_total - pages_stored.min(pages_total),
        stored_raw_bytes: f.footer.stored_raw_bytes,
        data_bytes: f.footer.data_len,
        index_bytes: f.footer.index_len,
        compression_ratio: if f.footer.data_len > 0 {
            f.footer.stored_raw_bytes as f64 / f.footer.data_len as f64
        } else {
            1.0
        },
        references: f
            .index
            .files
            .iter()
            .skip(1)
            .map(|e| ReferenceSummary {
                file: e.name.clone(),
                version: e.version,
                file_id: hex(&e.identity.file_id),
            })
            .collect(),
    })
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

/// Temporary outputs, removed unless they were renamed into place.
struct TempFiles(Vec<(PathBuf, PathBuf)>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for (tmp, _) in &self.0 {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes each region of `version` (newest if `None`) to `out/region-<id>.bin` (mode 0600).
/// Returns the version and the files written.
pub fn export(store: &Store, version: Option<u64>, out: &Path) -> Result<(u64, Vec<PathBuf>)> {
    let (version, path) = store.resolve(version)?;
    let v = Version::open(&path)?;
    crate::store::create_dir_durable(out)?;
    // Every region goes to a new temporary file (O_EXCL: a symlink planted under any name is
    // never followed), with its space reserved first (a full disk is ENOSPC, never SIGBUS).
    // Only when every page of every region has verified are they renamed over the outputs,
    // so a failed restore leaves an earlier good output as it was.
    let mut temps = TempFiles(Vec::new());
    for (i, r) in v.regions().iter().enumerate() {
        let final_path = out.join(format!("region-{}.bin", r.id));
        let tmp = crate::store::temp_name(out, &format!("region-{}.bin", r.id))?;
        let f = crate::store::create_new_file(&tmp)?;
        temps.0.push((tmp.clone(), final_path));
        crate::sys::reserve(&f, r.byte_len).map_err(|e| Error::io(&tmp, "reserve space", e))?;
        let mut map =
            crate::sys::mapping::map_new_output(&f).map_err(|e| Error::io(&tmp, "mmap", e))?;
        v.restore_region(i, &mut map, false)?;
        map.flush().map_err(|e| Error::io(&tmp, "flush", e))?;
    }
    let mut written = Vec::new();
    for (tmp, final_path) in &temps.0 {
        std::fs::rename(tmp, final_path).map_err(|e| Error::io(final_path, "rename", e))?;
        written.push(final_path.clone());
    }
    // All renamed: nothing left for the guard to remove (on an early return above it removes
    // the temporaries not yet renamed).
    temps.0.clear();
    crate::store::sync_dir(out)?;
    Ok((version, written))
}

/// Opens version file `path` and every file it references, checking each one's identity:
/// `Ok` exactly when the version is complete and restorable from that directory (record
/// checksums are checked at restore; see [`verify_version`] for a full check). Returns the
/// names of the files it needs, itself first, with the identity each must have.
pub fn check_complete(path: &Path) -> Result<Vec<(String, crate::Identity)>> {
    let v = Version::open(path)?;
    let mut out = Vec::new();
    for (i, e) in v.file().index.files.iter().enumerate() {
        let identity = if i == 0 {
            v.file().identity()
        } else {
            e.identity
        };
        out.push((e.name.clone(), identity));
    }
    Ok(out)
}

/// Whether the version file at `path` is the file with identity `want` (or a compactor's
/// revision of it). `Ok(false)` if it is another file; an error if it cannot be read.
pub fn satisfies(path: &Path, want: &crate::Identity) -> Result<bool> {
    Ok(VersionFile::open(path)?.satisfies(want))
}

/// The version file `path` is a delta against, from its header: the parent's number and
/// the identity its file must have; `None` for a full version.
pub fn parent_of(path: &Path) -> Result<Option<(u64, crate::Identity)>> {
    let (h, _) = crate::read::read_header_footer(path)?;
    Ok(h.parent.map(|p| (p.version, p.identity)))
}
