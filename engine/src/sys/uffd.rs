//! userfaultfd write-protection in asynchronous mode plus the `PAGEMAP_SCAN` ioctl: the kernel
//! tells which pages were written since the last scan and re-protects them atomically.
//!
//! All FFI for dirty tracking lives in this module. Debian 12's headers lack these
//! definitions, so the structures and constants are transcribed from the kernel's uapi
//! (`linux/userfaultfd.h`, `linux/fs.h`, Linux ≥ 6.7).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

// --- linux/userfaultfd.h -------------------------------------------------------------------
const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// Unpopulated (never touched) pages are write-protected too.
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// Write faults on protected pages are resolved by the kernel, which only records them.
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `_IOC(dir, type, nr, size)` for x86_64, arm64 and the other "generic" ioctl layouts.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const UFFDIO_API_IOCTL: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0xAA,
    0x3F,
    std::mem::size_of::<UffdioApi>(),
);
const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0xAA,
    0x00,
    std::mem::size_of::<UffdioRegister>(),
);
const UFFDIO_WRITEPROTECT: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0xAA,
    0x06,
    std::mem::size_of::<UffdioWriteprotect>(),
);

// --- linux/fs.h ----------------------------------------------------------------------------
/// The page was written since it was last write-protected.
const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// Write-protect the pages that match.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail if a page in the range is not under asynchronous write-protection.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const PAGEMAP_SCAN: u64 = ioc(
    IOC_READ | IOC_WRITE,
    b'f' as u64,
    16,
    std::mem::size_of::<PmScanArg>(),
);

/// The kernel's page size.
pub(crate) fn os_page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// A userfaultfd in asynchronous write-protect mode and the pagemap file to scan with.
pub(crate) struct Uffd {
    fd: OwnedFd,
    pagemap: File,
    /// Output slots per PAGEMAP_SCAN call (a scan with more written runs loops on walk_end).
    pub(crate) vec_len: usize,
}

impl std::fmt::Debug for Uffd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uffd")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

fn ioctl<T>(fd: libc::c_int, req: u64, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: every request used with this helper takes a pointer to a struct of type `T`, laid
    // out as the kernel's uapi (#[repr(C)] above); `arg` is a valid, exclusive reference for the
    // duration of the call.
    let rc = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Uffd {
    /// Opens a userfaultfd (user-mode only, so it works unprivileged) with asynchronous
    /// write-protection of populated and unpopulated pages, and `/proc/self/pagemap`.
    pub(crate) fn open() -> io::Result<Uffd> {
        // SAFETY: the userfaultfd syscall takes one integer of flags and returns a new fd.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };
        let want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        let mut api = UffdioApi {
            api: UFFD_API,
            features: want,
            ioctls: 0,
        };
        ioctl(fd.as_raw_fd(), UFFDIO_API_IOCTL, &mut api)?;
        if api.features & want != want {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "kernel lacks UFFD_FEATURE_WP_ASYNC/WP_UNPOPULATED",
            ));
        }
        let pagemap = File::open("/proc/self/pagemap")?;
        Ok(Uffd {
            fd,
            pagemap,
            vec_len: 1024,
        })
    }

    /// Registers `[start, start+len)` (page-aligned) for write-protection and protects it.
    pub(crate) fn register(&self, start: usize, len: usize) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut reg)?;
        self.protect(start, len, true)
    }

    /// Write-protects (or unprotects) a registered range.
    pub(crate) fn protect(&self, start: usize, len: usize, on: bool) -> io::Result<()> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
        };
        ioctl(self.fd.as_raw_fd(), UFFDIO_WRITEPROTECT, &mut wp).map(drop)
    }

    /// Returns the runs `[start, end)` of pages written in `[start, start+len)` since the last
    /// scan (or protection), and write-protects them again in the same atomic step. Loops on
    /// `walk_end` when the output vector fills.
    pub(crate) fn scan_written(
        &self,
        start: usize,
        len: usize,
        out: &mut Vec<(usize, usize)>,
    ) -> io::Result<()> {
        let end = (start + len) as u64;
        let mut vec = vec![PageRegion::default(); self.vec_len.max(1)];
        let mut pos = start as u64;
        while pos < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start: pos,
                end,
                vec: vec.as_mut_ptr() as u64,
                vec_len: vec.len() as u64,
                category_mask: PAGE_IS_WRITTEN,
                return_mask: PAGE_IS_WRITTEN,
                ..PmScanArg::default()
            };
            let n = ioctl(self.pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg)? as usize;
            for r in &vec[..n.min(vec.len())] {
                out.push((r.start as usize, r.end as usize));
            }
            if arg.walk_end <= pos {
                return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
            }
            pos = arg.walk_end;
        }
        Ok(())
    }
}

/// Whether this kernel supports the tracking mode, probed once per process. `Err` says why not.
pub(crate) fn available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let u = Uffd::open().map_err(|e| format!("userfaultfd: {e}"))?;
            // Probe a scratch page end to end: register, write, scan.
            let mut m = memmap2::MmapMut::map_anon(os_page_size()).map_err(|e| e.to_string())?;
            let addr = m.as_ptr() as usize;
            u.register(addr, m.len())
                .map_err(|e| format!("UFFDIO_REGISTER(WP): {e}"))?;
            m[0] = 1;
            let mut out = Vec::new();
            u.scan_written(addr, m.len(), &mut out)
                .map_err(|e| format!("PAGEMAP_SCAN: {e}"))?;
            if out.is_empty() {
                return Err("PAGEMAP_SCAN did not report a written page".into());
            }
            Ok(())
        })
        .clone()
}
