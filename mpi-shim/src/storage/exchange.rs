//! Moving version files between ranks over MPI: every rank sends one (possibly empty)
//! bundle of files to one rank and receives one from another, along a permutation (the
//! partner ring, either way round), in bounded chunks so that no message exceeds MPI's
//! count limit and no pair of blocking sends can deadlock.

use std::path::Path;

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::topology::Communicator;

/// Bytes per MPI message.
const CHUNK: usize = 64 << 20;

/// Sends `payload` to rank `to` and returns what rank `from` sent. Collective: every rank
/// calls it, with `to` and `from` forming a permutation.
pub fn exchange<C: Communicator>(comm: &C, to: u32, from: u32, payload: &[u8]) -> Vec<u8> {
    let dst = comm.process_at_rank(to as i32);
    let src = comm.process_at_rank(from as i32);
    let len = payload.len() as u64;
    let mut in_len = 0u64;
    mpi::point_to_point::send_receive_into(&len, &dst, &mut in_len, &src);
    let chunks = |n: u64| n.div_ceil(CHUNK as u64);
    let mine = chunks(len).max(chunks(in_len));
    let mut rounds = 0u64;
    comm.all_reduce_into(&mine, &mut rounds, SystemOperation::max());
    let mut buf = vec![0u8; in_len as usize];
    for i in 0..rounds as usize {
        let out = payload
            .get(i * CHUNK..((i + 1) * CHUNK).min(payload.len()))
            .unwrap_or(&[]);
        let n = buf.len();
        let inb = buf
            .get_mut(i * CHUNK..((i + 1) * CHUNK).min(n))
            .unwrap_or(&mut []);
        mpi::point_to_point::send_receive_into(out, &dst, inb, &src);
    }
    buf
}

/// A bundle of named files: `u32` count, then for each `u32` name length, the name, `u64`
/// length, the bytes (little-endian).
#[derive(Default)]
pub struct Bundle {
    bytes: Vec<u8>,
    count: u32,
}

impl Bundle {
    /// Adds file `name` with contents read from `path`.
    pub fn add_file(&mut self, name: &str, path: &Path) -> ckpt_engine::Result<()> {
        let data = std::fs::read(path).map_err(|e| ckpt_engine::Error::Io {
            path: path.to_path_buf(),
            op: "read (to send to a partner)",
            source: e,
        })?;
        self.bytes
            .extend_from_slice(&(name.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes
            .extend_from_slice(&(data.len() as u64).to_le_bytes());
        self.bytes.extend_from_slice(&data);
        self.count += 1;
        Ok(())
    }

    /// The encoded bundle (empty when nothing was added: "nothing sent").
    pub fn encode(self) -> Vec<u8> {
        if self.count == 0 {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(4 + self.bytes.len());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.bytes);
        out
    }
}

/// The files of an encoded bundle, or what is wrong with it.
pub fn decode(b: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = b
            .get(at..at.checked_add(n).ok_or("length overflow")?)
            .ok_or_else(|| format!("bundle cut short at byte {at}"))?;
        at += n;
        Ok(s)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "count")?);
    let mut out = Vec::new();
    for _ in 0..count {
        let nl = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "name length")?) as usize;
        let name = std::str::from_utf8(take(nl)?)
            .map_err(|_| "a file name that is not UTF-8".to_string())?
            .to_string();
        let len = u64::from_le_bytes(take(8)?.try_into().map_err(|_| "length")?);
        let data = take(usize::try_from(len).map_err(|_| "file too large")?)?;
        out.push((name, data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_round_trip_and_truncation_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"hello").unwrap();
        std::fs::write(d.path().join("b"), b"").unwrap();
        let mut bundle = Bundle::default();
        bundle.add_file("x.ckpt.1", &d.path().join("a")).unwrap();
        bundle.add_file("x.ckpt.2", &d.path().join("b")).unwrap();
        let enc = bundle.encode();
        let files = decode(&enc).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0], ("x.ckpt.1".to_string(), &b"hello"[..]));
        assert_eq!(files[1].1.len(), 0);
        assert!(decode(&enc[..enc.len() - 3])
            .unwrap_err()
            .contains("cut short"));
        assert!(decode(&Bundle::default().encode()).unwrap().is_empty());
    }
}
