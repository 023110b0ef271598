//! The on-disk structures of a version file and their checksums.
//!
//! This module is the single owner of byte layouts; `docs/FORMAT.md` describes the same
//! layout in prose and must be kept in step with it. Everything is little-endian.
//!
//! A version file is `header | data | index | footer`:
//! - the header (256 bytes) says who the file is and who its parent is;
//! - the data section holds the pages this file stores, each compressed on its own;
//! - the index maps every page of every region, in one hop, to the file and record holding it;
//! - the footer (160 bytes, at the very end) locates the sections and checksums the index.

use std::path::Path;

pub mod names;
use crate::error::{Error, Result};

/// Magic bytes at offset 0 of every version file.
pub const HEADER_MAGIC: [u8; 8] = *b"CKPTHEAD";
/// Magic bytes at the start of the footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"CKPTFOOT";
/// Magic bytes at the start of the index section.
pub const INDEX_MAGIC: [u8; 8] = *b"CKPTINDX";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 256;
/// Size of the footer in bytes.
pub const FOOTER_LEN: usize = 160;
/// Longest chain name, in bytes (it is stored in the header).
pub const MAX_NAME_LEN: usize = 64;
/// Size of the fixed part of the index.
pub const INDEX_FIXED_LEN: usize = 48;
/// Size of one file-table entry.
pub const FILE_ENTRY_LEN: usize = 64;
/// Size of one region-table entry.
pub const REGION_ENTRY_LEN: usize = 32;
/// Size of one extent.
pub const EXTENT_LEN: usize = 16;
/// Size of one page record.
pub const RECORD_LEN: usize = 56;
/// Smallest allowed page size.
pub const MIN_PAGE_SIZE: u32 = 4096;
/// Largest allowed page size.
pub const MAX_PAGE_SIZE: u32 = 1 << 20;

/// Header flags are split in two halves, as ext4 and redb split features. A reader ignores
/// unknown bits of the low half (`FLAGS_COMPAT`): they describe the file without changing
/// how it is read. A reader refuses a file with any unknown bit of the high half
/// (`FLAGS_INCOMPAT`): reading it as if the bit were clear would give wrong bytes.
pub const FLAGS_COMPAT: u32 = 0x0000_FFFF;
/// The incompatible half of the header flags (see [`FLAGS_COMPAT`]).
pub const FLAGS_INCOMPAT: u32 = 0xFFFF_0000;
/// Incompatible flags this build understands: none yet.
pub const KNOWN_INCOMPAT: u32 = 0;

/// Header flag: the file references no other file.
pub const FLAG_FULL: u32 = 1;
/// Header flag: the file was written by the compactor, not by an application checkpoint.
pub const FLAG_COMPACTED: u32 = 2;

/// A random 128-bit identity given to each file when it is written.
pub type FileId = [u8; 16];
/// A blake3 hash.
pub type Hash = [u8; 32];

/// Renders a file id as hex, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Draws a fresh random file id from the operating system.
pub fn new_file_id() -> std::io::Result<FileId> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(id)
}

/// How the pages of a version were found to be dirty (informational).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackingKind {
    /// Every page was hashed.
    Hash = 0,
    /// Candidate pages came from userfaultfd write-protection.
    Uffd = 1,
    /// Written by the compactor.
    Compactor = 2,
}

impl TrackingKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(TrackingKind::Hash),
            1 => Some(TrackingKind::Uffd),
            2 => Some(TrackingKind::Compactor),
            _ => None,
        }
    }

    /// A short lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackingKind::Hash => "hash",
            TrackingKind::Uffd => "uffd",
            TrackingKind::Compactor => "compactor",
        }
    }
}

/// How a page's bytes are stored in the data section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is.
    Raw = 0,
    /// One zstd frame.
    Zstd = 1,
}

/// The identity of a version file as seen by a file that depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The random id drawn when the file was written.
    pub file_id: FileId,
    /// blake3 of the file's index section.
    pub index_checksum: Hash,
}

/// The parent a delta was computed against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentRef {
    /// The parent's version number.
    pub version: u64,
    /// The parent's identity.
    pub identity: Identity,
}

/// The 256-byte header at offset 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// This file's random id.
    pub file_id: FileId,
    /// The version number N of `<name>.ckpt.<N>`.
    pub version: u64,
    /// The version this one is a delta against, if any.
    pub parent: Option<ParentRef>,
    /// Page size in bytes, a power of two from 4 KiB to 1 MiB.
    pub page_size: u32,
    /// Number of delta steps to the nearest full version (0 for a full version).
    pub depth: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// How dirty pages were found.
    pub tracking: TrackingKind,
    /// zstd level used for this file's pages (0: none).
    pub compression_level: i32,
    /// Wall-clock time of the checkpoint, nanoseconds since the Unix epoch.
    pub created_unix_nanos: u64,
    /// The chain name.
    pub name: String,
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
fn get_arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

/// Checks that a page size is a power of two in the allowed range.
pub fn check_page_size(page_size: u32) -> std::result::Result<(), String> {
    if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(format!(
            "page size {page_size} is not a power of two between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE}"
        ));
    }
    Ok(())
}

impl Header {
    /// Serialises the header, including its checksum.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&HEADER_MAGIC);
        put_u32(&mut b, 8, FORMAT_VERSION);
        put_u32(&mut b, 12, HEADER_LEN as u32);
        b[16..32].copy_from_slice(&self.file_id);
        put_u64(&mut b, 32, self.version);
        if let Some(p) = &self.parent {
            put_u64(&mut b, 40, p.version);
            b[48..64].copy_from_slice(&p.identity.file_id);
            b[64..96].copy_from_slice(&p.identity.index_checksum);
        }
        put_u32(&mut b, 96, self.page_size);
        put_u32(&mut b, 100, self.depth);
        put_u32(&mut b, 104, self.flags);
        b[108] = self.tracking as u8;
        let name = self.name.as_bytes();
        let n = name.len().min(MAX_NAME_LEN);
        b[110..112].copy_from_slice(&(n as u16).to_le_bytes());
        b[112..116].copy_from_slice(&self.compression_level.to_le_bytes());
        put_u64(&mut b, 120, self.created_unix_nanos);
        b[128..128 + n].copy_from_slice(&name[..n]);
        let sum = blake3::hash(&b[..224]);
        b[224..256].copy_from_slice(sum.as_bytes());
        b
    }

    /// Parses and checks a header. `path` is only used in error messages.
    pub fn decode(path: &Path, b: &[u8]) -> Result<Header> {
        let bad = |d: String| Error::corrupt(path, "header", d);
        if b.len() < HEADER_LEN {
            return Err(bad(format!(
                "file is {} bytes, shorter than the {HEADER_LEN}-byte header",
                b.len()
            )));
        }
        let b = &b[..HEADER_LEN];
        if b[0..8] != HEADER_MAGIC {
            return Err(bad("bad magic: not a ckpt version file".into()));
        }
        if blake3::hash(&b[..224]).as_bytes() != &b[224..256] {
            return Err(bad("checksum mismatch".into()));
        }
        let fv = get_u32(b, 8);
        if fv != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {fv}, this build reads only version {FORMAT_VERSION}{}",
                if fv > FORMAT_VERSION {
                    " (written by a newer ckpt: read it with that version)"
                } else {
                    ""
                }
            )));
        }
        let flags = get_u32(b, 104);
        let unknown = flags & FLAGS_INCOMPAT & !KNOWN_INCOMPAT;
        if unknown != 0 {
            return Err(bad(format!(
                "incompatible feature flags {unknown:#010x} that this build does not \
                 understand (written by a newer ckpt?)"
            )));
        }
        if get_u32(b, 12) as usize != HEADER_LEN {
            return Err(bad(format!("header length {}", get_u32(b, 12))));
        }
        let page_size = get_u32(b, 96);
        check_page_size(page_size).map_err(bad)?;
        let tracking = TrackingKind::from_u8(b[108])
            .ok_or_else(|| bad(format!("unknown tracking kind {}", b[108])))?;
        let n = u16::from_le_bytes([b[110], b[111]]) as usize;
        if n == 0 || n > MAX_NAME_LEN {
            return Err(bad(format!("chain name length {n}")));
        }
        let reserved = [109..110, 116..120, 128 + n..224];
        if let Some(off) = reserved.into_iter().flatten().find(|&i| b[i] != 0) {
            return Err(bad(format!("non-zero reserved byte at offset {off}")));
        }
        let name = std::str::from_utf8(&b[128..128 + n])
            .map_err(|_| bad("chain name is not UTF-8".into()))?
            .to_string();
        let parent_version = get_u64(b, 40);
        let parent = if parent_version == 0 {
            None
        } else {
            Some(ParentRef {
                version: parent_version,
                identity: Identity {
                    file_id: get_arr(b, 48),
                    index_checksum: get_arr(b, 64),
                },
            })
        };
        let version = get_u64(b, 32);
        if version == 0 {
            return Err(bad("version number 0".into()));
        }
        Ok(Header {
            file_id: get_arr(b, 16),
            version,
            parent,
            page_size,
            depth: get_u32(b, 100),
            flags,
            tracking,
            compression_level: i32::from_le_bytes(get_arr(b, 112)),
            created_unix_nanos: get_u64(b, 120),
            name,
        })
    }
}

/// The 160-byte footer at the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Offset of the data section (always `HEADER_LEN`).
    pub data_offset: u64,
    /// Length of the data section.
    pub data_len: u64,
    /// Offset of the index section.
    pub index_offset: u64,
    /// Length of the index section.
    pub index_len: u64,
    /// Must equal the header's file id.
    pub file_id: FileId,
    /// blake3 of the index section.
    pub index_checksum: Hash,
    /// Sum of the uncompressed lengths of the pages stored in this file.
    pub stored_raw_bytes: u64,
    /// blake3 over the records' stored-bytes digests, in record order: the page hash for a
    /// raw record, blake3 of the stored frame for a compressed one (checked by `verify`;
    /// restore checks pages).
    pub data_checksum: Hash,
}

impl Footer {
    /// Serialises the footer, including its checksum.
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(&FOOTER_MAGIC);
        put_u64(&mut b, 8, self.data_offset);
        put_u64(&mut b, 16, self.data_len);
        put_u64(&mut b, 24, self.index_offset);
        put_u64(&mut b, 32, self.index_len);
        b[40..56].copy_from_slice(&self.file_id);
        b[56..88].copy_from_slice(&self.index_checksum);
        put_u64(&mut b, 88, self.stored_raw_bytes);
        b[96..128].copy_from_slice(&self.data_checksum);
        let sum = blake3::hash(&b[..128]);
        b[128..160].copy_from_slice(sum.as_bytes());
        b
    }

    /// Parses the footer from the whole file and checks that the sections it names tile the
    /// file exactly: `header | data | index | footer`.
    pub fn decode(path: &Path, file: &[u8]) -> Result<Footer> {
        let tail = &file[file.len().saturating_sub(FOOTER_LEN)..];
        Footer::decode_tail(path, tail, file.len() as u64)
    }

    /// Parses the footer from the file's last `FOOTER_LEN` bytes, `len` being the file length.
    pub fn decode_tail(path: &Path, b: &[u8], len: u64) -> Result<Footer> {
        let bad = |d: String| Error::corrupt(path, "footer", d);
        if len < (HEADER_LEN + FOOTER_LEN) as u64 || b.len() != FOOTER_LEN {
            return Err(bad(format!(
                "file is {len} bytes, too short to hold a header and a footer (truncated?)"
            )));
        }
        if b[0..8] != FOOTER_MAGIC {
            return Err(bad("bad magic (truncated or incomplete file?)".into()));
        }
        if blake3::hash(&b[..128]).as_bytes() != &b[128..160] {
            return Err(bad("checksum mismatch".into()));
        }
        let f = Footer {
            data_offset: get_u64(b, 8),
            data_len: get_u64(b, 16),
            index_offset: get_u64(b, 24),
            index_len: get_u64(b, 32),
            file_id: get_arr(b, 40),
            index_checksum: get_arr(b, 56),
            stored_raw_bytes: get_u64(b, 88),
            data_checksum: get_arr(b, 96),
        };
        let data_end = f.data_offset.checked_add(f.data_len);
        let index_end = f.index_offset.checked_add(f.index_len);
        let tiles = f.data_offset == HEADER_LEN as u64
            && data_end == Some(f.index_offset)
            && index_end.and_then(|e| e.checked_add(FOOTER_LEN as u64)) == Some(len);
        if !tiles {
            return Err(bad(format!(
                "sections do not tile the {len}-byte file: data {}+{}, index {}+{}",
                f.data_offset, f.data_len, f.index_offset, f.index_len
            )));
        }
        Ok(f)
    }
}

/// An entry of the file table: a file that pages of this version live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Identity the referenced file must have. For entry 0 (the file itself) the index
    /// checksum is all zeros, since a file cannot contain its own checksum.
    pub identity: Identity,
    /// The referenced file's version number.
    pub version: u64,
    /// Plain file name, in the same directory.
    pub name: String,
}

/// One registered region of the checkpointed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    /// The application's stable region id.
    pub id: u64,
    /// The region's length in bytes.
    pub byte_len: u64,
    /// Index of the region's first extent in the extent table.
    pub first_extent: u64,
    /// Number of extents covering the region.
    pub extent_count: u64,
}

impl RegionEntry {
    /// Number of pages of `page_size` bytes that cover the region (the last may be partial).
    pub fn page_count(&self, page_size: u32) -> u64 {
        self.byte_len.div_ceil(page_size as u64)
    }
}

/// A run of consecutive pages of a region whose bytes are consecutive records of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Number of pages in the run (at least 1).
    pub page_count: u32,
    /// Index into the file table (0: this file).
    pub file: u32,
    /// Index of the first page's record in that file's record table.
    pub first_record: u64,
}

/// Where one stored page's bytes are, and what they hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// blake3 of the uncompressed page bytes.
    pub hash: Hash,
    /// Absolute file offset of the stored bytes (inside the data section).
    pub offset: u64,
    /// Number of stored (possibly compressed) bytes.
    pub stored_len: u32,
    /// Number of bytes once decompressed (the page length).
    pub raw_len: u32,
    /// How the bytes are stored.
    pub codec: Codec,
}

/// The decoded index section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// File table; entry 0 is the file itself.
    pub files: Vec<FileEntry>,
    /// Region table, in the order regions were registered.
    pub regions: Vec<RegionEntry>,
    /// Extent table; each region owns a contiguous slice of it.
    pub extents: Vec<Extent>,
    /// Page records of the pages stored in this file.
    pub records: Vec<Record>,
    /// Index checksums of earlier revisions of this file that the compactor replaced. This
    /// revision keeps their records at the same indices with the same contents, so a file
    /// that recorded one of these checksums may use this revision.
    pub superseded: Vec<Hash>,
}

impl Index {
    /// Serialises the index section.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len());
        // Writing into a Vec cannot fail.
        let _ = self.write_to(&mut b);
        b
    }

    /// Length of the encoded section.
    pub fn encoded_len(&self) -> usize {
        let names_len: usize = self.files.iter().map(|f| f.name.len()).sum();
        INDEX_FIXED_LEN
            + self.files.len() * FILE_ENTRY_LEN
            + self.regions.len() * REGION_ENTRY_LEN
            + self.extents.len() * EXTENT_LEN
            + self.records.len() * RECORD_LEN
            + self.superseded.len() * 32
            + names_len
    }

    /// Streams the encoded section into `w` (without building it in memory: a full
    /// version's index is 56 bytes per page).
    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let names_len: usize = self.files.iter().map(|f| f.name.len()).sum();
        let mut fixed = [0u8; INDEX_FIXED_LEN];
        fixed[0..8].copy_from_slice(&INDEX_MAGIC);
        put_u32(&mut fixed, 8, self.files.len() as u32);
        put_u32(&mut fixed, 12, self.regions.len() as u32);
        put_u64(&mut fixed, 16, self.extents.len() as u64);
        put_u64(&mut fixed, 24, self.records.len() as u64);
        put_u64(&mut fixed, 32, names_len as u64);
        put_u32(&mut fixed, 40, self.superseded.len() as u32);
        w.write_all(&fixed)?;
        let mut name_off = 0usize;
        for f in &self.files {
            let mut b = [0u8; FILE_ENTRY_LEN];
            b[0..16].copy_from_slice(&f.identity.file_id);
            b[16..48].copy_from_slice(&f.identity.index_checksum);
            put_u64(&mut b, 48, f.version);
            put_u32(&mut b, 56, name_off as u32);
            put_u32(&mut b, 60, f.name.len() as u32);
            name_off += f.name.len();
            w.write_all(&b)?;
        }
        for r in &self.regions {
            let mut b = [0u8; REGION_ENTRY_LEN];
            put_u64(&mut b, 0, r.id);
            put_u64(&mut b, 8, r.byte_len);
            put_u64(&mut b, 16, r.first_extent);
            put_u64(&mut b, 24, r.extent_count);
            w.write_all(&b)?;
        }
        for e in &self.extents {
            let mut b = [0u8; EXTENT_LEN];
            put_u32(&mut b, 0, e.page_count);
            put_u32(&mut b, 4, e.file);
            put_u64(&mut b, 8, e.first_record);
            w.write_all(&b)?;
        }
        for r in &self.records {
            let mut b = [0u8; RECORD_LEN];
            b[0..32].copy_from_slice(&r.hash);
            put_u64(&mut b, 32, r.offset);
            put_u32(&mut b, 40, r.stored_len);
            put_u32(&mut b, 44, r.raw_len);
            b[48] = r.codec as u8;
            w.write_all(&b)?;
        }
        for h in &self.superseded {
            w.write_all(h)?;
        }
        for f in &self.files {
            w.write_all(f.name.as_bytes())?;
        }
        Ok(())
    }

    /// Parses an index section and checks everything that can be checked from this file
    /// alone: sizes against the section length (before allocating), that extents cover each
    /// region exactly, that file indices are in the table, that references into this file's
    /// own records are in range, and that records lie inside the data section.
    pub fn decode(path: &Path, b: &[u8], header: &Header, footer: &Footer) -> Result<Index> {
        let bad = |d: String| Error::corrupt(path, "index", d);
        if b.len() < INDEX_FIXED_LEN {
            return Err(bad(format!(
                "{} bytes, shorter than its fixed part",
                b.len()
            )));
        }
        if b[0..8] != INDEX_MAGIC {
            return Err(bad("bad magic".into()));
        }
        let nfiles = get_u32(b, 8) as u64;
        let nregions = get_u32(b, 12) as u64;
        let nextents = get_u64(b, 16);
        let nrecords = get_u64(b, 24);
        let names_len = get_u64(b, 32);
        let nsuperseded = get_u32(b, 40) as u64;
        // Check the declared sizes add up to the section length before allocating anything.
        let expect = (|| {
            let mut t = INDEX_FIXED_LEN as u64;
            t = t.checked_add(nfiles.checked_mul(FILE_ENTRY_LEN as u64)?)?;
            t = t.checked_add(nregions.checked_mul(REGION_ENTRY_LEN as u64)?)?;
            t = t.checked_add(nextents.checked_mul(EXTENT_LEN as u64)?)?;
            t = t.checked_add(nrecords.checked_mul(RECORD_LEN as u64)?)?;
            t = t.checked_add(nsuperseded.checked_mul(32)?)?;
            t.checked_add(names_len)
        })();
        if expect != Some(b.len() as u64) {
            return Err(bad(format!(
                "declared sizes ({nfiles} files, {nregions} regions, {nextents} extents, \
                 {nrecords} records, {nsuperseded} superseded, {names_len} name bytes) do not add up to the section length {}",
                b.len()
            )));
        }
        if nfiles == 0 {
            return Err(bad("empty file table".into()));
        }
        if get_u32(b, 44) != 0 {
            return Err(bad("non-zero reserved bytes at offset 44".into()));
        }
        let names_start = b.len() - names_len as usize;
        let mut off = INDEX_FIXED_LEN;
        let mut files = Vec::with_capacity(nfiles as usize);
        for i in 0..nfiles {
            let name_off = get_u32(b, off + 56) as u64;
            let name_len = get_u32(b, off + 60) as u64;
            if name_off.checked_add(name_len).is_none_or(|e| e > names_len) {
                return Err(bad(format!("file entry {i}: name outside the names area")));
            }
            let s = names_start + name_off as usize;
            let name = std::str::from_utf8(&b[s..s + name_len as usize])
                .map_err(|_| bad(format!("file entry {i}: name is not UTF-8")))?;
            names::check_file_name(name).map_err(|e| bad(format!("file entry {i}: {e}")))?;
            files.push(FileEntry {
                identity: Identity {
                    file_id: get_arr(b, off),
                    index_checksum: get_arr(b, off + 16),
                },
                version: get_u64(b, off + 48),
                name: name.to_string(),
            });
            off += FILE_ENTRY_LEN;
        }
        if files[0].identity.file_id != header.file_id || files[0].version != header.version {
            return Err(bad("file entry 0 does not describe this file".into()));
        }
        let mut regions = Vec::with_capacity(nregions as usize);
        for _ in 0..nregions {
            regions.push(RegionEntry {
                id: get_u64(b, off),
                byte_len: get_u64(b, off + 8),
                first_extent: get_u64(b, off + 16),
                extent_count: get_u64(b, off + 24),
            });
            off += REGION_ENTRY_LEN;
        }
        let mut extents = Vec::with_capacity(nextents as usize);
        for _ in 0..nextents {
            extents.push(Extent {
                page_count: get_u32(b, off),
                file: get_u32(b, off + 4),
                first_record: get_u64(b, off + 8),
            });
            off += EXTENT_LEN;
        }
        let data_end = footer.data_offset + footer.data_len;
        let mut records = Vec::with_capacity(nrecords as usize);
        for i in 0..nrecords {
            if b[off + 49..off + RECORD_LEN].iter().any(|&x| x != 0) {
                return Err(bad(format!("record {i}: non-zero reserved bytes")));
            }
            let codec = match b[off + 48] {
                0 => Codec::Raw,
                1 => Codec::Zstd,
                c => return Err(bad(format!("record {i}: unknown codec {c}"))),
            };
            let r = Record {
                hash: get_arr(b, off),
                offset: get_u64(b, off + 32),
                stored_len: get_u32(b, off + 40),
                raw_len: get_u32(b, off + 44),
                codec,
            };
            let in_data = r.offset >= footer.data_offset
                && r.offset
                    .checked_add(r.stored_len as u64)
                    .is_some_and(|e| e <= data_end);
            if !in_data {
                return Err(bad(format!(
                    "record {i}: bytes lie outside the data section"
                )));
            }
            if r.raw_len == 0 || r.raw_len > header.page_size {
                return Err(bad(format!("record {i}: page length {}", r.raw_len)));
            }
            if codec == Codec::Raw && r.stored_len != r.raw_len {
                return Err(bad(format!(
                    "record {i}: raw page stored with a different length"
                )));
            }
            records.push(r);
            off += RECORD_LEN;
        }
        let mut superseded = Vec::with_capacity(nsuperseded as usize);
        for _ in 0..nsuperseded {
            superseded.push(get_arr(b, off));
            off += 32;
        }
        let index = Index {
            files,
            regions,
            extents,
            records,
            superseded,
        };
        index.check_extents(path, header.page_size)?;
        Ok(index)
    }

    fn check_extents(&self, path: &Path, page_size: u32) -> Result<()> {
        let bad = |d: String| Error::corrupt(path, "index", d);
        let mut next_extent = 0u64;
        let mut ids = std::collections::HashSet::new();
        for r in &self.regions {
            if !ids.insert(r.id) {
                return Err(bad(format!("region {} listed twice", r.id)));
            }
            if r.first_extent != next_extent {
                return Err(bad(format!("region {}: extents are not contiguous", r.id)));
            }
            let end = r
                .first_extent
                .checked_add(r.extent_count)
                .filter(|&e| e <= self.extents.len() as u64)
                .ok_or_else(|| bad(format!("region {}: extents out of range", r.id)))?;
            next_extent = end;
            let mut pages = 0u64;
            for e in &self.extents[r.first_extent as usize..end as usize] {
                if e.page_count == 0 {
                    return Err(bad(format!("region {}: empty extent", r.id)));
                }
                if e.file as usize >= self.files.len() {
                    return Err(bad(format!(
                        "region {}: extent names file {} of {}",
                        r.id,
                        e.file,
                        self.files.len()
                    )));
                }
                let rec_end = e.first_record.checked_add(e.page_count as u64);
                if e.file == 0 && rec_end.is_none_or(|x| x > self.records.len() as u64) {
                    return Err(bad(format!(
                        "region {}: extent names missing records",
                        r.id
                    )));
                }
                if rec_end.is_none() {
                    return Err(bad(format!("region {}: record index overflow", r.id)));
                }
                pages += e.page_count as u64;
            }
            if pages != r.page_count(page_size) {
                return Err(bad(format!(
                    "region {}: extents cover {pages} pages, the region has {}",
                    r.id,
                    r.page_count(page_size)
                )));
            }
        }
        if next_extent != self.extents.len() as u64 {
            return Err(bad("extents not owned by any region".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            file_id: [7; 16],
            version: 3,
            parent: Some(ParentRef {
                version: 2,
                identity: Identity {
                    file_id: [1; 16],
                    index_checksum: [2; 32],
                },
            }),
            page_size: 4096,
            depth: 1,
            flags: 0,
            tracking: TrackingKind::Hash,
            compression_level: 1,
            created_unix_nanos: 42,
            name: "job".into(),
        }
    }

    #[test]
    fn header_roundtrip_and_checksum() {
        let h = header();
        let mut b = h.encode();
        assert_eq!(Header::decode(Path::new("f"), &b).unwrap(), h);
        b[33] ^= 1;
        let e = Header::decode(Path::new("f"), &b).unwrap_err().to_string();
        assert!(e.contains("f: corrupt header: checksum"), "{e}");
    }

    #[test]
    fn index_roundtrip_and_checks() {
        let h = header();
        let rec = Record {
            hash: [9; 32],
            offset: HEADER_LEN as u64,
            stored_len: 10,
            raw_len: 4096,
            codec: Codec::Zstd,
        };
        let idx = Index {
            files: vec![
                FileEntry {
                    identity: Identity {
                        file_id: h.file_id,
                        index_checksum: [0; 32],
                    },
                    version: 3,
                    name: "job.ckpt.3".into(),
                },
                FileEntry {
                    identity: Identity {
                        file_id: [1; 16],
                        index_checksum: [2; 32],
                    },
                    version: 2,
                    name: "job.ckpt.2".into(),
                },
            ],
            regions: vec![RegionEntry {
                id: 5,
                byte_len: 3 * 4096 - 7,
                first_extent: 0,
                extent_count: 2,
            }],
            extents: vec![
                Extent {
                    page_count: 1,
                    file: 0,
                    first_record: 0,
                },
                Extent {
                    page_count: 2,
                    file: 1,
                    first_record: 40,
                },
            ],
            records: vec![rec],
            superseded: vec![[4; 32]],
        };
        let footer = Footer {
            data_offset: HEADER_LEN as u64,
            data_len: 10,
            index_offset: HEADER_LEN as u64 + 10,
            index_len: 0,
            file_id: h.file_id,
            index_checksum: [0; 32],
            stored_raw_bytes: 4096,
            data_checksum: [0; 32],
        };
        let b = idx.encode();
        assert_eq!(b.len(), idx.encoded_len());
        assert_eq!(Index::decode(Path::new("f"), &b, &h, &footer).unwrap(), idx);
        // Extents that do not cover the region exactly are rejected.
        let mut bad = idx.clone();
        bad.extents[1].page_count = 3;
        let e = Index::decode(Path::new("f"), &bad.encode(), &h, &footer).unwrap_err();
        assert!(e.to_string().contains("extents cover 4 pages"), "{e}");
        // A record outside the data section is rejected.
        let mut bad = idx.clone();
        bad.records[0].offset = 1 << 40;
        assert!(Index::decode(Path::new("f"), &bad.encode(), &h, &footer).is_err());
        // A declared count that does not match the length is rejected before allocating.
        let mut b2 = b.clone();
        b2[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = Index::decode(Path::new("f"), &b2, &h, &footer).unwrap_err();
        assert!(e.to_string().contains("do not add up"), "{e}");
    }

    #[test]
    fn footer_must_tile_file() {
        let f = Footer {
            data_offset: HEADER_LEN as u64,
            data_len: 10,
            index_offset: HEADER_LEN as u64 + 10,
            index_len: 5,
            file_id: [7; 16],
            index_checksum: [0; 32],
            stored_raw_bytes: 0,
            data_checksum: [3; 32],
        };
        let mut file = vec![0u8; HEADER_LEN + 15];
        file.extend_from_slice(&f.encode());
        assert_eq!(Footer::decode(Path::new("f"), &file).unwrap(), f);
        file.insert(0, 0);
        assert!(Footer::decode(Path::new("f"), &file).is_err());
    }
}
