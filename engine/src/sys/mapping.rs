//! File mappings. The `unsafe` of mapping files lives here, with the conditions that make it
//! sound.

use std::fs::File;

use memmap2::{Mmap, MmapMut};

/// Maps a committed version file read-only.
pub(crate) fn map_version(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: committed version files are never written after their commit rename; the
    // compactor replaces a file only by renaming a new one over it, which leaves existing
    // mappings of the old inode intact (docs/FORMAT.md). Readers check every length read from
    // the file against the mapping's length before using it.
    unsafe { Mmap::map(file) }
}

/// Maps an output file that the caller has just created (and sized) for writing.
pub(crate) fn map_new_output(file: &File) -> std::io::Result<MmapMut> {
    // SAFETY: the caller created and truncated the file itself (mode 0600) and nobody else
    // resizes it while the mapping lives; a concurrent truncation by another process could
    // only make the writes fault, not alias Rust-owned memory.
    unsafe { MmapMut::map_mut(file) }
}
