//! Checkpoint requests by signal: a batch scheduler's warning before the time limit (Slurm's
//! `--signal=B:USR1@N`), or an operator's `kill -USR1`. Opt-in: nothing is installed until
//! [`install`] is called.
//!
//! The handler only sets an atomic flag (through `signal-hook`, whose handlers are
//! async-signal-safe); the application asks [`checkpoint_requested`] at a safe point, where
//! a checkpoint can run. In an MPI job, `ckpt::Job::checkpoint_requested` makes the
//! request rank-wide.
//!
//! ```no_run
//! ckpt_engine::signals::install(&[ckpt_engine::signals::SIGUSR1])?;
//! for step in 0.. {
//!     // ... compute ...
//!     if ckpt_engine::signals::checkpoint_requested() {
//!         // checkpoint now
//!     }
//! #   if step > 3 { break; }
//! }
//! # Ok::<(), ckpt_engine::Error>(())
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

pub use signal_hook::consts::{SIGTERM, SIGUSR1, SIGUSR2};

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Makes each of `signals` (for example [`SIGUSR1`], and [`SIGTERM`] if the scheduler sends
/// it before killing) request a checkpoint instead of its default action. Installing twice is
/// harmless.
pub fn install(signals: &[i32]) -> Result<()> {
    for &s in signals {
        signal_hook::flag::register(s, Arc::clone(flag())).map_err(|e| {
            Error::Unsupported(format!("cannot install a handler for signal {s}: {e}"))
        })?;
    }
    Ok(())
}

/// Whether a checkpoint was requested since the last call (reading clears the request).
pub fn checkpoint_requested() -> bool {
    flag().swap(false, Ordering::AcqRel)
}

/// Requests a checkpoint from inside the process, as a signal would.
pub fn request_checkpoint() {
    flag().store(true, Ordering::Release);
}
