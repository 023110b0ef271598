//! A store is a directory holding chains of version files. This module owns naming,
//! listing, locking and the atomic commit (temporary file, fsync, rename, directory fsync).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

pub use crate::format::names::{
    check_chain_name, check_file_name, parse_version_file_name, version_file_name, Naming,
};

/// One chain in one directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    name: String,
    naming: Naming,
}

/// Holds the writer lock of a chain for as long as it lives.
#[derive(Debug)]
pub struct WriterLock {
    _lock: Flock<File>,
}

impl Store {
    /// Names a chain in a directory. Checks the name; does not touch the disk.
    pub fn new(dir: impl Into<PathBuf>, name: &str) -> Result<Store> {
        Store::with_naming(dir, name, Naming::Ckpt)
    }

    /// Names a chain in a directory whose files are named the `naming` way.
    pub fn with_naming(dir: impl Into<PathBuf>, name: &str, naming: Naming) -> Result<Store> {
        check_chain_name(name)?;
        Ok(Store {
            dir: dir.into(),
            name: name.to_string(),
            naming,
        })
    }

    /// Opens the only chain in `dir`, or the one named `name`. Fails if `name` is `None`
    /// and the directory holds no chain or several.
    pub fn discover(dir: impl Into<PathBuf>, name: Option<&str>) -> Result<Store> {
        let dir = dir.into();
        if let Some(n) = name {
            // An unreadable directory fails later, at the first use, with its own error.
            let Ok(chains) = chains_in(&dir) else {
                return Store::new(dir, n);
            };
            let naming = chains
                .iter()
                .find(|(c, _)| c == n)
                .map_or(Naming::Ckpt, |(_, naming)| *naming);
            return Store::with_naming(dir, n, naming);
        }
        let chains = chains_in(&dir)?;
        match chains.as_slice() {
            [(one, naming)] => Store::with_naming(dir, one, *naming),
            [] => Err(Error::NotFound {
                dir,
                what:
                    "no checkpoint files (<name>.ckpt.<N>, or VeloC's <name>-<rank>-<V>.dat) found"
                        .into(),
            }),
            many => Err(Error::NotFound {
                dir,
                what: format!(
                    "holds several chains ({}); choose one with --name",
                    many.iter()
                        .map(|(c, _)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chain name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the store names its files.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// The file name of version `version`.
    pub fn file_name(&self, version: u64) -> String {
        self.naming.file_name(&self.name, version)
    }

    /// Path of version `version`'s file.
    pub fn path_of(&self, version: u64) -> PathBuf {
        self.dir.join(self.file_name(version))
    }

    /// Warns (through `tracing`) when others may write the store directory: anyone who can
    /// could plant files or links in it. (ckpt creates its directories mode 0700.)
    pub(crate) fn warn_if_shared(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&self.dir)
            .map_err(|e| Error::io(&self.dir, "stat", e))?
            .permissions()
            .mode();
        if mode & 0o022 != 0 {
            tracing::warn!(
                "{}: the store directory is writable by others (mode {:o}); anyone who can \
                 write it can plant files in it. Use a directory only you can write (0700).",
                self.dir.display(),
                mode & 0o7777
            );
        }
        Ok(())
    }

    /// Committed version numbers of this chain, ascending.
    pub fn versions(&self) -> Result<Vec<u64>> {
        let mut v: Vec<u64> = list_dir(&self.dir)?
            .iter()
            .filter_map(|f| self.naming.parse(f))
            .filter(|(n, _)| *n == self.name)
            .map(|(_, v)| v)
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Version `version`, or the newest if `None`, and its file: [`Error::NotFound`] if the
    /// chain has no versions or not that one.
    pub fn resolve(&self, version: Option<u64>) -> Result<(u64, PathBuf)> {
        let version = match version {
            Some(v) => v,
            None => self.latest()?.ok_or_else(|| Error::NotFound {
                dir: self.dir.clone(),
                what: format!("no versions of chain {:?}", self.name),
            })?,
        };
        let path = self.path_of(version);
        if !exists(&path)? {
            return Err(Error::NotFound {
                dir: self.dir.clone(),
                what: format!("no version {version} of chain {:?}", self.name),
            });
        }
        self.check_member(&path)?;
        Ok((version, path))
    }

    /// The newest committed version, if any.
    pub fn latest(&self) -> Result<Option<u64>> {
        Ok(self.versions()?.last().copied())
    }

    /// Leftover temporary files of this chain (from crashed checkpoints or compactions).
    pub fn temp_files(&self) -> Result<Vec<PathBuf>> {
        // `.<file name>.tmp.<pid>.<hex>`, where the file name is one of this chain's.
        let ours = |f: &str| {
            f.strip_prefix('.')
                .and_then(|f| f.split_once(".tmp."))
                .and_then(|(file, _)| self.naming.parse(file))
                .is_some_and(|(n, _)| n == self.name)
        };
        Ok(list_dir(&self.dir)?
            .into_iter()
            .filter(|f| ours(f))
            .map(|f| self.dir.join(f))
            .collect())
    }

    /// Creates the directory (and missing parents) if needed, durably: each new directory
    /// mode 0700, its parent fsynced after the `mkdir`.
    pub fn create_dir(&self) -> Result<()> {
        create_dir_durable(&self.dir)
    }

    fn lock_path(&self, kind: &str) -> PathBuf {
        self.dir.join(format!(".{}.{kind}.lock", self.name))
    }

    /// Tries to take an exclusive lock of `kind` for up to `wait`.
    fn try_lock(&self, kind: &str, wait: std::time::Duration) -> Result<Flock<File>> {
        lock_exclusive(&self.lock_path(kind), &self.name, wait)
    }

    /// Takes the chain's writer lock: only one process may write a chain. Waits up to two
    /// seconds (the compactor holds it briefly while it removes leftover temporary files).
    pub fn lock_writer(&self) -> Result<WriterLock> {
        Ok(WriterLock {
            _lock: self.try_lock("writer", std::time::Duration::from_secs(2))?,
        })
    }

    /// Takes the writer lock only if it is free right now (the compactor uses this to know
    /// that no writer is active, so temporary files are garbage).
    pub fn try_lock_writer_now(&self) -> Result<Option<WriterLock>> {
        match self.try_lock("writer", std::time::Duration::ZERO) {
            Ok(l) => Ok(Some(WriterLock { _lock: l })),
            Err(Error::Locked { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the chain's commit lock, waiting for it. Writers hold it from checking that the
    /// files their new version references still exist until the version is renamed into
    /// place; the compactor holds it for one rename or one unlink at a time.
    pub(crate) fn lock_commit(&self) -> Result<Flock<File>> {
        let path = self.lock_path("commit");
        let f = open_lock_file(&path)?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| Error::io(&path, "lock", e.into()))
    }

    /// Takes the chain's compaction lock without waiting: one compactor at a time.
    pub(crate) fn lock_compact(&self) -> Result<Flock<File>> {
        self.try_lock("compact", std::time::Duration::ZERO)
    }

    /// The chain's membership record, `.<name>.roots`: the file ids of the full versions
    /// this store's writers committed (hex, one per line), so that a full version copied in
    /// from another store with the same chain name is refused.
    fn roots_path(&self) -> PathBuf {
        self.dir.join(format!(".{}.roots", self.name))
    }

    /// The recorded file ids, or `None` if the store has no membership record (written by
    /// an older ckpt, or a copy made without it): then nothing is checked.
    fn roots(&self) -> Result<Option<Vec<[u8; 16]>>> {
        let p = self.roots_path();
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&p, "read", e)),
        };
        let mut ids = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let b = crate::format::unhex(line.trim())
                .filter(|b| b.len() == 16)
                .ok_or_else(|| {
                    Error::corrupt(&p, "membership record", format!("bad line {line:?}"))
                })?;
            let mut id = [0u8; 16];
            id.copy_from_slice(&b);
            ids.push(id);
        }
        Ok(Some(ids))
    }

    /// Appends `ids` to the membership record, durably (created 0600 if missing; its
    /// directory fsynced when created). Writers call it, holding the writer lock, before a
    /// full version's commit rename, and at open to adopt the versions already there.
    pub(crate) fn record_roots(&self, ids: &[[u8; 16]]) -> Result<()> {
        use std::io::Write;
        let p = self.roots_path();
        let created = !exists(&p)?;
        let mut f = crate::vfs::current()
            .open_append(&p)
            .map_err(|e| Error::io(&p, "open", e))?;
        let text: String = ids
            .iter()
            .map(|id| format!("{}\n", crate::format::hex(id)))
            .collect();
        f.write_all(text.as_bytes())
            .map_err(|e| Error::io(&p, "write", e))?;
        f.sync_data().map_err(|e| Error::io(&p, "fsync", e))?;
        if created {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// At a writer's open: a store without a membership record adopts every version it
    /// holds now (trust on first use); later full versions are added as they commit.
    pub(crate) fn adopt_members(&self) -> Result<()> {
        if exists(&self.roots_path())? {
            return Ok(());
        }
        let mut ids = Vec::new();
        for v in self.versions()? {
            let (h, _) = crate::read::read_header_footer(&self.path_of(v))?;
            ids.push(h.file_id);
        }
        self.record_roots(&ids)
    }

    /// Checks that version file `path` belongs to this store: following its parents within
    /// the store, it reaches a version the membership record lists, a parent that is gone
    /// (retired by compaction), or a parent slot holding another file (which the reference
    /// checks then report). A full version from another store of the same chain name, or a
    /// lineage ending in one, is refused. Stores without a record are not checked.
    pub fn check_member(&self, path: &Path) -> Result<()> {
        let Some(roots) = self.roots()? else {
            return Ok(());
        };
        let mut cur = path.to_path_buf();
        for _ in 0..100_000 {
            let (h, _) = crate::read::read_header_footer(&cur)?;
            if roots.contains(&h.file_id) {
                return Ok(());
            }
            let Some(parent) = h.parent else {
                return Err(Error::corrupt(
                    path,
                    "header",
                    format!(
                        "a full version this store never wrote (its file id is not in {}): \
                         copied in from another store of chain {:?}?",
                        self.roots_path().display(),
                        self.name
                    ),
                ));
            };
            let pp = self.path_of(parent.version);
            if parent.version >= h.version || !exists(&pp)? {
                return Ok(()); // history cut by compaction
            }
            let (ph, _) = crate::read::read_header_footer(&pp)?;
            if ph.file_id != parent.identity.file_id {
                // Another file sits in the parent's slot: the reference checks of a restore
                // or verify name it precisely (a replaced reference), so stop here.
                return Ok(());
            }
            cur = pp;
        }
        Ok(())
    }

    /// Starts receiving version file `name` from another copy of this chain (a partner's,
    /// over MPI), written piece by piece through [`Incoming`]: a temporary file (mode 0600)
    /// until [`Incoming::finish`] makes it durable under `name` (replacing a file of that
    /// name). `name` must be one of this chain's version file names.
    pub fn incoming(&self, name: &str) -> Result<Incoming> {
        let ok = name
            .strip_prefix(&format!("{}.ckpt.", self.name))
            .is_some_and(|n| n.parse::<u64>().is_ok());
        if !ok {
            return Err(Error::InvalidName {
                name: name.to_string(),
                why: "not a version file name of this chain",
            });
        }
        create_dir_durable(&self.dir)?;
        let tmp = temp_name(&self.dir, name)?;
        let file = create_new(&tmp)?;
        Ok(Incoming {
            store: self.clone(),
            dst: self.dir.join(name),
            tmp,
            file: Some(file),
        })
    }

    /// A fresh temporary path for writing version `version`. Temporary names start with `.`
    /// so that no listing ever mistakes them for a committed version.
    pub fn temp_path(&self, version: u64) -> Result<PathBuf> {
        temp_name(&self.dir, &self.file_name(version))
    }
}

/// A version file being received into a store ([`Store::incoming`]). Dropped unfinished, its
/// temporary file is removed.
pub struct Incoming {
    store: Store,
    dst: PathBuf,
    tmp: PathBuf,
    file: Option<Box<dyn crate::vfs::VfsFile>>,
}

impl Incoming {
    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        match self.file.as_mut() {
            Some(f) => f
                .write_all(bytes)
                .map_err(|e| Error::io(&self.tmp, "write", e)),
            None => Ok(()),
        }
    }

    /// Makes the file durable under its name: fsync, a check of its header and footer (a
    /// damaged transfer is refused and removed), rename (replacing), directory fsync; a full
    /// version joins the store's membership record. Returns its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let Some(mut f) = self.file.take() else {
            return Ok(self.dst.clone());
        };
        let placed = (|| {
            f.sync_all().map_err(|e| Error::io(&self.tmp, "fsync", e))?;
            drop(f);
            // A damaged or truncated transfer never takes the name.
            let (h, _) = crate::read::read_header_footer(&self.tmp)?;
            crate::vfs::current()
                .rename(&self.tmp, &self.dst)
                .map_err(|e| Error::io(&self.dst, "rename into place", e))?;
            Ok(h)
        })();
        let h = match placed {
            Ok(h) => h,
            Err(e) => {
                let _ = crate::vfs::current().remove_file(&self.tmp);
                return Err(e);
            }
        };
        sync_dir(&self.store.dir)?;
        if h.parent.is_none() {
            self.store.record_roots(&[h.file_id])?;
        }
        Ok(self.dst.clone())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = crate::vfs::current().remove_file(&self.tmp);
        }
    }
}

/// Whether `path` exists: `Ok(false)` only when it does not; any other failure to look
/// (permissions, I/O) is an error naming the path, never taken for "not there".
pub(crate) fn exists(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, "stat", e)),
    }
}

/// Refuses `path` if it is a symbolic link: directories and files inside a store are never
/// reached through one (a planted `ranks -> elsewhere` must not redirect a job's writes).
pub(crate) fn no_symlink(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::io(
            path,
            "open",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "is a symbolic link; ckpt never follows one inside a store",
            ),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, "stat", e)),
    }
}

/// A fresh temporary name in `dir` for the file `name`: `.<name>.tmp.<pid>.<random hex>`.
/// It starts with `.`, so no listing mistakes it for a committed file, and the pid tells
/// whose it is.
pub(crate) fn temp_name(dir: &Path, name: &str) -> Result<PathBuf> {
    let mut r = [0u8; 6];
    getrandom::fill(&mut r).map_err(|e| {
        Error::io(
            dir,
            "draw a temporary name",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        crate::format::hex(&r)
    )))
}

/// Whether the process that named temporary file `path` (`….tmp.<pid>.<hex>`) still runs.
/// Unparseable names count as alive: only a temporary known to be dead is garbage.
pub(crate) fn temp_owner_alive(path: &Path) -> bool {
    let pid = path
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.rsplit('.').nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    match pid {
        Some(pid) => pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists(),
        None => true,
    }
}

/// Opens (creating, mode 0600) a lock file, never following a symlink planted at its name.
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, "open lock file", e))
}

/// Takes an exclusive `flock` on the lock file `path`, retrying for up to `wait`; gives
/// [`Error::Locked`] (naming chain `name`) if it is still held then.
pub(crate) fn lock_exclusive(
    path: &Path,
    name: &str,
    wait: std::time::Duration,
) -> Result<Flock<File>> {
    let mut f = open_lock_file(path)?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                record_holder(&lock);
                return Ok(lock);
            }
            Err((back, Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                f = back;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                let holder = fs::read_to_string(path)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok());
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    holder,
                });
            }
            Err((_, e)) => return Err(Error::io(path, "lock", e.into())),
        }
    }
}

/// Writes this process's pid into a lock file it now holds, so that a process refused the
/// lock can say who holds it. Best effort: the lock, not the text, is what excludes. (The
/// lock dies with its process, so a dead holder's pid is simply overwritten.)
fn record_holder(lock: &Flock<File>) {
    use std::io::{Seek, Write};
    let mut f: &File = lock;
    let _ = f.set_len(0);
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = writeln!(f, "{}", std::process::id());
}

/// [`lock_exclusive`] without waiting.
pub(crate) fn lock_exclusive_now(path: &Path, name: &str) -> Result<Flock<File>> {
    lock_exclusive(path, name, std::time::Duration::ZERO)
}

/// Creates directory `dir` and any missing parents, durably and mode 0700 (see
/// `create_dir_durable`); existing directories are left as they are.
pub fn create_dir(dir: &Path) -> Result<()> {
    create_dir_durable(dir)
}

/// Creates directory `dir` and any missing parents, each mode 0700 (whatever the umask
/// allows), and fsyncs the parent of each directory it creates, so that a power loss cannot
/// lose a directory that holds committed files. Existing directories are left as they are.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() {
            break;
        }
        match fs::symlink_metadata(d) {
            Ok(m) if m.is_dir() => break,
            Ok(m) if m.file_type().is_symlink() && d.is_dir() => break,
            Ok(_) => {
                return Err(Error::io(
                    d,
                    "create directory",
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a file that is not a directory is in the way",
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(d),
            Err(e) => return Err(Error::io(d, "stat", e)),
        }
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match crate::vfs::current().create_dir(d) {
            Ok(()) => {}
            // Another process created it meanwhile: it still needs the parent's fsync.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(Error::io(d, "create directory", e)),
        }
        crate::fault::record("mkdir", d);
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

/// Names of the chains present in `dir`, and how their files are named, sorted.
pub(crate) fn chains_in(dir: &Path) -> Result<Vec<(String, Naming)>> {
    let mut names: Vec<(String, Naming)> = list_dir(dir)?
        .iter()
        .filter_map(|f| Naming::parse_any(f))
        .map(|(n, _, naming)| (n.to_string(), naming))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(dir, "read directory", e))?;
        if let Some(s) = ent.file_name().to_str() {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

/// Writes `bytes` as the new file `dir/name` atomically: a temporary file (mode 0600) is
/// written and fsynced, renamed to `name` without replacing anything, and the directory is
/// fsynced. Fails if `name` exists.
pub(crate) fn atomic_write_new(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    check_file_name(name).map_err(|_| Error::InvalidName {
        name: name.to_string(),
        why: "not a plain file name",
    })?;
    let tmp = temp_name(dir, name)?;
    let result = (|| {
        let mut f = create_new(&tmp)?;
        f.write_all(bytes)
            .map_err(|e| Error::io(&tmp, "write", e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, "fsync", e))?;
        drop(f);
        commit_rename(&tmp, &dir.join(name))
    })();
    if result.is_err() {
        let _ = crate::vfs::current().remove_file(&tmp);
    }
    result
}

/// Copies file `src` to `dst` atomically and durably: a temporary file in `dst`'s directory
/// (mode 0600, named as `temp_name` names them, so a crash leaves only recognisable
/// garbage) is written, fsynced and renamed over `dst`, and the directory is fsynced. For
/// copies between storage levels; a committed version's copy has the same bytes, so it is
/// the same file wherever it lives.
pub fn copy_file_atomic(src: &Path, dst: &Path) -> Result<u64> {
    let dir = match dst.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = dst
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::InvalidName {
            name: dst.display().to_string(),
            why: "not a plain file name",
        })?;
    let tmp = temp_name(dir, name)?;
    let result = (|| {
        let mut from = File::open(src).map_err(|e| Error::io(src, "open", e))?;
        let mut to = create_new(&tmp)?;
        let n = std::io::copy(&mut from, &mut to).map_err(|e| Error::io(&tmp, "copy into", e))?;
        to.sync_all().map_err(|e| Error::io(&tmp, "fsync", e))?;
        drop(to);
        crate::fault::point("copy");
        crate::vfs::current()
            .rename(&tmp, dst)
            .map_err(|e| Error::io(dst, "rename into place", e))?;
        sync_dir(dir)?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = crate::vfs::current().remove_file(&tmp);
    }
    result
}

/// Removes the temporary files in `dir` whose writing process is gone (crashed copies,
/// checkpoints or commits); returns them.
pub fn remove_dead_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !exists(dir)? {
        return Ok(removed);
    }
    for f in list_dir(dir)? {
        if !(f.starts_with('.') && f.contains(".tmp.")) {
            continue;
        }
        let p = dir.join(&f);
        if temp_owner_alive(&p) {
            continue;
        }
        match crate::vfs::current().remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&p, "remove a dead temporary file", e)),
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Creates a new store file (mode 0600) through the file-system backend, failing if
/// anything exists at that name.
pub(crate) fn create_new(path: &Path) -> Result<Box<dyn crate::vfs::VfsFile>> {
    crate::vfs::current()
        .create_new(path)
        .map_err(|e| Error::io(path, "create", e))
}

/// Creates a new file for writing, mode 0600, failing if it exists. For files outside a
/// store (restore outputs, the bench's scratch files); store files use [`create_new`].
pub(crate) fn create_new_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, "create", e))
}

/// fsyncs a directory, making renames and unlinks in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    crate::vfs::current()
        .sync_dir(dir)
        .map_err(|e| Error::io(dir, "fsync directory", e))?;
    crate::fault::record("fsync-dir", dir);
    Ok(())
}

/// Renames a fully written and fsynced `tmp` to `dst` without ever replacing an existing
/// `dst`, then fsyncs the directory. This is the commit point of a version.
pub(crate) fn commit_rename(tmp: &Path, dst: &Path) -> Result<()> {
    let vfs = crate::vfs::current();
    match vfs
        .rename_noreplace(tmp, dst)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    {
        Ok(()) => {}
        Err(Errno::EEXIST) => return Err(Error::io(
            dst,
            "commit (another file of that name already exists; a committed file is never replaced)",
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        )),
        Err(Errno::EINVAL) | Err(Errno::ENOSYS) => {
            // File systems without RENAME_NOREPLACE: link(2) also refuses to replace.
            vfs.hard_link(tmp, dst)
                .map_err(|e| Error::io(dst, "commit (link)", e))?;
            vfs.remove_file(tmp)
                .map_err(|e| Error::io(tmp, "remove temporary", e))?;
        }
        Err(e) => return Err(Error::io(dst, "commit (rename)", e.into())),
    }
    let dir = dst.parent().unwrap_or(Path::new("."));
    sync_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_version_file_name("a.ckpt.12"), Some(("a", 12)));
        assert_eq!(parse_version_file_name("a.b.ckpt.3"), Some(("a.b", 3)));
        assert_eq!(parse_version_file_name(".a.ckpt.3.tmp.1.ab"), None);
        assert_eq!(parse_version_file_name("a.ckpt.03"), None);
        assert_eq!(parse_version_file_name("a.ckpt.0"), None);
        assert_eq!(parse_version_file_name("a.ckpt."), None);
        assert_eq!(parse_version_file_name("a.ckpt.1x"), None);
        assert!(check_chain_name("../x").is_err());
        assert!(check_chain_name("a/b").is_err());
        assert!(check_chain_name("a..b").is_err());
        assert!(check_chain_name(".hidden").is_err());
        assert!(check_chain_name("heat-rank0").is_ok());
        assert_eq!(Naming::Dat.parse("heat-3-0.dat"), Some(("heat-3", 1)));
        assert_eq!(Naming::Dat.parse("heat-3-12.dat"), Some(("heat-3", 13)));
        assert_eq!(Naming::Dat.parse("heat-3-012.dat"), None);
        assert_eq!(Naming::Dat.parse(".heat-3-1.dat.tmp.1.ab"), None);
        assert_eq!(Naming::Dat.parse("heat.dat"), None);
        assert_eq!(Naming::Dat.file_name("heat-3", 1), "heat-3-0.dat");
        assert_eq!(Naming::parse_any("a.ckpt.2"), Some(("a", 2, Naming::Ckpt)));
        assert_eq!(
            Naming::parse_any("a-1-2.dat"),
            Some(("a-1", 3, Naming::Dat))
        );
    }
}
