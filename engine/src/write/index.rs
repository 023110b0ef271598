//! The in-memory picture of the last committed version (the parent of the next one) and how
//! a new version's index is derived from it: dirty pages become records of the new file, all
//! other pages keep pointing, in one hop, at the file that holds their bytes.

use crate::format::{Extent, FileEntry, Identity, Index, ParentRef, Record, RegionEntry};

/// What the next checkpoint builds on.
#[derive(Debug, Clone)]
pub(crate) struct Parent {
    /// The parent's version number and identity.
    pub(crate) parent: ParentRef,
    /// The parent's depth.
    pub(crate) depth: u32,
    /// The parent's file table, with entry 0 (the parent itself) carrying its full identity.
    pub(crate) files: Vec<FileEntry>,
    /// The parent's extents, one list per region in engine order.
    pub(crate) extents: Vec<Vec<Extent>>,
}

impl Parent {
    /// Builds the parent picture from a committed index.
    pub(crate) fn from_index(
        index: &Index,
        version: u64,
        identity: Identity,
        depth: u32,
    ) -> Parent {
        let mut files = index.files.clone();
        files[0].identity = identity;
        let extents = index
            .regions
            .iter()
            .map(|r| index.extents_of(r).to_vec())
            .collect();
        Parent {
            parent: ParentRef { version, identity },
            depth,
            files,
            extents,
        }
    }
}

/// Appends an extent, merging it into the previous one when it continues it.
pub(crate) fn push(out: &mut Vec<Extent>, count: u64, file: u32, first_record: u64) {
    if let Some(last) = out.last_mut() {
        if last.file == file
            && last.first_record + last.page_count as u64 == first_record
            && last.page_count as u64 + count <= u32::MAX as u64
        {
            last.page_count += count as u32;
            return;
        }
    }
    let mut count = count;
    let mut first = first_record;
    while count > 0 {
        let n = count.min(u32::MAX as u64);
        out.push(Extent {
            page_count: n as u32,
            file,
            first_record: first,
        });
        count -= n;
        first += n;
    }
}

/// One region of the version being written.
pub(crate) struct RegionPlan<'a> {
    /// Region id.
    pub(crate) id: u64,
    /// Region length in bytes.
    pub(crate) byte_len: u64,
    /// Pages stored in the new file, ascending.
    pub(crate) stored: &'a [u64],
}

/// Builds the index of a new version. `parent` is `None` for a full version, in which case
/// every page of every region must be in `stored`. Records are numbered in region order,
/// then page order, matching `records`.
pub(crate) fn build_index(
    self_entry: FileEntry,
    parent: Option<&Parent>,
    regions: &[RegionPlan<'_>],
    records: Vec<Record>,
    page_size: u32,
) -> Index {
    let mut files = vec![self_entry];
    // parent file-table index -> new file-table index
    let mut remap: Vec<Option<u32>> = vec![None; parent.map_or(0, |p| p.files.len())];
    let mut extents = Vec::new();
    let mut region_entries = Vec::with_capacity(regions.len());
    let mut next_record = 0u64;
    for (ri, plan) in regions.iter().enumerate() {
        let first_extent = extents.len() as u64;
        let pages = plan.byte_len.div_ceil(page_size as u64);
        let mut out: Vec<Extent> = Vec::new();
        match parent {
            None => push(&mut out, pages, 0, next_record),
            Some(parent) => {
                let mut di = 0usize;
                let mut page = 0u64;
                for ext in &parent.extents[ri] {
                    let start = page;
                    let end = page + ext.page_count as u64;
                    let mut cur = start;
                    let mut keep = |out: &mut Vec<Extent>, from: u64, to: u64| {
                        let slot = &mut remap[ext.file as usize];
                        let nf = *slot.get_or_insert_with(|| {
                            files.push(parent.files[ext.file as usize].clone());
                            (files.len() - 1) as u32
                        });
                        push(out, to - from, nf, ext.first_record + (from - start));
                    };
                    while di < plan.stored.len() && plan.stored[di] < end {
                        let d = plan.stored[di];
                        if d > cur {
                            keep(&mut out, cur, d);
                        }
                        push(&mut out, 1, 0, next_record + di as u64);
                        cur = d + 1;
                        di += 1;
                    }
                    if cur < end {
                        keep(&mut out, cur, end);
                    }
                    page = end;
                }
            }
        }
        next_record += plan.stored.len() as u64;
        region_entries.push(RegionEntry {
            id: plan.id,
            byte_len: plan.byte_len,
            first_extent,
            extent_count: out.len() as u64,
        });
        extents.extend(out);
    }
    Index {
        files,
        regions: region_entries,
        extents,
        records,
        superseded: Vec::new(),
    }
}
