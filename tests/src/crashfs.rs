//! Power-loss testing in the manner of ALICE and CrashMonkey: a [`Recorder`] file-system
//! backend (installed with `ckpt_engine::vfs::install`) performs the engine's operations on the
//! real disk and logs each one under a root directory; [`crash_states`] then enumerates the
//! directory trees that a power loss at any point of that log could leave.
//!
//! The model is the conservative one that POSIX promises:
//! - a write survives only if its file was fsynced (`sync_data`/`sync_all`) after it; any
//!   subset of the writes not yet synced may be lost;
//! - a directory operation (create, rename, link, unlink, mkdir) survives only if its parent
//!   directory (both parents, for a rename) was fsynced after it; any subset of the others may
//!   be undone;
//! - data belongs to the file (inode), not to its name: a rename carries it along.
//!
//! Exploring every subset is exponential, so [`crash_states`] takes, at every crash point:
//! every subset of the pending directory operations when there are at most
//! [`ALL_SUBSETS_UP_TO`] of them (else all, none, each prefix and each one alone undone or
//! kept), crossed with the writes kept all, none, by prefix or with one write lost (prefixes
//! and single losses sampled evenly, at most [`MAX_SAMPLES`] of each, when there are more);
//! then it removes duplicate states.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ckpt_engine::vfs::{RealFs, Vfs, VfsFile};

/// Pending directory operations up to this many are explored in every subset.
pub const ALL_SUBSETS_UP_TO: usize = 6;

/// A file's identity in the model (its inode).
type Ino = u64;

/// One logged operation; paths are relative to the recorder's root.
#[derive(Debug, Clone)]
pub enum Op {
    /// A new name `path` for a new, empty file `ino`.
    Create {
        /// The new name.
        path: PathBuf,
        /// The new file.
        ino: Ino,
    },
    /// Bytes written to file `ino` at `offset`.
    Write {
        /// The file.
        ino: Ino,
        /// Where.
        offset: u64,
        /// What.
        data: Arc<Vec<u8>>,
    },
    /// An fsync or fdatasync of file `ino`.
    Sync {
        /// The file.
        ino: Ino,
    },
    /// A rename (replacing or not; the engine checks the no-replace case itself).
    Rename {
        /// Old name.
        from: PathBuf,
        /// New name.
        to: PathBuf,
    },
    /// A hard link.
    Link {
        /// Existing name.
        from: PathBuf,
        /// New name.
        to: PathBuf,
    },
    /// A name removed.
    Unlink {
        /// The name.
        path: PathBuf,
    },
    /// A directory created.
    Mkdir {
        /// The directory.
        path: PathBuf,
    },
    /// An fsync of a directory.
    SyncDir {
        /// The directory.
        path: PathBuf,
    },
    /// A point the test marked (for example "version 3 returned"): not a file operation.
    Mark(String),
}

impl Op {
    /// The directories whose fsync makes this directory operation durable (none for data
    /// operations).
    fn parents(&self) -> Vec<PathBuf> {
        let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
        match self {
            Op::Create { path, .. } | Op::Unlink { path } | Op::Mkdir { path } => {
                vec![parent(path)]
            }
            Op::Rename { from, to } | Op::Link { from, to } => {
                let mut v = vec![parent(from), parent(to)];
                v.dedup();
                v
            }
            _ => Vec::new(),
        }
    }

    fn is_dir_op(&self) -> bool {
        matches!(
            self,
            Op::Create { .. }
                | Op::Rename { .. }
                | Op::Link { .. }
                | Op::Unlink { .. }
                | Op::Mkdir { .. }
        )
    }
}

/// A node of a directory tree in the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Node {
    Dir,
    File(Ino),
}

/// A directory tree: names (relative paths) and file contents.
#[derive(Debug, Clone, Default)]
struct Tree {
    names: BTreeMap<PathBuf, Node>,
    data: HashMap<Ino, Arc<Vec<u8>>>,
}

impl Tree {
    fn apply(&mut self, op: &Op) {
        let parent_ok = |names: &BTreeMap<PathBuf, Node>, p: &Path| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => names.get(d) == Some(&Node::Dir),
            _ => true,
        };
        match op {
            Op::Create { path, ino } => {
                if parent_ok(&self.names, path) && !self.names.contains_key(path) {
                    self.names.insert(path.clone(), Node::File(*ino));
                }
                self.data.entry(*ino).or_default();
            }
            Op::Write { ino, offset, data } => {
                let f = Arc::make_mut(self.data.entry(*ino).or_default());
                let end = *offset as usize + data.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[*offset as usize..end].copy_from_slice(data);
            }
            Op::Rename { from, to } => {
                if parent_ok(&self.names, to) {
                    if let Some(n) = self.names.remove(from) {
                        self.names.insert(to.clone(), n);
                    }
                }
            }
            Op::Link { from, to } => {
                if let Some(n) = self.names.get(from).cloned() {
                    if parent_ok(&self.names, to) && !self.names.contains_key(to) {
                        self.names.insert(to.clone(), n);
                    }
                }
            }
            Op::Unlink { path } => {
                if matches!(self.names.get(path), Some(Node::File(_))) {
                    self.names.remove(path);
                }
            }
            Op::Mkdir { path } => {
                if parent_ok(&self.names, path) {
                    self.names.entry(path.clone()).or_insert(Node::Dir);
                }
            }
            Op::Sync { .. } | Op::SyncDir { .. } | Op::Mark(_) => {}
        }
    }

    /// A digest of what a reader would see: names, and each named file's bytes.
    fn digest(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for (p, n) in &self.names {
            h.update(p.as_os_str().as_encoded_bytes());
            match n {
                Node::Dir => {
                    h.update(b"\0d\0");
                }
                Node::File(ino) => {
                    h.update(b"\0f\0");
                    let d = self.data.get(ino).map(|d| d.as_slice()).unwrap_or(&[]);
                    h.update(&(d.len() as u64).to_le_bytes());
                    h.update(d);
                }
            }
        }
        *h.finalize().as_bytes()
    }

    /// Writes the tree into the empty directory `dir` (directories 0700, files 0600).
    fn materialise(&self, dir: &Path) -> io::Result<()> {
        for (p, n) in &self.names {
            let at = dir.join(p);
            match n {
                Node::Dir => std::fs::DirBuilder::new().mode(0o700).create(&at)?,
                Node::File(ino) => {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&at)?;
                    if let Some(d) = self.data.get(ino) {
                        f.write_all(d)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Log {
    ops: Vec<Op>,
    next_ino: Ino,
    /// The file each recorded name refers to now.
    inos: HashMap<PathBuf, Ino>,
}

/// A [`Vfs`] that performs every operation on the real file system and logs those under its
/// root. Take it apart with [`Recorder::finish`].
#[derive(Debug)]
pub struct Recorder {
    root: PathBuf,
    initial: Tree,
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    /// Snapshots the tree under `root` (taken as durable: the state before the operation under
    /// test) and starts logging.
    pub fn new(root: &Path) -> io::Result<Recorder> {
        let root = root.canonicalize()?;
        let mut initial = Tree::default();
        let mut log = Log::default();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for e in std::fs::read_dir(root.join(&rel))? {
                let e = e?;
                let p = rel.join(e.file_name());
                let t = e.file_type()?;
                if t.is_dir() {
                    initial.names.insert(p.clone(), Node::Dir);
                    stack.push(p);
                } else if t.is_file() {
                    let ino = log.next_ino;
                    log.next_ino += 1;
                    initial.names.insert(p.clone(), Node::File(ino));
                    initial.data.insert(ino, Arc::new(std::fs::read(e.path())?));
                    log.inos.insert(p, ino);
                }
            }
        }
        Ok(Recorder {
            root,
            initial,
            log: Arc::new(Mutex::new(log)),
        })
    }

    /// Logs a mark, for example when an operation under test has returned: [`CrashState`]s
    /// say which marks come before their crash point.
    pub fn mark(&self, label: &str) {
        self.lock().ops.push(Op::Mark(label.to_string()));
    }

    /// The operations logged so far.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().ops.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        match self.log.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// `path` relative to the root, if it is under it.
    fn rel(&self, path: &Path) -> Option<PathBuf> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir().ok()?.join(path)
        };
        // The parent may not exist yet (mkdir); canonicalise what does.
        let (dir, name) = (abs.parent()?, abs.file_name());
        let dir = dir.canonicalize().ok()?;
        let full = match name {
            Some(n) => dir.join(n),
            None => dir,
        };
        full.strip_prefix(&self.root).ok().map(Path::to_path_buf)
    }

    fn record(&self, op: Op) {
        let mut log = self.lock();
        match &op {
            Op::Create { path, ino } => {
                log.inos.insert(path.clone(), *ino);
            }
            Op::Rename { from, to } => {
                if let Some(i) = log.inos.remove(from) {
                    log.inos.insert(to.clone(), i);
                }
            }
            Op::Link { from, to } => {
                if let Some(i) = log.inos.get(from).copied() {
                    log.inos.insert(to.clone(), i);
                }
            }
            Op::Unlink { path } => {
                log.inos.remove(path);
            }
            _ => {}
        }
        log.ops.push(op);
    }

    fn new_ino(&self) -> Ino {
        let mut log = self.lock();
        log.next_ino += 1;
        log.next_ino
    }

    fn wrap(&self, inner: Box<dyn VfsFile>, ino: Ino, offset: u64) -> Box<dyn VfsFile> {
        Box::new(RecFile {
            inner,
            ino,
            offset,
            log: Arc::clone(&self.log),
        })
    }
}

struct RecFile {
    inner: Box<dyn VfsFile>,
    ino: Ino,
    offset: u64,
    log: Arc<Mutex<Log>>,
}

impl RecFile {
    fn push(&self, op: Op) {
        match self.log.lock() {
            Ok(mut g) => g.ops.push(op),
            Err(p) => p.into_inner().ops.push(op),
        }
    }
}

impl Write for RecFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.push(Op::Write {
            ino: self.ino,
            offset: self.offset,
            data: Arc::new(buf[..n].to_vec()),
        });
        self.offset += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl VfsFile for RecFile {
    fn sync_data(&mut self) -> io::Result<()> {
        self.inner.sync_data()?;
        self.push(Op::Sync { ino: self.ino });
        Ok(())
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.inner.sync_all()?;
        self.push(Op::Sync { ino: self.ino });
        Ok(())
    }
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.start_writeback(offset, len)
    }
}

impl Vfs for Recorder {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let f = RealFs.create_new(path)?;
        match self.rel(path) {
            Some(rel) => {
                let ino = self.new_ino();
                self.record(Op::Create { path: rel, ino });
                Ok(self.wrap(f, ino, 0))
            }
            None => Ok(f),
        }
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let existed = std::fs::symlink_metadata(path).map(|m| m.len()).ok();
        let f = RealFs.open_append(path)?;
        let Some(rel) = self.rel(path) else {
            return Ok(f);
        };
        let known = self.lock().inos.get(&rel).copied();
        let ino = match (existed, known) {
            (Some(_), Some(ino)) => ino,
            _ => {
                let ino = self.new_ino();
                self.record(Op::Create { path: rel, ino });
                ino
            }
        };
        Ok(self.wrap(f, ino, existed.unwrap_or(0)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)?;
        if let (Some(from), Some(to)) = (self.rel(from), self.rel(to)) {
            self.record(Op::Rename { from, to });
        }
        Ok(())
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename_noreplace(from, to)?;
        if let (Some(from), Some(to)) = (self.rel(from), self.rel(to)) {
            self.record(Op::Rename { from, to });
        }
        Ok(())
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.hard_link(from, to)?;
        if let (Some(from), Some(to)) = (self.rel(from), self.rel(to)) {
            self.record(Op::Link { from, to });
        }
        Ok(())
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let rel = self.rel(path);
        RealFs.remove_file(path)?;
        if let Some(path) = rel {
            self.record(Op::Unlink { path });
        }
        Ok(())
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        RealFs.create_dir(path)?;
        if let Some(path) = self.rel(path) {
            self.record(Op::Mkdir { path });
        }
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        RealFs.sync_dir(path)?;
        if let Some(path) = self.rel(path) {
            self.record(Op::SyncDir { path });
        }
        Ok(())
    }
}

/// One state a power loss could leave.
#[derive(Debug)]
pub struct CrashState {
    /// How many logged operations had been issued at the crash.
    pub point: usize,
    /// The marks logged before the crash point.
    pub marks: BTreeSet<String>,
    /// How many pending directory operations were undone, and writes lost.
    pub undone: (usize, usize),
    tree: Tree,
}

impl CrashState {
    /// Writes the state into the empty directory `dir`.
    pub fn materialise(&self, dir: &Path) -> io::Result<()> {
        self.tree.materialise(dir)
    }
}

/// What [`crash_states`] explored.
#[derive(Debug, Default, Clone, Copy)]
pub struct Explored {
    /// Operations in the log (marks excluded).
    pub ops: usize,
    /// Crash points (one before each operation, and one after the last).
    pub points: usize,
    /// States generated, duplicates included.
    pub generated: usize,
    /// Distinct states.
    pub distinct: usize,
}

/// At most this many prefixes, and this many single losses, are tried per crash point.
pub const MAX_SAMPLES: usize = 24;

/// `n` indices 0..n, or `MAX_SAMPLES` of them evenly spread (first and last included).
fn sample(n: usize) -> Vec<usize> {
    if n <= MAX_SAMPLES {
        return (0..n).collect();
    }
    let mut v: Vec<usize> = (0..MAX_SAMPLES)
        .map(|k| k * (n - 1) / (MAX_SAMPLES - 1))
        .collect();
    v.dedup();
    v
}

/// Choices of which pending items to keep: `n` items, each choice a keep-mask.
fn choices(n: usize, all_subsets: bool) -> Vec<Vec<bool>> {
    let mut out = Vec::new();
    if all_subsets && n <= ALL_SUBSETS_UP_TO {
        for m in 0..(1u32 << n) {
            out.push((0..n).map(|i| m & (1 << i) != 0).collect());
        }
        return out;
    }
    for len in sample(n + 1) {
        out.push((0..n).map(|i| i < len).collect());
    }
    for lost in sample(n) {
        out.push((0..n).map(|i| i != lost).collect());
    }
    if all_subsets {
        for kept in sample(n) {
            out.push((0..n).map(|i| i == kept).collect());
        }
    }
    out
}

/// Every distinct crash state of the recorded run, in crash-point order.
pub fn crash_states(rec: &Recorder) -> (Vec<CrashState>, Explored) {
    let ops = rec.ops();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut explored = Explored {
        ops: ops.iter().filter(|o| !matches!(o, Op::Mark(_))).count(),
        ..Explored::default()
    };
    for point in 0..=ops.len() {
        if point > 0 && matches!(ops[point - 1], Op::Mark(_)) {
            continue;
        }
        explored.points += 1;
        let issued = &ops[..point];
        // Durable: a write followed by a sync of its file; a directory operation followed by
        // an fsync of every directory it touches.
        let durable: Vec<bool> = issued
            .iter()
            .enumerate()
            .map(|(i, op)| match op {
                Op::Write { ino, .. } => issued[i + 1..]
                    .iter()
                    .any(|o| matches!(o, Op::Sync { ino: j } if j == ino)),
                o if o.is_dir_op() => o.parents().iter().all(|d| {
                    issued[i + 1..]
                        .iter()
                        .any(|o| matches!(o, Op::SyncDir { path } if path == d))
                }),
                _ => true,
            })
            .collect();
        let pending_dir: Vec<usize> = (0..point)
            .filter(|&i| !durable[i] && issued[i].is_dir_op())
            .collect();
        let pending_write: Vec<usize> = (0..point)
            .filter(|&i| !durable[i] && matches!(issued[i], Op::Write { .. }))
            .collect();
        let dir_choices = choices(pending_dir.len(), true);
        let write_choices = choices(pending_write.len(), false);
        let all_d = vec![true; pending_dir.len()];
        let none_d = vec![false; pending_dir.len()];
        let all_w = vec![true; pending_write.len()];
        let mut combos: Vec<(&[bool], &[bool])> = Vec::new();
        for d in &dir_choices {
            combos.push((d, &all_w));
        }
        for w in &write_choices {
            combos.push((&all_d, w));
            combos.push((&none_d, w));
        }
        let marks: BTreeSet<String> = issued
            .iter()
            .filter_map(|o| match o {
                Op::Mark(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        for (d, w) in combos {
            explored.generated += 1;
            let mut skip = vec![false; point];
            for (k, &i) in pending_dir.iter().enumerate() {
                skip[i] = !d[k];
            }
            for (k, &i) in pending_write.iter().enumerate() {
                skip[i] = !w[k];
            }
            let mut tree = rec.initial.clone();
            for (i, op) in issued.iter().enumerate() {
                if !skip[i] {
                    tree.apply(op);
                }
            }
            if seen.insert(tree.digest()) {
                out.push(CrashState {
                    point,
                    marks: marks.clone(),
                    undone: (
                        d.iter().filter(|k| !**k).count(),
                        w.iter().filter(|k| !**k).count(),
                    ),
                    tree,
                });
            }
        }
    }
    explored.distinct = out.len();
    (out, explored)
}
