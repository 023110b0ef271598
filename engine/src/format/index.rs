//! The index section: file table, region table, extents, records, superseded revisions,
//! names. Every page of every region maps, in one hop, to the file and record holding it.

use std::path::Path;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use super::layout::{table, RawExtent, RawFileEntry, RawIndexFixed, RawRecord, RawRegionEntry};
use super::{
    names, Codec, Footer, Hash, Header, Identity, EXTENT_LEN, FILE_ENTRY_LEN, INDEX_FIXED_LEN,
    INDEX_MAGIC, RECORD_LEN, REGION_ENTRY_LEN,
};
use crate::error::{Error, Result};

/// An entry of the file table: a file that pages of this version live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Identity the referenced file must have. For entry 0 (the file itself) the index
    /// checksum is all zeros, since a file cannot contain its own checksum.
    pub identity: Identity,
    /// The referenced file's version number.
    pub version: u64,
    /// Plain file name, in the same directory.
    pub name: String,
}

/// One registered region of the checkpointed process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    /// The application's stable region id.
    pub id: u64,
    /// The region's length in bytes.
    pub byte_len: u64,
    /// Index of the region's first extent in the extent table.
    pub first_extent: u64,
    /// Number of extents covering the region.
    pub extent_count: u64,
}

impl RegionEntry {
    /// Number of pages of `page_size` bytes that cover the region (the last may be partial).
    pub fn page_count(&self, page_size: u32) -> u64 {
        self.byte_len.div_ceil(page_size as u64)
    }
}

/// A run of consecutive pages of a region whose bytes are consecutive records of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Number of pages in the run (at least 1).
    pub page_count: u32,
    /// Index into the file table (0: this file).
    pub file: u32,
    /// Index of the first page's record in that file's record table.
    pub first_record: u64,
}

/// Where one stored page's bytes are, and what they hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// blake3 of the uncompressed page bytes.
    pub hash: Hash,
    /// Absolute file offset of the stored bytes (inside the data section).
    pub offset: u64,
    /// Number of stored (possibly compressed) bytes.
    pub stored_len: u32,
    /// Number of bytes once decompressed (the page length).
    pub raw_len: u32,
    /// How the bytes are stored.
    pub codec: Codec,
}

impl Record {
    /// Whether the record is a raw page of `len` bytes: stored as it is, `len` bytes stored
    /// and `len` bytes once decoded.
    pub fn is_raw_page(&self, len: usize) -> bool {
        self.codec == Codec::Raw && self.stored_len as usize == len && self.raw_len as usize == len
    }
}

/// A stored page's digest, as the footer's `data_checksum` covers it: the page hash
/// `page_hash` for a raw page (its stored bytes are the page), blake3 of the `stored` frame
/// for a compressed one.
pub fn stored_digest(codec: Codec, page_hash: &Hash, stored: &[u8]) -> Hash {
    match codec {
        Codec::Raw => *page_hash,
        Codec::Zstd => *blake3::hash(stored).as_bytes(),
    }
}

/// The decoded index section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Index {
    /// File table; entry 0 is the file itself.
    pub files: Vec<FileEntry>,
    /// Region table, in the order regions were registered.
    pub regions: Vec<RegionEntry>,
    /// Extent table; each region owns a contiguous slice of it.
    pub extents: Vec<Extent>,
    /// Page records of the pages stored in this file.
    pub records: Vec<Record>,
    /// Index checksums of earlier revisions of this file that the compactor replaced. This
    /// revision keeps their records at the same indices with the same contents, so a file
    /// that recorded one of these checksums may use this revision.
    pub superseded: Vec<Hash>,
}

impl Index {
    /// Serialises the index section.
    #[cfg(any(test, feature = "internals"))]
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.encoded_len());
        // Writing into a Vec cannot fail.
        let _ = self.write_to(&mut b);
        b
    }

    /// Length of the encoded section.
    pub fn encoded_len(&self) -> usize {
        let names_len: usize = self.files.iter().map(|f| f.name.len()).sum();
        INDEX_FIXED_LEN
            + self.files.len() * FILE_ENTRY_LEN
            + self.regions.len() * REGION_ENTRY_LEN
            + self.extents.len() * EXTENT_LEN
            + self.records.len() * RECORD_LEN
            + self.superseded.len() * 32
            + names_len
    }

    /// The extents of `region`, an entry of this index's region table: its slice of the
    /// extent table. Decoding checked that every region's slice is in range (an entry that is
    /// not, possible only for an index built in memory, gets an empty slice).
    pub fn extents_of(&self, region: &RegionEntry) -> &[Extent] {
        let start = region.first_extent as usize;
        let end = start.saturating_add(region.extent_count as usize);
        self.extents.get(start..end).unwrap_or_default()
    }

    /// Streams the encoded section into `w` (without building it in memory: a full
    /// version's index is 56 bytes per page).
    pub fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let names_len: usize = self.files.iter().map(|f| f.name.len()).sum();
        let fixed = RawIndexFixed {
            magic: INDEX_MAGIC,
            file_count: U32::new(self.files.len() as u32),
            region_count: U32::new(self.regions.len() as u32),
            extent_count: U64::new(self.extents.len() as u64),
            record_count: U64::new(self.records.len() as u64),
            names_len: U64::new(names_len as u64),
            superseded_count: U32::new(self.superseded.len() as u32),
            reserved: U32::new(0),
        };
        w.write_all(fixed.as_bytes())?;
        let mut name_off = 0usize;
        for f in &self.files {
            let e = RawFileEntry {
                file_id: f.identity.file_id,
                index_checksum: f.identity.index_checksum,
                version: U64::new(f.version),
                name_offset: U32::new(name_off as u32),
                name_len: U32::new(f.name.len() as u32),
            };
            name_off += f.name.len();
            w.write_all(e.as_bytes())?;
        }
        for r in &self.regions {
            let e = RawRegionEntry {
                id: U64::new(r.id),
                byte_len: U64::new(r.byte_len),
                first_extent: U64::new(r.first_extent),
                extent_count: U64::new(r.extent_count),
            };
            w.write_all(e.as_bytes())?;
        }
        for e in &self.extents {
            let raw = RawExtent {
                page_count: U32::new(e.page_count),
                file: U32::new(e.file),
                first_record: U64::new(e.first_record),
            };
            w.write_all(raw.as_bytes())?;
        }
        for r in &self.records {
            let raw = RawRecord {
                hash: r.hash,
                offset: U64::new(r.offset),
                stored_len: U32::new(r.stored_len),
                raw_len: U32::new(r.raw_len),
                codec: r.codec as u8,
                reserved: [0; 7],
            };
            w.write_all(raw.as_bytes())?;
        }
        for h in &self.superseded {
            w.write_all(h)?;
        }
        for f in &self.files {
            w.write_all(f.name.as_bytes())?;
        }
        Ok(())
    }

    /// Parses an index section and checks everything that can be checked from this file
    /// alone: sizes against the section length (before allocating), that extents cover each
    /// region exactly, that file indices are in the table, that references into this file's
    /// own records are in range, and that records lie inside the data section.
    pub fn decode(path: &Path, b: &[u8], header: &Header, footer: &Footer) -> Result<Index> {
        let bad = |d: String| Error::corrupt(path, "index", d);
        let Ok((fixed, _)) = RawIndexFixed::ref_from_prefix(b) else {
            return Err(bad(format!(
                "{} bytes, shorter than its fixed part",
                b.len()
            )));
        };
        if fixed.magic != INDEX_MAGIC {
            return Err(bad("bad magic".into()));
        }
        let nfiles = fixed.file_count.get() as u64;
        let nregions = fixed.region_count.get() as u64;
        let nextents = fixed.extent_count.get();
        let nrecords = fixed.record_count.get();
        let names_len = fixed.names_len.get();
        let nsuperseded = fixed.superseded_count.get() as u64;
        // Check the declared sizes add up to the section length before allocating anything.
        let expect = (|| {
            let mut t = INDEX_FIXED_LEN as u64;
            t = t.checked_add(nfiles.checked_mul(FILE_ENTRY_LEN as u64)?)?;
            t = t.checked_add(nregions.checked_mul(REGION_ENTRY_LEN as u64)?)?;
            t = t.checked_add(nextents.checked_mul(EXTENT_LEN as u64)?)?;
            t = t.checked_add(nrecords.checked_mul(RECORD_LEN as u64)?)?;
            t = t.checked_add(nsuperseded.checked_mul(32)?)?;
            t.checked_add(names_len)
        })();
        if expect != Some(b.len() as u64) {
            return Err(bad(format!(
                "declared sizes ({nfiles} files, {nregions} regions, {nextents} extents, \
                 {nrecords} records, {nsuperseded} superseded, {names_len} name bytes) do not add up to the section length {}",
                b.len()
            )));
        }
        if nfiles == 0 {
            return Err(bad("empty file table".into()));
        }
        if fixed.reserved.get() != 0 {
            return Err(bad("non-zero reserved bytes at offset 44".into()));
        }
        let short = || bad("shorter than its tables".into());
        let names = &b[b.len() - names_len as usize..];
        let mut off = INDEX_FIXED_LEN;
        let raw_files: &[RawFileEntry] = table(b, &mut off, nfiles as usize).ok_or_else(short)?;
        let raw_regions: &[RawRegionEntry] =
            table(b, &mut off, nregions as usize).ok_or_else(short)?;
        let raw_extents: &[RawExtent] = table(b, &mut off, nextents as usize).ok_or_else(short)?;
        let raw_records: &[RawRecord] = table(b, &mut off, nrecords as usize).ok_or_else(short)?;
        let raw_superseded: &[[u8; 32]] =
            table(b, &mut off, nsuperseded as usize).ok_or_else(short)?;

        let mut files = Vec::with_capacity(raw_files.len());
        for (i, e) in raw_files.iter().enumerate() {
            let (name_off, name_len) = (e.name_offset.get() as u64, e.name_len.get() as u64);
            if name_off
                .checked_add(name_len)
                .is_none_or(|end| end > names_len)
            {
                return Err(bad(format!("file entry {i}: name outside the names area")));
            }
            let name =
                std::str::from_utf8(&names[name_off as usize..(name_off + name_len) as usize])
                    .map_err(|_| bad(format!("file entry {i}: name is not UTF-8")))?;
            names::check_file_name(name).map_err(|e| bad(format!("file entry {i}: {e}")))?;
            files.push(FileEntry {
                identity: Identity {
                    file_id: e.file_id,
                    index_checksum: e.index_checksum,
                },
                version: e.version.get(),
                name: name.to_string(),
            });
        }
        if files[0].identity.file_id != header.file_id || files[0].version != header.version {
            return Err(bad("file entry 0 does not describe this file".into()));
        }
        let regions = raw_regions
            .iter()
            .map(|r| RegionEntry {
                id: r.id.get(),
                byte_len: r.byte_len.get(),
                first_extent: r.first_extent.get(),
                extent_count: r.extent_count.get(),
            })
            .collect();
        let extents = raw_extents
            .iter()
            .map(|e| Extent {
                page_count: e.page_count.get(),
                file: e.file.get(),
                first_record: e.first_record.get(),
            })
            .collect();
        let data_end = footer.data_offset + footer.data_len;
        let mut records = Vec::with_capacity(raw_records.len());
        for (i, raw) in raw_records.iter().enumerate() {
            if raw.reserved != [0; 7] {
                return Err(bad(format!("record {i}: non-zero reserved bytes")));
            }
            let codec = match raw.codec {
                0 => Codec::Raw,
                1 => Codec::Zstd,
                c => return Err(bad(format!("record {i}: unknown codec {c}"))),
            };
            let r = Record {
                hash: raw.hash,
                offset: raw.offset.get(),
                stored_len: raw.stored_len.get(),
                raw_len: raw.raw_len.get(),
                codec,
            };
            let in_data = r.offset >= footer.data_offset
                && r.offset
                    .checked_add(r.stored_len as u64)
                    .is_some_and(|e| e <= data_end);
            if !in_data {
                return Err(bad(format!(
                    "record {i}: bytes lie outside the data section"
                )));
            }
            if r.raw_len == 0 || r.raw_len > header.page_size {
                return Err(bad(format!("record {i}: page length {}", r.raw_len)));
            }
            if codec == Codec::Raw && r.stored_len != r.raw_len {
                return Err(bad(format!(
                    "record {i}: raw page stored with a different length"
                )));
            }
            records.push(r);
        }
        let index = Index {
            files,
            regions,
            extents,
            records,
            superseded: raw_superseded.to_vec(),
        };
        index.check_extents(path, header.page_size)?;
        Ok(index)
    }

    fn check_extents(&self, path: &Path, page_size: u32) -> Result<()> {
        let bad = |d: String| Error::corrupt(path, "index", d);
        let mut next_extent = 0u64;
        let mut ids = std::collections::HashSet::new();
        for r in &self.regions {
            if !ids.insert(r.id) {
                return Err(bad(format!("region {} listed twice", r.id)));
            }
            if r.first_extent != next_extent {
                return Err(bad(format!("region {}: extents are not contiguous", r.id)));
            }
            let end = r
                .first_extent
                .checked_add(r.extent_count)
                .filter(|&e| e <= self.extents.len() as u64)
                .ok_or_else(|| bad(format!("region {}: extents out of range", r.id)))?;
            next_extent = end;
            let mut pages = 0u64;
            for e in &self.extents[r.first_extent as usize..end as usize] {
                if e.page_count == 0 {
                    return Err(bad(format!("region {}: empty extent", r.id)));
                }
                if e.file as usize >= self.files.len() {
                    return Err(bad(format!(
                        "region {}: extent names file {} of {}",
                        r.id,
                        e.file,
                        self.files.len()
                    )));
                }
                let rec_end = e.first_record.checked_add(e.page_count as u64);
                if e.file == 0 && rec_end.is_none_or(|x| x > self.records.len() as u64) {
                    return Err(bad(format!(
                        "region {}: extent names missing records",
                        r.id
                    )));
                }
                if rec_end.is_none() {
                    return Err(bad(format!("region {}: record index overflow", r.id)));
                }
                pages += e.page_count as u64;
            }
            if pages != r.page_count(page_size) {
                return Err(bad(format!(
                    "region {}: extents cover {pages} pages, the region has {}",
                    r.id,
                    r.page_count(page_size)
                )));
            }
        }
        if next_extent != self.extents.len() as u64 {
            return Err(bad("extents not owned by any region".into()));
        }
        Ok(())
    }
}
