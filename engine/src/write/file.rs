//! Writing one version file: pages compressed in parallel, written by a dedicated thread that
//! pushes data to disk while the next batch compresses, then the index and footer, fsync, and
//! the atomic commit.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use rayon::prelude::*;

use super::staging::{send_to, write_chunks, Chunk, Sharing, Stager, ThreadStager};
use crate::error::{Error, Result};
use crate::format::{
    padding, stored_digest, Codec, Footer, Hash, Header, Identity, Index, Record, FORMAT_VERSION,
    HEADER_LEN, RECORD_ALIGN,
};
use crate::iobuf::IoBuf;
use crate::store;
use crate::vfs::VfsFile;

/// A server-side copy (`append_stored` where the file system copies on its server) asks the
/// kernel to start writeback after each this many bytes, so that the final fsync does not
/// find the whole copy still in memory. (Pages written through the page cache by the writer
/// thread are pushed every `staging::WRITE_BEHIND` bytes.)
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Where the file system copies on its server, runs of stored bytes at least this long are
/// copied there; shorter ones, and every run elsewhere, are gathered and written together.
/// (The compactor's runs are at most one read request, 1 MiB.)
const OFFLOADED_COPY_MIN: u64 = 256 << 10;

/// Runs of whole blocks at least this long (a whole read request of the compactor) are
/// shared with their source file where the file system can (`VfsFile::clone_from`: XFS,
/// btrfs); shorter ones are gathered and written. Each shared run cuts the writer's stream of
/// large direct writes, and XFS locks both files for each: 1 GiB compactions on XFS (a loop
/// device with direct I/O on a 2-core VM), against the build before sharing, alternated: a
/// chain of 3 versions at 0.1 % dirty took 1.23-1.26 s against 1.43-1.62 s; at 16 versions
/// and 1 % dirty (runs of unchanged pages too short) 1.79-1.80 s against 1.60-1.82 s. With
/// 64 KiB, those 16 versions took 2.03-2.45 s against 1.47-1.64 s.
const CLONE_MIN: u64 = 1 << 20;

/// Zeros, for the padding before an aligned record.
static ZEROS: [u8; RECORD_ALIGN as usize] = [0; RECORD_ALIGN as usize];

/// The file of a [`VersionWriter`], once the runs `append_stored` gathered are written
/// (their writer thread then gives the file back).
fn settled<'a>(
    file: &'a mut Option<Box<dyn VfsFile>>,
    pending: &mut Option<ThreadStager>,
    tmp: &Path,
) -> Result<&'a mut Box<dyn VfsFile>> {
    if let Some(st) = pending.take() {
        *file = Some(st.finish()?);
    }
    file.as_mut()
        .ok_or_else(|| Error::io(tmp, "write", std::io::Error::other("closed")))
}

/// One page to store.
pub(crate) struct PageIn<'a> {
    /// The page bytes (the last page of a region may be short).
    pub(crate) bytes: &'a [u8],
    /// blake3 of the page bytes.
    pub(crate) hash: Hash,
    /// Already-encoded bytes to store as they are (the compactor copies records without
    /// recompressing them); `bytes` is then the decoded page, used only for its length.
    pub(crate) stored: Option<(Codec, &'a [u8])>,
}

/// A version file being written under a temporary name. Dropping it without `commit`
/// removes the temporary file.
pub(crate) struct VersionWriter {
    file: Option<Box<dyn VfsFile>>,
    tmp: PathBuf,
    dst: PathBuf,
    header: Header,
    offset: u64,
    stored_raw: u64,
    data_hash: blake3::Hasher,
    /// Runs gathered by `append_stored` (for direct I/O), written by a thread that holds
    /// `file` meanwhile; written before anything else is.
    pending: Option<ThreadStager>,
    /// Whether the file system copies `append_stored`'s long runs on its server
    /// (`VfsFile::copy_offloaded`): asked by the first `append_stored` only, so that
    /// checkpoints, which never copy records, never ask.
    copy_offloaded: Option<bool>,
    /// What became of the runs `append_stored` asked the writer thread to share with their
    /// source file (`VfsFile::clone_from`): whether the file system refused, and how many
    /// bytes were shared.
    sharing: Arc<Sharing>,
}

/// A worker's compressor (for one level) and the buffer it compresses into.
struct Compressing {
    level: i32,
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<Compressing>> = const { RefCell::new(None) };
}

/// A page as it goes to disk: borrowed when stored as it is (no copy), owned when compressed.
type Encoded<'a> = (Codec, Cow<'a, [u8]>);

fn compress(level: i32, page: &[u8]) -> Result<Encoded<'_>, std::io::Error> {
    if level == 0 {
        return Ok((Codec::Raw, Cow::Borrowed(page)));
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|c| c.level) != Some(level) {
            *c = Some(Compressing {
                level,
                zstd: zstd::bulk::Compressor::new(level)?,
                scratch: Vec::new(),
            });
        }
        let comp = c
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no compressor"))?;
        // Into the worker's own buffer, then copied out at its exact size: the frames of
        // compressible pages are small, and a page-sized allocation per page (zstd's own
        // `compress`) cost a fresh 4 KiB of memory per page. A full version of 1 GiB of
        // mostly-zero pages (21 MB stored), four each alternated on a 2-core VM: 0.64-0.75 s
        // against 0.88-0.94 s.
        comp.scratch.clear();
        comp.scratch
            .reserve(zstd::zstd_safe::compress_bound(page.len()));
        let n = comp.zstd.compress_to_buffer(page, &mut comp.scratch)?;
        if n >= page.len() {
            Ok((Codec::Raw, Cow::Borrowed(page)))
        } else {
            Ok((Codec::Zstd, Cow::Owned(comp.scratch[..n].to_vec())))
        }
    })
}

/// Every `SAMPLE_STRIDE`-th page of a batch is compressed first, to decide whether the rest
/// is worth compressing.
const SAMPLE_STRIDE: usize = 8;

/// After this many batches in a row whose sample was not worth compressing, only every
/// `RESAMPLE_EVERY`-th batch is sampled (the others are stored raw): dense floating-point
/// state does not become compressible from one batch to the next, and the sample's zstd
/// cost is then saved.
const RAW_STREAK: u32 = 4;
/// See [`RAW_STREAK`].
const RESAMPLE_EVERY: u64 = 8;

/// Whether batches are worth compressing, as the samples of the last ones said. The engine
/// carries it from one version to the next: a delta of dense floating-point state starts
/// where the last version left off, sampling every [`RESAMPLE_EVERY`]-th batch, instead of
/// sampling its first [`RAW_STREAK`] batches again. (A 1 % delta of 1 GiB is about 21
/// batches: 6 sampled, 96 pages compressed for nothing, became 2 or 3.) State that turns
/// compressible is seen at the next sampled batch, at most `RESAMPLE_EVERY` batches on,
/// counted across versions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sampling {
    /// Sampled batches in a row that were not worth compressing.
    pub(crate) raw_streak: u32,
    /// Batches seen.
    pub(crate) batches: u64,
}

impl Sampling {
    /// Whether this batch is sampled.
    fn sample(&mut self) -> bool {
        self.batches += 1;
        self.raw_streak < RAW_STREAK || self.batches % RESAMPLE_EVERY == 0
    }

    /// What a sampled batch's sample said.
    fn saw(&mut self, worth: bool) {
        self.raw_streak = if worth { 0 } else { self.raw_streak + 1 };
    }
}

/// Encodes a batch. Already-encoded pages (the compactor's copies) pass as they are, and
/// with `sample` false (or `level` 0) the pages are stored raw. Else a sample of the pages
/// is compressed first; if it saves less than `min_saving` of its size, the whole batch is
/// stored raw, the sample included (zstd's CPU cost would buy too little; and a compressed
/// page among raw ones saves nothing on the disk, where the raw page after it is padded to a
/// block boundary, while it costs a decode at restore and breaks a run of raw pages that a
/// restore reads straight into memory). Pages never grow: a page that does not shrink is
/// stored raw. Returns the encodings and, for a sampled batch, whether it was worth
/// compressing.
fn compress_batch<'a>(
    level: i32,
    min_saving: f64,
    pages: &[PageIn<'a>],
    sample: bool,
) -> std::io::Result<(Vec<Encoded<'a>>, Option<bool>)> {
    if pages.iter().any(|p| p.stored.is_some()) || level == 0 || !sample {
        let out = pages
            .iter()
            .map(|p| match p.stored {
                Some((c, b)) => (c, Cow::Borrowed(b)),
                None => (Codec::Raw, Cow::Borrowed(p.bytes)),
            })
            .collect();
        return Ok((out, None));
    }
    let sampled: Vec<Encoded<'a>> = pages
        .par_iter()
        .step_by(SAMPLE_STRIDE)
        .map(|p| compress(level, p.bytes))
        .collect::<Result<_, _>>()?;
    let raw: usize = pages
        .iter()
        .step_by(SAMPLE_STRIDE)
        .map(|p| p.bytes.len())
        .sum();
    let packed: usize = sampled.iter().map(|(_, b)| b.len()).sum();
    let worth = (packed as f64) <= (raw as f64) * (1.0 - min_saving);
    let mut sampled = sampled.into_iter();
    let rest: Vec<Option<Encoded<'a>>> = pages
        .par_iter()
        .enumerate()
        .map(|(i, p)| -> std::io::Result<Option<Encoded<'a>>> {
            if i % SAMPLE_STRIDE == 0 {
                Ok(None)
            } else if worth {
                compress(level, p.bytes).map(Some)
            } else {
                Ok(Some((Codec::Raw, Cow::Borrowed(p.bytes))))
            }
        })
        .collect::<Result<_, _>>()?;
    let out = rest
        .into_iter()
        .zip(pages)
        .map(|(r, p)| match r {
            Some(x) => x,
            None => match sampled.next() {
                Some(x) if worth => x,
                _ => (Codec::Raw, Cow::Borrowed(p.bytes)),
            },
        })
        .collect();
    Ok((out, Some(worth)))
}

/// A batch of pages handed to [`VersionWriter::write_stream`]'s `emit`.
pub(crate) enum Batch<'a> {
    /// Pages, copied into the write buffers (compressed where the sample says it is worth
    /// it).
    Pages(&'a [PageIn<'a>]),
    /// Pages back to back from byte 0 of `buf`, `len` bytes in all, `page_size` bytes each
    /// (the last may be shorter), whose blake3 hashes are `hashes`. Stored raw, `buf` goes
    /// to the writer as it is: no copy into a staging buffer. (Where the sample says to
    /// compress, or the page size does not keep the records block-aligned, the pages are
    /// copied as [`Batch::Pages`] are, and `emit` gives `buf` back.)
    Whole {
        /// The pages' bytes (page-aligned memory).
        buf: IoBuf,
        /// Bytes of pages in `buf`.
        len: usize,
        /// Bytes of each page but the last.
        page_size: usize,
        /// blake3 of each page.
        hashes: &'a [Hash],
    },
}

/// The encoder's side of [`VersionWriter::write_stream`]: lays out the records and hands the
/// stored bytes to the [`Stager`].
struct Encoder<'s> {
    level: i32,
    min_saving: f64,
    sampling: &'s mut Sampling,
    /// Records of the pages emitted so far, in order.
    records: Vec<Record>,
    /// File offset of the next stored byte.
    offset: u64,
    /// Raw bytes of the pages emitted so far.
    stored_raw: u64,
}

impl Encoder<'_> {
    /// Encodes `pages` (compressing a sample first when `sample`) and stages their bytes.
    fn pages(
        &mut self,
        pages: &[PageIn<'_>],
        sample: bool,
        stager: &mut Stager,
        data_hash: &mut blake3::Hasher,
        send: &mut impl FnMut(Chunk) -> Result<()>,
        tmp: &Path,
    ) -> Result<()> {
        let (out, worth) = compress_batch(self.level, self.min_saving, pages, sample)
            .map_err(|e| Error::io(tmp, "compress", e))?;
        if let Some(w) = worth {
            self.sampling.saw(w);
        }
        // The data checksum covers each page's stored bytes through their digest.
        let digests: Vec<Hash> = pages
            .par_iter()
            .zip(out.par_iter())
            .map(|(p, (codec, bytes))| stored_digest(*codec, &p.hash, bytes))
            .collect();
        for d in &digests {
            data_hash.update(d);
        }
        for (p, (codec, bytes)) in pages.iter().zip(out) {
            // The raw pages of a batch stored raw start on block boundaries (one padding per
            // batch at most: they are whole blocks, back to back). The odd raw page among
            // compressed ones is not worth the padding.
            if worth != Some(true) {
                self.pad(codec, bytes.len() as u64, stager, send)?;
            }
            self.records.push(Record {
                hash: p.hash,
                offset: self.offset,
                stored_len: bytes.len() as u32,
                raw_len: p.bytes.len() as u32,
                codec,
            });
            self.offset += bytes.len() as u64;
            self.stored_raw += p.bytes.len() as u64;
            stager.push(&bytes, send)?;
        }
        Ok(())
    }

    /// Stages the padding a record of `len` bytes stored with `codec` needs at the offset.
    fn pad(
        &mut self,
        codec: Codec,
        len: u64,
        stager: &mut Stager,
        send: &mut impl FnMut(Chunk) -> Result<()>,
    ) -> Result<()> {
        let pad = padding(self.offset, codec, len);
        if pad > 0 {
            stager.push(&ZEROS[..pad as usize], send)?;
            self.offset += pad;
        }
        Ok(())
    }

    /// A [`Batch::Whole`]: the same records and bytes as [`Encoder::pages`] would lay out,
    /// with `buf` handed to the writer as it is when the batch is stored raw. Returns a
    /// buffer the writer is done with, if any.
    #[allow(clippy::too_many_arguments)]
    fn whole(
        &mut self,
        buf: IoBuf,
        len: usize,
        page_size: usize,
        hashes: &[Hash],
        stager: &mut Stager,
        data_hash: &mut blake3::Hasher,
        send: &mut impl FnMut(Chunk) -> Result<()>,
        tmp: &Path,
    ) -> Result<Option<IoBuf>> {
        let sample = self.sampling.sample();
        // The padding the first record gets, as `pages` would give it (none for a short
        // page); after it the buffer's byte 0 must sit on an aligned offset, and every page
        // but the last must be whole blocks, so that none of them is padded.
        let first = page_size.min(len) as u64;
        let aligned = page_size as u64 % RECORD_ALIGN == 0
            && (self.offset + padding(self.offset, Codec::Raw, first))
                % crate::vfs::DIRECT_ALIGN as u64
                == 0;
        if len.div_ceil(page_size.max(1)) != hashes.len() || (self.level != 0 && sample) || !aligned
        {
            let pages: Vec<PageIn<'_>> = buf.bytes()[..len.min(buf.len())]
                .chunks(page_size.max(1))
                .zip(hashes)
                .map(|(bytes, &hash)| PageIn {
                    bytes,
                    hash,
                    stored: None,
                })
                .collect();
            self.pages(&pages, sample, stager, data_hash, send, tmp)?;
            drop(pages);
            return Ok(Some(buf));
        }
        self.pad(Codec::Raw, first, stager, send)?;
        for (i, hash) in hashes.iter().enumerate() {
            let raw_len = page_size.min(len - i * page_size);
            // A raw page's digest is its hash (`stored_digest`).
            data_hash.update(hash);
            self.records.push(Record {
                hash: *hash,
                offset: self.offset,
                stored_len: raw_len as u32,
                raw_len: raw_len as u32,
                codec: Codec::Raw,
            });
            self.offset += raw_len as u64;
        }
        self.stored_raw += len as u64;
        stager.hand_over(buf, len, send)?;
        Ok(stager.spare())
    }
}

impl VersionWriter {
    /// Creates the temporary file (mode 0600) and writes the header.
    pub(crate) fn create(tmp: PathBuf, dst: PathBuf, mut header: Header) -> Result<VersionWriter> {
        // The data section this writer lays out is of this build's format.
        header.format_version = FORMAT_VERSION;
        let file = store::create_new(&tmp)?;
        // The writer exists from here on, so that its drop removes the temporary file even if
        // writing the header fails.
        let mut w = VersionWriter {
            file: Some(file),
            tmp,
            dst,
            header,
            offset: HEADER_LEN as u64,
            stored_raw: 0,
            data_hash: blake3::Hasher::new(),
            pending: None,
            copy_offloaded: None,
            sharing: Arc::default(),
        };
        let encoded = w.header.encode();
        if let Some(f) = w.file.as_mut() {
            f.write_all(&encoded)
                .map_err(|e| Error::io(&w.tmp, "write header", e))?;
        }
        Ok(w)
    }

    /// Bytes of page data written so far.
    pub(crate) fn data_bytes(&self) -> u64 {
        self.offset - HEADER_LEN as u64
    }

    /// Stored bytes appended by sharing the source file's blocks (`append_stored` on XFS or
    /// btrfs), not written: final once the appended runs are written (`sync_data`).
    pub(crate) fn shared_bytes(&self) -> u64 {
        self.sharing.shared.load(Ordering::Relaxed)
    }

    /// The temporary file being written.
    pub(crate) fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Streams pages into the data section. `produce` is called once and hands batches of
    /// pages to the `emit` callback it receives; each batch is sampled (`sampling`, updated)
    /// and compressed in parallel, and passed to a writer thread, so that producing (hashing)
    /// and compressing the next batch overlap with writing the previous one to disk. `emit`
    /// may give back a buffer the writer is done with, for the producer's next
    /// [`Batch::Whole`]. Returns the records of all pages, in the order they were emitted.
    pub(crate) fn write_stream<F>(
        &mut self,
        level: i32,
        min_saving: f64,
        sampling: &mut Sampling,
        direct: bool,
        produce: F,
    ) -> Result<Vec<Record>>
    where
        F: FnOnce(&mut (dyn FnMut(Batch<'_>) -> Result<Option<IoBuf>> + Send)) -> Result<()>,
    {
        let file = settled(&mut self.file, &mut self.pending, &self.tmp)?;
        let tmp = &self.tmp;
        let start = self.offset;
        let data_hash = &mut self.data_hash;
        let mut enc = Encoder {
            level,
            min_saving,
            sampling,
            records: Vec::new(),
            offset: start,
            stored_raw: 0,
        };
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = mpsc::sync_channel::<Chunk>(2);
            let (back_tx, back_rx) = mpsc::channel();
            let mut stager = Stager::new(tmp, start, direct, back_rx)?;
            let writer =
                s.spawn(move || write_chunks(&mut **file, rx, &back_tx, start, tmp, "write pages"));
            let mut send = |chunk: Chunk| send_to(&tx, tmp, "write pages", chunk);
            let mut emit = |batch: Batch<'_>| -> Result<Option<IoBuf>> {
                let spare = match batch {
                    Batch::Pages(pages) => {
                        let sample = enc.sampling.sample();
                        enc.pages(pages, sample, &mut stager, data_hash, &mut send, tmp)?;
                        None
                    }
                    Batch::Whole {
                        buf,
                        len,
                        page_size,
                        hashes,
                    } => enc.whole(
                        buf,
                        len,
                        page_size,
                        hashes,
                        &mut stager,
                        data_hash,
                        &mut send,
                        tmp,
                    )?,
                };
                crate::fault::point("mid-write");
                // Without direct I/O, each batch goes to the writer at once (a sparse delta
                // is a few small batches); with it, buffers go full, in large requests.
                if !direct {
                    stager.cut(&mut send)?;
                }
                Ok(spare)
            };
            let mut produced = produce(&mut emit);
            if produced.is_ok() {
                produced = stager.cut(&mut send);
            }
            drop(stager);
            drop(tx);
            let written = writer.join().map_err(|_| {
                Error::io(
                    tmp,
                    "write pages",
                    std::io::Error::other("writer thread panicked"),
                )
            })?;
            // The writer's own error explains a failed send better than the send does.
            written?;
            produced
        })?;
        self.offset = enc.offset;
        self.stored_raw += enc.stored_raw;
        Ok(enc.records)
    }

    /// Appends records `recs` of `src` as they are stored (no decoding, no recompression).
    /// The records lie back to back in `src`; `stored` holds their bytes, read by the caller,
    /// and `digests` their digests for the data checksum (the page hash of a raw page,
    /// blake3 of the stored bytes of a compressed one). The bytes are gathered with the runs
    /// around them into aligned buffers and written with direct I/O by a thread of their own;
    /// where the file system shares blocks between files (`VfsFile::clone_from`: XFS, btrfs),
    /// the whole blocks of runs of at least [`CLONE_MIN`] that start on a block boundary are
    /// shared instead (a reflink: nothing is written); where it copies on its server
    /// (`VfsFile::copy_offloaded`), runs of at least [`OFFLOADED_COPY_MIN`] are copied there
    /// (`copy_file_range`). A run that starts with a raw record of whole blocks on a block
    /// boundary starts on one here too (zero padding before it). Returns the new file's
    /// records for them, in order. The caller verifies the pages.
    ///
    /// On a local file system without shared blocks the kernel's copy goes through the page
    /// cache: 1 GiB depth-16 compactions on ext4, alternated in one session, took 0.92-1.34 s
    /// (median 1.23 s) with it and 0.93-1.12 s (median 1.05 s) gathered with direct I/O.
    pub(crate) fn append_stored(
        &mut self,
        src: &crate::read::VersionFile,
        recs: &[Record],
        stored: &[u8],
        digests: &[Hash],
    ) -> Result<Vec<Record>> {
        let Some(first) = recs.first() else {
            return Ok(Vec::new());
        };
        let start = first.offset;
        let len: u64 = recs.iter().map(|r| r.stored_len as u64).sum();
        let back_to_back = recs
            .windows(2)
            .all(|w| w[0].offset + w[0].stored_len as u64 == w[1].offset);
        if !back_to_back || stored.len() as u64 != len || digests.len() != recs.len() {
            return Err(Error::io(
                &self.tmp,
                "copy pages",
                std::io::Error::other(format!(
                    "{} records of {} to append, not back to back with their {} bytes",
                    recs.len(),
                    src.path().display(),
                    stored.len()
                )),
            ));
        }
        // A run that starts with a raw record of whole blocks on a block boundary keeps that
        // alignment here (and so do the block-aligned records after it in the run).
        let pad = match start % RECORD_ALIGN {
            0 => padding(self.offset, first.codec, first.stored_len as u64),
            _ => 0,
        };
        let offloaded = *self
            .copy_offloaded
            .get_or_insert_with(|| self.file.as_ref().is_some_and(|f| f.copy_offloaded()));
        if offloaded && len >= OFFLOADED_COPY_MIN {
            let file = settled(&mut self.file, &mut self.pending, &self.tmp)?;
            file.write_all(&ZEROS[..pad as usize])
                .map_err(|e| Error::io(&self.tmp, "copy pages", e))?;
            // In steps, each pushed to the disk while the next is copied (write-behind), so
            // that the final fsync does not find the whole copy still in memory. Nothing is
            // pending now: the file ends at `base`.
            let base = self.offset + pad;
            let mut done = 0;
            while done < len {
                let n = (len - done).min(WRITEBACK_EVERY);
                file.copy_from(src.file(), start + done, n)
                    .map_err(|e| Error::io(&self.tmp, "copy pages", e))?;
                let _ = file.start_writeback(base + done, n);
                done += n;
            }
        } else {
            // Gathered with the runs around it into large writes (direct I/O where the file
            // system takes it), not a system call per run; or, for the whole blocks of a
            // block-aligned run, shared with `src` where the file system can (XFS, btrfs).
            // Everything before it is written or gathered too: the gathering starts at
            // `self.offset`, and the writer thread keeps the order.
            let st = match (&mut self.pending, self.file.take()) {
                (Some(st), _) => st,
                (pending, Some(file)) => {
                    pending.insert(ThreadStager::new(&self.tmp, self.offset, file)?)
                }
                (None, None) => {
                    return Err(Error::io(
                        &self.tmp,
                        "copy pages",
                        std::io::Error::other("closed"),
                    ))
                }
            };
            st.push(&ZEROS[..pad as usize])?;
            // Of the run, the whole blocks that may be shared with the source file.
            let whole = len / RECORD_ALIGN * RECORD_ALIGN;
            let mut done = 0;
            if start % RECORD_ALIGN == 0
                && (self.offset + pad) % RECORD_ALIGN == 0
                && whole >= CLONE_MIN
                && !self.sharing.refused.load(Ordering::Relaxed)
            {
                let dup = src
                    .file()
                    .try_clone()
                    .map_err(|e| Error::io(src.path(), "share pages (dup)", e))?;
                st.share(dup, start, whole, &self.sharing)?;
                done = whole as usize;
            }
            st.push(&stored[done..])?;
        }
        let out = recs
            .iter()
            .map(|r| Record {
                offset: self.offset + pad + (r.offset - start),
                ..*r
            })
            .collect();
        self.stored_raw += recs.iter().map(|r| r.raw_len as u64).sum::<u64>();
        self.offset += pad + len;
        for d in digests {
            self.data_hash.update(d);
        }
        Ok(out)
    }

    /// fsyncs the data written so far (so that the fsync at commit, which may run under the
    /// commit lock, only has the index left to flush).
    pub(crate) fn sync_data(&mut self) -> Result<()> {
        settled(&mut self.file, &mut self.pending, &self.tmp)?
            .sync_data()
            .map_err(|e| Error::io(&self.tmp, "fdatasync", e))
    }

    /// Writes the index and footer, fsyncs, and renames the file to its final name without
    /// replacing anything, then fsyncs the directory. Returns the new file's identity.
    pub(crate) fn commit(self, index: &Index) -> Result<Identity> {
        self.finish(index, false)
    }

    /// Like [`commit`](Self::commit), but atomically replaces an existing file of that name
    /// (the compactor's new revision of a version, which keeps its file id and records).
    pub(crate) fn commit_replacing(self, index: &Index) -> Result<Identity> {
        self.finish(index, true)
    }

    fn finish(mut self, index: &Index, replace: bool) -> Result<Identity> {
        settled(&mut self.file, &mut self.pending, &self.tmp)?;
        let mut file = self
            .file
            .take()
            .ok_or_else(|| Error::io(&self.tmp, "commit", std::io::Error::other("closed")))?;
        // Stream the index into the file through a buffer, each 64 KiB of which is hashed at
        // once (blake3 hashes large inputs 16 chunks of 1 KiB at a time; the index's entries,
        // fed one by one, would be hashed a block at a time). Below glibc's threshold for a
        // mapping of its own (128 KiB): freeing a larger block raises that threshold for the
        // whole process (`iobuf`).
        let index_len = index.encoded_len() as u64;
        let mut bw = std::io::BufWriter::with_capacity(
            64 << 10,
            HashingWriter {
                inner: &mut file,
                hasher: blake3::Hasher::new(),
            },
        );
        index
            .write_to(&mut bw)
            .and_then(|()| bw.flush())
            .map_err(|e| Error::io(&self.tmp, "write index", e))?;
        let hw = bw
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, "write index", e.into_error()))?;
        let index_checksum = *hw.hasher.finalize().as_bytes();
        drop(hw);
        let footer = Footer {
            data_offset: HEADER_LEN as u64,
            data_len: self.offset - HEADER_LEN as u64,
            index_offset: self.offset,
            index_len,
            file_id: self.header.file_id,
            index_checksum,
            stored_raw_bytes: self.stored_raw,
            data_checksum: *self.data_hash.finalize().as_bytes(),
        };
        file.write_all(&footer.encode())
            .map_err(|e| Error::io(&self.tmp, "write footer", e))?;
        file.sync_all()
            .map_err(|e| Error::io(&self.tmp, "fsync", e))?;
        drop(file);
        crate::fault::point("before-rename");
        if replace {
            crate::vfs::current()
                .rename(&self.tmp, &self.dst)
                .map_err(|e| Error::io(&self.dst, "replace (rename)", e))?;
            store::sync_dir(self.dst.parent().unwrap_or(Path::new(".")))?;
        } else {
            store::commit_rename(&self.tmp, &self.dst)?;
        }
        // Committed: nothing to clean up any more.
        self.tmp = PathBuf::new();
        Ok(Identity {
            file_id: self.header.file_id,
            index_checksum,
        })
    }
}

/// Writes through to `inner` and hashes what passes.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Drop for VersionWriter {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = crate::vfs::current().remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes that do not compress (xorshift from `seed`).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn pages(data: &[u8]) -> Vec<PageIn<'_>> {
        data.chunks(4096)
            .map(|p| PageIn {
                bytes: p,
                hash: [0; 32],
                stored: None,
            })
            .collect()
    }

    /// Writes `batches` (each: whole or not, the pages' bytes) through `write_stream` at
    /// compression level `level` into a new file in `dir`; returns its records and bytes.
    fn written(
        dir: &Path,
        name: &str,
        level: i32,
        direct: bool,
        batches: &[(bool, &[u8])],
    ) -> (Vec<Record>, Vec<u8>) {
        let header = Header {
            format_version: FORMAT_VERSION,
            file_id: [7; 16],
            version: 1,
            parent: None,
            page_size: 4096,
            depth: 0,
            flags: 0,
            tracking: crate::format::TrackingKind::Hash,
            compression_level: 1,
            created_unix_nanos: 42,
            name: "job".into(),
        };
        let tmp = dir.join(name);
        let mut w = VersionWriter::create(tmp.clone(), dir.join("unused"), header).unwrap();
        let mut sampling = Sampling::default();
        let records = w
            .write_stream(level, 0.125, &mut sampling, direct, |emit| {
                for &(whole, bytes) in batches {
                    let hashes: Vec<Hash> =
                        bytes.chunks(4096).map(crate::hash::page_hash).collect();
                    let mut buf = IoBuf::new(bytes.len()).unwrap();
                    buf.bytes_mut()[..bytes.len()].copy_from_slice(bytes);
                    if whole {
                        emit(Batch::Whole {
                            buf,
                            len: bytes.len(),
                            page_size: 4096,
                            hashes: &hashes,
                        })?;
                    } else {
                        let pages: Vec<PageIn<'_>> = bytes
                            .chunks(4096)
                            .zip(&hashes)
                            .map(|(bytes, &hash)| PageIn {
                                bytes,
                                hash,
                                stored: None,
                            })
                            .collect();
                        emit(Batch::Pages(&pages))?;
                    }
                }
                Ok(())
            })
            .unwrap();
        let bytes = std::fs::read(&tmp).unwrap();
        (records, bytes)
    }

    /// A whole batch lays out the same records and writes the same bytes as the same pages
    /// emitted one by one: after a start off the block boundary (a page of 100 bytes), with
    /// a short last page, with direct I/O or without, stored raw as it is (level 0) or
    /// sampled for compression first (level 1: copied like pages, the sample not worth it).
    #[test]
    fn whole_batches_write_what_page_batches_write() {
        let tmp = tempfile::Builder::new()
            .prefix("ckpt-whole-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let noise = noise(4096 * 40 + 700, 0x2545_f491_4f6c_dd1d);
        let (odd, spans) = noise.split_at(100);
        let (a, b) = spans.split_at(4096 * 24);
        for (level, direct) in [(0, false), (0, true), (1, false), (1, true)] {
            let layout = |whole: bool| {
                // Whole batches of one short page (a small region's) among them, the first
                // off the block boundary.
                let batches = [
                    (false, odd),
                    (whole, odd),
                    (whole, a),
                    (whole, odd),
                    (whole, b),
                ];
                let name = format!("{whole}-{level}-{direct}");
                written(&dir, &name, level, direct, &batches)
            };
            let (pages, whole) = (layout(false), layout(true));
            assert_eq!(pages.0.len(), 1 + 1 + 24 + 1 + 17);
            assert_eq!(whole.0, pages.0, "records, level {level}, direct {direct}");
            assert!(whole.1 == pages.1, "bytes, level {level}, direct {direct}");
            // The raw records of whole blocks start on block boundaries, each holds its page.
            let stored = [odd]
                .into_iter()
                .chain(a.chunks(4096))
                .chain([odd])
                .chain(b.chunks(4096));
            for (r, page) in whole.0[1..].iter().zip(stored) {
                assert_eq!(r.codec, Codec::Raw);
                assert!(r.offset % RECORD_ALIGN == 0 || page.len() % 4096 != 0);
                let at = r.offset as usize;
                assert_eq!(&whole.1[at..at + page.len()], page);
                assert_eq!(r.hash, crate::hash::page_hash(page));
            }
        }
    }

    /// Incompressible batches stop being sampled after a streak (all but every
    /// `RESAMPLE_EVERY`-th stored raw); one compressible sample brings sampling back.
    #[test]
    fn sampling_stops_on_incompressible_batches_and_comes_back() {
        let mut s = Sampling::default();
        for _ in 0..RAW_STREAK {
            assert!(s.sample());
            s.saw(false);
        }
        let sampled: Vec<bool> = (0..2 * RESAMPLE_EVERY).map(|_| s.sample()).collect();
        assert_eq!(sampled.iter().filter(|&&x| x).count(), 2, "{sampled:?}");
        s.saw(true);
        assert!((0..RESAMPLE_EVERY).all(|_| s.sample()));
    }

    /// A batch that is not sampled is stored raw; a sampled compressible one is compressed;
    /// random bytes are not worth it.
    #[test]
    fn compress_batch_follows_its_sample() {
        let zeros = vec![0u8; 4096 * 16];
        let (out, worth) = compress_batch(1, 0.125, &pages(&zeros), true).unwrap();
        assert_eq!(worth, Some(true));
        assert!(out.iter().all(|(c, _)| *c == Codec::Zstd));
        let (out, worth) = compress_batch(1, 0.125, &pages(&zeros), false).unwrap();
        assert_eq!(worth, None);
        assert!(out.iter().all(|(c, b)| *c == Codec::Raw && b.len() == 4096));
        let noise = noise(4096 * 16, 0x9e37_79b9_7f4a_7c15);
        let (_, worth) = compress_batch(1, 0.125, &pages(&noise), true).unwrap();
        assert_eq!(worth, Some(false));
        // Pages that compress a little (a tenth), below the saving asked for: the batch is
        // stored raw, its sampled pages too.
        let mut slight = noise.clone();
        for page in slight.chunks_mut(4096) {
            page[..400].fill(0);
        }
        let (out, worth) = compress_batch(1, 0.125, &pages(&slight), true).unwrap();
        assert_eq!(worth, Some(false));
        assert!(
            out.iter()
                .zip(slight.chunks(4096))
                .all(|((c, b), page)| *c == Codec::Raw && b.as_ref() == page),
            "a sampled page of a batch not worth compressing was stored compressed"
        );
    }
}
