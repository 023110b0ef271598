//! The header (offset 0) and the footer (the file's last bytes) of a version file.

use std::path::Path;

use zerocopy::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use super::layout::{RawFooter, RawHeader};
use super::{
    check_page_size, FileId, Hash, Identity, ParentRef, TrackingKind, FLAGS_COMPAT, FLAGS_INCOMPAT,
    FOOTER_LEN, FOOTER_MAGIC, FORMAT_VERSION, HEADER_LEN, HEADER_MAGIC, KNOWN_INCOMPAT,
    MAX_NAME_LEN, OLDEST_FORMAT_VERSION,
};
use crate::error::{Error, Result};

/// The 256-byte header at offset 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The format version the file was written in (a writer always writes
    /// [`FORMAT_VERSION`]).
    pub format_version: u32,
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

impl Header {
    /// Serialises the header, including its checksum.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let name = self.name.as_bytes();
        let n = name.len().min(MAX_NAME_LEN);
        let mut name_bytes = [0u8; MAX_NAME_LEN];
        name_bytes[..n].copy_from_slice(&name[..n]);
        let parent = self.parent.unwrap_or(ParentRef {
            version: 0,
            identity: Identity {
                file_id: [0; 16],
                index_checksum: [0; 32],
            },
        });
        let mut raw = RawHeader {
            magic: HEADER_MAGIC,
            format_version: U32::new(self.format_version),
            header_len: U32::new(HEADER_LEN as u32),
            file_id: self.file_id,
            version: U64::new(self.version),
            parent_version: U64::new(parent.version),
            parent_file_id: parent.identity.file_id,
            parent_index_checksum: parent.identity.index_checksum,
            page_size: U32::new(self.page_size),
            depth: U32::new(self.depth),
            flags: U32::new(self.flags),
            tracking: self.tracking as u8,
            reserved0: 0,
            name_len: U16::new(n as u16),
            compression_level: I32::new(self.compression_level),
            reserved1: [0; 4],
            created_unix_nanos: U64::new(self.created_unix_nanos),
            name: name_bytes,
            reserved2: [0; 32],
            checksum: [0; 32],
        };
        raw.checksum = *blake3::hash(&raw.as_bytes()[..HEADER_LEN - 32]).as_bytes();
        let mut b = [0u8; HEADER_LEN];
        b.copy_from_slice(raw.as_bytes());
        b
    }

    /// Parses and checks a header. `path` is only used in error messages.
    pub fn decode(path: &Path, b: &[u8]) -> Result<Header> {
        let bad = |d: String| Error::corrupt(path, "header", d);
        let Some(bytes) = b.get(..HEADER_LEN) else {
            return Err(bad(format!(
                "file is {} bytes, shorter than the {HEADER_LEN}-byte header",
                b.len()
            )));
        };
        let raw = RawHeader::ref_from_bytes(bytes)
            .map_err(|_| bad("cannot be read as a header".into()))?;
        if raw.magic != HEADER_MAGIC {
            return Err(bad("bad magic: not a ckpt version file".into()));
        }
        if blake3::hash(&bytes[..HEADER_LEN - 32]).as_bytes() != &raw.checksum {
            return Err(bad("checksum mismatch".into()));
        }
        let fv = raw.format_version.get();
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&fv) {
            return Err(bad(format!(
                "format version {fv}, this build reads versions \
                 {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}{}",
                if fv > FORMAT_VERSION {
                    " (written by a newer ckpt: read it with that version)"
                } else {
                    ""
                }
            )));
        }
        let flags = raw.flags.get();
        // Unknown compatible bits are ignored; unknown incompatible bits refuse the file.
        let unknown = (flags & !FLAGS_COMPAT) & FLAGS_INCOMPAT & !KNOWN_INCOMPAT;
        if unknown != 0 {
            return Err(bad(format!(
                "incompatible feature flags {unknown:#010x} that this build does not \
                 understand (written by a newer ckpt?)"
            )));
        }
        if raw.header_len.get() as usize != HEADER_LEN {
            return Err(bad(format!("header length {}", raw.header_len.get())));
        }
        let page_size = raw.page_size.get();
        check_page_size(page_size).map_err(bad)?;
        let tracking = TrackingKind::from_u8(raw.tracking)
            .ok_or_else(|| bad(format!("unknown tracking kind {}", raw.tracking)))?;
        let n = raw.name_len.get() as usize;
        if n == 0 || n > MAX_NAME_LEN {
            return Err(bad(format!("chain name length {n}")));
        }
        // Reserved bytes, at their offsets in the header: 109, 116..120, the name's padding
        // and 192..224.
        let reserved = [109..110, 116..120, 128 + n..224];
        if let Some(off) = reserved.into_iter().flatten().find(|&i| bytes[i] != 0) {
            return Err(bad(format!("non-zero reserved byte at offset {off}")));
        }
        let name = std::str::from_utf8(&raw.name[..n])
            .map_err(|_| bad("chain name is not UTF-8".into()))?
            .to_string();
        let parent = match raw.parent_version.get() {
            0 => None,
            version => Some(ParentRef {
                version,
                identity: Identity {
                    file_id: raw.parent_file_id,
                    index_checksum: raw.parent_index_checksum,
                },
            }),
        };
        let version = raw.version.get();
        if version == 0 {
            return Err(bad("version number 0".into()));
        }
        Ok(Header {
            format_version: fv,
            file_id: raw.file_id,
            version,
            parent,
            page_size,
            depth: raw.depth.get(),
            flags,
            tracking,
            compression_level: raw.compression_level.get(),
            created_unix_nanos: raw.created_unix_nanos.get(),
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
        let mut raw = RawFooter {
            magic: FOOTER_MAGIC,
            data_offset: U64::new(self.data_offset),
            data_len: U64::new(self.data_len),
            index_offset: U64::new(self.index_offset),
            index_len: U64::new(self.index_len),
            file_id: self.file_id,
            index_checksum: self.index_checksum,
            stored_raw_bytes: U64::new(self.stored_raw_bytes),
            data_checksum: self.data_checksum,
            checksum: [0; 32],
        };
        raw.checksum = *blake3::hash(&raw.as_bytes()[..FOOTER_LEN - 32]).as_bytes();
        let mut b = [0u8; FOOTER_LEN];
        b.copy_from_slice(raw.as_bytes());
        b
    }

    /// Parses the footer from the file's last `FOOTER_LEN` bytes, `len` being the file length,
    /// and checks that the sections it names tile the file exactly:
    /// `header | data | index | footer`.
    pub fn decode_tail(path: &Path, b: &[u8], len: u64) -> Result<Footer> {
        let bad = |d: String| Error::corrupt(path, "footer", d);
        let raw = match RawFooter::ref_from_bytes(b) {
            Ok(raw) if len >= (HEADER_LEN + FOOTER_LEN) as u64 => raw,
            _ => {
                return Err(bad(format!(
                    "file is {len} bytes, too short to hold a header and a footer (truncated?)"
                )))
            }
        };
        if raw.magic != FOOTER_MAGIC {
            return Err(bad("bad magic (truncated or incomplete file?)".into()));
        }
        if blake3::hash(&b[..FOOTER_LEN - 32]).as_bytes() != &raw.checksum {
            return Err(bad("checksum mismatch".into()));
        }
        let f = Footer {
            data_offset: raw.data_offset.get(),
            data_len: raw.data_len.get(),
            index_offset: raw.index_offset.get(),
            index_len: raw.index_len.get(),
            file_id: raw.file_id,
            index_checksum: raw.index_checksum,
            stored_raw_bytes: raw.stored_raw_bytes.get(),
            data_checksum: raw.data_checksum,
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
