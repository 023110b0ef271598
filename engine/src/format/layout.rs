//! The byte layouts, declared once: each on-disk structure is a `#[repr(C)]` struct of
//! little-endian fields with no padding, read and written with `zerocopy` (no offset
//! arithmetic anywhere else). Sizes are checked at compile time. `docs/FORMAT.md` gives the
//! same tables in prose.

use zerocopy::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The 256-byte header at offset 0 of a version file.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RawHeader {
    pub(crate) magic: [u8; 8],
    pub(crate) format_version: U32,
    pub(crate) header_len: U32,
    pub(crate) file_id: [u8; 16],
    pub(crate) version: U64,
    pub(crate) parent_version: U64,
    pub(crate) parent_file_id: [u8; 16],
    pub(crate) parent_index_checksum: [u8; 32],
    pub(crate) page_size: U32,
    pub(crate) depth: U32,
    pub(crate) flags: U32,
    pub(crate) tracking: u8,
    pub(crate) reserved0: u8,
    pub(crate) name_len: U16,
    pub(crate) compression_level: I32,
    pub(crate) reserved1: [u8; 4],
    pub(crate) created_unix_nanos: U64,
    /// The chain name, zero-padded.
    pub(crate) name: [u8; 64],
    pub(crate) reserved2: [u8; 32],
    /// blake3 of the 224 bytes before it.
    pub(crate) checksum: [u8; 32],
}

/// The 160-byte footer at the end of a version file.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RawFooter {
    pub(crate) magic: [u8; 8],
    pub(crate) data_offset: U64,
    pub(crate) data_len: U64,
    pub(crate) index_offset: U64,
    pub(crate) index_len: U64,
    pub(crate) file_id: [u8; 16],
    pub(crate) index_checksum: [u8; 32],
    pub(crate) stored_raw_bytes: U64,
    pub(crate) data_checksum: [u8; 32],
    /// blake3 of the 128 bytes before it.
    pub(crate) checksum: [u8; 32],
}

/// The fixed part at the start of the index section.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RawIndexFixed {
    pub(crate) magic: [u8; 8],
    pub(crate) file_count: U32,
    pub(crate) region_count: U32,
    pub(crate) extent_count: U64,
    pub(crate) record_count: U64,
    pub(crate) names_len: U64,
    pub(crate) superseded_count: U32,
    pub(crate) reserved: U32,
}

/// A file-table entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RawFileEntry {
    pub(crate) file_id: [u8; 16],
    pub(crate) index_checksum: [u8; 32],
    pub(crate) version: U64,
    pub(crate) name_offset: U32,
    pub(crate) name_len: U32,
}

/// A region-table entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RawRegionEntry {
    pub(crate) id: U64,
    pub(crate) byte_len: U64,
    pub(crate) first_extent: U64,
    pub(crate) extent_count: U64,
}

/// An extent.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RawExtent {
    pub(crate) page_count: U32,
    pub(crate) file: U32,
    pub(crate) first_record: U64,
}

/// A page record.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RawRecord {
    pub(crate) hash: [u8; 32],
    pub(crate) offset: U64,
    pub(crate) stored_len: U32,
    pub(crate) raw_len: U32,
    pub(crate) codec: u8,
    pub(crate) reserved: [u8; 7],
}

/// The fixed start of a job's global commit record.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RawCommitHead {
    pub(crate) magic: [u8; 8],
    pub(crate) format: U32,
    pub(crate) world_size: U32,
    pub(crate) version: U64,
    pub(crate) created_unix_nanos: U64,
}

/// One rank's entry in a commit record: the identity of its file.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RawIdentity {
    pub(crate) file_id: [u8; 16],
    pub(crate) index_checksum: [u8; 32],
}

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<RawHeader>() == super::HEADER_LEN);
    assert!(size_of::<RawFooter>() == super::FOOTER_LEN);
    assert!(size_of::<RawIndexFixed>() == super::INDEX_FIXED_LEN);
    assert!(size_of::<RawFileEntry>() == super::FILE_ENTRY_LEN);
    assert!(size_of::<RawRegionEntry>() == super::REGION_ENTRY_LEN);
    assert!(size_of::<RawExtent>() == super::EXTENT_LEN);
    assert!(size_of::<RawRecord>() == super::RECORD_LEN);
    assert!(size_of::<RawCommitHead>() == 32);
    assert!(size_of::<RawIdentity>() == 48);
};

/// Reads a table of `count` `T`s at `*off` of `b`, advancing `*off`; `None` if `b` is too
/// short (callers check the section's length first, so that is corruption).
pub(crate) fn table<'a, T: FromBytes + KnownLayout + Immutable + Unaligned>(
    b: &'a [u8],
    off: &mut usize,
    count: usize,
) -> Option<&'a [T]> {
    let len = count.checked_mul(std::mem::size_of::<T>())?;
    let bytes = b.get(*off..off.checked_add(len)?)?;
    *off += len;
    <[T]>::ref_from_bytes(bytes).ok()
}
