//! The VeloC 1.x memory-based API, `VELOC_*` (declared in `include/veloc.h`): the same
//! names, signatures and return codes, so a VeloC application relinks unchanged. The
//! behaviour is in `veloc.rs`.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::sync::Mutex;

use super::group::Group;
use super::veloc::{Veloc, VelocError, MODE_ALL};
use super::{
    c_str, comm_f2c, dup_comm, guard, lock, Failure, Session, CKPT_ERR_ARG, CKPT_ERR_STATE,
};

/// `VELOC_SUCCESS`.
pub const VELOC_SUCCESS: c_int = 0;
/// `VELOC_FAILURE`.
pub const VELOC_FAILURE: c_int = -1;

static VELOC: Mutex<Option<Session<Veloc>>> = Mutex::new(None);

impl From<VelocError> for Failure {
    fn from(e: VelocError) -> Failure {
        match e {
            VelocError::Usage(m) => Failure::new(CKPT_ERR_ARG, m),
            VelocError::Ranks(e) => e.into(),
            VelocError::Engine(e) => e.into(),
        }
    }
}

/// Runs a VeloC call: `VELOC_SUCCESS`, or `VELOC_FAILURE` with the message logged.
fn call(func: &str, f: impl FnOnce() -> Result<(), Failure>) -> c_int {
    match guard(func, || f().map(|()| VELOC_SUCCESS)) {
        VELOC_SUCCESS => VELOC_SUCCESS,
        _ => VELOC_FAILURE,
    }
}

/// Runs `f` on the session.
fn with_veloc(func: &str, f: impl FnOnce(&mut Veloc) -> Result<(), Failure>) -> c_int {
    call(func, || {
        let mut s = lock(&VELOC);
        let s = s.as_mut().ok_or_else(not_initialized)?;
        f(&mut s.0)
    })
}

fn not_initialized() -> Failure {
    Failure::new(
        CKPT_ERR_STATE,
        "VeloC is not initialized (call VELOC_Init first)",
    )
}

fn start(group: Group, cfg: &str) -> Result<(), Failure> {
    let mut s = lock(&VELOC);
    if s.is_some() {
        return Err(Failure::new(CKPT_ERR_STATE, "VeloC is already initialized"));
    }
    *s = Some(Session(Veloc::init(group, Path::new(cfg))?));
    Ok(())
}

/// The id list of a selective call.
///
/// # Safety
/// `ids` must be null or valid for reading `n` ints.
unsafe fn id_list<'a>(ids: *const c_int, n: c_int) -> Result<&'a [c_int], Failure> {
    let n = usize::try_from(n)
        .map_err(|_| Failure::new(CKPT_ERR_ARG, format!("no_ids = {n} is negative")))?;
    if n == 0 {
        return Ok(&[]);
    }
    if ids.is_null() {
        return Err(Failure::new(CKPT_ERR_ARG, "ids is a null pointer"));
    }
    // SAFETY: non-null and valid for `n` ints by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ids, n) })
}

/// `int VELOC_Init(MPI_Comm comm, const char *cfg_file)`. Collective.
///
/// # Safety
/// `comm` a valid communicator; `cfg_file` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Init(comm: mpi::ffi::MPI_Comm, cfg_file: *const c_char) -> c_int {
    call("VELOC_Init", || {
        // SAFETY: the caller's contract.
        let cfg = unsafe { c_str(cfg_file, "cfg_file") }?;
        // SAFETY: the caller's contract.
        let comm = unsafe { dup_comm(comm) }?;
        start(Group::mpi(comm), cfg)
    })
}

/// `VELOC_Init` with a Fortran communicator (for Fortran bindings).
///
/// # Safety
/// `cfg_file` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Init_fortran(comm: c_int, cfg_file: *const c_char) -> c_int {
    call("VELOC_Init", || {
        // SAFETY: the caller's contract.
        let cfg = unsafe { c_str(cfg_file, "cfg_file") }?;
        let comm = comm_f2c(comm)?;
        // SAFETY: MPI_Comm_f2c gave a handle; dup_comm rejects an invalid one.
        let comm = unsafe { dup_comm(comm) }?;
        start(Group::mpi(comm), cfg)
    })
}

/// `int VELOC_Init_single(unsigned int id, const char *cfg_file)`: one process, no MPI.
///
/// # Safety
/// `cfg_file` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Init_single(_id: c_uint, cfg_file: *const c_char) -> c_int {
    call("VELOC_Init_single", || {
        // SAFETY: the caller's contract.
        let cfg = unsafe { c_str(cfg_file, "cfg_file") }?;
        start(Group::Solo, cfg)
    })
}

/// `int VELOC_Finalize(int cleanup)`: waits for copies in flight; never deletes a
/// checkpoint (`cleanup` is accepted and ignored).
#[no_mangle]
pub extern "C" fn VELOC_Finalize(_cleanup: c_int) -> c_int {
    call("VELOC_Finalize", || {
        let s = lock(&VELOC).take().ok_or_else(not_initialized)?;
        s.0.finalize()
            .map_err(|e| Failure::new(super::CKPT_ERR_IO, e))
    })
}

/// `int VELOC_Mem_protect(int id, void *ptr, size_t count, size_t base_size)`: protects
/// `count * base_size` bytes at `ptr` as region `id` (an id already protected is moved and
/// resized).
///
/// # Safety
/// `ptr` must stay valid for `count * base_size` bytes until unprotected or finalized, and
/// be left alone during VeloC calls.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Mem_protect(
    id: c_int,
    ptr: *mut c_void,
    count: usize,
    base_size: usize,
) -> c_int {
    with_veloc("VELOC_Mem_protect", |v| {
        let len = count.checked_mul(base_size).ok_or_else(|| {
            Failure::new(
                CKPT_ERR_ARG,
                format!("region {id}: {count} x {base_size} bytes overflows"),
            )
        })?;
        Ok(v.protect(id, ptr as usize, len)?)
    })
}

/// `int VELOC_Mem_unprotect(int id)`.
#[no_mangle]
pub extern "C" fn VELOC_Mem_unprotect(id: c_int) -> c_int {
    with_veloc("VELOC_Mem_unprotect", |v| Ok(v.unprotect(id)?))
}

/// `int VELOC_Checkpoint_begin(const char *name, int version)`.
///
/// # Safety
/// `name` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Checkpoint_begin(name: *const c_char, version: c_int) -> c_int {
    with_veloc("VELOC_Checkpoint_begin", |v| {
        // SAFETY: the caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        Ok(v.checkpoint_begin(name, version)?)
    })
}

/// `int VELOC_Checkpoint_mem(void)`: saves every protected region.
#[no_mangle]
pub extern "C" fn VELOC_Checkpoint_mem() -> c_int {
    with_veloc("VELOC_Checkpoint_mem", |v| {
        Ok(v.checkpoint_select(MODE_ALL, &[])?)
    })
}

/// `int VELOC_Checkpoint_selective(int mode, int *ids, int no_ids)`.
///
/// # Safety
/// `ids` null or valid for `no_ids` ints.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Checkpoint_selective(
    mode: c_int,
    ids: *mut c_int,
    no_ids: c_int,
) -> c_int {
    with_veloc("VELOC_Checkpoint_selective", |v| {
        // SAFETY: the caller's contract.
        let ids = unsafe { id_list(ids, no_ids) }?;
        Ok(v.checkpoint_select(mode, ids)?)
    })
}

/// `int VELOC_Checkpoint_end(int success)`: writes the checkpoint. Collective.
#[no_mangle]
pub extern "C" fn VELOC_Checkpoint_end(success: c_int) -> c_int {
    with_veloc("VELOC_Checkpoint_end", |v| {
        Ok(v.checkpoint_end(success != 0)?)
    })
}

/// `int VELOC_Checkpoint_wait(void)`: waits for the checkpoints in flight: copies to
/// persistent storage, and (with `nonblocking = true`) the scratch writes of asynchronous
/// checkpoints (`Checkpointer::checkpoint_async`).
#[no_mangle]
pub extern "C" fn VELOC_Checkpoint_wait() -> c_int {
    with_veloc("VELOC_Checkpoint_wait", |v| {
        v.wait_flushes()
            .map_err(|e| Failure::new(super::CKPT_ERR_IO, e))
    })
}

/// `int VELOC_Backend_ready(void)`: `VELOC_SUCCESS` (there is no separate backend).
#[no_mangle]
pub extern "C" fn VELOC_Backend_ready() -> c_int {
    VELOC_SUCCESS
}

/// `int VELOC_Checkpoint(const char *name, int version)`: begin, save every protected
/// region, end. Collective: every rank reaches the agreement even if its `begin` failed.
///
/// # Safety
/// `name` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Checkpoint(name: *const c_char, version: c_int) -> c_int {
    with_veloc("VELOC_Checkpoint", |v| {
        // SAFETY: the caller's contract.
        let began = unsafe { c_str(name, "name") }
            .and_then(|n| Ok(v.checkpoint_begin(n, version)?))
            .and_then(|()| Ok(v.checkpoint_select(MODE_ALL, &[])?));
        let ended = v.checkpoint_end(began.is_ok());
        began?;
        Ok(ended?)
    })
}

/// `int VELOC_Restart_test(const char *name, int needed)`: the newest version below
/// `needed` (no bound if 0) complete on every rank, or `VELOC_FAILURE` (-1) if none.
/// Collective.
///
/// # Safety
/// `name` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Restart_test(name: *const c_char, needed: c_int) -> c_int {
    let mut found = None;
    let rc = with_veloc("VELOC_Restart_test", |v| {
        // SAFETY: the caller's contract.
        let name = unsafe { c_str(name, "name") };
        // A bad name on one rank must not leave the others in the collective: pass it in.
        let name = name.as_deref().unwrap_or("\0");
        found = v.restart_test(name, needed)?;
        Ok(())
    });
    match (rc, found) {
        (VELOC_SUCCESS, Some(v)) => c_int::try_from(v).unwrap_or(VELOC_FAILURE),
        _ => VELOC_FAILURE,
    }
}

/// `int VELOC_Restart_begin(const char *name, int version)`. Collective: fails on every rank
/// if any rank has no complete copy of the version.
///
/// # Safety
/// `name` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Restart_begin(name: *const c_char, version: c_int) -> c_int {
    with_veloc("VELOC_Restart_begin", |v| {
        // SAFETY: the caller's contract.
        let name = unsafe { c_str(name, "name") };
        let name = name.as_deref().unwrap_or("\0");
        Ok(v.restart_begin(name, version)?)
    })
}

/// `int VELOC_Recover_mem(void)`: restores every protected region.
#[no_mangle]
pub extern "C" fn VELOC_Recover_mem() -> c_int {
    with_veloc("VELOC_Recover_mem", |v| Ok(v.recover(MODE_ALL, &[])?))
}

/// `int VELOC_Recover_selective(int mode, int *ids, int no_ids)`.
///
/// # Safety
/// `ids` null or valid for `no_ids` ints.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Recover_selective(
    mode: c_int,
    ids: *mut c_int,
    no_ids: c_int,
) -> c_int {
    with_veloc("VELOC_Recover_selective", |v| {
        // SAFETY: the caller's contract.
        let ids = unsafe { id_list(ids, no_ids) }?;
        Ok(v.recover(mode, ids)?)
    })
}

/// `int VELOC_Recover_size(int id)`: the stored size of region `id` in bytes, after
/// `VELOC_Restart_begin`; -1 for an unknown id (or one too large for an int).
#[no_mangle]
pub extern "C" fn VELOC_Recover_size(id: c_int) -> c_int {
    let mut size = None;
    let rc = with_veloc("VELOC_Recover_size", |v| {
        size = Some(v.recover_size(id)?);
        Ok(())
    });
    match (rc, size) {
        (VELOC_SUCCESS, Some(n)) => c_int::try_from(n).unwrap_or(VELOC_FAILURE),
        _ => VELOC_FAILURE,
    }
}

/// `int VELOC_Restart_end(int success)`. Collective.
#[no_mangle]
pub extern "C" fn VELOC_Restart_end(success: c_int) -> c_int {
    with_veloc("VELOC_Restart_end", |v| Ok(v.restart_end(success != 0)?))
}

/// `int VELOC_Restart(const char *name, int version)`: begin, recover every protected
/// region, end. Collective.
///
/// # Safety
/// `name` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Restart(name: *const c_char, version: c_int) -> c_int {
    with_veloc("VELOC_Restart", |v| {
        // SAFETY: the caller's contract.
        let name = unsafe { c_str(name, "name") };
        let name = name.as_deref().unwrap_or("\0");
        v.restart_begin(name, version)?;
        let recovered = v.recover(MODE_ALL, &[]);
        let ended = v.restart_end(recovered.is_ok());
        recovered?;
        Ok(ended?)
    })
}

/// Longest routed path `VELOC_Route_file` writes, with its NUL (VeloC's buffer size).
const ROUTED_MAX: usize = 1024;

/// `int VELOC_Route_file(const char *original, char *routed)`: where to write (during a
/// checkpoint) or read (during a restart) a file saved with the checkpoint as a whole file.
/// `routed` must hold at least 1024 bytes.
///
/// # Safety
/// `original` a NUL-terminated string; `routed` valid for writing 1024 bytes.
#[no_mangle]
pub unsafe extern "C" fn VELOC_Route_file(original: *const c_char, routed: *mut c_char) -> c_int {
    with_veloc("VELOC_Route_file", |v| {
        // SAFETY: the caller's contract.
        let original = unsafe { c_str(original, "original") }?;
        if routed.is_null() {
            return Err(Failure::new(CKPT_ERR_ARG, "routed is a null pointer"));
        }
        let path = v.route_file(original)?;
        let bytes = path.as_os_str().as_encoded_bytes();
        if bytes.len() >= ROUTED_MAX || bytes.contains(&0) {
            return Err(Failure::new(
                CKPT_ERR_ARG,
                format!("routed path {} does not fit in 1024 bytes", path.display()),
            ));
        }
        // SAFETY: `routed` is valid for ROUTED_MAX bytes (caller's contract) and
        // bytes.len() + 1 <= ROUTED_MAX; the source is a distinct Rust allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), routed.cast::<u8>(), bytes.len());
            routed.add(bytes.len()).write(0);
        }
        Ok(())
    })
}
