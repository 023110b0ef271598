//! Rewriting one kept version as a compatible revision that references only kept files.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::format::{
    Extent, FileEntry, Hash, Header, Identity, Index, RegionEntry, FLAG_COMPACTED, FLAG_FULL,
};
use crate::read::{read_header_footer, Version, VersionFile};
use crate::store::Store;
use crate::write::file::VersionWriter;
use crate::write::index::push;

/// Records verified by one worker at a time.
const VERIFY_PIECE: usize = 256;

/// Where a page of the new revision comes from.
enum Src {
    /// Keep referencing (file index in the new table, record).
    Ref(u32, u64),
    /// A record of the new revision (old records keep their index).
    Own(u64),
}

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

    let old_records = f.index.records.len() as u64;
    let mut appended: Vec<(usize, u64)> = Vec::new(); // (old file-table index, record)
    let mut local: HashMap<(usize, u64), u64> = HashMap::new();
    let mut regions = Vec::new();
    let mut extents: Vec<Extent> = Vec::new();
    for r in old.regions() {
        let first_extent = extents.len() as u64;
        let mut out: Vec<Extent> = Vec::new();
        for e in f.index.extents_of(r) {
            let src_name = &f.index.files[e.file as usize].name;
            if e.file == 0 {
                push(&mut out, e.page_count as u64, 0, e.first_record);
                continue;
            }
            if keep_ref(src_name) {
                // Its current revision keeps these record indices.
                let i = file_idx(&mut files, src_name)?;
                push(&mut out, e.page_count as u64, i, e.first_record);
                continue;
            }
            let src = &old.files()[e.file as usize];
            for k in 0..e.page_count as u64 {
                let rec_i = e.first_record + k;
                let rec = src.index.records.get(rec_i as usize).ok_or_else(|| {
                    Error::corrupt(
                        f.path(),
                        "index",
                        format!("refers to missing record {rec_i} of {src_name}"),
                    )
                })?;
                let where_ = match pool.get(&(rec.hash, rec.raw_len)) {
                    Some((name, idx)) if keep_ref(name) => {
                        Src::Ref(file_idx(&mut files, name)?, *idx)
                    }
                    _ => {
                        let key = (e.file as usize, rec_i);
                        let idx = *local.entry(key).or_insert_with(|| {
                            appended.push(key);
                            old_records + appended.len() as u64 - 1
                        });
                        Src::Own(idx)
                    }
                };
                match where_ {
                    Src::Ref(i, idx) => push(&mut out, 1, i, idx),
                    Src::Own(idx) => push(&mut out, 1, 0, idx),
                }
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
        depth,
        flags: (f.header.flags | FLAG_COMPACTED) & !FLAG_FULL
            | if files.len() == 1 { FLAG_FULL } else { 0 },
        ..f.header.clone()
    };

    // Pages: the old records as they are, then the appended copies, all checked on the way.
    let ps = f.header.page_size as usize;
    let mut sources: Vec<(&VersionFile, &crate::format::Record)> =
        f.index.records.iter().map(|r| (f, r)).collect();
    for &(fi, ri) in &appended {
        let src: &VersionFile = &old.files()[fi];
        sources.push((src, &src.index.records[ri as usize]));
    }
    let tmp = store.temp_path(v)?;
    let mut writer = VersionWriter::create(tmp, path.clone(), header)?;
    // The stored bytes are copied as they are (never decoded and re-encoded), while every
    // page is decoded and checked against its hash in parallel: nothing unverified is ever
    // committed.
    let mut records = Vec::with_capacity(sources.len());
    let mut copied = 0u64;
    std::thread::scope(|s| -> Result<()> {
        // In order, a piece at a time, close behind the prefetch and the copy (which read
        // the same bytes): each source byte comes from the disk once.
        old.prefetch();
        let verify = s.spawn(|| {
            crate::read::in_order(sources.chunks(VERIFY_PIECE).enumerate(), |(k, piece)| {
                let mut buf = vec![0u8; ps];
                for (j, (src, rec)) in piece.iter().enumerate() {
                    let i = k * VERIFY_PIECE + j;
                    src.check_record(rec, &mut buf, &|| {
                        format!("record copied by compaction ({i})")
                    })?;
                }
                Ok(())
            })
        });
        let mut k = 0;
        let copy = (|| -> Result<()> {
            while k < sources.len() {
                let src = sources[k].0;
                let mut m = k + 1;
                while m < sources.len() && std::ptr::eq(sources[m].0, src) {
                    m += 1;
                }
                let recs: Vec<crate::format::Record> =
                    sources[k..m].iter().map(|(_, r)| **r).collect();
                copied += recs.iter().map(|r| r.stored_len as u64).sum::<u64>();
                records.extend(writer.copy_records(src, &recs)?);
                k = m;
            }
            Ok(())
        })();
        let verified = verify.join().map_err(|_| {
            Error::io(
                &path,
                "verify pages",
                std::io::Error::other("verification thread panicked"),
            )
        })?;
        // A damaged page explains a failure better than the copy that stopped with it.
        verified?;
        copy
    })?;
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
        old,
    })
}
