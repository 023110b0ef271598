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

/// Whether every page of bytes `offset..offset + len` of `map` (a file mapping) is in the
/// page cache (`mincore(2)`). The range is cut to the mapping.
pub(crate) fn resident(map: &Mmap, offset: u64, len: usize) -> std::io::Result<bool> {
    let page = super::uffd::os_page_size();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(map.len()) / page * page;
    let end = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .saturating_add(len)
        .min(map.len());
    if start >= end {
        return Ok(true);
    }
    let mut present = vec![0u8; (end - start).div_ceil(page)];
    // SAFETY: `start..end` lies inside the live mapping `map` (both were cut to its length),
    // `start` is a multiple of the page size and the mapping starts on a page boundary, and
    // `present` has one byte for each page of the range, which is all mincore writes.
    let rc = unsafe {
        libc::mincore(
            map.as_ptr().add(start) as *mut libc::c_void,
            end - start,
            present.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(present.iter().all(|b| b & 1 == 1))
}
