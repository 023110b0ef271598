//! userfaultfd write-protection in asynchronous mode plus the `PAGEMAP_SCAN` ioctl: the kernel
//! tells which pages were written since the last scan and re-protects them atomically.
//!
//! All FFI for dirty tracking lives in this module. The structures and constants come from
//! `linux-raw-sys` (the kernel's uapi, `linux/userfaultfd.h` and `linux/fs.h`, Linux ≥ 6.7;
//! Debian 12's C headers lack them), and the ioctl request numbers are computed by rustix's
//! `_IOWR` equivalent from those structures, so nothing is transcribed by hand. Each ioctl has a
//! typed wrapper; the one whose soundness depends on its argument (`PAGEMAP_SCAN`, which
//! writes through a pointer inside it) is an `unsafe fn`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use linux_raw_sys::general::{
    page_region, pm_scan_arg, uffdio_api, uffdio_range, uffdio_register, uffdio_writeprotect,
    PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, UFFDIO_REGISTER_MODE_WP, UFFD_API,
    UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED, UFFD_USER_MODE_ONLY,
};
use rustix::ioctl::opcode;

/// `UFFDIO_WRITEPROTECT_MODE_WP` (`linux/userfaultfd.h`: bit 0 of `uffdio_writeprotect.mode`).
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
/// `_UFFDIO_API`, `_UFFDIO_REGISTER`, `_UFFDIO_WRITEPROTECT` and `UFFDIO` (the ioctl type).
const UFFDIO: u8 = 0xAA;
const UFFDIO_API: libc::Ioctl = opcode::read_write::<uffdio_api>(UFFDIO, 0x3F) as libc::Ioctl;
const UFFDIO_REGISTER: libc::Ioctl =
    opcode::read_write::<uffdio_register>(UFFDIO, 0x00) as libc::Ioctl;
const UFFDIO_WRITEPROTECT: libc::Ioctl =
    opcode::read_write::<uffdio_writeprotect>(UFFDIO, 0x06) as libc::Ioctl;
/// `UFFDIO_UNREGISTER` (`_IOR(UFFDIO, _UFFDIO_UNREGISTER, struct uffdio_range)`).
const UFFDIO_UNREGISTER: libc::Ioctl = opcode::read::<uffdio_range>(UFFDIO, 0x01) as libc::Ioctl;
/// `PAGEMAP_SCAN` (`linux/fs.h`: `_IOWR('f', 16, struct pm_scan_arg)`).
const PAGEMAP_SCAN: libc::Ioctl = opcode::read_write::<pm_scan_arg>(b'f', 16) as libc::Ioctl;

/// The kernel's page size.
pub(crate) fn os_page_size() -> usize {
    rustix::param::page_size()
}

/// Issues an ioctl whose argument is a `T` the kernel reads and writes.
///
/// # Safety
/// `req` must be a request that takes a pointer to a `T` laid out as the kernel's uapi, and
/// any pointer *inside* `*arg` must be valid for what the kernel does with it.
unsafe fn ioctl<T>(fd: &impl AsRawFd, req: libc::Ioctl, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: the caller guarantees `req` takes a `*mut T` and that the pointers in `*arg`
    // are valid; `arg` itself is a valid, exclusive reference for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `UFFDIO_API`: negotiates the API version and features.
fn uffdio_api(fd: &OwnedFd, api: &mut uffdio_api) -> io::Result<()> {
    // SAFETY: UFFDIO_API takes a `struct uffdio_api`, which holds no pointers.
    unsafe { ioctl(fd, UFFDIO_API, api) }.map(drop)
}

/// `UFFDIO_REGISTER`: registers a range with the userfaultfd.
fn uffdio_register(fd: &OwnedFd, reg: &mut uffdio_register) -> io::Result<()> {
    // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`, which holds no pointers (the
    // range is an address the kernel checks, never dereferenced by us).
    unsafe { ioctl(fd, UFFDIO_REGISTER, reg) }.map(drop)
}

/// `UFFDIO_UNREGISTER`: stops tracking a registered range.
fn uffdio_unregister(fd: &OwnedFd, range: &mut uffdio_range) -> io::Result<()> {
    // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range`, which holds no pointers (the
    // range is an address the kernel checks, never dereferenced by us).
    unsafe { ioctl(fd, UFFDIO_UNREGISTER, range) }.map(drop)
}

/// `UFFDIO_WRITEPROTECT`: write-protects or unprotects a registered range. In asynchronous
/// mode a write to a protected page never blocks: the kernel only records it.
fn uffdio_writeprotect(fd: &OwnedFd, wp: &mut uffdio_writeprotect) -> io::Result<()> {
    // SAFETY: UFFDIO_WRITEPROTECT takes a `struct uffdio_writeprotect`, with no pointers.
    unsafe { ioctl(fd, UFFDIO_WRITEPROTECT, wp) }.map(drop)
}

/// `PAGEMAP_SCAN` on `/proc/self/pagemap`: returns the number of `page_region`s written.
///
/// # Safety
/// `arg.vec` must point to `arg.vec_len` writable `page_region`s that live for the call.
unsafe fn pagemap_scan(pagemap: &File, arg: &mut pm_scan_arg) -> io::Result<usize> {
    // SAFETY: PAGEMAP_SCAN takes a `struct pm_scan_arg`; the caller guarantees its output
    // vector.
    unsafe { ioctl(pagemap, PAGEMAP_SCAN, arg) }.map(|n| n as usize)
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

impl Uffd {
    /// Opens a userfaultfd (user-mode only, so it works unprivileged) with asynchronous
    /// write-protection of populated and unpopulated pages, and `/proc/self/pagemap`.
    pub(crate) fn open() -> io::Result<Uffd> {
        // SAFETY: the userfaultfd syscall takes one integer of flags and returns a new fd.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY as libc::c_int,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };
        let want = u64::from(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED);
        let mut api = uffdio_api {
            api: u64::from(UFFD_API),
            features: want,
            ioctls: 0,
        };
        uffdio_api(&fd, &mut api)?;
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
        let mut reg = uffdio_register {
            range: uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: u64::from(UFFDIO_REGISTER_MODE_WP),
            ioctls: 0,
        };
        uffdio_register(&self.fd, &mut reg)?;
        self.protect(start, len, true)
    }

    /// Unprotects and unregisters `[start, start+len)` (page-aligned): the caller may free
    /// the memory afterwards. A range the kernel already dropped (the memory was unmapped)
    /// is not an error.
    pub(crate) fn unregister(&self, start: usize, len: usize) -> io::Result<()> {
        let _ = self.protect(start, len, false);
        let mut range = uffdio_range {
            start: start as u64,
            len: len as u64,
        };
        match uffdio_unregister(&self.fd, &mut range) {
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    || e.raw_os_error() == Some(libc::ENOMEM) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Write-protects (or unprotects) a registered range.
    pub(crate) fn protect(&self, start: usize, len: usize, on: bool) -> io::Result<()> {
        let mut wp = uffdio_writeprotect {
            range: uffdio_range {
                start: start as u64,
                len: len as u64,
            },
            mode: if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
        };
        uffdio_writeprotect(&self.fd, &mut wp)
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
        let empty = page_region {
            start: 0,
            end: 0,
            categories: 0,
        };
        let mut vec = vec![empty; self.vec_len.max(1)];
        let mut pos = start as u64;
        while pos < end {
            let mut arg = pm_scan_arg {
                size: std::mem::size_of::<pm_scan_arg>() as u64,
                flags: u64::from(PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC),
                start: pos,
                end,
                walk_end: 0,
                vec: vec.as_mut_ptr() as u64,
                vec_len: vec.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: u64::from(PAGE_IS_WRITTEN),
                category_anyof_mask: 0,
                return_mask: u64::from(PAGE_IS_WRITTEN),
            };
            // SAFETY: `arg.vec` points to `vec`, `vec.len()` writable page_regions that
            // outlive the call.
            let n = unsafe { pagemap_scan(&self.pagemap, &mut arg) }?;
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
