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

mod header;
mod index;
pub(crate) mod layout;
pub mod names;

pub use header::{Footer, Header};
pub use index::{stored_digest, Extent, FileEntry, Index, Record, RegionEntry};

/// Magic bytes at offset 0 of every version file.
pub const HEADER_MAGIC: [u8; 8] = *b"CKPTHEAD";
/// Magic bytes at the start of the footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"CKPTFOOT";
/// Magic bytes at the start of the index section.
pub const INDEX_MAGIC: [u8; 8] = *b"CKPTINDX";
/// The format version this code writes. It reads every version from
/// [`OLDEST_FORMAT_VERSION`] up to this one.
///
/// - 1: records lie back to back from the end of the header.
/// - 2: a raw record of whole blocks may be preceded by fewer than [`RECORD_ALIGN`] zero
///   bytes, so that it starts at a multiple of [`RECORD_ALIGN`] (and the compactor can share
///   its blocks instead of copying them).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this code reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Raw records of whole blocks start at a multiple of this (format version 2): the block
/// size of the file systems that share blocks between files (XFS, btrfs).
pub const RECORD_ALIGN: u64 = 4096;
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

/// The zero bytes that go before a record of `len` stored bytes with `codec` that would
/// otherwise start at `offset` (format version 2): a raw record of whole blocks may start on
/// the next block boundary, so that its blocks can be shared with a file that copies it (a
/// reflink needs block-aligned offsets in both files). Fewer than [`RECORD_ALIGN`]. The
/// writer pads by it, and `verify` accepts exactly this padding.
pub(crate) fn padding(offset: u64, codec: Codec, len: u64) -> u64 {
    if codec == Codec::Raw && len > 0 && len % RECORD_ALIGN == 0 {
        offset.next_multiple_of(RECORD_ALIGN) - offset
    } else {
        0
    }
}

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

/// Parses lowercase or uppercase hex (what [`hex`] writes); `None` if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Now, in nanoseconds since the Unix epoch: the time stamp written into headers and commit
/// records (0 if the clock is before 1970).
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
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
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
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

/// Checks that a page size is a power of two in the allowed range.
pub fn check_page_size(page_size: u32) -> std::result::Result<(), String> {
    if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(format!(
            "page size {page_size} is not a power of two between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn header() -> Header {
        Header {
            format_version: FORMAT_VERSION,
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
        let tail = |file: &[u8]| {
            let t = &file[file.len() - FOOTER_LEN..];
            Footer::decode_tail(Path::new("f"), t, file.len() as u64)
        };
        assert_eq!(tail(&file).unwrap(), f);
        file.insert(0, 0);
        assert!(tail(&file).is_err());
    }
}
