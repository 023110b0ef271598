//! Rewriting one kept version as a compatible revision that references only kept files.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::format::{
    stored_digest, Extent, FileEntry, Hash, Header, Identity, Index, Record, RegionEntry,
    FLAG_COMPACTED, FLAG_FULL,
};
use crate::read::parallel::{Filled, Reader, Request, GAP, MAX_CHUNK};
use crate::read::{read_header_footer, Version};
use crate::store::Store;
use crate::write::file::VersionWriter;
use crate::write::index::push;

/// Page contents (hash, raw length) → a record of a kept file rewritten earlier in the run.
pub(super) type Pool = HashMap<(Hash, u32), (Rc<str>, u64)>;

/// What [`rewrite_one`] did.
pub(super) struct Rewritten {
    /// Bytes of the new revision.
    pub written: u64,
    /// Bytes of the old revision.
    pub freed: u64,
    /// Stored bytes copied from earlier files' records.
    pub copied: u64,
    /// Of those, bytes whose blocks the new revision shares with the file they came from.
    pub shared: u64,
    /// The old revision and the files it referenced, still open (see `Retired`).
    pub old: Version,
}

/// Writes a new revision of version `v` that references only files in `kept` (and none at
/// all if it is deeper than `max_depth`), and renames it over the old one. With `remember`,
/// the pages it copied in go into `pool` for later rewrites of the same run to reference.
pub(super) fn rewrite_one(
    store: &Store,
    v: u64,
    kept: &HashSet<String>,
    max_depth: Option<u32>,
    pool: &mut Pool,
    remember: bool,
) -> Result<Rewritten> {
    let path = store.path_of(v);
    let old = Version::open(&path)?;
    let f = old.file();
    let self_name = store.file_name(v);
    let flatten = max_depth.is_some_and(|d| f.header.depth > d);
    let keep_ref = |name: &str| !flatten && name != self_name && kept.contains(name);

    // New file table: this file, then kept files, by name.
    let mut files: Vec<FileEntry> = vec![f.index.files[0].clone()];
    let mut by_name: HashMap<String, u32> = HashMap::new();
    let mut file_idx = |files: &mut Vec<FileEntry>, name: &str| -> Result<u32> {
        if let Some(&i) = by_name.get(name) {
            return Ok(i);
        }
        let (h, ft) = read_header_footer(&store.dir().join(name))?;
        files.push(FileEntry {
            identity: Identity {
                file_id: h.file_id,
                index_checksum: ft.index_checksum,
            },
            version: h.version,
            name: name.to_string(),
        });
        let i = (files.len() - 1) as u32;
        by_name.insert(name.to_string(), i);
        Ok(i)
    };

    // Each region's pages, in order: runs kept as they are, and pages copied in. The copies
    // are numbered afterwards, grouped by the file they come from and in its order, so that
    // the copy reads each file front to back in long runs (in page order, a depth-16 chain's
    // base is interrupted every few pages by a newer file).
    enum Part {
        /// Pages kept referencing a file of the new table: count, file, first record.
        Run(u64, u32, u64),
        /// Pages copied in: count, and the file (old table) and first record they come from.
        Own(u64, usize, u64),
    }
    /// Not copied in.
    const NONE: u64 = u64::MAX;
    // For each file of the old table, each record's index in the new revision once numbered
    // (`NONE` where it is not copied in).
    let mut slot: Vec<Vec<u64>> = vec![Vec::new(); old.files().len()];
    let mut parts: Vec<Vec<Part>> = Vec::new();
    for r in old.regions() {
        let mut out: Vec<Part> = Vec::new();
        for e in f.index.extents_of(r) {
            let src_name = &f.index.files[e.file as usize].name;
            if e.file == 0 {
                out.push(Part::Run(e.page_count as u64, 0, e.first_record));
                continue;
            }
            if keep_ref(src_name) {
                // Its current revision keeps these record indices.
                let i = file_idx(&mut files, src_name)?;
                out.push(Part::Run(e.page_count as u64, i, e.first_record));
                continue;
            }
            let fi = e.file as usize;
            let records = &old.files()[fi].index.records;
            let (first, n) = (e.first_record, e.page_count as u64);
            if first
                .checked_add(n)
                .is_none_or(|end| end > records.len() as u64)
            {
                return Err(Error::corrupt(
                    f.path(),
                    "index",
                    format!("refers to missing records {first}+{n} of {src_name}"),
                ));
            }
            let slots = &mut slot[fi];
            if slots.is_empty() {
                slots.resize(records.len(), NONE);
            }
            // The page's copy in a kept file rewritten earlier in the run, if any.
            let shared = |k: u64| {
                let rec = &records[(first + k) as usize];
                pool.get(&(rec.hash, rec.raw_len))
                    .filter(|(name, _)| keep_ref(name))
            };
            let mut k = 0;
            while k < n {
                if let Some((name, idx)) = shared(k) {
                    out.push(Part::Run(1, file_idx(&mut files, name)?, *idx));
                    k += 1;
                    continue;
                }
                // Copied in: as far as the pool has nothing.
                let from = k;
                while k < n && (k == from || pool.is_empty() || shared(k).is_none()) {
                    slots[(first + k) as usize] = 0;
                    k += 1;
                }
                out.push(Part::Own(k - from, fi, first + from));
            }
        }
        parts.push(out);
    }
    let old_records = f.index.records.len() as u64;
    // (old file-table index, record), in the order appended: by file, then record.
    let mut appended: Vec<(usize, u64)> = Vec::new();
    for (fi, slots) in slot.iter_mut().enumerate() {
        for (ri, s) in slots.iter_mut().enumerate() {
            if *s != NONE {
                *s = old_records + appended.len() as u64;
                appended.push((fi, ri as u64));
            }
        }
    }
    let mut regions = Vec::new();
    let mut extents: Vec<Extent> = Vec::new();
    for (r, parts) in old.regions().iter().zip(parts) {
        let first_extent = extents.len() as u64;
        let mut out: Vec<Extent> = Vec::new();
        for part in parts {
            match part {
                Part::Run(n, file, first) => push(&mut out, n, file, first),
                // Consecutive records of a file are numbered consecutively.
                Part::Own(n, file, first) => push(&mut out, n, 0, slot[file][first as usize]),
            }
        }
        regions.push(RegionEntry {
            id: r.id,
            byte_len: r.byte_len,
            first_extent,
            extent_count: out.len() as u64,
        });
        extents.extend(out);
    }

    // Depth: one more than the deepest file referenced.
    let mut depth = 0u32;
    for e in files.iter().skip(1) {
        let (h, _) = read_header_footer(&store.dir().join(&e.name))?;
        depth = depth.max(h.depth + 1);
    }
    let header = Header {
        // The revision's appended records may be aligned (format version 2), whatever the
        // version of the file it revises.
        format_version: crate::format::FORMAT_VERSION,
        depth,
        flags: (f.header.flags | FLAG_COMPACTED) & !FLAG_FULL
            | if files.len() == 1 { FLAG_FULL } else { 0 },
        ..f.header.clone()
    };

    // Pages: the old records as they are, then the appended copies, all checked on the way.
    let mut sources: Vec<(usize, Record)> = f.index.records.iter().map(|r| (0, *r)).collect();
    for &(fi, ri) in &appended {
        sources.push((fi, old.files()[fi].index.records[ri as usize]));
    }
    let tmp = store.temp_path(v)?;
    let mut writer = VersionWriter::create(tmp, path.clone(), header)?;
    let records = copy_checked(&old, &sources, &mut writer)?;
    let copied = sources.iter().map(|(_, r)| r.stored_len as u64).sum();
    let mut superseded = f.index.superseded.clone();
    superseded.push(f.footer.index_checksum);
    let index = Index {
        files,
        regions,
        extents,
        records,
        superseded,
    };
    writer.sync_data()?;
    let shared = writer.shared_bytes();
    crate::fault::point("compact-step");
    let old_size = f.size();
    let lock = store.lock_commit()?;
    let identity = writer.commit_replacing(&index)?;
    drop(lock);
    crate::fault::point("compact-step");
    let new_size = std::fs::metadata(&path)
        .map_err(|e| Error::io(&path, "stat", e))?
        .len();
    if remember {
        let name: Rc<str> = self_name.into();
        for (k, &(fi, ri)) in appended.iter().enumerate() {
            let rec = &old.files()[fi].index.records[ri as usize];
            pool.insert(
                (rec.hash, rec.raw_len),
                (Rc::clone(&name), old_records + k as u64),
            );
        }
    }
    debug_assert_eq!(identity.file_id, f.header.file_id);
    Ok(Rewritten {
        written: new_size,
        freed: old_size,
        copied,
        shared,
        old,
    })
}

/// Sources (consecutive in the new revision) from one file, read by one request.
struct Piece {
    /// Its place in the sequence of pieces: the order they are written in.
    seq: usize,
    /// The file, in the old revision's file table.
    file: usize,
    /// The bytes read: `start..end` of the file.
    start: u64,
    end: u64,
    /// The sources: `first..first + n`.
    first: usize,
    n: usize,
}

impl Request for Piece {
    fn file(&self) -> usize {
        self.file
    }
    fn span(&self) -> (u64, u64) {
        (self.start, self.end)
    }
}

/// Cuts `sources` into pieces: runs of one file's records that lie in ascending order,
/// with gaps under [`GAP`], within [`MAX_CHUNK`] bytes.
fn pieces(sources: &[(usize, Record)]) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    for (i, (file, rec)) in sources.iter().enumerate() {
        let (a, b) = (rec.offset, rec.offset + rec.stored_len as u64);
        match out.last_mut() {
            Some(p)
                if p.file == *file
                    && a >= p.end
                    && a <= p.end + GAP
                    && b - p.start <= MAX_CHUNK =>
            {
                p.end = b;
                p.n += 1;
            }
            _ => out.push(Piece {
                seq: out.len(),
                file: *file,
                start: a,
                end: b,
                first: i,
                n: 1,
            }),
        }
    }
    out
}

/// The read-ahead of a compaction asks for this much at a time.
const READ_AHEAD_STEP: u64 = 8 << 20;
/// Pieces closer than this are asked for as one range.
const READ_AHEAD_GAP: u64 = 1 << 20;

/// Appends the stored bytes of `sources` (file in `old`'s file table, record) to `writer`,
/// as they are, and returns their new records. The files are read many requests at a time
/// ([`Reader`]); the pool's workers check every page against its blake3 hash while a writer
/// thread appends the pieces in order: nothing unverified is ever committed, and each source
/// byte is read from the disk once.
///
/// Unlike a restore, the reads go through the page cache, every file's pieces asked for at
/// once (`POSIX_FADV_WILLNEED`) as the copy starts: a compaction is bound by the disk, which
/// its reads share with its writes, not by the CPU, and the kernel's read-ahead served it
/// better than direct reads. 1 GiB depth-16 chains, cold, keep 1, alternated on a 2-core VM
/// (ext4 on virtio): direct reads of 1 MiB (16 in flight) 1.32-2.15 s, of 4-8 MiB
/// 1.63-2.29 s; through the cache 1.21-1.53 s; with the read-ahead asked for 1.20-1.37 s
/// against 1.27-1.84 s without it in the same minutes. (The files read are removed right
/// after, and their cached pages freed with them.)
fn copy_checked(
    old: &Version,
    sources: &[(usize, Record)],
    writer: &mut VersionWriter,
) -> Result<Vec<Record>> {
    let pieces = pieces(sources);
    let total = pieces.len();
    let ps = old.page_size();
    let workers = rayon::current_num_threads().max(1);
    let reader = Reader::new(old.files(), workers, false);
    let writer_gone = std::sync::atomic::AtomicBool::new(false);
    let tmp = &writer.tmp_path().to_path_buf();
    // Each file's pieces, merged where close, for the read-ahead.
    let mut ahead: Vec<Vec<(u64, u64)>> = vec![Vec::new(); old.files().len()];
    for p in &pieces {
        match ahead[p.file].last_mut() {
            Some(last) if p.start <= last.1 + READ_AHEAD_GAP => last.1 = last.1.max(p.end),
            _ => ahead[p.file].push((p.start, p.end)),
        }
    }
    std::thread::scope(|s| {
        for (f, ranges) in old.files().iter().zip(ahead) {
            if ranges.is_empty() {
                continue;
            }
            // Asks for every file's pieces at once, front first, in steps (a hint: the
            // readers read whatever has not arrived).
            s.spawn(move || {
                for (a, b) in ranges {
                    let mut at = a;
                    while at < b {
                        let n = (b - at).min(READ_AHEAD_STEP);
                        let _ = crate::sys::read_ahead(f.file(), at, n);
                        at += n;
                    }
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel::<(Filled<'_, Piece>, Vec<Hash>)>();
        // Appends the pieces in order as they come, checked, from the workers.
        let append = s.spawn(move || -> Result<Vec<Record>> {
            let mut records = Vec::with_capacity(sources.len());
            let mut waiting = std::collections::BTreeMap::new();
            let mut next = 0;
            for (piece, digests) in rx {
                waiting.insert(piece.req.seq, (piece, digests));
                while let Some((piece, digests)) = waiting.remove(&next) {
                    append_piece(
                        writer,
                        &piece,
                        &sources[piece.req.first..][..piece.req.n],
                        &digests,
                        &mut records,
                    )?;
                    next += 1;
                }
            }
            if next != total {
                return Err(Error::io(
                    tmp,
                    "copy pages",
                    std::io::Error::other(format!("{next} of {total} pieces arrived")),
                ));
            }
            Ok(records)
        });
        let read = reader.run(pieces, workers, |piece| {
            let f = piece.file();
            let mut buf = vec![0u8; ps];
            let mut digests = Vec::with_capacity(piece.req.n);
            // Raw pages are checked as they are, together after the others (blake3 of
            // several pages at once); a compressed one is decoded into `buf` and checked.
            let (mut raw_at, mut raw_recs, mut raw_pages) = (Vec::new(), Vec::new(), Vec::new());
            for (k, (_, rec)) in sources[piece.req.first..][..piece.req.n].iter().enumerate() {
                let i = piece.req.first + k;
                let what = || format!("record copied by compaction ({i})");
                let bytes = piece.stored(rec).ok_or_else(|| {
                    Error::corrupt(f.path(), what(), "record lies outside the bytes read")
                })?;
                if rec.is_raw_page(bytes.len()) {
                    raw_at.push(i);
                    raw_recs.push(rec);
                    raw_pages.push(bytes);
                } else {
                    let n = (rec.raw_len as usize).min(buf.len());
                    f.decode(rec, bytes, &mut buf[..n], &what)?;
                }
                digests.push(stored_digest(rec.codec, &rec.hash, bytes));
            }
            f.check_hashes(&raw_recs, &raw_pages, &|k| {
                format!("record copied by compaction ({})", raw_at[k])
            })?;
            tx.send((piece, digests)).map_err(|_| {
                writer_gone.store(true, std::sync::atomic::Ordering::Relaxed);
                Error::io(
                    f.path(),
                    "copy pages",
                    std::io::Error::other("writer stopped"),
                )
            })
        });
        drop(tx);
        let appended = append.join().map_err(|_| {
            Error::io(
                tmp,
                "copy pages",
                std::io::Error::other("writer thread panicked"),
            )
        })?;
        match (read, appended) {
            // The writer's own error explains a failed hand-over better.
            (Err(_), Err(w)) if writer_gone.load(std::sync::atomic::Ordering::Relaxed) => Err(w),
            // A damaged page explains a failure better than the copy that stopped with it.
            (Err(e), _) => Err(e),
            (Ok(()), a) => a,
        }
    })
}

/// Appends one checked piece: each run of its records that lie back to back in the file.
fn append_piece(
    writer: &mut VersionWriter,
    piece: &Filled<'_, Piece>,
    sources: &[(usize, Record)],
    digests: &[Hash],
    records: &mut Vec<Record>,
) -> Result<()> {
    let f = piece.file();
    let mut i = 0;
    while i < sources.len() {
        let start = sources[i].1.offset;
        let mut end = start + sources[i].1.stored_len as u64;
        let mut j = i + 1;
        while j < sources.len() && sources[j].1.offset == end {
            end += sources[j].1.stored_len as u64;
            j += 1;
        }
        let recs: Vec<Record> = sources[i..j].iter().map(|(_, r)| *r).collect();
        let bytes = piece.bytes(start, end).ok_or_else(|| {
            Error::corrupt(
                f.path(),
                format!("bytes {start}..{end}"),
                "lie outside the bytes read",
            )
        })?;
        records.extend(writer.append_stored(f, &recs, bytes, &digests[i..j])?);
        i = j;
    }
    Ok(())
}
