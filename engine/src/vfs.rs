//! The engine's durable file-system operations behind one small trait, [`Vfs`], so that a
//! test can swap the backend (as redb swaps its storage backend): a recording backend logs
//! every create, write, fsync, rename, link, unlink and mkdir that changes a store, and a
//! crash-state enumerator replays subsets of that log to check what a power loss could leave
//! (`tests/tests/powerloss.rs`).
//!
//! Every operation that changes a store goes through [`current`]: version files, commit
//! records, the membership record, job metadata, copies between stores, compaction's
//! removals and revisions, the removal of stale temporaries. Reading (listing, `mmap` of
//! version files) does not: a crash state is materialised as a real directory and read with
//! the real code. Lock files are not store state and stay outside too.
//!
//! The backend is process-wide. [`RealFs`], the default, makes the plain system calls.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, RwLock};

/// A file open for writing through a [`Vfs`]. Writes are sequential from the start (or,
/// for [`Vfs::open_append`], from the end).
pub trait VfsFile: Write + Send {
    /// `fdatasync`: the data written so far, and the size, survive a power loss.
    fn sync_data(&mut self) -> io::Result<()>;
    /// `fsync`: like [`sync_data`](Self::sync_data), and the file's other metadata.
    fn sync_all(&mut self) -> io::Result<()>;
    /// Asks the kernel to start writing back `len` bytes at `offset` without waiting (a hint:
    /// durability still comes only from a sync). The default does nothing.
    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Appends `len` bytes of `src` from `offset`. The default reads and writes them; the real
    /// file system copies in the kernel (`copy_file_range`).
    fn copy_from(&mut self, src: &File, offset: u64, len: u64) -> io::Result<()> {
        copy_through_memory(self, src, offset, len)
    }
    /// Whether [`copy_from`](Self::copy_from) is carried out by the file system's server
    /// without the bytes crossing this machine (a network file system's server-side copy).
    /// Where it is not, writing the bytes from memory with direct I/O is faster than the
    /// kernel's copy through the page cache. The default: `false`.
    fn copy_offloaded(&self) -> bool {
        false
    }
    /// Appends `len` bytes of `src` from `offset` by sharing the file system's blocks (a
    /// reflink: XFS, btrfs), without copying them. The caller guarantees that `offset`, `len`
    /// and the file's length are multiples of [`DIRECT_ALIGN`]. Returns `false`, having
    /// written nothing, where the file system cannot (ext4, another device, a block size
    /// that does not divide them): the caller then writes the bytes. Durability still comes
    /// only from a sync. The default: `false`.
    fn clone_from(&mut self, _src: &File, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// Appends `buf` with direct I/O (`O_DIRECT`: from `buf` to the disk, not through the
    /// page cache) where the file system allows it. The caller guarantees that `buf`'s
    /// address, its length and the file's length are multiples of [`DIRECT_ALIGN`]. Returns
    /// `false`, having written nothing, where direct I/O is not possible: the caller then
    /// writes `buf` normally. Durability still comes only from a sync. The default: `false`.
    fn write_direct(&mut self, _buf: &[u8]) -> io::Result<bool> {
        Ok(false)
    }
}

/// The alignment [`VfsFile::write_direct`] needs of memory, lengths and file offsets: the
/// page size, a multiple of every common logical block size.
pub const DIRECT_ALIGN: usize = 4096;

/// Appends `len` bytes of `src` at `offset` to `dst` by reading and writing them.
pub fn copy_through_memory<W: Write + ?Sized>(
    dst: &mut W,
    src: &File,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len.min(8 << 20) as usize];
    let (mut at, end) = (offset, offset + len);
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], at)?;
        dst.write_all(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// The operations that change a store. Each takes full paths and reports the operating
/// system's error as it is; callers add the path and the step to it.
pub trait Vfs: Send + Sync {
    /// Creates `path` (mode 0600), failing if anything exists at that name; never follows a
    /// symlink.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VfsFile>>;
    /// Opens `path` for appending, creating it (mode 0600) if missing; never follows a
    /// symlink.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn VfsFile>>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Renames `from` to `to` only if `to` does not exist (`RENAME_NOREPLACE`): fails with
    /// `EEXIST` if it does, and with `EINVAL` or `ENOSYS` where the file system cannot.
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes `to` a second name of `from` (`link(2)`), failing if `to` exists.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the name `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates the directory `path` (mode 0700); its parent must exist.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// fsyncs the directory `path`: the creations, renames and removals in it survive a power
    /// loss.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// The real file system: each operation is the system call it names.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

/// A file of [`RealFs`].
#[derive(Debug)]
pub struct RealFile(File, Direct);

/// Whether a [`RealFile`]'s descriptor has `O_DIRECT` set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direct {
    Off,
    On,
    /// The file system refused it: never tried again for this file.
    Unsupported,
}

impl RealFile {
    fn new(file: File) -> RealFile {
        RealFile(file, Direct::Off)
    }

    /// Turns `O_DIRECT` off before a write that may be unaligned.
    fn buffered(&mut self) -> io::Result<()> {
        if self.1 == Direct::On {
            crate::sys::set_direct(&self.0, false)?;
            self.1 = Direct::Off;
        }
        Ok(())
    }
}

impl Write for RealFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffered()?;
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl VfsFile for RealFile {
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        crate::sys::start_writeback(&self.0, offset, len)
    }
    fn copy_offloaded(&self) -> bool {
        crate::sys::copy_offloaded(&self.0)
    }
    fn copy_from(&mut self, src: &File, offset: u64, len: u64) -> io::Result<()> {
        self.buffered()?;
        match crate::sys::copy_range(src, offset, &self.0, len) {
            Ok(done) if done == len => Ok(()),
            // Not supported here (another file system, an old kernel): copy what is left.
            Ok(done) => copy_through_memory(&mut self.0, src, offset + done, len - done),
            Err(e) => Err(e),
        }
    }
    fn clone_from(&mut self, src: &File, offset: u64, len: u64) -> io::Result<bool> {
        use std::io::Seek;
        let end = self.0.seek(io::SeekFrom::End(0))?;
        if !crate::sys::clone_range(src, offset, &self.0, end, len)? {
            return Ok(false);
        }
        // Appending goes on after the shared blocks.
        self.0.seek(io::SeekFrom::Start(end + len))?;
        Ok(true)
    }
    fn write_direct(&mut self, buf: &[u8]) -> io::Result<bool> {
        match self.1 {
            Direct::Unsupported => return Ok(false),
            Direct::Off => match crate::sys::set_direct(&self.0, true) {
                Ok(()) => self.1 = Direct::On,
                Err(e) => {
                    tracing::debug!(
                        "direct I/O not available ({e}): writing through the page cache"
                    );
                    self.1 = Direct::Unsupported;
                    return Ok(false);
                }
            },
            Direct::On => {}
        }
        let mut at = 0;
        while at < buf.len() {
            match self.0.write(&buf[at..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                // A short direct write (the disk nearly full, a signal): the rest, which
                // may no longer be aligned, goes through the page cache.
                Ok(n) if at + n < buf.len() => {
                    self.buffered()?;
                    self.0.write_all(&buf[at + n..])?;
                    at = buf.len();
                }
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Refused before anything was written (an alignment this file system does
                // not accept): not tried again for this file.
                Err(e) if at == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                    self.buffered()?;
                    self.1 = Direct::Unsupported;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Options every store file is opened with: created mode 0600, never through a symlink.
fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    o
}

impl Vfs for RealFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let f = private_file()
            .write(true)
            .read(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(RealFile::new(f)))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let f = private_file().create(true).append(true).open(path)?;
        Ok(Box::new(RealFile::new(f)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        let cwd = nix::fcntl::AT_FDCWD;
        nix::fcntl::renameat2(
            cwd,
            from,
            cwd,
            to,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(io::Error::from)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::DirBuilder::new().mode(0o700).create(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

static BACKEND: RwLock<Option<Arc<dyn Vfs>>> = RwLock::new(None);

/// The backend in use: the one [`install`]ed last, else [`RealFs`].
pub fn current() -> Arc<dyn Vfs> {
    let installed = match BACKEND.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    installed.unwrap_or_else(|| Arc::new(RealFs))
}

/// Makes `backend` the process-wide backend until the returned guard drops, which puts back
/// the one before. For tests (a recording backend, fault injection); every thread of the
/// process sees it.
pub fn install(backend: Arc<dyn Vfs>) -> Installed {
    let mut g = match BACKEND.write() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let previous = g.replace(backend);
    Installed { previous }
}

/// Keeps an [`install`]ed backend in place; dropping it restores the previous one.
#[must_use = "the backend is uninstalled when this guard drops"]
pub struct Installed {
    previous: Option<Arc<dyn Vfs>>,
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installed").finish_non_exhaustive()
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let mut g = match BACKEND.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = self.previous.take();
    }
}
