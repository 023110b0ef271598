//! Reading version files: opening and checking them, resolving every page in one hop, and
//! restoring or verifying pages against their stored hashes.
//!
//! Files are mapped with memmap2. Committed files are immutable by protocol (nothing in ckpt
//! ever writes to a committed file; the compactor replaces files only by renaming new ones
//! over them, which leaves existing mappings of the old inode intact).

pub mod catalog;
mod fill;
pub(crate) mod parallel;

pub use fill::Target;

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::{
    hex, padding, stored_digest, Codec, Footer, Hash, Header, Identity, Index, Record, RegionEntry,
    FOOTER_LEN, HEADER_LEN,
};
use crate::hash::page_hash;

/// One opened, checked version file: header, footer and index verified against their
/// checksums, the index checked for internal consistency. Page data is checked when read.
pub struct VersionFile {
    path: PathBuf,
    file: File,
    map: Mmap,
    /// The decoded header.
    pub header: Header,
    /// The decoded footer.
    pub footer: Footer,
    /// The decoded index.
    pub index: Index,
}

impl std::fmt::Debug for VersionFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .finish()
    }
}

thread_local! {
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

impl VersionFile {
    /// Opens and checks a version file.
    pub fn open(path: &Path) -> Result<VersionFile> {
        use std::os::unix::fs::FileExt;
        let (file, len) = open_sized(path)?;
        // Header, footer and index are read, not faulted in through the mapping: a fault on a
        // cold file reads around it as much as the device's read-ahead (megabytes), which a
        // restore would then read again with direct I/O.
        let (header, footer) = header_footer(path, &file, len)?;
        let mut index_bytes = Vec::new();
        index_bytes
            .try_reserve_exact(footer.index_len as usize)
            .map_err(|_| {
                Error::corrupt(
                    path,
                    "footer",
                    format!(
                        "an index of {} bytes cannot be held in memory",
                        footer.index_len
                    ),
                )
            })?;
        index_bytes.resize(footer.index_len as usize, 0);
        file.read_exact_at(&mut index_bytes, footer.index_offset)
            .map_err(|e| Error::io(path, "read index", e))?;
        let ib = index_bytes.as_slice();
        if blake3::hash(ib).as_bytes() != &footer.index_checksum {
            return Err(Error::corrupt(path, "index", "checksum mismatch"));
        }
        let map =
            crate::sys::mapping::map_version(&file).map_err(|e| Error::io(path, "mmap", e))?;
        if map.len() as u64 != len {
            return Err(Error::corrupt(
                path,
                "file",
                format!("changed size while opened ({len} then {} bytes)", map.len()),
            ));
        }
        let index = Index::decode(path, ib, &header, &footer)?;
        Ok(VersionFile {
            path: path.to_path_buf(),
            file,
            map,
            header,
            footer,
            index,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (for in-kernel copies of its bytes).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Total size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The identity other files record when they reference this one.
    pub fn identity(&self) -> Identity {
        Identity {
            file_id: self.header.file_id,
            index_checksum: self.footer.index_checksum,
        }
    }

    /// Whether this file may serve a reference that recorded `want`: same file id, and either
    /// this revision's index checksum or one of the earlier revisions it supersedes.
    pub fn satisfies(&self, want: &Identity) -> bool {
        want.file_id == self.header.file_id
            && (want.index_checksum == self.footer.index_checksum
                || self.index.superseded.contains(&want.index_checksum))
    }

    /// The stored (possibly compressed) bytes of a record of this file.
    pub fn stored_bytes(&self, rec: &Record) -> &[u8] {
        &self.map[rec.offset as usize..(rec.offset + rec.stored_len as u64) as usize]
    }

    /// The file's mapping.
    pub(crate) fn map(&self) -> &Mmap {
        &self.map
    }

    /// Decodes record `rec` into `out` (which must be exactly the page length) and checks it
    /// against the record's hash. `what` names the page for error messages.
    pub fn read_record(
        &self,
        rec: &Record,
        out: &mut [u8],
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        self.decode(rec, self.stored_bytes(rec), out, what)
    }

    /// Decodes `src`, the stored bytes of record `rec` of this file (from the mapping or read
    /// from the file), into `out` (which must be exactly the page length) and checks it
    /// against the record's hash. `what` names the page for error messages.
    pub(crate) fn decode(
        &self,
        rec: &Record,
        src: &[u8],
        out: &mut [u8],
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        self.decode_unchecked(rec, src, out, what)?;
        self.check_hash(rec, out, what)
    }

    /// [`Self::decode`] without the check against the record's hash, which the caller makes
    /// ([`Self::check_hashes`]).
    pub(crate) fn decode_unchecked(
        &self,
        rec: &Record,
        src: &[u8],
        out: &mut [u8],
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        let bad = |d: String| Error::corrupt(&self.path, what(), d);
        if rec.raw_len as usize != out.len() {
            return Err(bad(format!(
                "record holds {} bytes, the page has {}",
                rec.raw_len,
                out.len()
            )));
        }
        if src.len() != rec.stored_len as usize {
            return Err(bad(format!(
                "{} stored bytes, the record says {}",
                src.len(),
                rec.stored_len
            )));
        }
        match rec.codec {
            Codec::Raw => out.copy_from_slice(src),
            Codec::Zstd => {
                let n = DECOMPRESSOR
                    .with(|d| -> std::io::Result<usize> {
                        let mut d = d.borrow_mut();
                        if d.is_none() {
                            *d = Some(zstd::bulk::Decompressor::new()?);
                        }
                        match d.as_mut() {
                            // Bounded: zstd never writes past `out`, which is one page.
                            Some(d) => d.decompress_to_buffer(src, &mut *out),
                            None => Err(std::io::Error::other("no decompressor")),
                        }
                    })
                    .map_err(|e| bad(format!("cannot decompress: {e}")))?;
                if n != out.len() {
                    return Err(bad(format!(
                        "decompressed to {n} bytes, expected {}",
                        out.len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks that record `rec` is a raw page of `len` bytes, as a page read straight into its
    /// place must be (its hash is checked there, [`Self::check_hashes`]).
    pub(crate) fn check_raw(
        &self,
        rec: &Record,
        len: usize,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        if !rec.is_raw_page(len) {
            return Err(Error::corrupt(
                &self.path,
                what(),
                format!(
                    "record ({:?}, {} stored bytes for {}) is not a raw page of {} bytes",
                    rec.codec, rec.stored_len, rec.raw_len, len
                ),
            ));
        }
        Ok(())
    }

    /// Checks that each of `pages` matches the blake3 hash of its record in `recs` (several
    /// pages hashed at once); `what(k)` names the k-th for the error.
    pub(crate) fn check_hashes(
        &self,
        recs: &[&Record],
        pages: &[&[u8]],
        what: &dyn Fn(usize) -> String,
    ) -> Result<()> {
        let mut hashes = [[0u8; 32]; crate::hash::HASH_LANES];
        for (at, (recs, pages)) in recs
            .chunks(crate::hash::HASH_LANES)
            .zip(pages.chunks(crate::hash::HASH_LANES))
            .enumerate()
        {
            let hashes = &mut hashes[..pages.len()];
            crate::hash::page_hashes(pages, hashes);
            if let Some(k) = recs.iter().zip(&*hashes).position(|(r, h)| r.hash != *h) {
                return Err(Error::corrupt(
                    &self.path,
                    what(at * crate::hash::HASH_LANES + k),
                    "contents do not match the stored blake3 hash",
                ));
            }
        }
        Ok(())
    }

    /// Checks that `page`, the decoded bytes of record `rec`, match its blake3 hash.
    fn check_hash(&self, rec: &Record, page: &[u8], what: &dyn Fn() -> String) -> Result<()> {
        if page_hash(page) != rec.hash {
            return Err(Error::corrupt(
                &self.path,
                what(),
                "contents do not match the stored blake3 hash",
            ));
        }
        Ok(())
    }

    /// Checks the data section's checksum, then decodes and checks every page stored in this
    /// file (used by `verify`).
    pub fn verify_records(&self) -> Result<()> {
        let ps = self.header.page_size as usize;
        // The records must tile the data section, in order, so that every stored byte belongs
        // to exactly one page; from format version 2, a raw record of whole blocks may follow
        // fewer than RECORD_ALIGN zero bytes that put it on a block boundary.
        let mut pos = self.footer.data_offset;
        for (i, r) in self.index.records.iter().enumerate() {
            let padded = self.header.format_version >= 2
                && r.offset == pos + padding(pos, r.codec, r.stored_len as u64);
            if r.offset != pos && !padded {
                return Err(Error::corrupt(
                    &self.path,
                    "data section",
                    format!("record {i} starts at {}, expected {pos}", r.offset),
                ));
            }
            if let Some(k) = self.map[pos as usize..r.offset as usize]
                .iter()
                .position(|&b| b != 0)
            {
                return Err(Error::corrupt(
                    &self.path,
                    "data section",
                    format!(
                        "non-zero byte at offset {} in the padding before record {i}",
                        pos + k as u64
                    ),
                ));
            }
            pos = r.offset + r.stored_len as u64;
        }
        if pos != self.footer.index_offset {
            return Err(Error::corrupt(
                &self.path,
                "data section",
                "bytes not covered by any record",
            ));
        }
        let digests: Vec<Hash> = self
            .index
            .records
            .par_iter()
            .map(|r| stored_digest(r.codec, &r.hash, self.stored_bytes(r)))
            .collect();
        let mut h = blake3::Hasher::new();
        for d in &digests {
            h.update(d);
        }
        if h.finalize().as_bytes() != &self.footer.data_checksum {
            return Err(Error::corrupt(
                &self.path,
                "data section",
                "checksum mismatch",
            ));
        }
        self.index.records.par_iter().enumerate().try_for_each_init(
            || vec![0u8; ps],
            |buf, (i, rec)| {
                let n = rec.raw_len as usize;
                self.read_record(rec, &mut buf[..n], &|| format!("record {i}"))
            },
        )
    }
}

/// Opens a file and checks it is long enough to be a version file.
fn open_sized(path: &Path) -> Result<(File, u64)> {
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
    if !meta.is_file() {
        return Err(Error::corrupt(
            path,
            "file",
            "not a regular file (a version file is <name>.ckpt.<N>; for a directory use ls or verify)",
        ));
    }
    let len = meta.len();
    if len < (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(Error::corrupt(
            path,
            "file",
            format!("{len} bytes, too short to be a version file (truncated?)"),
        ));
    }
    Ok((file, len))
}

/// A committed version file's header must name the chain and version its file name says: a
/// file renamed to another number, or copied in from another chain, is refused rather than
/// restored as the wrong version. (Temporary names are not checked.)
fn check_name(path: &Path, header: &Header) -> Result<()> {
    let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
        return Ok(());
    };
    match crate::format::names::Naming::parse_any(file) {
        Some((name, v, _)) if name != header.name || v != header.version => Err(Error::corrupt(
            path,
            "header",
            format!(
                "holds version {} of chain {:?}, but the file is named {file} (renamed, or \
                 copied from another chain?)",
                header.version, header.name
            ),
        )),
        _ => Ok(()),
    }
}

/// Reads and checks only a file's header and footer (two small reads): enough to learn its
/// identity and lineage without loading its index.
pub fn read_header_footer(path: &Path) -> Result<(Header, Footer)> {
    let (file, len) = open_sized(path)?;
    header_footer(path, &file, len)
}

/// Reads and checks the header and footer of `file` (at `path`, `len` bytes long, at least a
/// header and a footer).
fn header_footer(path: &Path, file: &File, len: u64) -> Result<(Header, Footer)> {
    use std::os::unix::fs::FileExt;
    let mut h = [0u8; HEADER_LEN];
    file.read_exact_at(&mut h, 0)
        .map_err(|e| Error::io(path, "read header", e))?;
    let mut t = [0u8; FOOTER_LEN];
    file.read_exact_at(&mut t, len - FOOTER_LEN as u64)
        .map_err(|e| Error::io(path, "read footer", e))?;
    let header = Header::decode(path, &h)?;
    check_name(path, &header)?;
    let footer = Footer::decode_tail(path, &t, len)?;
    if footer.file_id != header.file_id {
        return Err(Error::corrupt(
            path,
            "footer",
            "file id differs from the header's",
        ));
    }
    Ok((header, footer))
}

/// A version with every file it references opened and identity-checked: everything needed to
/// resolve any page in one hop.
#[derive(Debug)]
pub struct Version {
    /// `files[i]` is file-table entry `i` of the version; `files[0]` is the version itself.
    files: Vec<Arc<VersionFile>>,
}

impl Version {
    /// Opens the version file at `path` and every file its index references (by plain name,
    /// in the same directory), checking that each referenced file has the identity recorded.
    pub fn open(path: &Path) -> Result<Version> {
        let main = Arc::new(VersionFile::open(path)?);
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut files = vec![main.clone()];
        for entry in main.index.files.iter().skip(1) {
            let rpath = dir.join(&entry.name);
            if !crate::store::exists(&rpath)? {
                return Err(Error::MissingReference {
                    path: path.to_path_buf(),
                    missing: rpath,
                });
            }
            let f = VersionFile::open(&rpath)?;
            if !f.satisfies(&entry.identity) {
                return Err(Error::ReplacedReference {
                    path: path.to_path_buf(),
                    referenced: rpath,
                    expected: format!(
                        "{} (index {})",
                        hex(&entry.identity.file_id),
                        &hex(&entry.identity.index_checksum)[..16]
                    ),
                    found: format!(
                        "{} (index {})",
                        hex(&f.header.file_id),
                        &hex(&f.footer.index_checksum)[..16]
                    ),
                });
            }
            if f.header.page_size != main.header.page_size {
                return Err(Error::corrupt(
                    path,
                    "file table",
                    format!("references {} with another page size", rpath.display()),
                ));
            }
            files.push(Arc::new(f));
        }
        let v = Version { files };
        v.check_extents()?;
        Ok(v)
    }

    /// Checks every extent against the records of the file it names, so that nothing sized
    /// from the index (a restore's output, its space reservation) is allocated for pages that
    /// do not exist: a region's size is only believed once every one of its pages has a record.
    fn check_extents(&self) -> Result<()> {
        let main = &self.files[0];
        for region in &main.index.regions {
            for (k, ext) in main.index.extents_of(region).iter().enumerate() {
                let file = self.files.get(ext.file as usize).ok_or_else(|| {
                    Error::corrupt(
                        main.path(),
                        "index",
                        format!(
                            "region {} extent {k}: file {} is not in the table",
                            region.id, ext.file
                        ),
                    )
                })?;
                let have = file.index.records.len() as u64;
                if ext
                    .first_record
                    .checked_add(ext.page_count as u64)
                    .is_none_or(|end| end > have)
                {
                    return Err(Error::corrupt(
                        main.path(),
                        "index",
                        format!(
                            "region {} extent {k}: {} pages from record {} of {}, which has only {have} records",
                            region.id,
                            ext.page_count,
                            ext.first_record,
                            file.path().display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The byte ranges of each file that a restore of this version reads (its records that
    /// the version's extents use), per file in file-table order, ascending and merged where
    /// they touch.
    #[cfg(any(feature = "bench", feature = "internals"))]
    pub fn read_plan(&self) -> Vec<Vec<(u64, u64)>> {
        let main = &self.files[0];
        let mut plan: Vec<Vec<(u64, u64)>> = vec![Vec::new(); self.files.len()];
        for region in &main.index.regions {
            for ext in main.index.extents_of(region) {
                let Some(f) = self.files.get(ext.file as usize) else {
                    continue;
                };
                let recs = &f.index.records;
                let (a, n) = (ext.first_record as usize, ext.page_count as usize);
                // check_extents made these in range; stay total anyway.
                let (Some(first), Some(last)) = (recs.get(a), recs.get(a + n.max(1) - 1)) else {
                    continue;
                };
                plan[ext.file as usize].push((first.offset, last.offset + last.stored_len as u64));
            }
        }
        for ranges in &mut plan {
            ranges.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
            for &(a, b) in ranges.iter() {
                match merged.last_mut() {
                    Some(m) if a <= m.1 => m.1 = m.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            *ranges = merged;
        }
        plan
    }

    /// The version's own file.
    pub fn file(&self) -> &VersionFile {
        &self.files[0]
    }

    /// All opened files, in file-table order.
    pub fn files(&self) -> &[Arc<VersionFile>] {
        &self.files
    }

    /// The version's regions.
    pub fn regions(&self) -> &[RegionEntry] {
        &self.files[0].index.regions
    }

    /// Page size.
    pub fn page_size(&self) -> usize {
        self.files[0].header.page_size as usize
    }

    /// Resolves a page of a region to (file index, record). `starts` are the extents' first
    /// pages.
    fn resolve(&self, region: &RegionEntry, starts: &[u64], page: u64) -> Result<(usize, &Record)> {
        let main = &self.files[0];
        let k = starts.partition_point(|&s| s <= page) - 1;
        let ext = &main.index.extents_of(region)[k];
        let rec_idx = ext.first_record + (page - starts[k]);
        let file = &self.files[ext.file as usize];
        let rec = file.index.records.get(rec_idx as usize).ok_or_else(|| {
            Error::corrupt(
                main.path(),
                format!("page {page} of region {}", region.id),
                format!(
                    "refers to record {rec_idx} of {}, which has only {}",
                    file.path().display(),
                    file.index.records.len()
                ),
            )
        })?;
        Ok((ext.file as usize, rec))
    }

    fn starts(&self, region: &RegionEntry) -> Vec<u64> {
        let main = &self.files[0];
        let exts = main.index.extents_of(region);
        let mut starts = Vec::with_capacity(exts.len());
        let mut p = 0u64;
        for e in exts {
            starts.push(p);
            p += e.page_count as u64;
        }
        starts
    }

    /// Restores region number `i` (in region-table order) into `out`, which must have the
    /// region's length, checking every page against its blake3 hash. With `fast`, also
    /// returns each page's change-detection hash, taken while the page is still in cache
    /// (what a checkpointer remembers after a restore); else an empty vector.
    pub fn restore_region(&self, i: usize, out: &mut [u8], fast: bool) -> Result<Vec<u128>> {
        let pages = out.len().div_ceil(self.page_size());
        let mut hashes = vec![0u128; if fast { pages } else { 0 }];
        self.restore_regions(vec![Target {
            region: i,
            out,
            fast: fast.then_some(hashes.as_mut_slice()),
        }])?;
        Ok(hashes)
    }

    /// Restores several regions at once, checking every page against its blake3 hash: each
    /// file's needed records are read in large sequential requests (with direct I/O where the
    /// file system takes it and they are not cached already), several files at once, while
    /// the pool's workers decode and check what has been read. Where one file's raw pages
    /// fill most of a megabyte of a region, they are read straight into it, and checked
    /// there. Returns the bytes read so (no buffer, no copy). On error the targets hold an
    /// unspecified mix of old and restored bytes.
    pub fn restore_regions(&self, targets: Vec<Target<'_>>) -> Result<u64> {
        fill::restore(self, targets)
    }

    /// Checks every page reference of the version without decoding data: each resolves to an
    /// existing record of the right length.
    pub fn verify_references(&self) -> Result<()> {
        let ps = self.page_size() as u64;
        for region in self.regions() {
            let starts = self.starts(region);
            for p in 0..region.page_count(ps as u32) {
                let (_, rec) = self.resolve(region, &starts, p)?;
                let want = (region.byte_len - p * ps).min(ps);
                if rec.raw_len as u64 != want {
                    return Err(Error::corrupt(
                        self.files[0].path(),
                        format!("page {p} of region {}", region.id),
                        format!(
                            "refers to a record of {} bytes, expected {want}",
                            rec.raw_len
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
