//! The ranks a C-API session spans: one process (`*_init_single`) or an MPI communicator
//! (a duplicate of the application's, so that our collectives never match its messages).

use std::fmt::Display;
use std::mem::ManuallyDrop;

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::{agree, Error, RankFailure};

/// One process, or every rank of a communicator.
pub(crate) enum Group {
    /// `*_init_single`: no MPI at all.
    Solo,
    /// A communicator owned by the session (freed when the session ends, unless MPI was
    /// finalized first: then MPI has freed it).
    Mpi(ManuallyDrop<SimpleCommunicator>),
}

impl Group {
    /// A group over `comm`, which it frees when dropped.
    pub(crate) fn mpi(comm: SimpleCommunicator) -> Group {
        Group::Mpi(ManuallyDrop::new(comm))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Group::Mpi(c) = self {
            if !mpi::environment::is_finalized() {
                // SAFETY: dropped exactly once, here, and never used afterwards. (After
                // MPI_Finalize, MPI_Comm_free is erroneous: the handle is left to MPI.)
                unsafe { ManuallyDrop::drop(c) };
            }
        }
    }
}

impl Group {
    /// This process's rank.
    pub(crate) fn rank(&self) -> u32 {
        match self {
            Group::Solo => 0,
            Group::Mpi(c) => c.rank() as u32,
        }
    }

    /// Agrees on a step's outcome (see [`crate::agree`]). Collective.
    pub(crate) fn agree<T, E: Display>(
        &self,
        op: &'static str,
        r: std::result::Result<T, E>,
    ) -> Result<T, Error> {
        match self {
            Group::Mpi(c) => agree(&**c, op, r),
            Group::Solo => r.map_err(|e| Error::Ranks {
                op,
                failures: vec![RankFailure {
                    rank: 0,
                    message: e.to_string(),
                }],
            }),
        }
    }

    /// The minimum of `x` over the ranks. Collective.
    pub(crate) fn min_i64(&self, x: i64) -> i64 {
        match self {
            Group::Solo => x,
            Group::Mpi(c) => {
                let mut out = 0i64;
                c.all_reduce_into(&x, &mut out, SystemOperation::min());
                out
            }
        }
    }

    /// Whether `b` holds on every rank. Collective.
    pub(crate) fn all(&self, b: bool) -> bool {
        self.min_i64(i64::from(b)) == 1
    }
}
