//! The operating-system interface: every system call that neither std nor nix wraps, and
//! every `unsafe` block that touches the kernel, lives in this room, each with a `SAFETY:`
//! comment (as rsmpi keeps its FFI in one place).
//!
//! - [`uffd`]: userfaultfd write-protection and the `PAGEMAP_SCAN` ioctl;
//! - [`mapping`]: memory maps of version files and restore outputs;
//! - [`start_writeback`]: `sync_file_range` for early writeback.

pub(crate) mod mapping;
pub(crate) mod uffd;

use std::fs::File;
use std::os::fd::AsRawFd;

/// Asks the kernel to start writing back `len` bytes at `offset` of `file` without waiting
/// for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Durability still comes from the final
/// fsync; this only lets the disk work while later data is being prepared.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: sync_file_range takes a valid descriptor (borrowed from `file` for the call) and
    // plain integers; it touches no memory of ours.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
