//! The native C API, `ckpt_*` (declared in `include/ckpt.h`).

use std::ffi::{c_char, c_int, c_void};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use ckpt_engine::{catalog, Checkpointer, Config};
use mpi::topology::SimpleCommunicator;

use super::{
    c_str, comm_f2c, dup_comm, guard, lock, Failure, Session, CKPT_ERR_ARG, CKPT_ERR_NOT_FOUND,
    CKPT_ERR_STATE, CKPT_SUCCESS,
};
use crate::Job;

/// The communicator a session's job borrows, freed after the job.
struct OwnedComm(*mut SimpleCommunicator);

impl Drop for OwnedComm {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::leak in `init_mpi`, and the only borrower, the
        // session's Job, is declared before this field and so was dropped first.
        let comm = unsafe { Box::from_raw(self.0) };
        if mpi::environment::is_finalized() {
            // MPI_Comm_free after MPI_Finalize is erroneous; MPI has freed it anyway.
            std::mem::forget(comm);
        }
    }
}

enum Native {
    Mpi {
        // Field order matters: the job borrows `_comm` and must be dropped first.
        job: Box<Job<'static, SimpleCommunicator>>,
        _comm: OwnedComm,
    },
    Single(Box<Checkpointer>),
}

impl Native {
    fn engine(&mut self) -> &mut Checkpointer {
        match self {
            Native::Mpi { job, .. } => job.checkpointer(),
            Native::Single(ck) => ck,
        }
    }
}

static NATIVE: Mutex<Option<Session<Native>>> = Mutex::new(None);

fn not_initialized() -> Failure {
    Failure::new(
        CKPT_ERR_STATE,
        "ckpt is not initialized (call ckpt_init first)",
    )
}

/// Runs `f` on the session.
fn with_session(func: &str, f: impl FnOnce(&mut Native) -> Result<c_int, Failure>) -> c_int {
    guard(func, || {
        let mut s = lock(&NATIVE);
        let s = s.as_mut().ok_or_else(not_initialized)?;
        f(&mut s.0)
    })
}

/// The configuration file used when an init is given none.
const CONFIG_VAR: &str = "CKPT_CONFIG";

/// The configuration from the optional file `config` (else the file `CKPT_CONFIG` names).
///
/// # Safety
/// `config` must be null or a NUL-terminated string.
unsafe fn load_config(
    config: *const c_char,
) -> Result<(Config, Option<crate::StorageConfig>), Failure> {
    let from_env = std::env::var_os(CONFIG_VAR);
    let path = if config.is_null() {
        from_env.as_deref().and_then(|p| p.to_str())
    } else {
        // SAFETY: non-null, NUL-terminated by the caller's contract.
        Some(unsafe { c_str(config, "config_file") }?)
    };
    Ok(crate::config::native(path.map(Path::new))?)
}

/// What every init starts from: the session lock (no session open), the store directory,
/// the chain name, the configuration.
type Started<'a> = (
    MutexGuard<'static, Option<Session<Native>>>,
    &'a str,
    &'a str,
    (Config, Option<crate::StorageConfig>),
);

/// The session lock, taken only if no session is open, and the arguments every init takes.
///
/// # Safety
/// `dir` and `name` NUL-terminated strings; `config` null or one.
unsafe fn start<'a>(
    dir: *const c_char,
    name: *const c_char,
    config: *const c_char,
) -> Result<Started<'a>, Failure> {
    let s = lock(&NATIVE);
    if s.is_some() {
        return Err(Failure::new(CKPT_ERR_STATE, "ckpt is already initialized"));
    }
    // SAFETY: the caller's contract for each string.
    unsafe {
        Ok((
            s,
            c_str(dir, "dir")?,
            c_str(name, "name")?,
            load_config(config)?,
        ))
    }
}

/// Starts an MPI session over `comm`.
///
/// # Safety
/// As [`ckpt_init`].
unsafe fn init_mpi(
    comm: mpi::ffi::MPI_Comm,
    dir: *const c_char,
    name: *const c_char,
    config: *const c_char,
) -> Result<c_int, Failure> {
    // SAFETY: the caller's contract for each string.
    let (mut s, dir, name, config) = unsafe { start(dir, name, config) }?;
    // SAFETY: `comm` is a valid communicator (caller's contract).
    let comm = unsafe { dup_comm(comm) }?;
    let comm: &'static SimpleCommunicator = Box::leak(Box::new(comm));
    let owned = OwnedComm(comm as *const SimpleCommunicator as *mut SimpleCommunicator);
    let job = match config {
        (config, Some(storage)) => {
            tracing::info!(
                "{dir}: the configuration file's [storage] table gives the storage levels"
            );
            Job::open_storage(comm, &storage, name, config)?
        }
        (config, None) => Job::open(comm, dir, name, config)?,
    };
    *s = Some(Session(Native::Mpi {
        job: Box::new(job),
        _comm: owned,
    }));
    Ok(CKPT_SUCCESS)
}

/// `int ckpt_init(MPI_Comm comm, const char *dir, const char *name, const char *config_file)`
///
/// # Safety
/// `comm` must be a valid communicator; `dir` and `name` NUL-terminated strings;
/// `config_file` null or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ckpt_init(
    comm: mpi::ffi::MPI_Comm,
    dir: *const c_char,
    name: *const c_char,
    config_file: *const c_char,
) -> c_int {
    // SAFETY: the caller's contract, passed on.
    guard("ckpt_init", || unsafe {
        init_mpi(comm, dir, name, config_file)
    })
}

/// `int ckpt_init_fortran(MPI_Fint comm, ...)`: [`ckpt_init`] with a Fortran communicator.
///
/// # Safety
/// As [`ckpt_init`], with `comm` a valid Fortran communicator handle.
#[no_mangle]
pub unsafe extern "C" fn ckpt_init_fortran(
    comm: c_int,
    dir: *const c_char,
    name: *const c_char,
    config_file: *const c_char,
) -> c_int {
    guard("ckpt_init", || {
        let comm = comm_f2c(comm)?;
        // SAFETY: the caller's contract, passed on.
        unsafe { init_mpi(comm, dir, name, config_file) }
    })
}

/// `int ckpt_init_single(const char *dir, const char *name, const char *config_file)`: a
/// session for one process, without MPI.
///
/// # Safety
/// `dir` and `name` NUL-terminated strings; `config_file` null or one.
#[no_mangle]
pub unsafe extern "C" fn ckpt_init_single(
    dir: *const c_char,
    name: *const c_char,
    config_file: *const c_char,
) -> c_int {
    guard("ckpt_init_single", || {
        // SAFETY: the caller's contract for each string.
        let (mut s, dir, name, (config, storage)) = unsafe { start(dir, name, config_file) }?;
        if storage.is_some() {
            return Err(Failure::new(
                super::CKPT_ERR_CONFIG,
                "a [storage] table needs an MPI session (ckpt_init), not ckpt_init_single",
            ));
        }
        let ck = Checkpointer::open(dir, name, config)?;
        *s = Some(Session(Native::Single(Box::new(ck))));
        Ok(CKPT_SUCCESS)
    })
}

/// `int ckpt_protect(int id, void *ptr, size_t bytes)`.
///
/// # Safety
/// `ptr` must be valid for reads and writes of `bytes` bytes until `ckpt_unprotect(id)` or
/// `ckpt_finalize`, and untouched by other threads during ckpt calls (ckpt.h).
#[no_mangle]
pub unsafe extern "C" fn ckpt_protect(id: c_int, ptr: *mut c_void, bytes: usize) -> c_int {
    with_session("ckpt_protect", |s| {
        let id = region_id(id)?;
        if ptr.is_null() {
            return Err(Failure::new(
                CKPT_ERR_ARG,
                format!("region {id}: null pointer"),
            ));
        }
        let ck = s.engine();
        if let Some((_, len)) = ck.regions().into_iter().find(|(r, _)| *r == id) {
            let same = ck.region_bytes(id).map(|b| b.as_ptr() as usize).ok() == Some(ptr as usize);
            if same && len == bytes {
                return Ok(CKPT_SUCCESS);
            }
            ck.unregister(id)?;
        }
        // SAFETY: the caller's contract (see above) is register_raw's.
        unsafe { ck.register_raw(id, ptr.cast(), bytes) }?;
        Ok(CKPT_SUCCESS)
    })
}

fn region_id(id: c_int) -> Result<u64, Failure> {
    u64::try_from(id).map_err(|_| Failure::new(CKPT_ERR_ARG, format!("region id {id} is negative")))
}

/// `int ckpt_unprotect(int id)`.
#[no_mangle]
pub extern "C" fn ckpt_unprotect(id: c_int) -> c_int {
    with_session("ckpt_unprotect", |s| {
        s.engine().unregister(region_id(id)?)?;
        Ok(CKPT_SUCCESS)
    })
}

/// `int ckpt_checkpoint(uint64_t *version)`: a checkpoint, collective in an MPI session.
///
/// # Safety
/// `version` must be null or valid for writing a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint(version: *mut u64) -> c_int {
    with_session("ckpt_checkpoint", |s| {
        let v = match s {
            Native::Mpi { job, .. } => job.checkpoint()?.version,
            Native::Single(ck) => ck.checkpoint()?.version,
        };
        if !version.is_null() {
            // SAFETY: non-null, and writable by the caller's contract.
            unsafe { version.write(v) };
        }
        Ok(CKPT_SUCCESS)
    })
}

/// `int ckpt_checkpoint_async(uint64_t *version)`: starts a checkpoint and returns once its
/// snapshot is taken; the protected regions may be written at once while the version is
/// written in the background. Stores the version's number in *version (if not NULL). In an
/// MPI session (collective) the previous asynchronous version is committed first, once every
/// rank's flush is durable; if it could not be, this returns the error and starts nothing.
///
/// # Safety
/// `version` must be null or valid for writing a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_checkpoint_async(version: *mut u64) -> c_int {
    with_session("ckpt_checkpoint_async", |s| {
        let v = match s {
            Native::Mpi { job, .. } => job.checkpoint_async()?.version,
            // The engine keeps the outcome for ckpt_wait.
            Native::Single(ck) => ck.checkpoint_async()?.version(),
        };
        if !version.is_null() {
            // SAFETY: non-null, and writable by the caller's contract.
            unsafe { version.write(v) };
        }
        Ok(CKPT_SUCCESS)
    })
}

/// `int ckpt_wait(uint64_t *committed)`: waits until the asynchronous checkpoint in flight
/// (if any) is durable and committed (on every rank, in an MPI session: collective), and
/// stores its version in *committed (0 if none was in flight; if not NULL).
///
/// # Safety
/// `committed` must be null or valid for writing a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_wait(committed: *mut u64) -> c_int {
    with_session("ckpt_wait", |s| {
        let v = match s {
            Native::Mpi { job, .. } => job.wait()?.map(|c| c.version),
            Native::Single(ck) => ck.wait_checkpoint()?.map(|c| c.version),
        };
        if !committed.is_null() {
            // SAFETY: non-null, and writable by the caller's contract.
            unsafe { committed.write(v.unwrap_or(0)) };
        }
        Ok(CKPT_SUCCESS)
    })
}

/// The newest version of a single-process chain that is complete on disk.
fn newest_complete(ck: &Checkpointer) -> Result<Option<u64>, Failure> {
    if let Some(v) = ckpt_engine::restore_version_override()? {
        return Ok(Some(v)); // `ckpt debug` asks for this one
    }
    let store = ck.store();
    for v in store.versions()?.into_iter().rev() {
        match catalog::check_complete(&store.path_of(v)) {
            Ok(_) => return Ok(Some(v)),
            Err(e) => tracing::warn!("version {v} cannot be restored ({e}); trying the one before"),
        }
    }
    Ok(None)
}

/// `int ckpt_restart_test(uint64_t *version)`: the newest version committed on every rank
/// (0 if none), without restoring it. Collective in an MPI session.
///
/// # Safety
/// `version` must be valid for writing a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn ckpt_restart_test(version: *mut u64) -> c_int {
    with_session("ckpt_restart_test", |s| {
        let v = match s {
            Native::Mpi { job, .. } => job.restart_test()?,
            Native::Single(ck) => newest_complete(ck)?,
        };
        if version.is_null() {
            return Err(Failure::new(CKPT_ERR_ARG, "version is a null pointer"));
        }
        // SAFETY: non-null, and writable by the caller's contract.
        unsafe { version.write(v.unwrap_or(0)) };
        Ok(CKPT_SUCCESS)
    })
}

/// `int ckpt_restart(uint64_t version)`: restores `version` (0: the newest committed one)
/// into the protected regions. Collective in an MPI session.
#[no_mangle]
pub extern "C" fn ckpt_restart(version: u64) -> c_int {
    with_session("ckpt_restart", |s| {
        match s {
            Native::Mpi { job, .. } if version == 0 => {
                if job.restart()?.is_none() {
                    return Err(Failure::new(
                        CKPT_ERR_NOT_FOUND,
                        "no version was ever committed",
                    ));
                }
            }
            Native::Mpi { job, .. } => job.restart_version(version)?,
            Native::Single(ck) => {
                let v = match version {
                    0 => newest_complete(ck)?.ok_or_else(|| {
                        Failure::new(
                            CKPT_ERR_NOT_FOUND,
                            format!(
                                "{}: no checkpoint to restart from",
                                ck.store().dir().display()
                            ),
                        )
                    })?,
                    v => v,
                };
                ck.restore(Some(v))?;
            }
        }
        Ok(CKPT_SUCCESS)
    })
}

/// `int ckpt_should_checkpoint(void)`: 1 if a checkpoint was requested (by a signal, on any
/// rank) since the last call, 0 if not, a negative code on error. Collective in an MPI
/// session.
#[no_mangle]
pub extern "C" fn ckpt_should_checkpoint() -> c_int {
    with_session("ckpt_should_checkpoint", |s| {
        Ok(c_int::from(match s {
            Native::Mpi { job, .. } => job.checkpoint_requested(),
            Native::Single(_) => ckpt_engine::signals::checkpoint_requested(),
        }))
    })
}

/// `int ckpt_should_exit(void)`: 1 if the job should stop (a halt request, `ckpt halt DIR`,
/// was honoured at the last checkpoint), 0 if not.
#[no_mangle]
pub extern "C" fn ckpt_should_exit() -> c_int {
    with_session("ckpt_should_exit", |s| {
        Ok(c_int::from(match s {
            Native::Mpi { job, .. } => job.should_exit(),
            Native::Single(_) => false,
        }))
    })
}

/// `int ckpt_catch_signal(int signum)`: makes signal `signum` (SIGUSR1, say) request a
/// checkpoint, seen by `ckpt_should_checkpoint`. Works before `ckpt_init` too.
#[no_mangle]
pub extern "C" fn ckpt_catch_signal(signum: c_int) -> c_int {
    guard("ckpt_catch_signal", || {
        ckpt_engine::signals::install(&[signum])?;
        Ok(CKPT_SUCCESS)
    })
}

/// `int ckpt_finalize(void)`: commits the asynchronous checkpoint in flight, if any (as
/// `ckpt_wait`), then ends the session (collective in an MPI session: frees the session's
/// communicator). The session ends even if that commit fails, and the failure is returned.
/// Never deletes a checkpoint.
#[no_mangle]
pub extern "C" fn ckpt_finalize() -> c_int {
    guard("ckpt_finalize", || {
        let mut s = lock(&NATIVE);
        let mut session = s.take().ok_or_else(not_initialized)?;
        // (On failure `?` returns, and the session, already taken, ends all the same.)
        match &mut session.0 {
            Native::Mpi { job, .. } => drop(job.wait()?),
            Native::Single(ck) => drop(ck.wait_checkpoint()?),
        }
        Ok(CKPT_SUCCESS)
    })
}

/// `const char *ckpt_strerror(int code)`: a static description of an error code.
#[no_mangle]
pub extern "C" fn ckpt_strerror(code: c_int) -> *const c_char {
    super::describe(code).as_ptr()
}

/// `const char *ckpt_last_error(void)`: the message of this thread's last failure, naming
/// what was wrong (empty if none). Valid until this thread's next ckpt call.
#[no_mangle]
pub extern "C" fn ckpt_last_error() -> *const c_char {
    super::last_error()
}
