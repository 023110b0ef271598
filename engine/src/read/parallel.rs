//! Reading many byte ranges of version files at once, around the page cache.
//!
//! A caller cuts what it needs into requests (each a byte range of one file, up to
//! [`MAX_CHUNK`]) and hands them over in the order it wants them read. Reader threads keep
//! [`READERS`] requests in flight, optionally with direct I/O (`O_DIRECT`) where the file
//! system takes it and the bytes are not cached already, while the caller's workers take each
//! request as it is read ([`Filled`]). Restores decode the pages straight into the regions
//! (`fill.rs`); the compactor checks them and appends them to a new revision, in order.
//!
//! Why direct I/O for restores: a cold read through the page cache pays for memory it does
//! not keep, to fill the cache and to fault in the file's mapping (on a 2-core VM, a cold
//! 1 GiB restore through the cache took 0.45 s more CPU time than the same restore from a
//! warm cache), and it evicts the application's own cached files for bytes that are read
//! once. Bytes already cached (a restore right after the checkpoint that wrote them through
//! the cache) are taken from the mapping instead: a direct read would fetch them from the
//! disk again. (The compactor, bound by the disk rather than the CPU, reads through the
//! cache: see `compact/rewrite.rs`.)
//!
//! Buffers come from a bounded pool, and a reader takes its buffer *before* its next
//! request. So every request handed out is in a reader's hands with a buffer, and a consumer
//! that waits for the requests in order (the compactor's writer) always gets the one it
//! waits for, however many later ones it holds.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};

use super::VersionFile;
use crate::error::{Error, Result};
use crate::format::Record;
use crate::iobuf::IoBuf;
use crate::vfs::DIRECT_ALIGN;

/// Bytes one read request covers at most.
pub(crate) const MAX_CHUNK: u64 = 1 << 20;
/// Read requests in flight at most: reader threads. Many small requests in flight kept the
/// workers busy where a few large ones did not: 1 GiB cold restores on a 2-core VM (ext4 on
/// virtio), three each, alternated: 16 × 1 MiB 0.85-0.98 s (the workers waited 0.03-0.18 s
/// for reads), 8 × 1 MiB 0.93-1.08 s, 4 × 4 MiB 0.95-1.24 s, 2 × 8 MiB 1.17-1.26 s (the
/// workers waited 0.34-0.46 s, the readers were reading 97 % of the time).
pub(crate) const READERS: usize = 16;
/// A gap between two needed byte ranges of a file that one request reads through instead of
/// starting another (an old file of a deep chain is needed in many small pieces).
pub(crate) const GAP: u64 = 256 << 10;

/// A byte range of one file to read.
pub(crate) trait Request: Send {
    /// The file's index in the reader's files.
    fn file(&self) -> usize;
    /// The bytes needed: `start..end` of the file.
    fn span(&self) -> (u64, u64);
    /// Memory to read the span straight into, around the page cache and without a buffer,
    /// where the reader can: exactly the span's length. `None` (the default) for a buffer.
    fn target(&mut self) -> Option<&mut [u8]> {
        None
    }
}

/// A request's range, widened to [`DIRECT_ALIGN`] boundaries: offset and length.
fn aligned((start, end): (u64, u64)) -> (u64, usize) {
    let a = start / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
    let b = end.next_multiple_of(DIRECT_ALIGN as u64);
    (a, (b - a) as usize)
}

/// Where a read request's bytes are.
enum Landed {
    /// In a buffer of the pool, from file offset `at` of [`Filled`].
    Buffer(IoBuf),
    /// In the page cache: taken from the file's mapping.
    Mapping,
    /// In the request's [`Request::target`].
    Target,
}

/// A request, read. Its buffer goes back to the pool when it is dropped.
pub(crate) struct Filled<'r, R> {
    /// The request.
    pub(crate) req: R,
    /// Where its bytes are.
    landed: Landed,
    at: u64,
    file: &'r VersionFile,
    pool: &'r Pool,
}

impl<'r, R> Filled<'r, R> {
    /// The file read.
    pub(crate) fn file(&self) -> &'r VersionFile {
        self.file
    }

    /// Whether the span's bytes were read straight into the request's
    /// [`target`](Request::target) (then [`bytes`](Self::bytes) has none of them).
    pub(crate) fn in_target(&self) -> bool {
        matches!(self.landed, Landed::Target)
    }

    /// The stored bytes of record `rec` of the file, if the request covered them.
    pub(crate) fn stored(&self, rec: &Record) -> Option<&[u8]> {
        self.bytes(rec.offset, rec.offset.checked_add(rec.stored_len as u64)?)
    }

    /// Bytes `start..end` of the file, if the request covered them.
    pub(crate) fn bytes(&self, start: u64, end: u64) -> Option<&[u8]> {
        match &self.landed {
            Landed::Buffer(b) => {
                let from = usize::try_from(start.checked_sub(self.at)?).ok()?;
                let to = usize::try_from(end.checked_sub(self.at)?).ok()?;
                b.bytes().get(from..to)
            }
            Landed::Mapping => self
                .file
                .map()
                .get(usize::try_from(start).ok()?..usize::try_from(end).ok()?),
            Landed::Target => None,
        }
    }
}

impl<R> Drop for Filled<'_, R> {
    fn drop(&mut self) {
        if let Landed::Buffer(b) = std::mem::replace(&mut self.landed, Landed::Mapping) {
            self.pool.give(b);
        }
    }
}

/// The read buffers: at most `max`, each of `bytes`, allocated as needed.
struct Pool {
    state: Mutex<PoolState>,
    returned: Condvar,
    max: usize,
    bytes: usize,
}

struct PoolState {
    free: Vec<IoBuf>,
    allocated: usize,
    /// After an error: nobody waits for a buffer any more.
    closed: bool,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A free buffer, a new one while fewer than `max` exist, else the next one given back.
    /// `None` once the pool is closed, or if a new buffer cannot be allocated.
    fn take(&self) -> Option<IoBuf> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return None;
            }
            if let Some(b) = st.free.pop() {
                return Some(b);
            }
            if st.allocated < self.max {
                st.allocated += 1;
                drop(st);
                return IoBuf::new(self.bytes).ok();
            }
            st = match self.returned.wait(st) {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }

    fn give(&self, b: IoBuf) {
        self.lock().free.push(b);
        self.returned.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.returned.notify_all();
    }
}

/// Reads requests of a set of files (a version and the files it references).
pub(crate) struct Reader<'f> {
    files: &'f [Arc<VersionFile>],
    /// Each file reopened for direct I/O, where that worked.
    direct: Vec<Option<File>>,
    /// Files whose file system refused a direct read: read through the page cache.
    refused: Vec<AtomicBool>,
    pool: Pool,
}

impl<'f> Reader<'f> {
    /// A reader of `files`, with buffers for `workers` besides the readers' own; with
    /// `direct`, around the page cache where the file system allows.
    pub(crate) fn new(files: &'f [Arc<VersionFile>], workers: usize, direct: bool) -> Reader<'f> {
        let reopen = |f: &VersionFile| match crate::sys::reopen_direct(f.file(), f.path()) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::debug!(
                    "{}: no direct I/O ({e}); reading through the page cache",
                    f.path().display()
                );
                None
            }
        };
        let direct = files
            .iter()
            .map(|f| if direct { reopen(f) } else { None })
            .collect();
        Reader {
            files,
            direct,
            refused: files.iter().map(|_| AtomicBool::new(false)).collect(),
            pool: Pool {
                state: Mutex::new(PoolState {
                    free: Vec::new(),
                    allocated: 0,
                    closed: false,
                }),
                returned: Condvar::new(),
                // Every buffer is in a reader's hands, queued, or with a worker: readers wait
                // for one when all are out, so at most this many requests are read ahead.
                max: READERS + workers.max(1),
                // A request of MAX_CHUNK bytes at any offset, widened at both ends.
                bytes: MAX_CHUNK as usize + 2 * DIRECT_ALIGN,
            },
        }
    }

    /// Reads `requests`, handed out in the order given, and runs `work` on each as it is read
    /// on one of `workers` threads. Stops at the first error (of a read or of `work`), which
    /// it returns once every thread has stopped. `work` may hand a [`Filled`] on to another
    /// thread, which must drop it before this returns or the readers may wait for its buffer.
    pub(crate) fn run<'s, R: Request>(
        &'s self,
        requests: Vec<R>,
        workers: usize,
        work: impl Fn(Filled<'s, R>) -> Result<()> + Sync,
    ) -> Result<()> {
        if requests.is_empty() {
            return Ok(());
        }
        if let Some(r) = requests.iter().find(|r| {
            let (a, b) = r.span();
            r.file() >= self.files.len() || a > b || b - a > MAX_CHUNK
        }) {
            let f = self.files.get(r.file()).unwrap_or(&self.files[0]);
            let (a, b) = r.span();
            return Err(Error::corrupt(
                f.path(),
                format!("bytes {a}..{b}"),
                format!("one record or read request longer than {MAX_CHUNK} bytes"),
            ));
        }
        let readers = READERS.min(requests.len());
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let fail = |e: Error| {
            failed.store(true, Ordering::Relaxed);
            if let Ok(mut slot) = first_error.lock() {
                slot.get_or_insert(e);
            }
            self.pool.close();
        };
        let queue = Mutex::new(requests.into_iter());
        // Unbounded: a reader never waits to hand over a request (the buffers bound what is
        // queued), so readers cannot be left waiting on workers that stopped after an error.
        let (full_tx, full_rx) = mpsc::channel::<Filled<'s, R>>();
        let full_rx = Mutex::new(full_rx);
        std::thread::scope(|s| {
            for _ in 0..readers {
                let full_tx = full_tx.clone();
                let (queue, failed, fail) = (&queue, &failed, &fail);
                s.spawn(move || {
                    let mut spare = None;
                    while !failed.load(Ordering::Relaxed) {
                        // The buffer first: see the module's docs.
                        let Some(buf) = spare.take().or_else(|| self.pool.take()) else {
                            if !failed.load(Ordering::Relaxed) {
                                fail(Error::io(
                                    self.files[0].path(),
                                    "read",
                                    std::io::Error::from(std::io::ErrorKind::OutOfMemory),
                                ));
                            }
                            return;
                        };
                        let next = match queue.lock() {
                            Ok(mut q) => q.next(),
                            Err(poisoned) => poisoned.into_inner().next(),
                        };
                        let Some(req) = next else {
                            self.pool.give(buf);
                            return;
                        };
                        match self.read(req, buf) {
                            Ok((filled, unused)) => {
                                spare = unused;
                                if full_tx.send(filled).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                fail(e);
                                return;
                            }
                        }
                    }
                    if let Some(b) = spare {
                        self.pool.give(b);
                    }
                });
            }
            drop(full_tx);
            for _ in 0..workers.max(1) {
                let (full_rx, failed, fail, work) = (&full_rx, &failed, &fail, &work);
                s.spawn(move || {
                    while !failed.load(Ordering::Relaxed) {
                        let next = match full_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        let Ok(filled) = next else {
                            return;
                        };
                        if let Err(e) = work(filled) {
                            fail(e);
                            return;
                        }
                    }
                });
            }
        });
        let first = match first_error.into_inner() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads `req` into `buf`; or takes it from the mapping if it is all cached, or reads it
    /// straight into its target (then `buf` comes back unused).
    fn read<R: Request>(
        &self,
        mut req: R,
        mut buf: IoBuf,
    ) -> Result<(Filled<'_, R>, Option<IoBuf>)> {
        let i = req.file();
        let f: &VersionFile = &self.files[i];
        let span = req.span();
        let (at, len) = aligned(span);
        let filled = |req, landed| Filled {
            req,
            landed,
            at,
            file: f,
            pool: &self.pool,
        };
        if crate::sys::mapping::resident(f.map(), at, len).unwrap_or(false) {
            return Ok((filled(req, Landed::Mapping), Some(buf)));
        }
        let dio = self.direct[i]
            .as_ref()
            .filter(|_| !self.refused[i].load(Ordering::Relaxed));
        if let (Some(d), Some(target)) = (dio, req.target()) {
            if read_into(f, d, &self.refused[i], span, target)? {
                return Ok((filled(req, Landed::Target), Some(buf)));
            }
        }
        if let Err(e) = read_chunk(f, dio, &self.refused[i], at, &mut buf.bytes_mut()[..len]) {
            self.pool.give(buf);
            return Err(e);
        }
        Ok((filled(req, Landed::Buffer(buf)), None))
    }
}

/// Reads bytes `start..end` of `f` with direct I/O through `dio` straight into `target`, if
/// the span, the memory and the file allow it (direct I/O wants the file offset, the memory's
/// address and the length to be multiples of [`DIRECT_ALIGN`]): `false`, having read nothing
/// that counts, if they do not, or if the read is refused ([`read_direct`]).
fn read_into(
    f: &VersionFile,
    dio: &File,
    refused: &AtomicBool,
    (start, end): (u64, u64),
    target: &mut [u8],
) -> Result<bool> {
    let align = DIRECT_ALIGN as u64;
    let len = target.len() as u64;
    if start % align != 0
        || len % align != 0
        || end.checked_sub(start) != Some(len)
        || (target.as_ptr() as usize) % DIRECT_ALIGN != 0
        || end > f.size()
    {
        return Ok(false);
    }
    read_direct(f, dio, refused, start, target, len as usize)
}

/// Reads `buf.len()` bytes of `f` at `at` (aligned), with direct I/O through `dio` if given.
/// A file system that refuses a direct read (`EINVAL`) gets this and later reads through the
/// page cache (`refused` remembers). Bytes past the end of the file are left as they were.
fn read_chunk(
    f: &VersionFile,
    dio: Option<&File>,
    refused: &AtomicBool,
    at: u64,
    buf: &mut [u8],
) -> Result<()> {
    let size = f.size();
    let want = buf.len().min(size.saturating_sub(at) as usize);
    if let Some(d) = dio {
        let whole = want.next_multiple_of(DIRECT_ALIGN).min(buf.len());
        if read_direct(f, d, refused, at, &mut buf[..whole], want)? {
            return Ok(());
        }
    }
    f.file()
        .read_exact_at(&mut buf[..want], at)
        .map_err(|e| Error::io(f.path(), "read", e))
}

/// Reads `buf` (aligned) at `at` of `f` with direct I/O through `dio`: `true` once at least
/// `want` bytes are in, `false` if the read was refused and nothing read counts. A file
/// system that refuses direct I/O (`EINVAL`) is remembered in `refused`; memory that the
/// kernel cannot read into this way (`EFAULT`: a device's mapping, say) is left to the
/// caller's buffered path. A short read or any other error is an error.
fn read_direct(
    f: &VersionFile,
    dio: &File,
    refused: &AtomicBool,
    at: u64,
    buf: &mut [u8],
    want: usize,
) -> Result<bool> {
    match read_full(dio, at, buf) {
        Ok(n) if n >= want => Ok(true),
        Ok(n) => Err(Error::io(
            f.path(),
            "read",
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{n} bytes at offset {at}, expected {want}"),
            ),
        )),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!(
                "{}: direct read refused ({e}); reading through the page cache",
                f.path().display()
            );
            refused.store(true, Ordering::Relaxed);
            Ok(false)
        }
        Err(e) if e.raw_os_error() == Some(libc::EFAULT) => {
            tracing::debug!(
                "{}: no direct read into this memory ({e}); reading through a buffer",
                f.path().display()
            );
            Ok(false)
        }
        Err(e) => Err(Error::io(f.path(), "read", e)),
    }
}

/// Reads into `buf` at `at` until it is full or the file ends; the bytes read.
fn read_full(f: &File, at: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
