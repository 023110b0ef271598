//! Staging buffers between the encoder and the writer thread: page-aligned ([`IoBuf`]),
//! reused within a version and kept between versions, laid out so that a buffer's byte `i`
//! is written at a file offset congruent to `i` modulo [`DIRECT_ALIGN`]. Whole aligned
//! blocks can then go to the disk with direct I/O (`O_DIRECT`), straight from the buffer,
//! without the kernel's copy into the page cache (a full version of 1 GiB: that copy was a
//! third of the writer's CPU time); the unaligned ends (the header's block, the last block)
//! go through the page cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::iobuf::{give_staging, give_write_buffers, take_staging, IoBuf, STAGING_BYTES};
use crate::vfs::{copy_through_memory, VfsFile, DIRECT_ALIGN};

/// Bytes to append to the file.
pub(crate) enum Chunk {
    /// Bytes `from..to` of `buf`, whose byte 0 sits at an aligned file offset.
    Staged {
        /// The staging buffer.
        buf: IoBuf,
        /// First byte to write.
        from: usize,
        /// End of the bytes to write.
        to: usize,
        /// Whole aligned blocks go with direct I/O (else all through the page cache).
        direct: bool,
    },
    /// `len` bytes of `src` from `offset`, to be shared with it (a reflink) where the file
    /// system can, else copied. The file's length, `offset` and `len` are block-aligned.
    Share {
        /// The source file.
        src: std::fs::File,
        /// Where the bytes start in it.
        offset: u64,
        /// How many.
        len: u64,
        /// What became of the sharing, told to the encoder's side.
        sharing: Arc<Sharing>,
    },
}

/// What became of a writer's [`Chunk::Share`]s.
#[derive(Debug, Default)]
pub(crate) struct Sharing {
    /// The file system refused to share blocks: the bytes were copied, and no more chunks
    /// should ask.
    pub(crate) refused: AtomicBool,
    /// Bytes shared.
    pub(crate) shared: AtomicU64,
}

impl Chunk {
    /// The bytes to append.
    pub(crate) fn len(&self) -> usize {
        match self {
            Chunk::Staged { from, to, .. } => to - from,
            Chunk::Share { len, .. } => *len as usize,
        }
    }

    /// Appends the chunk to `file`: whole aligned blocks with direct I/O when the chunk asks
    /// for it and the file takes it, the rest through the page cache. Returns whether anything
    /// went through the page cache (the caller then asks for write-behind), and the staging
    /// buffer for reuse.
    pub(crate) fn write_to(self, file: &mut dyn VfsFile) -> std::io::Result<(bool, Option<IoBuf>)> {
        let (buf, from, to) = match self {
            Chunk::Staged {
                buf,
                from,
                to,
                direct: false,
            } => {
                file.write_all(&buf.bytes()[from..to])?;
                return Ok((true, Some(buf)));
            }
            Chunk::Share {
                src,
                offset,
                len,
                sharing,
            } => {
                if !sharing.refused.load(Ordering::Relaxed) && file.clone_from(&src, offset, len)? {
                    sharing.shared.fetch_add(len, Ordering::Relaxed);
                    return Ok((false, None));
                }
                sharing.refused.store(true, Ordering::Relaxed);
                copy_through_memory(file, &src, offset, len)?;
                return Ok((true, None));
            }
            Chunk::Staged { buf, from, to, .. } => (buf, from, to),
        };
        let bytes = buf.bytes();
        let body_start = from.next_multiple_of(DIRECT_ALIGN).min(to);
        let body_end = (to / DIRECT_ALIGN * DIRECT_ALIGN).max(body_start);
        let mut cached = false;
        if from < body_start {
            file.write_all(&bytes[from..body_start])?;
            cached = true;
        }
        if body_start < body_end {
            let body = &bytes[body_start..body_end];
            if !file.write_direct(body)? {
                file.write_all(body)?;
                cached = true;
            }
        }
        if body_end < to {
            file.write_all(&bytes[body_end..to])?;
            cached = true;
        }
        Ok((cached, Some(buf)))
    }
}

/// The encoder's side: gathers the stored bytes into staging buffers and hands them over as
/// chunks, each buffer when it is full and whatever is gathered at each [`cut`](Self::cut).
/// Its buffers, and those the writer gives back, are kept for the next version when it is
/// dropped.
pub(crate) struct Stager {
    /// The file written (for errors).
    path: PathBuf,
    /// Whole aligned blocks go with direct I/O.
    direct: bool,
    /// The buffer being filled.
    cur: Option<IoBuf>,
    /// Where the current chunk starts in `cur`.
    from: usize,
    /// Bytes of `cur` filled.
    fill: usize,
    /// Buffers the writer gave back.
    returned: Receiver<IoBuf>,
    spare: Vec<IoBuf>,
}

impl Stager {
    /// A stager for the file `path` whose first byte goes to file offset `pos`; `direct`
    /// asks for direct I/O. `returned` brings back the buffers of written chunks for reuse.
    pub(crate) fn new(
        path: &Path,
        pos: u64,
        direct: bool,
        returned: Receiver<IoBuf>,
    ) -> Result<Stager> {
        let at = (pos % DIRECT_ALIGN as u64) as usize;
        let cur = take_staging().map_err(|e| Error::io(path, "allocate a write buffer", e))?;
        Ok(Stager {
            path: path.to_path_buf(),
            direct,
            cur: Some(cur),
            from: at,
            fill: at,
            returned,
            spare: Vec::new(),
        })
    }

    /// Appends `bytes`, handing over each staging buffer that fills up.
    pub(crate) fn push(
        &mut self,
        mut bytes: &[u8],
        send: &mut impl FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        while !bytes.is_empty() {
            let room = STAGING_BYTES - self.fill;
            let n = room.min(bytes.len());
            let cur = match self.cur.take() {
                Some(c) => c,
                None => self.next_buffer()?,
            };
            let cur = self.cur.insert(cur);
            cur.bytes_mut()[self.fill..self.fill + n].copy_from_slice(&bytes[..n]);
            self.fill += n;
            bytes = &bytes[n..];
            if self.fill == STAGING_BYTES {
                self.cut(send)?;
            }
        }
        Ok(())
    }

    /// Hands over what is gathered, if anything; the next byte starts a new buffer (at the
    /// same offset modulo the alignment).
    pub(crate) fn cut(&mut self, send: &mut impl FnMut(Chunk) -> Result<()>) -> Result<()> {
        if self.fill == self.from {
            return Ok(());
        }
        let Some(mut buf) = self.cur.take() else {
            return Ok(());
        };
        buf.filled_to(self.fill);
        let chunk = Chunk::Staged {
            buf,
            from: self.from,
            to: self.fill,
            direct: self.direct,
        };
        let at = self.fill % DIRECT_ALIGN;
        self.from = at;
        self.fill = at;
        send(chunk)
    }

    /// Appends the first `len` bytes of `buf` as they are, after what is gathered: `buf`
    /// becomes a chunk of its own, with no copy. The stream must be at an aligned offset
    /// (`buf`'s byte 0 goes to one).
    pub(crate) fn hand_over(
        &mut self,
        mut buf: IoBuf,
        len: usize,
        send: &mut impl FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        if self.fill % DIRECT_ALIGN != 0 || len > buf.len() {
            return Err(Error::io(
                &self.path,
                "write pages",
                std::io::Error::other("a whole buffer handed over off its alignment"),
            ));
        }
        self.cut(send)?;
        buf.filled_to(len);
        send(Chunk::Staged {
            buf,
            from: 0,
            to: len,
            direct: self.direct,
        })?;
        // The next byte goes where the buffer's end left the file.
        let at = len % DIRECT_ALIGN;
        self.from = at;
        self.fill = at;
        Ok(())
    }

    /// A buffer the writer gave back, if any (for a producer's next whole batch).
    pub(crate) fn spare(&mut self) -> Option<IoBuf> {
        self.spare.extend(self.returned.try_iter());
        self.spare.pop()
    }

    /// A buffer the writer gave back, else a kept or new one. (Buffers handed over whole
    /// may be of any size: those shorter than a staging buffer are dropped here.)
    fn next_buffer(&mut self) -> Result<IoBuf> {
        self.spare.extend(self.returned.try_iter());
        while let Some(b) = self.spare.pop() {
            if b.len() >= STAGING_BYTES {
                return Ok(b);
            }
        }
        take_staging().map_err(|e| Error::io(&self.path, "allocate a write buffer", e))
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        self.spare.extend(self.returned.try_iter());
        if let Some(mut cur) = self.cur.take() {
            cur.filled_to(self.fill);
            self.spare.push(cur);
        }
        give_write_buffers(std::mem::take(&mut self.spare));
    }
}

/// A [`Stager`] with its own writer thread, which holds the file meanwhile (the compactor's
/// gathered runs): staging the next buffer overlaps with writing the last, and what
/// goes through the page cache is pushed to the disk as it goes (write-behind).
pub(crate) struct ThreadStager {
    stager: Stager,
    tx: std::sync::mpsc::SyncSender<Chunk>,
    writer: std::thread::JoinHandle<(Box<dyn VfsFile>, Result<()>)>,
}

impl ThreadStager {
    /// Takes `file`, for `path`, whose next byte goes to file offset `pos`, and stages for
    /// direct I/O.
    pub(crate) fn new(path: &Path, pos: u64, mut file: Box<dyn VfsFile>) -> Result<ThreadStager> {
        let (back, returned) = std::sync::mpsc::channel();
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(2);
        let stager = Stager::new(path, pos, true, returned)?;
        let at = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("ckpt-writer".into())
            .spawn(move || {
                let written = write_chunks(&mut *file, rx, &back, pos, &at, "copy pages");
                (file, written)
            })
            .map_err(|e| Error::io(path, "start a writer thread", e))?;
        Ok(ThreadStager { stager, tx, writer })
    }

    /// Appends `bytes`, handing each buffer that fills up to the writer thread.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<()> {
        let (tx, path) = (&self.tx, self.stager.path.clone());
        self.stager
            .push(bytes, &mut |c| send_to(tx, &path, "copy pages", c))
    }

    /// Appends `len` bytes of `src` from `offset` by sharing its blocks, or, where the file
    /// system refuses, by copying them: after what is staged, in order. The file's end (what
    /// is staged included), `offset` and `len` must be multiples of [`DIRECT_ALIGN`].
    pub(crate) fn share(
        &mut self,
        src: std::fs::File,
        offset: u64,
        len: u64,
        sharing: &Arc<Sharing>,
    ) -> Result<()> {
        let (tx, path) = (&self.tx, self.stager.path.clone());
        let mut send = |c| send_to(tx, &path, "share pages", c);
        self.stager.cut(&mut send)?;
        send(Chunk::Share {
            src,
            offset,
            len,
            sharing: Arc::clone(sharing),
        })
    }

    /// Writes what is staged, waits for the writer thread, and gives the file back, or the
    /// first error writing met.
    pub(crate) fn finish(mut self) -> Result<Box<dyn VfsFile>> {
        let (tx, path) = (&self.tx, self.stager.path.clone());
        let cut = self
            .stager
            .cut(&mut |c| send_to(tx, &path, "copy pages", c));
        drop(self.tx);
        let (file, written) = self.writer.join().map_err(|_| {
            Error::io(
                &path,
                "copy pages",
                std::io::Error::other("writer thread panicked"),
            )
        })?;
        // The writer's own error explains a failed send better than the send does.
        written?;
        cut?;
        Ok(file)
    }
}

/// Hands chunk `c` to the writer thread; `what` names the step for the error if it stopped.
pub(crate) fn send_to(
    tx: &std::sync::mpsc::SyncSender<Chunk>,
    path: &Path,
    what: &'static str,
    c: Chunk,
) -> Result<()> {
    tx.send(c)
        .map_err(|_| Error::io(path, what, std::io::Error::other("writer thread stopped")))
}

/// Bytes written through the page cache after which the writer thread asks the kernel to
/// start writing them back. Small, so that the commit's fsync finds little left to write: 1 GiB
/// uffd deltas on a 2-core VM (ext4 on virtio), 15 versions each, four alternated runs: at 1 %
/// dirty (11 MB) the commit step took 2.2-2.9 ms (mean per run) with 1 MiB, 2.6-3.1 ms with
/// 2 MiB, 4.0-5.0 ms with 8 MiB, and the whole delta 10.3-12.7 ms against 11.2-16.0 ms with
/// 8 MiB; at 5 % (55 MB), 59-74 ms against 62-99 ms.
const WRITE_BEHIND: u64 = 1 << 20;

/// The writer thread's loop: appends every chunk received to `file` (whose length is `pos`),
/// gives each staging buffer back through `back` for reuse, and asks the kernel to start
/// writing back what went through the page cache every [`WRITE_BEHIND`] bytes, so that
/// the disk works while the next chunks are staged instead of all at the final fsync. Stops
/// at the first write error, which it returns (`what` names the step).
pub(crate) fn write_chunks(
    file: &mut dyn VfsFile,
    chunks: Receiver<Chunk>,
    back: &std::sync::mpsc::Sender<IoBuf>,
    pos: u64,
    path: &Path,
    what: &'static str,
) -> Result<()> {
    let (mut pos, mut pushed) = (pos, pos);
    for c in chunks {
        let n = c.len() as u64;
        let (cached, buf) = c.write_to(file).map_err(|e| Error::io(path, what, e))?;
        // The encoder reuses the buffer (it may have stopped: then it is kept for the next
        // version).
        if let Some(buf) = buf {
            if let Err(std::sync::mpsc::SendError(buf)) = back.send(buf) {
                give_staging(buf);
            }
        }
        pos += n;
        if !cached {
            pushed = pos;
        } else if pos - pushed >= WRITE_BEHIND {
            // Best effort: a failure here only loses the overlap, and the final fsync
            // reports real I/O errors.
            let _ = file.start_writeback(pushed, pos - pushed);
            pushed = pos;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that records which bytes came through direct I/O.
    #[derive(Default)]
    struct Log {
        data: Vec<u8>,
        direct: Vec<(usize, usize)>,
    }
    impl std::io::Write for Log {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl VfsFile for Log {
        fn sync_data(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn sync_all(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn write_direct(&mut self, buf: &[u8]) -> std::io::Result<bool> {
            assert_eq!(buf.as_ptr() as usize % DIRECT_ALIGN, 0, "memory unaligned");
            assert_eq!(buf.len() % DIRECT_ALIGN, 0, "length unaligned");
            assert_eq!(self.data.len() % DIRECT_ALIGN, 0, "file offset unaligned");
            self.direct.push((self.data.len(), buf.len()));
            self.data.extend_from_slice(buf);
            Ok(true)
        }
    }

    /// Whatever the start offset and the cuts, the file receives exactly the pushed bytes;
    /// with direct I/O asked, every direct write is aligned in memory, length and file
    /// offset, and without, there is none.
    #[test]
    fn chunks_reassemble_the_stream_and_direct_writes_are_aligned() {
        for (start, direct) in [0u64, 100, 4095, 4096, 12_345]
            .into_iter()
            .flat_map(|s| [(s, true), (s, false)])
        {
            let (back_tx, back_rx) = std::sync::mpsc::channel();
            let mut st = Stager::new(Path::new("test"), start, direct, back_rx).unwrap();
            let mut file = Log {
                data: vec![0xee; start as usize],
                ..Log::default()
            };
            let mut want = file.data.clone();
            let mut send = |c: Chunk| -> Result<()> {
                let (_, buf) = c.write_to(&mut file).unwrap();
                back_tx.send(buf.unwrap()).unwrap();
                Ok(())
            };
            let mut x = start as u32;
            for (i, len) in [10usize, 5000, STAGING_BYTES + 3, 4096, 1, 3 * STAGING_BYTES]
                .into_iter()
                .enumerate()
            {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        (x >> 16) as u8
                    })
                    .collect();
                want.extend_from_slice(&bytes);
                st.push(&bytes, &mut send).unwrap();
                if i % 2 == 1 {
                    st.cut(&mut send).unwrap();
                }
            }
            st.cut(&mut send).unwrap();
            assert!(
                file.data == want,
                "start {start}, direct {direct}: the file differs from the stream"
            );
            let direct_bytes: usize = file.direct.iter().map(|d| d.1).sum();
            let total = want.len() - start as usize;
            if direct {
                // Only the partial blocks at each cut (4 of them) and at the start go through
                // the page cache.
                assert!(
                    direct_bytes + 9 * DIRECT_ALIGN >= total,
                    "start {start}: only {direct_bytes} of {total} bytes went direct"
                );
            } else {
                assert_eq!(
                    direct_bytes, 0,
                    "start {start}: direct writes not asked for"
                );
            }
        }
    }
}
