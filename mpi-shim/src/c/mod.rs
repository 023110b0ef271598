//! The C ABI: the native `ckpt_*` API (`include/ckpt.h`, also the base of the Fortran module
//! `include/ckpt.f90`) and the VeloC-compatible `VELOC_*` API (`include/veloc.h`).
//!
//! All of the crate's `unsafe` code and FFI lives in this module. Every exported function:
//! - catches panics, so that none unwinds into C (it returns an internal-error code);
//! - serializes on one lock per API, so calls from several threads are safe, though
//!   collective calls must still be made in the same order on every rank;
//! - reports a failure as an integer code, with the message logged (through `tracing`, to
//!   stderr unless the application installed its own subscriber; `CKPT_LOG=off|error|warn|
//!   info|debug` sets the level) and kept for `ckpt_last_error()`.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard, Once};

mod group;
pub mod native;
mod veloc;
pub mod veloc_api;

/// Success.
pub const CKPT_SUCCESS: c_int = 0;
/// An argument is invalid (a null pointer, a negative id, an unknown mode, …).
pub const CKPT_ERR_ARG: c_int = -1;
/// A call out of order: not initialized, initialized twice, no region registered, ….
pub const CKPT_ERR_STATE: c_int = -2;
/// An I/O error (the message names the file).
pub const CKPT_ERR_IO: c_int = -3;
/// A checkpoint file is corrupt, truncated or not what its name says.
pub const CKPT_ERR_CORRUPT: c_int = -4;
/// No such version, or no checkpoint at all.
pub const CKPT_ERR_NOT_FOUND: c_int = -5;
/// The registered regions do not match the checkpoint's.
pub const CKPT_ERR_REGION: c_int = -6;
/// The collective operation failed on some rank (the message names each rank and why).
pub const CKPT_ERR_RANKS: c_int = -7;
/// The configuration cannot be used.
pub const CKPT_ERR_CONFIG: c_int = -8;
/// An internal error (a bug): the call was abandoned.
pub const CKPT_ERR_INTERNAL: c_int = -9;

/// The static description of an error code (`ckpt_strerror`).
pub(crate) fn describe(code: c_int) -> &'static CStr {
    match code {
        CKPT_SUCCESS => c"success",
        CKPT_ERR_ARG => c"invalid argument",
        CKPT_ERR_STATE => {
            c"call out of order (not initialized, initialized twice, or nothing registered)"
        }
        CKPT_ERR_IO => c"input/output error",
        CKPT_ERR_CORRUPT => c"checkpoint file corrupt or not what its name says",
        CKPT_ERR_NOT_FOUND => c"no such checkpoint version",
        CKPT_ERR_REGION => c"registered regions do not match the checkpoint",
        CKPT_ERR_RANKS => c"failed on one or more ranks",
        CKPT_ERR_CONFIG => c"unusable configuration",
        CKPT_ERR_INTERNAL => c"internal error",
        _ => c"unknown error code",
    }
}

/// A failure: its code and message.
#[derive(Debug)]
pub(crate) struct Failure {
    code: c_int,
    msg: String,
}

impl Failure {
    pub(crate) fn new(code: c_int, msg: impl Into<String>) -> Failure {
        Failure {
            code,
            msg: msg.into(),
        }
    }
}

/// The code of an engine error.
fn engine_code(e: &ckpt_engine::Error) -> c_int {
    use ckpt_engine::Error as E;
    match e {
        E::Io { .. } | E::Locked { .. } => CKPT_ERR_IO,
        E::Corrupt { .. } | E::ChainMismatch { .. } => CKPT_ERR_CORRUPT,
        E::NotFound { .. } => CKPT_ERR_NOT_FOUND,
        E::Region { .. } | E::RegionMismatch { .. } => CKPT_ERR_REGION,
        E::NoRegions { .. } => CKPT_ERR_STATE,
        E::Config(_) | E::InvalidName { .. } => CKPT_ERR_ARG,
        _ => CKPT_ERR_IO,
    }
}

impl From<ckpt_engine::Error> for Failure {
    fn from(e: ckpt_engine::Error) -> Failure {
        Failure::new(engine_code(&e), e.to_string())
    }
}

impl From<crate::Error> for Failure {
    fn from(e: crate::Error) -> Failure {
        use crate::Error as E;
        let code = match &e {
            E::Engine(inner) => engine_code(inner),
            E::WorldSize { .. } | E::Config(_) => CKPT_ERR_CONFIG,
            E::NoSuchVersion { .. } => CKPT_ERR_NOT_FOUND,
            E::NoRestorableVersion { .. } => CKPT_ERR_CORRUPT,
            _ => CKPT_ERR_RANKS,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<crate::config::ConfigError> for Failure {
    fn from(e: crate::config::ConfigError) -> Failure {
        Failure::new(CKPT_ERR_CONFIG, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// The message of this thread's last failure (empty if none); valid until this thread's next
/// call into the library.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Installs a stderr `tracing` subscriber unless the application has one; `CKPT_LOG` sets
/// its level (default `warn`).
fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let level = match std::env::var("CKPT_LOG").ok().as_deref() {
            Some("off") => return,
            Some("error") => tracing::Level::ERROR,
            Some("info") => tracing::Level::INFO,
            Some("debug") => tracing::Level::DEBUG,
            Some("trace") => tracing::Level::TRACE,
            _ => tracing::Level::WARN,
        };
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(level)
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    });
}

/// Runs an exported function's body: catches panics, logs and records failures. `func` is
/// the C name, used in messages.
pub(crate) fn guard(func: &str, body: impl FnOnce() -> Result<c_int, Failure>) -> c_int {
    init_logging();
    let r = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Failure::new(
            CKPT_ERR_INTERNAL,
            format!("internal error (please report it): {what}"),
        ))
    });
    match r {
        Ok(code) => code,
        Err(f) => {
            let msg = format!("{func}: {}", f.msg);
            tracing::error!("{msg}");
            set_last_error(&msg);
            f.code
        }
    }
}

/// Locks a session mutex, taking it over if a panic poisoned it (the panic was reported; the
/// state is still consistent enough to finalize).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A C string argument as UTF-8; `what` names it in errors.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string that lives for `'a`.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::new(
            CKPT_ERR_ARG,
            format!("{what} is a null pointer"),
        ));
    }
    // SAFETY: non-null, and the caller guarantees a NUL-terminated string living for 'a.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|_| Failure::new(CKPT_ERR_ARG, format!("{what} is not valid UTF-8")))
}

/// A session object that holds raw pointers and MPI handles, made `Send` so that it can sit
/// in a global `Mutex`.
pub(crate) struct Session<T>(pub(crate) T);

// SAFETY: a session is only ever reached through its API's global Mutex, so no two threads
// use it at once. Its raw pointers are the application's registered memory, which the
// application promised (ckpt.h, veloc.h) to keep valid and leave alone during calls; its MPI
// communicator is used from whichever thread holds the lock, which ckpt.h requires the MPI
// library to allow (MPI_THREAD_SERIALIZED, or only ever calling ckpt from one thread).
unsafe impl<T> Send for Session<T> {}

/// Duplicates an MPI communicator for a session. Fails unless MPI is initialized and not
/// finalized.
///
/// # Safety
/// `comm` must be a valid intra-communicator handle of this process.
pub(crate) unsafe fn dup_comm(
    comm: mpi::ffi::MPI_Comm,
) -> Result<mpi::topology::SimpleCommunicator, Failure> {
    use mpi::raw::FromRaw;
    if !mpi::environment::is_initialized() || mpi::environment::is_finalized() {
        return Err(Failure::new(
            CKPT_ERR_STATE,
            "MPI is not initialized (call MPI_Init first, and do not call MPI_Finalize before finalizing ckpt)",
        ));
    }
    let mut dup = std::mem::MaybeUninit::<mpi::ffi::MPI_Comm>::uninit();
    // SAFETY: MPI is initialized; `comm` is a valid communicator (the caller's promise) and
    // `dup` is writable storage for the new handle.
    let rc = unsafe { mpi::ffi::MPI_Comm_dup(comm, dup.as_mut_ptr()) };
    if rc != 0 {
        return Err(Failure::new(
            CKPT_ERR_ARG,
            format!("MPI_Comm_dup of the communicator failed (MPI error {rc}): not a valid communicator?"),
        ));
    }
    // SAFETY: MPI_Comm_dup succeeded, so `dup` holds a new, live intra-communicator that
    // nothing else owns; the session frees it (MPI_Comm_free on drop).
    Ok(unsafe { mpi::topology::SimpleCommunicator::from_raw(dup.assume_init()) })
}

/// A Fortran communicator handle as a C one.
pub(crate) fn comm_f2c(fcomm: c_int) -> Result<mpi::ffi::MPI_Comm, Failure> {
    if !mpi::environment::is_initialized() {
        return Err(Failure::new(
            CKPT_ERR_STATE,
            "MPI is not initialized (call MPI_Init first)",
        ));
    }
    // SAFETY: MPI is initialized; MPI_Comm_f2c accepts any integer and returns a handle
    // (MPI_COMM_NULL for an invalid one, which MPI_Comm_dup then rejects).
    Ok(unsafe { mpi::ffi::MPI_Comm_f2c(fcomm) })
}
