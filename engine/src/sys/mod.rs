//! The operating-system interface: every system call that neither std nor nix wraps, and
//! every `unsafe` block that touches the kernel, lives in this room, each with a `SAFETY:`
//! comment (as rsmpi keeps its FFI in one place).
//!
//! - [`uffd`]: userfaultfd write-protection and the `PAGEMAP_SCAN` ioctl;
//! - [`mapping`]: memory maps of version files and restore outputs;
//! - [`start_writeback`]: `sync_file_range` for early writeback; [`set_direct`]: `O_DIRECT`;
//! - [`ckpt_restored`]: the exported breakpoint `ckpt debug` stops at;
//! - [`prefetch`]: a hint to start loading memory into the cache.

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

/// Turns direct I/O (`O_DIRECT`: writes go from the caller's memory to the disk, bypassing
/// the page cache) on or off for `file`'s open file description (`fcntl(F_SETFL)`). Fails
/// with `EINVAL` where the file system does not support it.
pub(crate) fn set_direct(file: &File, on: bool) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(file, FcntlArg::F_GETFL)?);
    let flags = match on {
        true => flags | OFlag::O_DIRECT,
        false => flags - OFlag::O_DIRECT,
    };
    fcntl(file, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Opens `file` (found at `path`) again, read-only with direct I/O (`O_DIRECT`), as a new open
/// file description of the same inode: through `/proc/self/fd`, or where `/proc` is not
/// mounted through `path`, checked to still name the same inode (device and inode number).
/// Fails where neither works or the file system takes no direct I/O.
pub(crate) fn reopen_direct(file: &File, path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let open = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(p)
    };
    let via_proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    match open(std::path::Path::new(&via_proc)) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(e),
        Err(_) => {
            let f = open(path)?;
            let (a, b) = (file.metadata()?, f.metadata()?);
            if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
                return Err(std::io::Error::other(
                    "the name now belongs to another file",
                ));
            }
            Ok(f)
        }
    }
}

/// Asks the CPU to start loading `bytes` into its caches (one prefetch per 64-byte line),
/// without waiting for them. Change detection calls it for the next page before it hashes
/// this one: a page's hash then waits less on memory. A no-op where the architecture has no
/// stable prefetch instruction.
#[inline]
pub(crate) fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is only a hint: it never faults, whatever the address, and
        // changes no memory; the address is that of a byte of `bytes` anyway. SSE, which
        // `_mm_prefetch` needs, is part of every x86_64 CPU.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast::<i8>(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Gives the memory the allocator holds free back to the kernel (`malloc_trim(0)`), so that
/// the resident set counts what is in use. For the bench's memory figure.
#[cfg(feature = "bench")]
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer of
    // ours and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Marks the pages under `mem` free for the kernel (`MADV_FREE`, Linux 4.5): it may take
/// them back, without writing them anywhere, when memory runs short; a page written first
/// stays, with what was written. Until then the pages are resident and a write needs no
/// fault. Only the whole pages inside `mem` are marked. Afterwards each byte of a page not
/// written since reads as before or as zero.
pub(crate) fn lazy_free(mem: &mut [u8]) -> std::io::Result<()> {
    discard_pages(mem, libc::MADV_FREE)
}

/// Gives the pages under `mem` back to the kernel at once (`MADV_DONTNEED`): they read as
/// zeros afterwards, and the next write to each faults in a zeroed page. Only the whole pages
/// inside `mem` are given back. `mem` must be private anonymous memory.
pub(crate) fn release(mem: &mut [u8]) -> std::io::Result<()> {
    discard_pages(mem, libc::MADV_DONTNEED)
}

/// `madvise(advice)` over the whole pages inside `mem`; `advice` is `MADV_FREE` or
/// `MADV_DONTNEED`, on private anonymous memory.
fn discard_pages(mem: &mut [u8], advice: libc::c_int) -> std::io::Result<()> {
    debug_assert!(advice == libc::MADV_FREE || advice == libc::MADV_DONTNEED);
    let page = rustix::param::page_size();
    let start = (mem.as_mut_ptr() as usize).next_multiple_of(page);
    let end = (mem.as_mut_ptr() as usize + mem.len()) / page * page;
    if end <= start {
        return Ok(());
    }
    // SAFETY: the range holds only whole pages inside `mem`, which is borrowed mutably: no
    // one else reads or writes it meanwhile. On private anonymous memory neither advice
    // unmaps anything: MADV_DONTNEED makes the pages read as zeros, MADV_FREE lets the kernel
    // do so to a page not written since; zero is a valid value for every byte of a `[u8]`,
    // and the callers treat the bytes as unspecified.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Faults in the pages under `mem` for writing, all in one call (`MADV_POPULATE_WRITE`,
/// Linux 5.14): what the first write to each page would do, without a trap per page. The
/// bytes are unchanged. A hint: an error (an older kernel, memory the call does not take)
/// leaves the pages to be faulted in by the writes themselves.
pub(crate) fn populate_write(mem: &mut [u8]) -> std::io::Result<()> {
    if mem.is_empty() {
        return Ok(());
    }
    let page = rustix::param::page_size();
    let start = mem.as_mut_ptr() as usize;
    let a = start / page * page;
    let b = (start + mem.len()).next_multiple_of(page);
    // SAFETY: the range covers `mem` (widened to whole pages, which belong to the same
    // mapping as `mem`'s first and last bytes). MADV_POPULATE_WRITE changes no byte: it only
    // does, for each page, what a write fault would, and `mem` is borrowed mutably, so no one
    // else writes it meanwhile.
    let rc = unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_POPULATE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks the kernel to start reading `len` bytes of `file` at `offset` into the page cache
/// (`posix_fadvise(POSIX_FADV_WILLNEED)`), without waiting for them. A hint.
pub(crate) fn read_ahead(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    let off = libc::off_t::try_from(offset).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let len = libc::off_t::try_from(len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    posix_fadvise(file, off, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED)?;
    Ok(())
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

/// Whether `copy_file_range(2)` into `f` is done by its file system's server (NFS 4.2,
/// SMB, CephFS: a server-side copy, the bytes never cross the network). Local file systems
/// copy through the page cache (block sharing, where a local file system has it, is asked
/// for explicitly: [`clone_range`]). `false` if the file system cannot be asked.
pub(crate) fn copy_offloaded(f: &File) -> bool {
    /// `f_type` of the file systems that copy on the server (linux/magic.h).
    const OFFLOADED: [u32; 4] = [
        0x6969,      // NFS_SUPER_MAGIC
        0xFE53_4D42, // SMB2_MAGIC_NUMBER
        0xFF53_4D42, // CIFS_MAGIC_NUMBER
        0x00C3_6400, // CEPH_SUPER_MAGIC
    ];
    match nix::sys::statfs::fstatfs(f) {
        Ok(st) => OFFLOADED.contains(&(st.filesystem_type().0 as u32)),
        Err(e) => {
            tracing::debug!("fstatfs failed ({e}): copies go through memory");
            false
        }
    }
}

/// Appends up to `len` bytes of `src` at `offset` to `dst` (at its file position) with
/// `copy_file_range(2)`: the kernel copies without passing the bytes through user space (on a
/// network file system, the server copies). Returns the bytes copied, which is short only
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

/// Makes bytes `dst_offset..dst_offset + len` of `dst` share the disk blocks of
/// `src_offset..src_offset + len` of `src` (`ioctl(FICLONERANGE)`: a reflink, nothing is
/// copied). XFS and btrfs (and OCFS2, bcachefs) do it for ranges whose offsets and length are
/// multiples of their block size. Returns `false`, having changed nothing, where the file
/// system cannot (`EOPNOTSUPP`, `ENOTTY`, `EXDEV`, `EINVAL`: another file system, other
/// devices, an alignment it does not accept).
pub(crate) fn clone_range(
    src: &File,
    src_offset: u64,
    dst: &File,
    dst_offset: u64,
    len: u64,
) -> std::io::Result<bool> {
    let range = libc::file_clone_range {
        src_fd: src.as_raw_fd() as i64,
        src_offset,
        src_length: len,
        dest_offset: dst_offset,
    };
    loop {
        // SAFETY: `dst`'s descriptor is valid for the call (borrowed); FICLONERANGE reads the
        // `file_clone_range` behind the pointer, a live local of the type the request names,
        // and writes no memory of ours.
        let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONERANGE, &range) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::EINVAL | libc::ENOSYS) => {
                return Ok(false)
            }
            _ => return Err(e),
        }
    }
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

/// Whether the memory `[addr, addr + len)` can be snapshotted by `fork()`: every mapping
/// overlapping it is private and copied to a child (not shared, `MADV_DONTFORK` or
/// `MADV_WIPEONFORK`), as `/proc/self/smaps` says.
pub(crate) fn fork_snapshots(addr: usize, len: usize) -> std::io::Result<bool> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let end = addr.saturating_add(len);
    let mut overlapping = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                overlapping = lo < end && addr < hi;
                if overlapping && words.next().is_some_and(|perms| perms.contains('s')) {
                    return Ok(false);
                }
                continue;
            }
        }
        if overlapping && first == "VmFlags:" && words.any(|f| f == "dc" || f == "wf" || f == "sh")
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A child process started by [`fork_with_pipe`].
#[derive(Debug)]
pub(crate) struct Child {
    /// Its process id.
    pub(crate) pid: i32,
    /// The read end of the pipe it writes its answer to.
    pub(crate) answer: File,
}

/// Forks. The child runs `child`, writes the bytes it returns to a pipe, and leaves with
/// `_exit` (no destructor, atexit handler or MPI finalisation of the parent's state runs in
/// it); it is killed if the parent thread dies first (`PR_SET_PDEATHSIG`). The parent gets
/// the child's pid and the pipe's read end; `child` is dropped uncalled there.
///
/// `child` runs in a copy of a possibly multi-threaded process in which only the calling
/// thread exists: it must not wait for locks other threads may have held, nor for work
/// queued to thread pools that existed before the fork.
pub(crate) fn fork_with_pipe(child: impl FnOnce() -> Vec<u8>) -> std::io::Result<Child> {
    use std::io::Write;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let parent = std::process::id() as i32;
    // SAFETY: fork duplicates the process; the parent continues as usual. The child, which
    // has only this thread, runs `child` (whose contract is above: glibc's allocator and
    // thread creation work after fork, and no lock held by another thread is waited for),
    // writes to its pipe and leaves with `_exit`, never returning into the caller's code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            Ok(Child {
                pid: child.as_raw(),
                answer: File::from(read),
            })
        }
        nix::unistd::ForkResult::Child => {
            drop(read);
            // SAFETY: prctl with PR_SET_PDEATHSIG takes plain integers; setrlimit reads the
            // local `none`; getppid cannot fail.
            let orphan = unsafe {
                // No core dump of a copy of the whole application if the child crashes.
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                let _ = libc::setrlimit(libc::RLIMIT_CORE, &none);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
                    || libc::getppid() != parent
            };
            let code = if orphan {
                3
            } else {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)) {
                    Ok(bytes) => {
                        let mut out = File::from(write);
                        if out.write_all(&bytes).is_ok() {
                            0
                        } else {
                            2
                        }
                    }
                    Err(_) => 101,
                }
            };
            // SAFETY: _exit ends the process at once; nothing of the parent's state is
            // finalised twice.
            unsafe { libc::_exit(code) }
        }
    }
}

/// What a child's answer came to.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The child closed its pipe: these are all the bytes it wrote.
    Complete(Vec<u8>),
    /// The child's threads were all asleep, with no CPU time used and no I/O done, for this
    /// long: it was sent SIGKILL (it still has to be waited for).
    Stalled(std::time::Duration),
}

/// What a process's threads were doing at one instant, to tell a hung process from a slow
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Activity {
    /// CPU time used by all its threads, in clock ticks.
    ticks: u64,
    /// Bytes it read and wrote (`rchar + wchar` of `/proc/<pid>/io`; 0 where unreadable).
    io: u64,
    /// A thread is doing something other than waiting for a lock: running or waiting for a
    /// CPU (R), waiting in the kernel (D, I: a disk, a network file system), stopped (T, t:
    /// a debugger's doing), or asleep in a system call other than `futex` (a network file
    /// system's client may wait for its server that way, a Lustre failover for minutes).
    busy: bool,
}

/// Whether thread `task` (a `/proc/<pid>/task/<tid>` directory) in state S sleeps on a lock:
/// in `futex`, as a thread waiting for a mutex, a condition variable or a channel does.
/// `false` where its system call cannot be read.
fn asleep_on_lock(task: &std::path::Path) -> bool {
    let Ok(s) = std::fs::read_to_string(task.join("syscall")) else {
        return false;
    };
    let nr = s
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<i64>().ok());
    nr == Some(libc::SYS_futex)
}

/// `pid`'s activity, from `/proc`; `None` if it cannot be read (then it is not judged).
fn activity(pid: i32) -> Option<Activity> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut ticks, mut busy, mut any) = (0u64, false, false);
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue; // a thread that just ended
        };
        // After the command name (in parentheses, which may hold anything): the state,
        // then fields 4 to 13, then utime and stime (fields 14 and 15 of proc(5)).
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let state = f.first()?.chars().next()?;
        busy |= state != 'S' || !asleep_on_lock(&t.path());
        ticks += f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        any = true;
    }
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .map(|s| {
            s.lines()
                .filter(|l| l.starts_with("rchar:") || l.starts_with("wchar:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    any.then_some(Activity { ticks, io, busy })
}

/// Reads `child`'s answer to the end. With `stall`, it also watches the child once a second:
/// if all its threads stay asleep on locks (in `futex`), using no CPU time and doing no I/O,
/// for `stall`, it is sent SIGKILL ([`Answer::Stalled`]). A child that runs, waits for a CPU
/// or waits in any other system call is never killed, nor one whose threads' system calls
/// cannot be read (`/proc/<pid>/task/<tid>/syscall`).
pub(crate) fn read_answer(
    child: &mut Child,
    stall: Option<std::time::Duration>,
) -> std::io::Result<Answer> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::time::Instant;
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut last: Option<Activity> = None;
    let mut since = Instant::now();
    loop {
        let mut fds = libc::pollfd {
            fd: child.answer.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes the one pollfd it is given, which lives on this
        // stack frame for the call.
        let ready = unsafe { libc::poll(&mut fds, 1, 1000) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ready > 0 {
            match child.answer.read(&mut buf) {
                Ok(0) => return Ok(Answer::Complete(answer)),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            since = Instant::now();
            continue;
        }
        let Some(limit) = stall else {
            continue;
        };
        let now = activity(child.pid);
        if now.is_none_or(|a| a.busy) || now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= limit {
            // SAFETY: kill takes plain integers; the pid is our child's, not yet waited for,
            // so it cannot have been reused.
            unsafe { libc::kill(child.pid, libc::SIGKILL) };
            return Ok(Answer::Stalled(since.elapsed()));
        }
    }
}

/// How a child that did not exit cleanly ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChildEnd {
    /// What happened, for messages ("was killed by SIGSEGV").
    pub(crate) how: String,
    /// It touched memory it could not read (SIGSEGV or SIGBUS): memory the parent has was
    /// not copied to it.
    pub(crate) memory_fault: bool,
}

/// Waits for child `pid` to end: `Ok(None)` if it exited with status 0, else how it ended.
pub(crate) fn wait_child(pid: i32) -> std::io::Result<Option<ChildEnd>> {
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, 0)) => return Ok(None),
            Ok(WaitStatus::Exited(_, c)) => {
                return Ok(Some(ChildEnd {
                    how: format!("exited with status {c}"),
                    memory_fault: false,
                }))
            }
            Ok(WaitStatus::Signaled(_, s, _)) => {
                return Ok(Some(ChildEnd {
                    how: format!("was killed by {s}"),
                    memory_fault: matches!(s, Signal::SIGSEGV | Signal::SIGBUS),
                }))
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Lowers the calling thread's scheduling priority by `by` (Linux `setpriority` on the
/// thread id; threads it starts inherit it), so that a background flush yields the CPU to the
/// application's own threads. Best effort: errors are ignored.
pub(crate) fn lower_thread_priority(by: i32) {
    // SAFETY: gettid and setpriority take and return plain integers and touch no memory of
    // ours.
    unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, (now + by).min(19));
    }
}

#[cfg(test)]
mod tests {
    /// A process whose one thread waits for a lock for ever is seen asleep, its CPU time
    /// standing still, and is killed by `read_answer`; one in a timed sleep (another system
    /// call) and a running one are seen busy, the running one's CPU time moving.
    #[test]
    fn activity_tells_a_process_stuck_on_a_lock_from_a_running_one() {
        let mut stuck = super::fork_with_pipe(|| loop {
            std::thread::park();
        })
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let a = super::activity(stuck.pid).expect("read the stuck child's activity");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let b = super::activity(stuck.pid).expect("read the stuck child's activity");
        let answer = super::read_answer(&mut stuck, Some(std::time::Duration::from_secs(1)));
        let end = super::wait_child(stuck.pid).unwrap();
        assert!(!a.busy && a == b, "{a:?} then {b:?}");
        assert!(
            matches!(answer, Ok(super::Answer::Stalled(d)) if d.as_secs_f64() >= 1.0),
            "{answer:?}"
        );
        assert!(end.is_some_and(|e| e.how.contains("SIGKILL")));

        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let s = super::activity(sleeper.id() as i32).expect("read the sleeper's activity");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        assert!(s.busy, "{s:?}");

        let me = std::process::id() as i32;
        let a = super::activity(me).expect("read our own activity");
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let b = super::activity(me).expect("read our own activity");
        assert!(a.busy && b.busy && b.ticks > a.ticks, "{a:?} then {b:?}");
        assert!(super::activity(i32::MAX).is_none());
    }

    /// Populating memory changes none of its bytes, fresh or written, whole pages or not.
    #[test]
    fn populate_write_keeps_the_bytes() {
        let mut fresh = vec![0u8; 3 << 20];
        super::populate_write(&mut fresh).expect("populate fresh memory");
        assert!(fresh.iter().all(|&b| b == 0));
        let mut written: Vec<u8> = (0..(1 << 20) + 123).map(|i| (i % 251) as u8).collect();
        super::populate_write(&mut written[77..]).expect("populate an unaligned range");
        assert!(written
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8));
        super::populate_write(&mut []).expect("an empty range is nothing to do");
    }
}
