//! The global commit record of a job version: its bytes (declared in `format/layout.rs`) and
//! their checks.

use std::path::Path;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Error, Result};
use crate::format::layout::{RawCommitHead, RawIdentity};
use crate::format::Identity;

/// Magic of a commit record.
pub const COMMIT_MAGIC: [u8; 8] = *b"CKPTCOMT";
/// Format of the commit record this build writes and reads.
pub const COMMIT_FORMAT: u32 = 1;

/// A global commit record: version N is complete on every rank, and this is each rank's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    /// The version committed.
    pub version: u64,
    /// Wall-clock time of the commit, nanoseconds since the Unix epoch.
    pub created_unix_nanos: u64,
    /// Identity of each rank's version file, by rank.
    pub ranks: Vec<Identity>,
}

impl CommitRecord {
    /// The record of `version`, committed now, naming each rank's file.
    pub fn new(version: u64, ranks: Vec<Identity>) -> CommitRecord {
        CommitRecord {
            version,
            created_unix_nanos: crate::format::unix_nanos(),
            ranks,
        }
    }

    /// Serialises the record: magic, format (u32 = 1), world size (u32), version (u64),
    /// creation time (u64), 48 bytes per rank (file id, index checksum), blake3 of all that.
    pub fn encode(&self) -> Vec<u8> {
        let head = RawCommitHead {
            magic: COMMIT_MAGIC,
            format: U32::new(COMMIT_FORMAT),
            world_size: U32::new(self.ranks.len() as u32),
            version: U64::new(self.version),
            created_unix_nanos: U64::new(self.created_unix_nanos),
        };
        let mut b = Vec::with_capacity(32 + 48 * self.ranks.len() + 32);
        b.extend_from_slice(head.as_bytes());
        for r in &self.ranks {
            let id = RawIdentity {
                file_id: r.file_id,
                index_checksum: r.index_checksum,
            };
            b.extend_from_slice(id.as_bytes());
        }
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    /// Parses and checks a record.
    pub fn decode(path: &Path, b: &[u8]) -> Result<CommitRecord> {
        let bad = |d: &str| Error::corrupt(path, "commit record", d);
        let (body, sum) = b.split_at(b.len().saturating_sub(32));
        let head = match RawCommitHead::ref_from_prefix(body) {
            Ok((head, _)) if head.magic == COMMIT_MAGIC && sum.len() == 32 => head,
            _ => return Err(bad("bad magic or too short")),
        };
        if blake3::hash(body).as_bytes() != sum {
            return Err(bad("checksum mismatch"));
        }
        let format = head.format.get();
        if format != COMMIT_FORMAT {
            return Err(Error::corrupt(
                path,
                "commit record",
                format!("format {format}, this build reads only format {COMMIT_FORMAT}"),
            ));
        }
        let world = head.world_size.get() as usize;
        let ranks = match <[RawIdentity]>::ref_from_bytes(&body[32..]) {
            Ok(r) if r.len() == world => r,
            _ => return Err(bad("length does not match the world size")),
        };
        Ok(CommitRecord {
            version: head.version.get(),
            created_unix_nanos: head.created_unix_nanos.get(),
            ranks: ranks
                .iter()
                .map(|r| Identity {
                    file_id: r.file_id,
                    index_checksum: r.index_checksum,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_record_roundtrip_and_checksum() {
        let r = CommitRecord {
            version: 9,
            created_unix_nanos: 5,
            ranks: vec![
                Identity {
                    file_id: [1; 16],
                    index_checksum: [2; 32],
                };
                3
            ],
        };
        let mut b = r.encode();
        assert_eq!(CommitRecord::decode(Path::new("c"), &b).unwrap(), r);
        b[40] ^= 1;
        assert!(CommitRecord::decode(Path::new("c"), &b).is_err());
    }
}
