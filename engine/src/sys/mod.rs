//! The operating-system interface: every system call that neither std nor nix wraps, and
//! every `unsafe` block that touches the kernel, lives in this room, each with a `SAFETY:`
//! comment (as rsmpi keeps its FFI in one place).
//!
//! - [`uffd`]: userfaultfd write-protection and the `PAGEMAP_SCAN` ioctl;
//! - [`mapping`]: memory maps of version files and restore outputs;
//! - [`start_writeback`]: `sync_file_range` for early writeback;
//! - [`ckpt_restored`]: the exported breakpoint `ckpt debug` stops at.

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

/// Asks the kernel to drop `file`'s clean cached pages (`posix_fadvise(POSIX_FADV_DONTNEED)`),
/// so that the next read of it comes from the disk. For cold-cache measurements.
#[cfg(feature = "bench")]
pub(crate) fn drop_cached(file: &File) -> std::io::Result<()> {
    // SAFETY: posix_fadvise takes a valid descriptor (borrowed from `file` for the call) and
    // plain integers; it touches no memory of ours.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    match rc {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// Appends up to `len` bytes of `src` at `offset` to `dst` (at its file position) with
/// `copy_file_range(2)`: the kernel copies without passing the bytes through user space, and
/// XFS and btrfs share the blocks (a reflink). Returns the bytes copied, which is short only
/// where the file systems cannot copy this way (`EXDEV`, `EOPNOTSUPP`, `ENOSYS`, `EINVAL`):
/// the caller copies the rest itself.
pub(crate) fn copy_range(src: &File, offset: u64, dst: &File, len: u64) -> std::io::Result<u64> {
    let mut off_in = libc::loff_t::try_from(offset)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(1 << 30) as usize;
        // SAFETY: both descriptors are valid for the call (borrowed from `src` and `dst`);
        // `off_in` is a live local the kernel updates; a null `off_out` means "at the file
        // position". No other memory of ours is touched.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                want,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EXDEV | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(done),
                Some(libc::EINTR) => continue,
                _ => Err(e),
            };
        }
        if n == 0 {
            // The source ended early: let the caller's read report it.
            return Ok(done);
        }
        done += n as u64;
    }
    Ok(done)
}

/// Reserves `len` bytes of disk for `file` (`posix_fallocate`), so that writing through a
/// mapping of it cannot run out of space (which would be SIGBUS, not an error).
pub(crate) fn reserve(file: &File, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let len = libc::off_t::try_from(len)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: posix_fallocate takes a valid descriptor (borrowed from `file` for the call) and
    // plain integers; it touches no memory of ours.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate: fall back to setting the length (sparse).
        libc::EOPNOTSUPP => file.set_len(len as u64),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// Called right after every successful restore with the restored version number. It does
/// nothing: it is exported unmangled so that a debugger can stop here, with the restored state
/// in memory (`ckpt debug` sets a breakpoint on it).
#[no_mangle]
#[inline(never)]
pub extern "C" fn ckpt_restored(version: u64) {
    std::hint::black_box(version);
}
