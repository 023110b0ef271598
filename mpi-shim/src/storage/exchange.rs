//! Moving version files between ranks over MPI: every rank sends one (possibly empty) stream
//! to one rank and receives one from another, along a permutation (the partner ring, either
//! way round), in bounded chunks, so that no message exceeds MPI's count limit, no pair of
//! blocking sends can deadlock, and no file is ever held in memory whole.
//!
//! A stream of files is a `u32` count, then for each file a `u32` name length, the name, a
//! `u64` length and the bytes (little-endian); an empty stream sends nothing.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use ckpt_engine::{Incoming, Store};
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::topology::Communicator;

/// Bytes per MPI message.
const CHUNK: usize = 16 << 20;

/// Sends `payload` to rank `to` and returns what rank `from` sent. Collective: every rank
/// calls it, with `to` and `from` forming a permutation. For small messages.
pub fn exchange<C: Communicator>(comm: &C, to: u32, from: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut src = Segments::bytes(payload);
    stream(comm, to, from, &mut src, &mut |b: &[u8]| {
        out.extend_from_slice(b)
    });
    out
}

/// Sends the files of `out` to rank `to` and stores the files rank `from` sends in `into`
/// (when given; else they are dropped). Returns the files stored, or why not: a sending
/// rank's own failure to read a file is its caller's to report (the receiver then finds a
/// file that does not check out). Collective, like [`exchange`].
pub fn exchange_files<C: Communicator>(
    comm: &C,
    to: u32,
    from: u32,
    out: &Outgoing,
    into: Option<&Store>,
) -> (Result<Vec<PathBuf>, String>, Option<String>) {
    let mut src = Segments::files(out);
    let mut inbox = Inbox::new(into);
    stream(comm, to, from, &mut src, &mut |b: &[u8]| inbox.feed(b));
    (inbox.finish(), src.error)
}

/// Files to send.
#[derive(Default)]
pub struct Outgoing {
    files: Vec<(String, PathBuf, u64)>,
}

impl Outgoing {
    /// Version file `file` and every file it references (its file table), parents first:
    /// the version's own file comes last.
    pub fn chain(file: &Path) -> ckpt_engine::Result<Outgoing> {
        let mut out = Outgoing::default();
        for (name, _) in ckpt_engine::catalog::check_complete(file)?.iter().rev() {
            out.add(name, &file.with_file_name(name))?;
        }
        Ok(out)
    }

    /// Adds `path`, sent under `name`.
    pub fn add(&mut self, name: &str, path: &Path) -> ckpt_engine::Result<()> {
        let len = std::fs::metadata(path)
            .map_err(|e| ckpt_engine::Error::Io {
                path: path.to_path_buf(),
                op: "stat (to send to a partner)",
                source: e,
            })?
            .len();
        self.files.push((name.to_string(), path.to_path_buf(), len));
        Ok(())
    }
}

/// Where a stream's bytes come from: literal bytes, or files read as they go.
struct Segments<'a> {
    parts: Vec<Part<'a>>,
    at: usize,
    /// The file being read (`None`: unreadable, sent as zeros) and its bytes left.
    open: Option<(Option<File>, u64)>,
    /// Why a file could not be read (what was missing was sent as zeros).
    error: Option<String>,
}

enum Part<'a> {
    Bytes(std::borrow::Cow<'a, [u8]>, usize),
    File(&'a Path, u64),
}

impl<'a> Segments<'a> {
    fn bytes(b: &'a [u8]) -> Segments<'a> {
        Segments {
            parts: vec![Part::Bytes(std::borrow::Cow::Borrowed(b), 0)],
            at: 0,
            open: None,
            error: None,
        }
    }

    fn files(out: &'a Outgoing) -> Segments<'a> {
        let mut parts = Vec::new();
        if !out.files.is_empty() {
            let count = (out.files.len() as u32).to_le_bytes().to_vec();
            parts.push(Part::Bytes(count.into(), 0));
        }
        for (name, path, len) in &out.files {
            let mut h = (name.len() as u32).to_le_bytes().to_vec();
            h.extend_from_slice(name.as_bytes());
            h.extend_from_slice(&len.to_le_bytes());
            parts.push(Part::Bytes(h.into(), 0));
            parts.push(Part::File(path, *len));
        }
        Segments {
            parts,
            at: 0,
            open: None,
            error: None,
        }
    }

    fn total(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Bytes(b, _) => b.len() as u64,
                Part::File(_, n) => *n,
            })
            .sum()
    }

    /// Fills `buf` (cleared) with up to `max` next bytes.
    fn fill(&mut self, buf: &mut Vec<u8>, max: usize) {
        buf.clear();
        while buf.len() < max && self.at < self.parts.len() {
            let room = max - buf.len();
            match &mut self.parts[self.at] {
                Part::Bytes(b, pos) => {
                    let n = room.min(b.len() - *pos);
                    buf.extend_from_slice(&b[*pos..*pos + n]);
                    *pos += n;
                    if *pos == b.len() {
                        self.at += 1;
                    }
                }
                Part::File(path, len) => {
                    let (file, left) = self.open.get_or_insert_with(|| match File::open(*path) {
                        Ok(f) => (Some(f), *len),
                        Err(e) => {
                            self.error.get_or_insert(format!("{}: {e}", path.display()));
                            (None, *len)
                        }
                    });
                    let n = room.min(*left as usize);
                    let start = buf.len();
                    buf.resize(start + n, 0);
                    if let Some(f) = file {
                        if let Err(e) = f.read_exact(&mut buf[start..]) {
                            // Shorter than it was: the rest goes as zeros.
                            buf[start..].fill(0);
                            self.error.get_or_insert(format!("{}: {e}", path.display()));
                            *file = None;
                        }
                    }
                    *left -= n as u64;
                    if *left == 0 {
                        self.open = None;
                        self.at += 1;
                    }
                }
            }
        }
    }
}

/// Streams `src` to `to` while receiving `from`'s stream into `sink`. Collective.
fn stream<C: Communicator>(
    comm: &C,
    to: u32,
    from: u32,
    src: &mut Segments<'_>,
    sink: &mut dyn FnMut(&[u8]),
) {
    let dst = comm.process_at_rank(to as i32);
    let srcp = comm.process_at_rank(from as i32);
    let len = src.total();
    let mut in_len = 0u64;
    mpi::point_to_point::send_receive_into(&len, &dst, &mut in_len, &srcp);
    let chunks = |n: u64| n.div_ceil(CHUNK as u64);
    let mine = chunks(len).max(chunks(in_len));
    let mut rounds = 0u64;
    comm.all_reduce_into(&mine, &mut rounds, SystemOperation::max());
    let mut out = Vec::with_capacity(CHUNK.min(len as usize));
    let mut inb = vec![0u8; CHUNK.min(in_len as usize)];
    let mut received = 0u64;
    for _ in 0..rounds {
        src.fill(&mut out, CHUNK);
        let n = ((in_len - received) as usize).min(CHUNK);
        mpi::point_to_point::send_receive_into(&out[..], &dst, &mut inb[..n], &srcp);
        received += n as u64;
        if n > 0 {
            sink(&inb[..n]);
        }
    }
}

/// The receiving end of a stream of files: parses it and writes each file into a store.
struct Inbox<'s> {
    into: Option<&'s Store>,
    state: State,
    buf: Vec<u8>,
    name: String,
    current: Option<Incoming>,
    left_files: u32,
    stored: Vec<PathBuf>,
    error: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Count,
    NameLen,
    Name(usize),
    Len,
    Data(u64),
    Done,
}

impl<'s> Inbox<'s> {
    fn new(into: Option<&'s Store>) -> Inbox<'s> {
        Inbox {
            into,
            state: State::Count,
            buf: Vec::new(),
            name: String::new(),
            current: None,
            left_files: 0,
            stored: Vec::new(),
            error: None,
        }
    }

    fn fail(&mut self, e: String) {
        self.error.get_or_insert(e);
        self.current = None;
    }

    /// Takes `n` header bytes into `buf`; true once it holds them.
    fn take(&mut self, b: &mut &[u8], n: usize) -> bool {
        let k = (n - self.buf.len()).min(b.len());
        self.buf.extend_from_slice(&b[..k]);
        *b = &b[k..];
        self.buf.len() == n
    }

    fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            match self.state {
                State::Count => {
                    if self.take(&mut b, 4) {
                        self.left_files =
                            u32::from_le_bytes(self.buf[..4].try_into().unwrap_or([0; 4]));
                        self.buf.clear();
                        self.state = if self.left_files == 0 {
                            State::Done
                        } else {
                            State::NameLen
                        };
                    }
                }
                State::NameLen => {
                    if self.take(&mut b, 4) {
                        let n = u32::from_le_bytes(self.buf[..4].try_into().unwrap_or([0; 4]));
                        self.buf.clear();
                        self.state = State::Name(n as usize);
                    }
                }
                State::Name(n) => {
                    if self.take(&mut b, n) {
                        self.name = String::from_utf8_lossy(&self.buf).into_owned();
                        self.buf.clear();
                        self.state = State::Len;
                    }
                }
                State::Len => {
                    if self.take(&mut b, 8) {
                        let len = u64::from_le_bytes(self.buf[..8].try_into().unwrap_or([0; 8]));
                        self.buf.clear();
                        if let (Some(store), None) = (self.into, &self.error) {
                            match store.incoming(&self.name) {
                                Ok(f) => self.current = Some(f),
                                Err(e) => self.fail(e.to_string()),
                            }
                        }
                        self.state = State::Data(len);
                        if len == 0 {
                            self.end_file();
                        }
                    }
                }
                State::Data(left) => {
                    let n = (left.min(b.len() as u64)) as usize;
                    if let Some(f) = self.current.as_mut() {
                        if let Err(e) = f.write(&b[..n]) {
                            self.fail(e.to_string());
                        }
                    }
                    b = &b[n..];
                    self.state = State::Data(left - n as u64);
                    if left == n as u64 {
                        self.end_file();
                    }
                }
                State::Done => {
                    self.fail("bytes after the last file".into());
                    return;
                }
            }
        }
    }

    fn end_file(&mut self) {
        if let Some(f) = self.current.take() {
            match f.finish() {
                Ok(p) => self.stored.push(p),
                Err(e) => self.fail(e.to_string()),
            }
        }
        self.left_files = self.left_files.saturating_sub(1);
        self.state = if self.left_files == 0 {
            State::Done
        } else {
            State::NameLen
        };
    }

    fn finish(self) -> Result<Vec<PathBuf>, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !matches!(self.state, State::Done | State::Count) {
            return Err("the stream of files was cut short".into());
        }
        Ok(self.stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream of two real version files, fed to the receiving end in pieces of every size
    /// from 1 byte up, is stored byte for byte; a stream cut short is an error and leaves no
    /// file behind.
    #[test]
    fn streams_of_files_survive_any_chunking() {
        let src = tempfile::tempdir().unwrap();
        let mut ck = ckpt_engine::Checkpointer::open(
            src.path(),
            "s",
            ckpt_engine::Config::default().with_compression_level(0),
        )
        .unwrap();
        let r = ck.alloc_region::<u64>(1, 50_000).unwrap();
        ck.checkpoint().unwrap();
        ck.region_mut(&r).unwrap()[7] = 7;
        ck.checkpoint().unwrap();
        let mut out = Outgoing::default();
        for v in [1, 2] {
            let name = format!("s.ckpt.{v}");
            out.add(&name, &src.path().join(&name)).unwrap();
        }
        let mut whole = Vec::new();
        let mut segs = Segments::files(&out);
        let total = segs.total();
        segs.fill(&mut whole, usize::MAX);
        assert_eq!(whole.len() as u64, total);
        for piece in [1usize, 3, 4096, 1 << 20] {
            let dst = tempfile::tempdir().unwrap();
            let store = Store::new(dst.path(), "s").unwrap();
            let mut inbox = Inbox::new(Some(&store));
            for c in whole.chunks(piece) {
                inbox.feed(c);
            }
            let stored = inbox.finish().unwrap();
            assert_eq!(stored.len(), 2, "piece {piece}");
            for v in [1, 2] {
                let name = format!("s.ckpt.{v}");
                assert_eq!(
                    std::fs::read(dst.path().join(&name)).unwrap(),
                    std::fs::read(src.path().join(&name)).unwrap(),
                    "piece {piece}"
                );
            }
        }
        // A file whose bytes were damaged in transit is refused and leaves nothing.
        let dst = tempfile::tempdir().unwrap();
        let store = Store::new(dst.path(), "s").unwrap();
        let mut bad = whole.clone();
        let n = bad.len();
        bad[n - 10] ^= 0xff; // in the last file's footer
        let mut inbox = Inbox::new(Some(&store));
        inbox.feed(&bad);
        assert!(inbox.finish().is_err());
        assert!(!dst.path().join("s.ckpt.2").exists());
        let dst = tempfile::tempdir().unwrap();
        let store = Store::new(dst.path(), "s").unwrap();
        let mut inbox = Inbox::new(Some(&store));
        inbox.feed(&whole[..whole.len() / 2]);
        assert!(inbox.finish().unwrap_err().contains("cut short"));
        let left: Vec<_> = std::fs::read_dir(dst.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().contains("ckpt"))
            .collect();
        assert!(
            left.iter().all(|n| {
                let n = n.to_string_lossy();
                !n.starts_with("s.ckpt.2") && !n.contains(".tmp.")
            }),
            "{left:?}"
        );
    }
}
